//! Baton's HTTP driver: the actix-web server with webhook ingress, the
//! Graph-compatible API, Baton's read, delivery and admin APIs, health and
//! metrics. Handlers parse, call one function of the application layer
//! (`orchestration`), and render; none holds a retry loop, a sleep, an
//! append or a rule of Meta's (those live in `orchestration` and `domain`).

pub mod admin;
pub mod auth;
pub mod body;
pub mod console;
pub mod delivery_api;
pub mod error;
pub mod graph_api;
pub mod health_api;
pub mod ingress;
pub mod privacy;
pub mod read_api;
pub mod routing;
pub mod sends;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use event_log::{EventStore, Leases, StorageError};
use orchestration::{Baton, LeaseSettings, Tasks};

pub use orchestration::{config, metrics, projections, record, snapshot};
pub use orchestration::{Clock, Config, ConfigError, LogFormat, ManualClock, Secret, SystemClock};

/// What every handler shares: the application and, when any app has a
/// backend, dispatch.
#[derive(Debug)]
pub struct AppState<S> {
    pub baton: Arc<Baton<S>>,
    /// Requests per app on Baton's API (`app_requests_per_second`).
    pub app_limiter: std::sync::Mutex<orchestration::outbox::limiter::RateLimiter<domain::AppId>>,
    /// Forwards each app's events to its backend; `None` when no app has a
    /// `backend_url`. It runs while this node owns the shard.
    pub dispatcher: Option<Arc<dispatch::Dispatcher<S>>>,
    /// On a shared store: forwards what this node does not decide to the
    /// shard's owner (see [`routing`]).
    pub router: Option<routing::Router>,
    /// The console's signed-in sessions.
    pub console: console::Sessions,
    /// The console's metrics samples (and ingress's acknowledgement times).
    pub samples: console::Samples,
}

impl<S> std::ops::Deref for AppState<S> {
    type Target = Baton<S>;

    fn deref(&self) -> &Baton<S> {
        &self.baton
    }
}

/// A running server.
#[derive(Debug)]
pub struct Running<S> {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub state: Arc<AppState<S>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    tasks: Tasks,
    /// Dispatch (when any app has a backend) and the console's sampler.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl<S: EventStore + 'static> Running<S> {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down in order: stop accepting and let the requests in flight
    /// finish (a send waits for its outcome), then the outbox records the
    /// outcomes of the calls it has in flight, dispatch lets its attempts
    /// finish and writes its cursors, and the projections fold the last
    /// records.
    pub async fn stop(self) {
        stop_http(&self.state, &self.handle).await;
        let result = self.server.await;
        Self::drain(self.tasks, self.background).await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "the HTTP server stopped with an error");
        }
    }

    /// Stops as `kill -9` would, without draining: open connections are
    /// dropped, requests and background tasks are abandoned where they
    /// stand (a send in flight never records its answer), and nothing more
    /// is written. What the log already holds stays. For crash tests.
    pub async fn crash(self) {
        self.handle.stop(false).await;
        self.server.abort();
        let _ = self.server.await;
        for task in self.background {
            task.abort();
            let _ = task.await;
        }
        self.tasks.abort().await;
    }

    /// Waits until the HTTP server stops (`stop` from elsewhere, through
    /// `handle`), then drains like [`Running::stop`].
    pub async fn wait(self) -> std::io::Result<()> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        Self::drain(self.tasks, self.background).await;
        result
    }

    async fn drain(tasks: Tasks, background: Vec<tokio::task::JoinHandle<()>>) {
        let workers = tasks.shutdown();
        let dispatch = async {
            for task in background {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "a background task (dispatch, the console's sampler) stopped abnormally");
                }
            }
        };
        tokio::join!(workers, dispatch);
        tracing::info!("baton stopped");
    }

    /// Records expiry for every lapsed thread now (tests move the clock, then call this).
    pub async fn expire_due(&self) -> usize {
        self.state.baton.expire_due().await
    }
}

