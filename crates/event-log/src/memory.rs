//! An in-memory event store with the same writer, chain and semantics as the
//! sled one, for other crates' tests and for benchmarks without durability.
//! It persists nothing: a process exit loses everything.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use crate::error::{AppendError, StorageError};
use crate::record::{Appended, Head, Record};
use crate::store::StoreConfig;
use crate::writer::{Backend, Core, WriterPause};

#[derive(Default)]
struct Data {
    /// Record at position p is at index p - 1.
    records: Vec<Record>,
    /// Positions of each stream's records, by version - 1.
    streams: HashMap<String, Vec<u64>>,
    keys: HashMap<String, Appended>,
}

#[derive(Default)]
pub(crate) struct MemoryBackend {
    data: RwLock<Data>,
}

impl MemoryBackend {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError> {
        Ok(self
            .read()
            .streams
            .get(stream)
            .map_or(0, |v| v.len() as u64))
    }

    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError> {
        Ok(self.read().keys.get(key).copied())
    }

    fn commit(&self, records: Vec<Record>, _stored: Vec<Vec<u8>>) -> Result<(), StorageError> {
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            data.streams
                .entry(record.stream.clone())
                .or_default()
                .push(record.position);
            if let Some(key) = &record.idempotency_key {
                data.keys.insert(
                    key.clone(),
                    Appended {
                        position: record.position,
                        stream_version: record.stream_version,
                        event_id: record.event_id,
                        duplicate: false,
                    },
                );
            }
            data.records.push(record);
        }
        Ok(())
    }

    fn read_all(&self, from: u64, to: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        let data = self.read();
        let start = usize::try_from(from - 1).unwrap_or(usize::MAX);
        let end = usize::try_from(to)
            .unwrap_or(usize::MAX)
            .min(data.records.len());
        Ok(data
            .records
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .take(limit)
            .cloned()
            .collect())
    }

    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_position: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        let data = self.read();
        let Some(positions) = data.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(from_version - 1).unwrap_or(usize::MAX);
        Ok(positions
            .iter()
            .skip(skip)
            .take_while(|&&p| p <= max_position)
            .take(limit)
            .filter_map(|&p| data.records.get(usize::try_from(p - 1).ok()?).cloned())
            .collect())
    }
}

/// An in-memory [`crate::EventStore`]: same group-commit writer, hash chain,
/// idempotency and concurrency checks as [`crate::SledStore`], nothing on
/// disk.
pub struct MemoryStore {
    core: Core<MemoryBackend>,
    vault: crate::vault::KeyVault,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("head", &self.core.head())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with the default [`StoreConfig`].
    ///
    /// # Panics
    /// When the OS refuses to start the writer thread.
    pub fn new() -> MemoryStore {
        MemoryStore::with_config(StoreConfig::default())
    }

    /// An empty store with the given configuration.
    ///
    /// # Panics
    /// When the OS refuses to start the writer thread.
    pub fn with_config(config: StoreConfig) -> MemoryStore {
        // A test helper that cannot start a thread has nothing sensible to
        // return, so this panics rather than burden every test with a Result.
        #[allow(clippy::expect_used)]
        let core = Core::start(MemoryBackend::default(), Head::EMPTY, config)
            .expect("start the event log writer thread");
        MemoryStore {
            core,
            vault: crate::vault::KeyVault::in_memory(),
        }
    }

    /// Pauses the writer until the returned guard is dropped; see
    /// [`WriterPause`].
    pub async fn pause_writer(&self) -> Result<WriterPause, AppendError> {
        self.core.pause().await
    }

    /// Finishes queued work and stops the writer.
    pub async fn close(self) {
        self.core.close().await;
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

crate::store::delegate_event_store!(MemoryStore, local_files: false);
