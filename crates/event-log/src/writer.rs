//! The group-commit writer shared by every backend: one thread owns the
//! store's writes, assigns positions, versions and hashes, and answers each
//! waiter after its group is durable. It knows nothing of sled or of memory;
//! backends plug in through [`Backend`]. Its staging (`Stage`) also serves
//! the PostgreSQL store, which runs it inside each group's transaction on
//! what it read there ([`Committed`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::error::{AppendError, StorageError};
use crate::record::{Appended, ChainHash, Head, NewRecord, Record};
use crate::store::StoreConfig;

/// What a storage engine must do for the writer. Lookups and reads may run
/// concurrently with `commit`; only the writer thread calls `commit`.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Current version of `stream` in the committed state (0 = no stream).
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError>;
    /// The record an idempotency key was first stored with.
    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError>;
    /// Writes `records` (contiguous, continuing the head) and their indexes
    /// atomically, then makes them durable. `Ok` means they survive a crash.
    /// `stored[i]` is `records[i].stored_bytes()`, already encoded by the
    /// writer (which had to encode the record to hash it anyway). The
    /// backend takes ownership, so it can keep the records without a copy.
    fn commit(&self, records: Vec<Record>, stored: Vec<Vec<u8>>) -> Result<(), StorageError>;
    /// Records with positions in `from..=to`, at most `limit`.
    fn read_all(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, StorageError>;
    /// Records of `stream` from `from_version`, with position at most
    /// `max_position`, at most `limit`.
    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_position: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError>;
}

/// What staging a group needs to know of the committed state. Every
/// [`Backend`] answers it from storage; the PostgreSQL store answers it from
/// what it fetched inside the group's transaction, so both stage groups with
/// the same code (`Stage::add_batch`).
pub(crate) trait Committed {
    /// Current version of `stream` (0 = no stream).
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError>;
    /// The record an idempotency key was first stored with.
    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError>;
}

impl<B: Backend> Committed for B {
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError> {
        Backend::stream_version(self, stream)
    }
    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError> {
        Backend::idempotent(self, key)
    }
}

pub(crate) type AppendReply = oneshot::Sender<Result<Vec<Appended>, AppendError>>;
pub(crate) type AppendAnswer = oneshot::Receiver<Result<Vec<Appended>, AppendError>>;

/// What a store's handle asks its writer (this module's thread, or the
/// PostgreSQL store's task).
pub(crate) enum Request {
    Append {
        batch: Vec<NewRecord>,
        reply: AppendReply,
    },
    Restore {
        records: Vec<Record>,
        reply: oneshot::Sender<Result<Head, AppendError>>,
    },
    Pause {
        ack: oneshot::Sender<()>,
        resume: Receiver<()>,
    },
}

struct Shared<B> {
    backend: B,
    head: RwLock<Head>,
    durable: watch::Sender<u64>,
    stopped: Stopped,
    /// Groups committed (each one backend commit).
    groups: std::sync::atomic::AtomicU64,
}

impl<B> Shared<B> {
    fn stopped_error(&self) -> AppendError {
        self.stopped.error("the writer thread exited unexpectedly")
    }

    fn stop(&self, cause: StorageError) -> Arc<StorageError> {
        self.stopped.stop(cause)
    }
}

/// Why a store's writer stopped, once it has: every later append is
/// answered with that cause.
#[derive(Default)]
pub(crate) struct Stopped(Mutex<Option<Arc<StorageError>>>);

impl Stopped {
    /// Records `cause` (the last one wins) and returns it, shared.
    pub(crate) fn stop(&self, cause: StorageError) -> Arc<StorageError> {
        let cause = Arc::new(cause);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(cause.clone());
        cause
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The answer for an append after the stop; `exited` says what happened
    /// when the writer went away without recording a cause.
    pub(crate) fn error(&self, exited: &str) -> AppendError {
        let cause = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| Arc::new(StorageError::Engine(exited.into())));
        AppendError::WriterStopped { cause }
    }
}

