//! Erasure over HTTP (`docs/privacy.md`): the admin's erasure of one
//! person's content on a page, Meta's data-deletion callback for each
//! managed app, and the status page that callback's answer points to.

use actix_web::{web, HttpRequest, HttpResponse};
use domain::ids::{AppId, PageId, Psid, ThreadKey};
use event_log::EventStore;
use orchestration::privacy::{DeletionError, EraseError, Erasure};
use serde_json::json;

use crate::auth::{bearer, identify, Identity};
use crate::error::ApiError;
use crate::AppState;

fn erased_json(e: &Erasure) -> serde_json::Value {
    json!({
        "page_id": e.thread.page.as_str(),
        "psid": e.thread.psid.as_str(),
        "keys_destroyed": e.keys,
        "at": e.at.millis(),
    })
}

fn erase_error(e: EraseError) -> ApiError {
    match e {
        EraseError::UnknownPage(page) => {
            ApiError::NotFound(format!("page {page} is not configured"))
        }
        EraseError::Vault(e) => {
            ApiError::Unavailable(format!("the key vault cannot be rewritten: {e}"))
        }
        EraseError::Record(e) => ApiError::Unavailable(e.to_string()),
    }
}

async fn read_body<S: EventStore + 'static>(
    state: &AppState<S>,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<web::Bytes, ApiError> {
    Ok(crate::body::read(
        req,
        payload,
        state.config.max_body_bytes,
        std::time::Duration::from_millis(state.config.body_timeout_ms),
    )
    .await?)
}

/// `POST /api/admin/erasures` with `{"page_id": P, "psid": U}` (admin token):
/// erases that person's content on that page.
pub async fn erase<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    match bearer(&req).and_then(|t| identify(&state.config, t)) {
        Some(Identity::Admin) => {}
        Some(Identity::Auditor) => {
            return Err(ApiError::Forbidden(
                "the auditor token reads; it cannot erase".into(),
            ))
        }
        Some(Identity::App(..)) => {
            return Err(ApiError::Forbidden(
                "only the admin token erases a person's content".into(),
            ))
        }
        None => return Err(ApiError::Unauthorized),
    }
    let body = read_body(&state, &req, payload).await?;
    let usage = "body must be {\"page_id\": \"<page id>\", \"psid\": \"<page-scoped id>\"}";
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("{usage}: {e}")))?;
    let field = |name: &str| body.get(name).and_then(serde_json::Value::as_str);
    let (Some(page), Some(psid)) = (field("page_id"), field("psid")) else {
        return Err(ApiError::BadRequest(usage.into()));
    };
    let page = PageId::parse(page).map_err(|e| ApiError::BadRequest(format!("page_id: {e}")))?;
    let psid = Psid::parse(psid).map_err(|e| ApiError::BadRequest(format!("psid: {e}")))?;
    let request = uuid::Uuid::new_v4().simple().to_string();
    let erasure = state
        .erase(&ThreadKey::new(page, psid), "admin", &request)
        .await
        .map_err(erase_error)?;
    Ok(HttpResponse::Ok().json(json!({ "request": request, "erased": erased_json(&erasure) })))
}

/// `POST /privacy/{app_id}/data-deletion`: Meta's data-deletion callback
/// (form field `signed_request`, signed with the app secret). Answers what
/// Meta expects: the status URL and a confirmation code.
pub async fn data_deletion<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let app = AppId::parse(path.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("app id: {e}")))?;
    if state.config.managed(&app).is_none() {
        return Err(ApiError::UnknownApp(app.to_string()));
    }
    let body = read_body(&state, &req, payload).await?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
        ApiError::BadRequest(format!("body must be a form with signed_request: {e}"))
    })?;
    let Some((_, signed)) = form.iter().find(|(k, _)| k == "signed_request") else {
        return Err(ApiError::BadRequest(
            "body must be a form with signed_request".into(),
        ));
    };
    let deletion = match state.data_deletion(&app, signed).await {
        Ok(d) => d,
        Err(DeletionError::UnknownApp(app)) => return Err(ApiError::UnknownApp(app.to_string())),
        Err(DeletionError::Refused(e)) => {
            tracing::warn!(%app, error = %e, "a data-deletion request was refused");
            return Err(ApiError::BadSignature(match e {
                wire::signed_request::SignedRequestError::BadSignature => {
                    "signed_request's signature does not match the app secret"
                }
                _ => "signed_request is malformed",
            }));
        }
        Err(DeletionError::Mapping(why)) => return Err(ApiError::Unavailable(why)),
        Err(DeletionError::Erase(e)) => return Err(erase_error(e)),
    };
    // The app's pages in other shards: each shard erases its own threads of
    // the person, under the same code (it derives from the request).
    if !crate::routing::handed_on(&req) {
        let shards = crate::routing::shards_of_app(&state, &app);
        if !shards.is_empty() {
            // Each shard asks Meta's ID Matching API itself.
            let timeout = crate::routing::HAND_ON_TIMEOUT
                + std::time::Duration::from_millis(state.config.graph_timeout_ms);
            crate::routing::done_elsewhere(&state, &req, &body, &shards, timeout).await?;
        }
    }
    let info = req.connection_info();
    let url = format!(
        "{}://{}/privacy/deletions/{}",
        info.scheme(),
        info.host(),
        deletion.confirmation_code
    );
    Ok(HttpResponse::Ok().json(json!({
        "url": url,
        "confirmation_code": deletion.confirmation_code,
    })))
}

/// `GET /privacy/deletions/{code}`: what a data-deletion request erased.
/// The code is the capability: it names no person, only pages and times.
pub async fn deletion_status<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let code = path.into_inner();
    let mut erased: Vec<serde_json::Value> = state
        .projections
        .read()
        .erasures
        .get(&code)
        .map(|list| {
            list.iter()
                .map(|(t, at)| json!({"page_id": t.page.as_str(), "at": at.millis()}))
                .collect()
        })
        .unwrap_or_default();
    let mut found = !erased.is_empty();
    // The other shards erased their pages' threads under the same code
    // (one of ours, by its shape: nothing else is worth asking them).
    let ours = code.len() == 32 && code.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ours && !crate::routing::handed_on(&req) {
        let shards = crate::routing::other_shards(&state);
        let body = web::Bytes::new();
        let timeout = crate::routing::HAND_ON_TIMEOUT;
        for (shard, answer) in crate::routing::hand_on(&state, &req, &body, &shards, timeout).await
        {
            match answer {
                Ok((status, _)) if status == actix_web::http::StatusCode::NOT_FOUND => {}
                Ok((status, body)) if status.is_success() => {
                    let theirs: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::Unavailable(format!("shard {shard}'s answer: {e}"))
                    })?;
                    erased.extend(theirs["erased"].as_array().cloned().unwrap_or_default());
                    found = true;
                }
                Ok((status, _)) => {
                    return Err(ApiError::NoOwner(format!(
                        "shard {shard}'s owner answered {status}"
                    )))
                }
                Err(why) => return Err(ApiError::NoOwner(why)),
            }
        }
    }
    if !found {
        return Err(ApiError::NotFound(format!(
            "no erasure was recorded under confirmation code {code}"
        )));
    }
    Ok(HttpResponse::Ok().json(json!({
        "confirmation_code": code,
        "status": "complete",
        "erased": erased,
    })))
}