/// Serves until SIGTERM (systemd, containers) or SIGINT (Ctrl-C), then
/// stops in order (see [`Running::stop`]): the one stop signal of `baton
/// serve`.
pub async fn serve_until_signal<S: EventStore + 'static>(
    running: Running<S>,
) -> std::io::Result<()> {
    let handle = running.handle.clone();
    let state = running.state.clone();
    tokio::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!(
            signal,
            "stopping: requests in flight finish, sends record their outcome, dispatch writes its cursors"
        );
        stop_http(&state, &handle).await;
    });
    running.wait().await
}

/// The HTTP side of a stop: every new request is answered 503 "stopping"
/// (Meta and apps retry later) for `stop_grace_ms`, so that connections
/// already queued at the listener get an answer rather than a reset; then
/// the listener closes and the requests in flight finish.
async fn stop_http<S>(state: &AppState<S>, handle: &ServerHandle) {
    state.baton.begin_stop();
    let grace = std::time::Duration::from_millis(state.baton.config.stop_grace_ms);
    if !grace.is_zero() {
        tokio::time::sleep(grace).await;
    }
    handle.stop(true).await;
}

/// Answers every request that arrives once a stop has begun with 503 and
/// `Connection: close`, in the shape of the surface it was sent to.
async fn refuse_while_stopping<S: 'static>(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use actix_web::body::EitherBody;
    use actix_web::ResponseError;
    let stopping = req
        .app_data::<web::Data<AppState<S>>>()
        .is_some_and(|s| s.baton.is_stopping());
    if !stopping {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let graph = is_graph_path(req.path());
    let mut res = if graph {
        graph_api::GraphFailure::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            domain::graph::code::TEMPORARY,
            None,
            "(#2) Baton is stopping; retry shortly",
        )
        .error_response()
    } else {
        error::ApiError::Stopping.error_response()
    };
    res.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(res).map_body(|_, b| EitherBody::right(b)))
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops Baton");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replay the event log")]
    Replay(#[from] StorageError),
    #[error("cannot start dispatch")]
    Dispatch(#[from] dispatch::DispatchError),
}

/// HTTP worker threads.
const WORKERS: usize = 2;

impl<S> AppState<S> {
    /// Counts one request of `app` against its limit: `false` when over it.
    pub fn admit(&self, app: &domain::AppId) -> bool {
        self.app_limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_acquire(app, std::time::Instant::now())
            .is_ok()
    }
}

/// Starts the application (replay, the outbox, timers), dispatch, and the
/// HTTP server on `config.listen` (port 0 picks a free port;
/// `Running::addr` says which).
pub async fn start<S: EventStore + 'static>(
    config: Config,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
) -> Result<Running<S>, StartError> {
    start_reading(config, store, clock, None).await
}

/// [`start`], resuming from the projection snapshot `reading` has been
/// reading since before `store` was opened: `baton serve` starts reading it
/// (with [`orchestration::snapshot::start_reading`]) and then opens the
/// log, so the two take their time side by side.
pub async fn start_reading<S: EventStore + 'static>(
    config: Config,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    reading: Option<orchestration::snapshot::Reading>,
) -> Result<Running<S>, StartError> {
    let (listener, addr) = bind(&config)?;
    let (baton, tasks) =
        Baton::start_reading(config, store.clone(), clock.clone(), reading).await?;
    serve(listener, addr, baton, tasks, clock, None, None).await
}

/// How a node takes part in a shared store's lease (see [`start_leased`]).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// How long a claim on the lease holds.
    pub lease: std::time::Duration,
    /// Where other nodes route calls to this one; `http://` and the bound
    /// address when `None` (which then must not be a wildcard address).
    pub advertise_url: Option<String>,
    /// This node's id in the lease table; a new one per start when `None`.
    /// With an id, a restarted node takes its own lease back at once.
    pub node_id: Option<String>,
}

impl Cluster {
    /// As `store = { postgres = … }` configures it.
    pub fn from_setting(setting: &config::PostgresSetting) -> Cluster {
        Cluster {
            lease: std::time::Duration::from_millis(setting.lease_ms),
            advertise_url: setting.advertise_url.clone(),
            node_id: setting.node_id.clone(),
        }
    }
}

