//! The PostgreSQL event store, for running Baton on more than one machine
//! (`docs/scale-out.md`). One [`PgStore`] serves one shard; several shards,
//! and several stores of one shard (on several nodes), share the tables.
//!
//! Unlike the sled and memory stores, positions and hashes are not assigned
//! by one in-process writer: each group's transaction locks the shard's head
//! row (`SELECT … FOR UPDATE`), reads the committed state it needs, stages
//! the group on top of it with the same code as the in-process writer,
//! inserts it, moves the head and commits. The lock makes appends to a shard
//! commit one after another in position order, so positions have no gaps and
//! a reader never sees position `n + 1` before `n`, whichever node wrote
//! them. A record is durable when its COMMIT returns (`synchronous_commit`
//! is forced on for the store's connections).
//!
//! The store also holds the shard's lease ([`Leases`]): the owner's appends
//! carry its epoch, and a trigger on the head row refuses one whose epoch is
//! not the live lease's, so a node that was paused past its lease cannot
//! write once another has taken over. The content keys live in the database
//! too (`event_log_keys`), written with the first group whose records they
//! seal, so every node of the shard opens what any node sealed.

#[cfg(feature = "pg-testing")]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, PgConnection, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{corrupt, AppendError, StorageError};
use crate::lease::{Claim, Fence, Leases};
use crate::record::{Appended, ChainHash, Head, NewRecord, Record};
use crate::store::{EventStore, StoreConfig};
use crate::vault::{Entry, Erasure, KeyId, KeyVault};
use crate::writer::{
    AppendAnswer, AppendReply, Committed, Request, Stage, StageError, Stopped, WriterPause,
};

/// The schema migrations, in order, embedded in the binary. A migration is
/// never edited once released; a change is a new file.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "event_log",
        include_str!("../migrations/0001_event_log.sql"),
    ),
    (2, "leases", include_str!("../migrations/0002_leases.sql")),
    (3, "keys", include_str!("../migrations/0003_keys.sql")),
    (
        4,
        "keys_by_subject",
        include_str!("../migrations/0004_keys_by_subject.sql"),
    ),
];

/// The SQLSTATE the fence trigger raises (`0002_leases.sql`).
const FENCED: &str = "BTFNC";

/// How long a connection may sit inside a transaction doing nothing before
/// the server ends it: a node frozen mid-append (SIGSTOP, a VM pause) must
/// not hold the shard's head row, and with it every node's appends, for
/// longer than this.
const IDLE_IN_TRANSACTION: &str = "5000";

/// Key of the transaction-scoped advisory lock that serialises migrations
/// (`pg_advisory_xact_lock`), so nodes started together migrate once.
/// Transaction-scoped, so it also holds behind a transaction-pooling proxy.
const MIGRATION_LOCK: i64 = 0x6261_746f_6e5f_6d67;
/// The advisory lock (with a shard) under which erasure notes for that
/// shard are written.
const ERASURE_NOTES_LOCK: i32 = 0x6274_6e65;

/// Columns of `event_log_records` in the order [`decode`] reads them.
const COLUMNS: &str = "position, stream, stream_version, event_id, recorded_at_ms, type_name, \
     schema_version, causation_id, correlation_id, idempotency_key, payload, prev_hash, hash";

/// How a [`PgStore`] connects and groups its appends.
#[derive(Clone)]
pub struct PgStoreConfig {
    /// `postgres://user[:password]@host[:port]/database`. Never printed with
    /// its password (see the `Debug` implementation).
    pub url: String,
    /// The shard this store appends to and reads from.
    pub shard: i32,
    /// Grouping and queueing, as for the other stores
    /// (`cache_capacity_bytes` does not apply).
    pub store: StoreConfig,
    /// Most connections the store's pool opens (appends use one at a time,
    /// reads the rest); the notification listener has one of its own.
    pub max_connections: u32,
    /// How long to wait for a connection before an operation fails.
    pub connect_timeout: Duration,
    /// How often the durable head is read from the database, so that
    /// [`EventStore::subscribe`] sees other nodes' appends even when a
    /// notification is lost.
    pub poll_interval: Duration,
    /// Whether to LISTEN for other nodes' append notifications. Turn it off
    /// behind a proxy that cannot LISTEN (PgBouncer's transaction pooling);
    /// polling alone then moves the head.
    pub listen: bool,
    /// Whether [`PgStore::connect`] applies missing migrations (`baton
    /// serve` does). Without, it refuses a database whose schema is behind
    /// this build (`PgError::SchemaBehind`): the offline commands, which
    /// must not change a database they were only pointed at.
    pub migrate: bool,
}

impl PgStoreConfig {
    /// Shard 0 of the database at `url`, defaults otherwise.
    pub fn new(url: impl Into<String>) -> PgStoreConfig {
        PgStoreConfig {
            url: url.into(),
            shard: 0,
            store: StoreConfig::default(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            listen: true,
            migrate: true,
        }
    }

    /// The same configuration for another shard.
    pub fn with_shard(mut self, shard: i32) -> PgStoreConfig {
        self.shard = shard;
        self
    }

    /// The same configuration, connecting without migrating (see
    /// [`PgStoreConfig::migrate`]).
    pub fn without_migrating(mut self) -> PgStoreConfig {
        self.migrate = false;
        self
    }
}

impl std::fmt::Debug for PgStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStoreConfig")
            .field("url", &redacted(&self.url))
            .field("shard", &self.shard)
            .field("store", &self.store)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("listen", &self.listen)
            .field("migrate", &self.migrate)
            .finish()
    }
}

/// `url` with any password replaced by `***`, for messages and logs.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Why the PostgreSQL store could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL is not a PostgreSQL connection URL.
    #[error("invalid PostgreSQL URL {url}: {source}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why it was refused.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server could not be reached or refused the connection.
    #[error("could not connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A migration failed; it was rolled back with the others of its run.
    #[error("migrating the event-log schema failed: {0}")]
    Migrate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database was migrated by a newer Baton than this one.
    #[error(
        "the database's event-log schema is at version {found}, newer than this \
         build knows (version {known}); run a Baton at least as new"
    )]
    SchemaTooNew {
        /// The version found in the database.
        found: i32,
        /// The last version this build knows.
        known: i32,
    },
    /// The database lacks migrations this build needs, and the store was
    /// asked not to apply them.
    #[error(
        "the database's event-log schema is at version {found}, older than this \
         build needs (version {known}); run `baton migrate` first"
    )]
    SchemaBehind {
        /// The version found in the database (0: no schema at all).
        found: i32,
        /// The last version this build knows.
        known: i32,
    },
    /// The store's state could not be read.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn engine(e: sqlx::Error) -> StorageError {
    StorageError::Engine(Box::new(e))
}