/// Holds the writer paused until dropped; see `pause_writer` on the stores.
///
/// While paused, appends queue up (and get [`AppendError::Busy`] once the
/// queue is full) but nothing is written. Meant for tests of back-pressure
/// and for maintenance; a paused writer holds up every appender.
#[derive(Debug)]
pub struct WriterPause {
    _resume: mpsc::Sender<()>,
}

impl WriterPause {
    /// A guard and the receiver a writer blocks on until the guard is
    /// dropped (for writers that are not this module's).
    pub(crate) fn channel() -> (WriterPause, Receiver<()>) {
        let (resume_tx, resume) = mpsc::channel();
        (WriterPause { _resume: resume_tx }, resume)
    }
}

/// The writer thread's handle plus the state readers share with it.
pub(crate) struct Core<B> {
    shared: Arc<Shared<B>>,
    tx: SyncSender<Request>,
    done: oneshot::Receiver<()>,
}

impl<B: Backend> Core<B> {
    /// Starts the writer thread over `backend`, whose committed head is `head`.
    pub(crate) fn start(backend: B, head: Head, config: StoreConfig) -> std::io::Result<Core<B>> {
        let (durable, _) = watch::channel(head.position);
        let shared = Arc::new(Shared {
            backend,
            head: RwLock::new(head),
            durable,
            stopped: Stopped::default(),
            groups: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let (done_tx, done) = oneshot::channel();
        let writer = Writer {
            shared: shared.clone(),
            head,
            streams: HashMap::new(),
        };
        // A dedicated thread rather than a tokio task: sled's apply and
        // flush block, and a blocked runtime worker would stall readers and
        // appenders on a small machine.
        std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || {
                writer.run(rx, &config);
                let _ = done_tx.send(());
            })?;
        Ok(Core { shared, tx, done })
    }

    pub(crate) fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// Groups committed since the store was opened.
    pub(crate) fn groups(&self) -> u64 {
        self.shared
            .groups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues the batch now and returns a future of the answer.
    pub(crate) fn append(
        &self,
        batch: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<Appended>, AppendError>> + Send + use<B> {
        let queued = self.queue_append(batch);
        let shared = self.shared.clone();
        async move {
            match queued? {
                None => Ok(Vec::new()),
                Some(rx) => rx.await.unwrap_or_else(|_| Err(shared.stopped_error())),
            }
        }
    }

    fn queue_append(&self, batch: Vec<NewRecord>) -> Result<Option<AppendAnswer>, AppendError> {
        if batch.is_empty() {
            return Ok(None);
        }
        for (index, record) in batch.iter().enumerate() {
            record
                .check()
                .map_err(|reason| AppendError::InvalidRecord { index, reason })?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append { batch, reply })?;
        Ok(Some(rx))
    }

    fn send(&self, request: Request) -> Result<(), AppendError> {
        if self.shared.stopped.is_stopped() {
            return Err(self.shared.stopped_error());
        }
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(AppendError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(self.shared.stopped_error()),
        }
    }

    pub(crate) fn restore(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Head, AppendError>> + Send + use<B> {
        let (reply, rx) = oneshot::channel();
        let queued = if records.is_empty() {
            Ok(None)
        } else {
            self.send(Request::Restore { records, reply })
                .map(|()| Some(rx))
        };
        let shared = self.shared.clone();
        async move {
            match queued? {
                None => Ok(*shared.head.read().unwrap_or_else(PoisonError::into_inner)),
                Some(rx) => rx.await.unwrap_or_else(|_| Err(shared.stopped_error())),
            }
        }
    }

    pub(crate) fn pause(
        &self,
    ) -> impl Future<Output = Result<WriterPause, AppendError>> + Send + use<B> {
        let (ack, acked) = oneshot::channel();
        let (resume_tx, resume) = mpsc::channel();
        let queued = self.send(Request::Pause { ack, resume });
        let shared = self.shared.clone();
        async move {
            queued?;
            acked.await.map_err(|_| shared.stopped_error())?;
            Ok(WriterPause { _resume: resume_tx })
        }
    }

    pub(crate) fn head(&self) -> Head {
        *self
            .shared
            .head
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    pub(crate) fn durable_position(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    pub(crate) fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        // Capped at the durable head: a record applied but not yet flushed
        // must never be acted on, since a crash may still take it away.
        let to = self.durable_position();
        let from = from.max(1);
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        self.shared.backend.read_all(from, to, limit)
    }

    pub(crate) fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let to = self.durable_position();
        self.shared
            .backend
            .read_stream(stream, from_version.max(1), to, limit)
    }

    /// Stops the writer after the queued work and waits until it has let go
    /// of the backend.
    pub(crate) async fn close(self) {
        let Core { shared, tx, done } = self;
        drop(tx);
        drop(shared);
        let _ = done.await;
    }
}

struct Writer<B> {
    shared: Arc<Shared<B>>,
    head: Head,
    /// Committed versions of recently written streams. Only this thread
    /// writes, so the cache cannot go stale; it saves a storage lookup per
    /// stream per group for active streams, and is bounded by clearing it.
    streams: HashMap<String, u64>,
}

/// Streams kept in the writer's version cache before it is cleared.
const STREAM_CACHE_LIMIT: usize = 100_000;

/// Why staging a batch did not succeed.
pub(crate) enum StageError {
    Rejected(AppendError),
    Storage(StorageError),
}

impl From<StorageError> for StageError {
    fn from(e: StorageError) -> StageError {
        StageError::Storage(e)
    }
}

/// The records of one group, built on top of the committed state.
pub(crate) struct Stage {
    pub(crate) head: Head,
    pub(crate) records: Vec<Record>,
    /// Stored bytes of `records`, index for index.
    stored: Vec<Vec<u8>>,
    streams: HashMap<String, u64>,
    keys: HashMap<String, Appended>,
}

impl<B: Backend> Writer<B> {
    fn run(mut self, rx: Receiver<Request>, config: &StoreConfig) {
        let mut carried: Option<Request> = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match rx.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            let batch = match first {
                Request::Pause { ack, resume } => {
                    if ack.send(()).is_ok() {
                        // Returns when the pause guard is dropped.
                        let _ = resume.recv();
                    }
                    continue;
                }
                Request::Restore { records, reply } => {
                    let result = self.restore(records);
                    let stopped = matches!(result, Err(AppendError::WriterStopped { .. }));
                    let _ = reply.send(result);
                    if stopped {
                        return;
                    }
                    continue;
                }
                Request::Append { batch, reply } => (batch, reply),
            };
            let mut count = batch.0.len();
            let mut group = vec![batch];
            let deadline = Instant::now() + config.max_group_wait;
            while count < config.max_group_records {
                let next = match rx.try_recv() {
                    Ok(request) => request,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        match rx.recv_timeout(deadline - now) {
                            Ok(request) => request,
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                };
                match next {
                    Request::Append { batch, reply } => {
                        count += batch.len();
                        group.push((batch, reply));
                    }
                    other => {
                        carried = Some(other);
                        break;
                    }
                }
            }
            if !self.commit_group(group) {
                // Queued requests are dropped with `rx`; their callers see
                // the closed reply channel and report the stored cause.
                return;
            }
        }
    }

    /// Stages, writes and flushes one group, then answers its waiters.
    /// Returns false when the writer must stop.
    fn commit_group(&mut self, group: Vec<(Vec<NewRecord>, AppendReply)>) -> bool {
        let now_ms = now_ms();
        let mut stage = Stage::new(self.head);
        let mut answers = Vec::with_capacity(group.len());
        let mut failure = None;
        let mut pending = group.into_iter();
        for (batch, reply) in pending.by_ref() {
            match stage.add_batch(&self.shared.backend, &self.streams, &batch, now_ms) {
                Ok(appended) => answers.push((reply, Ok(appended))),
                Err(StageError::Rejected(e)) => answers.push((reply, Err(e))),
                Err(StageError::Storage(e)) => {
                    failure = Some(e);
                    answers.push((reply, Ok(Vec::new())));
                    break;
                }
            }
        }
        if failure.is_none() && !stage.records.is_empty() {
            let records = std::mem::take(&mut stage.records);
            let stored = std::mem::take(&mut stage.stored);
            match self.shared.backend.commit(records, stored) {
                Ok(()) => {
                    self.shared
                        .groups
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            let cause = self.shared.stop(e);
            let stopped = || AppendError::WriterStopped {
                cause: cause.clone(),
            };
            for (reply, answer) in answers {
                // A rejected batch would not have been written either way,
                // so its answer stands; everyone else learns of the failure.
                let _ = reply.send(answer.and_then(|_| Err(stopped())));
            }
            for (_, reply) in pending {
                let _ = reply.send(Err(stopped()));
            }
            return false;
        }
        self.publish(stage.head);
        self.remember_streams(stage.streams);
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        true
    }

    fn restore(&mut self, records: Vec<Record>) -> Result<Head, AppendError> {
        let mut head = self.head;
        for record in &records {
            if record.position != head.position + 1 || record.prev_hash != head.hash {
                return Err(AppendError::NotAtHead {
                    expected: head.position + 1,
                    found: record.position,
                });
            }
            head = Head {
                position: record.position,
                hash: record.hash,
            };
        }
        let streams = records
            .iter()
            .map(|r| (r.stream.clone(), r.stream_version))
            .collect();
        let stored = records.iter().map(Record::stored_bytes).collect();
        if let Err(e) = self.shared.backend.commit(records, stored) {
            return Err(AppendError::WriterStopped {
                cause: self.shared.stop(e),
            });
        }
        self.publish(head);
        self.remember_streams(streams);
        Ok(head)
    }

    fn remember_streams(&mut self, committed: HashMap<String, u64>) {
        if self.streams.len() + committed.len() > STREAM_CACHE_LIMIT {
            self.streams.clear();
        }
        self.streams.extend(committed);
    }

    fn publish(&mut self, head: Head) {
        if head == self.head {
            return;
        }
        self.head = head;
        *self
            .shared
            .head
            .write()
            .unwrap_or_else(PoisonError::into_inner) = head;
        self.shared.durable.send_replace(head.position);
    }
}

impl Stage {
    /// An empty group on top of `head`.
    pub(crate) fn new(head: Head) -> Stage {
        Stage {
            head,
            records: Vec::new(),
            stored: Vec::new(),
            streams: HashMap::new(),
            keys: HashMap::new(),
        }
    }

    /// Adds one caller's batch to the group, all or nothing.
    pub(crate) fn add_batch<B: Committed>(
        &mut self,
        backend: &B,
        cache: &HashMap<String, u64>,
        batch: &[NewRecord],
        now_ms: u64,
    ) -> Result<Vec<Appended>, StageError> {
        // Tentative state of this batch only, merged once the whole batch
        // has passed, so a conflict leaves the group as it was.
        let mut streams: HashMap<&str, u64> = HashMap::new();
        let mut keys: HashMap<&str, Appended> = HashMap::new();
        let mut records = Vec::with_capacity(batch.len());
        let mut stored = Vec::with_capacity(batch.len());
        let mut head = self.head;
        let mut out = Vec::with_capacity(batch.len());
        for (index, new) in batch.iter().enumerate() {
            if let Some(key) = &new.idempotency_key {
                let known = match keys.get(key.as_str()).or_else(|| self.keys.get(key)) {
                    Some(appended) => Some(*appended),
                    None => backend.idempotent(key)?,
                };
                if let Some(original) = known {
                    out.push(Appended {
                        duplicate: true,
                        ..original
                    });
                    continue;
                }
            }
            let current = match streams.get(new.stream.as_str()) {
                Some(version) => *version,
                None => match self
                    .streams
                    .get(&new.stream)
                    .or_else(|| cache.get(&new.stream))
                {
                    Some(version) => *version,
                    None => {
                        // Committed state, so safe to cache for the group.
                        let version = backend.stream_version(&new.stream)?;
                        self.streams.insert(new.stream.clone(), version);
                        version
                    }
                },
            };
            if !new.expected.accepts(current) {
                return Err(StageError::Rejected(AppendError::Conflict {
                    index,
                    stream: new.stream.clone(),
                    expected: new.expected,
                    actual: current,
                }));
            }
            let mut record = Record {
                position: head.position + 1,
                stream: new.stream.clone(),
                stream_version: current + 1,
                event_id: Uuid::now_v7(),
                recorded_at_ms: now_ms,
                type_name: new.type_name.clone(),
                schema_version: new.schema_version,
                causation_id: new.causation_id,
                correlation_id: new.correlation_id,
                idempotency_key: new.idempotency_key.clone(),
                payload: new.payload.clone(),
                prev_hash: head.hash,
                hash: ChainHash::ZERO,
            };
            stored.push(record.seal());
            head = Head {
                position: record.position,
                hash: record.hash,
            };
            let appended = Appended {
                position: record.position,
                stream_version: record.stream_version,
                event_id: record.event_id,
                duplicate: false,
            };
            streams.insert(&new.stream, record.stream_version);
            if let Some(key) = &new.idempotency_key {
                keys.insert(key, appended);
            }
            records.push(record);
            out.push(appended);
        }
        for (stream, version) in streams {
            self.streams.insert(stream.to_owned(), version);
        }
        for (key, appended) in keys {
            self.keys.insert(key.to_owned(), appended);
        }
        self.records.append(&mut records);
        self.stored.append(&mut stored);
        self.head = head;
        Ok(out)
    }
}

fn now_ms() -> u64 {
    // A clock before 1970 is a broken host; record 0 rather than panic.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A backend whose commit fails on demand, to check that a failure stops
    /// the writer and reaches every waiter and later caller.
    #[derive(Default)]
    struct Failing {
        fail: AtomicBool,
    }

    impl Backend for Failing {
        fn stream_version(&self, _: &str) -> Result<u64, StorageError> {
            Ok(0)
        }
        fn idempotent(&self, _: &str) -> Result<Option<Appended>, StorageError> {
            Ok(None)
        }
        fn commit(&self, _: Vec<Record>, _: Vec<Vec<u8>>) -> Result<(), StorageError> {
            if self.fail.load(Ordering::SeqCst) {
                Err(StorageError::Engine("disk on fire".into()))
            } else {
                Ok(())
            }
        }
        fn read_all(&self, _: u64, _: u64, _: usize) -> Result<Vec<Record>, StorageError> {
            Ok(Vec::new())
        }
        fn read_stream(
            &self,
            _: &str,
            _: u64,
            _: u64,
            _: usize,
        ) -> Result<Vec<Record>, StorageError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn commit_failure_stops_the_writer_for_everyone() {
        let core = Core::start(Failing::default(), Head::EMPTY, StoreConfig::default()).unwrap();
        let ok = core.append(vec![NewRecord::new("s", "T", 1, "1")]).await;
        assert_eq!(ok.unwrap()[0].position, 1);

        core.backend().fail.store(true, Ordering::SeqCst);
        let pause = core.pause().await.unwrap();
        // Both land in the same group because the writer is paused.
        let a = core.append(vec![NewRecord::new("s", "T", 1, "2")]);
        let b = core.append(vec![NewRecord::new("t", "T", 1, "3")]);
        drop(pause);
        for answer in [a.await, b.await] {
            match answer {
                Err(AppendError::WriterStopped { cause }) => {
                    assert!(cause.to_string().contains("disk on fire"));
                }
                other => panic!("expected WriterStopped, got {other:?}"),
            }
        }
        // Later callers get the same typed error, and nothing is retried.
        core.backend().fail.store(false, Ordering::SeqCst);
        let later = core.append(vec![NewRecord::new("s", "T", 1, "4")]).await;
        assert!(matches!(later, Err(AppendError::WriterStopped { .. })));
        assert_eq!(core.head().position, 1);
    }
}
