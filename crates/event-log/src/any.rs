//! [`AnyStore`]: the sled or the PostgreSQL store, chosen at run time, for
//! code that serves either from one build (the `baton` CLI's offline
//! commands, the test harness). It only delegates; `baton serve` runs the
//! server on the concrete store type instead.

use std::future::Future;

use futures_util::future::Either;
use tokio::sync::watch;

use std::time::Duration;

use crate::error::{AppendError, StorageError};
use crate::lease::{Claim, Fence, Leases};
use crate::postgres::PgStore;
use crate::record::{Appended, Head, NewRecord, Record};
use crate::sled_store::SledStore;
use crate::store::EventStore;
use crate::vault::KeyVault;

/// One of the event stores, chosen at run time.
#[derive(Debug)]
pub enum AnyStore {
    /// The embedded sled log in a directory.
    Sled(SledStore),
    /// One shard of a PostgreSQL database.
    Postgres(PgStore),
}

impl AnyStore {
    /// Finishes queued work and lets go of the store (sled's directory
    /// lock, PostgreSQL's connections).
    pub async fn close(self) {
        match self {
            AnyStore::Sled(store) => store.close().await,
            AnyStore::Postgres(store) => store.close().await,
        }
    }

    /// Which store this is, for messages: `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Sled(_) => "sled",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

impl From<SledStore> for AnyStore {
    fn from(store: SledStore) -> AnyStore {
        AnyStore::Sled(store)
    }
}

impl From<PgStore> for AnyStore {
    fn from(store: PgStore) -> AnyStore {
        AnyStore::Postgres(store)
    }
}

// Every method hands back the inner store's future, picked with `Either`
// (through the generic helpers below, so it carries the trait's declared
// `Send` bound), rather than awaiting it in an `async fn`: `append` and
// `restore` thus still queue their batch when called, not when first
// polled, as the trait promises.
impl EventStore for AnyStore {
    fn append(
        &self,
        batch: Vec<NewRecord>,
    ) -> impl Future<Output = Result<Vec<Appended>, AppendError>> + Send {
        match self {
            AnyStore::Sled(s) => Either::Left(append_to(s, batch)),
            AnyStore::Postgres(s) => Either::Right(append_to(s, batch)),
        }
    }

    fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send {
        match self {
            AnyStore::Sled(s) => Either::Left(read_all_of(s, from, limit)),
            AnyStore::Postgres(s) => Either::Right(read_all_of(s, from, limit)),
        }
    }

    fn read_stream<'a, 'b>(
        &'a self,
        stream: &'b str,
        from_version: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send + use<'a, 'b> {
        match self {
            AnyStore::Sled(s) => Either::Left(read_stream_of(s, stream, from_version, limit)),
            AnyStore::Postgres(s) => Either::Right(read_stream_of(s, stream, from_version, limit)),
        }
    }

    fn head(&self) -> impl Future<Output = Result<Head, StorageError>> + Send {
        match self {
            AnyStore::Sled(s) => Either::Left(head_of(s)),
            AnyStore::Postgres(s) => Either::Right(head_of(s)),
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        match self {
            AnyStore::Sled(s) => s.subscribe(),
            AnyStore::Postgres(s) => s.subscribe(),
        }
    }

    fn restore(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Head, AppendError>> + Send {
        match self {
            AnyStore::Sled(s) => Either::Left(restore_to(s, records)),
            AnyStore::Postgres(s) => Either::Right(restore_to(s, records)),
        }
    }

    fn vault(&self) -> &KeyVault {
        match self {
            AnyStore::Sled(s) => s.vault(),
            AnyStore::Postgres(s) => s.vault(),
        }
    }

    fn local_files(&self) -> bool {
        match self {
            AnyStore::Sled(s) => s.local_files(),
            AnyStore::Postgres(s) => s.local_files(),
        }
    }
}

fn append_to<S: EventStore>(
    store: &S,
    batch: Vec<NewRecord>,
) -> impl Future<Output = Result<Vec<Appended>, AppendError>> + Send + '_ {
    store.append(batch)
}

fn read_all_of<S: EventStore>(
    store: &S,
    from: u64,
    limit: usize,
) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send + '_ {
    store.read_all(from, limit)
}

fn read_stream_of<'a, 'b, S: EventStore>(
    store: &'a S,
    stream: &'b str,
    from_version: u64,
    limit: usize,
) -> impl Future<Output = Result<Vec<Record>, StorageError>> + Send + use<'a, 'b, S> {
    store.read_stream(stream, from_version, limit)
}

fn head_of<S: EventStore>(
    store: &S,
) -> impl Future<Output = Result<Head, StorageError>> + Send + '_ {
    store.head()
}

fn restore_to<S: EventStore>(
    store: &S,
    records: Vec<Record>,
) -> impl Future<Output = Result<Head, AppendError>> + Send + '_ {
    store.restore(records)
}

/// Compile-time check: opening, migrating and using the stores are `Send`
/// futures, so a task that does it can be spawned (a regression here once
/// came from sqlx's `RawSql::execute`; see `postgres::apply_migrations`).
#[allow(dead_code)]
fn futures_are_send(store: &'static AnyStore, owned: AnyStore, config: crate::PgStoreConfig) {
    fn send<T: Send>(_: T) {}
    send(PgStore::connect(config));
    send(crate::postgres::migrate(""));
    send(store.append(Vec::new()));
    send(store.read_all(1, 1));
    send(store.read_stream("", 1, 1));
    send(store.head());
    send(store.restore(Vec::new()));
    send(owned.close());
}

/// The embedded log serves one node: it holds no lease, and a node on it
/// never claims one (`baton serve` on sled runs as the owner, always).
fn no_leases() -> StorageError {
    StorageError::Engine("the embedded sled log holds no leases: it serves one node".into())
}

impl Leases for AnyStore {
    async fn claim(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
        held: Option<u64>,
    ) -> Result<Claim, StorageError> {
        match self {
            AnyStore::Sled(_) => Err(no_leases()),
            AnyStore::Postgres(pg) => pg.claim(node, address, ttl, held).await,
        }
    }

    async fn release(&self, node: &str) -> Result<(), StorageError> {
        match self {
            AnyStore::Sled(_) => Ok(()),
            AnyStore::Postgres(pg) => pg.release(node).await,
        }
    }

    async fn lease_of(&self, shard: i32) -> Result<Option<Claim>, StorageError> {
        match self {
            AnyStore::Sled(_) => Err(no_leases()),
            AnyStore::Postgres(pg) => pg.lease_of(shard).await,
        }
    }

    fn set_fence(&self, fence: Fence) {
        if let AnyStore::Postgres(pg) = self {
            pg.set_fence(fence);
        }
    }

    fn fence(&self) -> watch::Receiver<Fence> {
        match self {
            // Never changes: nothing refuses the embedded log's appends.
            AnyStore::Sled(_) => watch::Sender::new(Fence::Follower).subscribe(),
            AnyStore::Postgres(pg) => pg.fence(),
        }
    }

    fn fenced_appends(&self) -> u64 {
        match self {
            AnyStore::Sled(_) => 0,
            AnyStore::Postgres(pg) => pg.fenced_appends(),
        }
    }
}