fn connect_options(url: &str) -> Result<PgConnectOptions, PgError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| PgError::InvalidUrl {
        url: redacted(url),
        source: Box::new(e),
    })?;
    // Forced per connection, whatever the server's defaults say: an append
    // is answered only after its COMMIT is flushed to the WAL, and the
    // head-row lock relies on each statement seeing what committed before
    // it (READ COMMITTED), not a snapshot taken at the transaction's start.
    Ok(options.application_name("baton-event-log").options([
        ("synchronous_commit", "on"),
        // A space inside a startup option is escaped with a backslash.
        ("default_transaction_isolation", "read\\ committed"),
        ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
    ]))
}

/// Applies the embedded migrations that the database at `url` lacks, in one
/// transaction under an advisory lock, and returns how many it applied.
/// Idempotent, and safe to run from several nodes at once. `baton migrate`
/// calls it; [`PgStore::connect`] calls it too.
pub async fn migrate(url: &str) -> Result<usize, PgError> {
    let options = connect_options(url)?;
    migrate_with(&options, url).await
}

/// Refuses a database whose schema is not the one this build knows, without
/// changing anything.
async fn check_schema(options: &PgConnectOptions, url: &str) -> Result<(), PgError> {
    let mut conn = connection(options, url).await?;
    let found = async {
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass('event_log_migrations') IS NOT NULL")
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            return Ok(0);
        }
        sqlx::query_scalar::<_, i32>("SELECT COALESCE(max(version), 0) FROM event_log_migrations")
            .fetch_one(&mut conn)
            .await
    }
    .await;
    let _ = conn.close().await;
    let found = found.map_err(engine)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    match found.cmp(&known) {
        std::cmp::Ordering::Less => Err(PgError::SchemaBehind { found, known }),
        std::cmp::Ordering::Greater => Err(PgError::SchemaTooNew { found, known }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// One connection of its own, outside the store's pools.
async fn connection(options: &PgConnectOptions, url: &str) -> Result<PgConnection, PgError> {
    PgConnection::connect_with(options)
        .await
        .map_err(|e| PgError::Connect {
            url: redacted(url),
            source: Box::new(e),
        })
}

async fn migrate_with(options: &PgConnectOptions, url: &str) -> Result<usize, PgError> {
    let mut conn = connection(options, url).await?;
    let applied = apply_migrations(&mut conn).await;
    // Closing politely is best effort: the outcome is decided already.
    let _ = conn.close().await;
    applied
}

async fn apply_migrations(conn: &mut PgConnection) -> Result<usize, PgError> {
    let fail = |e: sqlx::Error| PgError::Migrate(Box::new(e));
    let mut tx = conn.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    // `Executor::execute` (a boxed `Send` future) rather than
    // `RawSql::execute` (an `async fn` generic over the executor, whose
    // future rustc cannot prove `Send` for every lifetime).
    (&mut *tx)
        .execute(sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS event_log_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
        ))
        .await
        .map_err(fail)?;
    let current: i32 =
        sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM event_log_migrations")
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(PgError::SchemaTooNew {
            found: current,
            known,
        });
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        (&mut *tx).execute(sqlx::raw_sql(sql)).await.map_err(fail)?;
        sqlx::query("INSERT INTO event_log_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        applied += 1;
    }
    tx.commit().await.map_err(fail)?;
    Ok(applied)
}

/// The notification channel of a shard's appends; the payload is the new
/// head position.
fn channel(shard: i32) -> String {
    format!("baton_event_log_{shard}")
}

/// What the store's tasks and its handle share.
struct Shared {
    pool: PgPool,
    /// One connection of its own for the lease, so that a claim never
    /// waits behind the store's reads and appends for a connection.
    lease_pool: PgPool,
    shard: i32,
    /// The highest head position known to be committed.
    durable: watch::Sender<u64>,
    stopped: Stopped,
    groups: AtomicU64,
    vault: Arc<KeyVault>,
    /// The last key and erasure (`seq`) of the database this node's vault
    /// holds, and the last position read after they were loaded.
    keys_seen: std::sync::Mutex<KeysSeen>,
    /// Held across a load of keys and erasures: two loads at once could
    /// absorb a key after the other forgot it.
    keys_loading: tokio::sync::Mutex<()>,
    /// What this node's appends carry (see [`Fence`]).
    fence: watch::Sender<Fence>,
    /// Appends the database refused as stale.
    fenced: AtomicU64,
}

impl Shared {
    fn stopped_error(&self) -> AppendError {
        self.stopped
            .error("the event log writer task exited unexpectedly")
    }

    fn stop(&self, cause: StorageError) -> Arc<StorageError> {
        self.stopped.stop(cause)
    }

    fn is_stopped(&self) -> bool {
        self.stopped.is_stopped()
    }

    /// The epoch this node's next write carries, or the refusal when it is
    /// stepping down.
    fn write_epoch(&self) -> Result<Option<u64>, AppendError> {
        match *self.fence.borrow() {
            Fence::Follower => Ok(None),
            Fence::Owner(epoch) => Ok(Some(epoch)),
            Fence::Closed => Err(AppendError::Fenced { epoch: None }),
        }
    }

    /// Counts a write the database refused under `epoch` and closes the
    /// fence, unless the node has moved on to another epoch meanwhile.
    fn refused(&self, epoch: Option<u64>) -> AppendError {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        self.fence.send_if_modified(|fence| {
            if epoch.is_some_and(|e| *fence == Fence::Owner(e)) {
                *fence = Fence::Closed;
                true
            } else {
                false
            }
        });
        AppendError::Fenced { epoch }
    }

    /// Moves the watched head forward (never back: a notification or a poll
    /// may report an older head than an append of this store already did).
    fn publish(&self, position: u64) {
        self.durable.send_if_modified(|current| {
            if position > *current {
                *current = position;
                true
            } else {
                false
            }
        });
    }

    async fn head(&self) -> Result<Head, StorageError> {
        let row = sqlx::query("SELECT position, hash FROM event_log_heads WHERE shard = $1")
            .bind(self.shard)
            .fetch_optional(&self.pool)
            .await
            .map_err(engine)?;
        // A shard nobody has served yet (opened without migrating, which
        // writes nothing): empty.
        row.map_or(
            Ok(Head {
                position: 0,
                hash: ChainHash::ZERO,
            }),
            |row| decode_head(&row),
        )
    }
}

/// The committed state a group is staged on, fetched inside its transaction
/// while the head row is locked (so nothing can commit under it).
struct Fetched {
    streams: HashMap<String, u64>,
    keys: HashMap<String, Appended>,
}

impl Committed for Fetched {
    fn stream_version(&self, stream: &str) -> Result<u64, StorageError> {
        self.streams.get(stream).copied().ok_or_else(|| {
            // Every stream of the group is fetched; this is a bug, not data.
            corrupt(
                format!("stream {stream:?}"),
                "its version was not fetched",
                None,
            )
        })
    }

    fn idempotent(&self, key: &str) -> Result<Option<Appended>, StorageError> {
        Ok(self.keys.get(key).copied())
    }
}

/// The PostgreSQL-backed [`EventStore`] for one shard.
///
/// Same semantics as [`crate::SledStore`]: atomic batches, optimistic
/// concurrency per stream, idempotency keys, group commit, a durable head to
/// subscribe to. Several `PgStore`s (in one process or on several nodes) may
/// serve the same shard: the head-row lock orders their appends, and each
/// store's [`EventStore::subscribe`] also follows the others' (LISTEN/NOTIFY
/// as a hint, plus polling).
///
/// Needs a tokio runtime: [`PgStore::connect`] spawns the store's writer and
/// follower tasks on the current one.
pub struct PgStore {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    /// Dropping it (with the store) stops the follower task.
    _follower_stop: oneshot::Sender<()>,
    writer: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
    vault: Arc<KeyVault>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("shard", &self.shared.shard)
            .field("durable", &*self.shared.durable.borrow())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, applies any missing migrations, creates the shard's head
    /// row if needed and starts the writer and follower tasks.
    pub async fn connect(config: PgStoreConfig) -> Result<PgStore, PgError> {
        let options = connect_options(&config.url)?;
        if config.migrate {
            migrate_with(&options, &config.url).await?;
        } else {
            check_schema(&options, &config.url).await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.connect_timeout)
            .connect_with(options.clone())
            .await
            .map_err(|e| PgError::Connect {
                url: redacted(&config.url),
                source: Box::new(e),
            })?;
        // The shard's head row, for appends; not by a store that must not
        // change the database (an empty shard reads as empty without it).
        if config.migrate {
            sqlx::query(
                "INSERT INTO event_log_heads (shard, position, hash) VALUES ($1, 0, $2) \
                 ON CONFLICT (shard) DO NOTHING",
            )
            .bind(config.shard)
            .bind(&ChainHash::ZERO.0[..])
            .execute(&pool)
            .await
            .map_err(engine)?;
        }
        let vault = Arc::new(KeyVault::kept_by_store());
        let (durable, _) = watch::channel(0);
        let lease_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options.clone());
        let shared = Arc::new(Shared {
            pool,
            lease_pool,
            shard: config.shard,
            durable,
            stopped: Stopped::default(),
            groups: AtomicU64::new(0),
            vault: vault.clone(),
            keys_seen: std::sync::Mutex::new(KeysSeen::default()),
            keys_loading: tokio::sync::Mutex::new(()),
            fence: watch::Sender::new(Fence::Follower),
            fenced: AtomicU64::new(0),
        });

        // LISTEN before reading the head, so that no append falls between
        // the two. The listener has a pool of its own, so it never holds
        // one of the connections that appends and reads need.
        let listening = if config.listen {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(config.connect_timeout)
                .connect_lazy_with(options);
            let listener =
                start_listener(&pool, config.shard)
                    .await
                    .map_err(|e| PgError::Connect {
                        url: redacted(&config.url),
                        source: format!(
                            "LISTEN failed ({e}); behind a proxy that cannot LISTEN, \
                         turn `listen` off and rely on polling"
                        )
                        .into(),
                    })?;
            Some((pool, listener))
        } else {
            None
        };
        shared.publish(shared.head().await?.position);
        shared.load_keys(u64::MAX).await?;

        let (tx, rx) = mpsc::channel(config.store.queue_capacity.max(1));
        let writer = tokio::spawn(run_writer(shared.clone(), rx, config.store.clone()));
        let (follower_stop, stop) = oneshot::channel();
        let follower = tokio::spawn(follow(
            shared.clone(),
            listening,
            config.poll_interval,
            stop,
        ));
        Ok(PgStore {
            shared,
            tx,
            _follower_stop: follower_stop,
            writer,
            follower,
            vault,
        })
    }

    /// The shard this store serves.
    pub fn shard(&self) -> i32 {
        self.shared.shard
    }

    /// Groups committed by this store since it was opened (each one
    /// transaction, one COMMIT).
    pub fn groups(&self) -> u64 {
        self.shared.groups.load(Ordering::Relaxed)
    }

    /// Pauses this store's writer until the returned guard is dropped; see
    /// [`WriterPause`]. Other stores of the shard are not held up.
    pub async fn pause_writer(&self) -> Result<WriterPause, AppendError> {
        let (ack, acked) = oneshot::channel();
        let (guard, resume) = WriterPause::channel();
        self.send(Request::Pause { ack, resume })?;
        acked.await.map_err(|_| self.shared.stopped_error())?;
        Ok(guard)
    }

    /// Finishes queued work, stops the store's tasks and closes its
    /// connections.
    pub async fn close(self) {
        let PgStore {
            shared,
            tx,
            _follower_stop,
            writer,
            follower,
            vault: _,
        } = self;
        drop(tx);
        drop(_follower_stop);
        // Each task returns on its own once told; a panic in one has been
        // reported by the runtime already, and there is nothing to undo.
        let _ = writer.await;
        let _ = follower.await;
        shared.pool.close().await;
        shared.lease_pool.close().await;
    }

    fn send(&self, request: Request) -> Result<(), AppendError> {
        if self.shared.is_stopped() {
            return Err(self.shared.stopped_error());
        }
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(AppendError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.shared.stopped_error()),
        }
    }

    fn queue_append(&self, batch: Vec<NewRecord>) -> Result<Option<AppendAnswer>, AppendError> {
        if batch.is_empty() {
            return Ok(None);
        }
        for (index, record) in batch.iter().enumerate() {
            record
                .check()
                .and_then(|()| {
                    storable_text(
                        &record.stream,
                        &record.type_name,
                        record.idempotency_key.as_deref(),
                    )
                })
                .map_err(|reason| AppendError::InvalidRecord { index, reason })?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Append { batch, reply })?;
        Ok(Some(rx))
    }
}

