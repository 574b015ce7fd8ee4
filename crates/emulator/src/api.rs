//! Request and answer bodies of the control API (`/_emulator/...`).
//!
//! Shared by the HTTP handlers and the typed [`crate::ControlClient`]; no
//! behaviour lives here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A user sends a message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserMessage {
    #[serde(default)]
    pub text: Option<String>,
    /// Quick reply tapped: its payload.
    #[serde(default)]
    pub quick_reply_payload: Option<String>,
    /// Attachments, passed through verbatim.
    #[serde(default)]
    pub attachments: Option<Value>,
    /// m.me `ref` or Click-to-Messenger ad referral carried on the message.
    #[serde(default)]
    pub referral: Option<Referral>,
    /// Force a `mid` (e.g. to test deduplication); otherwise `m_<n>`.
    #[serde(default)]
    pub mid: Option<String>,
}

/// A referral (`ref`, `source`, `type`, optional ad id).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Referral {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// `SHORTLINK` (m.me), `ADS`, ... Defaults to `SHORTLINK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Defaults to `OPEN_THREAD`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
}

/// A user taps a postback button.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserPostback {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub referral: Option<Referral>,
}

/// A user reacts to a message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserReaction {
    pub mid: String,
    /// e.g. `love`; defaults to `love`.
    #[serde(default)]
    pub reaction: Option<String>,
    /// e.g. `❤`; defaults to `❤`.
    #[serde(default)]
    pub emoji: Option<String>,
    /// `react` (default) or `unreact`.
    #[serde(default)]
    pub action: Option<String>,
}

/// A user opts in to a One-Time Notification.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserOtnOptin {
    #[serde(default)]
    pub payload: String,
}

/// Read or delivery receipt; the watermark defaults to the emulator's now.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserReceipt {
    #[serde(default)]
    pub watermark: Option<i64>,
    #[serde(default)]
    pub mids: Option<Vec<String>>,
}

/// Text a human types in the Page Inbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InboxText {
    #[serde(default)]
    pub text: Option<String>,
}

/// Meta's policy enforcement acts on a page (`messaging_policy_enforcement`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyEnforcement {
    /// `block` (the page may not send until `unblock`), `unblock` or `warning`.
    pub action: String,
    /// Why; Meta sends none on `unblock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Forcibly set a thread's owner with no webhook to anyone: the silent
/// takeover (e.g. by the Page Inbox, [`crate::PAGE_INBOX_APP_ID`]) or any
/// other drift between Meta and what the apps were told.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetOwner {
    /// `None` makes the thread idle.
    pub app_id: Option<String>,
    /// Defaults to now + 24 h in Conversation Routing and zero-config pages.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
}

/// The outcome of one webhook delivery (all its attempts).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeliveryResult {
    pub delivery_id: u64,
    pub app_id: String,
    pub url: String,
    /// `messaging`, `standby` or `batch`.
    pub channel: String,
    pub attempts: u32,
    /// The last HTTP status, if any answer came back.
    pub status: Option<u16>,
    pub ok: bool,
    /// Dropped by a webhook fault: never sent.
    pub dropped: bool,
    /// Held by a `webhook_hold` fault: not sent yet, kept until
    /// `POST /_emulator/deliveries/release`.
    #[serde(default)]
    pub held: bool,
}

/// Answer to every user or inbox action.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActionResult {
    /// The `mid` of the message or echo created, if any.
    #[serde(default)]
    pub mid: Option<String>,
    /// The One-Time Notification token created, if any.
    #[serde(default)]
    pub token: Option<String>,
    /// Deliveries attempted before this answer (empty while batching).
    #[serde(default)]
    pub deliveries: Vec<DeliveryResult>,
}

