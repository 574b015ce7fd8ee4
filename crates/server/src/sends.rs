//! The send path: `POST /v{n}/{me|page_id}/messages` behind Baton's policy.
//! A send is parsed from Meta's request shape, decided by the domain
//! (ownership, window, tags, One-Time Notification tokens), recorded, and
//! only then attempted (the outbox: durable before it leaves). The outcome is
//! recorded before the app gets Meta's answer. Retries happen only where they
//! cannot double-send: rate limits and failures Meta documents as not sent.
//! An unknown outcome is settled by the message's echo, never by a blind retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::{GraphError, SendOutcome};
use domain::rules;
use domain::{
    AppId, Command, CommandId, InlineControl, MessagingType, PageId, Psid, Recipient, SendContent,
    SendMessage, SenderAction, ThreadKey,
};
use event_log::EventStore;
use serde_json::{json, Map, Value};

use crate::graph_api::{
    authenticate, meta_error, record_error, rejection_response, Caller, GraphFailure,
};
use crate::graph_client::GraphAnswer;
use crate::projections::{SendStatus, SEND_METADATA_PREFIX};
use crate::record::record_with;
use crate::AppState;

/// A token bucket per page, plus a pause when Meta says a page is throttled.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    pages: Mutex<HashMap<PageId, Bucket>>,
    delayed: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    paused_until: Option<Instant>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            rate: per_second.max(0.001),
            burst: burst.max(1.0),
            pages: Mutex::new(HashMap::new()),
            delayed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Waits until the page may send one more request.
    pub async fn acquire(&self, page: &PageId) {
        let mut waited = false;
        loop {
            let wait = {
                let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let b = pages.entry(page.clone()).or_insert(Bucket {
                    tokens: self.burst,
                    last: now,
                    paused_until: None,
                });
                b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * self.rate)
                    .min(self.burst);
                b.last = now;
                match b.paused_until {
                    Some(until) if until > now => until - now,
                    _ if b.tokens >= 1.0 => {
                        b.tokens -= 1.0;
                        return;
                    }
                    _ => Duration::from_secs_f64((1.0 - b.tokens) / self.rate),
                }
            };
            if !waited {
                waited = true;
                self.delayed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Holds every send to `page` for `for_`: Meta said the page is throttled.
    pub fn pause(&self, page: &PageId, for_: Duration) {
        let mut pages = self.pages.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let b = pages.entry(page.clone()).or_insert(Bucket {
            tokens: 0.0,
            last: now,
            paused_until: None,
        });
        b.paused_until = Some(now + for_);
    }

    /// How many sends had to wait for the limiter.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn bad_param(message: impl AsRef<str>) -> GraphFailure {
    meta_error(
        StatusCode::BAD_REQUEST,
        100,
        None,
        format!("(#100) {}", message.as_ref()),
    )
}

fn new_id() -> CommandId {
    CommandId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id")
}

/// Parses Meta's send request into the domain's command.
pub fn parse_send(
    caller: &Caller,
    idempotency_key: Option<String>,
) -> Result<SendMessage, GraphFailure> {
    let p = &caller.params;
    let recipient = match p.get("recipient") {
        Some(Value::Object(r)) => {
            if let Some(id) = r.get("id").and_then(wire::webhook::id_string) {
                Recipient::Psid(
                    Psid::parse(id)
                        .map_err(|e| bad_param(format!("param recipient.id is not valid: {e}")))?,
                )
            } else if let Some(t) = r.get("one_time_notif_token").and_then(Value::as_str) {
                Recipient::OneTimeToken(t.to_owned())
            } else if let Some(u) = r.get("user_ref").and_then(Value::as_str) {
                Recipient::UserRef(u.to_owned())
            } else {
                return Err(bad_param(
                    "param recipient must have one of id, one_time_notif_token, user_ref",
                ));
            }
        }
        Some(_) => return Err(bad_param("param recipient must be an object")),
        None => return Err(bad_param("The parameter recipient is required")),
    };
    let messaging_type = match p.get("messaging_type").and_then(Value::as_str) {
        None => None,
        Some("RESPONSE") => Some(MessagingType::Response),
        Some("UPDATE") => Some(MessagingType::Update),
        Some("MESSAGE_TAG") => Some(MessagingType::MessageTag),
        Some("UTILITY") => Some(MessagingType::Utility),
        Some(other) => return Err(bad_param(format!("param messaging_type must be one of RESPONSE, UPDATE, MESSAGE_TAG, UTILITY; got {other:?}"))),
    };
    let tag = match p.get("tag") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(bad_param("param tag must be a string")),
    };
    let content = match (p.get("message"), p.get("sender_action")) {
        (Some(_), Some(_)) => {
            return Err(bad_param(
                "sender_action must be sent alone, without message",
            ))
        }
        (Some(Value::Object(m)), None) => {
            let has_text = m.get("text").is_some();
            let has_attachment = m.get("attachment").is_some();
            if has_text == has_attachment {
                return Err(bad_param(
                    "param message must contain exactly one of text or attachment",
                ));
            }
            if let Some(t) = m.get("text") {
                match t.as_str() {
                    Some(text) if !text.is_empty() && text.chars().count() <= 2000 => {}
                    _ => return Err(bad_param(
                        "param message.text must be a non-empty string of at most 2000 characters",
                    )),
                }
            }
            let metadata = match m.get("metadata") {
                None => None,
                Some(Value::String(s)) if s.starts_with(SEND_METADATA_PREFIX) => {
                    return Err(bad_param(format!(
                        "param message.metadata may not start with {SEND_METADATA_PREFIX:?}: Baton uses that prefix to match echoes"
                    )))
                }
                Some(Value::String(s)) if s.chars().count() < 1000 => Some(s.clone()),
                Some(_) => {
                    return Err(bad_param(
                        "param message.metadata must be a string shorter than 1000 characters",
                    ))
                }
            };
            SendContent::Message { metadata }
        }
        (Some(_), None) => return Err(bad_param("param message must be an object")),
        (None, Some(a)) => {
            let action = match a.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("typing_on") => SenderAction::TypingOn,
                Some("typing_off") => SenderAction::TypingOff,
                Some("mark_seen") => SenderAction::MarkSeen,
                Some("react") => SenderAction::React,
                Some("unreact") => SenderAction::Unreact,
                _ => return Err(bad_param("param sender_action must be typing_on, typing_off, mark_seen, react or unreact")),
            };
            SendContent::SenderAction { action }
        }
        (None, None) => return Err(bad_param("one of message or sender_action is required")),
    };
    let thread_control = match p.get("thread_control") {
        None | Some(Value::Null) => None,
        Some(Value::Object(tc)) => match tc.get("control_type").and_then(Value::as_str) {
            Some("pass") => Some(InlineControl::Pass {
                app_id: match tc.get("app_id").filter(|v| !v.is_null()) {
                    None => None,
                    Some(v) => Some(
                        wire::webhook::id_string(v)
                            .and_then(|s| AppId::parse(s).ok())
                            .ok_or_else(|| {
                                bad_param("param thread_control.app_id must be an app id")
                            })?,
                    ),
                },
            }),
            // Meta: without control_type, the default is release.
            Some("release") | None => Some(InlineControl::Release),
            Some(other) => {
                return Err(bad_param(format!(
                    "param thread_control.control_type must be pass or release; got {other:?}"
                )))
            }
        },
        Some(_) => return Err(bad_param("param thread_control must be an object")),
    };
    let mut payload: Map<String, Value> = p.clone();
    payload.remove("access_token");
    payload.remove("appsecret_proof");
    Ok(SendMessage {
        send_id: new_id(),
        app: caller.app.clone(),
        recipient,
        messaging_type,
        tag,
        content,
        thread_control,
        payload: Value::Object(payload),
        idempotency_key,
    })
}

