//! Projection snapshots: the folded state at a log position, kept on disk
//! so that a start folds only the records after it.
//!
//! One file, `<data_dir>/snapshots/projections.snapshot`, replaced whole
//! (written beside it, synced, renamed, the directory synced), so a crash
//! leaves the old snapshot or the new one. It holds:
//!
//! ```text
//! [8]  magic "BATONSN1"
//! u32  header length (big-endian), then the header: JSON
//!      {format, fold, config, position, hash, body_sha256, threads, written_at_ms}
//! ...  body: the state's facts (`State::encode_facts`): four sections,
//!      each a u64 length and its bytes: the small indexes as JSON, then
//!      the threads, the dedupe index and the retention queue in a compact
//!      binary encoding (`projections::codec`)
//! ```
//!
//! A snapshot is loaded only when everything agrees; otherwise the start
//! folds the whole log, as it would without one, and says why:
//! - the format and the fold are this build's: `fold` is the digest of
//!   the source of everything the fold runs ([`fold_digest`]), so a build
//!   whose fold changed in any way folds the whole log once instead of
//!   trusting a snapshot an older fold wrote;
//! - `config` is the digest of the configured pages the fold starts from;
//! - the body's SHA-256 is `body_sha256` (a torn or changed file);
//! - the log holds `position`, and the record there has the chain hash
//!   `hash`: a snapshot of another log, or of a log since cut back (a
//!   restored backup), is never loaded;
//! - the content left out of the body (open sends' messages, pending
//!   requests' metadata, tokens' opt-in payloads) is read again from the
//!   log through the vault, and what it folds to must match the body.
//!
//! Snapshots hold facts only: personal content is never written to them
//! (`docs/privacy.md`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_log::{ChainHash, EventStore, FileStamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, StoreSetting};
use crate::projections::{Facts, Projections, State};
use crate::shutdown::Shutdown;
use crate::Baton;

/// The snapshot file's name in its directory.
pub const FILE: &str = "projections.snapshot";
const MAGIC: &[u8; 8] = b"BATONSN1";
const FORMAT: u32 = 1;

/// The source of everything a fold runs: the projections and their
/// snapshot encoding, the decoding of records, and the whole domain crate
/// (the ledger, the pages, the events, the rules the fold asks, the ids).
/// A test lists the domain's files, so a new one cannot be left out. Any
/// change to it, even a comment, makes
/// a snapshot written by another build unusable (one whole fold), which
/// is cheaper than a fold that silently differs from the log's.
const FOLD_SOURCES: &[&str] = &[
    include_str!("projections.rs"),
    include_str!("projections/codec.rs"),
    include_str!("record.rs"),
    include_str!("snapshot.rs"),
    include_str!("../../domain/src/commands.rs"),
    include_str!("../../domain/src/events.rs"),
    include_str!("../../domain/src/explain.rs"),
    include_str!("../../domain/src/graph.rs"),
    include_str!("../../domain/src/ids.rs"),
    include_str!("../../domain/src/ledger.rs"),
    include_str!("../../domain/src/lib.rs"),
    include_str!("../../domain/src/page.rs"),
    include_str!("../../domain/src/policy.rs"),
    include_str!("../../domain/src/privacy.rs"),
    include_str!("../../domain/src/rejection.rs"),
    include_str!("../../domain/src/rules.rs"),
];

/// The digest of the fold's source (`FOLD_SOURCES`, hex), which a snapshot must have been
/// written by.
pub fn fold_digest() -> &'static str {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIGEST.get_or_init(|| {
        let mut h = Sha256::new();
        for source in FOLD_SOURCES {
            h.update((source.len() as u64).to_be_bytes());
            h.update(source.as_bytes());
        }
        hex::encode(h.finalize())
    })
}

/// What a snapshot's header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The [`fold_digest`] of the build that wrote it.
    pub fold: String,
    /// SHA-256 of the configured pages the fold starts from (hex).
    pub config: String,
    /// The last log position folded in.
    pub position: u64,
    /// The chain hash of the record at `position` (hex; zeros at 0).
    pub hash: String,
    pub body_sha256: String,
    pub threads: u64,
    pub written_at_ms: u64,
}

