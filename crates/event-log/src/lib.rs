//! Baton's event log: an append-only, hash-chained, group-committed record
//! store behind the [`EventStore`] trait, with sled as the embedded backend
//! and an in-memory one for tests. It stores opaque payload bytes with a type
//! name and schema version; it never interprets them, and it has no update
//! or delete.
//!
//! * [`EventStore::append`] takes a batch of [`NewRecord`]s and answers with
//!   one [`Appended`] per record once the batch is durable (it survives
//!   `kill -9`). Batches are atomic; expected versions give optimistic
//!   concurrency per stream; idempotency keys store a record once.
//! * Reads ([`EventStore::read_all`], [`EventStore::read_stream`]) only ever
//!   return durable records; [`EventStore::subscribe`] wakes readers when the
//!   durable head moves.
//! * [`verify`], [`export_ndjson`], [`verify_ndjson`] and [`import_ndjson`]
//!   serve auditors. The format is documented in `docs/event-log.md`.
//! * [`CheckpointSigner`] signs the head as a [`SignedCheckpoint`] (Ed25519),
//!   [`write_checkpoint`] stores it, and [`verify_anchored`] /
//!   [`verify_ndjson_anchored`] check a log against checkpoints, so a log
//!   rewritten and re-hashed up to a checkpoint no longer verifies.
//! * [`KeyVault`] holds the per-person keys that seal personal content
//!   inside payloads; destroying a key erases that content without changing
//!   a stored byte of the log (`docs/privacy.md`).
//! * [`PgStore`] keeps the log in PostgreSQL, one hash chain per shard, for
//!   running several nodes (`docs/scale-out.md`); with the `pg-testing`
//!   feature, `postgres::testing` starts a throwaway server for tests.
//!   [`AnyStore`] is either store, chosen at run time.

mod any;
mod checkpoint;
mod error;
mod lease;
mod memory;
mod ndjson;
pub mod postgres;
mod record;
mod segments;
pub mod sharded;
mod sled_store;
mod store;
mod vault;
mod verify;
mod writer;

pub use any::AnyStore;
pub use checkpoint::{
    public_key_path, verify_anchored, verify_ndjson_anchored, write_checkpoint,
    write_checkpoint_file, AnchoredReport, Anchors, Checkpoint, CheckpointError, CheckpointSigner,
    PublicKey, SignedCheckpoint, CHECKPOINT_DOMAIN,
};
pub use error::{
    AppendError, ChainFault, ExportError, ImportError, OpenError, StorageError, VerifyError,
};
pub use lease::{Claim, Fence, Leases};
pub use memory::MemoryStore;
pub use ndjson::{
    export_ndjson, export_ndjson_noted, import_ndjson, ndjson_line, ndjson_line_noted,
    parse_ndjson_line, verify_ndjson,
};
pub use postgres::{PgError, PgStore, PgStoreConfig};
pub use record::{Appended, ChainHash, ExpectedVersion, Head, NewRecord, Record, CANONICAL_FORMAT};
pub use segments::segment_contents;
pub use sled_store::SledStore;
pub use store::{EventStore, StoreConfig};
pub use vault::{FileStamp, KeyId, KeyVault, Sealed, VaultError};
pub use verify::{verify, ChainVerifier, VerifyReport};
pub use writer::WriterPause;
