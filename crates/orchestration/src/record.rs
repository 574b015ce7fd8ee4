//! The one recorder: decide against a snapshot of the projections, append
//! what was decided with the stream versions it saw, retry a bounded number
//! of times when another writer got there first, and return only once the
//! projections have folded the new records (read your writes). Every writer
//! (ingress, the Graph-compatible API, the outbox, timers, reconciliation,
//! dispatch's dead letters) goes through here, and so through [`encode`],
//! the one event → record encoding.
//!
//! It decides nothing itself and calls nobody outside the log: effects are
//! carried out by the caller after `record` returns (the decision is durable).

use std::time::{Duration, Instant};

use domain::{Event, Page, ThreadKey, ThreadLedger};
use event_log::{AppendError, EventStore, ExpectedVersion, NewRecord};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::projections::{Projections, State};

/// How often a plan is made again after losing a race on a stream.
pub const MAX_CONFLICTS: usize = 32;
/// How often an answer that cannot be asked for again (Meta's reply to a call
/// that already left) is retried on a busy log before giving up.
const MAX_BUSY_RETRIES: usize = 8;

/// Why a decision could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("page {0} is not configured")]
    UnknownPage(String),
    #[error("the event log is busy")]
    Busy,
    #[error("the event log cannot accept writes")]
    Unavailable(#[source] AppendError),
    #[error("the event log cannot be read")]
    Unreadable(#[source] event_log::StorageError),
}

/// The one encoding of an event as a record of the log.
pub fn encode(event: &Event) -> NewRecord {
    let enc = event.encode();
    NewRecord::new(
        event.stream_name(),
        enc.type_name,
        enc.schema_version,
        enc.payload,
    )
}

/// One record to append, with the event it encodes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub event: Event,
    pub record: NewRecord,
}

impl Planned {
    pub fn new(event: Event) -> Self {
        let record = encode(&event);
        Self { event, record }
    }

    /// Appended only if the stream is still at this version.
    pub fn expect(mut self, expected: ExpectedVersion) -> Self {
        self.record = self.record.expect(expected);
        self
    }

    /// Stored once however often it is appended.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.record = self.record.idempotency_key(key.into());
        self
    }

    /// Tied to the delivery (or request) that caused it.
    pub fn correlated_with(mut self, id: Uuid) -> Self {
        self.record = self.record.correlated_with(id);
        self
    }
}

/// The events decided on one thread, the first pinned to the version the
/// decision saw: a concurrent writer makes the batch conflict and re-plan.
/// A lone refusal on a thread with no state is recorded in its page's
/// refusals stream instead: refusing costs no thread state.
pub fn on_thread(ledger_version: u64, events: Vec<Event>) -> Vec<Planned> {
    if let (0, [Event::CommandRefused(r)]) = (ledger_version, events.as_slice()) {
        let stream = format!(
            "{}{}",
            crate::projections::REFUSALS_STREAM_PREFIX,
            r.thread.page
        );
        let event = events[0].clone();
        let enc = event.encode();
        let record = NewRecord::new(stream, enc.type_name, enc.schema_version, enc.payload);
        return vec![Planned { event, record }];
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let expected = match (i, ledger_version) {
                (0, 0) => ExpectedVersion::NoStream,
                (0, v) => ExpectedVersion::Exact(v),
                _ => ExpectedVersion::Any,
            };
            Planned::new(e).expect(expected)
        })
        .collect()
}

/// What happens when the log answers busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Give up at once (the caller can ask again: a webhook Meta retries, an
    /// app's request).
    Fail,
    /// Try again briefly: the facts cannot be had again (Meta's answer).
    Retry,
}

/// Appends records with the busy policy: the one append path of Baton, used
/// by [`Recorder::record`] for decisions and directly for facts that need no
/// decision against the projections (dispatch's dead letters and redrive
/// requests). A conflict or any other failure is returned as it is.
pub async fn append<S: EventStore>(
    store: &S,
    planned: Vec<Planned>,
    on_busy: OnBusy,
) -> Result<Vec<event_log::Appended>, AppendError> {
    let records: Vec<NewRecord> = planned.into_iter().map(|p| p.record).collect();
    let mut busy = 0;
    let mut delay = Duration::from_millis(10);
    loop {
        match store.append(records.clone()).await {
            Err(AppendError::Busy) if on_busy == OnBusy::Retry && busy < MAX_BUSY_RETRIES => {
                busy += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// The recorder over one store and its projections.
#[derive(Debug)]
pub struct Recorder<S> {
    store: std::sync::Arc<S>,
    projections: std::sync::Arc<Projections>,
    metrics: std::sync::Arc<Metrics>,
}

/// What was recorded: the plan's value, the events and the records' positions.
#[derive(Debug)]
pub struct Recorded<T> {
    pub value: T,
    pub events: Vec<Event>,
    /// Whether each record was already stored under its idempotency key.
    pub duplicates: Vec<bool>,
}

impl<S: EventStore> Recorder<S> {
    pub fn new(
        store: std::sync::Arc<S>,
        projections: std::sync::Arc<Projections>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            projections,
            metrics,
        }
    }

    /// Plans against the projections now and appends the plan; re-plans on a
    /// conflict (at most [`MAX_CONFLICTS`] times). An empty plan appends
    /// nothing.
    pub async fn record<T>(
        &self,
        on_busy: OnBusy,
        mut plan: impl FnMut(&State) -> Result<(Vec<Planned>, T), RecordError>,
    ) -> Result<Recorded<T>, RecordError> {
        let mut conflicts = 0;
        loop {
            let (planned, value) = plan(&self.projections.read())?;
            if planned.is_empty() {
                return Ok(Recorded {
                    value,
                    events: Vec::new(),
                    duplicates: Vec::new(),
                });
            }
            let events: Vec<Event> = planned.iter().map(|p| p.event.clone()).collect();
            let started = Instant::now();
            self.metrics.append_started();
            let result = append(self.store.as_ref(), planned, on_busy).await;
            self.metrics
                .append_finished(started.elapsed(), events.len());
            match result {
                Ok(appended) => {
                    let last = appended.iter().map(|a| a.position).max().unwrap_or(0);
                    self.projections.wait_for(last).await;
                    return Ok(Recorded {
                        value,
                        events,
                        duplicates: appended.iter().map(|a| a.duplicate).collect(),
                    });
                }
                Err(AppendError::Conflict { stream, .. }) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::debug!(%stream, conflicts, "the stream moved under this decision; deciding again");
                    let head = self.store.head().await.map_err(RecordError::Unreadable)?;
                    self.projections.wait_for(head.position).await;
                }
                Err(AppendError::Busy) | Err(AppendError::Conflict { .. }) => {
                    return Err(RecordError::Busy)
                }
                Err(e) => return Err(RecordError::Unavailable(e)),
            }
        }
    }

    /// [`Recorder::record`] for a decision on one thread: `decide` sees the
    /// thread's ledger (a fresh one if it has none) and its page.
    pub async fn record_on<T>(
        &self,
        thread: &ThreadKey,
        on_busy: OnBusy,
        mut decide: impl FnMut(&State, &ThreadLedger, &Page) -> (Vec<Event>, T),
    ) -> Result<Recorded<T>, RecordError> {
        self.record(on_busy, |snapshot| {
            let page = snapshot
                .pages
                .get(&thread.page)
                .ok_or_else(|| RecordError::UnknownPage(thread.page.to_string()))?;
            let ledger = snapshot.ledger(thread);
            let (events, value) = decide(snapshot, &ledger, page);
            Ok((on_thread(ledger.version, events), value))
        })
        .await
    }
}