/// A snapshot written.
#[derive(Debug, Clone)]
pub struct Written {
    pub position: u64,
    pub bytes: u64,
    pub threads: u64,
}

/// Why a snapshot was not loaded (the start then folds the whole log).
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a snapshot file, or cut short")]
    Malformed,
    #[error("written by another build's fold (format {format}, fold {fold})")]
    OtherFold { format: u32, fold: String },
    #[error("written for other pages (the configuration changed)")]
    OtherConfig,
    #[error("its body does not match its checksum")]
    Corrupt,
    #[error("the log does not hold its position {position} (head {head})")]
    BeyondHead { position: u64, head: u64 },
    #[error("the log's record at {position} has another hash: the snapshot is of another log")]
    OtherLog { position: u64 },
    #[error("its body cannot be decoded: {0}")]
    Undecodable(String),
    #[error("its facts do not match the log: {0}")]
    Restore(#[from] crate::projections::RestoreError),
    #[error("the log cannot be read: {0}")]
    Storage(#[from] event_log::StorageError),
}

/// The snapshot file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The digest of the pages a fold starts from (`State::new`'s), which a
/// snapshot must have been folded from.
pub fn config_digest(fresh: &State) -> String {
    let mut pages: Vec<_> = fresh.pages.values().collect();
    pages.sort_by(|a, b| a.id.cmp(&b.id));
    let json = serde_json::to_vec(&pages).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// Writes `state` as the snapshot in `dir`, replacing the one there once
/// the new one is durable. `hash` is the chain hash of the record at
/// `state.position`.
pub fn write(
    dir: &Path,
    state: &State,
    hash: ChainHash,
    config: &str,
    now_ms: u64,
) -> std::io::Result<Written> {
    let threads = state.thread_count() as u64;
    let body = state.encode_facts().map_err(std::io::Error::other)?;
    let header = Header {
        format: FORMAT,
        fold: fold_digest().to_owned(),
        config: config.to_owned(),
        position: state.position,
        hash: hash.to_hex(),
        body_sha256: hex::encode(Sha256::digest(&body)),
        threads,
        written_at_ms: now_ms,
    };
    let header = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    file.write_all(MAGIC)?;
    file.write_all(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    )?;
    file.write_all(&header)?;
    file.write_all(&body)?;
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path(dir))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(Written {
        position: state.position,
        bytes: (MAGIC.len() + 4 + header.len() + body.len()) as u64,
        threads,
    })
}

/// A snapshot's header, without reading its body (for `baton` status and
/// the tests).
pub fn header(dir: &Path) -> Result<Option<Header>, Unusable> {
    use std::io::Read;
    let read_err = |source| Unusable::Read {
        path: path(dir),
        source,
    };
    let mut file = match std::fs::File::open(path(dir)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut start = [0u8; MAGIC.len() + 4];
    file.read_exact(&mut start)
        .map_err(|_| Unusable::Malformed)?;
    let len = u32::from_be_bytes([start[8], start[9], start[10], start[11]]) as usize;
    let mut head = start.to_vec();
    head.resize(start.len() + len, 0);
    file.read_exact(&mut head[start.len()..])
        .map_err(|_| Unusable::Malformed)?;
    split(&head).map(|(h, _)| Some(h))
}

fn split(bytes: &[u8]) -> Result<(Header, &[u8]), Unusable> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(Unusable::Malformed)?;
    let len = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or(Unusable::Malformed)? as usize;
    let header = rest.get(4..4 + len).ok_or(Unusable::Malformed)?;
    let header: Header = serde_json::from_slice(header).map_err(|_| Unusable::Malformed)?;
    Ok((header, &rest[4 + len..]))
}

/// Moves an unusable snapshot aside (`projections.snapshot.rejected`,
/// replacing an older one), so the next one written takes its place and
/// an operator can still look at it.
pub fn set_aside(dir: &Path) -> std::io::Result<()> {
    std::fs::rename(path(dir), dir.join(format!("{FILE}.rejected")))
}

/// The state of the snapshot in `dir`, checked against `fresh` (the state
/// a fold of this configuration starts from) and against `store`'s chain,
/// and made whole from the log. `Ok(None)` when there is none. The file is
/// read, checked and decoded on a blocking thread.
pub async fn load<S: EventStore>(
    dir: &Path,
    fresh: &State,
    store: &S,
) -> Result<Option<State>, Unusable> {
    load_read(dir, fresh, store, None).await
}

/// A snapshot being read, and checked for all that needs no log, on a
/// thread of its own, started before the store is opened (see
/// [`start_reading`]): the two then take their time side by side.
pub struct Reading {
    dir: PathBuf,
    config: String,
    thread: std::thread::JoinHandle<(Option<FileStamp>, Duration, Checked)>,
}

/// What [`read_checked`] answers.
type Checked = Result<Option<(Header, Facts)>, Unusable>;

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("dir", &self.dir)
            .field("finished", &self.thread.is_finished())
            .finish_non_exhaustive()
    }
}

