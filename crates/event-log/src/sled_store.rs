//! The sled backend: one tree with key prefixes, one `sled::Batch` and one
//! flush per group. It does not decide positions or hashes (the writer does)
//! and does not verify the chain (the verifier does).
//!
//! Keys (integers big-endian, so byte order is numeric order):
//!
//! | key                                        | value                                   |
//! |--------------------------------------------|-----------------------------------------|
//! | `r` position:u64                           | canonical bytes ‖ hash                  |
//! | `s` len:u32 stream version:u64             | position:u64                            |
//! | `i` idempotency key                        | position:u64 version:u64 event_id:16    |
//! | `h`                                        | head position:u64 ‖ head hash:32        |

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{AppendError, OpenError, StorageError};
use crate::record::{Appended, ChainHash, Head, Record};
use crate::store::StoreConfig;
use crate::writer::{Backend, Core, WriterPause};

const TREE: &[u8] = b"baton-event-log";
const HEAD_KEY: &[u8] = b"h";

fn record_key(position: u64) -> [u8; 9] {
    let mut key = [b'r'; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

/// Stream index key. The length prefix keeps one stream's keys contiguous
/// and apart from streams whose name it is a prefix of.
fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(13 + stream.len());
    key.push(b's');
    let len = u32::try_from(stream.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(stream.as_bytes());
    key
}

fn prefixed(prefix: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + text.len());
    key.push(prefix);
    key.extend_from_slice(text.as_bytes());
    key
}

fn corrupt(
    location: impl Into<String>,
    reason: impl Into<String>,
    position: Option<u64>,
) -> StorageError {
    StorageError::Corrupt {
        location: location.into(),
        reason: reason.into(),
        position,
    }
}

fn be_u64(bytes: &[u8], location: &str) -> Result<u64, StorageError> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(location, "value too short", None))
}

pub(crate) struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
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

    fn load_head(&self) -> Result<Head, StorageError> {
        let Some(value) = self.tree.get(HEAD_KEY)? else {
            return Ok(Head::EMPTY);
        };
        let position = be_u64(&value, "head")?;
        let hash = value
            .get(8..40)
            .and_then(|b| b.try_into().ok())
            .map(ChainHash)
            .ok_or_else(|| corrupt("head", "value too short", None))?;
        // The head and its record are written in one batch; if they disagree
        // the store was damaged outside the log, and appending would extend a
        // chain that does not verify.
        let record = self.tree.get(record_key(position))?.ok_or_else(|| {
            corrupt(
                "head",
                format!("record {position} is missing"),
                Some(position),
            )
        })?;
        let record = SledBackend::decode(position, &record)?;
        if record.hash != hash {
            return Err(corrupt(
                "head",
                "hash differs from the last record's",
                Some(position),
            ));
        }
        if self.tree.get(record_key(position + 1))?.is_some() {
            return Err(corrupt(
                "head",
                "records exist beyond the head",
                Some(position + 1),
            ));
        }
        Ok(Head { position, hash })
    }
}

impl Backend for SledBackend {
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError> {
        // The last stream index entry holds the stream's version; a separate
        // stream-head key would cost one more insert per record.
        let prefix = stream_prefix(stream);
        match self.tree.scan_prefix(&prefix).next_back() {
            None => Ok(0),
            Some(entry) => {
                let (key, _) = entry?;
                be_u64(&key[prefix.len()..], "stream index key")
            }
        }
    }

    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError> {
        let Some(value) = self.tree.get(prefixed(b'i', key))? else {
            return Ok(None);
        };
        let event_id = value
            .get(16..32)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .ok_or_else(|| corrupt("idempotency key", "value too short", None))?;
        Ok(Some(Appended {
            position: be_u64(&value, "idempotency key")?,
            stream_version: be_u64(&value[8..], "idempotency key")?,
            event_id: Uuid::from_bytes(event_id),
            duplicate: false,
        }))
    }

    fn commit(&self, records: &[Record]) -> Result<(), StorageError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for record in records {
            let position = record.position.to_be_bytes();
            batch.insert(&record_key(record.position), record.stored_bytes());
            batch.insert(stream_key(&record.stream, record.stream_version), &position);
            if let Some(key) = &record.idempotency_key {
                let mut value = Vec::with_capacity(32);
                value.extend_from_slice(&position);
                value.extend_from_slice(&record.stream_version.to_be_bytes());
                value.extend_from_slice(record.event_id.as_bytes());
                batch.insert(prefixed(b'i', key), value);
            }
        }
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&last.position.to_be_bytes());
        head.extend_from_slice(&last.hash.0);
        batch.insert(HEAD_KEY, head);
        // One batch: sled applies it atomically, and recovery never shows
        // part of it. The flush then fsyncs sled's log before anyone is told.
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn read_all(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in self
            .tree
            .range(record_key(from)..=record_key(to))
            .take(limit)
        {
            let (key, value) = entry?;
            let position = be_u64(&key[1..], "record key")?;
            out.push(SledBackend::decode(position, &value)?);
        }
        Ok(out)
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_position: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::new();
        let range = stream_key(stream, from_version)..=stream_key(stream, u64::MAX);
        for entry in self.tree.range(range) {
            if out.len() >= limit {
                break;
            }
            let (_, value) = entry?;
            let position = be_u64(&value, "stream index")?;
            if position > max_position {
                break;
            }
            let bytes = self.tree.get(record_key(position))?.ok_or_else(|| {
                corrupt(
                    format!("stream index of {stream:?}"),
                    format!("record {position} is missing"),
                    Some(position),
                )
            })?;
            out.push(SledBackend::decode(position, &bytes)?);
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
        let db = sled::Config::new()
            .path(&path)
            // The writer flushes every group itself; a background flusher
            // would add nothing but a thread that outlives `close`.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                // sled reports its directory lock only as an I/O error with
                // this message (sled 0.34, pinned by the workspace); the
                // lock-test pins the behaviour.
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    OpenError::Locked { path: path.clone() }
                }
                other => storage(other.into()),
            })?;
        let tree = db.open_tree(TREE).map_err(|e| storage(e.into()))?;
        let backend = SledBackend { db, tree };
        let head = backend.load_head().map_err(storage)?;
        let core = Core::start(backend, head, config).map_err(OpenError::Thread)?;
        Ok(SledStore { core, path })
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pauses the writer until the returned guard is dropped; see
    /// [`WriterPause`].
    pub async fn pause_writer(&self) -> Result<WriterPause, AppendError> {
        self.core.pause().await
    }

    /// Finishes queued work, stops the writer and releases the directory, so
    /// it can be reopened at once.
    pub async fn close(self) {
        self.core.close().await;
    }
}

crate::store::delegate_event_store!(SledStore);
