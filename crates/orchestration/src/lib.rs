//! Baton's application layer, between the pure `domain` and the drivers
//! (`server`'s HTTP handlers, `dispatch`, the timers, the `baton` CLI). It
//! owns the order of things:
//!
//! * one recorder ([`record`]): decide against a snapshot, append with the
//!   expected version, retry on conflict, read your writes;
//! * the projections ([`projections`]) and the clock ([`clock`]);
//! * the lifecycles: webhook intake ([`ingest`]), thread-control calls
//!   ([`control`]), sends and the outbox worker ([`outbox`]), reconciliation
//!   with Meta ([`reconcile`]) and control expiry ([`timers`]);
//! * page health ([`health`]): the subscription watchdog and page-token
//!   health.
//!
//! Effects (a Graph call, a reconciliation) are carried out only after the
//! events that caused them are durable. Drivers parse, call one function
//! here, and render; they hold no retry loop, no sleep, no rule of Meta's.
//! Meta's rules themselves live in `domain`.

pub mod audit;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod control;
pub mod graph_client;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod page_api;
pub mod privacy;
pub mod projections;
pub mod reads;
pub mod reconcile;
pub mod record;
pub mod shutdown;
pub mod timers;

use std::sync::Arc;
use std::time::Duration;

use domain::{AppId, PageId};
use event_log::{EventStore, StorageError};
use tokio::task::JoinHandle;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ConfigError, LogFormat, Secret};
pub use metrics::Metrics;
pub use projections::{Projections, State};
pub use record::{encode, OnBusy, RecordError, Recorder};
pub use shutdown::{Shutdown, Trigger};

/// The app and page a Graph-shaped call acts for, and the Graph API version
/// it named (Baton calls Meta with the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    pub app: AppId,
    pub page: PageId,
    pub version: String,
}

/// The application: configuration, the log, the projections and the clients
/// every lifecycle shares. Build it with [`Baton::start`].
#[derive(Debug)]
pub struct Baton<S> {
    pub config: Arc<Config>,
    pub store: Arc<S>,
    pub projections: Arc<Projections>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub recorder: Recorder<S>,
    /// For thread control and `thread_owner`: retries what Meta marks transient.
    graph: graph_client::GraphClient,
    /// For sends: no retries of its own (the outbox's policy decides).
    send_graph: graph_client::GraphClient,
    outbox: outbox::OutboxState,
    /// Fired when a stop begins: requests waiting for an outcome answer with
    /// what is known now instead of holding the stop up.
    stopping: Trigger,
    /// Threads whose owner a recorded fact made unknown: the reconciler asks
    /// Meta about each (bounded; a full queue drops, and the next contradiction asks again).
    reconciles: tokio::sync::mpsc::Sender<domain::ThreadKey>,
    /// Each page's budget of scheduled `thread_owner` calls.
    reconcile_budget:
        std::sync::Mutex<outbox::limiter::RateLimiter<domain::PageId, domain::Timestamp>>,
    /// One scheduled round at a time (the schedule's, or a caller's).
    reconcile_round: tokio::sync::Mutex<()>,
    /// Page health: the watchdog's last checks and each page token's last
    /// answer (in memory), and the locks that keep their facts single.
    health: health::HealthState,
}

/// The background tasks of a started [`Baton`], stopped with
/// [`Tasks::shutdown`].
#[derive(Debug)]
pub struct Tasks {
    workers: Trigger,
    follower_stop: Trigger,
    outbox: JoinHandle<()>,
    timers: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    retention: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    follower: JoinHandle<()>,
}

impl Tasks {
    /// A shutdown signal fired with the workers' (for the drivers' own tasks,
    /// such as dispatch).
    pub fn signal(&self) -> Shutdown {
        self.workers.subscribe()
    }