/// Starts reading the snapshot a node of `config` keeps on sled, before
/// its store is open. Nothing is changed: [`load_read`] checks what it read
/// against the store's chain once the store is open, and reads the file
/// again then (under the store's lock) if it changed meanwhile or the early
/// read could not use it. `None` when the configuration keeps no snapshot,
/// or no thread could start.
pub fn start_reading(config: &Config) -> Option<Reading> {
    if !matches!(config.store, StoreSetting::Sled) {
        return None;
    }
    read_in_background(
        config.data_dir.join("snapshots"),
        config_digest(&fresh_state(config)),
    )
}

/// The state a fold of `config` starts from: its pages, no thread.
pub fn fresh_state(config: &Config) -> State {
    State::new(config.pages.values().map(|(_, p)| p.clone()))
}

/// Starts reading the snapshot in `dir`, expected of the configuration
/// whose digest is `digest`.
fn read_in_background(dir: PathBuf, digest: String) -> Option<Reading> {
    let (file, expected) = (path(&dir), digest.clone());
    let thread = std::thread::Builder::new()
        .name("baton-snapshot-read".into())
        .spawn(move || {
            let before = FileStamp::at(&file);
            let started = Instant::now();
            let read = read_checked(&file, &expected);
            (before, started.elapsed(), read)
        })
        .ok()?;
    Some(Reading {
        dir,
        config: digest,
        thread,
    })
}

/// [`load`], with what `reading` read when it read the same snapshot, for
/// the same configuration, from a file that has not changed since, and
/// found it usable; otherwise the file is read now.
pub async fn load_read<S: EventStore>(
    dir: &Path,
    fresh: &State,
    store: &S,
    reading: Option<Reading>,
) -> Result<Option<State>, Unusable> {
    let started = Instant::now();
    let config = config_digest(fresh);
    let file = path(dir);
    let early = match reading.filter(|r| r.dir == dir && r.config == config) {
        Some(reading) => {
            let thread = reading.thread;
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok((before, took, Ok(Some(found)))))
                    if before.is_some() && before == FileStamp::at(&file) =>
                {
                    Some((found, took))
                }
                _ => None,
            }
        }
        None => None,
    };
    let (read, read_took) = match early {
        Some((found, took)) => (Some(found), took),
        None => {
            let reading = Instant::now();
            let read = tokio::task::spawn_blocking(move || read_checked(&file, &config))
                .await
                .map_err(|e| Unusable::Undecodable(format!("the reader stopped: {e}")))??;
            (read, reading.elapsed())
        }
    };
    let Some((header, facts)) = read else {
        return Ok(None);
    };
    let head = store.head().await?;
    if header.position > head.position {
        return Err(Unusable::BeyondHead {
            position: header.position,
            head: head.position,
        });
    }
    if header.position > 0 {
        let at = store.read_all(header.position, 1).await?;
        let matches = at
            .first()
            .is_some_and(|r| r.position == header.position && r.hash.to_hex() == header.hash);
        if !matches {
            return Err(Unusable::OtherLog {
                position: header.position,
            });
        }
    }
    let state = facts.restore(store).await?;
    tracing::info!(
        position = header.position,
        threads = header.threads,
        read_ms = read_took.as_millis() as u64,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "projections loaded from a snapshot"
    );
    Ok(Some(state))
}