impl PgStore {
    /// The dispatch cursor of `app` on this shard as the owner last stored
    /// it (JSON), or `None` when none was stored.
    pub async fn load_dispatch_cursor(&self, app: &str) -> Result<Option<String>, StorageError> {
        sqlx::query_scalar(
            "SELECT state::text FROM event_log_dispatch_cursors WHERE shard = $1 AND app = $2",
        )
        .bind(self.shared.shard)
        .bind(app)
        .fetch_optional(&self.shared.pool)
        .await
        .map_err(engine)
    }

    /// Stores the dispatch cursor of `app` (JSON) under this node's epoch:
    /// refused ([`AppendError::Fenced`]) unless the node owns the shard, by
    /// the database when its lease has moved on or lapsed.
    pub async fn store_dispatch_cursor(&self, app: &str, state: &str) -> Result<(), AppendError> {
        let Some(epoch) = self.shared.write_epoch()? else {
            return Err(AppendError::Fenced { epoch: None });
        };
        let stored = sqlx::query(
            "INSERT INTO event_log_dispatch_cursors (shard, app, state, epoch) \
             VALUES ($1, $2, $3::text::jsonb, $4) \
             ON CONFLICT (shard, app) DO UPDATE SET state = EXCLUDED.state, epoch = EXCLUDED.epoch",
        )
        .bind(self.shared.shard)
        .bind(app)
        .bind(state)
        .bind(to_i64(epoch))
        .execute(&self.shared.pool)
        .await
        .map_err(engine);
        match stored {
            Ok(_) => Ok(()),
            Err(e) if is_fenced(&e) => Err(self.shared.refused(Some(epoch))),
            Err(e) => Err(AppendError::WriterStopped { cause: Arc::new(e) }),
        }
    }
}

