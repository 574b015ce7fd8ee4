//! Webhook ingress over HTTP: Meta's verify handshake and
//! `POST /webhooks/{app_id}`. It reads the raw body under a size and a time
//! limit, hands it with its signature headers to the application layer
//! (`Baton::ingest` verifies and records), and answers 200 only once all of
//! it is durable. It never forwards anything: dispatch reads the log.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use domain::AppId;
use event_log::EventStore;
use futures_util::StreamExt;
use orchestration::ingest::IngestError;
use orchestration::RecordError;

use crate::auth::ct_eq;
use crate::error::{error_chain, ApiError};
use crate::AppState;

/// `GET /webhooks/{app_id}`: answer `hub.challenge` when mode and token match.
pub async fn verify<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    app: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let app_id = AppId::parse(app.into_inner()).map_err(|e| ApiError::UnknownApp(e.to_string()))?;
    let Some((_, managed)) = state.config.managed(&app_id) else {
        return Err(ApiError::UnknownApp(app_id.to_string()));
    };
    let mode = query.get("hub.mode").map(String::as_str);
    let token = query
        .get("hub.verify_token")
        .map(String::as_bytes)
        .unwrap_or_default();
    match (mode, query.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge))
            if ct_eq(token, managed.verify_token.expose().as_bytes()) =>
        {
            Ok(HttpResponse::Ok()
                .content_type("text/plain")
                .body(challenge.clone()))
        }
        _ => {
            tracing::warn!(app = %app_id, "webhook verification refused");
            Err(ApiError::VerifyRefused)
        }
    }
}

/// `POST /webhooks/{app_id}`.
pub async fn receive<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    app: web::Path<String>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let app_id = AppId::parse(app.into_inner()).map_err(|e| ApiError::UnknownApp(e.to_string()))?;
    if state.config.managed(&app_id).is_none() {
        return Err(ApiError::UnknownApp(app_id.to_string()));
    };
    let metrics = &state.metrics;
    let app_label = app_id.as_str();

    if let Some(ct) = req.headers().get("content-type") {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            metrics.delivery(app_label, "unsupported_media_type");
            return Err(ApiError::UnsupportedMediaType(ct.to_owned()));
        }
    }
    let limit = state.config.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > limit {
            metrics.delivery(app_label, "too_large");
            return Err(ApiError::TooLarge { limit });
        }
    }
    let mut body = web::BytesMut::new();
    let timeout = std::time::Duration::from_millis(state.config.body_timeout_ms);
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadBody(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics.delivery(
                app_label,
                if matches!(e, ApiError::TooLarge { .. }) {
                    "too_large"
                } else {
                    "bad_body"
                },
            );
            return Err(e);
        }
        Err(_) => {
            metrics.delivery(app_label, "body_timeout");
            return Err(ApiError::BodyTimeout(state.config.body_timeout_ms));
        }
    }
    let body = body.freeze();

    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match state
        .baton
        .ingest(
            &app_id,
            &body,
            header("x-hub-signature-256"),
            header("x-hub-signature"),
        )
        .await
    {
        Ok(_) => Ok(HttpResponse::Ok()
            .content_type("text/plain")
            .body("EVENT_RECEIVED")),
        Err(IngestError::UnknownApp(app)) => Err(ApiError::UnknownApp(app)),
        Err(IngestError::BadSignature(reason)) => Err(ApiError::BadSignature(reason)),
        Err(IngestError::NotRecorded(RecordError::Busy)) => Err(ApiError::Busy),
        Err(IngestError::NotRecorded(e)) => Err(ApiError::Unavailable(error_chain(&e))),
    }
}
