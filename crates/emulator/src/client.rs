//! A typed client for the control API, for tests and tools in other crates.
//!
//! It only wraps HTTP calls; it holds no emulator state.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{
    ActionResult, AttachmentView, BatchResult, CallRecord, ClockView, CommentResult, DataDeletion,
    DataDeletionResult, DeliveryAttempt, DeliveryResult, FaultSpec, FaultView, InboxText,
    NewPerson, Person, PolicyEnforcement, Referral, ReleaseDeliveries, ReleaseOrder,
    SetDataDeletionUrl, SetOwner, SetSkew, ThreadView, Unsubscribe, UserComment, UserMessage,
    UserOtnOptin, UserPostback, UserReaction, UserReceipt,
};
use crate::world::{AppConfig, PageConfig};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control API transport error: {0}")]
    Http(#[from] reqwest::Error),
    #[error("control API answered {status}: {body}")]
    Status { status: u16, body: Value },
}

/// Client for `/_emulator/...`.
#[derive(Clone, Debug)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
}

impl ControlClient {
    /// `base` is the emulator's base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn new(base: impl Into<String>) -> Self {
        ControlClient {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/_emulator{path}", self.base)
    }

    async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(resp.json().await?)
        } else {
            let body = resp.json().await.unwrap_or(Value::Null);
            Err(ClientError::Status { status, body })
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::answer(self.http.post(self.url(path)).json(body).send().await?).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        Self::answer(self.http.put(self.url(path)).json(body).send().await?).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Self::answer(self.http.get(self.url(path)).send().await?).await
    }

    async fn delete(&self, path: &str) -> Result<(), ClientError> {
        Self::answer::<Value>(self.http.delete(self.url(path)).send().await?).await?;
        Ok(())
    }

    fn user(page: &str, psid: &str, action: &str) -> String {
        format!("/pages/{page}/users/{psid}/{action}")
    }

    // ----- world -----

    /// Adds or replaces a page.
    pub async fn put_page(&self, page: &PageConfig) -> Result<(), ClientError> {
        self.post::<_, Value>("/pages", page).await.map(|_| ())
    }

    /// Adds or replaces an app (its subscriptions reset to its fields).
    pub async fn put_app(&self, app: &AppConfig) -> Result<(), ClientError> {
        self.post::<_, Value>("/apps", app).await.map(|_| ())
    }

    /// Sets (or clears) an app's webhook callback URL.
    pub async fn set_callback(&self, app_id: &str, url: Option<&str>) -> Result<(), ClientError> {
        self.put::<_, Value>(
            &format!("/apps/{app_id}/callback"),
            &json!({ "callback_url": url }),
        )
        .await
        .map(|_| ())
    }

    /// Sets (or removes) an app's data-deletion callback URL.
    pub async fn set_data_deletion_url(
        &self,
        app_id: &str,
        url: Option<&str>,
    ) -> Result<(), ClientError> {
        let body = SetDataDeletionUrl {
            url: url.map(str::to_string),
        };
        self.put::<_, Value>(&format!("/apps/{app_id}/data_deletion_url"), &body)
            .await
            .map(|_| ())
    }

    /// Meta drops the app's subscription to `page` (as after an hour of
    /// failed webhooks): no webhooks for that page until it subscribes again.
    pub async fn unsubscribe(&self, app_id: &str, page: &str) -> Result<(), ClientError> {
        let body = Unsubscribe {
            page: page.to_string(),
        };
        self.post::<_, Value>(&format!("/apps/{app_id}/unsubscribe"), &body)
            .await
            .map(|_| ())
    }

    /// Meta invalidates the app's token for `page`: Graph calls with it
    /// answer 190/460 from now on.
    pub async fn revoke_token(&self, app_id: &str, page: &str) -> Result<(), ClientError> {
        self.post::<_, Value>(&format!("/apps/{app_id}/tokens/{page}/revoke"), &json!({}))
            .await
            .map(|_| ())
    }

    // ----- identity -----

    /// Registers a person's PSIDs and ASIDs (the ID Matching API's data).
    pub async fn register_person(&self, person: &NewPerson) -> Result<Person, ClientError> {
        self.post("/people", person).await
    }

    /// The person known to `app_id` as `asid` asks Meta to delete their
    /// data: the emulator calls the app's data-deletion callback and hands
    /// back its answer.
    pub async fn data_deletion(
        &self,
        app_id: &str,
        asid: &str,
    ) -> Result<DataDeletionResult, ClientError> {
        let body = DataDeletion {
            app: app_id.to_string(),
            asid: asid.to_string(),
        };
        self.post("/data_deletion", &body).await
    }

    // ----- user actions -----

    /// The user sends a message.
    pub async fn user_message(
        &self,
        page: &str,
        psid: &str,
        message: &UserMessage,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "message"), message).await
    }

    /// The user sends a plain text message.
    pub async fn user_text(
        &self,
        page: &str,
        psid: &str,
        text: &str,
    ) -> Result<ActionResult, ClientError> {
        let m = UserMessage {
            text: Some(text.to_string()),
            ..UserMessage::default()
        };
        self.user_message(page, psid, &m).await
    }

    pub async fn user_postback(
        &self,
        page: &str,
        psid: &str,
        postback: &UserPostback,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "postback"), postback)
            .await
    }

    pub async fn user_reaction(
        &self,
        page: &str,
        psid: &str,
        reaction: &UserReaction,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "reaction"), reaction)
            .await
    }

    /// The user arrives through an m.me link or ad into an existing thread.
    pub async fn user_referral(
        &self,
        page: &str,
        psid: &str,
        referral: &Referral,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "referral"), referral)
            .await
    }

    /// The user taps "Notify me"; the answer carries the token.
    pub async fn user_otn_optin(
        &self,
        page: &str,
        psid: &str,
        payload: &str,
    ) -> Result<ActionResult, ClientError> {
        let body = UserOtnOptin {
            payload: payload.to_string(),
        };
        self.post(&Self::user(page, psid, "otn_optin"), &body).await
    }

    /// Send-to-Messenger / checkbox plugin opt-in.
    pub async fn user_plugin_optin(
        &self,
        page: &str,
        psid: &str,
        ref_: Option<&str>,
        user_ref: Option<&str>,
    ) -> Result<ActionResult, ClientError> {
        self.post(
            &Self::user(page, psid, "plugin_optin"),
            &json!({"ref": ref_, "user_ref": user_ref}),
        )
        .await
    }

    pub async fn user_read(
        &self,
        page: &str,
        psid: &str,
        receipt: &UserReceipt,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "read"), receipt).await
    }

    pub async fn user_delivery(
        &self,
        page: &str,
        psid: &str,
        receipt: &UserReceipt,
    ) -> Result<ActionResult, ClientError> {
        self.post(&Self::user(page, psid, "delivery"), receipt)
            .await
    }

    /// The user comments on the page's default post `{page}_1`; the answer
    /// is the comment id, the `recipient.comment_id` of a private reply.
    pub async fn user_comment(
        &self,
        page: &str,
        psid: &str,
        text: &str,
    ) -> Result<String, ClientError> {
        self.user_comment_on(page, psid, None, text).await
    }

    /// The user comments on the post `post_id` (default `{page}_1`).
    pub async fn user_comment_on(
        &self,
        page: &str,
        psid: &str,
        post_id: Option<&str>,
        text: &str,
    ) -> Result<String, ClientError> {
        let body = UserComment {
            psid: psid.to_string(),
            post_id: post_id.map(str::to_string),
            text: text.to_string(),
        };
        let r: CommentResult = self.post(&format!("/pages/{page}/comments"), &body).await?;
        Ok(r.comment_id)
    }

    // ----- Page Inbox -----

    /// A human takes the thread in the Page Inbox (optionally replying).
    pub async fn inbox_takeover(
        &self,
        page: &str,
        psid: &str,
        text: Option<&str>,
    ) -> Result<ActionResult, ClientError> {
        let body = InboxText {
            text: text.map(str::to_string),
        };
        self.post(&format!("/pages/{page}/inbox/{psid}/takeover"), &body)
            .await
    }

    /// A human replies from the Page Inbox (taking control if needed).
    pub async fn inbox_reply(
        &self,
        page: &str,
        psid: &str,
        text: &str,
    ) -> Result<ActionResult, ClientError> {
        let body = InboxText {
            text: Some(text.to_string()),
        };
        self.post(&format!("/pages/{page}/inbox/{psid}/reply"), &body)
            .await
    }

    /// The human marks the thread done.
    pub async fn inbox_done(&self, page: &str, psid: &str) -> Result<ActionResult, ClientError> {
        self.post(&format!("/pages/{page}/inbox/{psid}/done"), &json!({}))
            .await
    }

    // ----- pages -----

    /// Meta's policy enforcement blocks, unblocks or warns the page; apps
    /// subscribed to `messaging_policy_enforcement` get the webhook.
    pub async fn policy_enforcement(
        &self,
        page: &str,
        action: &str,
        reason: Option<&str>,
    ) -> Result<ActionResult, ClientError> {
        let body = PolicyEnforcement {
            action: action.to_string(),
            reason: reason.map(str::to_string),
        };
        self.post(&format!("/pages/{page}/policy_enforcement"), &body)
            .await
    }

    // ----- threads -----

    pub async fn thread(&self, page: &str, psid: &str) -> Result<ThreadView, ClientError> {
        self.get(&format!("/pages/{page}/threads/{psid}")).await
    }

    /// Sets the owner behind everyone's back (no webhooks): the silent
    /// takeover. With [`crate::PAGE_INBOX_APP_ID`] it is the Page Inbox taking
    /// a thread without telling the apps; their next user message arrives on
    /// `standby`.
    pub async fn set_owner(
        &self,
        page: &str,
        psid: &str,
        owner: &SetOwner,
    ) -> Result<ThreadView, ClientError> {
        self.put(&format!("/pages/{page}/threads/{psid}/owner"), owner)
            .await
    }

    /// The page's whole Messenger Profile as set through the Graph API
    /// (`{}` when nothing is set).
    pub async fn messenger_profile(&self, page: &str) -> Result<Value, ClientError> {
        self.get(&format!("/pages/{page}/messenger_profile")).await
    }

    /// An uploaded attachment by its `attachment_id` (404 when unknown).
    pub async fn attachment(&self, id: &str) -> Result<AttachmentView, ClientError> {
        self.get(&format!("/attachments/{id}")).await
    }

    // ----- clock -----

    pub async fn clock(&self) -> Result<ClockView, ClientError> {
        self.get("/clock").await
    }

    pub async fn advance(&self, ms: i64) -> Result<ClockView, ClientError> {
        self.post("/clock/advance", &json!({ "ms": ms })).await
    }

    pub async fn set_clock(&self, now_ms: i64) -> Result<ClockView, ClientError> {
        self.post("/clock/set", &json!({ "now_ms": now_ms })).await
    }

    /// Puts Meta's clock `millis` ahead of the control clock (behind when
    /// negative): timestamps and rules use it from now on.
    pub async fn set_skew(&self, millis: i64) -> Result<ClockView, ClientError> {
        self.post("/clock/skew", &SetSkew { millis }).await
    }

    // ----- faults -----

    pub async fn add_fault(&self, fault: &FaultSpec) -> Result<FaultView, ClientError> {
        self.post("/faults", fault).await
    }

    pub async fn faults(&self) -> Result<Vec<FaultView>, ClientError> {
        self.get("/faults").await
    }

    /// Removes every fault and releases held answers.
    pub async fn clear_faults(&self) -> Result<(), ClientError> {
        self.delete("/faults").await
    }

    /// Releases every answer held by a `delay` fault without `millis`.
    pub async fn release_held(&self) -> Result<(), ClientError> {
        self.post::<_, Value>("/faults/release", &json!({}))
            .await
            .map(|_| ())
    }

    // ----- logs -----

    pub async fn calls(&self) -> Result<Vec<CallRecord>, ClientError> {
        self.get("/calls").await
    }

    pub async fn deliveries(&self) -> Result<Vec<DeliveryAttempt>, ClientError> {
        self.get("/deliveries").await
    }

    /// Waits until every webhook queued so far has been attempted (held ones
    /// count as attempted: this does not wait for their release).
    pub async fn wait_deliveries(&self) -> Result<(), ClientError> {
        self.post::<_, Value>("/deliveries/wait", &json!({}))
            .await
            .map(|_| ())
    }

    /// Sends the deliveries held by `webhook_hold` faults (of one app, or
    /// all), oldest first or, with `reverse`, newest first, and lifts the
    /// holds for that app (every hold when `app_id` is `None`).
    pub async fn release_deliveries(
        &self,
        app_id: Option<&str>,
        reverse: bool,
    ) -> Result<Vec<DeliveryResult>, ClientError> {
        let body = ReleaseDeliveries {
            app_id: app_id.map(str::to_string),
            order: if reverse {
                ReleaseOrder::Reverse
            } else {
                ReleaseOrder::Fifo
            },
        };
        let r: BatchResult = self.post("/deliveries/release", &body).await?;
        Ok(r.deliveries)
    }

    /// Meta's late retry of the delivery attempt `seq` (see
    /// [`DeliveryAttempt::seq`]), dropped ones included: the same bytes and
    /// signatures, sent now to the app's current callback URL.
    pub async fn redeliver(&self, seq: u64) -> Result<DeliveryResult, ClientError> {
        self.post(&format!("/deliveries/{seq}/redeliver"), &json!({}))
            .await
    }

    /// Clears the call log and the delivery log.
    pub async fn reset_logs(&self) -> Result<(), ClientError> {
        self.delete("/logs").await
    }

    // ----- batching -----

    /// From now on, webhook items are held instead of sent.
    pub async fn batch_begin(&self) -> Result<(), ClientError> {
        self.post::<_, Value>("/batch/begin", &json!({}))
            .await
            .map(|_| ())
    }

    /// Sends the held items, one delivery per app, and stops batching.
    pub async fn batch_flush(&self) -> Result<BatchResult, ClientError> {
        self.post("/batch/flush", &json!({})).await
    }
}
