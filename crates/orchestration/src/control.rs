//! Thread-control calls (pass, take, request, release, extend): decide and
//! record, call Meta with the acting app's page token, record Meta's answer
//! (the handover fact, or drift), then reconcile with Meta's `thread_owner`
//! when the answer contradicts the ledger or never came. The call's steps
//! are data ([`after_answer`]); nothing leaves before the decision is durable.

use domain::events::{Event, GraphError, GraphOutcome};
use domain::rules;
use domain::{Command, Psid, Rejection, ThreadKey};
use event_log::EventStore;
use serde_json::{json, Value};

use crate::graph_client::GraphAnswer;
use crate::record::{OnBusy, RecordError};
use crate::{Acting, Baton};

/// Why a call got no success to report.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Baton refused it, as Meta would have; Meta was not called.
    #[error("{}", .0.reason)]
    Refused(Rejection),
    /// The decision could not be recorded; Meta was not called.
    #[error("the call could not be recorded")]
    NotRecorded(#[source] RecordError),
    /// Baton cannot act for the app at Meta (no page token).
    #[error("{}", .0.message)]
    CannotAct(GraphError),
    /// Meta's error, as Meta sent it (HTTP status and body kept).
    #[error("{}", .error.message)]
    Meta {
        status: u16,
        error: GraphError,
        body: Value,
    },
    /// Meta did not answer; Baton recorded that and asked `thread_owner`.
    #[error("Meta did not answer: {0}")]
    NoAnswer(String),
    /// Meta answered but the answer could not be recorded.
    #[error("Meta answered but the answer could not be recorded")]
    AnswerNotRecorded(#[source] RecordError),
}

/// What follows Meta's answer, once it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask Meta who owns the thread and record the answer.
    Reconcile { thread: ThreadKey },
}

/// The effects of a recorded answer: reconcile when Meta contradicted the
/// ledger (the owner is now unknown) or did not answer at all.
pub fn after_answer(thread: &ThreadKey, outcome: &GraphOutcome, recorded: &[Event]) -> Vec<Effect> {
    let drifted = crate::reconcile::contradicted(recorded).next().is_some();
    if drifted || matches!(outcome, GraphOutcome::Unknown { .. }) {
        vec![Effect::Reconcile {
            thread: thread.clone(),
        }]
    } else {
        Vec::new()
    }
}

/// The request body Meta gets for a command.
fn upstream_body(psid: &Psid, command: &Command) -> Value {
    let mut body = json!({ "recipient": { "id": psid.as_str() } });
    match command {
        Command::PassThreadControl {
            target: Some(t), ..
        } => body["target_app_id"] = json!(t.as_str()),
        Command::ExtendThreadControl { duration_secs, .. } => {
            body["duration"] = json!(duration_secs)
        }
        _ => {}
    }
    let metadata = match command {
        Command::PassThreadControl { metadata, .. }
        | Command::TakeThreadControl { metadata, .. }
        | Command::RequestThreadControl { metadata, .. }
        | Command::ReleaseThreadControl { metadata, .. } => metadata.as_ref(),
        _ => None,
    };
    if let Some(m) = metadata {
        body["metadata"] = json!(m);
    }
    body
}

impl<S: EventStore + 'static> Baton<S> {
    /// Carries out a thread-control command for `acting` on `psid`'s thread
    /// and answers Meta's success body.
    #[tracing::instrument(skip_all, fields(app = %acting.app, page = %acting.page, psid = %psid, edge = command.name()))]
    pub async fn control(
        &self,
        acting: &Acting,
        psid: Psid,
        command: Command,
    ) -> Result<Value, CallError> {
        let thread = ThreadKey::new(acting.page.clone(), psid.clone());
        let now = self.clock.now();

        // 1. Decide and record; a refusal that rests on an owner Meta's news
        // contradicted, not yet checked, is checked with Meta first.
        if self.owner_refusal_in_doubt(&thread, &command, now, false) {
            self.reconcile_ahead(&thread, &acting.version).await;
        }
        let decided = self
            .recorder
            .record_on(
                &thread,
                OnBusy::Fail,
                |_, ledger, page| match rules::decide(ledger, page, &command, now) {
                    Ok(events) => (events, Ok(())),
                    Err(r) => (vec![rules::refusal(ledger, &command, &r, now)], Err(r)),
                },
            )
            .await
            .map_err(CallError::NotRecorded)?;
        if let Err(rejection) = decided.value {
            tracing::info!(code = rejection.code, reason = %rejection.reason, "thread-control call refused");
            return Err(CallError::Refused(rejection));
        }

        // 2. Call Meta with the acting app's page token.
        let answer = match self.config.managed(&acting.app) {
            None => Err(format!("(#200) app {} is not managed by Baton", acting.app)),
            Some((_, managed)) => match managed.page_tokens.get(&acting.page) {
                None => Err(format!("(#200) no page token for page {}", acting.page)),
                Some(token) => Ok(self
                    .graph
                    .post(
                        &managed.graph_base_url,
                        &acting.version,
                        acting.page.as_str(),
                        command.name(),
                        token.expose(),
                        &upstream_body(&psid, &command),
                    )
                    .await),
            },
        };
        let answer = match answer {
            Ok(a) => {
                self.note_token(&acting.page, &acting.app, command.name(), &a)
                    .await;
                a
            }
            Err(message) => GraphAnswer::Err {
                status: 403,
                error: domain::graph::error(domain::graph::code::ACCESS_DENIED, None, message),
                body: Value::Null,
            },
        };
        let outcome = match &answer {
            GraphAnswer::Ok(_) => GraphOutcome::Succeeded,
            GraphAnswer::Err { error, .. } => GraphOutcome::Failed {
                error: error.clone(),
            },
            GraphAnswer::Unknown(reason) => GraphOutcome::Unknown {
                reason: reason.clone(),
            },
        };

        // 3. Record Meta's answer (the handover fact, or drift), then its effects.
        let now = self.clock.now();
        let settled = self
            .recorder
            .record_on(&thread, OnBusy::Retry, |_, ledger, page| {
                (
                    rules::settle_control(ledger, page, &command, &outcome, now),
                    (),
                )
            })
            .await
            .map_err(CallError::AnswerNotRecorded)?;
        for effect in after_answer(&thread, &outcome, &settled.events) {
            match effect {
                Effect::Reconcile { thread } => {
                    self.reconcile(&thread, &acting.version).await;
                }
            }
        }

        match answer {
            GraphAnswer::Ok(body) if body.is_object() => Ok(body),
            GraphAnswer::Ok(_) => Ok(json!({ "success": true })),
            GraphAnswer::Err {
                status,
                error,
                body,
            } => Err(CallError::Meta {
                status,
                error,
                body,
            }),
            GraphAnswer::Unknown(reason) => Err(CallError::NoAnswer(reason)),
        }
    }
}
