//! Baton's own append-only segment files: where the sled store keeps its
//! records since 2026-12 (sled keeps only the indexes). One writer appends
//! whole groups and makes each durable with one `fdatasync`; readers read
//! byte ranges at any offset with `pread`.
//!
//! A segment is `<dir>/<first position, 20 digits>.seg`. It holds groups, each
//! a 16-byte header and a body:
//!
//! ```text
//! [4]  magic "BSG1"
//! u32  records in the group
//! u64  body length in bytes
//! body: (u32 length ‖ canonical bytes ‖ hash) per record, in position order
//! ```
//!
//! Integers are big-endian. A record's frame is the one sled's chunks used,
//! so a chunk of consecutive frames is a byte range of a body. A group is
//! never split across segments; a new segment starts when the last one
//! passed `StoreConfig::segment_bytes`.
//!
//! A group written but not synced when the process or machine stopped may be
//! cut short or hold garbage: [`Segments::scan`] reads the groups after a
//! given place and stops at the first one that is not whole and valid (each
//! record's own hash, contiguous positions, linked to the previous hash). It
//! is a *torn* write only when no whole record at a later position follows
//! it anywhere in the file, since the writer syncs each group before it
//! writes the next; then [`Segments::cut`] drops it. Only unacknowledged
//! groups can be torn: every acknowledged group was synced whole before its
//! callers were answered. Anything else (damage with a valid group after it,
//! or whole records at the wrong position) is corruption.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::record::{ChainHash, Record};

const MAGIC: [u8; 4] = *b"BSG1";
/// Bytes of a group's header; its body follows.
pub(crate) const HEADER: u64 = 16;

/// Where a byte range of a group's body lies: the segment (its first
/// position) and the offset within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

impl Place {
    pub(crate) const ENCODED: usize = 20;

