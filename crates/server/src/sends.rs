//! The send path over HTTP: `POST /v{n}/{me|page_id}/messages` and the dry
//! run `POST /api/sends/check`. A send is parsed from Meta's request shape
//! into the domain's command and handed to the application layer, which
//! decides (ownership, window, tags, One-Time Notification tokens), records,
//! and lets the outbox worker carry it to Meta; the handler renders the
//! outcome in Meta's shape. It holds no retry, no wait and no rule of Meta's.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use domain::graph::{code, limits};
use domain::{
    AppId, InlineControl, MessagingType, Psid, Recipient, SendContent, SendMessage, SenderAction,
};
use event_log::EventStore;
use orchestration::outbox::{Check, SendError};
use orchestration::projections::{SendStatus, SEND_METADATA_PREFIX};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::graph_api::{authenticate, Caller, GraphFailure};
use crate::AppState;

/// Longest `Idempotency-Key` Baton accepts.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn bad_param(message: impl AsRef<str>) -> GraphFailure {
    GraphFailure::bad_param(message)
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
            } else if r.contains_key("post_id") {
                return Err(bad_param(
                    "(#100) Unsupported post request: private replies to a post (recipient.post_id) are not served by Baton; reply to the comment (recipient.comment_id)",
                ));
            } else {
                return Err(bad_param(
                    "param recipient must have one of id, one_time_notif_token, user_ref",
                ));
            }
        }
        Some(_) => return Err(bad_param("param recipient must be an object")),
        None => return Err(bad_param("The parameter recipient is required")),
    };
    let messaging_type = match p.get("messaging_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(match t.as_str() {
            "RESPONSE" => MessagingType::Response,
            "UPDATE" => MessagingType::Update,
            "MESSAGE_TAG" => MessagingType::MessageTag,
            "UTILITY" => MessagingType::Utility,
            other => return Err(bad_param(format!("param messaging_type must be one of RESPONSE, UPDATE, MESSAGE_TAG, UTILITY; got {other:?}"))),
        }),
        Some(other) => {
            return Err(bad_param(format!(
                "param messaging_type must be a string (RESPONSE, UPDATE, MESSAGE_TAG or UTILITY); got {other}"
            )))
        }
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
                    Some(text)
                        if !text.is_empty()
                            && text.chars().count() <= limits::MESSAGE_TEXT_MAX_CHARS => {}
                    _ => {
                        return Err(bad_param(format!(
                        "param message.text must be a non-empty string of at most {} characters",
                        limits::MESSAGE_TEXT_MAX_CHARS
                    )))
                    }
                }
            }
            let metadata = match m.get("metadata") {
                None => None,
                Some(Value::String(s)) if s.starts_with(SEND_METADATA_PREFIX) => {
                    return Err(bad_param(format!(
                        "param message.metadata may not start with {SEND_METADATA_PREFIX:?}: Baton uses that prefix to match echoes"
                    )))
                }
                Some(Value::String(s)) if s.chars().count() < limits::METADATA_MAX_CHARS => {
                    Some(s.clone())
                }
                Some(_) => {
                    return Err(bad_param(format!(
                        "param message.metadata must be a string shorter than {} characters",
                        limits::METADATA_MAX_CHARS
                    )))
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
    // Inline control rides on messages only: Meta shows a sender action and
    // hands nothing over, so Baton neither checks nor records one.
    let thread_control = match content {
        SendContent::SenderAction { .. } => None,
        SendContent::Message { .. } => thread_control,
    };
    let mut payload: Map<String, Value> = p.clone();
    payload.remove("access_token");
    payload.remove("appsecret_proof");
    Ok(SendMessage {
        send_id: crate::graph_api::new_id(),
        app: caller.acting.app.clone(),
        recipient,
        messaging_type,
        tag,
        content,
        thread_control,
        payload: Value::Object(payload),
        idempotency_key,
        graph_version: None,
        request_digest: None,
    })
}

/// The app's answer for a send's status, in Meta's shape.
/// The app's answer in Meta's shape: `{"recipient_id", "message_id"}` for a
/// message, `{"recipient_id"}` alone for a sender action (Meta creates no
/// message for one).
fn answer(status: SendStatus, action: bool) -> Result<Value, GraphFailure> {
    match status {
        SendStatus::Sent {
            message_id,
            recipient_id,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(r) = recipient_id {
                body.insert("recipient_id".into(), json!(r));
            }
            if !action {
                body.insert("message_id".into(), json!(message_id));
            }
            Ok(Value::Object(body))
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
        SendStatus::Unknown { reason } => Err(GraphFailure::new(
            StatusCode::GATEWAY_TIMEOUT,
            code::TEMPORARY,
            None,
            format!("(#2) the outcome of this send is unknown ({reason}); Baton will settle it by its echo — do not resend"),
        )),
        SendStatus::Refused { rejection } => Err((&rejection).into()),
        SendStatus::Pending => Err(GraphFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::TEMPORARY,
            None,
            "(#2) this send is accepted and still in flight; retry with the same Idempotency-Key to get its outcome — do not resend without it",
        )),
    }
}

fn send_error(e: SendError) -> GraphFailure {
    match e {
        SendError::Refused(r) => (&r).into(),
        SendError::NotRecorded(e) => GraphFailure::unavailable(&e),
        SendError::KeyReused { key } => bad_param(format!(
            "Idempotency-Key {key:?} was already used with a different request; use a new key for a new message"
        )),
    }
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, GraphFailure> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| bad_param("Idempotency-Key must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY {
        return Err(bad_param(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// `POST …/messages`: Meta's answer body.
pub async fn messages<S: EventStore + 'static>(
    state: &AppState<S>,
    caller: Caller,
    idempotency_key: Option<String>,
) -> Result<Value, GraphFailure> {
    let send = parse_send(&caller, idempotency_key)?;
    let action = matches!(send.content, SendContent::SenderAction { .. });
    let status = state
        .baton
        .send(&caller.acting, send)
        .await
        .map_err(send_error)?;
    answer(status, action)
}

/// `POST /api/sends/check`: the same body as a send; says whether Baton would
/// accept it now, and why. Records nothing, sends nothing.
pub async fn check<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Authenticated and parsed like a send, answered in Baton's own shape.
    let as_api = |g: GraphFailure| match g.status {
        StatusCode::REQUEST_TIMEOUT => ApiError::BodyTimeout(state.config.body_timeout_ms),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
            limit: state.config.max_body_bytes,
        },
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited {
            app: "this app".into(),
        },
        StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(g.message),
        _ if g.code == code::INVALID_TOKEN => ApiError::Unauthorized,
        _ => ApiError::BadRequest(g.message),
    };
    let body = crate::graph_api::graph_body(&state, &req, payload)
        .await
        .map_err(as_api)?;
    let node = crate::graph_api::params(&req, &body)
        .map_err(as_api)?
        .get("page_id")
        .and_then(wire::webhook::id_string)
        .unwrap_or_else(|| "me".to_owned());
    let mut caller = authenticate(&state, &req, &node, "v21.0", &body).map_err(as_api)?;
    caller.params.remove("page_id");
    let send = parse_send(&caller, None).map_err(as_api)?;
    let check = state
        .baton
        .check_send(&caller.acting.page, &send)
        .map_err(|e| as_api(send_error(e)))?;
    let body = match check {
        Check::Allowed {
            basis,
            window_closes_at,
        } => json!({
            "allowed": true,
            "basis": basis,
            "window_closes_at": window_closes_at.map(|t| t.millis()),
        }),
        Check::Refused {
            rejection: r,
            window_closes_at,
        } => json!({
            "allowed": false,
            "refusal": r.kind.name(),
            "code": r.code,
            "error_subcode": r.subcode,
            "reason": r.reason,
            "window_closes_at": window_closes_at.map(|t| t.millis()),
        }),
    };
    Ok(HttpResponse::Ok().json(body))
}
