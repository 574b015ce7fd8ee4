//! Graph calls about the page rather than a thread's control: the
//! Messenger Profile, attachment uploads, metadata shared by a thread's
//! owner and private replies to comments. Baton checks what it can (who may
//! change the whole page's profile, who controls the thread, a comment
//! already answered), passes the call to Meta with the app's page token,
//! and records what Meta accepted.

use domain::events::{
    AttachmentUploaded, GraphError, MessengerProfileChanged, PrivateReplySent, ProfileChange,
    ThreadMetadataPassed,
};
use domain::graph::{self, code};
use domain::{rules, Psid, Rejection, ThreadKey};
use event_log::EventStore;
use serde_json::Value;

use crate::graph_client::GraphAnswer;
use crate::record::{OnBusy, Planned};
use crate::{Acting, Baton};

/// A Messenger Profile call.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileCall {
    Get { fields: String },
    Set { properties: Value },
    Delete { fields: Vec<String> },
}

/// An upload for `message_attachments`, passed through as it came.
#[derive(Debug, Clone)]
pub struct Upload {
    pub content_type: String,
    pub body: Vec<u8>,
    /// The declared type (`image`, …), the file's size and SHA-256 when a
    /// file was sent, or the URL Meta is to fetch.
    pub kind: Option<String>,
    pub file_bytes: u64,
    pub file_sha256: Option<String>,
    pub url: Option<String>,
}

fn refused(status: u16, error: GraphError) -> GraphAnswer {
    GraphAnswer::Err {
        status,
        error,
        body: Value::Null,
    }
}

fn rejected(r: &Rejection) -> GraphAnswer {
    let (code, subcode) = r.kind.meta_code();
    refused(
        400,
        graph::error(code, subcode, format!("(#{code}) {}", r.reason)),
    )
}