impl PgStore {
    /// Copies every key of `vault` (a sled log's, moving to PostgreSQL)
    /// into the shard's keys table, beside an import of its records;
    /// returns how many keys were new.
    pub async fn import_keys(&self, vault: &KeyVault) -> Result<usize, StorageError> {
        let keys = vault.entries();
        let mut tx = self.shared.pool.begin().await.map_err(engine)?;
        let before: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_log_keys WHERE shard = $1")
                .bind(self.shared.shard)
                .fetch_one(&mut *tx)
                .await
                .map_err(engine)?;
        insert_keys(&mut tx, self.shared.shard, &keys).await?;
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM event_log_keys WHERE shard = $1")
            .bind(self.shared.shard)
            .fetch_one(&mut *tx)
            .await
            .map_err(engine)?;
        tx.commit().await.map_err(engine)?;
        self.shared.vault.absorb(keys);
        Ok(usize::try_from(after - before).unwrap_or(0))
    }
}

impl Leases for PgStore {
    async fn claim(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
        held: Option<u64>,
    ) -> Result<Claim, StorageError> {
        let mut tx = self.shared.lease_pool.begin().await.map_err(engine)?;
        // Taken when vacant or lapsed (a new epoch), renewed by the process
        // that holds it (the same epoch), taken back by a restarted holder
        // (a new epoch); left alone while another node's is live.
        sqlx::query(
            "INSERT INTO event_log_leases AS l (shard, node, epoch, expires_at, address) \
             VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3), $4) \
             ON CONFLICT (shard) DO UPDATE \
                SET epoch = CASE WHEN l.node = EXCLUDED.node AND l.epoch = $5 \
                                 THEN l.epoch ELSE l.epoch + 1 END, \
                    node = EXCLUDED.node, expires_at = EXCLUDED.expires_at, \
                    address = EXCLUDED.address \
              WHERE l.node = EXCLUDED.node OR l.expires_at <= clock_timestamp()",
        )
        .bind(self.shared.shard)
        .bind(node)
        .bind(ttl.as_secs_f64())
        .bind(address)
        .bind(held.map(to_i64))
        .execute(&mut *tx)
        .await
        .map_err(engine)?;
        let row = sqlx::query(LEASE_ROW)
            .bind(self.shared.shard)
            .fetch_one(&mut *tx)
            .await
            .map_err(engine)?;
        tx.commit().await.map_err(engine)?;
        let claim = lease_from_row(&row)?;
        Ok(Claim {
            mine: claim.holder == node && !claim.remaining.is_zero(),
            ..claim
        })
    }

    async fn lease_of(&self, shard: i32) -> Result<Option<Claim>, StorageError> {
        // On the store's pool: routed calls must not queue ahead of a claim.
        let row = sqlx::query(LEASE_ROW)
            .bind(shard)
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(engine)?;
        let Some(row) = row else { return Ok(None) };
        let claim = lease_from_row(&row)?;
        Ok((!claim.remaining.is_zero()).then_some(claim))
    }

    async fn release(&self, node: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE event_log_leases SET expires_at = clock_timestamp() \
             WHERE shard = $1 AND node = $2 AND expires_at > clock_timestamp()",
        )
        .bind(self.shared.shard)
        .bind(node)
        .execute(&self.shared.lease_pool)
        .await
        .map_err(engine)?;
        Ok(())
    }

    fn set_fence(&self, fence: Fence) {
        self.shared.fence.send_replace(fence);
    }

    fn fence(&self) -> watch::Receiver<Fence> {
        self.shared.fence.subscribe()
    }

    fn fenced_appends(&self) -> u64 {
        self.shared.fenced.load(Ordering::Relaxed)
    }
}

/// A shard's lease row, with how long it still runs by the database's clock.
const LEASE_ROW: &str = "SELECT node, epoch, address, \
        GREATEST(0, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::bigint) \
            AS remaining_ms \
     FROM event_log_leases WHERE shard = $1";

/// The lease as [`LEASE_ROW`] reads it, claimed by nobody.
fn lease_from_row(row: &sqlx::postgres::PgRow) -> Result<Claim, StorageError> {
    let epoch: i64 = row.try_get("epoch").map_err(engine)?;
    let remaining: i64 = row.try_get("remaining_ms").map_err(engine)?;
    Ok(Claim {
        holder: row.try_get("node").map_err(engine)?,
        epoch: u64::try_from(epoch)
            .map_err(|_| corrupt("lease".to_owned(), "negative epoch", None))?,
        address: row.try_get("address").map_err(engine)?,
        mine: false,
        remaining: Duration::from_millis(u64::try_from(remaining).unwrap_or(0)),
    })
}

/// PostgreSQL's `text` cannot hold a NUL character, which the other stores
/// accept; such a record is refused rather than altered.
fn storable_text(stream: &str, type_name: &str, key: Option<&str>) -> Result<(), &'static str> {
    let nul = |s: &str| s.contains('\0');
    if nul(stream) || nul(type_name) || key.is_some_and(nul) {
        return Err("a NUL character in the stream, type name or idempotency key (PostgreSQL text cannot hold it)");
    }
    Ok(())
}

