//! Baton's dispatch: forwards the webhook items Meta delivered to each managed
//! app (as recorded in the log) to that app's backend, in Meta's envelope, on
//! the channel Meta used, signed with both of Meta's signature schemes.
//!
//! * At least once: each backend has a durable cursor (see [`cursor`]); an
//!   item counts as settled only after a 2xx or a durable
//!   `DispatchDeadLettered` record.
//! * Ordered per thread (page-level items per page); threads are independent,
//!   and so are backends: each backend has its own task, log reader, bounded
//!   pending window and concurrency limit.
//! * Redrive: [`request_redrive`] appends `DispatchRedriveRequested`; the
//!   backend's worker reads it from the log and delivers the item again.
//!
//! It does not decide anything about ownership, and it never changes what
//! Meta sent: the item bytes are the recorded `raw` value. Guarantees for app
//! authors: `docs/delivery.md`.

pub mod config;
pub mod cursor;
pub mod envelope;
pub mod item;
pub mod status;
mod worker;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use domain::events::{DispatchDeadLettered, DispatchRedriveRequested};
use domain::ids::{AppId, Timestamp};
use domain::Event;
use event_log::{AppendError, EventStore, StorageError};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use config::{BackendConfig, Clock, DispatchConfig, ManualClock, Secret, StartAt, SystemClock};
pub use cursor::{CursorFile, CursorSlot, CursorState, SharedCursors};
pub use status::{render_prometheus, BackendStatus};

use worker::Worker;

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("cannot prepare the cursor directory {path}: {source}")]
    CursorDir { path: String, source: io::Error },
    #[error("cannot read the cursor file {path}: {source}")]
    CursorRead { path: String, source: io::Error },
    #[error("cannot read the log head: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    #[error("two backends are configured for app {app}")]
    DuplicateApp { app: AppId },
    #[error("the dispatcher is already running")]
    AlreadyRunning,
}

/// Why a redrive request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("app {app} has no dead letter at position {position}")]
    NotDeadLettered { app: AppId, position: u64 },
    #[error("cannot read the dispatch stream: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot append the redrive request: {0}")]
    Append(#[from] AppendError),
}

struct Backend {
    config: BackendConfig,
    cursor: CursorSlot,
    status: Arc<watch::Sender<BackendStatus>>,
}

/// Forwards recorded items to every configured backend.
///
/// Build it with [`Dispatcher::new`], share it in an `Arc`, spawn
/// [`Dispatcher::run`], and read [`Dispatcher::status`] /
/// [`Dispatcher::render_metrics`] from request handlers.
pub struct Dispatcher<S> {
    store: Arc<S>,
    config: Arc<DispatchConfig>,
    client: reqwest::Client,
    backends: Vec<Arc<Backend>>,
    running: AtomicBool,
}

impl<S> std::fmt::Debug for Dispatcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

impl<S: EventStore + 'static> Dispatcher<S> {
    /// Loads every backend's cursor (creating the cursor directory if needed).
    /// A backend without a cursor starts where `config.start_at` says.
    pub async fn new(store: Arc<S>, config: DispatchConfig) -> Result<Self, DispatchError> {
        if config.shared_cursors.is_none() {
            std::fs::create_dir_all(&config.cursor_dir).map_err(|source| {
                DispatchError::CursorDir {
                    path: config.cursor_dir.display().to_string(),
                    source,
                }
            })?;
        }
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .build()
            .map_err(|e| DispatchError::Http(e.to_string()))?;
        let mut backends: Vec<Arc<Backend>> = Vec::new();
        for backend in &config.backends {
            if backends.iter().any(|b| b.config.app == backend.app) {
                return Err(DispatchError::DuplicateApp {
                    app: backend.app.clone(),
                });
            }
            let cursor = match &config.shared_cursors {
                Some(cursors) => CursorSlot::Shared {
                    cursors: cursors.clone(),
                    app: backend.app.clone(),
                },
                None => CursorSlot::File(CursorFile::new(&config.cursor_dir, &backend.app)),
            };
            let resume = resume(store.as_ref(), &config, &cursor).await?;
            let status = BackendStatus {
                app: backend.app.to_string(),
                cursor: resume.cursor,
                cursor_stored: resume.cursor,
                read_position: resume.cursor.saturating_sub(1),
                ..BackendStatus::default()
            };
            backends.push(Arc::new(Backend {
                config: backend.clone(),
                cursor,
                status: Arc::new(watch::Sender::new(status)),
            }));
        }
        Ok(Dispatcher {
            store,
            config: Arc::new(config),
            client,
            backends,
            running: AtomicBool::new(false),
        })
    }

    /// Delivers until the log closes. One task per backend; dropping or
    /// aborting this future stops them all (the cursors stay where they
    /// were last written; a restart resumes there). Refused while already
    /// running. Only one dispatcher may use a cursor directory at a time.
    pub async fn run(&self) -> Result<(), DispatchError> {
        let never = orchestration::Trigger::new();
        self.run_until(never.subscribe()).await
    }

    /// Delivers until `shutdown` fires (or the log closes): each backend's
    /// worker then stops reading, lets the attempts in flight finish and
    /// settle, and writes its cursor, so a restart re-delivers nothing its
    /// backend acknowledged. Each run starts from the stored cursors, so a
    /// run after another node's (a new term of ownership) goes on from
    /// where that node stopped.
    pub async fn run_until(&self, shutdown: orchestration::Shutdown) -> Result<(), DispatchError> {
        if self.running.swap(true, Ordering::SeqCst) {
            return Err(DispatchError::AlreadyRunning);
        }
        // Cleared however `run` ends, including when its task is aborted.
        let _running = RunGuard(&self.running);
        let mut tasks = JoinSet::new();
        for backend in &self.backends {
            let resume = resume(self.store.as_ref(), &self.config, &backend.cursor).await?;
            let worker = Worker {
                store: Arc::clone(&self.store),
                config: Arc::clone(&self.config),
                backend: backend.config.clone(),
                client: self.client.clone(),
                cursor: backend.cursor.clone(),
                status: Arc::clone(&backend.status),
                resume,
                shutdown: shutdown.clone(),
            };
            let span = tracing::info_span!("dispatch", app = %backend.config.app);
            tasks.spawn(worker.run().instrument(span));
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a dispatch worker stopped abnormally");
            }
        }
        Ok(())
    }

    /// A snapshot of every backend, in configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        self.backends.iter().map(|b| snapshot(&b.status)).collect()
    }

    /// A snapshot of one app's backend (`GET /api/apps/{app_id}/delivery`).
    pub fn app_status(&self, app: &AppId) -> Option<BackendStatus> {
        self.backends
            .iter()
            .find(|b| b.config.app == *app)
            .map(|b| snapshot(&b.status))
    }

    /// Prometheus text for `/metrics` (`baton_dispatch_*`, label `app`).
    pub fn render_metrics(&self) -> String {
        render_prometheus(&self.status())
    }

    /// Follows one app's status: the receiver changes whenever the backend's
    /// worker publishes (after every read, attempt and settlement). For
    /// tests and for streaming status without polling.
    pub fn subscribe_status(&self, app: &AppId) -> Option<watch::Receiver<BackendStatus>> {
        self.backends
            .iter()
            .find(|b| b.config.app == *app)
            .map(|b| b.status.subscribe())
    }

    /// The store dispatch follows.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}