/// One Graph API call as the emulator saw and answered it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub method: String,
    pub path: String,
    /// `messages`, `pass_thread_control`, ... (the edge, or `node`).
    pub endpoint: String,
    pub app_id: Option<String>,
    pub page_id: Option<String>,
    /// Query and body parameters merged, `access_token` removed.
    pub params: Value,
    pub status: u16,
    pub response: Value,
    /// Set when a fault produced the answer.
    pub fault: Option<String>,
}

/// One webhook delivery attempt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeliveryAttempt {
    pub seq: u64,
    pub delivery_id: u64,
    pub attempt: u32,
    pub at_ms: i64,
    pub app_id: String,
    pub url: String,
    pub channel: String,
    pub body: String,
    pub signature_256: String,
    pub signature_1: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub dropped: bool,
    /// Held by a `webhook_hold` fault (attempt 0: nothing sent yet).
    #[serde(default)]
    pub held: bool,
}

impl DeliveryAttempt {
    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A One-Time Notification token as the emulator tracks it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OtnTokenView {
    pub token: String,
    pub payload: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub used: bool,
}

/// One line of a thread's transcript.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TranscriptLine {
    pub mid: String,
    /// `user` or `page`.
    pub from: String,
    /// The sending app for page messages.
    pub app_id: Option<String>,
    pub text: Option<String>,
    pub metadata: Option<String>,
    pub at_ms: i64,
}

/// A thread as the emulator holds it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ThreadView {
    pub page_id: String,
    pub psid: String,
    /// The active owner; `None` when idle (Handover v1: the primary owns).
    pub owner: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub idle: bool,
    /// The app that receives `messaging` for this thread right now.
    pub messaging_apps: Vec<String>,
    pub last_user_action_ms: Option<i64>,
    pub window_open: bool,
    pub ads_window_until_ms: Option<i64>,
    pub otn_tokens: Vec<OtnTokenView>,
    pub transcript: Vec<TranscriptLine>,
}

/// The emulator's clocks. `now_ms` is the control clock, the one tests move
/// (and Baton's test clock follows). Meta's clock is the control clock plus
/// the skew: every timestamp Meta writes or keeps (webhooks, Graph answers,
/// thread views, logs) and every rule (window, expiry) uses Meta's clock.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClockView {
    /// The control clock.
    pub now_ms: i64,
    /// How far Meta's clock is ahead of the control clock (negative: behind).
    #[serde(default)]
    pub skew_ms: i64,
    /// Meta's clock: `now_ms + skew_ms`.
    #[serde(default)]
    pub meta_now_ms: i64,
    /// Threads whose control lapsed during this move (`page_id/psid`).
    #[serde(default)]
    pub expired: Vec<String>,
}

/// A fault to inject.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultSpec {
    /// The next `count` matching Graph calls answer 5xx (code 2, transient).
    ServerError {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        status: Option<u16>,
    },
    /// The next `count` matching Graph calls answer code 613.
    RateLimit {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        endpoint: Option<String>,
    },
    /// The next `count` matching Graph calls answer this Graph error.
    GraphError {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        status: Option<u16>,
        code: i64,
        #[serde(default)]
        subcode: Option<i64>,
        #[serde(default)]
        message: Option<String>,
    },
    /// The next `count` matching Graph calls take effect, but their answer
    /// is held for `millis` (real time) or, without it, until
    /// `POST /_emulator/faults/release`.
    Delay {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        millis: Option<u64>,
    },
    /// The next `count` webhook deliveries (optionally to one app) are lost.
    WebhookDrop {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        app_id: Option<String>,
    },
    /// The next `count` webhook deliveries are sent twice (Meta's retries).
    WebhookDuplicate {
        #[serde(default = "one")]
        count: u32,
        #[serde(default)]
        app_id: Option<String>,
    },
    /// The next `count` webhook deliveries (by default every one, until
    /// released) are kept, in order, unsent, with their original bytes, until
    /// `POST /_emulator/deliveries/release` sends them and lifts the hold.
    WebhookHold {
        #[serde(default = "until_released")]
        count: u32,
        #[serde(default)]
        app_id: Option<String>,
    },
}