    pub(crate) fn encode(&self) -> [u8; Place::ENCODED] {
        let mut out = [0; Place::ENCODED];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Place> {
        let bytes: &[u8; Place::ENCODED] = bytes.try_into().ok()?;
        Some(Place {
            segment: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            len: u32::from_be_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

/// A whole, valid group found by [`Segments::scan`].
pub(crate) struct Scanned {
    pub(crate) segment: u64,
    /// Offset of the group's body in its segment.
    pub(crate) body: u64,
    pub(crate) records: Vec<Record>,
    /// Each record's stored bytes (canonical bytes and hash).
    pub(crate) stored: Vec<Vec<u8>>,
}

/// Where a scan stopped before the end of the files: the first byte of a
/// group that is not whole and valid, and why.
pub(crate) struct Stop {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) reason: String,
    /// Nothing follows it in its file: an unfinished write, not damage.
    pub(crate) torn: bool,
}

/// Why a group was not taken.
enum Bad {
    /// Bytes that are not a whole group: an unfinished write, unless a
    /// valid group follows them (see `later_record`).
    Torn(String),
    /// Whole records at the wrong place: refused, never cut.
    Wrong(String),
}

struct Tail {
    segment: u64,
    file: Arc<File>,
    len: u64,
}

pub(crate) struct Segments {
    dir: PathBuf,
    /// A segment this long is closed; the group that passed it stays whole.
    segment_bytes: u64,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// The segment being appended to; `None` until the first group.
    tail: Mutex<Option<Tail>>,
}

fn name(segment: u64) -> String {
    format!("{segment:020}.seg")
}

impl Segments {
    /// Opens (creating if needed) the segment directory `dir`.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> io::Result<Segments> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The new directory's entry, durable before any record is in it.
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(segment) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())?;
            files.insert(segment, Arc::new(file));
        }
        let tail = match files.last_key_value() {
            Some((&segment, file)) => Some(Tail {
                segment,
                file: file.clone(),
                len: file.metadata()?.len(),
            }),
            None => None,
        };
        Ok(Segments {
            dir: dir.to_path_buf(),
            segment_bytes,
            files: RwLock::new(files),
            tail: Mutex::new(tail),
        })
    }

    /// The segments, first positions in order.
    pub(crate) fn list(&self) -> Vec<u64> {
        self.files().keys().copied().collect()
    }

    fn files(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<File>>> {
        self.files.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, segment: u64) -> io::Result<Arc<File>> {
        self.files().get(&segment).cloned().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("segment {} is missing", name(segment)),
            )
        })
    }

    /// Appends one group whose first record is at `first` (not yet synced;
    /// see [`Segments::sync`]). `group` is [`HEADER`] bytes for the header,
    /// filled in here, then the records' frames: one buffer, one write.
    /// Returns the segment and the offset of the group (its body is
    /// [`HEADER`] bytes later). A failed write is cut off again as far as it
    /// can be.
    pub(crate) fn append(
        &self,
        first: u64,
        count: u32,
        group: &mut [u8],
    ) -> io::Result<(u64, u64)> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.as_ref().is_none_or(|t| t.len >= self.segment_bytes) {
            *tail = Some(self.create(first)?);
        }
        let tail = tail.as_mut().expect("a tail segment was just made");
        let body_len = (group.len() - HEADER as usize) as u64;
        group[..4].copy_from_slice(&MAGIC);
        group[4..8].copy_from_slice(&count.to_be_bytes());
        group[8..HEADER as usize].copy_from_slice(&body_len.to_be_bytes());
        if let Err(e) = tail.file.write_all_at(group, tail.len) {
            let _ = tail.file.set_len(tail.len);
            return Err(e);
        }
        let at = (tail.segment, tail.len);
        tail.len += group.len() as u64;
        Ok(at)
    }

    /// A new segment starting at position `first`, with its directory entry
    /// durable.
    fn create(&self, first: u64) -> io::Result<Tail> {
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.dir.join(name(first)))?,
        );
        File::open(&self.dir)?.sync_all()?;
        self.files
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(first, file.clone());
        Ok(Tail {
            segment: first,
            file,
            len: 0,
        })
    }

    /// Makes every appended group durable: `fdatasync` of the segment being
    /// appended to (a segment is closed only after its last group's sync).
    pub(crate) fn sync(&self) -> io::Result<()> {
        let file = self
            .tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|t| t.file.clone());
        match file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Makes `segment` durable (a group read back at open may never have
    /// been synced: the process was killed between its write and its sync).
    pub(crate) fn sync_segment(&self, segment: u64) -> io::Result<()> {
        self.file(segment)?.sync_data()
    }

    /// The bytes at `place`.
    pub(crate) fn read(&self, place: Place) -> io::Result<Vec<u8>> {
        let mut out = vec![0; place.len as usize];
        self.file(place.segment)?
            .read_exact_at(&mut out, place.offset)?;
        Ok(out)
    }

    /// The whole, valid groups from `offset` of `segment` on (and through
    /// every later segment), the first expected at position `next` and
    /// linked to `prev`; plus where the files stop being whole, if they do
    /// before their end. A segment's name is the position its first record
    /// must have.
    pub(crate) fn scan(
        &self,
        segment: u64,
        offset: u64,
        mut next: u64,
        mut prev: ChainHash,
    ) -> io::Result<(Vec<Scanned>, Option<Stop>)> {
        let mut found = Vec::new();
        let segments: Vec<(u64, Arc<File>)> = self
            .files()
            .range(segment..)
            .map(|(&s, f)| (s, f.clone()))
            .collect();
        for (segment_at, file) in segments {
            let len = file.metadata()?.len();
            let mut at = if segment_at == segment { offset } else { 0 };
            if at == 0 && len > 0 && segment_at != next {
                return Ok((
                    found,
                    Some(Stop {
                        segment: segment_at,
                        offset: 0,
                        reason: format!(
                            "the segment named {} begins where position {next} is expected",
                            name(segment_at)
                        ),
                        torn: false,
                    }),
                ));
            }
            while at < len {
                let stop = |bad: Bad| {
                    let (reason, torn) = match bad {
                        Bad::Torn(reason) => (reason, true),
                        Bad::Wrong(reason) => (reason, false),
                    };
                    Stop {
                        segment: segment_at,
                        offset: at,
                        reason,
                        torn,
                    }
                };
                match read_group(&file, at, len, next, prev)? {
                    Ok((records, stored, end)) => {
                        if let Some(last) = records.last() {
                            next = last.position + 1;
                            prev = last.hash;
                        }
                        found.push(Scanned {
                            segment: segment_at,
                            body: at + HEADER,
                            records,
                            stored,
                        });
                        at = end;
                    }
                    Err(Bad::Torn(reason)) => {
                        // Damage with a valid group after it is no
                        // unfinished write: the writer syncs each group
                        // before it writes the next.
                        let bad = match later_record(&file, at + 1, len, next)? {
                            Some((position, offset)) => Bad::Wrong(format!(
                                "{reason}; a whole record at position {position} follows at byte {offset}"
                            )),
                            None => Bad::Torn(reason),
                        };
                        return Ok((found, Some(stop(bad))));
                    }
                    Err(bad) => return Ok((found, Some(stop(bad)))),
                }
            }
        }
        Ok((found, None))
    }

    /// Cuts `segment` at `offset`, dropping a torn group, and syncs it.
    pub(crate) fn cut(&self, segment: u64, offset: u64) -> io::Result<()> {
        let file = self.file(segment)?;
        file.set_len(offset)?;
        file.sync_all()?;
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tail) = tail.as_mut().filter(|t| t.segment == segment) {
            tail.len = offset;
        }
        Ok(())
    }
}

