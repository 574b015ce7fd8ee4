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
pub mod leadership;
pub mod metrics;
pub mod outbox;
pub mod page_api;
pub mod privacy;
pub mod projections;
pub mod reads;
pub mod reconcile;
pub mod record;
pub mod shutdown;
pub mod snapshot;
pub mod timers;

use std::sync::Arc;
use std::time::Duration;

use domain::{AppId, PageId};
use event_log::{EventStore, Leases, StorageError};
use tokio::task::JoinHandle;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, ConfigError, LogFormat, Secret};
pub use leadership::{LeaseSettings, Role};
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
    /// Threads queued for the reconciler, until its turn for them has come
    /// (Meta asked, or not when it cannot be): Meta's news contradicted
    /// their ledger, which is in doubt until then or until a caller has
    /// checked it with Meta.
    reconciling: std::sync::Mutex<std::collections::HashMap<domain::ThreadKey, reconcile::Doubt>>,
    /// Each page's budget of scheduled `thread_owner` calls.
    reconcile_budget:
        std::sync::Mutex<outbox::limiter::RateLimiter<domain::PageId, domain::Timestamp>>,
    /// One scheduled round at a time (the schedule's, or a caller's).
    reconcile_round: tokio::sync::Mutex<()>,
    /// Page health: the watchdog's last checks and each page token's last
    /// answer (in memory), and the locks that keep their facts single.
    health: health::HealthState,
    /// Whether this node decides for the shard (see [`leadership`]).
    leadership: leadership::Leadership,
    /// The position of the projection snapshot this start loaded, if any
    /// (the fold went on from there).
    pub resumed_from_snapshot: Option<u64>,
    /// The position of the last snapshot this process wrote.
    snapshots: tokio::sync::watch::Sender<u64>,
}

/// One owner's task, boxed so that every kind fits [`leadership::each_term`].
type Work = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The background tasks of a started [`Baton`], stopped with
/// [`Tasks::shutdown`].
#[derive(Debug)]
pub struct Tasks {
    workers: Trigger,
    /// Keeps the shard's lease, on a shared store.
    lease: Option<JoinHandle<()>>,
    follower_stop: Trigger,
    outbox: JoinHandle<()>,
    timers: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    retention: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    snapshotter: JoinHandle<()>,
    follower: JoinHandle<()>,
    /// Written once the follower has folded what the workers left.
    final_snapshot: FinalSnapshot,
}

/// The projection snapshot a clean stop writes (a future not yet polled;
/// the mutex only makes it `Sync`, as the rest of [`Tasks`]).
struct FinalSnapshot(std::sync::Mutex<Work>);

impl std::fmt::Debug for FinalSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinalSnapshot")
    }
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
        if let Err(e) = self.snapshotter.await {
            tracing::error!(error = %e, "the snapshot writer stopped abnormally");
        }
        if let Some(lease) = self.lease {
            if let Err(e) = lease.await {
                tracing::error!(error = %e, "the lease keeper stopped abnormally");
            }
        }
        self.follower_stop.fire();
        if let Err(e) = self.follower.await {
            tracing::error!(error = %e, "the projection follower stopped abnormally");
        }
        let last = self
            .final_snapshot
            .0
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        last.await;
    }
}

