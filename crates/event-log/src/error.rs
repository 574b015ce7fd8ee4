//! Typed errors of the event log; no recovery logic lives here.

use std::path::PathBuf;
use std::sync::Arc;

use crate::record::{ChainHash, ExpectedVersion};

/// A failure of the storage engine underneath the log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine reported an error (I/O, a full disk, a failed fsync...).
    #[error("storage engine failed: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored bytes could not be decoded or contradict each other.
    #[error("stored data is corrupt at {location}: {reason}")]
    Corrupt {
        /// Which key or position is affected.
        location: String,
        /// What is wrong with it.
        reason: String,
        /// The record position, when the damage is in a record.
        position: Option<u64>,
    },
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> StorageError {
        StorageError::Engine(Box::new(e))
    }
}

/// Why an append (or a restore) was not carried out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The writer's queue is full; nothing was queued. Retry later (the HTTP
    /// layer answers 503 with Retry-After).
    #[error("the event log is busy: its write queue is full, retry later")]
    Busy,
    /// A record's expected stream version did not hold; nothing of the batch
    /// was written.
    #[error(
        "record {index} of the batch expected stream {stream:?} at {expected}, \
         but it is at version {actual}"
    )]
    Conflict {
        /// Index of the offending record in the batch.
        index: usize,
        /// Its stream.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's actual version (0 = no stream).
        actual: u64,
    },
    /// A record cannot be stored as given; nothing of the batch was written.
    #[error("record {index} of the batch is invalid: {reason}")]
    InvalidRecord {
        /// Index of the offending record in the batch.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Restored records do not continue the log's head.
    #[error("restored records must continue the log at position {expected}, got {found}")]
    NotAtHead {
        /// The position the log expects next.
        expected: u64,
        /// The position offered.
        found: u64,
    },
    /// This node does not hold the shard's lease under the epoch the append
    /// needs (see [`crate::Fence`]): the database refused it, or the node
    /// refused it first while it steps down. Nothing of the batch was
    /// written; the owner decides (`docs/scale-out.md`).
    #[error("this node does not own the shard (epoch {epoch:?}); the append was refused")]
    Fenced {
        /// The epoch the append carried, if it carried one.
        epoch: Option<u64>,
    },
    /// The writer stopped after a storage failure (or was shut down). It is
    /// never restarted silently: reopen the store once the cause is fixed.
    #[error("the event log writer has stopped: {cause}")]
    WriterStopped {
        /// The failure that stopped it.
        #[source]
        cause: Arc<StorageError>,
    },
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (or another handle in this one) holds the directory.
    #[error(
        "the event log directory {path:?} is in use by another process; \
         to audit a live system, export from the running server \
         (its NDJSON export) or copy the directory and open the copy"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The storage engine failed to open the directory.
    #[error("could not open the event log at {path:?}: {source}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: StorageError,
    },
    /// The writer thread could not be started.
    #[error("could not start the event log writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What is wrong with a record in the chain (reported with its position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    /// The record carries another position than the next one.
    #[error("expected the next position, found position {found}")]
    Gap {
        /// The position actually found.
        found: u64,
    },
    /// `prev_hash` is not the previous record's hash.
    #[error("prev_hash does not match the previous record's hash")]
    BrokenLink,
    /// `hash` is not the SHA-256 of the record's canonical bytes.
    #[error("hash does not match the record's contents")]
    BadHash,
    /// The stream version is not the stream's next one.
    #[error("stream {stream:?} should be at version {expected}, found {found}")]
    BadStreamVersion {
        /// The stream.
        stream: String,
        /// The next version the stream should have.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// The store's recorded head disagrees with its last record.
    #[error("the stored head (position {head}) disagrees with the last record")]
    HeadMismatch {
        /// Position the store's head claims.
        head: u64,
    },
    /// The record cannot be decoded at all.
    #[error("the record cannot be read: {reason}")]
    Unreadable {
        /// Why.
        reason: String,
    },
    /// A signed checkpoint names this position with another hash: some record
    /// after position `anchored` and up to this one was changed, and the
    /// hashes after it recomputed (otherwise an earlier check would have
    /// failed first).
    #[error(
        "the hash differs from the signed checkpoint's ({signed}): {}",
        rewritten(*anchored)
    )]
    CheckpointMismatch {
        /// The hash the checkpoint signed for this position.
        signed: ChainHash,
        /// The last position a checkpoint anchored before this one (0: none).
        anchored: u64,
    },
}

/// The first problem a verification found.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken at `position` (the first position that cannot be
    /// vouched for).
    #[error("{}chain broken at position {position}: {fault}", line_prefix(*line))]
    Broken {
        /// First bad position.
        position: u64,
        /// 1-based NDJSON line, when verifying a file.
        line: Option<u64>,
        /// What is wrong.
        fault: ChainFault,
    },
    /// An NDJSON line is not a record.
    #[error("line {line} (position {position}) is not a valid record: {reason}")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// The position this line should have held.
        position: u64,
        /// Why it could not be read.
        reason: String,
    },
    /// The store could not be read.
    #[error("could not read the store: {0}")]
    Storage(#[from] StorageError),
    /// The file could not be read.
    #[error("could not read the file: {0}")]
    Io(#[from] std::io::Error),
}

fn rewritten(anchored: u64) -> String {
    if anchored == 0 {
        "a record at or before this position was rewritten and the chain re-hashed \
         (or the checkpoint is of another log)"
            .into()
    } else {
        format!(
            "a record after position {anchored} (the previous checkpoint), up to this one, \
             was rewritten and the chain re-hashed (or the checkpoint is of another log)"
        )
    }
}

fn line_prefix(line: Option<u64>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

impl VerifyError {
    /// The first bad position, when the failure is about a record.
    pub fn position(&self) -> Option<u64> {
        match self {
            VerifyError::Broken { position, .. } | VerifyError::Malformed { position, .. } => {
                Some(*position)
            }
            VerifyError::Storage(StorageError::Corrupt { position, .. }) => *position,
            _ => None,
        }
    }

    /// The 1-based NDJSON line of the failure, when verifying a file.
    pub fn line(&self) -> Option<u64> {
        match self {
            VerifyError::Broken { line, .. } => *line,
            VerifyError::Malformed { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Why an NDJSON export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be read.
    #[error("could not read the store: {0}")]
    Storage(#[from] StorageError),
    /// The output could not be written.
    #[error("could not write the export: {0}")]
    Io(#[from] std::io::Error),
}

/// Why an NDJSON import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Import only fills an empty store, so positions and hashes are kept.
    #[error("refusing to import into a non-empty store (its head is at position {head})")]
    NotEmpty {
        /// The store's head position.
        head: u64,
    },
    /// The file failed verification; records before the failing line were
    /// imported (they form a verified prefix).
    #[error("the file failed verification after {imported} records were imported: {source}")]
    Verify {
        /// Records written before the failure.
        imported: u64,
        /// The failure.
        #[source]
        source: VerifyError,
    },
    /// The store refused or failed the write.
    #[error("the store failed to import after {imported} records: {source}")]
    Append {
        /// Records written before the failure.
        imported: u64,
        /// The failure.
        #[source]
        source: AppendError,
    },
    /// The store could not be read.
    #[error("could not read the store: {0}")]
    Storage(#[from] StorageError),
}

/// A [`StorageError::Corrupt`] at `location` (a key or a row), for the
/// stores that find a record they cannot read back.
pub(crate) fn corrupt(
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
