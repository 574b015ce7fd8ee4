//! Baton's own read API for people and tools: a thread's state now, and its
//! timeline (every fact and decision, in order, with reasons). Read-only.
//! Callers authenticate with the bearer token of an app on the page or the
//! admin token.

use actix_web::{web, HttpRequest, HttpResponse};
use domain::events::Event;
use domain::rules;
use domain::{PageId, Psid, ThreadKey, ThreadLedger};
use event_log::EventStore;
use serde_json::{json, Value};

use crate::auth::{bearer, identify, Identity};
use crate::error::ApiError;
use crate::AppState;

/// Checks the bearer token: the admin token, or the token of an app on `page`.
pub fn authorize<S>(
    state: &AppState<S>,
    req: &HttpRequest,
    page: Option<&PageId>,
) -> Result<(), ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    match identify(&state.config, token) {
        Some(Identity::Admin) => Ok(()),
        Some(Identity::App(a, _))
            if page.is_none_or(|p| {
                state
                    .config
                    .page(p)
                    .is_some_and(|pg| pg.apps.contains_key(&a.id))
            }) =>
        {
            Ok(())
        }
        _ => Err(ApiError::Unauthorized),
    }
}

fn thread_key(page: &str, psid: &str) -> Result<ThreadKey, ApiError> {
    let page = PageId::parse(page).map_err(|e| ApiError::BadRequest(format!("page id: {e}")))?;
    let psid = Psid::parse(psid).map_err(|e| ApiError::BadRequest(format!("psid: {e}")))?;
    Ok(ThreadKey::new(page, psid))
}

/// The thread's state as JSON: owner, state, expiry, window, tokens, requests.
pub fn thread_view(ledger: &ThreadLedger, page: &domain::Page, now: domain::Timestamp) -> Value {
    let control = rules::control_at(ledger, page, now);
    let (state_name, owner) = match &control {
        domain::events::ControlView::Idle => ("idle", Value::Null),
        domain::events::ControlView::Owner { app } => ("active", json!(app.as_str())),
        domain::events::ControlView::Unknown => ("unknown", Value::Null),
    };
    let window_closes = ledger.window.map(|w| w.closes_at);
    json!({
        "page_id": ledger.key.page.as_str(),
        "psid": ledger.key.psid.as_str(),
        "mode": page.mode.name(),
        "state": state_name,
        "owner": owner,
        "answering_app": rules::answering_app(&control, page).map(|a| a.as_str()),
        "control_expires_at": if owner.is_null() { None } else { rules::control_expiry(ledger, page).map(|t| t.millis()) },
        "last_user_action_at": ledger.last_user_action.map(|t| t.millis()),
        "window_closes_at": window_closes.map(|t| t.millis()),
        "window_open": window_closes.is_some_and(|c| now < c),
        "tokens": ledger.tokens.iter().map(|t| json!({
            "payload": t.payload,
            "issued_at": t.issued_at.millis(),
            "expires_at": t.expires_at.millis(),
            "available": t.consumed.is_none() && now < t.expires_at,
        })).collect::<Vec<_>>(),
        "pending_requests": ledger.pending_requests.iter().map(|r| json!({
            "app": r.app.as_str(), "at": r.at.millis(), "metadata": r.metadata,
        })).collect::<Vec<_>>(),
        "version": ledger.version,
    })
}

/// `GET /api/threads/{page_id}/{psid}`.
pub async fn thread<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (page, psid) = path.into_inner();
    let key = thread_key(&page, &psid)?;
    authorize(&state, &req, Some(&key.page))?;
    let snapshot = state.projections.read();
    let page = snapshot
        .pages
        .get(&key.page)
        .ok_or_else(|| ApiError::NotFound(format!("page {} is not configured", key.page)))?;
    let ledger = snapshot
        .thread(&key)
        .cloned()
        .unwrap_or_else(|| ThreadLedger::new(key.clone()));
    Ok(HttpResponse::Ok().json(thread_view(&ledger, page, state.clock.now())))
}

/// `GET /api/threads/{page_id}/{psid}/timeline?from=VERSION&limit=N`: up to
/// `limit` events (default 1000, at most 10000) from stream version `from`
/// (default 1); `next` gives the version to continue from.
pub async fn timeline<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String)>,
    query: web::Query<std::collections::HashMap<String, String>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (page, psid) = path.into_inner();
    let key = thread_key(&page, &psid)?;
    authorize(&state, &req, Some(&key.page))?;
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be a whole number"))),
        }
    };
    let from = number("from", 1)?.max(1);
    let limit = number("limit", 1000)?.clamp(1, 10_000) as usize;
    let records = state
        .store
        .read_stream(&key.stream_name(), from, limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.stream_version + 1))
        .flatten();
    let entries: Vec<Value> = records
        .iter()
        .map(
            |r| match Event::decode(&r.type_name, r.schema_version, &r.payload) {
                Ok(event) => json!({
                    "position": r.position,
                    "version": r.stream_version,
                    "recorded_at": r.recorded_at_ms,
                    "type": r.type_name,
                    "explanation": domain::explain::explain(&event),
                    "event": serde_json::to_value(&event).unwrap_or(Value::Null),
                }),
                Err(e) => json!({
                    "position": r.position,
                    "version": r.stream_version,
                    "type": r.type_name,
                    "explanation": format!("cannot be read by this version of Baton: {e}"),
                }),
            },
        )
        .collect();
    Ok(HttpResponse::Ok().json(
        json!({ "page_id": key.page.as_str(), "psid": key.psid.as_str(), "events": entries, "next": next }),
    ))
}