/// Starts like [`start`] on a store that several nodes share: the node
/// decides for the shard (and dispatches) only while it holds the shard's
/// lease, and otherwise records webhooks and routes every other request to
/// the owner (`docs/scale-out.md`). Dispatch cursors live in the store.
pub async fn start_leased<S: EventStore + Leases + dispatch::SharedCursors>(
    config: Config,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    cluster: Cluster,
) -> Result<Running<S>, StartError> {
    let (listener, addr) = bind(&config)?;
    let node = cluster
        .node_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let lease = LeaseSettings {
        node: node.clone(),
        address: cluster
            .advertise_url
            .unwrap_or_else(|| format!("http://{addr}")),
        ttl: cluster.lease,
    };
    tracing::info!(node, address = lease.address, "claiming the shard's lease");
    let (baton, tasks) = Baton::start_leased(config, store.clone(), clock.clone(), lease).await?;
    // A routed send may wait for its outcome at the owner.
    let wait =
        baton.outcome_wait() + std::time::Duration::from_millis(baton.config.graph_timeout_ms);
    let router = routing::Router::new(
        node,
        wait + std::time::Duration::from_secs(5),
        store.clone(),
    );
    let cursors: Arc<dyn dispatch::SharedCursors> = store;
    serve(
        listener,
        addr,
        baton,
        tasks,
        clock,
        Some(router),
        Some(cursors),
    )
    .await
}

fn bind(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    Ok((listener, addr))
}

