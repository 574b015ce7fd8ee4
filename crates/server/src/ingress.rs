//! Webhook ingress over HTTP: Meta's verify handshake and
//! `POST /webhooks/{app_id}`. It reads the raw body under a size and a time
//! limit, hands it with its signature headers to the application layer
//! (`Baton::ingest` verifies and records), and answers 200 only once all of
//! it is durable. It never forwards anything: dispatch reads the log.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use domain::AppId;
use event_log::EventStore;
use orchestration::ingest::IngestError;
use orchestration::RecordError;

use crate::auth::ct_eq;
use crate::body::BodyError;
use crate::error::{error_chain, ApiError};
use crate::AppState;

/// The app a webhook request is for: the `{app_id}` segment of the generic
/// route, or the last segment of a configured app's own route (a literal
/// path, matched without the router's regular expression).
fn webhook_app(req: &HttpRequest) -> Result<AppId, ApiError> {
    let id = match req.match_info().get("app_id") {
        Some(id) => id,
        None => req.path().rsplit('/').next().unwrap_or_default(),
    };
    AppId::parse(id).map_err(|e| ApiError::UnknownApp(e.to_string()))
}

/// `GET /webhooks/{app_id}`: answer `hub.challenge` when mode and token match.
pub async fn verify<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let app_id = webhook_app(&req)?;
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
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = std::time::Instant::now();
    let app_id = webhook_app(&req)?;
    if state.config.managed(&app_id).is_none() {
        return Err(ApiError::UnknownApp(app_id.to_string()));
    };
    source_allowed(&state, &req)?;
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
    let timeout = std::time::Duration::from_millis(state.config.body_timeout_ms);
    let body = match crate::body::read(&req, payload, state.config.max_body_bytes, timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { limit }) => {
            metrics.delivery(app_label, "too_large");
            return Err(ApiError::TooLarge { limit });
        }
        Err(BodyError::Timeout { ms }) => {
            metrics.delivery(app_label, "body_timeout");
            return Err(ApiError::BodyTimeout(ms));
        }
        Err(BodyError::Broken(e)) => {
            metrics.delivery(app_label, "bad_body");
            return Err(ApiError::BadBody(e));
        }
    };

    let signature_256 = signature_header(&req, "x-hub-signature-256");
    let signature_1 = signature_header(&req, "x-hub-signature");
    // Pages another shard decides for are recorded there (a delivery handed
    // on here is recorded here only, so it never circles).
    let (here, elsewhere) = if crate::routing::handed_on(&req) {
        (true, Default::default())
    } else {
        crate::routing::shards_of_delivery(&state, &body)
    };
    // Checked before anything is handed on: a forged delivery costs the
    // other shards nothing.
    if !elsewhere.is_empty() {
        state
            .baton
            .check_signature(&app_id, &body, signature_256, signature_1)
            .map_err(refused)?;
    }
    let local = async {
        if !here {
            return Ok(());
        }
        state
            .baton
            .ingest(&app_id, &body, signature_256, signature_1)
            .await
            .map(drop)
            .map_err(refused)
    };
    let other_shards = async {
        if elsewhere.is_empty() {
            return Ok(());
        }
        let timeout = crate::routing::HAND_ON_TIMEOUT;
        crate::routing::done_elsewhere(&state, &req, &body, &elsewhere, timeout).await
    };
    let (local, other_shards) = futures_util::future::join(local, other_shards).await;
    local?;
    other_shards?;
    state.samples.ack(started.elapsed());
    Ok(HttpResponse::Ok()
        .content_type("text/plain")
        .body("EVENT_RECEIVED"))
}

/// Why a delivery was not recorded, as Baton's API says it.
fn refused(e: IngestError) -> ApiError {
    match e {
        IngestError::UnknownApp(app) => ApiError::UnknownApp(app),
        e @ IngestError::TooManyItems { .. } => ApiError::TooManyItems(e.to_string()),
        IngestError::BadSignature(reason) => ApiError::BadSignature(reason),
        IngestError::NotRecorded(RecordError::Busy) => ApiError::Busy,
        IngestError::NotRecorded(e) => ApiError::Unavailable(error_chain(&e)),
    }
}

/// A signature header as Meta sends it: once, in visible ASCII. A second
/// copy, or bytes that are not text, make the header present and invalid
/// (never absent, which would let the other header decide alone).
fn signature_header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    let mut values = req.headers().get_all(name);
    let first = values.next()?;
    if values.next().is_some() {
        return Some("duplicated header");
    }
    Some(first.to_str().unwrap_or("not visible ASCII"))
}

/// With `webhook_source_networks` configured, only those networks may post
/// webhooks. The source is the peer, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not one.
fn source_allowed<S>(state: &AppState<S>, req: &HttpRequest) -> Result<(), ApiError> {
    let allowed = &state.config.webhook_source_networks;
    if allowed.is_empty() {
        return Ok(());
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let source = client_ip(
        req.peer_addr().map(|a| a.ip()),
        &forwarded,
        &state.config.trusted_proxies,
    );
    match source {
        Some(ip) if allowed.iter().any(|n| n.contains(ip)) => Ok(()),
        Some(ip) => Err(ApiError::SourceNotAllowed(ip.to_string())),
        None => Err(ApiError::SourceNotAllowed("an unknown address".into())),
    }
}

/// The client's address: the peer, unless it is a trusted proxy; then the
/// rightmost `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: &str,
    trusted: &[orchestration::config::Network],
) -> Option<std::net::IpAddr> {
    let trusted_ip = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut ip = peer?;
    if !trusted_ip(ip) {
        return Some(ip);
    }
    for part in forwarded_for
        .rsplit(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        ip = part.parse().ok()?;
        if !trusted_ip(ip) {
            return Some(ip);
        }
    }
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use orchestration::config::Network;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = vec![Network::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse().unwrap();
        // A direct client cannot claim another address.
        assert_eq!(
            client_ip(Some(ip("203.0.113.9")), "66.220.144.1", &proxy),
            Some(ip("203.0.113.9"))
        );
        // Through the proxy, the nearest untrusted hop counts, not a forged first entry.
        assert_eq!(
            client_ip(
                Some(ip("10.1.2.3")),
                "1.2.3.4, 66.220.144.1, 10.9.9.9",
                &proxy
            ),
            Some(ip("66.220.144.1"))
        );
        assert!(Network::parse("66.220.144.0/21")
            .unwrap()
            .contains(ip("66.220.151.255")));
        assert!(!Network::parse("66.220.144.0/21")
            .unwrap()
            .contains(ip("66.220.152.0")));
    }
}