/// Where a send is recorded: the recipient's thread, the token's thread, or
/// a synthetic thread `user_ref-<ref>` for plugin user refs (no PSID yet).
fn thread_of<S>(
    state: &AppState<S>,
    page: &PageId,
    send: &SendMessage,
) -> Result<ThreadKey, GraphFailure> {
    match &send.recipient {
        Recipient::Psid(psid) => Ok(ThreadKey::new(page.clone(), psid.clone())),
        Recipient::OneTimeToken(token) => {
            let snapshot = state.projections.read();
            let thread = snapshot
                .tokens
                .get(token)
                .cloned()
                .ok_or_else(|| rejection_response(&rules::unknown_token()))?;
            if &thread.page != page {
                return Err(rejection_response(&domain::Rejection::new(
                    domain::RejectionKind::TokenWrongPage,
                    format!(
                        "one_time_notif_token belongs to page {}, not {page}",
                        thread.page
                    ),
                )));
            }
            Ok(thread)
        }
        Recipient::UserRef(r) => {
            let safe: String = r
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let psid = Psid::parse(format!("user_ref-{safe}"))
                .map_err(|e| bad_param(format!("param recipient.user_ref: {e}")))?;
            Ok(ThreadKey::new(page.clone(), psid))
        }
    }
}

enum Decided {
    Accepted,
    Refused(domain::Rejection),
    Replay(CommandId),
}

