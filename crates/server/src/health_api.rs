//! Page health over HTTP: `GET /api/health/pages` (each page's routing and,
//! per app, whether it is subscribed to the page's webhooks and whether its
//! page token works) and `POST /api/health/pages/{page_id}/apps/{app_id}/resubscribe`
//! (admin only). The logic is orchestration's (`health`), shared with the
//! console; this module authenticates, parses and renders, nothing more.

use actix_web::{web, HttpRequest, HttpResponse};
use domain::{AppId, PageId};
use event_log::EventStore;
use orchestration::health::ResubscribeError;
use serde_json::json;

use crate::auth::{bearer, identify, Identity};
use crate::error::ApiError;
use crate::read_api::{authorize, Reader};
use crate::AppState;

/// `GET /api/health/pages`: the admin and the auditor see every page; an
/// app token sees the pages it is on, and only its own entry on each.
pub async fn pages<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let health = match authorize(&state, &req, None)? {
        Reader::Everything => state.baton.page_health(None),
        Reader::App(app) => state.baton.page_health(Some(&app)),
    };
    Ok(HttpResponse::Ok().json(health))
}

/// `POST /api/health/pages/{page_id}/apps/{app_id}/resubscribe` (admin
/// token only): subscribes the app to the page's webhooks again at Meta.
pub async fn resubscribe<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    match bearer(&req).and_then(|t| identify(&state.config, t)) {
        Some(Identity::Admin) => {}
        Some(Identity::Auditor) => {
            return Err(ApiError::Forbidden(
                "the auditor token reads; it cannot re-subscribe an app".into(),
            ))
        }
        Some(Identity::App(..)) => {
            return Err(ApiError::Forbidden(
                "only the admin token re-subscribes an app".into(),
            ))
        }
        None => return Err(ApiError::Unauthorized),
    }
    let (page, app) = path.into_inner();
    let page = PageId::parse(page).map_err(|e| ApiError::BadRequest(format!("page id: {e}")))?;
    let app = AppId::parse(app).map_err(|e| ApiError::BadRequest(format!("app id: {e}")))?;
    match state.baton.resubscribe(&page, &app, "api:admin").await {
        Ok(done) => Ok(HttpResponse::Ok().json(json!({
            "page_id": done.page,
            "app_id": done.app,
            "subscribed": true,
            "fields": done.fields,
            "restored": done.restored,
            "at": done.at,
        }))),
        Err(e @ (ResubscribeError::UnknownPage(_) | ResubscribeError::NotOnPage { .. })) => {
            Err(ApiError::NotFound(e.to_string()))
        }
        Err(e @ (ResubscribeError::External(_) | ResubscribeError::NoToken { .. })) => {
            Err(ApiError::BadRequest(e.to_string()))
        }
        // Meta's refusal or silence: a gateway's answer, in Baton's error
        // shape, with Meta's error beside it for the operator.
        Err(ResubscribeError::Meta { status, error }) => {
            tracing::warn!(%page, %app, status, code = error.code, "Meta refused a re-subscription");
            Ok(HttpResponse::BadGateway().json(json!({
                "error": "graph_error",
                "message": format!("Meta refused the subscription: ({}) {}", error.code, error.message),
                "graph_error": {
                    "code": error.code,
                    "error_subcode": error.subcode,
                    "message": error.message,
                    "fbtrace_id": error.fbtrace_id,
                },
            })))
        }
        Err(e @ ResubscribeError::NoAnswer(_)) => Ok(HttpResponse::GatewayTimeout().json(json!({
            "error": "graph_no_answer",
            "message": e.to_string(),
        }))),
    }
}