impl EventStore for PgStore {
    fn append(
        &self,
        batch: Vec<NewRecord>,
    ) -> impl std::future::Future<Output = Result<Vec<Appended>, AppendError>> + Send {
        let queued = self.queue_append(batch);
        let shared = self.shared.clone();
        async move {
            match queued? {
                None => Ok(Vec::new()),
                Some(rx) => rx.await.unwrap_or_else(|_| Err(shared.stopped_error())),
            }
        }
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Everything committed is durable, and the head-row lock commits
        // positions in order: a reader never sees a later position without
        // the earlier ones, so there is no need to cap at a high-water mark.
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_log_records \
             WHERE shard = $1 AND position >= $2 ORDER BY position LIMIT $3"
        ))
        .bind(self.shared.shard)
        .bind(to_i64(from.max(1)))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.shared.pool)
        .await
        .map_err(engine)?;
        let records: Vec<Record> = rows.iter().map(decode).collect::<Result<_, _>>()?;
        if let Some(last) = records.last() {
            self.shared.load_keys(last.position).await?;
        }
        Ok(records)
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM event_log_records \
             WHERE shard = $1 AND stream = $2 AND stream_version >= $3 \
             ORDER BY stream_version LIMIT $4"
        ))
        .bind(self.shared.shard)
        .bind(stream)
        .bind(to_i64(from_version.max(1)))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.shared.pool)
        .await
        .map_err(engine)?;
        let records: Vec<Record> = rows.iter().map(decode).collect::<Result<_, _>>()?;
        if let Some(last) = records.iter().map(|r| r.position).max() {
            self.shared.load_keys(last).await?;
        }
        Ok(records)
    }

    async fn head(&self) -> Result<Head, StorageError> {
        self.shared.head().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    fn restore(
        &self,
        records: Vec<Record>,
    ) -> impl std::future::Future<Output = Result<Head, AppendError>> + Send {
        let (reply, rx) = oneshot::channel();
        let queued = if records.is_empty() {
            Ok(false)
        } else {
            self.send(Request::Restore { records, reply })
                .map(|()| true)
        };
        let shared = self.shared.clone();
        async move {
            if !queued? {
                return shared
                    .head()
                    .await
                    .map_err(|e| AppendError::WriterStopped { cause: Arc::new(e) });
            }
            rx.await.unwrap_or_else(|_| Err(shared.stopped_error()))
        }
    }

    fn vault(&self) -> &KeyVault {
        &self.vault
    }
}

/// Saturating: a limit or position beyond `i64::MAX` means "no bound".
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn decode_head(row: &PgRow) -> Result<Head, StorageError> {
    let position: i64 = row.try_get("position").map_err(engine)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(engine)?;
    let location = || "head".to_owned();
    Ok(Head {
        position: u64::try_from(position)
            .map_err(|_| corrupt(location(), "negative position", None))?,
        hash: ChainHash(
            hash.try_into()
                .map_err(|_| corrupt(location(), "hash is not 32 bytes", None))?,
        ),
    })
}

fn decode(row: &PgRow) -> Result<Record, StorageError> {
    let position: i64 = row.try_get(0).map_err(engine)?;
    let at = u64::try_from(position).ok();
    let location = format!("record at position {position}");
    let bad = |reason: &str| corrupt(location.clone(), reason, at);
    let unsigned = |n: i64, what: &str| u64::try_from(n).map_err(|_| bad(what));
    let hash = |bytes: Vec<u8>, what: &str| -> Result<ChainHash, StorageError> {
        Ok(ChainHash(bytes.try_into().map_err(|_| bad(what))?))
    };
    let get = |e: sqlx::Error| corrupt(location.clone(), e.to_string(), at);
    Ok(Record {
        position: unsigned(position, "negative position")?,
        stream: row.try_get(1).map_err(get)?,
        stream_version: unsigned(row.try_get(2).map_err(get)?, "negative stream version")?,
        event_id: row.try_get(3).map_err(get)?,
        recorded_at_ms: unsigned(row.try_get(4).map_err(get)?, "negative time")?,
        type_name: row.try_get(5).map_err(get)?,
        schema_version: u16::try_from(row.try_get::<i32, _>(6).map_err(get)?)
            .map_err(|_| bad("schema version out of range"))?,
        causation_id: row.try_get(7).map_err(get)?,
        correlation_id: row.try_get(8).map_err(get)?,
        idempotency_key: row.try_get(9).map_err(get)?,
        payload: row.try_get(10).map_err(get)?,
        prev_hash: hash(row.try_get(11).map_err(get)?, "prev_hash is not 32 bytes")?,
        hash: hash(row.try_get(12).map_err(get)?, "hash is not 32 bytes")?,
    })
}

// ------------------------------------------------------------------ writer

/// The store's writer task: takes what is queued, one transaction per group.
async fn run_writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Request>, config: StoreConfig) {
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match rx.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let first = match first {
            Request::Pause { ack, resume } => {
                if ack.send(()).is_ok() {
                    // Returns when the guard is dropped (the channel closes).
                    let _ = tokio::task::spawn_blocking(move || resume.recv()).await;
                }
                continue;
            }
            Request::Restore { records, reply } => {
                let result = restore(&shared, records).await;
                let stopped = matches!(result, Err(AppendError::WriterStopped { .. }));
                let _ = reply.send(result);
                if stopped {
                    return;
                }
                continue;
            }
            Request::Append { batch, reply } => (batch, reply),
        };
        let mut count = first.0.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + config.max_group_wait;
        while count < config.max_group_records {
            let next = match rx.try_recv() {
                Ok(request) => request,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(request)) => request,
                        Ok(None) | Err(_) => break,
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
        if !commit_group(&shared, group).await {
            // Queued requests are dropped with `rx`; their callers see the
            // closed reply channel and report the stored cause.
            return;
        }
    }
}

/// Writes one group in one transaction and answers its waiters. Returns
/// false when the writer must stop.
///
/// A failed transaction stops the writer, as a failed flush does on sled: a
/// lost connection leaves the COMMIT's outcome unknown, so nobody is told
/// anything but the failure, and callers retry with their idempotency keys
/// against a reopened store.
async fn commit_group(shared: &Shared, group: Vec<(Vec<NewRecord>, AppendReply)>) -> bool {
    let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
    let epoch = match shared.write_epoch() {
        Ok(epoch) => epoch,
        Err(_closed) => {
            for reply in replies {
                let _ = reply.send(Err(AppendError::Fenced { epoch: None }));
            }
            return true;
        }
    };
    match write_group(shared, &batches, epoch).await {
        Ok((answers, head)) => {
            shared.publish(head.position);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            true
        }
        Err((e, answers)) if is_fenced(&e) => {
            // Rolled back by the trigger: nothing was written, and the
            // writer goes on (the node steps down and records as a follower).
            shared.refused(epoch);
            let mut answers = answers.into_iter();
            for reply in replies {
                let answer = match answers.next() {
                    Some(Err(rejected)) => Err(rejected),
                    _ => Err(AppendError::Fenced { epoch }),
                };
                let _ = reply.send(answer);
            }
            true
        }
        Err((e, answers)) => {
            let cause = shared.stop(e);
            let mut answers = answers.into_iter();
            for reply in replies {
                // A rejected batch would not have been written either way,
                // so its answer stands; everyone else learns of the failure.
                let answer = match answers.next() {
                    Some(Err(rejected)) => Err(rejected),
                    _ => Err(AppendError::WriterStopped {
                        cause: cause.clone(),
                    }),
                };
                let _ = reply.send(answer);
            }
            false
        }
    }
}

type Answers = Vec<Result<Vec<Appended>, AppendError>>;

/// Whether the fence trigger refused the transaction.
fn is_fenced(e: &StorageError) -> bool {
    let StorageError::Engine(source) = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some(FENCED)
    )
}