/// Reads the snapshot at `file` and checks what needs no log: its format,
/// its fold, its configuration and its checksum; then decodes its body.
fn read_checked(file: &Path, config: &str) -> Result<Option<(Header, Facts)>, Unusable> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Unusable::Read {
                path: file.to_owned(),
                source,
            })
        }
    };
    let (header, body) = split(&bytes)?;
    if header.format != FORMAT || header.fold != fold_digest() {
        return Err(Unusable::OtherFold {
            format: header.format,
            fold: header.fold,
        });
    }
    if header.config != config {
        return Err(Unusable::OtherConfig);
    }
    // The body is decoded while its checksum is computed (the decoder
    // takes any bytes: it refuses, it does not trust); a body that does not
    // match is refused as corrupt whatever the decoder made of it.
    let (sum, facts) = std::thread::scope(|scope| {
        let sum = scope.spawn(|| hex::encode(Sha256::digest(body)));
        let facts = Facts::decode(body);
        (sum.join(), facts)
    });
    if sum.map_err(|_| Unusable::Undecodable("the checksum's thread panicked".to_owned()))?
        != header.body_sha256
    {
        return Err(Unusable::Corrupt);
    }
    let facts = facts.map_err(Unusable::Undecodable)?;
    if facts.position() != header.position {
        return Err(Unusable::Undecodable(
            "its body's position is not its header's".to_owned(),
        ));
    }
    Ok(Some((header, facts)))
}

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFailure {
    #[error("the log cannot be read")]
    Storage(#[from] event_log::StorageError),
    #[error("the snapshot cannot be written")]
    Write(#[from] std::io::Error),
    #[error("the projections moved while the snapshot was taken")]
    Moved,
    #[error("the snapshot writer stopped abnormally")]
    Join(#[from] tokio::task::JoinError),
    #[error("the background snapshot's thread could not start or stopped without an answer")]
    Thread,
}

/// One writer of the snapshot file at a time (the background snapshot and
/// the one at the stop may overlap).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The chain hash of the record at `position` (zeros at 0).
async fn hash_at<S: EventStore>(store: &S, position: u64) -> Result<ChainHash, SnapshotFailure> {
    if position == 0 {
        return Ok(ChainHash::ZERO);
    }
    let records = store.read_all(position, 1).await?;
    match records.first() {
        Some(r) if r.position == position => Ok(r.hash),
        _ => Err(SnapshotFailure::Moved),
    }
}

/// Where a node keeps its projection snapshot: `<data_dir>/snapshots` on
/// sled; none on PostgreSQL, where the log is shared and a node folds it
/// from the start, and none for a log that does not outlive the process
/// (in memory: tests and benchmarks, whose `data_dir` may be a placeholder).
pub fn dir_of(config: &Config, store: &impl EventStore) -> Option<PathBuf> {
    (matches!(config.store, StoreSetting::Sled) && store.local_files())
        .then(|| config.data_dir.join("snapshots"))
}

impl<S: EventStore + 'static> Baton<S> {
    /// Where this node keeps its projection snapshot ([`dir_of`]).
    pub fn snapshot_dir(&self) -> Option<PathBuf> {
        dir_of(&self.config, self.store.as_ref())
    }

    /// The state a fold of this configuration starts from.
    pub fn fresh_state(&self) -> State {
        fresh_state(&self.config)
    }

    /// Writes `projections` (which must not move meanwhile: stopped, or a
    /// private fold) as the snapshot, unless the one on disk is as new.
    async fn write_snapshot(
        &self,
        projections: Arc<Projections>,
    ) -> Result<Option<Written>, SnapshotFailure> {
        let Some(dir) = self.snapshot_dir() else {
            return Ok(None);
        };
        let position = projections.position();
        let hash = hash_at(self.store.as_ref(), position).await?;
        let config = config_digest(&self.fresh_state());
        let now = u64::try_from(self.clock.now().millis()).unwrap_or(0);
        let written_tx = self.snapshots.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
            // A snapshot on disk is one this process loaded or wrote (an
            // unusable one is set aside at the start): a newer one stays.
            if header(&dir)
                .ok()
                .flatten()
                .is_some_and(|h| h.position > position && h.config == config)
            {
                return Ok(None);
            }
            let state = projections.read();
            if state.position != position {
                return Err(SnapshotFailure::Moved);
            }
            let written = write(&dir, &state, hash, &config, now)?;
            drop(state);
            written_tx.send_replace(written.position);
            Ok(Some(written))
        })
        .await?
    }

    /// Follows the position of the last snapshot this process wrote (0:
    /// none yet).
    pub fn snapshot_written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.snapshots.subscribe()
    }

    /// Writes the live projections as the snapshot: at a stop, once the
    /// follower has folded everything.
    pub async fn snapshot_at_stop(&self) -> Result<Option<Written>, SnapshotFailure> {
        // Nothing folded since the snapshot this start loaded: it stands.
        let position = self.projections.position();
        if self.resumed_from_snapshot == Some(position) && *self.snapshots.borrow() <= position {
            return Ok(None);
        }
        self.write_snapshot(self.projections.clone()).await
    }

    /// Writes a snapshot without touching the live projections: the last
    /// snapshot (or nothing) is loaded into a private state, folded to the
    /// head and written. Nobody waits for it; it costs a second copy of the
    /// projections while it runs.
    pub async fn snapshot_in_background(&self) -> Result<Option<Written>, SnapshotFailure> {
        let Some(dir) = self.snapshot_dir() else {
            return Ok(None);
        };
        let fresh = self.fresh_state();
        let base = match load(&dir, &fresh, self.store.as_ref()).await {
            Ok(Some(state)) => state,
            Ok(None) => fresh,
            Err(e) => {
                tracing::warn!(reason = %e, "the last snapshot is not used; the background snapshot folds the whole log");
                fresh
            }
        };
        // To the head as it is now: under a steady load a fold that chased
        // the head could go on for as long as the load does.
        let head = self.store.head().await?.position;
        let shadow = Projections::new(base);
        shadow.catch_up_to(self.store.as_ref(), head).await?;
        self.write_snapshot(shadow).await
    }
}