/// Where a backend's delivery resumes: its stored cursor, or where
/// `config.start_at` says when it has none.
async fn resume<S: EventStore>(
    store: &S,
    config: &DispatchConfig,
    cursor: &CursorSlot,
) -> Result<CursorState, DispatchError> {
    let loaded = cursor
        .load()
        .await
        .map_err(|source| DispatchError::CursorRead {
            path: cursor.describe(),
            source,
        })?;
    Ok(match (loaded, config.start_at) {
        (Some(state), _) => state,
        (None, StartAt::Beginning) => CursorState {
            cursor: 1,
            settled: Vec::new(),
        },
        (None, StartAt::Head) => CursorState {
            cursor: store.head().await?.position + 1,
            settled: Vec::new(),
        },
    })
}

struct RunGuard<'a>(&'a AtomicBool);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn snapshot(status: &watch::Sender<BackendStatus>) -> BackendStatus {
    status.borrow().clone()
}

/// A dead letter of one app, and whether a redrive was requested after it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Log position of the `DispatchDeadLettered` record.
    pub recorded_at_position: u64,
    #[serde(flatten)]
    pub event: DispatchDeadLettered,
    /// A `DispatchRedriveRequested` for the same item came later.
    pub redrive_requested: bool,
}

/// Every dead letter of `app`, oldest first, read from its `dispatch/{app}`
/// stream.
pub async fn dead_letters<S: EventStore>(
    store: &S,
    app: &AppId,
) -> Result<Vec<DeadLetter>, StorageError> {
    let stream = format!("dispatch/{app}");
    let mut out: Vec<DeadLetter> = Vec::new();
    let mut from = 1;
    loop {
        let records = store.read_stream(&stream, from, 1024).await?;
        let Some(last) = records.last() else {
            return Ok(out);
        };
        from = last.stream_version + 1;
        for r in &records {
            match Event::decode(&r.type_name, r.schema_version, &r.payload) {
                Ok(Event::DispatchDeadLettered(event)) => out.push(DeadLetter {
                    recorded_at_position: r.position,
                    event,
                    redrive_requested: false,
                }),
                Ok(Event::DispatchRedriveRequested(req)) => {
                    for dl in out.iter_mut().filter(|d| d.event.position == req.position) {
                        dl.redrive_requested = true;
                    }
                }
                _ => {}
            }
        }
    }
}

/// Asks for the dead-lettered item at `position` to be delivered to `app`
/// again: appends `DispatchRedriveRequested` (once durable, the app's worker
/// picks it up from the log). Refused when `app` has no dead letter there.
/// Answers the request's log position.
pub async fn request_redrive<S: EventStore>(
    store: &S,
    app: &AppId,
    position: u64,
    by: &str,
    now: Timestamp,
) -> Result<u64, RedriveError> {
    let known = dead_letters(store, app)
        .await?
        .iter()
        .any(|d| d.event.position == position);
    if !known {
        return Err(RedriveError::NotDeadLettered {
            app: app.clone(),
            position,
        });
    }
    let event = Event::DispatchRedriveRequested(DispatchRedriveRequested {
        app: app.clone(),
        position,
        at: now,
        by: by.to_owned(),
    });
    let appended = orchestration::record::append(
        store,
        vec![orchestration::record::Planned::new(event)],
        orchestration::OnBusy::Retry,
    )
    .await?;
    Ok(appended.first().map_or(0, |a| a.position))
}
