//! The storage trait every backend implements and the writer's configuration;
//! no backend code lives here.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{AppendError, StorageError};
use crate::record::{Appended, Head, NewRecord, Record};
use crate::vault::KeyVault;

/// An append-only, hash-chained event log.
///
/// Callers are generic over `S: EventStore`, so a PostgreSQL backend can
/// replace sled without touching them. Every method takes `&self`; share a
/// store between tasks with an `Arc`.
pub trait EventStore: Send + Sync {
    /// Appends a batch atomically and answers once it is durable.
    ///
    /// The batch is queued when `append` is *called* (not when the future is
    /// first polled), so [`AppendError::Busy`] comes back without waiting and
    /// submission order is call order. Dropping the future does not withdraw
    /// a queued batch.
    ///
    /// All new records of the batch are written and flushed together, or
    /// none. A conflicting expected version fails the whole batch with
    /// [`AppendError::Conflict`]. A record whose idempotency key is already
    /// stored (or appears earlier in the same group) is not written again:
    /// its [`Appended`] carries the original position and `duplicate: true`,
    /// and its expected version is not checked (a retry of a request that
    /// succeeded must not turn into a conflict).
    fn append(
        &self,
        batch: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<Appended>, AppendError>> + Send;

    /// Reads up to `limit` durable records in position order, starting at
    /// position `from` (inclusive; 0 is treated as 1).
    fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send;

    /// Reads up to `limit` durable records of one stream in version order,
    /// starting at stream version `from_version` (inclusive).
    fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send;

    /// The last durable position and hash.
    fn head(&self) -> impl Future<Output = Result<Head, StorageError>> + Send;

    /// A receiver of the durable head position. It changes after every
    /// durable group; readers then read from their own position, so a slow
    /// reader never holds up the writer.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Writes records that already carry positions, ids, times and hashes
    /// (an import). They must continue the head exactly; the caller has
    /// verified them. Not for normal appends.
    fn restore(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Head, AppendError>> + Send;

    /// The keys that seal personal content in this store's payloads. Keys
    /// made by [`KeyVault::seal`] are synced before the next group is
    /// written, so a durable record never names a key that is not.
    fn vault(&self) -> &KeyVault;

    /// Whether the log is files on this machine that outlive the process
    /// (the sled store), so that state derived from it may be kept beside
    /// it (projection snapshots). False for a log in memory or in a shared
    /// database.
    fn local_files(&self) -> bool {
        false
    }
}

/// How the writer groups and queues appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The writer stops adding batches to a group once it holds this many
    /// records (a single larger batch still goes in whole). 1 means one
    /// flush per batch, the benchmark baseline.
    pub max_group_records: usize,
    /// How long the writer waits for more batches after the first one of a
    /// group. Zero (the default) takes only what is already queued, i.e.
    /// whatever arrived while the previous flush ran.
    pub max_group_wait: Duration,
    /// Batches that may wait in the queue; beyond it appends get
    /// [`AppendError::Busy`].
    pub queue_capacity: usize,
    /// The most memory sled's page cache may hold (sled's own default is
    /// 1 GiB): with the recent-record cache (at most 16 MiB), the bound on
    /// what the log keeps in memory however long it grows.
    pub cache_capacity_bytes: u64,
    /// The sled store closes a segment file of records once it has reached
    /// this size and starts the next (a group is never split).
    pub segment_bytes: u64,
    /// The sled store compresses its segments' chunks with zstd where that
    /// pays (on by default). Off, it writes them as they are, as releases
    /// before 2026-12-03 did; either way it reads both.
    pub compress: bool,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_group_records: 1024,
            max_group_wait: Duration::ZERO,
            queue_capacity: 4096,
            cache_capacity_bytes: 64 * 1024 * 1024,
            segment_bytes: 256 * 1024 * 1024,
            compress: true,
        }
    }
}

impl StoreConfig {
    /// One flush per batch: no group commit.
    pub fn one_flush_per_batch() -> StoreConfig {
        StoreConfig {
            max_group_records: 1,
            ..StoreConfig::default()
        }
    }
}

/// Implements [`EventStore`] for a store type that wraps a writer `Core` in a
/// field named `core`, so every backend shares one implementation.
macro_rules! delegate_event_store {
    ($store:ty, local_files: $local:expr) => {
        impl $crate::store::EventStore for $store {
            fn append(
                &self,
                batch: Vec<$crate::record::NewRecord>,
            ) -> impl std::future::Future<
                Output = Result<Vec<$crate::record::Appended>, $crate::error::AppendError>,
            > + Send {
                self.core.append(batch)
            }

            async fn read_all(
                &self,
                from: u64,
                limit: usize,
            ) -> Result<Vec<$crate::record::Record>, $crate::error::StorageError> {
                self.core.read_all(from, limit)
            }

            async fn read_stream(
                &self,
                stream: &str,
                from_version: u64,
                limit: usize,
            ) -> Result<Vec<$crate::record::Record>, $crate::error::StorageError> {
                self.core.read_stream(stream, from_version, limit)
            }

            async fn head(&self) -> Result<$crate::record::Head, $crate::error::StorageError> {
                Ok(self.core.head())
            }

            fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
                self.core.subscribe()
            }

            fn restore(
                &self,
                records: Vec<$crate::record::Record>,
            ) -> impl std::future::Future<
                Output = Result<$crate::record::Head, $crate::error::AppendError>,
            > + Send {
                self.core.restore(records)
            }

            fn vault(&self) -> &$crate::vault::KeyVault {
                &self.vault
            }

            fn local_files(&self) -> bool {
                $local
            }
        }
    };
}
pub(crate) use delegate_event_store;