/// The group's transaction. On failure, returns the answers staged so far
/// (rejections among them still stand).
async fn write_group(
    shared: &Shared,
    batches: &[Vec<NewRecord>],
    epoch: Option<u64>,
) -> Result<(Answers, Head), (StorageError, Answers)> {
    let fail = |e: StorageError| (e, Vec::new());
    let mut tx = shared.pool.begin().await.map_err(|e| fail(engine(e)))?;
    let (head, now_ms) = lock_head(&mut tx, shared.shard).await.map_err(fail)?;

    // What the group needs of the committed state, in two queries. The head
    // row is locked, so nothing of this shard can commit before we do.
    let mut streams: Vec<&str> = Vec::new();
    let mut keys: Vec<&str> = Vec::new();
    {
        let (mut seen_streams, mut seen_keys) = (HashSet::new(), HashSet::new());
        for record in batches.iter().flatten() {
            if seen_streams.insert(record.stream.as_str()) {
                streams.push(&record.stream);
            }
            if let Some(key) = record.idempotency_key.as_deref() {
                if seen_keys.insert(key) {
                    keys.push(key);
                }
            }
        }
    }
    let fetched = fetch_committed(&mut tx, shared.shard, &streams, &keys)
        .await
        .map_err(fail)?;

    let mut stage = Stage::new(head);
    let mut answers = Vec::with_capacity(batches.len());
    let empty = HashMap::new();
    for batch in batches {
        match stage.add_batch(&fetched, &empty, batch, now_ms) {
            Ok(appended) => answers.push(Ok(appended)),
            Err(StageError::Rejected(e)) => answers.push(Err(e)),
            Err(StageError::Storage(e)) => return Err((e, answers)),
        }
    }
    if stage.records.is_empty() {
        // Only duplicates and rejections: nothing to write.
        let _ = tx.rollback().await;
        return Ok((answers, head));
    }
    // Keys made for these records (and erasures asked) commit with them.
    let (keys, erasures) = shared.vault.unsaved();
    let written = async {
        insert_keys(&mut tx, shared.shard, &keys).await?;
        let erased = erase_keys(&mut tx, &erasures).await?;
        insert_records(&mut tx, shared.shard, &stage.records, epoch).await?;
        move_head(&mut tx, shared.shard, stage.head, epoch).await?;
        tx.commit().await.map_err(engine)?;
        Ok::<_, StorageError>(erased)
    };
    match written.await {
        Ok(erased) => {
            shared.vault.saved(&keys, &erasures);
            if erased {
                vacuum_keys(shared.pool.clone());
            }
            shared.groups.fetch_add(1, Ordering::Relaxed);
            Ok((answers, stage.head))
        }
        Err(e) => Err((e, answers)),
    }
}

/// Locks the shard's head row for the rest of the transaction and returns
/// it with the database's clock, which stamps the group's records: one
/// clock for every node that appends to the shard.
async fn lock_head(
    tx: &mut Transaction<'_, Postgres>,
    shard: i32,
) -> Result<(Head, u64), StorageError> {
    let row = sqlx::query(
        "SELECT position, hash, \
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms \
         FROM event_log_heads WHERE shard = $1 FOR UPDATE",
    )
    .bind(shard)
    .fetch_optional(&mut **tx)
    .await
    .map_err(engine)?
    .ok_or_else(|| corrupt(format!("head of shard {shard}"), "missing", None))?;
    let now_ms: i64 = row.try_get("now_ms").map_err(engine)?;
    // A clock before 1970 is a broken host; record 0 rather than fail.
    Ok((decode_head(&row)?, u64::try_from(now_ms).unwrap_or(0)))
}

async fn fetch_committed(
    tx: &mut Transaction<'_, Postgres>,
    shard: i32,
    streams: &[&str],
    keys: &[&str],
) -> Result<Fetched, StorageError> {
    // One index probe per stream for its last version (the unique index on
    // (shard, stream, stream_version), read backwards).
    let rows = sqlx::query(
        "SELECT s.stream, COALESCE((SELECT r.stream_version FROM event_log_records r \
                                    WHERE r.shard = $1 AND r.stream = s.stream \
                                    ORDER BY r.stream_version DESC LIMIT 1), 0) AS version \
         FROM UNNEST($2::text[]) AS s(stream)",
    )
    .bind(shard)
    .bind(streams)
    .fetch_all(&mut **tx)
    .await
    .map_err(engine)?;
    let mut fetched = Fetched {
        streams: HashMap::with_capacity(rows.len()),
        keys: HashMap::new(),
    };
    for row in rows {
        let stream: String = row.try_get("stream").map_err(engine)?;
        let version: i64 = row.try_get("version").map_err(engine)?;
        let version = u64::try_from(version)
            .map_err(|_| corrupt(format!("stream {stream:?}"), "negative version", None))?;
        fetched.streams.insert(stream, version);
    }
    if !keys.is_empty() {
        let rows = sqlx::query(
            "SELECT idempotency_key, position, stream_version, event_id FROM event_log_records \
             WHERE shard = $1 AND idempotency_key = ANY($2::text[])",
        )
        .bind(shard)
        .bind(keys)
        .fetch_all(&mut **tx)
        .await
        .map_err(engine)?;
        for row in rows {
            let key: String = row.try_get("idempotency_key").map_err(engine)?;
            let position: i64 = row.try_get("position").map_err(engine)?;
            let version: i64 = row.try_get("stream_version").map_err(engine)?;
            let bad = || {
                corrupt(
                    format!("idempotency key {key:?}"),
                    "negative position or version",
                    None,
                )
            };
            let appended = Appended {
                position: u64::try_from(position).map_err(|_| bad())?,
                stream_version: u64::try_from(version).map_err(|_| bad())?,
                event_id: row.try_get("event_id").map_err(engine)?,
                duplicate: false,
            };
            fetched.keys.insert(key, appended);
        }
    }
    Ok(fetched)
}

