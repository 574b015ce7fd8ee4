//! Routing to the shard's owner (`docs/scale-out.md`). On a shared store one
//! node decides; every node takes webhooks (a durable insert, then 200), and
//! a node that does not own the shard forwards every other request (app
//! calls, Baton's API, the console) to the owner's address from the lease
//! table, and hands its answer back unchanged. While no node holds the lease,
//! or the owner cannot be reached, the answer is 503 with `Retry-After`, in
//! the shape of the surface called: an app retries with its
//! `Idempotency-Key`, as after any 503.
//!
//! Pages may be spread over shards (`shard` on each page): a request about a
//! page another shard decides for (a Graph call on the page, `me` of an app
//! whose pages are all there, a thread or page health read, an erasure) goes
//! to that shard's owner instead, found in the same lease table. What every
//! shard must act on (a webhook carrying several shards' pages, Meta's
//! data-deletion callback) is handed on to each ([`hand_on`]).
//!
//! A forwarded request carries [`ROUTED`]; a node that receives one without
//! owning the shard (the lease moved meanwhile) answers 503 rather than
//! forwarding it again, so a request never circles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use domain::{AppId, PageId};
use event_log::{Leases, StorageError};
use orchestration::config::Elsewhere;
use orchestration::Role;

use crate::{error::ApiError, graph_api::GraphFailure, is_graph_path, AppState};

/// The header a routed request carries: the id of the node that routed it.
pub const ROUTED: &str = "baton-routed-by";

/// The header of a request another shard's node handed on for this shard's
/// part of it (a webhook carrying several shards' pages, Meta's
/// data-deletion callback): the id of that node.
pub const HANDED_ON: &str = "baton-handed-on-by";

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

/// How long a shard's owner, once looked up, is believed without asking the
/// lease table again. A stale answer costs one 503, which the caller retries.
const OWNER_CACHE: Duration = Duration::from_millis(250);

type Lookup = Box<
    dyn Fn(i32) -> Pin<Box<dyn Future<Output = Result<Option<String>, StorageError>> + Send>>
        + Send
        + Sync,
>;

/// What a node on a shared store keeps for routing.
pub struct Router {
    pub node: String,
    client: reqwest::Client,
    /// The address of a shard's owner, from the lease table.
    lookup: Lookup,
    owners: Mutex<HashMap<i32, (Instant, Option<String>)>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("node", &self.node).finish()
    }
}

impl Router {
    /// A client whose timeout covers a send waiting for its outcome, and
    /// `leases` to find other shards' owners.
    pub fn new<L: Leases>(node: String, timeout: Duration, leases: Arc<L>) -> Router {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let lookup: Lookup = Box::new(move |shard| {
            let leases = leases.clone();
            Box::pin(async move { Ok(leases.lease_of(shard).await?.map(|c| c.address)) })
        });
        Router {
            node,
            client,
            lookup,
            owners: Mutex::default(),
        }
    }

    /// Where `shard`'s owner takes routed calls; `None` while nobody holds
    /// its lease.
    async fn owner_of(&self, shard: i32) -> Result<Option<String>, StorageError> {
        let cached = |owners: &HashMap<i32, (Instant, Option<String>)>| {
            owners
                .get(&shard)
                .filter(|(at, _)| at.elapsed() < OWNER_CACHE)
                .map(|(_, owner)| owner.clone())
        };
        if let Some(owner) = cached(&self.owners.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(owner);
        }
        let owner = (self.lookup)(shard).await?;
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard, (Instant::now(), owner.clone()));
        Ok(owner)
    }
}

