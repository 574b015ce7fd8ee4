//! Delivery visibility and redrive for one app's backend:
//! `GET /api/apps/{app_id}/delivery` (queue depth, oldest pending age,
//! attempts, failures, dead letters) and `POST /api/apps/{app_id}/redrive`.
//! Callers: the admin token, or the app's own Baton token.

use actix_web::{web, HttpRequest, HttpResponse};
use domain::AppId;
use event_log::EventStore;
use serde_json::json;

use crate::auth::{bearer, identify, Identity};
use crate::error::ApiError;
use crate::AppState;

/// Who is asking: `admin`, `auditor` or `app:<id>`; only they, or the app
/// itself, may look.
fn authorize<S>(state: &AppState<S>, req: &HttpRequest, app: &AppId) -> Result<String, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    match identify(&state.config, token) {
        Some(Identity::Admin) => Ok("api:admin".to_owned()),
        Some(Identity::Auditor) => Ok("api:auditor".to_owned()),
        Some(Identity::App(a, _)) if a.id == *app => Ok(format!("api:app:{app}")),
        _ => Err(ApiError::Unauthorized),
    }
}

fn app_id(raw: &str) -> Result<AppId, ApiError> {
    AppId::parse(raw).map_err(|e| ApiError::BadRequest(format!("app id: {e}")))
}

/// `GET /api/apps/{app_id}/delivery`.
pub async fn status<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let app = app_id(&path)?;
    authorize(&state, &req, &app)?;
    let Some(dispatcher) = &state.dispatcher else {
        return Err(ApiError::NotFound(
            "no app has a backend_url: dispatch is off".into(),
        ));
    };
    let status = dispatcher
        .app_status(&app)
        .ok_or_else(|| ApiError::NotFound(format!("app {app} has no backend_url")))?;
    let dead = dispatch::dead_letters(state.store.as_ref(), &app)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .json(json!({ "app_id": app.as_str(), "status": status, "dead_letters": dead })))
}

/// `POST /api/apps/{app_id}/redrive` with `{"position": N}`: deliver a dead letter again.
pub async fn redrive<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let app = app_id(&path)?;
    let by = authorize(&state, &req, &app)?;
    if by == "api:auditor" {
        return Err(ApiError::Forbidden(
            "the auditor token reads; it cannot redrive".into(),
        ));
    }
    let body = crate::body::read(
        &req,
        payload,
        state.config.max_body_bytes,
        std::time::Duration::from_millis(state.config.body_timeout_ms),
    )
    .await?;
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"position\": <log position of the dead-lettered item>}}: {e}"
        ))
    })?;
    let position = body
        .get("position")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "body must be {\"position\": <log position of the dead-lettered item>}".into(),
            )
        })?;
    match dispatch::request_redrive(state.store.as_ref(), &app, position, &by, state.clock.now())
        .await
    {
        Ok(at) => Ok(HttpResponse::Accepted().json(
            json!({ "app_id": app.as_str(), "position": position, "requested_at_position": at }),
        )),
        Err(dispatch::RedriveError::NotDeadLettered { .. }) => Err(ApiError::NotFound(format!(
            "app {app} has no dead letter at position {position}"
        ))),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}
