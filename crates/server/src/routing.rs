//! Routing to the shard's owner (`docs/scale-out.md`). On a shared store one
//! node decides; every node takes webhooks (a durable insert, then 200), and
//! a node that does not own the shard forwards every other request (app
//! calls, Baton's API, the console) to the owner's address from the lease
//! table, and hands its answer back unchanged. While no node holds the lease,
//! or the owner cannot be reached, the answer is 503 with `Retry-After`, in
//! the shape of the surface called: an app retries with its
//! `Idempotency-Key`, as after any 503.
//!
//! A forwarded request carries [`ROUTED`]; a node that receives one without
//! owning the shard (the lease moved meanwhile) answers 503 rather than
//! forwarding it again, so a request never circles.

use std::time::Duration;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use orchestration::Role;

use crate::{error::ApiError, graph_api::GraphFailure, is_graph_path, AppState};

/// The header a routed request carries: the id of the node that routed it.
pub const ROUTED: &str = "baton-routed-by";

/// Headers of one hop only, which a proxy does not pass on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// What a follower keeps for routing.
#[derive(Debug)]
pub struct Router {
    pub node: String,
    client: reqwest::Client,
}

impl Router {
    /// A client whose timeout covers a send waiting for its outcome.
    pub fn new(node: String, timeout: Duration) -> Router {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Router { node, client }
    }
}

/// Paths every node answers itself: webhooks (recorded by whichever node
/// Meta reached) and the node's own health and metrics.
fn served_here(path: &str) -> bool {
    path.starts_with("/webhooks/") || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The middleware: passes the request on when this node owns the shard or
/// serves the path itself, and forwards it to the owner otherwise.
pub async fn route_to_owner<S: 'static>(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    // On a store of its own (no router), every request is this node's.
    let Some(state) = req.app_data::<web::Data<AppState<S>>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let Some(router) = &state.router else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let owner = match state.baton.role_now() {
        Role::Owner { .. } => return Ok(next.call(req).await?.map_into_left_body()),
        _ if served_here(req.path()) => return Ok(next.call(req).await?.map_into_left_body()),
        Role::Follower { owner } => owner,
    };
    let graph = is_graph_path(req.path());
    let refuse = |message: String| refusal(graph, message);
    let (http, mut payload) = req.into_parts();
    let response = match owner {
        None => refuse("no node owns this shard right now (a takeover is under way)".into()),
        Some(_) if http.headers().contains_key(ROUTED) => {
            refuse("the shard's owner changed while the request was routed".into())
        }
        Some(owner) => {
            let limit = state
                .config
                .max_body_bytes
                .max(state.config.max_attachment_bytes);
            let timeout = Duration::from_millis(state.config.body_timeout_ms);
            let payload = web::Payload::from_request(&http, &mut payload).await?;
            match crate::body::read(&http, payload, limit, timeout).await {
                Err(e) if graph => GraphFailure::from(e).error_response(),
                Err(e) => ApiError::from(e).error_response(),
                Ok(body) => match forward(router, &owner, &http, body).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(owner, error = %crate::error::error_chain(&e), "could not route a request to the shard's owner");
                        refuse("the shard's owner could not be reached".into())
                    }
                },
            }
        }
    };
    Ok(ServiceResponse::new(http, response).map_into_right_body())
}

fn refusal(graph: bool, message: String) -> HttpResponse {
    if graph {
        let mut res = GraphFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            domain::graph::code::TEMPORARY,
            None,
            format!("(#2) {message}; retry shortly"),
        )
        .error_response();
        res.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        res
    } else {
        ApiError::NoOwner(message).error_response()
    }
}

/// Sends `http` with `body` to `owner` and turns its answer into ours.
async fn forward(
    router: &Router,
    owner: &str,
    http: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, reqwest::Error> {
    let path = http
        .uri()
        .path_and_query()
        .map_or(http.path(), |p| p.as_str());
    let method = reqwest::Method::from_bytes(http.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut request = router
        .client
        .request(method, format!("{}{path}", owner.trim_end_matches('/')))
        .header(ROUTED, router.node.as_str());
    for (name, value) in http.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "content-length" {
            continue;
        }
        request = request.header(name.as_str(), value.as_bytes());
    }
    let answer = request.body(body).send().await?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = HttpResponse::build(status);
    for (name, value) in answer.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "content-length" {
            continue;
        }
        response.append_header((name.as_str(), value.as_bytes()));
    }
    Ok(response.body(answer.bytes().await?))
}