impl Tasks {
    /// Drops every task where it stands, as a killed process would: calls
    /// in flight lose their answers, nothing more is recorded or folded.
    /// For crash tests; a real stop is [`Tasks::shutdown`].
    pub async fn abort(self) {
        for task in self.lease.into_iter().chain([
            self.outbox,
            self.timers,
            self.reconciler,
            self.checkpointer,
            self.retention,
            self.watchdog,
            self.snapshotter,
            self.follower,
        ]) {
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
    /// stop left pending), the expiry timer and the other owner's tasks: on
    /// a store of its own, a node always decides.
    pub async fn start(
        config: Config,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Self>, Tasks), StorageError> {
        Self::start_reading(config, store, clock, None).await
    }

    /// [`Baton::start`], resuming from the snapshot `reading` has been
    /// reading since before the store was opened (see
    /// [`snapshot::start_reading`]).
    pub async fn start_reading(
        config: Config,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        reading: Option<snapshot::Reading>,
    ) -> Result<(Arc<Self>, Tasks), StorageError> {
        let (baton, reconcile_queue) =
            Self::build(config, store, clock, Role::Owner { epoch: None }, reading).await?;
        Ok(Self::spawn_tasks(baton, reconcile_queue, |_, _| None))
    }

    async fn build(
        config: Config,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        role: Role,
        reading: Option<snapshot::Reading>,
    ) -> Result<(Arc<Self>, tokio::sync::mpsc::Receiver<domain::ThreadKey>), StorageError> {
        let config = Arc::new(config);
        let fresh = snapshot::fresh_state(&config);
        let loaded = match snapshot::dir_of(&config, store.as_ref()) {
            Some(dir) => match snapshot::load_read(&dir, &fresh, store.as_ref(), reading).await {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::warn!(reason = %e, "the projection snapshot is not used; folding the whole log");
                    // A snapshot the log could not be read against is kept.
                    let transient = matches!(
                        e,
                        snapshot::Unusable::Read { .. }
                            | snapshot::Unusable::Storage(_)
                            | snapshot::Unusable::Restore(projections::RestoreError::Unreadable(_))
                    );
                    if !transient {
                        if let Err(e) = snapshot::set_aside(&dir) {
                            tracing::error!(error = %e, "cannot set the unusable snapshot aside");
                        }
                    }
                    None
                }
            },
            None => None,
        };
        let resumed_from_snapshot = loaded.as_ref().map(|s| s.position);
        let projections = Projections::new(loaded.unwrap_or(fresh));
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
            // A leased node (one that starts as a follower) shares the log.
            recorder: Recorder::new(
                store.clone(),
                projections.clone(),
                metrics.clone(),
                clock.clone(),
            ),
            outbox: outbox::OutboxState::new(&config),
            config,
            store,
            projections,
            metrics,
            clock,
            graph: graph_client::GraphClient::new(timeout, 2),
            send_graph: graph_client::GraphClient::new(timeout, 0),
            stopping: Trigger::new(),
            reconciles,
            reconciling: std::sync::Mutex::new(std::collections::HashMap::new()),
            reconcile_budget,
            reconcile_round: tokio::sync::Mutex::new(()),
            health: health::HealthState::new(),
            leadership: leadership::Leadership::new(role),
            resumed_from_snapshot,
            snapshots: tokio::sync::watch::Sender::new(0),
        });
        Ok((baton, reconcile_queue))
    }

    /// The projection follower, always, and the owner's tasks, each once
    /// per term of ownership (see [`leadership::each_term`]).
    fn spawn_tasks(
        baton: Arc<Self>,
        reconcile_queue: tokio::sync::mpsc::Receiver<domain::ThreadKey>,
        lease: impl FnOnce(&Arc<Self>, &Trigger) -> Option<JoinHandle<()>>,
    ) -> (Arc<Self>, Tasks) {
        let workers = Trigger::new();
        let follower_stop = Trigger::new();
        let follower = tokio::spawn(
            baton
                .projections
                .clone()
                .follow(baton.store.clone(), follower_stop.subscribe()),
        );
        let owner = |work: fn(Arc<Self>, Shutdown) -> Work| {
            let b = baton.clone();
            tokio::spawn(leadership::each_term(
                baton.clone(),
                workers.subscribe(),
                move |stop| work(b.clone(), stop),
            ))
        };
        let outbox = owner(|b, stop| Box::pin(outbox::run(b, stop)));
        let timers = owner(|b, stop| Box::pin(timers::run(b, stop)));
        let checkpointer = owner(|b, stop| Box::pin(checkpoints::run(b, stop)));
        let retention = owner(|b, stop| Box::pin(privacy::run(b, stop)));
        let watchdog = owner(|b, stop| Box::pin(health::run(b, stop)));
        let snapshotter = owner(|b, stop| Box::pin(snapshot::run(b, stop)));
        let final_snapshot = {
            let b = baton.clone();
            FinalSnapshot(std::sync::Mutex::new(Box::pin(async move {
                match b.snapshot_at_stop().await {
                    Ok(Some(w)) => tracing::info!(
                        position = w.position,
                        threads = w.threads,
                        "projection snapshot written at the stop"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write the projection snapshot at the stop")
                    }
                }
            })))
        };
        let queue = Arc::new(tokio::sync::Mutex::new(reconcile_queue));
        let reconciler = {
            let b = baton.clone();
            tokio::spawn(leadership::each_term(
                baton.clone(),
                workers.subscribe(),
                move |stop| reconcile::run(b.clone(), queue.clone(), stop),
            ))
        };
        let lease = lease(&baton, &workers);
        (
            baton,
            Tasks {
                workers,
                lease,
                follower_stop,
                outbox,
                timers,
                reconciler,
                checkpointer,
                retention,
                watchdog,
                snapshotter,
                follower,
                final_snapshot,
            },
        )
    }
}

impl<S: EventStore + Leases> Baton<S> {
    /// Starts like [`Baton::start`] on a store that several nodes share:
    /// the node claims the shard's lease at once and runs the owner's tasks
    /// only while it holds it (see [`leadership`]); meanwhile it is a
    /// follower, which records webhooks and leaves the rest to the owner.
    pub async fn start_leased(
        config: Config,
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        lease: LeaseSettings,
    ) -> Result<(Arc<Self>, Tasks), StorageError> {
        store.set_fence(event_log::Fence::Follower);
        let (baton, reconcile_queue) =
            Self::build(config, store, clock, Role::Follower { owner: None }, None).await?;
        let keeper = lease.clone();
        let (baton, tasks) = Self::spawn_tasks(baton, reconcile_queue, |baton, workers| {
            Some(tokio::spawn(leadership::lead(
                baton.clone(),
                keeper,
                workers.subscribe(),
            )))
        });
        // The first claim before the node serves: alone, it owns at once.
        leadership::claim(&baton, &lease).await;
        Ok((baton, tasks))
    }
}