/// Inserts records in one statement (one array per column).
async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    shard: i32,
    records: &[Record],
    epoch: Option<u64>,
) -> Result<(), StorageError> {
    let n = records.len();
    let mut position = Vec::with_capacity(n);
    let mut stream = Vec::with_capacity(n);
    let mut stream_version = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut recorded_at = Vec::with_capacity(n);
    let mut type_name = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut causation = Vec::with_capacity(n);
    let mut correlation = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut prev_hash = Vec::with_capacity(n);
    let mut hash = Vec::with_capacity(n);
    for r in records {
        let out_of_range = |what: &str| {
            corrupt(
                format!("record at position {}", r.position),
                format!("{what} does not fit PostgreSQL's bigint"),
                Some(r.position),
            )
        };
        position.push(i64::try_from(r.position).map_err(|_| out_of_range("position"))?);
        stream.push(r.stream.as_str());
        stream_version
            .push(i64::try_from(r.stream_version).map_err(|_| out_of_range("stream version"))?);
        event_id.push(r.event_id);
        recorded_at.push(i64::try_from(r.recorded_at_ms).map_err(|_| out_of_range("time"))?);
        type_name.push(r.type_name.as_str());
        schema_version.push(i32::from(r.schema_version));
        causation.push(r.causation_id);
        correlation.push(r.correlation_id);
        key.push(r.idempotency_key.as_deref());
        payload.push(r.payload.as_slice());
        prev_hash.push(&r.prev_hash.0[..]);
        hash.push(&r.hash.0[..]);
    }
    sqlx::query(
        "INSERT INTO event_log_records (shard, position, stream, stream_version, event_id, \
             recorded_at_ms, type_name, schema_version, causation_id, correlation_id, \
             idempotency_key, payload, prev_hash, hash, epoch) \
         SELECT $1, *, $15 FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::uuid[], \
             $6::bigint[], $7::text[], $8::integer[], $9::uuid[], $10::uuid[], $11::text[], \
             $12::bytea[], $13::bytea[], $14::bytea[])",
    )
    .bind(shard)
    .bind(position)
    .bind(stream)
    .bind(stream_version)
    .bind(event_id)
    .bind(recorded_at)
    .bind(type_name)
    .bind(schema_version)
    .bind(causation)
    .bind(correlation)
    .bind(key)
    .bind(payload)
    .bind(prev_hash)
    .bind(hash)
    .bind(epoch.map(to_i64))
    .execute(&mut **tx)
    .await
    .map_err(engine)?;
    Ok(())
}

/// Moves the head row and notifies listeners; both take effect at COMMIT.
/// The head row's trigger refuses the move when `epoch` is not the live
/// lease's (`0002_leases.sql`).
async fn move_head(
    tx: &mut Transaction<'_, Postgres>,
    shard: i32,
    head: Head,
    epoch: Option<u64>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE event_log_heads SET position = $2, hash = $3, epoch = $4 WHERE shard = $1")
        .bind(shard)
        .bind(to_i64(head.position))
        .bind(&head.hash.0[..])
        .bind(epoch.map(to_i64))
        .execute(&mut **tx)
        .await
        .map_err(engine)?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel(shard))
        .bind(head.position.to_string())
        .execute(&mut **tx)
        .await
        .map_err(engine)?;
    Ok(())
}

/// Inserts the content keys made since the last group, in the transaction
/// of the records that may name them.
async fn insert_keys(
    tx: &mut Transaction<'_, Postgres>,
    shard: i32,
    keys: &[Entry],
) -> Result<(), StorageError> {
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<&[u8]> = keys.iter().map(|k| &k.id.0[..]).collect();
    let subjects: Vec<&str> = keys.iter().map(|k| &*k.subject).collect();
    let days: Vec<i32> = keys
        .iter()
        .map(|k| i32::try_from(k.day).unwrap_or(i32::MAX))
        .collect();
    let material: Vec<&[u8]> = keys.iter().map(|k| &k.key[..]).collect();
    sqlx::query(
        "INSERT INTO event_log_keys (shard, key_id, subject, day, material) \
         SELECT $1, * FROM UNNEST($2::bytea[], $3::text[], $4::integer[], $5::bytea[]) \
         ON CONFLICT (shard, key_id) DO NOTHING",
    )
    .bind(shard)
    .bind(ids)
    .bind(subjects)
    .bind(days)
    .bind(material)
    .execute(&mut **tx)
    .await
    .map_err(engine)?;
    Ok(())
}

/// Deletes the keys the erasures name, whichever node made them and in
/// whichever shard (a shard seals only its own pages' people, but the
/// erasure does not rely on it), and notes their ids, under the key's own
/// shard, for the nodes that hold copies; each such shard's nodes are told
/// at COMMIT (a `keys` notification on its channel), and find the note at
/// their next poll otherwise. Whether any key was deleted.
async fn erase_keys(
    tx: &mut Transaction<'_, Postgres>,
    erasures: &[Erasure],
) -> Result<bool, StorageError> {
    // Notes for a shard are written one transaction at a time (its readers
    // take them in `seq` order, which must be commit order), and any shard
    // may now write another's: every erasure locks every shard's notes, in
    // one order, so no two wait on each other. Erasures are rare.
    if !erasures.is_empty() {
        let all: Vec<i32> = sqlx::query_scalar("SELECT shard FROM event_log_heads ORDER BY shard")
            .fetch_all(&mut **tx)
            .await
            .map_err(engine)?;
        for shard in all {
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(ERASURE_NOTES_LOCK)
                .bind(shard)
                .execute(&mut **tx)
                .await
                .map_err(engine)?;
        }
    }
    let mut shards: Vec<i32> = Vec::new();
    for erasure in erasures {
        // A retention's prefix as a LIKE pattern, its wildcards escaped, so
        // that the pattern index serves it.
        let (query, pattern, day) = match erasure {
            Erasure::Subject(subject) => ("subject = $1", subject.clone(), 0),
            Erasure::Before { prefix, day } => (
                "subject LIKE $1 AND day < $2",
                format!(
                    "{}%",
                    prefix
                        .replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                ),
                i32::try_from(*day).unwrap_or(i32::MAX),
            ),
        };
        let noted: Vec<i32> = sqlx::query_scalar(&format!(
            "WITH gone AS (DELETE FROM event_log_keys WHERE {query} \
                           AND $2 = $2 RETURNING shard, key_id), \
                  noted AS (INSERT INTO event_log_key_erasures (shard, key_id) \
                            SELECT shard, key_id FROM gone RETURNING shard) \
             SELECT DISTINCT shard FROM noted"
        ))
        .bind(pattern)
        .bind(day)
        .fetch_all(&mut **tx)
        .await
        .map_err(engine)?;
        shards.extend(noted);
    }
    shards.sort_unstable();
    shards.dedup();
    for shard in &shards {
        sqlx::query("SELECT pg_notify($1, 'keys')")
            .bind(channel(*shard))
            .execute(&mut **tx)
            .await
            .map_err(engine)?;
    }
    Ok(!shards.is_empty())
}

/// Rewrites the keys table after an erasure, so that no page of it keeps
/// the deleted keys (a DELETE only marks rows dead). In the background: a
/// failure is logged, and the next erasure tries again.
fn vacuum_keys(pool: PgPool) {
    tokio::spawn(async move {
        if let Err(e) = sqlx::query("VACUUM FULL event_log_keys")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "could not VACUUM the keys table after an erasure");
        }
    });
}

/// How far this node's vault follows the database's keys.
#[derive(Debug, Default)]
struct KeysSeen {
    key: i64,
    erasure: i64,
    /// Records up to here were read after their keys were loaded.
    position: u64,
}