/// Writes a snapshot in the background each time the projections have
/// folded `snapshot_every_records` more records than the last one holds.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    let every = baton.config.snapshot_every_records;
    let Some(dir) = baton.snapshot_dir().filter(|_| every > 0) else {
        return;
    };
    // From what the start loaded or folded: a start that folded the whole
    // log does not begin with a second whole fold in the background.
    let mut last = header(&dir)
        .ok()
        .flatten()
        .map_or(0, |h| h.position)
        .max(baton.projections.position());
    let mut folded = baton.projections.subscribe();
    loop {
        tokio::select! {
            biased;
            () = shutdown.recv() => return,
            changed = folded.changed() => if changed.is_err() { return },
        }
        let position = *folded.borrow_and_update();
        if position < last.saturating_add(every) {
            continue;
        }
        // Awaited even at a shutdown, which the thread hears between two
        // reads of its fold (or once a write under way is done): the
        // thread holds the store until it returns.
        match at_lowest_priority(baton.clone(), shutdown.clone()).await {
            Ok(Some(w)) => {
                last = w.position;
                tracing::info!(position = last, "projection snapshot written");
            }
            // A newer one was on disk already, or the shutdown came first.
            Ok(None) => last = position,
            Err(e) => {
                last = position;
                tracing::error!(error = %e, "cannot write a projection snapshot");
            }
        }
    }
}

