//! One backend's delivery loop: it follows the log from the app's cursor,
//! queues the app's items per thread, POSTs the head of each thread queue
//! (at most `concurrency` at a time), retries with backoff and jitter,
//! dead-letters after the configured age, and writes the cursor. It never
//! shares a queue with another backend, so one backend's trouble stays its own.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use domain::events::DispatchDeadLettered;
use domain::ids::{AppId, Timestamp};
use domain::Event;
use event_log::{EventStore, StorageError};
use orchestration::record::{OnBusy, Planned};
use tokio::sync::watch;
use tokio::task::{Id as TaskId, JoinSet};
use tokio::time::Instant;

use crate::config::{BackendConfig, DispatchConfig};
use crate::cursor::{CursorSlot, CursorState, MAX_SETTLED_KEPT};
use crate::envelope::envelope;
use crate::item::{classify, Item, OrderKey, Relevant};
use crate::status::BackendStatus;

/// One delivery obligation: an item, keyed by the log position that created
/// it (the item's own record, or the redrive request that re-queued it).
#[derive(Debug)]
struct Pending {
    item: Item,
    /// Clock time from which the dead-letter age counts (ms).
    age_base_ms: i64,
    attempts: u32,
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct ThreadQueue {
    /// Obligation keys in delivery order.
    items: VecDeque<u64>,
    in_flight: bool,
    retry_at: Option<Instant>,
}

/// The outcome of one POST.
type Outcome = (OrderKey, u64, Result<(), String>);

pub(crate) struct Worker<S> {
    pub store: Arc<S>,
    pub config: Arc<DispatchConfig>,
    pub backend: BackendConfig,
    pub client: reqwest::Client,
    pub cursor: CursorSlot,
    pub status: Arc<watch::Sender<BackendStatus>>,
    /// Where reading resumes and which positions above it are settled.
    pub resume: CursorState,
    /// Stop reading, drain and write the cursor when this fires.
    pub shutdown: orchestration::Shutdown,
}

struct State {
    next_read: u64,
    pending: BTreeMap<u64, Pending>,
    /// Obligation keys settled while a lower one is still pending.
    settled_above: BTreeSet<u64>,
    /// Settled keys from the cursor file, skipped when read again.
    skip: BTreeSet<u64>,
    threads: HashMap<OrderKey, ThreadQueue>,
    ready: VecDeque<OrderKey>,
    timers: BinaryHeap<Reverse<(Instant, u64, OrderKey)>>,
    timer_seq: u64,
    in_flight: JoinSet<Outcome>,
    in_flight_ids: HashMap<TaskId, (OrderKey, u64)>,
    stored: CursorState,
    /// Something settled since the cursor file was last written.
    dirty: bool,
    last_flush: Instant,
    counters: BackendStatus,
    /// The last delivery to this app that carried one item, by its
    /// correlation id: the item record that follows is forwarded as its bytes.
    single: Option<(uuid::Uuid, u64, domain::events::RawBody)>,
}

impl State {
    fn cursor(&self) -> u64 {
        self.pending
            .first_key_value()
            .map_or(self.next_read, |(k, _)| *k)
    }

