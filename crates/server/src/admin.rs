//! Baton's admin API for operators and auditors (admin token only): export
//! the log as NDJSON from a running server (sled's directory lock keeps other
//! processes out), and a digest of the live projections to compare a replay
//! against. Read-only.

use actix_web::{web, HttpRequest, HttpResponse};
use event_log::EventStore;
use serde_json::json;

use crate::auth::{bearer, identify};
use crate::error::ApiError;
use crate::AppState;

/// The admin or the read-only auditor.
fn admin_only<S>(state: &AppState<S>, req: &HttpRequest) -> Result<(), ApiError> {
    match bearer(req).and_then(|t| identify(&state.config, t)) {
        Some(id) if id.reads_everything() => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// `GET /api/admin/export`: the whole log as NDJSON (`event_log::ndjson_line`).
pub async fn export<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_only(&state, &req)?;
    // Export up to the head as it is now, so a checkpoint signs exactly it.
    let head = state
        .store
        .head()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let mut out = String::new();
    let mut from = 1;
    while from <= head.position {
        let records = state
            .store
            .read_all(from, 4096)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let Some(last) = records.last() else { break };
        from = last.position + 1;
        for r in records.iter().filter(|r| r.position <= head.position) {
            out.push_str(&event_log::ndjson_line_noted(
                r,
                orchestration::record::content_note(state.store.vault(), r),
            ));
            out.push('\n');
        }
    }
    let mut res = HttpResponse::Ok();
    res.content_type("application/x-ndjson");
    // With a checkpoint key, the export's head is signed: the header holds
    // the checkpoint for `baton verify --checkpoint` (also kept on disk).
    if let Ok(signer) = state.baton.checkpoint_signer() {
        let signed = signer.sign(&head, state.clock.now().millis());
        match event_log::write_checkpoint(&state.config.data_dir.join("checkpoints"), &signed) {
            Ok(_) => match serde_json::to_string(&signed) {
                // One line of JSON: a header value holds no newline.
                Ok(line) => {
                    res.insert_header(("Baton-Checkpoint", line));
                }
                Err(e) => tracing::error!(error = %e, "cannot encode the export's checkpoint"),
            },
            Err(e) => tracing::error!(error = %e, "cannot keep the export's checkpoint"),
        }
    }
    Ok(res.body(out))
}

/// `GET /api/admin/projections`: the live projections' position and digest.
pub async fn projections<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_only(&state, &req)?;
    let resumed_from_snapshot = state.baton.resumed_from_snapshot;
    let snapshot = state.projections.read();
    Ok(HttpResponse::Ok().json(json!({
        "position": snapshot.position,
        "threads": snapshot.thread_count(),
        "digest": snapshot.digest(),
        "resumed_from_snapshot": resumed_from_snapshot,
    })))
}
