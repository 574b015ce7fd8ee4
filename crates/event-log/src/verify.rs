//! Walking the hash chain: the record-by-record checker shared by store
//! verification, NDJSON verification and import. It reads; it never repairs.

use std::collections::HashMap;

use crate::error::{ChainFault, StorageError, VerifyError};
use crate::record::{Head, Record};
use crate::store::EventStore;

/// What a successful verification covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Position and hash of the last one: compare it with a live server's
    /// head to detect a truncated copy.
    pub head: Head,
}

/// Checks records one at a time, in position order, from position 1.
///
/// Holds the last version of every stream seen, so memory grows with the
/// number of streams (not records).
#[derive(Debug, Default, Clone)]
pub struct ChainVerifier {
    head: Head,
    streams: HashMap<String, u64>,
    /// Signed (position, hash) pairs the chain must pass through, sorted by
    /// position; empty for a plain verification. See `checkpoint.rs`.
    anchors: Vec<Head>,
    /// Index of the first anchor not yet reached.
    next_anchor: usize,
    /// Position of the last anchor the chain matched (0: none yet).
    anchored: u64,
}

impl ChainVerifier {
    /// A verifier expecting position 1 next.
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// A verifier that also requires the record at each anchor's position to
    /// carry exactly that anchor's hash. `anchors` must be sorted by position
    /// and hold no position 0 (the caller, [`crate::Anchors`], sees to it).
    pub(crate) fn anchored(anchors: Vec<Head>) -> ChainVerifier {
        ChainVerifier {
            anchors,
            ..ChainVerifier::default()
        }
    }

    /// Position and hash of the last record accepted.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Position of the last anchor matched so far (0: none).
    pub(crate) fn anchored_up_to(&self) -> u64 {
        self.anchored
    }

    /// The first anchor the chain has not reached (it lies past the head).
    pub(crate) fn unreached_anchor(&self) -> Option<Head> {
        self.anchors.get(self.next_anchor).copied()
    }

    /// Checks the next record; on failure returns the first bad position
    /// (the position that should have come next) and what is wrong, and
    /// accepts nothing.
    pub fn check(&mut self, record: &Record) -> Result<(), (u64, ChainFault)> {
        let expected = self.head.position + 1;
        if record.position != expected {
            return Err((
                expected,
                ChainFault::Gap {
                    found: record.position,
                },
            ));
        }
        if record.prev_hash != self.head.hash {
            return Err((expected, ChainFault::BrokenLink));
        }
        if record.compute_hash() != record.hash {
            return Err((expected, ChainFault::BadHash));
        }
        let version = self.streams.get(&record.stream).copied().unwrap_or(0);
        if record.stream_version != version + 1 {
            return Err((
                expected,
                ChainFault::BadStreamVersion {
                    stream: record.stream.clone(),
                    expected: version + 1,
                    found: record.stream_version,
                },
            ));
        }
        // Every anchor at this position must name this record's hash: a
        // record rewritten at or before it, with every later hash recomputed,
        // passes the checks above but not this one.
        let mut reached = self.next_anchor;
        while let Some(anchor) = self.anchors.get(reached) {
            if anchor.position != record.position {
                break;
            }
            if anchor.hash != record.hash {
                return Err((
                    expected,
                    ChainFault::CheckpointMismatch {
                        signed: anchor.hash,
                        anchored: self.anchored,
                    },
                ));
            }
            reached += 1;
        }
        if reached != self.next_anchor {
            self.next_anchor = reached;
            self.anchored = record.position;
        }
        self.streams
            .insert(record.stream.clone(), record.stream_version);
        self.head = Head {
            position: record.position,
            hash: record.hash,
        };
        Ok(())
    }
}

const PAGE: usize = 1024;

/// Walks a store's whole chain and reports the first bad position: a broken
/// link, a bad hash, a gap, a bad stream version, an unreadable record, or a
/// stored head that disagrees with the last record.
pub async fn verify<S: EventStore>(store: &S) -> Result<VerifyReport, VerifyError> {
    verify_with(store, ChainVerifier::new())
        .await
        .map(|(report, _)| report)
}

/// [`verify`] with a given verifier (one carrying anchors); hands it back so
/// the caller can ask what it matched.
pub(crate) async fn verify_with<S: EventStore>(
    store: &S,
    mut verifier: ChainVerifier,
) -> Result<(VerifyReport, ChainVerifier), VerifyError> {
    let head = store.head().await?;
    loop {
        let from = verifier.head().position + 1;
        let page = match store.read_all(from, PAGE).await {
            Ok(page) => page,
            Err(StorageError::Corrupt {
                position: Some(bad),
                reason,
                ..
            }) => {
                // Check what precedes the damage first, so the report names
                // the first bad position, not merely a bad one.
                let before = usize::try_from(bad.saturating_sub(from)).unwrap_or(usize::MAX);
                if before > 0 {
                    for record in store.read_all(from, before).await? {
                        check(&mut verifier, &record)?;
                    }
                }
                return Err(VerifyError::Broken {
                    position: verifier.head().position + 1,
                    line: None,
                    fault: ChainFault::Unreadable { reason },
                });
            }
            Err(e) => return Err(e.into()),
        };
        if page.is_empty() {
            break;
        }
        for record in &page {
            check(&mut verifier, record)?;
        }
    }
    if verifier.head() != head {
        return Err(VerifyError::Broken {
            position: verifier.head().position + 1,
            line: None,
            fault: ChainFault::HeadMismatch {
                head: head.position,
            },
        });
    }
    Ok((
        VerifyReport {
            records: head.position,
            head,
        },
        verifier,
    ))
}

fn check(verifier: &mut ChainVerifier, record: &Record) -> Result<(), VerifyError> {
    verifier
        .check(record)
        .map_err(|(position, fault)| VerifyError::Broken {
            position,
            line: None,
            fault,
        })
}