async fn serve<S: EventStore + 'static>(
    listener: TcpListener,
    addr: SocketAddr,
    baton: Arc<Baton<S>>,
    tasks: Tasks,
    clock: Arc<dyn Clock>,
    router: Option<routing::Router>,
    shared_cursors: Option<Arc<dyn dispatch::SharedCursors>>,
) -> Result<Running<S>, StartError> {
    let config = baton.config.clone();
    let store = baton.store.clone();

    let backends: Vec<dispatch::BackendConfig> = config
        .apps
        .values()
        .filter_map(|a| {
            let m = a.managed.as_ref()?;
            // The forwarding secret, never Meta's app secret: a backend must
            // hold no key that Baton's ingress accepts.
            Some(dispatch::BackendConfig {
                app: a.id.clone(),
                url: m.backend_url.clone()?,
                secret: dispatch::Secret::new(m.forward_secret.as_ref()?.expose()),
            })
        })
        .collect();
    let dispatcher = if backends.is_empty() {
        None
    } else {
        let mut dc = dispatch::DispatchConfig::new(backends, config.data_dir.join("dispatch"));
        dc.dead_letter_age = domain::Span::seconds(config.dispatch_dead_letter_after_secs as i64);
        dc.clock = clock;
        dc.shared_cursors = shared_cursors;
        match dispatch::Dispatcher::new(store, dc).await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tasks.shutdown().await;
                return Err(e.into());
            }
        }
    };
    // Dispatch decides what was delivered: it runs once per term of
    // ownership (always, on a store of its own).
    let dispatch = dispatcher.clone().map(|d| {
        tokio::spawn(orchestration::leadership::each_term(
            baton.clone(),
            tasks.signal(),
            move |stop| {
                let d = d.clone();
                async move {
                    if let Err(e) = d.run_until(stop).await {
                        tracing::error!(error = %e, "dispatch stopped");
                    }
                }
            },
        ))
    });
    let app_limiter = std::sync::Mutex::new(orchestration::outbox::limiter::RateLimiter::new(
        config.app_requests_per_second,
        config.app_requests_per_second,
    ));
    let state = Arc::new(AppState {
        baton,
        app_limiter,
        dispatcher,
        router,
        console: console::Sessions::default(),
        samples: console::Samples::default(),
    });
    let mut background: Vec<tokio::task::JoinHandle<()>> = dispatch.into_iter().collect();
    background.push(tokio::spawn(console::sample(state.clone(), tasks.signal())));
    let data = web::Data::from(state.clone());
    // Requests in flight at a stop may wait for a send's outcome.
    let drain_secs = state.baton.outcome_wait().as_secs().max(1);
    // Each managed app's webhook path is a literal route, matched by string
    // comparison; the generic route answers for any other id.
    let webhook_paths: Vec<String> = config
        .apps
        .values()
        .filter(|a| a.managed.is_some())
        .map(|a| format!("/webhooks/{}", a.id))
        .chain(["/webhooks/{app_id}".to_owned()])
        .collect();
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(routing::route_to_owner::<S>))
            .wrap(actix_web::middleware::from_fn(refuse_while_stopping::<S>));
        for path in &webhook_paths {
            app = app.service(
                web::resource(path.as_str())
                    .get(ingress::verify::<S>)
                    .post(ingress::receive::<S>)
                    .default_service(web::to(method_not_allowed)),
            );
        }
        app.service(resource("/healthz").get(healthz))
            .service(resource("/readyz").get(readyz::<S>))
            .service(resource("/metrics").get(metrics_text::<S>))
            .service(resource("/api/threads/{page_id}/{psid}").get(read_api::thread::<S>))
            .service(
                resource("/api/threads/{page_id}/{psid}/timeline").get(read_api::timeline::<S>),
            )
            .service(resource("/api/sends/check").post(sends::check::<S>))
            .service(resource("/api/admin/export").get(admin::export::<S>))
            .service(resource("/api/admin/projections").get(admin::projections::<S>))
            .service(resource("/api/admin/erasures").post(privacy::erase::<S>))
            .service(resource("/privacy/{app_id}/data-deletion").post(privacy::data_deletion::<S>))
            .service(resource("/privacy/deletions/{code}").get(privacy::deletion_status::<S>))
            .service(resource("/api/apps/{app_id}/delivery").get(delivery_api::status::<S>))
            .service(resource("/api/apps/{app_id}/messageable").get(read_api::messageable::<S>))
            .service(resource("/api/apps/{app_id}/redrive").post(delivery_api::redrive::<S>))
            .service(resource("/api/health/pages").get(health_api::pages::<S>))
            .service(
                resource("/api/health/pages/{page_id}/apps/{app_id}/resubscribe")
                    .post(health_api::resubscribe::<S>),
            )
            .configure(console::routes::<S>)
            .service(
                web::resource("/{version:v[0-9]+(\\.[0-9]+)?}/{node}/{edge}")
                    .post(graph_api::post_edge::<S>)
                    .get(graph_api::get::<S>)
                    .delete(graph_api::delete_edge::<S>)
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/{version:v[0-9]+(\\.[0-9]+)?}/{node}")
                    .get(graph_api::get::<S>)
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource([
                    "/{version:v[0-9]+(\\.[0-9]+)?}/",
                    "/{version:v[0-9]+(\\.[0-9]+)?}",
                ])
                .post(graph_api::batch::<S>)
                .default_service(web::to(method_not_allowed)),
            )
            .default_service(web::to(not_found))
    })
    .workers(WORKERS)
    // A cap on open connections (a request's head must arrive within
    // actix's 5 s, its body within `body_timeout_ms`): slow or idle clients
    // cannot exhaust file descriptors.
    .max_connections(config.max_connections.div_ceil(WORKERS))
    .disable_signals()
    .shutdown_timeout(drain_secs)
    .listen(listener)
    .map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?
    .run();
    let handle = server.handle();
    let server = tokio::spawn(server);
    tracing::info!(%addr, "baton listening");
    Ok(Running {
        addr,
        handle,
        state,
        server,
        tasks,
        background,
    })
}

/// A resource of Baton's own API: a method it does not serve gets 405 in
/// Baton's JSON error shape.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// 405, in the shape of the surface the request was sent to.
async fn method_not_allowed(req: actix_web::HttpRequest) -> actix_web::Result<HttpResponse> {
    if is_graph_path(req.path()) {
        return Err(graph_api::GraphFailure::new(
            actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
            domain::graph::code::INVALID_PARAMETER,
            None,
            format!("(#100) Unsupported {} request", req.method()),
        )
        .into());
    }
    Err(error::ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    }
    .into())
}

