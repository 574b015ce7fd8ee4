//! Appending decisions to a thread's stream with optimistic concurrency: the
//! decision is made against a snapshot of the ledger and appended with the
//! version it saw; if another writer got there first, the snapshot is
//! refreshed and the decision made again. Nothing is forwarded to Meta before
//! this returns (the decision is durable).

use std::time::Instant;

use domain::{Event, Page, ThreadKey, ThreadLedger};
use event_log::{AppendError, EventStore, ExpectedVersion, NewRecord};

use crate::projections::State;
use crate::AppState;

const MAX_ATTEMPTS: usize = 32;

/// Why a decision could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("page {0} is not configured")]
    UnknownPage(String),
    #[error("the event log is busy")]
    Busy,
    #[error("the event log cannot accept writes: {0}")]
    Unavailable(String),
}

pub fn encode(event: &Event) -> NewRecord {
    let enc = event.encode();
    NewRecord::new(
        event.stream_name(),
        enc.type_name,
        enc.schema_version,
        enc.payload,
    )
}

/// Runs `decide` against the thread's current ledger and appends what it
/// returns, retrying on a concurrent change. Returns `decide`'s value and the
/// events appended (none when `decide` returned none).
pub async fn record_with<S, T>(
    state: &AppState<S>,
    thread: &ThreadKey,
    mut decide: impl FnMut(&State, &ThreadLedger, &Page) -> (Vec<Event>, T),
) -> Result<(T, Vec<Event>), RecordError>
where
    S: EventStore + 'static,
{
    let mut attempt = 0;
    loop {
        let (events, value, version) = {
            let snapshot = state.projections.read();
            let page = snapshot
                .pages
                .get(&thread.page)
                .ok_or_else(|| RecordError::UnknownPage(thread.page.to_string()))?;
            let fresh;
            let ledger = match snapshot.thread(thread) {
                Some(l) => l,
                None => {
                    fresh = ThreadLedger::new(thread.clone());
                    &fresh
                }
            };
            let (events, value) = decide(&snapshot, ledger, page);
            (events, value, ledger.version)
        };
        if events.is_empty() {
            return Ok((value, events));
        }
        let records = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let expected = match (i, version) {
                    (0, 0) => ExpectedVersion::NoStream,
                    (0, v) => ExpectedVersion::Exact(v),
                    _ => ExpectedVersion::Any,
                };
                encode(e).expect(expected)
            })
            .collect();
        let started = Instant::now();
        state.metrics.append_started();
        let result = state.store.append(records).await;
        state
            .metrics
            .append_finished(started.elapsed(), events.len());
        match result {
            Ok(appended) => {
                let last = appended.iter().map(|a| a.position).max().unwrap_or(0);
                state.projections.wait_for(last).await;
                return Ok((value, events));
            }
            Err(AppendError::Conflict { .. }) if attempt < MAX_ATTEMPTS => {
                attempt += 1;
                let head = state
                    .store
                    .head()
                    .await
                    .map_err(|e| RecordError::Unavailable(e.to_string()))?;
                state.projections.wait_for(head.position).await;
            }
            Err(AppendError::Busy) | Err(AppendError::Conflict { .. }) => {
                return Err(RecordError::Busy)
            }
            Err(e) => return Err(RecordError::Unavailable(e.to_string())),
        }
    }
}

/// Records Meta's answer to a call that already left: the same as
/// [`record_with`], but a busy log is retried a few times (with a short
/// backoff) before giving up, because the answer cannot be asked for again.
pub async fn record_settlement<S, T>(
    state: &AppState<S>,
    thread: &ThreadKey,
    mut decide: impl FnMut(&State, &ThreadLedger, &Page) -> (Vec<Event>, T),
) -> Result<(T, Vec<Event>), RecordError>
where
    S: EventStore + 'static,
{
    let mut delay = std::time::Duration::from_millis(10);
    for _ in 0..8 {
        match record_with(state, thread, &mut decide).await {
            Err(RecordError::Busy) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
    record_with(state, thread, &mut decide).await
}
