//! Baton's HTTP driver: the actix-web server with webhook ingress, the
//! Graph-compatible API, Baton's read, delivery and admin APIs, health and
//! metrics. Handlers parse, call one function of the application layer
//! (`orchestration`), and render; none holds a retry loop, a sleep, an
//! append or a rule of Meta's (those live in `orchestration` and `domain`).

pub mod admin;
pub mod auth;
pub mod delivery_api;
pub mod error;
pub mod graph_api;
pub mod ingress;
pub mod read_api;
pub mod sends;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use event_log::{EventStore, StorageError};
use orchestration::{Baton, Tasks};

pub use orchestration::{config, metrics, projections};
pub use orchestration::{Clock, Config, ConfigError, LogFormat, ManualClock, Secret, SystemClock};

/// What every handler shares: the application and, when any app has a
/// backend, dispatch.
#[derive(Debug)]
pub struct AppState<S> {
    pub baton: Arc<Baton<S>>,
    /// Forwards each app's events to its backend; `None` when no app has a `backend_url`.
    pub dispatcher: Option<Arc<dispatch::Dispatcher<S>>>,
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
    dispatch: Option<tokio::task::JoinHandle<()>>,
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
        Self::drain(self.tasks, self.dispatch).await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %e, "the HTTP server stopped with an error");
        }
    }

    /// Waits until the HTTP server stops (`stop` from elsewhere, through
    /// `handle`), then drains like [`Running::stop`].
    pub async fn wait(self) -> std::io::Result<()> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        Self::drain(self.tasks, self.dispatch).await;
        result
    }

    async fn drain(tasks: Tasks, dispatch: Option<tokio::task::JoinHandle<()>>) {
        let workers = tasks.shutdown();
        let dispatch = async {
            if let Some(d) = dispatch {
                if let Err(e) = d.await {
                    tracing::error!(error = %e, "dispatch stopped abnormally");
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
    let graph = req.path().starts_with("/v");
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

/// Starts the application (replay, the outbox, timers), dispatch, and the
/// HTTP server on `config.listen` (port 0 picks a free port;
/// `Running::addr` says which).
pub async fn start<S: EventStore + 'static>(
    config: Config,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
) -> Result<Running<S>, StartError> {
    let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (baton, tasks) = Baton::start(config, store.clone(), clock.clone()).await?;
    let config = baton.config.clone();

    let backends: Vec<dispatch::BackendConfig> = config
        .apps
        .values()
        .filter_map(|a| {
            let m = a.managed.as_ref()?;
            Some(dispatch::BackendConfig {
                app: a.id.clone(),
                url: m.backend_url.clone()?,
                secret: dispatch::Secret::new(m.app_secret.expose()),
            })
        })
        .collect();
    let dispatcher = if backends.is_empty() {
        None
    } else {
        let mut dc = dispatch::DispatchConfig::new(backends, config.data_dir.join("dispatch"));
        dc.dead_letter_age = domain::Span::seconds(config.dispatch_dead_letter_after_secs as i64);
        dc.clock = clock;
        match dispatch::Dispatcher::new(store, dc).await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tasks.shutdown().await;
                return Err(e.into());
            }
        }
    };
    let dispatch = dispatcher.clone().map(|d| {
        let shutdown = tasks.signal();
        tokio::spawn(async move {
            if let Err(e) = d.run_until(shutdown).await {
                tracing::error!(error = %e, "dispatch stopped");
            }
        })
    });
    let state = Arc::new(AppState { baton, dispatcher });
    let data = web::Data::from(state.clone());
    let body_limit = config.max_body_bytes;
    // Requests in flight at a stop may wait for a send's outcome.
    let drain_secs = state.baton.outcome_wait().as_secs().max(1);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(refuse_while_stopping::<S>))
            .route("/webhooks/{app_id}", web::get().to(ingress::verify::<S>))
            .route("/webhooks/{app_id}", web::post().to(ingress::receive::<S>))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz::<S>))
            .route("/metrics", web::get().to(metrics_text::<S>))
            .route(
                "/api/threads/{page_id}/{psid}",
                web::get().to(read_api::thread::<S>),
            )
            .route(
                "/api/threads/{page_id}/{psid}/timeline",
                web::get().to(read_api::timeline::<S>),
            )
            .route("/api/sends/check", web::post().to(sends::check::<S>))
            .route("/api/admin/export", web::get().to(admin::export::<S>))
            .route(
                "/api/apps/{app_id}/delivery",
                web::get().to(delivery_api::status::<S>),
            )
            .route(
                "/api/apps/{app_id}/redrive",
                web::post().to(delivery_api::redrive::<S>),
            )
            .route(
                "/api/admin/projections",
                web::get().to(admin::projections::<S>),
            )
            .service(
                web::resource("/{version:v[0-9]+(\\.[0-9]+)?}/{node}/{edge}")
                    .app_data(web::PayloadConfig::new(body_limit))
                    .route(web::post().to(graph_api::post_edge::<S>))
                    .route(web::get().to(graph_api::get_edge::<S>)),
            )
    })
    .workers(2)
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
        dispatch,
    })
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

async fn metrics_text<S: EventStore + 'static>(state: web::Data<AppState<S>>) -> HttpResponse {
    let head = state.store.head().await.map(|h| h.position).unwrap_or(0);
    let mut text = state.metrics.render(head, state.projections.position());
    if let Some(d) = &state.dispatcher {
        text.push_str(&d.render_metrics());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// Installs the tracing subscriber: text or JSON lines, level from `RUST_LOG`
/// (default `info`). Safe to call twice (the second call does nothing).
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
