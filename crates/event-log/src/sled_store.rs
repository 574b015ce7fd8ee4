//! The sled backend: records in Baton's own segment files (`segments`), one
//! write and one `fdatasync` per group; sled holds the indexes, written with
//! plain inserts after the group is durable and flushed about once a second
//! (not per group). It does not decide positions or hashes
//! (the writer does) and does not verify the chain (the verifier does).
//!
//! Keys (integers big-endian, so byte order is numeric order):
//!
//! | key                                      | value                                       |
//! |------------------------------------------|---------------------------------------------|
//! | `p` first position:u64                   | chunk place: segment:u64 offset:u64 len:u32 [plain len:u32, if compressed] |
//! | `g`                                      | indexed up to: segment:u64 end:u64 position:u64 hash:32 |
//! | `c` first position:u64                   | chunk: (len:u32 ‖ canonical bytes ‖ hash)…  |
//! | `v` stream digest:16 first version:u64   | run: position:u64…                          |
//! | `d` idempotency key digest:16            | position:u64                                |
//! | `r:layout`                               | `digest-keys`, or `digest-keys+zstd` once compressed groups may be in the segments |
//!
//! Converted at the first open (directories written before 2026-12-02):
//!
//! | key                                      | value                                       |
//! |------------------------------------------|---------------------------------------------|
//! | `t` len:u32 stream first version:u64     | run: position:u64…                          |
//! | `i` idempotency key                      | position:u64 version:u64 event_id:16        |
//!
//! A group's records are split into *chunks* of consecutive positions (at
//! most `segments::CHUNK_BYTES`, one key each) and a stream's records in one group
//! into one *run* of positions (one key per stream per group): a sled insert
//! costs microseconds, and one key per record was most of the writer's time.
//! A chunk is a block of a group's body in a segment (`p` keys),
//! zstd-compressed where that pays (see `segments`). Logs
//! written before the segments (2026-12) kept the chunks' bytes in sled
//! (`c` keys); they are read where they are, and new records go to segments.
//!
//! Streams and idempotency keys are named in the indexes by a digest (the
//! first 16 bytes of their SHA-256), so every such key has the same small
//! size and lands at a random place in the tree whatever the names look
//! like: with the names themselves, sled's files grew to three times the
//! size for senders whose ids arrive in order (as a page's new senders'
//! do) than for the same number in random order. A read checks the record
//! it finds against the name it asked for (a stream's records must be that
//! stream's, a duplicate must carry the same key). Directories written
//! before (2026-12-02) indexed them by name (`t` and `i` keys); the first
//! open converts those entries (see `convert_name_keys`) and writes the
//! layout key (`LAYOUT`), which releases before it refuse.
//!
//! The indexes are derived: the `g` key is set at each checkpoint, after
//! sled's flush and sync made every entry before it durable, and the groups
//! after the one it names are read back from the segments and indexed again
//! at open (a torn, never-acknowledged group at the end is cut
//! off). The head is not stored: it is the last record of the last group,
//! so it cannot disagree with the records. A small cache of the most
//! recently committed records serves readers that follow the head (the usual
//! case) without touching sled or the files.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use crate::error::{corrupt, AppendError, OpenError, StorageError};
use crate::record::{Appended, ChainHash, Head, Record};
use crate::segments::{Place, Segments};
use crate::store::StoreConfig;
use crate::writer::{Backend, Core, WriterPause};

const TREE: &[u8] = b"baton-event-log";

const CHUNK: u8 = b'c';
const PLACE: u8 = b'p';
/// The one key saying how far the segments are indexed.
const INDEXED: &[u8] = b"g";
const RUN: u8 = b'v';
const KEY: u8 = b'd';
/// The stream runs and idempotency keys of logs written before the
/// digests, converted at open.
const LEGACY_RUN: u8 = b't';
const LEGACY_KEY: u8 = b'i';
/// Says the indexes are digest-keyed; any other value is refused (a newer
/// layout). It begins with `r` because the releases before the digests,
/// from the chunk layout on, refuse a tree holding an `r` key (the record
/// keys of the first layout): an older binary must not open a directory
/// whose streams it would not find. (The very first release, before that
/// check, would take the directory for an empty log.)
const LAYOUT: &[u8] = b"r:layout";
const DIGEST_KEYS: &[u8] = b"digest-keys";
/// Says the segments may hold compressed groups ("BSG2"), which releases
/// before 2026-12-03 would take for a torn write and cut off: they refuse
/// this value. Written, and made durable, at the first open that
/// compresses, before any such group is written; never taken back.
const COMPRESSED_GROUPS: &[u8] = b"digest-keys+zstd";

/// How often the writer flushes sled's indexes and makes them durable. A
/// crash loses at most what was indexed since, which the next open reads
/// back from the segments.
const INDEX_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Positions per stream run (8 bytes each); a longer run is split. Part of
/// the format (see `index_group`).
const RUN_POSITIONS: usize = 512;

/// Recently committed records kept in memory for readers, by count and by
/// total payload size, whichever is reached first.
const RECENT_RECORDS: usize = 8192;
const RECENT_BYTES: usize = 16 * 1024 * 1024;