/// The app's answer for a send's status.
fn answer(status: &SendStatus) -> Result<HttpResponse, GraphFailure> {
    match status {
        SendStatus::Sent { message_id, recipient_id } => {
            let mut body = json!({ "message_id": message_id });
            if let Some(r) = recipient_id {
                body["recipient_id"] = json!(r);
            }
            Ok(HttpResponse::Ok().json(body))
        }
        SendStatus::Failed { error } => Err(GraphFailure {
            status: StatusCode::BAD_REQUEST,
            code: error.code,
            subcode: error.subcode,
            message: error.message.clone(),
            body: Some(json!({ "error": {
                "message": error.message, "type": "OAuthException", "code": error.code,
                "error_subcode": error.subcode, "fbtrace_id": error.fbtrace_id,
            }})),
        }),
        SendStatus::Unknown { reason } => Err(meta_error(
            StatusCode::GATEWAY_TIMEOUT,
            2,
            None,
            format!("(#2) the outcome of this send is unknown ({reason}); Baton will settle it by its echo — do not resend"),
        )),
        SendStatus::Refused { rejection } => Err(rejection_response(rejection)),
        SendStatus::Pending => Err(meta_error(
            StatusCode::CONFLICT,
            2,
            None,
            "(#2) the first request with this Idempotency-Key is still in flight",
        )),
    }
}