/// A background snapshot on a thread of its own, at the lowest CPU priority
/// (on Linux, the `SCHED_IDLE` policy and `nice` 19: there a thread's own,
/// inherited by the threads it starts; elsewhere the thread keeps the
/// process's priority), given up at a shutdown. Its shadow fold and
/// encoding are seconds of CPU at a million threads; run on the server's
/// runtime at the default priority, they took that time from the webhooks
/// (the scale benchmark's slowest slice p99 2.5–2.8x its first with them,
/// 1.55x without) and held a runtime worker for the whole fold, whose reads
/// never yield. At `nice` 19 alone a webhook thread that woke could still
/// wait for the snapshot's thread to finish its time slice; a `SCHED_IDLE`
/// thread gives the core up as soon as another wakes. Under a load that
/// keeps every core busy the snapshot waits; the one written at the stop
/// does not depend on it.
async fn at_lowest_priority<S: EventStore + 'static>(
    baton: Arc<Baton<S>>,
    mut shutdown: Shutdown,
) -> Result<Option<Written>, SnapshotFailure> {
    on_lowest_priority_thread(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|_| SnapshotFailure::Thread)?;
        runtime.block_on(async {
            tokio::select! {
                biased;
                () = shutdown.recv() => Ok(None),
                written = baton.snapshot_in_background() => written,
            }
        })
    })
    .await
}