/// Paths every node answers itself: webhooks (recorded by whichever node
/// Meta reached) and the node's own health and metrics.
fn served_here(path: &str) -> bool {
    path.starts_with("/webhooks/") || matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The middleware: passes the request on when this node decides it or
/// serves the path itself, and forwards it to the deciding owner otherwise.
pub async fn route_to_owner<S: 'static>(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    // On a store of its own (no router), every request is this node's.
    let Some(state) = req.app_data::<web::Data<AppState<S>>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let Some(router) = &state.router else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if served_here(req.path()) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let graph = is_graph_path(req.path());
    let refuse = |message: String| refusal(graph, message);
    // The body, when the page could only be told from it (its token).
    let mut body = None;
    let mut decider = decider_of(&state, req.request(), None);
    if decider == Decider::Body {
        let (http, payload) = req.into_parts();
        let read = read_body(&state, &http, payload, graph).await?;
        req = ServiceRequest::from_parts(http, actix_web::dev::Payload::None);
        match read {
            Ok(read) => {
                decider = decider_of(&state, req.request(), Some(&read));
                body = Some(read);
            }
            Err(refused) => return Ok(req.into_response(refused).map_into_right_body()),
        }
    }
    let owner = match decider {
        Decider::Shard(shard) => match router.owner_of(shard).await {
            Ok(Some(owner)) => Ok(owner),
            Ok(None) => Err(format!(
                "no node owns shard {shard}, which decides for this page, right now"
            )),
            Err(e) => {
                tracing::warn!(shard, error = %crate::error::error_chain(&e), "could not read a shard's lease");
                Err(format!("the owner of shard {shard} could not be found"))
            }
        },
        _ => match state.baton.role_now() {
            Role::Owner { .. } => {
                if let Some(body) = body {
                    req.set_payload(actix_web::dev::Payload::from(body));
                }
                return Ok(next.call(req).await?.map_into_left_body());
            }
            Role::Follower { owner: None } => {
                Err("no node owns this shard right now (a takeover is under way)".into())
            }
            Role::Follower { owner: Some(owner) } => Ok(owner),
        },
    };
    let (http, payload) = req.into_parts();
    let response = match owner {
        Err(message) => refuse(message),
        Ok(_) if http.headers().contains_key(ROUTED) => refuse(
            "the request was routed here already, and this node does not decide it \
             (the shard's lease moved meanwhile, or the nodes disagree on the page's shard)"
                .into(),
        ),
        Ok(owner) => {
            let body = match body {
                Some(body) => Ok(body),
                None => read_body(&state, &http, payload, graph).await?,
            };
            match body {
                Err(refused) => refused,
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

/// Reads a routed request's body under the handlers' size and time limits;
/// a body refused is answered in the caller's shape.
async fn read_body<S>(
    state: &AppState<S>,
    http: &HttpRequest,
    mut payload: actix_web::dev::Payload,
    graph: bool,
) -> Result<Result<web::Bytes, HttpResponse>, actix_web::Error> {
    let limit = state
        .config
        .max_body_bytes
        .max(state.config.max_attachment_bytes);
    let timeout = Duration::from_millis(state.config.body_timeout_ms);
    let payload = web::Payload::from_request(http, &mut payload).await?;
    Ok(
        match crate::body::read(http, payload, limit, timeout).await {
            Ok(body) => Ok(body),
            Err(e) if graph => Err(GraphFailure::from(e).error_response()),
            Err(e) => Err(ApiError::from(e).error_response()),
        },
    )
}

/// Which node decides a request, as far as its page tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decider {
    /// This node's shard (or no page at all): its owner.
    Here,
    /// A page another shard decides for: that shard's owner.
    Shard(i32),
    /// The page is named in the body (`me` with the token there, an
    /// erasure): read it to know.
    Body,
}

/// The shard a request's page is decided by: the page in a thread or page
/// health path, in an erasure's or a dry run's body, in the messageable
/// list's query, or the Graph API's node (a page id, or `me` of an app whose
/// one page is in another shard). Anything else is this shard's.
fn decider_of<S>(state: &AppState<S>, http: &HttpRequest, body: Option<&[u8]>) -> Decider {
    let elsewhere = &state.config.elsewhere;
    if elsewhere.is_empty() {
        return Decider::Here;
    }
    let segments: Vec<&str> = http.path().split('/').skip(1).collect();
    let node = match segments.as_slice() {
        ["api", "threads", page, ..] | ["api", "health", "pages", page, ..] => *page,
        ["api", "admin", "erasures"] if http.method() == actix_web::http::Method::POST => {
            let Some(body) = body else {
                return Decider::Body;
            };
            return page_in_body(body)
                .map_or(Decider::Here, |page| shard_of_page(elsewhere, &page));
        }
        // The dry run names its page as a send's parameter (query, form or
        // JSON, as its handler reads it), or means the app's one.
        ["api", "sends", "check"] if http.method() == actix_web::http::Method::POST => {
            let Some(body) = body else {
                return Decider::Body;
            };
            let page = crate::graph_api::params(http, body)
                .ok()
                .and_then(|p| p.get("page_id").and_then(wire::webhook::id_string));
            return match page {
                Some(page) => shard_of_page(elsewhere, &page),
                None => shard_of_me(state, http, Some(body)),
            };
        }
        // The list of one page, or of the app's pages: its one page's shard.
        ["api", "apps", app, "messageable"] => {
            let page = web::Query::<HashMap<String, String>>::from_query(http.query_string())
                .ok()
                .and_then(|q| q.get("page").cloned());
            return match (page, AppId::parse(*app)) {
                (Some(page), _) => shard_of_page(elsewhere, &page),
                (None, Ok(app)) => shard_of_app(state, &app),
                (None, Err(_)) => Decider::Here,
            };
        }
        [_, node, ..] if is_graph_path(http.path()) => *node,
        _ => return Decider::Here,
    };
    if node != "me" {
        return shard_of_page(elsewhere, node);
    }
    shard_of_me(state, http, body)
}

/// The shard of `me`: the app's one page, the app named by the token in the
/// query, the body or the `Authorization` header.
fn shard_of_me<S>(state: &AppState<S>, http: &HttpRequest, body: Option<&[u8]>) -> Decider {
    let token = crate::graph_api::params(http, body.unwrap_or_default())
        .ok()
        .and_then(|mut p| p.remove("access_token"))
        .and_then(|t| t.as_str().map(str::to_owned))
        .or_else(|| crate::auth::bearer(http).map(str::to_owned));
    let app = match token {
        Some(token) => match crate::auth::identify(&state.config, &token) {
            Some(crate::auth::Identity::App(app, _)) => app.id.clone(),
            _ => return Decider::Here,
        },
        None if body.is_none() && http.method() != actix_web::http::Method::GET => {
            return Decider::Body
        }
        None => return Decider::Here,
    };
    shard_of_app(state, &app)
}

/// The `page_id` of a JSON body.
fn page_in_body(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("page_id")?.as_str().map(str::to_owned))
}

/// The shard that decides for the page `id` names.
fn shard_of_page(elsewhere: &BTreeMap<PageId, Elsewhere>, id: &str) -> Decider {
    PageId::parse(id.to_owned())
        .ok()
        .and_then(|page| elsewhere.get(&page))
        .map_or(Decider::Here, |e| Decider::Shard(e.shard))
}

/// `me`'s shard: another one only when the app's one page is there (an app
/// on several pages must name the page, which this node answers).
fn shard_of_app<S>(state: &AppState<S>, app: &AppId) -> Decider {
    let here = state
        .config
        .pages
        .values()
        .filter(|(_, p)| p.apps.contains_key(app))
        .count();
    let elsewhere: Vec<i32> = state
        .config
        .elsewhere
        .values()
        .filter(|e| e.apps.contains(app))
        .map(|e| e.shard)
        .collect();
    match (here, elsewhere.as_slice()) {
        (0, [shard]) => Decider::Shard(*shard),
        _ => Decider::Here,
    }
}

/// The other shards a webhook delivery's pages are decided by, and whether
/// any of its pages (or none known anywhere) is this shard's. A delivery
/// that does not parse is this shard's alone.
pub fn shards_of_delivery<S>(state: &AppState<S>, body: &[u8]) -> (bool, BTreeSet<i32>) {
    let elsewhere = &state.config.elsewhere;
    if elsewhere.is_empty() {
        return (true, BTreeSet::new());
    }
    let Ok(envelope) = wire::webhook::parse_envelope(body, state.clock.now()) else {
        return (true, BTreeSet::new());
    };
    let mut here = envelope.entries.is_empty();
    let mut others = BTreeSet::new();
    for entry in &envelope.entries {
        match elsewhere.get(&entry.page) {
            Some(e) => {
                others.insert(e.shard);
            }
            None => here = true,
        }
    }
    (here, others)
}

/// Whether `http` was handed on by another shard's node (see [`hand_on`]):
/// its handler does this shard's part only.
pub fn handed_on(http: &HttpRequest) -> bool {
    http.headers().contains_key(HANDED_ON)
}

/// How long a shard's owner may take to do its part of a webhook or to
/// answer the data-deletion status page: a frozen owner whose lease is still
/// live must not hold this node's connections for long.
pub const HAND_ON_TIMEOUT: Duration = Duration::from_secs(5);

/// What each of the other `shards` answered to `http` with `body`, handed on
/// to its owner (marked [`HANDED_ON`]) within `timeout`: the status and
/// body, or why there was no answer. For requests every shard must act on:
/// a webhook carrying several shards' pages, Meta's data-deletion callback.
pub async fn hand_on<S>(
    state: &AppState<S>,
    http: &HttpRequest,
    body: &web::Bytes,
    shards: &BTreeSet<i32>,
    timeout: Duration,
) -> Vec<(i32, Result<(StatusCode, web::Bytes), String>)> {
    let Some(router) = &state.router else {
        let none = || Err("pages of other shards need a shared store".to_owned());
        return shards.iter().map(|s| (*s, none())).collect();
    };
    let one = |shard: i32| async move {
        let owner = match router.owner_of(shard).await {
            Ok(Some(owner)) => owner,
            Ok(None) => return Err(format!("no node owns shard {shard} right now")),
            Err(e) => {
                tracing::warn!(shard, error = %crate::error::error_chain(&e), "could not read a shard's lease");
                return Err(format!("shard {shard}'s owner could not be found"));
            }
        };
        let unreachable = |e: reqwest::Error| {
            tracing::warn!(shard, owner, error = %crate::error::error_chain(&e), "could not hand a request on to a shard's owner");
            format!("shard {shard}'s owner could not be reached")
        };
        let answer = send(router, &owner, http, body.clone(), HANDED_ON)
            .await
            .map_err(unreachable)?;
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        Ok((status, answer.bytes().await.map_err(unreachable)?))
    };
    // One deadline for each shard's whole part: the lease, the call, the answer.
    let one = |shard: i32| async move {
        tokio::time::timeout(timeout, one(shard))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "shard {shard}'s owner did not answer within {timeout:?}"
                ))
            })
    };
    let answers = futures_util::future::join_all(shards.iter().map(|s| one(*s))).await;
    shards.iter().copied().zip(answers).collect()
}

