//! Baton's shell around the pure domain: configuration, the HTTP server
//! (webhook ingress, health, metrics), and projections folded from the log.
//! Every handler appends to the log before it answers; nothing here holds a
//! rule of Meta's (those live in `domain`).

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod delivery_api;
pub mod error;
pub mod graph_api;
pub mod graph_client;
pub mod ingress;
pub mod metrics;
pub mod projections;
pub mod read_api;
pub mod record;
pub mod sends;
pub mod timers;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use event_log::{EventStore, StorageError};

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ConfigError, LogFormat, Secret};
use metrics::Metrics;
use projections::{Projections, State};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState<S> {
    pub config: Arc<Config>,
    pub store: Arc<S>,
    pub projections: Arc<Projections>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub graph: graph_client::GraphClient,
    /// The sender's client: no automatic retries (the send policy decides).
    pub send_graph: graph_client::GraphClient,
    pub limiter: sends::RateLimiter,
    /// Forwards each app's events to its backend; `None` when no app has a `backend_url`.
    pub dispatcher: Option<Arc<dispatch::Dispatcher<S>>>,
}

/// A running server.
#[derive(Debug)]
pub struct Running<S> {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    pub state: Arc<AppState<S>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    follower: tokio::task::JoinHandle<()>,
    timers: tokio::task::JoinHandle<()>,
    dispatch: Option<tokio::task::JoinHandle<()>>,
}

impl<S> Running<S> {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, stops the background tasks.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.server.await;
        self.follower.abort();
        self.timers.abort();
        if let Some(d) = self.dispatch {
            d.abort();
        }
    }

    /// Waits until the server stops (a signal, or `stop` from elsewhere).
    pub async fn wait(self) -> std::io::Result<()> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.follower.abort();
        self.timers.abort();
        if let Some(d) = self.dispatch {
            d.abort();
        }
        result
    }
}

impl<S: EventStore + 'static> Running<S> {
    /// Records expiry for every lapsed thread now (tests move the clock, then call this).
    pub async fn expire_due(&self) -> usize {
        timers::expire_due(&self.state).await
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot replay the event log: {0}")]
    Replay(#[from] StorageError),
    #[error("cannot start dispatch: {0}")]
    Dispatch(#[from] dispatch::DispatchError),
}

/// Replays the log into projections, then serves on `config.listen` (port 0
/// picks a free port; `Running::addr` says which).
pub async fn start<S: EventStore + 'static>(
    config: Config,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
) -> Result<Running<S>, StartError> {
    let config = Arc::new(config);
    let projections = Projections::new(State::new(config.pages.values().map(|(_, p)| p.clone())));
    projections.catch_up(store.as_ref()).await?;
    tracing::info!(
        position = projections.position(),
        "projections replayed from the log"
    );
    let interrupted =
        recover_interrupted_sends(&projections, store.as_ref(), clock.as_ref()).await?;
    if interrupted > 0 {
        tracing::warn!(
            sends = interrupted,
            "sends interrupted by the last stop are recorded as unknown; their echoes settle them"
        );
    }
    let follower = tokio::spawn(projections.clone().follow(store.clone()));

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
        dc.clock = clock.clone();
        Some(Arc::new(
            dispatch::Dispatcher::new(store.clone(), dc).await?,
        ))
    };
    let state = Arc::new(AppState {
        config: config.clone(),
        store,
        projections,
        metrics: Arc::new(Metrics::default()),
        clock,
        graph: graph_client::GraphClient::new(
            std::time::Duration::from_millis(config.graph_timeout_ms),
            2,
        ),
        send_graph: graph_client::GraphClient::new(
            std::time::Duration::from_millis(config.graph_timeout_ms),
            0,
        ),
        limiter: sends::RateLimiter::new(config.send_rate_per_second, config.send_burst),
        dispatcher: dispatcher.clone(),
    });
    let dispatch = dispatcher.map(|d| {
        tokio::spawn(async move {
            if let Err(e) = d.run().await {
                tracing::error!(error = %e, "dispatch stopped");
            }
        })
    });
    let timers = tokio::spawn(timers::run(
        state.clone(),
        std::time::Duration::from_secs(5),
    ));
    let listener = TcpListener::bind(config.listen).map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let data = web::Data::from(state.clone());
    let body_limit = config.max_body_bytes;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
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
        follower,
        timers,
        dispatch,
    })
}

/// Sends accepted before a crash whose outcome was never recorded: Meta may or
/// may not have them. They are recorded as unknown (never resent blindly), and
/// settled at once when their echo is already in the log, else when it comes.
async fn recover_interrupted_sends<S: EventStore>(
    projections: &Projections,
    store: &S,
    clock: &dyn Clock,
) -> Result<usize, StorageError> {
    use domain::events::SendOutcome;
    let now = clock.now();
    let mut events = Vec::new();
    {
        let snapshot = projections.read();
        for (id, record) in snapshot
            .sends
            .iter()
            .filter(|(_, r)| r.status == projections::SendStatus::Pending)
        {
            let (Some(page), Some(ledger)) = (
                snapshot.pages.get(&record.thread.page),
                snapshot.thread(&record.thread),
            ) else {
                continue;
            };
            let send = record.as_send(id);
            let unknown = SendOutcome::Unknown {
                reason: "Baton stopped before Meta's answer was recorded".to_owned(),
            };
            let mut ledger = ledger.clone();
            let mut settled = domain::rules::settle_send(&ledger, page, &send, &unknown, now);
            if let Some(mid) = snapshot.echoed.get(id) {
                for e in &settled {
                    ledger.apply(e);
                }
                settled.extend(domain::rules::settle_send(
                    &ledger,
                    page,
                    &send,
                    &SendOutcome::SettledByEcho { mid: mid.clone() },
                    now,
                ));
            }
            events.extend(settled);
        }
    }
    let n = events
        .iter()
        .filter(|e| matches!(e, domain::Event::SendOutcomeRecorded(_)))
        .count();
    if !events.is_empty() {
        // Nothing else writes yet: the server is not listening.
        let records = events.iter().map(record::encode).collect();
        store
            .append(records)
            .await
            .map_err(|e| StorageError::Engine(Box::new(e)))?;
        projections.catch_up(store).await?;
    }
    Ok(n)
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
