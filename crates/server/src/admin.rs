//! Baton's admin API for operators and auditors (admin token only): export
//! the log as NDJSON from a running server (sled's directory lock keeps other
//! processes out), and a digest of the live projections to compare a replay
//! against. Read-only.

use actix_web::{web, HttpRequest, HttpResponse};
use event_log::EventStore;
use serde_json::json;

use crate::auth::{bearer, identify, Identity};
use crate::error::ApiError;
use crate::AppState;

fn admin_only<S>(state: &AppState<S>, req: &HttpRequest) -> Result<(), ApiError> {
    match bearer(req).and_then(|t| identify(&state.config, t)) {
        Some(Identity::Admin) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// `GET /api/admin/export`: the whole log as NDJSON (`event_log::ndjson_line`).
pub async fn export<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_only(&state, &req)?;
    let mut out = String::new();
    let mut from = 1;
    loop {
        let records = state
            .store
            .read_all(from, 4096)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let Some(last) = records.last() else { break };
        from = last.position + 1;
        for r in &records {
            out.push_str(&event_log::ndjson_line(r));
            out.push('\n');
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .body(out))
}

/// `GET /api/admin/projections`: the live projections' position and digest.
pub async fn projections<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_only(&state, &req)?;
    let snapshot = state.projections.read();
    Ok(HttpResponse::Ok().json(json!({
        "position": snapshot.position,
        "threads": snapshot.threads.len(),
        "digest": snapshot.digest(),
    })))
}