/// Hands `http` on to the other `shards` ([`hand_on`]) and wants 2xx from
/// each. A shard's refusal (4xx) is passed on as it is permanent; anything
/// else is 503 naming the first shard that failed, and the caller retries
/// (what the shards that acted did is idempotent).
pub async fn done_elsewhere<S>(
    state: &AppState<S>,
    http: &HttpRequest,
    body: &web::Bytes,
    shards: &BTreeSet<i32>,
    timeout: Duration,
) -> Result<(), ApiError> {
    let mut unavailable = None;
    for (shard, answer) in hand_on(state, http, body, shards, timeout).await {
        match answer {
            Ok((status, _)) if status.is_success() => {}
            // Refusals that stand; a timeout or a rate limit is retried.
            Ok((status, body))
                if status.is_client_error()
                    && !matches!(
                        status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    ) =>
            {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| status.to_string());
                return Err(ApiError::OtherShard {
                    shard,
                    status,
                    message,
                });
            }
            Ok((status, _)) => {
                unavailable.get_or_insert(format!("shard {shard}'s owner answered {status}"));
            }
            Err(why) => {
                unavailable.get_or_insert(why);
            }
        }
    }
    match unavailable {
        None => Ok(()),
        Some(why) => {
            tracing::warn!(
                why,
                path = http.path(),
                "a request could not be done in every shard it needs"
            );
            Err(ApiError::NoOwner(format!(
                "this needs other shards too, and {why}"
            )))
        }
    }
}