/// `POST …/messages`.
pub async fn messages<S: EventStore + 'static>(
    state: &AppState<S>,
    caller: Caller,
    req: &HttpRequest,
) -> Result<HttpResponse, GraphFailure> {
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 200);
    let mut send = parse_send(&caller, idempotency_key)?;
    let thread = thread_of(state, &caller.page, &send)?;
    if matches!(send.content, SendContent::Message { metadata: None }) {
        // Tag the message so its echo can settle an unknown outcome.
        let tag = format!("{SEND_METADATA_PREFIX}{}", send.send_id);
        if let Some(m) = send
            .payload
            .get_mut("message")
            .and_then(Value::as_object_mut)
        {
            m.insert("metadata".into(), json!(tag));
        }
    }
    let now = state.clock.now();
    let command = Command::SendMessage(send.clone());
    let decided = record_with(state, &thread, |snapshot, ledger, page| {
        if let Some(key) = &send.idempotency_key {
            if let Some(first) = snapshot.idempotency.get(&(send.app.clone(), key.clone())) {
                return (Vec::new(), Decided::Replay(first.clone()));
            }
        }
        match rules::decide(ledger, page, &command, now) {
            Ok(events) => (events, Decided::Accepted),
            Err(r) => (
                vec![rules::refusal(ledger, &command, &r, now)],
                Decided::Refused(r),
            ),
        }
    })
    .await
    .map_err(|e| record_error(&e))?;
    match decided.0 {
        Decided::Refused(r) => {
            tracing::info!(code = r.code, reason = %r.reason, "send refused");
            return Err(rejection_response(&r));
        }
        Decided::Replay(first) => return replay(state, &first).await,
        Decided::Accepted => {}
    }

    let outcome = attempt(state, &caller, &send).await;
    let now = state.clock.now();
    let settled = crate::record::record_settlement(state, &thread, |snapshot, ledger, page| {
        let mut events = rules::settle_send(ledger, page, &send, &outcome, now);
        // Meta sent the echo before Baton gave up waiting: it settles the send now.
        if let (SendOutcome::Unknown { .. }, Some(mid)) =
            (&outcome, snapshot.echoed.get(&send.send_id))
        {
            let mut after = ledger.clone();
            for e in &events {
                after.apply(e);
            }
            events.extend(rules::settle_send(
                &after,
                page,
                &send,
                &SendOutcome::SettledByEcho { mid: mid.clone() },
                now,
            ));
        }
        (events, ())
    })
    .await;
    match settled {
        Err(e) => {
            tracing::error!(error = %e, send = %send.send_id, "Meta answered a send but the answer could not be recorded");
            return Err(meta_error(
                StatusCode::SERVICE_UNAVAILABLE,
                2,
                None,
                format!("(#2) Meta answered this send but Baton could not record the answer ({e}); do not resend: Baton settles it from the echo"),
            ));
        }
        Ok(((), events)) => {
            let drifted = events
                .iter()
                .any(|e| matches!(e, domain::Event::OwnershipDriftDetected(d) if d.observed == domain::events::ControlView::Unknown));
            if drifted {
                crate::graph_api::reconcile(state, &thread, &caller.version).await;
            }
        }
    }
    let status = SendStatus::from_outcome(&outcome, thread.psid.as_str());
    answer(&status)
}

/// Answers a retried request with what the first one got, waiting while the
/// first is still in flight.
async fn replay<S: EventStore + 'static>(
    state: &AppState<S>,
    first: &CommandId,
) -> Result<HttpResponse, GraphFailure> {
    let deadline = Instant::now()
        + Duration::from_millis(
            state.config.graph_timeout_ms * u64::from(state.config.send_max_attempts + 1),
        );
    loop {
        let status = state
            .projections
            .read()
            .sends
            .get(first)
            .map(|r| r.status.clone());
        match status {
            Some(SendStatus::Pending) | None if Instant::now() < deadline => {
                let next = state.projections.position() + 1;
                let _ = tokio::time::timeout(
                    Duration::from_millis(100),
                    state.projections.wait_for(next),
                )
                .await;
            }
            Some(s) => return answer(&s),
            None => return answer(&SendStatus::Pending),
        }
    }
}

/// Rate limits that Meta answers when a page or app sends too much.
fn is_rate_limit(e: &GraphError) -> bool {
    matches!(e.code, 4 | 17 | 32 | 613 | 80_006)
}

/// Failures Meta documents as "not sent, retry with backoff".
fn is_retryable_not_sent(e: &GraphError) -> bool {
    matches!(e.code, 2 | 1200) && !(e.code == 1 && e.subcode == Some(1_357_046))
}