impl Shared {
    /// Loads the keys and erasures other nodes wrote since the last load,
    /// unless the records just read (up to `read_to`) are covered already.
    /// Keys commit with the records they seal, so loading after a read
    /// covers everything that read returned.
    async fn load_keys(&self, read_to: u64) -> Result<(), StorageError> {
        let covered = || {
            let seen = self.keys_seen.lock().unwrap_or_else(|p| p.into_inner());
            read_to != u64::MAX && read_to <= seen.position
        };
        if covered() {
            return Ok(());
        }
        let _loading = self.keys_loading.lock().await;
        if covered() {
            return Ok(());
        }
        let (key, erasure) = {
            let seen = self.keys_seen.lock().unwrap_or_else(|p| p.into_inner());
            (seen.key, seen.erasure)
        };
        let rows = sqlx::query(
            "SELECT key_id, subject, day, material, seq FROM event_log_keys \
             WHERE shard = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(self.shard)
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .map_err(engine)?;
        let mut last_key = key;
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            let bad = || corrupt("the keys table".to_owned(), "a malformed key row", None);
            let id: Vec<u8> = row.try_get("key_id").map_err(engine)?;
            let material: Vec<u8> = row.try_get("material").map_err(engine)?;
            let day: i32 = row.try_get("day").map_err(engine)?;
            entries.push(Entry {
                subject: Arc::from(row.try_get::<String, _>("subject").map_err(engine)?),
                day: u32::try_from(day).map_err(|_| bad())?,
                id: KeyId(id.try_into().map_err(|_| bad())?),
                key: material.try_into().map_err(|_| bad())?,
            });
            last_key = row.try_get("seq").map_err(engine)?;
        }
        let rows = sqlx::query(
            "SELECT key_id, seq FROM event_log_key_erasures \
             WHERE shard = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(self.shard)
        .bind(erasure)
        .fetch_all(&self.pool)
        .await
        .map_err(engine)?;
        let mut last_erasure = erasure;
        let mut forgotten = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Vec<u8> = row.try_get("key_id").map_err(engine)?;
            if let Ok(id) = id.try_into() {
                forgotten.push(KeyId(id));
            }
            last_erasure = row.try_get("seq").map_err(engine)?;
        }
        // Erased keys are dropped from what was loaded too: a key read
        // before its erasure committed must not come back.
        self.vault.absorb(entries);
        self.vault.forget(&forgotten);
        let mut seen = self.keys_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.key = seen.key.max(last_key);
        seen.erasure = seen.erasure.max(last_erasure);
        if read_to != u64::MAX {
            seen.position = seen.position.max(read_to);
        }
        Ok(())
    }
}

/// Writes records that already carry positions and hashes (an import),
/// continuing the shard's head.
async fn restore(shared: &Shared, records: Vec<Record>) -> Result<Head, AppendError> {
    for (index, record) in records.iter().enumerate() {
        storable_text(
            &record.stream,
            &record.type_name,
            record.idempotency_key.as_deref(),
        )
        .map_err(|reason| AppendError::InvalidRecord { index, reason })?;
    }
    let stop = |e: StorageError| AppendError::WriterStopped {
        cause: shared.stop(e),
    };
    let mut tx = shared.pool.begin().await.map_err(|e| stop(engine(e)))?;
    let (mut head, _) = lock_head(&mut tx, shared.shard).await.map_err(stop)?;
    for record in &records {
        if record.position != head.position + 1 || record.prev_hash != head.hash {
            let _ = tx.rollback().await;
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
    let written = async {
        insert_records(&mut tx, shared.shard, &records, None).await?;
        move_head(&mut tx, shared.shard, head, None).await?;
        tx.commit().await.map_err(engine)
    };
    written.await.map_err(stop)?;
    shared.groups.fetch_add(1, Ordering::Relaxed);
    shared.publish(head.position);
    Ok(head)
}

// ------------------------------------------------------------------ follower

/// What woke the follower.
enum Wake {
    Stop,
    Tick,
    Notified(Option<u64>),
    /// Another node erased keys this shard's nodes may hold.
    Keys,
    /// The listener's connection failed; notifications may have been lost.
    ListenerLost,
}

/// Keeps the watched head up with appends of other stores of the shard:
/// a NOTIFY is a hint that moves it at once; a poll every `poll_interval`
/// catches whatever a lost notification or connection missed.
async fn follow(
    shared: Arc<Shared>,
    listening: Option<(PgPool, PgListener)>,
    poll_interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let (listen_pool, mut listener) = match listening {
        Some((pool, listener)) => (Some(pool), Some(listener)),
        None => (None, None),
    };
    let mut tick = tokio::time::interval(poll_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let (None, Some(pool)) = (&listener, &listen_pool) {
            tokio::select! {
                _ = &mut stop => return,
                started = start_listener(pool, shared.shard) => listener = started.ok(),
            }
        }
        let wake = tokio::select! {
            _ = &mut stop => Wake::Stop,
            _ = tick.tick() => Wake::Tick,
            notified = next_notification(listener.as_mut()) => match notified {
                Ok(Some(n)) if n.payload() == "keys" => Wake::Keys,
                Ok(Some(n)) => Wake::Notified(n.payload().parse().ok()),
                Ok(None) | Err(_) => Wake::ListenerLost,
            },
        };
        match wake {
            Wake::Stop => return,
            Wake::Notified(Some(position)) => shared.publish(position),
            Wake::Keys => load_keys_aside(&shared),
            Wake::Tick => {
                refresh(&shared).await;
                // Erasures made in another shard, if their notification
                // was lost.
                load_keys_aside(&shared);
            }
            Wake::Notified(None) => refresh(&shared).await,
            Wake::ListenerLost => {
                // Start again on the next turn, after the next tick at the
                // latest, so a dead server is not hammered.
                listener = None;
                refresh(&shared).await;
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {}
                }
            }
        }
    }
}

/// Loads keys and erasures in a task of its own, unless a load runs already:
/// a load may wait behind the `VACUUM FULL` that follows an erasure, and
/// the head must not. A failure is left to the next poll.
fn load_keys_aside(shared: &Arc<Shared>) {
    if shared.keys_loading.try_lock().is_err() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = shared.load_keys(u64::MAX).await {
            tracing::debug!(error = %e, "could not load keys and erasures; the next poll tries again");
        }
    });
}

async fn start_listener(pool: &PgPool, shard: i32) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(&channel(shard)).await?;
    Ok(listener)
}

async fn next_notification(
    listener: Option<&mut PgListener>,
) -> Result<Option<sqlx::postgres::PgNotification>, sqlx::Error> {
    match listener {
        // Cancel-safe: sqlx reads a message whole or leaves it buffered.
        Some(listener) => listener.try_recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the head from the database; a failure is left to the next poll.
async fn refresh(shared: &Shared) {
    if let Ok(head) = shared.head().await {
        shared.publish(head.position);
    }
}