/// The other shards that decide for pages of `app`.
pub fn shards_of_app<S>(state: &AppState<S>, app: &AppId) -> BTreeSet<i32> {
    state
        .config
        .elsewhere
        .values()
        .filter(|e| e.apps.contains(app))
        .map(|e| e.shard)
        .collect()
}

/// Every other shard this node knows pages of.
pub fn other_shards<S>(state: &AppState<S>) -> BTreeSet<i32> {
    state.config.elsewhere.values().map(|e| e.shard).collect()
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

/// Sends `http` with `body` to `owner`, marked with `mark` (this node's id
/// under [`ROUTED`] or [`HANDED_ON`]).
async fn send(
    router: &Router,
    owner: &str,
    http: &HttpRequest,
    body: web::Bytes,
    mark: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    let path = http
        .uri()
        .path_and_query()
        .map_or(http.path(), |p| p.as_str());
    let method = reqwest::Method::from_bytes(http.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut request = router
        .client
        .request(method, format!("{}{path}", owner.trim_end_matches('/')))
        .header(mark, router.node.as_str());
    for (name, value) in http.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) || name.as_str() == "content-length" {
            continue;
        }
        request = request.header(name.as_str(), value.as_bytes());
    }
    request.body(body).send().await
}

/// Routes `http` with `body` to `owner` and turns its answer into ours.
async fn forward(
    router: &Router,
    owner: &str,
    http: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, reqwest::Error> {
    let answer = send(router, owner, http, body, ROUTED).await?;
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