    /// Stops the workers: the outbox finishes its calls in flight and records
    /// their outcomes (sends not yet attempted stay accepted and resume at the
    /// next start), the timers finish the expiry they are recording; then the
    /// projection follower folds what they wrote and stops.
    pub async fn shutdown(self) {
        self.workers.fire();
        if let Err(e) = self.outbox.await {
            tracing::error!(error = %e, "the outbox worker stopped abnormally");
        }
        if let Err(e) = self.timers.await {
            tracing::error!(error = %e, "the expiry timer stopped abnormally");
        }
        if let Err(e) = self.reconciler.await {
            tracing::error!(error = %e, "the reconciler stopped abnormally");
        }
        if let Err(e) = self.checkpointer.await {
            tracing::error!(error = %e, "the checkpoint signer stopped abnormally");
        }
        if let Err(e) = self.retention.await {
            tracing::error!(error = %e, "the retention schedule stopped abnormally");
        }
        if let Err(e) = self.watchdog.await {
            tracing::error!(error = %e, "the subscription watchdog stopped abnormally");
        }
        self.follower_stop.fire();
        if let Err(e) = self.follower.await {
            tracing::error!(error = %e, "the projection follower stopped abnormally");
        }
    }
}

impl Tasks {
    /// Drops every task where it stands, as a killed process would: calls
    /// in flight lose their answers, nothing more is recorded or folded.
    /// For crash tests; a real stop is [`Tasks::shutdown`].
    pub async fn abort(self) {
        for task in [
            self.outbox,
            self.timers,
            self.reconciler,
            self.checkpointer,
            self.retention,
            self.watchdog,
            self.follower,
        ] {
            task.abort();
            let _ = task.await;
        }
    }
}

impl<S> Baton<S> {
    /// Begins a stop: requests waiting for a send's outcome answer at once
    /// with what is recorded (an app retries with its `Idempotency-Key`).
    /// The workers keep running until [`Tasks::shutdown`].
    pub fn begin_stop(&self) {
        self.stopping.fire();
    }

    /// Whether a stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.fired()
    }
}

impl<S: EventStore + 'static> Baton<S> {
    /// Replays the log into the projections, then starts the projection
    /// follower, the outbox worker (which resumes whatever sends the last
    /// stop left pending) and the expiry timer.
    pub async fn start(
        config: Config,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Self>, Tasks), StorageError> {
        let config = Arc::new(config);
        let projections =
            Projections::new(State::new(config.pages.values().map(|(_, p)| p.clone())));
        projections.catch_up(store.as_ref()).await?;
        tracing::info!(
            position = projections.position(),
            "projections replayed from the log"
        );
        let metrics = Arc::new(Metrics::default());
        let (reconciles, reconcile_queue) = tokio::sync::mpsc::channel(reconcile::QUEUE);
        let timeout = Duration::from_millis(config.graph_timeout_ms);
        let reconcile_budget =
            std::sync::Mutex::new(reconcile::budget(config.reconcile_calls_per_page_per_hour));
        let baton = Arc::new(Baton {
            recorder: Recorder::new(
                store.clone(),
                projections.clone(),
                metrics.clone(),
                clock.clone(),
            ),
            outbox: outbox::OutboxState::new(&config),
            config,
            store: store.clone(),
            projections: projections.clone(),
            metrics,
            clock,
            graph: graph_client::GraphClient::new(timeout, 2),
            send_graph: graph_client::GraphClient::new(timeout, 0),
            stopping: Trigger::new(),
            reconciles,
            reconcile_budget,
            reconcile_round: tokio::sync::Mutex::new(()),
            health: health::HealthState::new(),
        });
        let workers = Trigger::new();
        let follower_stop = Trigger::new();
        let follower = tokio::spawn(projections.follow(store, follower_stop.subscribe()));
        let outbox = tokio::spawn(outbox::run(baton.clone(), workers.subscribe()));
        let timers = tokio::spawn(timers::run(baton.clone(), workers.subscribe()));
        let checkpointer = tokio::spawn(checkpoints::run(baton.clone(), workers.subscribe()));
        let retention = tokio::spawn(privacy::run(baton.clone(), workers.subscribe()));
        let watchdog = tokio::spawn(health::run(baton.clone(), workers.subscribe()));
        let reconciler = tokio::spawn(reconcile::run(
            baton.clone(),
            reconcile_queue,
            workers.subscribe(),
        ));
        Ok((
            baton,
            Tasks {
                workers,
                follower_stop,
                outbox,
                timers,
                reconciler,
                checkpointer,
                retention,
                watchdog,
                follower,
            },
        ))
    }
}