fn chunk_key(position: u64) -> [u8; 9] {
    let mut key = [CHUNK; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

fn place_key(position: u64) -> [u8; 9] {
    let mut key = [PLACE; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// The fixed-size name of a stream or an idempotency key in the indexes:
/// the first 16 bytes of its SHA-256.
fn digest(text: &str) -> [u8; 16] {
    let full = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
    full[..16].try_into().expect("16 of 32 bytes")
}

/// The prefix of a stream's run keys; a run key adds the run's first
/// version.
fn stream_prefix(stream: &str) -> [u8; 17] {
    let mut key = [RUN; 17];
    key[1..].copy_from_slice(&digest(stream));
    key
}

fn run_key(prefix: &[u8; 17], version: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(prefix);
    key[17..].copy_from_slice(&version.to_be_bytes());
    key
}

fn idempotency_key(text: &str) -> [u8; 17] {
    let mut key = [KEY; 17];
    key[1..].copy_from_slice(&digest(text));
    key
}

/// Whether sled could not open a directory because its lock is held. sled
/// reports that only as an I/O error with this message (sled 0.34, pinned
/// by the workspace); the lock test pins the behaviour.
fn locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn be_u64(bytes: &[u8], location: &str) -> Result<u64, StorageError> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(location, "value too short", None))
}

/// Walks the records framed in a chunk value, yielding each one's position
/// (the chunk's first position plus its index) and stored bytes.
struct Frames<'a> {
    position: u64,
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    fn new(first: u64, chunk: &'a [u8]) -> Frames<'a> {
        Frames {
            position: first,
            rest: chunk,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<(u64, &'a [u8]), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let position = self.position;
        let frame = self
            .rest
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|len| u32::from_be_bytes(len) as usize)
            .and_then(|len| Some((len, self.rest.get(4..4 + len)?)));
        let Some((len, bytes)) = frame else {
            self.rest = &[];
            return Some(Err(corrupt(
                format!("record at position {position}"),
                "truncated chunk",
                Some(position),
            )));
        };
        self.rest = &self.rest[4 + len..];
        self.position += 1;
        Some(Ok((position, bytes)))
    }
}

/// The most recently committed records, contiguous, ending at the last
/// commit. Only `commit` adds to it (after the sync), so everything in it
/// is durable; readers still cap what they return at the durable head.
struct Recent {
    /// Position of `records[0]`; the next position when empty.
    first: u64,
    records: VecDeque<Record>,
    bytes: usize,
}

impl Recent {
    fn get(&self, position: u64) -> Option<&Record> {
        let index = usize::try_from(position.checked_sub(self.first)?).ok()?;
        self.records.get(index)
    }

    fn push(&mut self, records: Vec<Record>) {
        for record in records {
            self.bytes += record.payload.len();
            self.records.push_back(record);
        }
        while self.records.len() > RECENT_RECORDS || self.bytes > RECENT_BYTES {
            let Some(old) = self.records.pop_front() else {
                break;
            };
            self.bytes -= old.payload.len();
            self.first += 1;
        }
    }
}

pub(crate) struct SledBackend {
    db: sled::Db,
    vault: std::sync::Arc<crate::vault::KeyVault>,
    tree: sled::Tree,
    segments: Segments,
    /// Chunks are compressed where that pays (`StoreConfig::compress`).
    compress: bool,
    /// The last position whose chunk is kept in sled (`c` keys, the layout
    /// before segments); 0 when there is none.
    legacy_last: u64,
    recent: RwLock<Recent>,
    index: Durability,
    /// When the indexes were last made durable.
    index_synced: std::sync::Mutex<std::time::Instant>,
    /// The `g` value of the last group indexed since the last checkpoint.
    indexed: std::sync::Mutex<Option<Vec<u8>>>,
    /// Groups made durable (one segment `fdatasync` each).
    syncs: std::sync::atomic::AtomicU64,
    /// Runs after a group is written and before it is synced (crash tests).
    before_sync: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// A chunk's bytes: kept in sled (the layout before segments) or read from
/// a segment.
enum Chunk {
    Sled(sled::IVec),
    Segment(Vec<u8>),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Sled(bytes) => bytes,
            Chunk::Segment(bytes) => bytes,
        }
    }
}

fn io_error(e: std::io::Error) -> StorageError {
    StorageError::Engine(Box::new(e))
}

/// What makes sled's indexes durable when the writer checkpoints them. sled
/// 0.34's flush writes its log with `pwrite` and `sync_file_range`, which
/// survives a killed process but not a power cut (no metadata, no disk cache
/// flush), and writes pages over its blob threshold to files it never syncs.
/// So after the flush Baton calls `fsync` on every blob file written since
/// the last checkpoint (and on the blob directory when it gained one), then
/// `fdatasync` on sled's log file. The records do not wait for this: they
/// are durable in their segment before the indexes are written.
struct Durability {
    /// sled's log file (`<dir>/db`), opened for syncing only.
    log: std::fs::File,
    blobs: PathBuf,
    /// Blob files (named by their log sequence number) already synced.
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl Durability {
    fn open(dir: &Path) -> std::io::Result<Durability> {
        let log = std::fs::File::open(dir.join("db"))?;
        // The directory entries of sled's files: made durable once.
        std::fs::File::open(dir)?.sync_all()?;
        let blobs = dir.join("blobs");
        let synced = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect(),
            Err(_) => Default::default(),
        };
        Ok(Durability {
            log,
            blobs,
            synced_blobs: std::sync::Mutex::new(synced),
        })
    }

    /// Makes everything sled has flushed durable.
    fn sync(&self) -> std::io::Result<()> {
        self.sync_new_blobs()?;
        self.log.sync_data()
    }

    fn sync_new_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let present: std::collections::HashSet<std::ffi::OsString> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        let mut added = false;
        for name in present.difference(&synced) {
            match std::fs::File::open(self.blobs.join(name)) {
                Ok(f) => f.sync_all()?,
                // Collected by sled meanwhile: nothing left to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            added = true;
        }
        if added || present.len() != synced.len() {
            std::fs::File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }
}

impl SledBackend {
    fn decode(position: u64, bytes: &[u8]) -> Result<Record, StorageError> {
        let location = || format!("record at position {position}");
        let record = Record::from_stored_bytes(bytes)
            .map_err(|reason| corrupt(location(), reason, Some(position)))?;
        if record.position != position {
            return Err(corrupt(
                location(),
                format!("it claims position {}", record.position),
                Some(position),
            ));
        }
        Ok(record)
    }

    fn recent(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finds the head and makes the indexes whole: the groups written to the
    /// segments after the last indexed chunk are read back and indexed, and a
    /// torn group at the very end (never acknowledged) is cut off. Refuses a
    /// directory written with the earlier one-key-per-record layout, whose
    /// keys this version would not read.
    fn recover(&mut self) -> Result<Head, StorageError> {
        let mut first_layout = false;
        for key in self.tree.scan_prefix(b"r").keys() {
            if key? != LAYOUT {
                first_layout = true;
                break;
            }
        }
        if self.tree.get(b"h")?.is_some() || first_layout {
            return Err(corrupt(
                "layout",
                "written by an older event-log version (one key per record); \
                 export it with that version and import the file",
                None,
            ));
        }
        if let Some(layout) = self
            .tree
            .get(LAYOUT)?
            .filter(|l| l != DIGEST_KEYS && l != COMPRESSED_GROUPS)
        {
            return Err(corrupt(
                "layout",
                format!(
                    "written by a newer event-log version (layout {:?})",
                    String::from_utf8_lossy(&layout)
                ),
                None,
            ));
        }
        let legacy = match self.tree.scan_prefix([CHUNK]).next_back() {
            None => Head::EMPTY,
            Some(entry) => {
                let (key, chunk) = entry?;
                last_of(be_u64(&key[1..], "chunk key")?, &chunk)?
            }
        };
        self.legacy_last = legacy.position;
        // Where the indexed groups end, and the head there.
        let segments = self.segments.list();
        let (segment, offset, indexed) = match self.tree.get(INDEXED)? {
            Some(value) => decode_indexed(&value)?,
            None => (segments.first().copied().unwrap_or(0), 0, legacy),
        };
        let (found, stop) = self
            .segments
            .scan(segment, offset, indexed.position + 1, indexed.hash)
            .map_err(io_error)?;
        let head = found
            .iter()
            .rev()
            .find_map(|group| group.records.last())
            .map_or(indexed, |last| Head {
                position: last.position,
                hash: last.hash,
            });
        // Only an unfinished write at the very end is cut; anything else is
        // refused before a byte or an index entry changes.
        if let Some(stop) = stop
            .as_ref()
            .filter(|stop| !stop.torn || segments.last() != Some(&stop.segment))
        {
            let place = if stop.torn {
                "torn, before the last segment"
            } else {
                "not written by this log's writer in this order"
            };
            return Err(corrupt(
                format!("segment {} at byte {}", stop.segment, stop.offset),
                format!("{} ({place})", stop.reason),
                Some(head.position + 1),
            ));
        }
        // Nothing was refused: the indexes may change now.
        self.convert_name_keys()?;
        if self.compress && self.tree.get(LAYOUT)?.as_deref() != Some(COMPRESSED_GROUPS) {
            self.tree.insert(LAYOUT, COMPRESSED_GROUPS)?;
            self.db.flush()?;
            self.index.sync().map_err(io_error)?;
        }
        // A group read back may never have been synced (the process was
        // killed between its write and its sync): sync it before anything
        // is indexed or read.
        let mut synced = Vec::new();
        for group in &found {
            if !synced.contains(&group.segment) {
                self.segments
                    .sync_segment(group.segment)
                    .map_err(io_error)?;
                synced.push(group.segment);
            }
        }
        let changed = !found.is_empty() || stop.is_some();
        if let Some(stop) = stop {
            self.segments
                .cut(stop.segment, stop.offset)
                .map_err(io_error)?;
        }
        for group in found {
            let indexed = index_group(
                &self.tree,
                &group.records,
                &group.chunks,
                group.segment,
                group.end,
            )?;
            *self.indexed.lock().unwrap_or_else(PoisonError::into_inner) = Some(indexed);
        }
        if changed {
            self.close_index()?;
        }
        Ok(head)
    }

    /// Converts the indexes of a directory written before the digests: the
    /// `t` and `i` entries (streams and idempotency keys by name) are
    /// written again under their digest keys, which are made durable before
    /// any name key is removed, and the removals are made durable too. A
    /// crash in between leaves name keys beside their digest keys, which the
    /// next open converts again to the same entries. The layout key is
    /// written (and made durable) first, so no older release opens the
    /// directory once a digest key may be in it.
    fn convert_name_keys(&self) -> Result<(), StorageError> {
        if self.tree.get(LAYOUT)?.is_none() {
            self.tree.insert(LAYOUT, DIGEST_KEYS)?;
            self.db.flush()?;
            self.index.sync().map_err(io_error)?;
        }
        let named = |prefix: u8| self.tree.scan_prefix([prefix]);
        if named(LEGACY_RUN).next().is_none() && named(LEGACY_KEY).next().is_none() {
            return Ok(());
        }
        let bad = |what: &str| corrupt("name-keyed index", what.to_owned(), None);
        for entry in named(LEGACY_RUN) {
            // `t` u32 length ‖ stream ‖ first version
            let (key, run) = entry?;
            let len = key
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| bad("stream run key too short"))? as usize;
            let stream = key
                .get(5..5 + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| bad("stream run key without its stream"))?;
            let version = be_u64(&key[5 + len..], "name-keyed stream run key")?;
            self.tree
                .insert(run_key(&stream_prefix(stream), version), run)?;
        }
        for entry in named(LEGACY_KEY) {
            let (key, value) = entry?;
            let text =
                std::str::from_utf8(&key[1..]).map_err(|_| bad("idempotency key not UTF-8"))?;
            let position = be_u64(&value, "name-keyed idempotency key")?;
            self.tree
                .insert(idempotency_key(text), &position.to_be_bytes())?;
        }
        self.db.flush()?;
        self.index.sync().map_err(io_error)?;
        for prefix in [LEGACY_RUN, LEGACY_KEY] {
            for key in named(prefix).keys() {
                self.tree.remove(key?)?;
            }
        }
        self.db.flush()?;
        self.index.sync().map_err(io_error)
    }

    /// The indexes' checkpoint: flushes sled and makes its files durable,
    /// then moves the `g` key to the last group indexed before the flush.
    /// So a `g` key that survives a crash (even a power cut, in which sled's
    /// unsynced writes may land in any order) names only entries that were
    /// made durable before it was written. The new `g` is itself made
    /// durable by the next checkpoint (or by `close_index`).
    fn sync_index(&self) -> Result<(), StorageError> {
        let indexed = self
            .indexed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.db.flush()?;
        self.index.sync().map_err(io_error)?;
        if let Some(indexed) = indexed {
            self.tree.insert(INDEXED, indexed)?;
        }
        *self
            .index_synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
        Ok(())
    }

    /// A checkpoint whose `g` key is durable too: the next open reads
    /// nothing back.
    fn close_index(&self) -> Result<(), StorageError> {
        self.sync_index()?;
        self.db.flush()?;
        self.index.sync().map_err(io_error)
    }

    /// The chunk holding `position`, as (first position, bytes), or `None`
    /// when no chunk starts at or before it.
    fn chunk_at(&self, position: u64) -> Result<Option<(u64, Chunk)>, StorageError> {
        match self.chunk_entry(position)? {
            None => Ok(None),
            Some((key, value)) => self.chunk(&key, value).map(Some),
        }
    }

    /// The `c` or `p` entry of the chunk holding `position`, not read yet.
    fn chunk_entry(&self, position: u64) -> Result<Option<(sled::IVec, sled::IVec)>, StorageError> {
        let (from, to) = if position <= self.legacy_last {
            (chunk_key(0), chunk_key(position))
        } else {
            (place_key(0), place_key(position))
        };
        Ok(self.tree.range(from..=to).next_back().transpose()?)
    }

    /// The chunk under a `c` or `p` key.
    fn chunk(&self, key: &[u8], value: sled::IVec) -> Result<(u64, Chunk), StorageError> {
        let first = be_u64(&key[1..], "chunk key")?;
        if key[0] == CHUNK {
            return Ok((first, Chunk::Sled(value)));
        }
        let place = decode_place(&value, first)?;
        let bytes = self.segments.read(place).map_err(io_error)?;
        Ok((first, Chunk::Segment(bytes)))
    }

    /// Reads `from..=to` (at most `limit`) in position order: the chunks
    /// kept in sled, then those in segments.
    fn read_chunks(
        &self,
        from: u64,
        to: u64,
        limit: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), StorageError> {
        // Start at the chunk holding `from` (it may begin before it).
        let start = match self.chunk_entry(from)? {
            Some((key, _)) => be_u64(&key[1..], "chunk key")?,
            None => from,
        };
        let legacy = self.tree.range(chunk_key(start)..=chunk_key(to));
        let placed = self.tree.range(place_key(start)..=place_key(to));
        for entry in legacy.chain(placed) {
            let (key, value) = entry?;
            let (first, chunk) = self.chunk(&key, value)?;
            for frame in Frames::new(first, &chunk) {
                let (position, bytes) = frame?;
                if position < from {
                    continue;
                }
                if position > to || out.len() >= limit {
                    return Ok(());
                }
                out.push(SledBackend::decode(position, bytes)?);
            }
        }
        Ok(())
    }

    /// One record by position: from the recent cache, else from the chunk
    /// holding it. `memo` keeps the last chunk read, since records of one
    /// stream that were appended together share a chunk.
    fn record_at(
        &self,
        position: u64,
        memo: &mut Option<(u64, Chunk)>,
    ) -> Result<Option<Record>, StorageError> {
        if let Some(record) = self.recent().get(position) {
            return Ok(Some(record.clone()));
        }
        if let Some(bytes) = find_frame(memo, position)? {
            return SledBackend::decode(position, bytes).map(Some);
        }
        *memo = self.chunk_at(position)?;
        match find_frame(memo, position)? {
            Some(bytes) => SledBackend::decode(position, bytes).map(Some),
            None => Ok(None),
        }
    }
}

/// The position and hash of the last record of a chunk starting at `first`.
fn last_of(first: u64, chunk: &[u8]) -> Result<Head, StorageError> {
    let mut last = None;
    for frame in Frames::new(first, chunk) {
        last = Some(frame?);
    }
    let (position, bytes) = last.ok_or_else(|| corrupt("chunk", "empty chunk", Some(first)))?;
    let record = SledBackend::decode(position, bytes)?;
    Ok(Head {
        position,
        hash: record.hash,
    })
}

fn decode_place(value: &[u8], first: u64) -> Result<Place, StorageError> {
    Place::decode(value).ok_or_else(|| corrupt("chunk place", "not 20 or 24 bytes", Some(first)))
}

/// Where the indexed groups end, from the `g` key: the segment, the offset
/// just past the last indexed group, and the head there.
fn decode_indexed(value: &[u8]) -> Result<(u64, u64, Head), StorageError> {
    let bad = || corrupt("indexed-groups key", "not 56 bytes", None);
    let value: &[u8; 56] = value.try_into().map_err(|_| bad())?;
    let u64_at = |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().expect("8 bytes"));
    let hash = ChainHash(value[24..].try_into().expect("32 bytes"));
    Ok((
        u64_at(0),
        u64_at(8),
        Head {
            position: u64_at(16),
            hash,
        },
    ))
}

/// Writes the index entries of one group of `segment` that ends at `end`:
/// a place per chunk, the idempotency keys and a run per stream.
/// Returns the value of the `g` key for it, which the next checkpoint
/// writes once these entries are durable.
///
/// Plain inserts, not a `sled::Batch`: sled 0.34's `apply_batch` writes out
/// and `sync_file_range`s its log buffer twice per batch (`pin_log` rolls
/// the buffer before and after its reservation), two synchronous writes per
/// group that the records do not need. A group indexed again after a crash
/// gets the same keys with the same values, since its chunks are read back
/// from the group and runs are split by the group's own records alone:
/// `RUN_POSITIONS` is part of the format, and changing it calls for a new
/// layout.
fn index_group(
    tree: &sled::Tree,
    records: &[Record],
    chunks: &[(u64, Place)],
    segment: u64,
    end: u64,
) -> Result<Vec<u8>, StorageError> {
    for (first, place) in chunks {
        tree.insert(place_key(*first), place.encode())?;
    }

    // One run per stream: within a group a stream's versions are
    // consecutive (the writer is the only one assigning them, and an
    // import was verified), but a gap still starts a new run.
    let mut runs: Vec<(&str, u64, Vec<u8>)> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for record in records {
        let position = record.position.to_be_bytes();
        let current = open.get(record.stream.as_str()).copied().filter(|&i| {
            let (_, first_version, positions) = &runs[i];
            let len = positions.len() / 8;
            first_version + len as u64 == record.stream_version && len < RUN_POSITIONS
        });
        match current {
            Some(i) => runs[i].2.extend_from_slice(&position),
            None => {
                open.insert(&record.stream, runs.len());
                runs.push((&record.stream, record.stream_version, position.to_vec()));
            }
        }
        if let Some(key) = &record.idempotency_key {
            tree.insert(idempotency_key(key), &position)?;
        }
    }
    for (stream, first_version, positions) in runs {
        tree.insert(run_key(&stream_prefix(stream), first_version), positions)?;
    }

    let last = records
        .last()
        .ok_or_else(|| corrupt("index", "a group of no records", None))?;
    let mut indexed = Vec::with_capacity(56);
    indexed.extend_from_slice(&segment.to_be_bytes());
    indexed.extend_from_slice(&end.to_be_bytes());
    indexed.extend_from_slice(&last.position.to_be_bytes());
    indexed.extend_from_slice(&last.hash.0);
    Ok(indexed)
}

/// The stored bytes of `position` in a chunk, if the chunk holds it.
fn find_frame(chunk: &Option<(u64, Chunk)>, position: u64) -> Result<Option<&[u8]>, StorageError> {
    let Some((first, chunk)) = chunk else {
        return Ok(None);
    };
    if *first > position {
        return Ok(None);
    }
    for frame in Frames::new(*first, chunk) {
        let (at, bytes) = frame?;
        if at == position {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

impl Drop for SledBackend {
    /// A clean close leaves the indexes whole, so the next open has nothing
    /// to read back. An error here only means that open will.
    fn drop(&mut self) {
        let _ = self.close_index();
    }
}

impl Backend for SledBackend {
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError> {
        // The last run holds the stream's version; a separate stream-head
        // key would cost one more insert per stream per group.
        let prefix = stream_prefix(stream);
        match self.tree.scan_prefix(prefix).next_back() {
            None => Ok(0),
            Some(entry) => {
                let (key, run) = entry?;
                let first = be_u64(&key[prefix.len()..], "stream run key")?;
                Ok(first + (run.len() / 8) as u64 - 1)
            }
        }
    }

    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError> {
        let Some(value) = self.tree.get(idempotency_key(key))? else {
            return Ok(None);
        };
        // The entry names a position; the record there says the rest, and
        // must carry this very key (a digest shared by two keys is not a
        // duplicate).
        let position = be_u64(&value, "idempotency key")?;
        let record = self.record_at(position, &mut None)?.ok_or_else(|| {
            corrupt(
                "idempotency index",
                format!("record {position} is missing"),
                Some(position),
            )
        })?;
        Ok(
            (record.idempotency_key.as_deref() == Some(key)).then_some(Appended {
                position,
                stream_version: record.stream_version,
                event_id: record.event_id,
                duplicate: false,
            }),
        )
    }

    fn commit(&self, records: Vec<Record>, stored: Vec<Vec<u8>>) -> Result<(), StorageError> {
        let Some(first) = records.first().map(|r| r.position) else {
            return Ok(());
        };
        // The group's bytes in one buffer: its header, then its chunks,
        // compressed where that pays.
        let group = crate::segments::encode_group(&stored, self.compress);

        // The indexes' checkpoint, when due, comes before the group: its
        // failure then stops the writer before anything of this group is
        // written (after the group's sync, a failure would answer an error
        // for records that are durable).
        let due = self
            .index_synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= INDEX_SYNC_EVERY;
        if due {
            self.sync_index()?;
        }

        // The content keys this group's records were sealed with are
        // written first (a killed process keeps them: they are in the page
        // cache before any record is), then synced while the group is.
        let keys_written = self.vault.write_pending().map_err(io_error)?;
        // One write of the whole group, then one `fdatasync`; the keys' sync
        // runs at the same time on a thread of its own. Both are durable
        // before the indexes are written and anyone is told.
        let write = || -> std::io::Result<(u64, u64)> {
            let (segment, at) = self.segments.append(first, &group.bytes)?;
            if let Some(hook) = self.before_sync.get() {
                hook();
            }
            if let Err(e) = self.segments.sync() {
                // Not durable, so never acknowledged: take it back, as far
                // as the disk lets us (the next open cuts it off otherwise).
                let _ = self.segments.cut(segment, at);
                return Err(e);
            }
            self.syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok((segment, at))
        };
        let (written, keys) = if keys_written {
            std::thread::scope(|scope| {
                let keys = scope.spawn(|| self.vault.sync_file());
                let written = write();
                let keys = keys.join().unwrap_or_else(|_| {
                    Err(std::io::Error::other("the key vault's thread panicked"))
                });
                (written, keys)
            })
        } else {
            (write(), Ok(()))
        };
        let (segment, at) = written.map_err(io_error)?;
        keys.map_err(io_error)?;

        // The indexes: plain inserts, made durable by the next checkpoint,
        // which also moves the `g` key past this group. A crash before that
        // loses only what the next open reads back from the segment. (If sled fails here, the writer stops
        // and this group's callers hear an error although their records are
        // durable: they come back at the next open, and a retry with the
        // same idempotency keys finds them.)
        let chunks: Vec<(u64, Place)> = group
            .chunks
            .iter()
            .map(|c| (records[c.first].position, c.place(segment, at)))
            .collect();
        let end = at + group.bytes.len() as u64;
        let indexed = index_group(&self.tree, &records, &chunks, segment, end)?;
        *self.indexed.lock().unwrap_or_else(PoisonError::into_inner) = Some(indexed);
        self.recent
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(records);
        Ok(())
    }

    fn read_all(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut next = from;
        loop {
            let cache_first = {
                let recent = self.recent();
                if next >= recent.first {
                    // Followers of the head land here: no sled access.
                    while next <= to && out.len() < limit {
                        let Some(record) = recent.get(next) else {
                            break;
                        };
                        out.push(record.clone());
                        next += 1;
                    }
                    return Ok(out);
                }
                recent.first
            };
            // Older than the cache: read sled up to where the cache began.
            // It may move on meanwhile (records are evicted, never changed),
            // so look again afterwards.
            self.read_chunks(next, to.min(cache_first - 1), limit, &mut out)?;
            if out.len() >= limit || cache_first > to {
                return Ok(out);
            }
            next = cache_first;
        }
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_position: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::new();
        let prefix = stream_prefix(stream);
        // Start at the run holding `from_version` (it may begin before it).
        let start = match self
            .tree
            .range(run_key(&prefix, 0)..=run_key(&prefix, from_version))
            .next_back()
        {
            Some(entry) => entry?.0.to_vec(),
            None => run_key(&prefix, from_version).to_vec(),
        };
        let mut memo = None;
        for entry in self.tree.range(start..=run_key(&prefix, u64::MAX).to_vec()) {
            let (key, run) = entry?;
            let first_version = be_u64(&key[prefix.len()..], "stream run key")?;
            for (index, position) in run.chunks_exact(8).enumerate() {
                let version = first_version + index as u64;
                if version < from_version {
                    continue;
                }
                let position = be_u64(position, "stream run")?;
                if out.len() >= limit || position > max_position {
                    return Ok(out);
                }
                let index_of = || format!("stream index of {stream:?}");
                let record = self.record_at(position, &mut memo)?.ok_or_else(|| {
                    corrupt(
                        index_of(),
                        format!("record {position} is missing"),
                        Some(position),
                    )
                })?;
                // A run names positions by digest: the record must be this
                // stream's, at the version the run says.
                if record.stream != stream || record.stream_version != version {
                    return Err(corrupt(
                        index_of(),
                        format!(
                            "record {position} is version {} of {:?}, not version {version}",
                            record.stream_version, record.stream
                        ),
                        Some(position),
                    ));
                }
                out.push(record);
            }
        }
        Ok(out)
    }
}

/// The sled-backed [`crate::EventStore`], the embedded default.
///
/// sled locks its directory: one process (one `SledStore`) at a time. Call
/// [`SledStore::close`] before reopening the same directory in-process.
pub struct SledStore {
    core: Core<SledBackend>,
    vault: std::sync::Arc<crate::vault::KeyVault>,
    path: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("head", &self.core.head())
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the log in `path` with the default
    /// [`StoreConfig`], recovering the head from the store.
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, OpenError> {
        SledStore::open_with(path, StoreConfig::default())
    }

    /// Opens the log in `path` with the given configuration.
    pub fn open_with(path: impl AsRef<Path>, config: StoreConfig) -> Result<SledStore, OpenError> {
        let path = path.as_ref().to_path_buf();
        let storage = |source: StorageError| OpenError::Storage {
            path: path.clone(),
            source,
        };
        let io = |e: std::io::Error| storage(StorageError::Engine(Box::new(e)));
        std::fs::create_dir_all(&path).map_err(io)?;
        // The key vault (a key per person, read whole) is read on a thread
        // of its own while sled opens and the segments are recovered:
        // neither needs it. It is changed (a torn tail cut) and opened for
        // appending only once sled holds the directory's lock.
        let vault_dir = path.join("vault");
        // A directory in use is refused before the vault is read for
        // nothing (`open_when_free` tries again every few milliseconds);
        // sled's own open below is what decides.
        if db_locked(&path) {
            return Err(OpenError::Locked { path });
        }
        std::thread::scope(|scope| {
            let vault = std::thread::Builder::new()
                .name("event-log-vault".into())
                .spawn_scoped(scope, || crate::vault::KeyVault::read(&vault_dir))
                .map_err(OpenError::Thread)?;
            let (mut backend, head) = SledStore::open_indexed(&path, &config)?;
            let vault = vault
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the key vault's reader panicked")))
                .and_then(|read| read.open(&vault_dir))
                .map_err(io)?;
            backend.vault = std::sync::Arc::new(vault);
            backend
                .recent
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .first = head.position + 1;
            let vault = backend.vault.clone();
            let core = Core::start(backend, head, config).map_err(OpenError::Thread)?;
            Ok(SledStore {
                core,
                vault,
                path: path.clone(),
            })
        })
    }

    /// sled, the segments and the indexes of the log in `path`, recovered
    /// to the head they give; its key vault is still to be put in.
    fn open_indexed(path: &Path, config: &StoreConfig) -> Result<(SledBackend, Head), OpenError> {
        let path = path.to_path_buf();
        let storage = |source: StorageError| OpenError::Storage {
            path: path.clone(),
            source,
        };
        let io = |e: std::io::Error| storage(StorageError::Engine(Box::new(e)));
        let db = sled::Config::new()
            .path(&path)
            // The writer flushes every group itself; a background flusher
            // would add nothing but a thread that outlives `close`.
            .flush_every_ms(None)
            .cache_capacity(config.cache_capacity_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled reports its directory lock only as an I/O error with
                // this message (sled 0.34, pinned by the workspace); the
                // lock-test pins the behaviour.
                ref e if locked(e) => OpenError::Locked { path: path.clone() },
                other => storage(other.into()),
            })?;
        let tree = db.open_tree(TREE).map_err(|e| storage(e.into()))?;
        let index = Durability::open(&path).map_err(io)?;
        let segments = Segments::open(&path.join("segments"), config.segment_bytes).map_err(io)?;
        let mut backend = SledBackend {
            db,
            // Replaced by the vault loaded beside this open.
            vault: std::sync::Arc::new(crate::vault::KeyVault::in_memory()),
            tree,
            segments,
            compress: config.compress,
            legacy_last: 0,
            recent: RwLock::new(Recent {
                first: 1,
                records: VecDeque::new(),
                bytes: 0,
            }),
            index,
            index_synced: std::sync::Mutex::new(std::time::Instant::now()),
            indexed: std::sync::Mutex::new(None),
            syncs: std::sync::atomic::AtomicU64::new(0),
            before_sync: std::sync::OnceLock::new(),
        };
        let head = backend.recover().map_err(storage)?;
        Ok((backend, head))
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets a function the writer calls after writing each group and before
    /// syncing it; a crash test makes it kill the process there. Only the
    /// first call takes effect.
    pub fn set_before_sync(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.core.backend().before_sync.set(Box::new(hook));
    }

    /// Groups committed since the store was opened (appends coalesced into
    /// one write each).
    pub fn groups(&self) -> u64 {
        self.core.groups()
    }

    /// How many times the log was made durable (`fdatasync`): once per
    /// committed group.
    pub fn syncs(&self) -> u64 {
        self.core
            .backend()
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pauses the writer until the returned guard is dropped; see
    /// [`WriterPause`].
    pub async fn pause_writer(&self) -> Result<WriterPause, AppendError> {
        self.core.pause().await
    }

    /// Finishes queued work, stops the writer and releases the directory, so
    /// it can be reopened at once: sled's own I/O threads can hold its lock
    /// (a `flock` of `db`) a moment after the last handle is gone, so on
    /// Linux this waits, at most ten seconds, until the lock is free.
    pub async fn close(self) {
        self.core.close().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db_locked(&self.path) && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await
        }
    }

    /// [`SledStore::open`], waiting at most `patience` while the directory
    /// is locked: sled's I/O threads can hold its lock a moment after the
    /// last handle of this process was closed or dropped.
    pub async fn open_when_free(
        path: impl AsRef<Path>,
        patience: std::time::Duration,
    ) -> Result<SledStore, OpenError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match SledStore::open(path.as_ref()) {
                Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                }
                opened => return opened,
            }
        }
    }
}

/// Whether a handle holds sled's lock on the directory at `path` (a
/// `flock` of its `db`): taken for a moment to see, and let go at once with
/// the file. Linux only; elsewhere, and when there is no `db` yet, `false`.
#[cfg(target_os = "linux")]
fn db_locked(path: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    std::fs::File::open(path.join("db")).is_ok_and(|db| {
        flock(&db, FlockOperation::NonBlockingLockExclusive) == Err(rustix::io::Errno::WOULDBLOCK)
    })
}

#[cfg(not(target_os = "linux"))]
fn db_locked(_: &Path) -> bool {
    false
}

crate::store::delegate_event_store!(SledStore, local_files: true);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NewRecord;
    use crate::store::EventStore;

    /// Groups larger than a chunk and a stream run, and more records than
    /// the recent cache holds, so reads go through sled's chunks and runs
    /// (before and after a reopen) as well as through the cache.
    #[tokio::test]
    async fn reads_cross_chunks_runs_and_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let total = RECENT_RECORDS as u64 + 1500;
        let mut appended = 0;
        while appended < total {
            let n = (total - appended).min(1000);
            let batch = (0..n)
                .map(|i| {
                    let p = appended + i + 1;
                    let stream = if p % 3 == 0 { "hot" } else { "cold" };
                    NewRecord::new(
                        stream,
                        "T",
                        1,
                        format!("{{\"p\":{p},\"pad\":\"{}\"}}", "x".repeat(60)),
                    )
                    .idempotency_key(format!("k{p}"))
                })
                .collect();
            store.append(batch).await.unwrap();
            appended += n;
        }
        let check = |records: &[Record], from: u64, len: usize| {
            assert_eq!(records.len(), len);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.position, from + i as u64);
            }
        };
        for (from, limit) in [(1, 10), (5, 3000), (total - 20, 100), (700, 1)] {
            let records = store.read_all(from, limit).await.unwrap();
            let len = limit.min(usize::try_from(total + 1 - from).unwrap());
            check(&records, from, len);
        }
        let hot = store.read_stream("hot", 600, 700).await.unwrap();
        assert_eq!(hot.len(), 700);
        assert_eq!(hot[0].stream_version, 600);
        assert_eq!(hot[0].position, 1800);
        assert!(hot
            .windows(2)
            .all(|w| w[1].stream_version == w[0].stream_version + 1));
        let head = store.head().await.unwrap();
        crate::verify(&store).await.unwrap();
        store.close().await;

        // After a reopen the cache is empty: everything comes from sled.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.head().await.unwrap(), head);
        check(&store.read_all(2, 5000).await.unwrap(), 2, 5000);
        let cold = store.read_stream("cold", 1, usize::MAX).await.unwrap();
        assert_eq!(cold.len() as u64, total - total / 3);
        let again = store
            .append(vec![
                NewRecord::new("hot", "T", 1, "{}").idempotency_key("k5")
            ])
            .await
            .unwrap();
        assert!(again[0].duplicate);
        assert_eq!(again[0].position, 5);
        let next = store
            .append(vec![NewRecord::new("hot", "T", 1, "{}")])
            .await
            .unwrap();
        assert_eq!(next[0].position, total + 1);
        assert_eq!(next[0].stream_version, total / 3 + 1);
        crate::verify(&store).await.unwrap();
        store.close().await;
    }
}