    fn cursor_state(&self) -> CursorState {
        let cursor = self.cursor();
        CursorState {
            cursor,
            settled: self
                .settled_above
                .range(cursor..)
                .chain(self.skip.range(cursor..))
                .copied()
                .collect::<BTreeSet<u64>>()
                .into_iter()
                .take(MAX_SETTLED_KEPT)
                .collect(),
        }
    }
}

impl<S: EventStore + 'static> Worker<S> {
    /// Runs until the shutdown fires (then drains what is in flight and
    /// writes the cursor) or the log's subscription closes.
    pub async fn run(self) {
        let app = self.backend.app.clone();
        let mut head = self.store.subscribe();
        let mut st = State {
            next_read: self.resume.cursor.max(1),
            pending: BTreeMap::new(),
            settled_above: BTreeSet::new(),
            skip: self.resume.settled.iter().copied().collect(),
            threads: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            in_flight: JoinSet::new(),
            in_flight_ids: HashMap::new(),
            stored: self.resume.clone(),
            dirty: false,
            last_flush: Instant::now(),
            single: None,
            counters: BackendStatus {
                app: app.to_string(),
                running: true,
                // Everything below the resumed cursor was read by an earlier run.
                read_position: self.resume.cursor.max(1) - 1,
                ..BackendStatus::default()
            },
        };
        let mut stopping = false;
        loop {
            if !stopping {
                // Mark the head seen before reading, so an append racing the
                // read still wakes us.
                head.borrow_and_update();
                if let Err(e) = self.fill(&mut st).await {
                    tracing::error!(app = %app, error = %e, "dispatch cannot read the log; retrying on the next append");
                }
                self.fire_timers(&mut st);
                self.launch(&mut st);
            }
            self.maybe_flush(&mut st, false).await;
            self.publish(&st);
            if stopping && st.in_flight.is_empty() {
                break;
            }

            let reading = st.pending.len() < self.config.max_pending;
            let next_timer = st.timers.peek().map(|Reverse((at, _, _))| *at);
            let flush_due = st
                .dirty
                .then(|| st.last_flush + self.config.cursor_flush_interval);
            let wake = match (next_timer, flush_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                () = shutdown.recv(), if !stopping => {
                    tracing::info!(app = %app, in_flight = st.in_flight.len(), "dispatch draining: attempts in flight finish, then the cursor is written");
                    stopping = true;
                }
                changed = head.changed(), if reading && !stopping => {
                    if changed.is_err() {
                        // The log is gone: the process is shutting down.
                        break;
                    }
                }
                Some(done) = st.in_flight.join_next_with_id(), if !st.in_flight.is_empty() => {
                    match done {
                        Ok((id, outcome)) => {
                            st.in_flight_ids.remove(&id);
                            self.settle_attempt(&mut st, outcome).await;
                        }
                        Err(e) => {
                            // A panicked attempt counts as a failure of its item.
                            if let Some((key, obligation)) = st.in_flight_ids.remove(&e.id()) {
                                self.settle_attempt(&mut st, (key, obligation, Err(format!("attempt failed: {e}")))).await;
                            }
                        }
                    }
                }
                () = sleep_until_opt(wake), if wake.is_some() && !stopping => {}
            }
        }
        self.maybe_flush(&mut st, true).await;
        st.counters.running = false;
        self.publish(&st);
    }

    /// Reads the log until caught up or the pending window is full.
    async fn fill(&self, st: &mut State) -> Result<(), StorageError> {
        let batch = self.config.read_batch.max(1);
        loop {
            // Each record adds at most one obligation, so reading no more
            // than the room left never reads a record twice; waiting for a
            // quarter batch of room keeps reads from shrinking to one record.
            let room = self.config.max_pending.saturating_sub(st.pending.len());
            if room == 0 || (room < batch.min(self.config.max_pending) / 4) {
                return Ok(());
            }
            let records = self.store.read_all(st.next_read, batch.min(room)).await?;
            if records.is_empty() {
                return Ok(());
            }
            for record in &records {
                st.next_read = record.position + 1;
                st.dirty = true;
                st.counters.read_position = record.position;
                match classify(record, &self.backend.app, self.store.vault()) {
                    None => {}
                    Some(_) if st.skip.contains(&record.position) => {
                        st.counters.skipped_on_resume += 1;
                    }
                    Some(Relevant::SingleItemDelivery { id, position, body }) => {
                        st.single = Some((id, position, body));
                    }
                    Some(Relevant::Item(mut item)) => {
                        if let Some((id, position, body)) = st.single.take() {
                            if record.correlation_id == Some(id) {
                                item.original =
                                    crate::item::original(&body, position, &item, record.position);
                            }
                        }
                        item.raw_text = None;
                        let age_base_ms = item.recorded_at_ms;
                        self.enqueue(st, record.position, item, age_base_ms);
                    }
                    Some(Relevant::Redrive { position }) => {
                        let item = self.load_item(position).await?;
                        match item {
                            Some(item) => {
                                st.counters.redriven += 1;
                                let age_base_ms =
                                    i64::try_from(record.recorded_at_ms).unwrap_or(i64::MAX);
                                self.enqueue(st, record.position, item, age_base_ms);
                            }
                            None => tracing::warn!(
                                app = %self.backend.app,
                                position,
                                "redrive names a position that holds no item for this app; ignored"
                            ),
                        }
                    }
                }
            }
        }
    }

    async fn load_item(&self, position: u64) -> Result<Option<Item>, StorageError> {
        let records = self.store.read_all(position, 1).await?;
        Ok(records
            .first()
            .filter(|r| r.position == position)
            .and_then(
                |r| match classify(r, &self.backend.app, self.store.vault()) {
                    Some(Relevant::Item(item)) => Some(item),
                    _ => None,
                },
            ))
    }

    fn enqueue(&self, st: &mut State, key: u64, item: Item, age_base_ms: i64) {
        let order = item.key.clone();
        st.pending.insert(
            key,
            Pending {
                item,
                age_base_ms,
                attempts: 0,
                last_error: None,
            },
        );
        let queue = st.threads.entry(order.clone()).or_default();
        queue.items.push_back(key);
        if queue.items.len() == 1 {
            st.ready.push_back(order);
        }
    }