/// Calls Meta, retrying only where no message can go out twice.
async fn attempt<S: EventStore + 'static>(
    state: &AppState<S>,
    caller: &Caller,
    send: &SendMessage,
) -> SendOutcome {
    let Some((_, managed)) = state.config.managed(&caller.app) else {
        return SendOutcome::Failed {
            error: GraphError {
                code: 200,
                subcode: None,
                message: "(#200) the app is not managed by Baton".into(),
                fbtrace_id: None,
                is_transient: false,
            },
        };
    };
    let Some(token) = managed.page_tokens.get(&caller.page) else {
        return SendOutcome::Failed {
            error: GraphError {
                code: 200,
                subcode: None,
                message: format!("(#200) no page token for page {}", caller.page),
                fbtrace_id: None,
                is_transient: false,
            },
        };
    };
    let max = state.config.send_max_attempts.max(1);
    let mut tries = 0;
    loop {
        tries += 1;
        state.limiter.acquire(&caller.page).await;
        let answer = state
            .send_graph
            .post(
                &managed.graph_base_url,
                &caller.version,
                caller.page.as_str(),
                "messages",
                token.expose(),
                &send.payload,
            )
            .await;
        let backoff = Duration::from_millis(
            state
                .config
                .send_backoff_ms
                .saturating_mul(1 << tries.min(10)),
        );
        match answer {
            GraphAnswer::Ok(body) => {
                let message_id = body["message_id"].as_str().unwrap_or_default().to_owned();
                let recipient_id = body["recipient_id"].as_str().map(str::to_owned);
                return SendOutcome::Sent {
                    message_id,
                    recipient_id,
                };
            }
            GraphAnswer::Err { error, .. } if is_rate_limit(&error) && tries < max => {
                tracing::warn!(page = %caller.page, code = error.code, "Meta is throttling the page; holding its sends");
                state.limiter.pause(&caller.page, backoff);
            }
            GraphAnswer::Err { error, .. } if is_retryable_not_sent(&error) && tries < max => {
                tracing::warn!(
                    code = error.code,
                    "transient send failure that Meta documents as not sent; retrying"
                );
                tokio::time::sleep(backoff).await;
            }
            GraphAnswer::Err { error, .. }
                if error.code == 1 && error.subcode == Some(1_357_046) =>
            {
                return SendOutcome::Unknown {
                    reason: format!(
                        "Meta answered {} but the message may have been sent",
                        error.message
                    ),
                }
            }
            GraphAnswer::Err { error, .. } => return SendOutcome::Failed { error },
            GraphAnswer::Unknown(reason) => return SendOutcome::Unknown { reason },
        }
    }
}

/// `POST /api/sends/check`: the same body as a send; says whether Baton would
/// accept it now, and why. Records nothing, sends nothing.
pub async fn check<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, GraphFailure> {
    let node = crate::graph_api::params(&req, &body)?
        .get("page_id")
        .and_then(wire::webhook::id_string)
        .unwrap_or_else(|| "me".to_owned());
    let mut caller = authenticate(&state, &req, &node, "v21.0", &body)?;
    caller.params.remove("page_id");
    let send = parse_send(&caller, None)?;
    let thread = thread_of(&state, &caller.page, &send)?;
    let now = state.clock.now();
    let snapshot = state.projections.read();
    let page = snapshot
        .pages
        .get(&caller.page)
        .ok_or_else(|| bad_param("page not configured"))?;
    let ledger = snapshot
        .thread(&thread)
        .cloned()
        .unwrap_or_else(|| domain::ThreadLedger::new(thread.clone()));
    let window_closes_at = ledger.window.map(|w| w.closes_at.millis());
    let body = match rules::decide(&ledger, page, &Command::SendMessage(send), now) {
        Ok(events) => {
            let basis = events.iter().find_map(|e| match e {
                domain::Event::SendAccepted(a) => serde_json::to_value(&a.basis).ok(),
                _ => None,
            });
            json!({ "allowed": true, "basis": basis, "window_closes_at": window_closes_at })
        }
        Err(r) => json!({
            "allowed": false,
            "refusal": r.kind.name(),
            "code": r.code,
            "error_subcode": r.subcode,
            "reason": r.reason,
            "window_closes_at": window_closes_at,
        }),
    };
    Ok(HttpResponse::Ok().json(body))
}