#[cfg(test)]
mod segment_tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::record::NewRecord;
    use crate::store::EventStore;

    /// `n` records from position `from` on, over five streams, each with an
    /// idempotency key naming its position.
    fn records(from: u64, n: u64) -> Vec<NewRecord> {
        (from..from + n)
            .map(|p| {
                NewRecord::new(format!("s{}", p % 5), "T", 1, format!("{{\"p\":{p}}}"))
                    .idempotency_key(format!("k{p}"))
            })
            .collect()
    }

    /// Appends `groups` batches of `per` records after the head.
    async fn fill(store: &SledStore, groups: u64, per: u64) {
        for _ in 0..groups {
            let from = store.head().await.unwrap().position + 1;
            store.append(records(from, per)).await.unwrap();
        }
    }

    /// Segments so small that each group starts a new one.
    fn segment_per_group() -> StoreConfig {
        StoreConfig {
            segment_bytes: 1,
            ..StoreConfig::default()
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// The offsets at which a segment's groups start.
    fn group_starts(bytes: &[u8]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            starts.push(at);
            let len = u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
            at += 16 + len as usize;
        }
        starts
    }

    /// Everything in the store's directory that is sled's (not the segments,
    /// not the key vault).
    /// The store on `dir`, once sled let go of the directory (see
    /// [`SledStore::open_when_free`]).
    async fn reopen(dir: &Path) -> SledStore {
        SledStore::open_when_free(dir, std::time::Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// sled itself on `dir`, once the store let go of it.
    fn raw_sled(dir: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::open(dir) {
                Err(e) if locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                db => return db.unwrap(),
            }
        }
    }

    fn sled_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.ends_with("segments") && !p.ends_with("vault"))
            .collect()
    }

    fn copy_tree(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                copy_tree(&entry.path(), &to.join(entry.file_name()));
            }
        } else {
            std::fs::copy(from, to).unwrap();
        }
    }

    fn remove(path: &Path) {
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    /// A retry of the record at `position` (its idempotency key) is
    /// answered with the original.
    async fn assert_kept(store: &SledStore, position: u64) {
        let again = store
            .append(vec![
                NewRecord::new("s0", "T", 1, "{}").idempotency_key(format!("k{position}"))
            ])
            .await
            .unwrap();
        assert!(again[0].duplicate);
        assert_eq!(again[0].position, position);
    }

    /// Reads, streams, idempotency and the chain of a store holding
    /// positions 1..=`head` written by `records`.
    async fn check_whole(store: &SledStore, head: u64) {
        let all = store.read_all(1, usize::MAX).await.unwrap();
        assert_eq!(all.len() as u64, head);
        assert!(all.iter().zip(1..).all(|(r, p)| r.position == p));
        assert_eq!(crate::verify(store).await.unwrap().records, head);
        let s1 = store.read_stream("s1", 1, usize::MAX).await.unwrap();
        assert_eq!(
            s1.len() as u64,
            (1..=head).filter(|p| p % 5 == 1).count() as u64
        );
        assert!(s1.iter().zip(1..).all(|(r, v)| r.stream_version == v));
        assert_kept(store, head).await;
    }

    /// A group the process began to write and never finished (and never
    /// acknowledged) is cut off at open, whatever its state: the log goes on
    /// from the last whole group.
    #[tokio::test]
    async fn a_torn_group_at_the_end_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).await;
        fill(&store, 3, 10).await;
        let head = store.head().await.unwrap();
        store.close().await;
        let last = segment_files(dir.path()).pop().unwrap();
        let whole = std::fs::read(&last).unwrap();
        let last_group = whole[*group_starts(&whole).last().unwrap()..].to_vec();
        let mut damaged_then_junk = b"BSG1\0\0\0\x01\0\0\0\0\0\0\0\x04".to_vec();
        damaged_then_junk.extend_from_slice(b"junkBSG1");
        let tears: [(&str, Vec<u8>); 6] = [
            ("a part of a header", b"BSG1\0\0".to_vec()),
            (
                "a header and half a body",
                last_group[..last_group.len() / 2].to_vec(),
            ),
            (
                "a group of no records",
                b"BSG1\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
            ),
            ("zeros", vec![0; 300]),
            // A lost header page: the power cut kept the file's size.
            ("garbage", b"XXXXXXXXXXXXXXXXXXXX".to_vec()),
            ("a damaged group and junk", damaged_then_junk),
        ];
        for (what, tear) in tears {
            let mut torn = whole.clone();
            torn.extend_from_slice(&tear);
            std::fs::write(&last, &torn).unwrap();
            let store = reopen(dir.path()).await;
            assert_eq!(store.head().await.unwrap(), head, "{what}");
            assert_eq!(std::fs::read(&last).unwrap(), whole, "{what}: cut back");
            store.close().await;
        }

        // Whole records at the wrong position are no unfinished write: the
        // open refuses them and cuts nothing.
        let mut misplaced = whole.clone();
        misplaced.extend_from_slice(&last_group);
        std::fs::write(&last, &misplaced).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(format!("{err:?}").contains("hashing correctly"), "{err:?}");
        assert_eq!(std::fs::read(&last).unwrap(), misplaced, "nothing cut");
        std::fs::write(&last, &whole).unwrap();

        // The last group with one byte changed and its indexes lost with
        // sled: it does not hash into the chain, so it is cut off like a
        // write that never finished.
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        // Damage in a group with a whole group after it (a changed byte, a
        // changed length) is no unfinished write either: refused.
        let starts = group_starts(&whole);
        let mut length = whole.clone();
        length[starts[1] + 8..starts[1] + 16].copy_from_slice(&u64::MAX.to_be_bytes());
        std::fs::write(&last, &length).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(format!("{err:?}").contains("follows at byte"), "{err:?}");
        assert_eq!(std::fs::read(&last).unwrap(), length, "nothing cut");
        let mut middle = whole.clone();
        middle[starts[1] + 40] ^= 1;
        std::fs::write(&last, &middle).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(format!("{err:?}").contains("follows at byte"), "{err:?}");
        assert_eq!(std::fs::read(&last).unwrap(), middle, "nothing cut");
        let mut changed = whole.clone();
        let n = changed.len();
        changed[n - 40] ^= 1;
        std::fs::write(&last, &changed).unwrap();
        let store = reopen(dir.path()).await;
        assert_eq!(store.head().await.unwrap().position, 20);
        assert_eq!(
            std::fs::read(&last).unwrap(),
            whole[..whole.len() - last_group.len()]
        );
        fill(&store, 1, 5).await;
        check_whole(&store, 25).await;
        store.close().await;
    }

    /// A layout key this release does not know (a newer layout) is
    /// refused, and left as it was.
    #[tokio::test]
    async fn a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        reopen(dir.path()).await.close().await;
        let set = |value: &[u8]| {
            let db = raw_sled(dir.path());
            let tree = db.open_tree(TREE).unwrap();
            let before = tree.insert(LAYOUT, value).unwrap();
            db.flush().unwrap();
            before
        };
        assert_eq!(set(b"future").as_deref(), Some(COMPRESSED_GROUPS));
        match SledStore::open_when_free(dir.path(), std::time::Duration::from_secs(10)).await {
            Err(e) => assert!(e.to_string().contains("corrupt"), "{e}"),
            Ok(_) => panic!("a newer layout was opened"),
        }
        assert_eq!(set(COMPRESSED_GROUPS).as_deref(), Some(&b"future"[..]));
        reopen(dir.path()).await.close().await;
    }

    /// Streams and idempotency keys are indexed by digest: an entry is
    /// checked against the record it names before it is believed.
    #[tokio::test]
    async fn an_index_entry_naming_another_record_is_not_believed() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).await;
        store
            .append(vec![
                NewRecord::new("a", "T", 1, "{}").idempotency_key("key-a"),
                NewRecord::new("b", "T", 1, "{}"),
            ])
            .await
            .unwrap();
        store.close().await;
        // What a digest shared by two names would look like: key-b's entry
        // names key-a's record, stream c's run names stream a's record.
        {
            let db = raw_sled(dir.path());
            let tree = db.open_tree(TREE).unwrap();
            tree.insert(idempotency_key("key-b"), &1u64.to_be_bytes())
                .unwrap();
            tree.insert(run_key(&stream_prefix("c"), 1), &1u64.to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path()).await;
        // key-b is not a duplicate of key-a's record; key-a still is.
        let appended = store
            .append(vec![
                NewRecord::new("b", "T", 1, "{}").idempotency_key("key-b")
            ])
            .await
            .unwrap();
        assert_eq!((appended[0].position, appended[0].duplicate), (3, false));
        let again = store
            .append(vec![
                NewRecord::new("a", "T", 1, "{}").idempotency_key("key-a")
            ])
            .await
            .unwrap();
        assert_eq!((again[0].position, again[0].duplicate), (1, true));
        // Stream c's read is refused rather than answered with a's record.
        match store.read_stream("c", 1, 10).await {
            Err(e) => assert!(e.to_string().contains("stream index of \"c\""), "{e}"),
            Ok(records) => panic!("read {records:?}"),
        }
        assert_eq!(store.read_stream("a", 1, 10).await.unwrap().len(), 1);
        store.close().await;
    }

    /// sled's indexes are flushed about once a second, not with each group,
    /// so a crash can leave them behind the segments (sled recovers a prefix
    /// of its inserts). The open reads the missing groups back from the
    /// segments and indexes them, even when sled lost everything.
    #[tokio::test]
    async fn indexes_behind_the_segments_are_read_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let saved = tempfile::tempdir().unwrap();
        let store = reopen(dir.path()).await;
        fill(&store, 4, 10).await;
        store.close().await;
        for file in sled_files(dir.path()) {
            copy_tree(&file, &saved.path().join(file.file_name().unwrap()));
        }
        let indexed_at_40 = {
            let db = raw_sled(dir.path());
            db.open_tree(TREE).unwrap().get(INDEXED).unwrap().unwrap()
        };
        let store = reopen(dir.path()).await;
        fill(&store, 4, 10).await;
        store.close().await;

        // sled as it was after the first 40 records.
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        copy_tree(saved.path(), dir.path());
        let store = reopen(dir.path()).await;
        assert_eq!(store.head().await.unwrap().position, 80);
        check_whole(&store, 80).await;
        let next = store
            .append(vec![NewRecord::new("s1", "T", 1, "{}")])
            .await
            .unwrap();
        assert_eq!((next[0].position, next[0].stream_version), (81, 17));
        store.close().await;

        // No sled at all.
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        let store = reopen(dir.path()).await;
        assert_eq!(store.head().await.unwrap().position, 81);
        let s1 = store.read_stream("s1", 17, 10).await.unwrap();
        assert_eq!(s1.len(), 1);
        assert_eq!(s1[0].position, 81);
        assert_eq!(crate::verify(&store).await.unwrap().records, 81);
        store.close().await;

        // sled with every entry of the later groups but the `g` key of
        // record 40 (a crash keeps the entries written before a group's `g`
        // key): the open indexes those groups again, the same keys with the
        // same values.
        {
            let db = raw_sled(dir.path());
            let tree = db.open_tree(TREE).unwrap();
            assert_ne!(tree.get(INDEXED).unwrap().unwrap(), indexed_at_40);
            tree.insert(INDEXED, indexed_at_40).unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path()).await;
        assert_eq!(store.head().await.unwrap().position, 81);
        assert_eq!(store.read_all(1, usize::MAX).await.unwrap().len(), 81);
        assert_eq!(store.read_stream("s1", 1, 100).await.unwrap().len(), 17);
        assert_eq!(crate::verify(&store).await.unwrap().records, 81);
        assert_kept(&store, 80).await;
        store.close().await;
    }

    /// The magic of each group of a segment file, and the plain-length field
    /// of its first block (`None` for a group of bare frames).
    fn group_forms(bytes: &[u8]) -> Vec<(&[u8], Option<u32>)> {
        group_starts(bytes)
            .into_iter()
            .map(|at| {
                let magic = &bytes[at..at + 4];
                let plain = (magic == b"BSG2")
                    .then(|| u32::from_be_bytes(bytes[at + 20..at + 24].try_into().unwrap()));
                (magic, plain)
            })
            .collect()
    }

    /// Records of JSON like Baton's envelopes: their names repeat.
    fn wordy(from: u64, n: u64) -> Vec<NewRecord> {
        (from..from + n)
            .map(|p| {
                let payload = format!(
                    "{{\"thread\":{{\"page\":\"5550001\",\"psid\":\"70000000{p:08}\"}},\"at\":{},\"dedupe_key\":\"5550001:mid:m_{p}\",\"delivery\":{{\"app\":\"1001\",\"channel\":\"messaging\"}}}}",
                    1_793_523_600_000 + p
                );
                NewRecord::new(format!("s{}", p % 5), "MessagingEventReceived", 1, payload)
                    .idempotency_key(format!("k{p}"))
            })
            .collect()
    }

    /// Records of random bytes: nothing to gain by compressing them.
    fn noise(from: u64, n: u64) -> Vec<NewRecord> {
        (from..from + n)
            .map(|p| {
                let payload: Vec<u8> = (0..64)
                    .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
                    .collect();
                NewRecord::new(format!("s{}", p % 5), "T", 1, payload)
                    .idempotency_key(format!("k{p}"))
            })
            .collect()
    }

    fn compressing(compress: bool) -> StoreConfig {
        StoreConfig {
            compress,
            ..StoreConfig::default()
        }
    }

    /// Chunks are compressed where that pays: Baton's wordy JSON is, random
    /// bytes are stored as they are. A log written without compression (as
    /// releases before it wrote) opens, reads and goes on with compressed
    /// groups after its own, and both are read back into lost indexes.
    #[tokio::test]
    async fn chunks_are_compressed_where_that_pays_and_old_groups_still_read() {
        // The same records, once each way: compressed, they take less room.
        let (plain_dir, packed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, compress) in [(&plain_dir, false), (&packed_dir, true)] {
            let store = SledStore::open_with(dir.path(), compressing(compress)).unwrap();
            store.append(wordy(1, 40)).await.unwrap();
            store.close().await;
        }
        let size = |dir: &tempfile::TempDir| {
            segment_files(dir.path())
                .iter()
                .map(|f| std::fs::metadata(f).unwrap().len())
                .sum::<u64>()
        };
        let (plain, packed) = (size(&plain_dir), size(&packed_dir));
        assert!(
            packed * 2 < plain,
            "{packed} bytes compressed against {plain}"
        );

        // The uncompressed log opened by a compressing store: its groups read
        // as they are, new ones are compressed where that pays.
        let dir = plain_dir;
        let store = SledStore::open_with(dir.path(), compressing(true)).unwrap();
        let before = store.read_all(1, usize::MAX).await.unwrap();
        assert_eq!(before.len(), 40);
        store.append(wordy(41, 40)).await.unwrap();
        store.append(noise(81, 5)).await.unwrap();
        store.append(records(86, 10)).await.unwrap();
        store.close().await;
        let file = segment_files(dir.path()).pop().unwrap();
        let bytes = std::fs::read(&file).unwrap();
        let forms = group_forms(&bytes);
        assert_eq!(forms.len(), 4);
        assert_eq!(forms[0], (&b"BSG1"[..], None), "the old group as it was");
        assert!(
            matches!(forms[1], (b"BSG2", Some(n)) if n > 0),
            "{:?}",
            forms[1]
        );
        assert_eq!(
            forms[2],
            (&b"BSG2"[..], Some(0)),
            "noise is stored as it is"
        );

        // Read back through the indexes, then with no indexes at all.
        for lose_indexes in [false, true] {
            if lose_indexes {
                for file in sled_files(dir.path()) {
                    remove(&file);
                }
            }
            let store = SledStore::open_with(dir.path(), compressing(true)).unwrap();
            assert_eq!(store.head().await.unwrap().position, 95);
            let all = store.read_all(1, usize::MAX).await.unwrap();
            assert_eq!(&all[..40], &before[..]);
            let wordy_back: Vec<&[u8]> = all[40..80].iter().map(|r| &r.payload[..]).collect();
            let wordy_sent = wordy(41, 40);
            assert_eq!(
                wordy_back,
                wordy_sent
                    .iter()
                    .map(|r| &r.payload[..])
                    .collect::<Vec<_>>()
            );
            check_whole(&store, 95).await;
            let noisy = store.read_stream("s1", 1, usize::MAX).await.unwrap();
            assert!(noisy.iter().any(|r| r.position == 81));
            store.close().await;
        }

        // A compressed block claiming another size, at the end and not
        // indexed yet: a torn write, cut off; the log goes on.
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        let whole = std::fs::read(&file).unwrap();
        let last = *group_starts(&whole).last().unwrap();
        let mut claims = whole.clone();
        claims[last + 20..last + 24].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&file, &claims).unwrap();
        let store = SledStore::open_with(dir.path(), compressing(true)).unwrap();
        assert_eq!(store.head().await.unwrap().position, 85);
        assert_eq!(std::fs::read(&file).unwrap(), whole[..last]);
        store.append(records(86, 10)).await.unwrap();
        check_whole(&store, 95).await;
        store.close().await;

        // The layout says so from the first compressing open on (releases
        // before it refuse it rather than cut its groups), and a store
        // that does not compress reads the groups and keeps the layout.
        let layout = |dir: &Path| {
            let db = raw_sled(dir);
            db.open_tree(TREE).unwrap().get(LAYOUT).unwrap()
        };
        assert_eq!(layout(dir.path()).as_deref(), Some(COMPRESSED_GROUPS));
        let store = SledStore::open_with(dir.path(), compressing(false)).unwrap();
        check_whole(&store, 95).await;
        store.close().await;
        assert_eq!(layout(dir.path()).as_deref(), Some(COMPRESSED_GROUPS));
        let untouched = tempfile::tempdir().unwrap();
        SledStore::open_with(untouched.path(), compressing(false))
            .unwrap()
            .close()
            .await;
        assert_eq!(layout(untouched.path()).as_deref(), Some(DIGEST_KEYS));
    }

    /// Only the last segment can end in a torn group: a segment is closed
    /// after its last group was synced. Damage before the last segment is
    /// refused at open, and nothing is cut.
    #[tokio::test]
    async fn a_torn_group_before_the_last_segment_is_refused() {
        let (dir, config) = (tempfile::tempdir().unwrap(), segment_per_group());
        let store = SledStore::open_with(dir.path(), config.clone()).unwrap();
        fill(&store, 3, 10).await;
        store.close().await;
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 3, "one segment per group");
        let store = SledStore::open_with(dir.path(), config.clone()).unwrap();
        check_whole(&store, 30).await;
        store.close().await;

        // Lose the indexes so the open must read the segments, then cut the
        // first segment short.
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        let first = std::fs::read(&files[0]).unwrap();
        std::fs::write(&files[0], &first[..first.len() - 10]).unwrap();
        let err = SledStore::open_with(dir.path(), config).unwrap_err();
        assert!(
            format!("{err:?}").contains("before the last segment"),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&files[0]).unwrap().len(), first.len() - 10);
        assert_eq!(segment_files(dir.path()).len(), 3);
    }

    /// A crash right after a new segment was made and before its first
    /// group was written leaves an empty last segment: the log opens and
    /// goes on in it. A segment under another name than its first position
    /// is refused.
    #[tokio::test]
    async fn an_empty_last_segment_is_where_the_log_goes_on() {
        let (dir, config) = (tempfile::tempdir().unwrap(), segment_per_group());
        let store = SledStore::open_with(dir.path(), config.clone()).unwrap();
        fill(&store, 2, 10).await;
        store.close().await;
        let empty = dir.path().join("segments").join(format!("{:020}.seg", 21));
        std::fs::write(&empty, b"").unwrap();
        let store = SledStore::open_with(dir.path(), config.clone()).unwrap();
        assert_eq!(store.head().await.unwrap().position, 20);
        fill(&store, 1, 10).await;
        assert!(std::fs::metadata(&empty).unwrap().len() > 0);
        check_whole(&store, 30).await;
        store.close().await;
        assert_eq!(segment_files(dir.path()).len(), 3);

        // The second segment renamed for position 40, where 11 comes next:
        // refused once sled's indexes are gone and the segments are read.
        let files = segment_files(dir.path());
        let wrong = dir.path().join("segments").join(format!("{:020}.seg", 40));
        std::fs::rename(&files[1], &wrong).unwrap();
        for file in sled_files(dir.path()) {
            remove(&file);
        }
        let err = SledStore::open_with(dir.path(), config).unwrap_err();
        assert!(
            format!("{err:?}").contains("begins where position 11 is expected"),
            "{err:?}"
        );
    }
}