impl<S: EventStore + 'static> Baton<S> {
    /// The app's page token and Graph API, or why there is none.
    fn page_token(&self, acting: &Acting) -> Result<(String, String), GraphError> {
        let denied = |why: String| graph::error(code::ACCESS_DENIED, None, why);
        let Some((_, managed)) = self.config.managed(&acting.app) else {
            return Err(denied(format!(
                "(#200) app {} is not managed by Baton",
                acting.app
            )));
        };
        let Some(token) = managed.page_tokens.get(&acting.page) else {
            return Err(denied(format!(
                "(#200) app {} has no token for page {}",
                acting.app, acting.page
            )));
        };
        Ok((managed.graph_base_url.clone(), token.expose().to_owned()))
    }

    /// Records a fact Meta accepted; a fact that cannot be recorded is
    /// logged (Meta's answer still reaches the app: the change happened).
    async fn record_fact(&self, event: domain::Event) {
        let recorded = self
            .recorder
            .record(OnBusy::Retry, |_| {
                Ok((vec![Planned::new(event.clone())], ()))
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "a change Meta accepted could not be recorded");
        }
    }

    /// `…/messenger_profile`: any app on the page reads it; only an app
    /// allowed `may_set_messenger_profile` changes it, and each change Meta
    /// accepts is recorded.
    pub async fn messenger_profile(&self, acting: &Acting, call: ProfileCall) -> GraphAnswer {
        let (base, token) = match self.page_token(acting) {
            Ok(t) => t,
            Err(e) => return refused(400, e),
        };
        let page = acting.page.as_str();
        let allowed = self
            .config
            .managed(&acting.app)
            .is_some_and(|(_, m)| m.may_set_messenger_profile);
        let (answer, change) = match call {
            ProfileCall::Get { fields } => {
                let query = [("fields", fields.as_str())];
                let answer = self
                    .graph
                    .get(&base, &acting.version, page, "messenger_profile", &token, &query)
                    .await;
                self.note_token(&acting.page, &acting.app, "messenger_profile", &answer)
                    .await;
                return answer;
            }
            _ if !allowed => {
                return refused(
                    403,
                    graph::error(
                        code::ACCESS_DENIED,
                        None,
                        format!("(#200) app {} may not change the Messenger Profile of page {page}: it is a setting of the whole page (allow it with may_set_messenger_profile = true)", acting.app),
                    ),
                )
            }
            ProfileCall::Set { properties } => {
                let answer = self
                    .send_graph
                    .post(&base, &acting.version, page, "messenger_profile", &token, &properties)
                    .await;
                (answer, ProfileChange::Set { properties })
            }
            ProfileCall::Delete { fields } => {
                let body = serde_json::json!({ "fields": fields });
                let answer = self
                    .send_graph
                    .delete(&base, &acting.version, page, "messenger_profile", &token, &body)
                    .await;
                (answer, ProfileChange::Delete { fields })
            }
        };
        self.note_token(&acting.page, &acting.app, "messenger_profile", &answer)
            .await;
        if matches!(answer, GraphAnswer::Ok(_)) {
            self.record_fact(
                MessengerProfileChanged {
                    page: acting.page.clone(),
                    app: acting.app.clone(),
                    at: self.clock.now(),
                    change,
                }
                .into(),
            )
            .await;
        }
        answer
    }

    /// `message_attachments`: the upload goes to Meta as it came; the id
    /// Meta gives is recorded with what was uploaded.
    pub async fn upload_attachment(&self, acting: &Acting, upload: Upload) -> GraphAnswer {
        let (base, token) = match self.page_token(acting) {
            Ok(t) => t,
            Err(e) => return refused(400, e),
        };
        let answer = self
            .send_graph
            .post_raw(
                &base,
                &acting.version,
                acting.page.as_str(),
                "message_attachments",
                &token,
                &upload.content_type,
                upload.body,
            )
            .await;
        self.note_token(&acting.page, &acting.app, "message_attachments", &answer)
            .await;
        if let GraphAnswer::Ok(body) = &answer {
            if let Some(id) = wire::webhook::id_string(&body["attachment_id"]) {
                self.record_fact(
                    AttachmentUploaded {
                        page: acting.page.clone(),
                        app: acting.app.clone(),
                        at: self.clock.now(),
                        attachment_id: id,
                        kind: upload.kind,
                        bytes: upload.file_bytes,
                        sha256: upload.file_sha256,
                        url: upload.url,
                    }
                    .into(),
                )
                .await;
            }
        }
        answer
    }

    /// `pass_thread_metadata`: the thread's controlling app only (checked
    /// against the ledger before Meta is asked); recorded once Meta accepts.
    pub async fn pass_thread_metadata(
        &self,
        acting: &Acting,
        psid: Psid,
        metadata: String,
    ) -> GraphAnswer {
        let thread = ThreadKey::new(acting.page.clone(), psid);
        let now = self.clock.now();
        let checked = {
            let snapshot = self.projections.read();
            match snapshot.pages.get(&thread.page) {
                Some(page) => {
                    rules::check_thread_metadata(&snapshot.ledger(&thread), page, &acting.app, now)
                }
                None => {
                    return refused(
                        400,
                        graph::error(
                            code::INVALID_PARAMETER,
                            Some(code::SUB_NO_SUCH_OBJECT),
                            format!("(#100) page {} is not configured", thread.page),
                        ),
                    )
                }
            }
        };
        if let Err(r) = checked {
            return rejected(&r);
        }
        let (base, token) = match self.page_token(acting) {
            Ok(t) => t,
            Err(e) => return refused(400, e),
        };
        let body = serde_json::json!({ "recipient": { "id": thread.psid.as_str() }, "metadata": metadata });
        let answer = self
            .send_graph
            .post(
                &base,
                &acting.version,
                thread.page.as_str(),
                "pass_thread_metadata",
                &token,
                &body,
            )
            .await;
        self.note_token(&acting.page, &acting.app, "pass_thread_metadata", &answer)
            .await;
        if matches!(answer, GraphAnswer::Ok(_)) {
            let event = ThreadMetadataPassed {
                thread: thread.clone(),
                app: acting.app.clone(),
                at: self.clock.now(),
                metadata,
            };
            let recorded = self
                .recorder
                .record_on(&thread, OnBusy::Retry, |_, _, _| {
                    (vec![event.clone().into()], ())
                })
                .await;
            if let Err(e) = recorded {
                tracing::error!(error = %e, "a metadata pass Meta accepted could not be recorded");
            }
        }
        answer
    }

    /// A private reply (`messages` with `recipient.comment_id`): one per
    /// comment, so a comment already answered is refused here; whether the
    /// comment exists and is under 7 days old only Meta knows (Baton does
    /// not receive the page's feed). Recorded once Meta accepts.
    pub async fn private_reply(
        &self,
        acting: &Acting,
        comment_id: String,
        payload: Value,
    ) -> GraphAnswer {
        let key = (acting.page.clone(), comment_id.clone());
        if self.projections.read().replied_comments.contains(&key) {
            return refused(
                400,
                graph::error(
                    code::ALREADY_REPLIED,
                    None,
                    format!("(#10900) The comment has already been replied to: comment {comment_id} was answered with a private reply before (one per comment)"),
                ),
            );
        }
        let (base, token) = match self.page_token(acting) {
            Ok(t) => t,
            Err(e) => return refused(400, e),
        };
        let answer = self
            .send_graph
            .post(
                &base,
                &acting.version,
                acting.page.as_str(),
                "messages",
                &token,
                &payload,
            )
            .await;
        self.note_token(&acting.page, &acting.app, "messages", &answer)
            .await;
        if let GraphAnswer::Ok(body) = &answer {
            self.record_fact(
                PrivateReplySent {
                    page: acting.page.clone(),
                    app: acting.app.clone(),
                    at: self.clock.now(),
                    comment_id,
                    recipient_id: wire::webhook::id_string(&body["recipient_id"]),
                    message_id: body["message_id"].as_str().map(str::to_owned),
                }
                .into(),
            )
            .await;
        }
        answer
    }
}