fn one() -> u32 {
    1
}

fn until_released() -> u32 {
    u32::MAX
}

/// The order in which held deliveries are released.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOrder {
    /// The order they were held in.
    #[default]
    Fifo,
    /// Newest first: reordered delivery.
    Reverse,
}

/// Body of `POST /_emulator/deliveries/release`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDeliveries {
    /// Release only this app's held deliveries (and lift only the holds
    /// naming it); `None` releases everything and lifts every hold.
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub order: ReleaseOrder,
}

/// Body of `POST /_emulator/clock/skew`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetSkew {
    /// Meta's clock minus the control clock; positive: Meta is ahead.
    pub millis: i64,
}

/// An active fault and what is left of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FaultView {
    pub id: u64,
    pub remaining: u32,
    pub spec: FaultSpec,
}

/// Answer to `POST /_emulator/batch/flush`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchResult {
    pub deliveries: Vec<DeliveryResult>,
}

/// Body of `POST /_emulator/pages/{page}/comments`: a user comments on a
/// Page post.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserComment {
    pub psid: String,
    /// The post commented on; defaults to `{page}_1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_id: Option<String>,
    pub text: String,
}

/// Answer to `POST /_emulator/pages/{page}/comments`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CommentResult {
    /// `{post_id}_{n}`: the `recipient.comment_id` of a private reply.
    pub comment_id: String,
}

/// An attachment uploaded with `POST /{version}/me/message_attachments`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachmentView {
    /// The `attachment_id` (a numeric string).
    pub id: String,
    /// The page it was uploaded for: only that page may send it.
    pub page_id: String,
    /// The app that uploaded it.
    pub app_id: String,
    /// `image`, `video`, `audio` or `file`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Size of the uploaded file; `None` for an upload from a URL (the
    /// emulator never fetches URLs).
    pub bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the uploaded file; `None` for a URL.
    pub sha256: Option<String>,
    /// The URL given instead of a file.
    pub url: Option<String>,
    pub is_reusable: bool,
    /// The file part's filename and content type, when a file was sent.
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    pub created_ms: i64,
}

/// Body of `POST /_emulator/people`: one person's ids. A PSID is unique per
/// (person, page) and shared by every app of the page; an ASID (from
/// Facebook Login) is unique per (person, app).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NewPerson {
    /// page id → the person's PSID on that page.
    #[serde(default)]
    pub psids: BTreeMap<String, String>,
    /// app id → the person's ASID in that app.
    #[serde(default)]
    pub asids: BTreeMap<String, String>,
}

/// A person the emulator knows, as `POST /_emulator/people` answers it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Person {
    /// `person_<n>`, given by the emulator.
    pub id: String,
    pub psids: BTreeMap<String, String>,
    pub asids: BTreeMap<String, String>,
}

/// Body of `PUT /_emulator/apps/{app}/data_deletion_url`. `url` must be
/// present; `null` removes the callback.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetDataDeletionUrl {
    #[serde(deserialize_with = "required_nullable")]
    pub url: Option<String>,
}

/// Body of `POST /_emulator/data_deletion`: the person with ASID `asid`
/// asks Meta to delete their data from app `app`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataDeletion {
    pub app: String,
    pub asid: String,
}

/// What the app's data-deletion callback answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataDeletionResult {
    /// The callback's HTTP status; `None` when no answer came back.
    pub status: Option<u16>,
    /// The callback's body: JSON when it parses (Meta expects
    /// `{"url":…,"confirmation_code":…}`), else the text.
    pub body: Value,
    /// The `signed_request` form field the emulator sent.
    pub signed_request: String,
    /// Why no answer came back (connection refused, timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Body of `POST /_emulator/apps/{app}/unsubscribe`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unsubscribe {
    pub page: String,
}

/// An `Option` field that must be present (`null` allowed): serde makes a
/// plain `Option` field optional.
fn required_nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}