    fn fire_timers(&self, st: &mut State) {
        let now = Instant::now();
        while let Some(Reverse((at, _, _))) = st.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, key))) = st.timers.pop() else {
                break;
            };
            if let Some(q) = st.threads.get_mut(&key) {
                q.retry_at = None;
                st.ready.push_back(key);
            }
        }
    }

    /// Starts POSTs for ready threads up to the concurrency bound.
    fn launch(&self, st: &mut State) {
        let limit = self.config.concurrency.max(1);
        while st.in_flight.len() < limit {
            let Some(order) = st.ready.pop_front() else {
                return;
            };
            let Some(queue) = st.threads.get_mut(&order) else {
                continue;
            };
            if queue.in_flight || queue.retry_at.is_some() {
                continue;
            }
            let Some(&key) = queue.items.front() else {
                continue;
            };
            let Some(pending) = st.pending.get_mut(&key) else {
                continue;
            };
            if !self.store.vault().holds(&pending.item.keys) {
                // Erased while it waited: its words must not leave now.
                st.counters.dropped_erased += 1;
                self.settle(st, &order, key);
                continue;
            }
            queue.in_flight = true;
            pending.attempts += 1;
            st.counters.attempts += 1;
            let signed = match &pending.item.original {
                // Meta's bytes, as they came: only the signature is Baton's.
                Some(body) => crate::envelope::sign(body.to_vec(), &self.backend.secret),
                None => envelope(
                    order.page(),
                    pending.item.recorded_at_ms,
                    pending.item.channel,
                    &[&pending.item.raw],
                    &self.backend.secret,
                ),
            };
            let request = self
                .client
                .post(&self.backend.url)
                .header("Content-Type", "application/json")
                .header("X-Hub-Signature-256", signed.signature_256)
                .header("X-Hub-Signature", signed.signature_1)
                .body(signed.body);
            let order_for_task = order.clone();
            let handle = st.in_flight.spawn(async move {
                let result = match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        // Drain the body so the connection can be reused.
                        let _ = response.bytes().await;
                        Ok(())
                    }
                    Ok(response) => Err(format!("backend answered {}", response.status())),
                    Err(e) if e.is_timeout() => Err("backend timed out".to_owned()),
                    Err(e) => Err(format!("backend unreachable: {e}")),
                };
                (order_for_task, key, result)
            });
            st.in_flight_ids.insert(handle.id(), (order, key));
        }
    }

    async fn settle_attempt(&self, st: &mut State, (order, key, result): Outcome) {
        let Some(queue) = st.threads.get_mut(&order) else {
            return;
        };
        queue.in_flight = false;
        match result {
            Ok(()) => {
                st.counters.delivered += 1;
                self.settle(st, &order, key);
            }
            Err(error) => {
                st.counters.failures += 1;
                st.counters.last_error = Some(error.clone());
                let now = self.config.clock.now();
                let Some(pending) = st.pending.get_mut(&key) else {
                    return;
                };
                pending.last_error = Some(error.clone());
                let attempts = pending.attempts;
                let too_old = now.millis().saturating_sub(pending.age_base_ms)
                    >= self.config.dead_letter_age.millis();
                let too_many = self.config.max_attempts.is_some_and(|max| attempts >= max);
                tracing::debug!(app = %self.backend.app, position = pending.item.position, attempts, %error, "dispatch attempt failed");
                if too_old || too_many {
                    match self
                        .dead_letter(key, &pending.item, attempts, &error, now)
                        .await
                    {
                        Ok(()) => {
                            st.counters.dead_lettered += 1;
                            self.settle(st, &order, key);
                            return;
                        }
                        Err(e) => {
                            tracing::error!(app = %self.backend.app, error = %e, "cannot record a dead letter; retrying the item");
                        }
                    }
                }
                let delay = backoff(&self.config, &self.backend.app, key, attempts);
                let at = Instant::now() + delay;
                if let Some(queue) = st.threads.get_mut(&order) {
                    queue.retry_at = Some(at);
                }
                st.timer_seq += 1;
                st.timers.push(Reverse((at, st.timer_seq, order)));
            }
        }
    }

    /// Records the dead letter durably before the thread moves on.
    async fn dead_letter(
        &self,
        key: u64,
        item: &Item,
        attempts: u32,
        error: &str,
        now: Timestamp,
    ) -> Result<(), event_log::AppendError> {
        let event = Event::DispatchDeadLettered(DispatchDeadLettered {
            app: self.backend.app.clone(),
            position: item.position,
            thread: item.key.thread().cloned(),
            at: now,
            attempts,
            last_error: error.to_owned(),
        });
        // Keyed by the obligation, so a restart that dead-letters the same
        // obligation again does not record it twice.
        let fact = Planned::new(event)
            .idempotency_key(format!("dispatch/{}/dead/{key}", self.backend.app));
        orchestration::record::append(self.store.as_ref(), vec![fact], OnBusy::Retry).await?;
        tracing::warn!(app = %self.backend.app, position = item.position, attempts, error, "dispatch dead-lettered an item");
        Ok(())
    }

    /// Removes a delivered or dead-lettered obligation and frees its thread.
    fn settle(&self, st: &mut State, order: &OrderKey, key: u64) {
        st.pending.remove(&key);
        st.dirty = true;
        if let Some(queue) = st.threads.get_mut(order) {
            if queue.items.front() == Some(&key) {
                queue.items.pop_front();
            }
            if queue.items.is_empty() {
                st.threads.remove(order);
            } else {
                st.ready.push_back(order.clone());
            }
        }
        let cursor = st.cursor();
        if key >= cursor {
            st.settled_above.insert(key);
        }
        // Forget what the cursor has passed (amortised O(log n) per entry).
        while st
            .settled_above
            .first()
            .is_some_and(|first| *first < cursor)
        {
            st.settled_above.pop_first();
        }
        while st.skip.first().is_some_and(|first| *first < cursor) {
            st.skip.pop_first();
        }
    }

    async fn maybe_flush(&self, st: &mut State, force: bool) {
        if !st.dirty {
            return;
        }
        let due = force || st.last_flush.elapsed() >= self.config.cursor_flush_interval;
        if !due {
            return;
        }
        let state = st.cursor_state();
        st.dirty = false;
        if state == st.stored {
            return;
        }
        let written = self.cursor.store(&state).await;
        st.last_flush = Instant::now();
        match written {
            Ok(()) => st.stored = state,
            Err(e) => {
                st.dirty = true;
                tracing::error!(app = %self.backend.app, error = %e, cursor = %self.cursor.describe(), "cannot write the dispatch cursor");
            }
        }
    }

    fn publish(&self, st: &State) {
        let now = self.config.clock.now().millis();
        let mut s = st.counters.clone();
        s.cursor = st.cursor();
        s.cursor_stored = st.stored.cursor;
        s.queue_depth = st.pending.len() as u64;
        s.in_flight = st.in_flight.len() as u64;
        s.threads_pending = st.threads.len() as u64;
        // Each waiting thread has exactly one timer (O(1), unlike a scan).
        s.threads_retrying = st.timers.len() as u64;
        // The lowest obligation is the oldest: positions follow record time
        // (a redrive's key is its own, later, position).
        s.oldest_pending_age_ms = st
            .pending
            .first_key_value()
            .map(|(_, p)| now.saturating_sub(p.age_base_ms).max(0));
        self.status.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with "equal jitter": half the step fixed, half random,
/// so retries of many threads do not stampede a recovering backend.
pub(crate) fn backoff(config: &DispatchConfig, app: &AppId, key: u64, attempts: u32) -> Duration {
    let base = config.backoff_base.as_nanos().max(1);
    let cap = config.backoff_cap.as_nanos().max(base);
    let exp = attempts.saturating_sub(1).min(40);
    let step = base.saturating_mul(1u128 << exp).min(cap);
    let half = step / 2;
    let mut seed = key ^ (u64::from(attempts) << 48);
    for b in app.as_str().bytes() {
        seed = seed.rotate_left(5) ^ u64::from(b);
    }
    let jitter = u128::from(splitmix64(seed)) % (half + 1);
    Duration::from_nanos(u64::try_from(half + jitter).unwrap_or(u64::MAX))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let mut config = DispatchConfig::new(Vec::new(), "unused");
        config.backoff_base = Duration::from_millis(100);
        config.backoff_cap = Duration::from_secs(2);
        let app = AppId::parse("111").unwrap();
        for attempts in 1..=12u32 {
            let step = Duration::from_millis(100 * (1u64 << (attempts - 1).min(20)))
                .min(Duration::from_secs(2));
            for key in 0..50 {
                let d = backoff(&config, &app, key, attempts);
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempts}: {d:?} vs {step:?}"
                );
            }
        }
        // Jitter spreads threads apart.
        let spread: BTreeSet<Duration> = (0..50).map(|k| backoff(&config, &app, k, 3)).collect();
        assert!(spread.len() > 10);
    }
}