/// 404, in the shape of the surface the request was sent to.
async fn not_found(req: actix_web::HttpRequest) -> actix_web::Result<HttpResponse> {
    if is_graph_path(req.path()) {
        return Err(graph_api::GraphFailure::new(
            actix_web::http::StatusCode::NOT_FOUND,
            domain::graph::code::INVALID_PARAMETER,
            None,
            format!(
                "(#100) Unsupported {} request: {} is not served by Baton",
                req.method(),
                req.path()
            ),
        )
        .into());
    }
    Err(error::ApiError::NotFound(format!("no route for {} {}", req.method(), req.path())).into())
}

/// A Graph API version segment: `v21.0`, `v6`.
pub fn is_graph_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        let mut parts = rest.splitn(2, '.');
        let digits = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        let major = parts.next();
        digits(major) && parts.next().is_none_or(|minor| digits(Some(minor)))
    })
}

/// Paths of the Graph-compatible API (`/v21.0/…`), answered in Meta's error shape.
fn is_graph_path(path: &str) -> bool {
    path.strip_prefix("/v")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Ready when the log answers and the projections have folded its head.
async fn readyz<S: EventStore + 'static>(state: web::Data<AppState<S>>) -> HttpResponse {
    match state.store.head().await {
        Ok(head) if state.projections.position() >= head.position => {
            HttpResponse::Ok().content_type("text/plain").body("ready")
        }
        Ok(head) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .body(format!(
                "projections at {} of {}",
                state.projections.position(),
                head.position
            )),
        Err(e) => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .body(format!("event log unavailable: {e}")),
    }
}

async fn metrics_text<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: actix_web::HttpRequest,
) -> actix_web::Result<HttpResponse> {
    // With a metrics token configured, app ids and traffic are not public.
    if let Some(required) = &state.config.metrics_token {
        let token = auth::bearer(&req).unwrap_or_default();
        let admin = matches!(
            auth::identify(&state.config, token),
            Some(auth::Identity::Admin)
        );
        if !admin && !auth::ct_eq(required.expose().as_bytes(), token.as_bytes()) {
            return Err(error::ApiError::Unauthorized.into());
        }
    }
    let head = state.store.head().await.map(|h| h.position).unwrap_or(0);
    let mut text = state.metrics.render(head, state.projections.position());
    if let Some(d) = &state.dispatcher {
        text.push_str(&d.render_metrics());
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text))
}

/// Installs the tracing subscriber: text or JSON lines, level from `RUST_LOG`
/// (default `info`). Safe to call twice (the second call does nothing).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        // JSON escapes control characters itself.
        LogFormat::Json => builder.json().with_writer(std::io::stderr).try_init(),
        // Text lines carry values from outside (a tag, an id): control
        // characters are escaped so nobody can forge a log line.
        LogFormat::Text => builder
            .with_ansi(false)
            .with_writer(|| EscapingWriter(std::io::stderr()))
            .try_init(),
    };
}

/// A log writer that escapes every control character but the line's final
/// newline (`\n` → `\\n`, ESC → `\\x1b`). The text formatter writes one
/// event per call, ending in its newline.
#[derive(Debug)]
pub struct EscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        self.0.write_all(&escape_controls(body))?;
        self.0.write_all(end)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `bytes` with ASCII control characters (and DEL) written as `\n`, `\r`,
/// `\t` or `\xNN`.
pub fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    #[test]
    fn text_logs_escape_control_characters() {
        let mut out = Vec::new();
        let line = b"INFO send refused tag=HUMAN\n2026-12-01 FORGED \x1b[31mline\n";
        super::EscapingWriter(&mut out).write_all(line).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO send refused tag=HUMAN\\n2026-12-01 FORGED \\x1b[31mline\n"
        );
    }
}
