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

/// Who reads: the admin or the auditor (everything), or one app on the page
/// (thread state, and its own sends; other apps' sends without ids or content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    Everything,
    App(domain::AppId),
}

/// Checks the bearer token: the admin or auditor token, or the token of an
/// app on `page`.
pub fn authorize<S>(
    state: &AppState<S>,
    req: &HttpRequest,
    page: Option<&PageId>,
) -> Result<Reader, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    match identify(&state.config, token) {
        Some(id) if id.reads_everything() => Ok(Reader::Everything),
        Some(Identity::App(a, _))
            if page.is_none_or(|p| {
                state
                    .config
                    .page(p)
                    .is_some_and(|pg| pg.apps.contains_key(&a.id))
            }) =>
        {
            if !state.admit(&a.id) {
                return Err(ApiError::RateLimited {
                    app: a.id.to_string(),
                });
            }
            Ok(Reader::App(a.id.clone()))
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The app whose send an event is about, if it is about a send.
fn send_app<S>(state: &AppState<S>, event: &Event) -> Option<Option<domain::AppId>> {
    let by_id = |id: &domain::CommandId| {
        state
            .projections
            .read()
            .sends
            .get(id)
            .map(|r| r.app.clone())
    };
    match event {
        Event::SendAccepted(e) => Some(Some(e.send.app.clone())),
        Event::CommandRefused(e) => match &e.command {
            domain::Command::SendMessage(s) => Some(Some(s.app.clone())),
            _ => None,
        },
        Event::SendOutcomeRecorded(e) => Some(by_id(&e.send_id)),
        Event::SendAttempted(e) => Some(by_id(&e.send_id)),
        Event::SendRetryScheduled(e) => Some(by_id(&e.send_id)),
        Event::OneTimeTokenConsumed(e) => Some(by_id(&e.send_id)),
        Event::OneTimeTokenReleased(e) => Some(by_id(&e.send_id)),
        _ => None,
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
        "owner_confirmed_at": ledger.confirmed_at.map(|t| t.millis()),
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
    let _reader = authorize(&state, &req, Some(&key.page))?;
    let snapshot = state.projections.read();
    let page = snapshot
        .pages
        .get(&key.page)
        .ok_or_else(|| ApiError::NotFound(format!("page {} is not configured", key.page)))?;
    let ledger = snapshot.ledger(&key);
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
    let reader = authorize(&state, &req, Some(&key.page))?;
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
            |r| match orchestration::record::open(Some(state.store.vault()), r)
                .map(|o| (o.event, o.content))
            {
                // Another app's send: that it happened, not its ids or content.
                Ok((event, _))
                    if matches!(&reader, Reader::App(me)
                        if send_app(&state, &event).is_some_and(|app| app.as_ref() != Some(me))) =>
                {
                    json!({
                        "position": r.position,
                        "version": r.stream_version,
                        "recorded_at": r.recorded_at_ms,
                        "type": r.type_name,
                        "explanation": "a send by another app on this page (details are visible to that app and to auditors)",
                        "redacted": true,
                    })
                }
                Ok((event, content)) => {
                    let mut entry = json!({
                        "position": r.position,
                        "version": r.stream_version,
                        "recorded_at": r.recorded_at_ms,
                        "type": r.type_name,
                        "explanation": domain::explain::explain(&event),
                        "event": serde_json::to_value(&event).unwrap_or(Value::Null),
                    });
                    // What the person said or was sent is gone; the fact stays.
                    let gone = match content {
                        orchestration::record::Content::Erased => Some("erased"),
                        orchestration::record::Content::Damaged => Some("damaged"),
                        _ => None,
                    };
                    if let Some(gone) = gone {
                        entry["content"] = json!(gone);
                    }
                    entry
                }
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

/// Query of `GET /api/apps/{app_id}/messageable`.
#[derive(Debug, serde::Deserialize)]
pub struct MessageableQuery {
    pub page: Option<String>,
    pub limit: Option<usize>,
}

/// The most threads one answer lists.
pub const MESSAGEABLE_MAX: usize = 1000;

/// `GET /api/apps/{app_id}/messageable?page=&limit=`: "who can I message
/// now?", the threads where the app may send right now and on what basis
/// (the admin, the auditor, or the app itself).
pub async fn messageable<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: MessageableQuery = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query: {e}")))?;
    let app = domain::AppId::parse(path.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("app id: {e}")))?;
    let page = query
        .page
        .as_deref()
        .map(PageId::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("page: {e}")))?;
    match authorize(&state, &req, page.as_ref())? {
        Reader::Everything => {}
        Reader::App(caller) if caller == app => {}
        Reader::App(_) => return Err(ApiError::Unauthorized),
    }
    if !state.config.apps.contains_key(&app) {
        return Err(ApiError::NotFound(format!("no app {app} is configured")));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MESSAGEABLE_MAX);
    let threads = state.baton.messageable(&app, page.as_ref(), limit);
    Ok(HttpResponse::Ok().json(json!({
        "app": app.as_str(),
        "at": state.baton.clock.now().millis(),
        "count": threads.len(),
        "limit": limit,
        "threads": threads,
    })))
}