/// Runs `work` on a new thread that first lowers its own priority as far as
/// it goes, and answers what it returns.
async fn on_lowest_priority_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SnapshotFailure> + Send + 'static,
) -> Result<T, SnapshotFailure> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("baton-snapshot".to_owned())
        .spawn(move || {
            // Failing to lower it only costs the webhooks some CPU.
            #[cfg(target_os = "linux")]
            {
                use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
                let _ = thread_priority::set_thread_priority_and_policy(
                    thread_priority::thread_native_id(),
                    thread_priority::ThreadPriority::Min,
                    ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
                );
                // After the policy, which sets a niceness of its own.
                let _ = rustix::process::nice(19);
            }
            let _ = tx.send(work());
        })
        .map_err(|_| SnapshotFailure::Thread)?;
    rx.await.map_err(|_| SnapshotFailure::Thread)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AppId, AppKind, AppProfile, Management, Page, PageId, RoutingMode};
    use event_log::{MemoryStore, NewRecord};

    /// A background snapshot's work runs on a thread of its own at the
    /// lowest priority, leaving the caller's as it was; a thread that dies
    /// is an error, not a hang.
    #[tokio::test]
    async fn background_work_runs_at_the_lowest_priority_on_its_own_thread() {
        let priority = || {
            #[cfg(target_os = "linux")]
            return rustix::process::getpriority_process(None).unwrap();
            #[cfg(not(target_os = "linux"))]
            return 19;
        };
        let policy = || {
            #[cfg(target_os = "linux")]
            return format!("{:?}", thread_priority::thread_schedule_policy().unwrap());
            #[cfg(not(target_os = "linux"))]
            return "Normal(Idle)".to_owned();
        };
        let (before, policy_before) = (priority(), policy());
        let (inside, policy_inside, name) = on_lowest_priority_thread(move || {
            let name = std::thread::current().name().map(str::to_owned);
            Ok((priority(), policy(), name))
        })
        .await
        .unwrap();
        // The policy's call sets a niceness of 0 first (as far as it is
        // allowed); 19 after it.
        assert_eq!(inside, 19);
        assert_eq!(policy_inside, "Normal(Idle)");
        assert_eq!(name.as_deref(), Some("baton-snapshot"));
        assert_eq!((priority(), policy()), (before, policy_before));
        let died = on_lowest_priority_thread(|| -> Result<(), SnapshotFailure> {
            panic!("the snapshot thread dies")
        })
        .await;
        assert!(matches!(died, Err(SnapshotFailure::Thread)), "{died:?}");
        let failed = on_lowest_priority_thread(|| -> Result<(), SnapshotFailure> {
            Err(SnapshotFailure::Moved)
        })
        .await;
        assert!(matches!(failed, Err(SnapshotFailure::Moved)), "{failed:?}");
    }

    fn pages(app: &str) -> State {
        State::new([Page::new(
            PageId::parse("5550001").unwrap(),
            RoutingMode::ZeroConfig,
            [AppProfile::new(
                AppId::parse(app).unwrap(),
                AppKind::Bot,
                Management::Managed,
            )],
        )])
    }

    /// A store with `n` records (none the fold reads), and the state folded
    /// from it.
    async fn folded(n: usize) -> (MemoryStore, State) {
        let store = MemoryStore::new();
        for i in 0..n {
            let record = NewRecord::new(format!("other/{i}"), "Unknown", 1, b"{}".to_vec());
            store.append(vec![record]).await.unwrap();
        }
        let mut state = pages("1001");
        for r in store.read_all(1, n).await.unwrap() {
            state.apply_record(&r);
        }
        (store, state)
    }

    async fn written(n: usize) -> (tempfile::TempDir, MemoryStore, State) {
        let (store, state) = folded(n).await;
        let dir = tempfile::tempdir().unwrap();
        let hash = store.head().await.unwrap().hash;
        write(dir.path(), &state, hash, &config_digest(&pages("1001")), 1).unwrap();
        (dir, store, state)
    }

    #[test]
    fn the_fold_digest_covers_every_file_of_the_domain_and_the_codec() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["../domain/src", "src/projections"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    FOLD_SOURCES.contains(&text.as_str()),
                    "{} is not in FOLD_SOURCES",
                    path.display()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_snapshot_loads_back_to_the_state_it_was_written_from() {
        let (dir, store, state) = written(3).await;
        let loaded = load(dir.path(), &pages("1001"), &store).await.unwrap();
        assert_eq!(loaded, Some(state));
        let none = tempfile::tempdir().unwrap();
        assert!(load(none.path(), &pages("1001"), &store)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_snapshot_of_other_pages_is_not_loaded() {
        let (dir, store, _) = written(3).await;
        let other = load(dir.path(), &pages("1002"), &store).await;
        assert!(matches!(other, Err(Unusable::OtherConfig)), "{other:?}");
    }

    #[tokio::test]
    async fn a_snapshot_of_another_fold_is_not_loaded() {
        let (dir, store, _) = written(3).await;
        let path = path(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let older = "0".repeat(fold_digest().len());
        let text = String::from_utf8_lossy(&bytes).replacen(fold_digest(), &older, 1);
        std::fs::write(&path, text.as_bytes()).unwrap();
        let other = load(dir.path(), &pages("1001"), &store).await;
        assert!(
            matches!(&other, Err(Unusable::OtherFold { fold, .. }) if *fold == older),
            "{other:?}"
        );
    }

    #[tokio::test]
    async fn a_snapshot_of_a_longer_or_another_log_is_not_loaded() {
        let (dir, _, _) = written(3).await;
        let (shorter, _) = folded(2).await;
        let beyond = load(dir.path(), &pages("1001"), &shorter).await;
        assert!(
            matches!(
                beyond,
                Err(Unusable::BeyondHead {
                    position: 3,
                    head: 2
                })
            ),
            "{beyond:?}"
        );
        // Same length, other records: the hash at the position differs.
        let other = MemoryStore::new();
        for i in 0..3 {
            let record = NewRecord::new(format!("else/{i}"), "Unknown", 1, b"{}".to_vec());
            other.append(vec![record]).await.unwrap();
        }
        let another = load(dir.path(), &pages("1001"), &other).await;
        assert!(
            matches!(another, Err(Unusable::OtherLog { position: 3 })),
            "{another:?}"
        );
    }

    #[tokio::test]
    async fn a_torn_or_foreign_file_is_not_loaded() {
        let (dir, store, _) = written(3).await;
        let path = path(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for (len, what) in [
            (bytes.len() - 1, "torn body"),
            (20, "torn header"),
            (4, "torn magic"),
        ] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            let torn = load(dir.path(), &pages("1001"), &store).await;
            assert!(
                matches!(torn, Err(Unusable::Corrupt | Unusable::Malformed)),
                "{what}: {torn:?}"
            );
        }
        // One byte of the body changed: refused by its checksum, whatever
        // the decoder (which runs beside the checksum) made of it.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let altered = load(dir.path(), &pages("1001"), &store).await;
        assert!(matches!(altered, Err(Unusable::Corrupt)), "{altered:?}");
        // Or changed where it still decodes (the page's id in the body).
        let at = bytes.windows(7).rposition(|w| w == b"5550001").unwrap();
        let mut other_page = bytes.clone();
        other_page[at + 6] = b'2';
        std::fs::write(&path, &other_page).unwrap();
        let (_, body) = split(&other_page).unwrap();
        assert!(Facts::decode(body).is_ok(), "the change still decodes");
        let altered = load(dir.path(), &pages("1001"), &store).await;
        assert!(matches!(altered, Err(Unusable::Corrupt)), "{altered:?}");
        std::fs::write(&path, b"{\"not\":\"a snapshot\"}").unwrap();
        let foreign = load(dir.path(), &pages("1001"), &store).await;
        assert!(matches!(foreign, Err(Unusable::Malformed)), "{foreign:?}");
        set_aside(dir.path()).unwrap();
        assert!(!path.exists());
        assert!(dir.path().join(format!("{FILE}.rejected")).exists());
    }

    /// A snapshot read before the store was open is what the load uses, if
    /// the file has not changed since, still checked against the store's
    /// chain; a file replaced since, or one the early read could not use
    /// (none, or unusable), is read again; a read for another configuration
    /// or directory is not used.
    #[tokio::test]
    async fn a_snapshot_read_before_the_store_opened_is_used_and_still_checked() {
        let (dir, store, state) = written(3).await;
        let file = path(dir.path());
        let digest = config_digest(&pages("1001"));
        let good = std::fs::read(&file).unwrap();
        let finished =
            |reading: &Option<Reading>| reading.as_ref().is_none_or(|r| r.thread.is_finished());
        let reading = read_in_background(dir.path().to_owned(), digest.clone());
        while !finished(&reading) {
            tokio::task::yield_now().await;
        }
        // The same file (identity, length and time kept) with other bytes:
        // only what was read can load.
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, vec![b'x'; good.len()]).unwrap();
        let f = std::fs::File::options().write(true).open(&file).unwrap();
        f.set_modified(modified).unwrap();
        drop(f);
        let loaded = load_read(dir.path(), &pages("1001"), &store, reading).await;
        assert_eq!(loaded.unwrap(), Some(state.clone()));
        // Read while good, then replaced by a damaged one: read again, and
        // refused.
        let tmp = dir.path().join("replacement");
        std::fs::write(&tmp, &good).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let reading = read_in_background(dir.path().to_owned(), digest.clone());
        while !finished(&reading) {
            tokio::task::yield_now().await;
        }
        std::fs::write(&tmp, &good[..good.len() - 1]).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let torn = load_read(dir.path(), &pages("1001"), &store, reading).await;
        assert!(matches!(torn, Err(Unusable::Corrupt)), "{torn:?}");
        // Read while unusable, then replaced by a good one: read again.
        let reading = read_in_background(dir.path().to_owned(), digest.clone());
        while !finished(&reading) {
            tokio::task::yield_now().await;
        }
        std::fs::write(&tmp, &good).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let loaded = load_read(dir.path(), &pages("1001"), &store, reading).await;
        assert_eq!(loaded.unwrap(), Some(state.clone()));
        // Read while there was none, then written: read again.
        std::fs::remove_file(&file).unwrap();
        let reading = read_in_background(dir.path().to_owned(), digest.clone());
        while !finished(&reading) {
            tokio::task::yield_now().await;
        }
        std::fs::write(&file, &good).unwrap();
        let loaded = load_read(dir.path(), &pages("1001"), &store, reading).await;
        assert_eq!(loaded.unwrap(), Some(state.clone()));
        // Read ahead, but the log turned out shorter: refused all the same.
        let (shorter, _) = folded(2).await;
        let reading = read_in_background(dir.path().to_owned(), digest.clone());
        let beyond = load_read(dir.path(), &pages("1001"), &shorter, reading).await;
        assert!(
            matches!(beyond, Err(Unusable::BeyondHead { .. })),
            "{beyond:?}"
        );
        // Read for other pages, or from another directory: not used.
        let other_pages = read_in_background(dir.path().to_owned(), config_digest(&pages("1002")));
        let loaded = load_read(dir.path(), &pages("1001"), &store, other_pages).await;
        assert_eq!(loaded.unwrap(), Some(state.clone()));
        let elsewhere = tempfile::tempdir().unwrap();
        let empty = read_in_background(elsewhere.path().to_owned(), digest);
        let loaded = load_read(dir.path(), &pages("1001"), &store, empty).await;
        assert_eq!(loaded.unwrap(), Some(state));
    }
}