/// The group at `at` of a segment `len` bytes long: its records, their
/// stored bytes and the offset just past it, or why it is not taken.
type Group = (Vec<Record>, Vec<Vec<u8>>, u64);

fn read_group(
    file: &File,
    at: u64,
    len: u64,
    next: u64,
    prev: ChainHash,
) -> io::Result<Result<Group, Bad>> {
    if len - at < HEADER {
        return Ok(Err(Bad::Torn(format!(
            "{} bytes at the end, short of a group header",
            len - at
        ))));
    }
    let mut header = [0; HEADER as usize];
    file.read_exact_at(&mut header, at)?;
    if header[..4] != MAGIC {
        return Ok(Err(Bad::Torn("no group header".into())));
    }
    let count = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    let body_len = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
    let body_at = at + HEADER;
    if body_len > len - body_at {
        return Ok(Err(Bad::Torn(format!(
            "a body of {body_len} bytes where {} remain",
            len - body_at
        ))));
    }
    let end = body_at + body_len;
    let damaged = Bad::Torn;
    if count == 0 {
        return Ok(Err(damaged("a group of no records".into())));
    }
    let mut body = vec![0; body_len as usize];
    file.read_exact_at(&mut body, body_at)?;
    let mut records = Vec::new();
    let mut stored = Vec::new();
    let (mut expect, mut link) = (next, prev);
    let mut rest = &body[..];
    while !rest.is_empty() {
        let Some((frame, after)) = rest
            .get(..4)
            .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
            .and_then(|l| Some((rest.get(4..4 + l)?, &rest[4 + l..])))
        else {
            return Ok(Err(damaged("a record frame runs past the body".into())));
        };
        let record = match Record::from_stored_bytes(frame) {
            Ok(record) => record,
            Err(reason) => return Ok(Err(damaged(format!("record {expect}: {reason}")))),
        };
        if record.compute_hash() != record.hash {
            return Ok(Err(damaged(format!(
                "record {expect} does not match its hash"
            ))));
        }
        // Whole records at the wrong place are no unfinished write.
        if record.position != expect || record.prev_hash != link {
            return Ok(Err(Bad::Wrong(format!(
                "record {} (hashing correctly) where position {expect}, linked to the previous record, is expected",
                record.position
            ))));
        }
        expect += 1;
        link = record.hash;
        records.push(record);
        stored.push(frame.to_vec());
        rest = after;
    }
    if records.len() != count as usize {
        return Ok(Err(damaged(format!(
            "{} records where the header says {count}",
            records.len()
        ))));
    }
    Ok(Ok((records, stored, end)))
}

/// The first group header from `at` on whose first record is whole (it
/// decodes and hashes to its stored hash) and at position `next` or later:
/// that record's position and the header's offset.
fn later_record(file: &File, at: u64, len: u64, next: u64) -> io::Result<Option<(u64, u64)>> {
    if at >= len {
        return Ok(None);
    }
    let mut rest = vec![0; (len - at) as usize];
    file.read_exact_at(&mut rest, at)?;
    let mut from = 0;
    while let Some(found) = rest[from..].windows(4).position(|w| w == MAGIC) {
        let header = from + found;
        from = header + 1;
        let record = rest
            .get(header + HEADER as usize..)
            .and_then(|body| {
                let l = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
                body.get(4..4 + l)
            })
            .and_then(|frame| Record::from_stored_bytes(frame).ok())
            .filter(|r| r.position >= next && r.compute_hash() == r.hash);
        if let Some(record) = record {
            return Ok(Some((record.position, at + header as u64)));
        }
    }
    Ok(None)
}
