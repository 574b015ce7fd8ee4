//! Baton's own append-only segment files: where the sled store keeps its
//! records since 2026-12 (sled keeps only the indexes). One writer appends
//! whole groups and makes each durable with one `fdatasync`; readers read
//! byte ranges at any offset with `pread`.
//!
//! A segment is `<dir>/<first position, 20 digits>.seg`. It holds groups, each
//! a 16-byte header and a body:
//!
//! ```text
//! [4]  magic "BSG2" (or "BSG1", below)
//! u32  records in the group
//! u64  body length in bytes
//! body: one block per chunk, in position order:
//!   u32  stored length
//!   u32  plain length, or 0 when the chunk is stored as it is
//!   the chunk, zstd-compressed when the plain length is set
//! ```
//!
//! A chunk is the frames (u32 length ‖ canonical bytes ‖ hash) of
//! consecutive records, closed before it would pass [`CHUNK_BYTES`] (a
//! larger record gets a chunk of its own); a read of one record reads and
//! inflates its chunk. A chunk is compressed only where that pays: to at
//! most 7/8 of its size (sealed content is ciphertext, but it is base64 in
//! JSON, and the envelopes' names repeat). Groups written before 2026-12-03
//! ("BSG1") have the frames themselves as their body, uncompressed; they
//! are read as they are, and `StoreConfig::compress` off still writes them.
//!
//! Integers are big-endian. A record's frame is the one sled's chunks used,
//! so a chunk is a whole number of frames. A group is never split across
//! segments; a new segment starts when the last one passed
//! `StoreConfig::segment_bytes`.
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
//! or whole records at the wrong place) is corruption.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::record::{ChainHash, Record};

/// A group whose body is its records' frames (written before 2026-12-03,
/// or with compression off).
const MAGIC_FRAMES: [u8; 4] = *b"BSG1";
/// A group whose body is one block per chunk.
const MAGIC_BLOCKS: [u8; 4] = *b"BSG2";
/// Bytes of a group's header; its body follows.
const HEADER: u64 = 16;
/// Bytes of a block's header (stored and plain length); its chunk follows.
const BLOCK_HEADER: u64 = 8;
/// A chunk is closed before it would exceed this many bytes (one record
/// larger than this gets a chunk of its own): what a read of one record by
/// position reads from its segment. Part of the format: a group indexed
/// again after a crash must be split the same way.
pub(crate) const CHUNK_BYTES: usize = 6 * 1024;
/// The most a stored chunk may inflate to; a larger claim is damage.
const MAX_PLAIN: u32 = 1 << 30;
/// zstd's level for chunks: level 1 compressed this log's chunks as small
/// as level 3 did, and faster.
const LEVEL: i32 = 1;

/// Where a chunk's stored bytes lie: the segment (its first position), the
/// offset within it and the length; and, for a compressed chunk, the length
/// it inflates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) plain: Option<u32>,
}

impl Place {
    /// Encoded as 20 bytes (stored as it is) or 24 (compressed: the plain
    /// length follows).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.segment.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        if let Some(plain) = self.plain {
            out.extend_from_slice(&plain.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Place> {
        let u32_at = |at: usize| Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let plain = match bytes.len() {
            20 => None,
            24 => Some(u32_at(20)?),
            _ => return None,
        };
        Some(Place {
            segment: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            len: u32_at(16)?,
            plain,
        })
    }
}

/// A chunk of a group: the index of its first record in the group, and
/// where its stored bytes lie from the group's first byte.
pub(crate) struct ChunkAt {
    pub(crate) first: usize,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) plain: Option<u32>,
}

impl ChunkAt {
    /// Its place, for a group written at `at` of `segment`.
    pub(crate) fn place(&self, segment: u64, at: u64) -> Place {
        Place {
            segment,
            offset: at + self.offset,
            len: self.len,
            plain: self.plain,
        }
    }
}

/// A group ready to append: its header and body, and its chunks.
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) chunks: Vec<ChunkAt>,
}

/// Splits records (their stored lengths) into chunks: ranges of indexes,
/// each closed before its frames would pass [`CHUNK_BYTES`].
fn chunk_ranges(stored: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, len) in stored.enumerate() {
        let frame = 4 + len;
        match ranges.last_mut() {
            Some(range) if bytes + frame <= CHUNK_BYTES => {
                range.end = i + 1;
                bytes += frame;
            }
            _ => {
                ranges.push(i..i + 1);
                bytes = frame;
            }
        }
    }
    ranges
}

fn push_frame(out: &mut Vec<u8>, stored: &[u8]) {
    let len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(stored);
}

/// Lays out a group of records (their stored bytes, in position order):
/// blocks of chunks, each compressed where that pays, or with `compress`
/// off the frames as they are ("BSG1").
pub(crate) fn encode_group(stored: &[Vec<u8>], compress: bool) -> Encoded {
    let ranges = chunk_ranges(stored.iter().map(Vec::len));
    let plain_total: usize = stored.iter().map(|b| 4 + b.len()).sum();
    let mut bytes = vec![0; HEADER as usize];
    let mut chunks = Vec::with_capacity(ranges.len());
    if !compress {
        bytes.reserve(plain_total);
        for range in ranges {
            let offset = bytes.len() as u64;
            for record in &stored[range.clone()] {
                push_frame(&mut bytes, record);
            }
            chunks.push(ChunkAt {
                first: range.start,
                offset,
                len: u32::try_from(bytes.len() as u64 - offset).unwrap_or(u32::MAX),
                plain: None,
            });
        }
        bytes[..4].copy_from_slice(&MAGIC_FRAMES);
    } else {
        let mut plain = Vec::with_capacity(CHUNK_BYTES + 64);
        bytes.reserve(plain_total / 2 + ranges.len() * BLOCK_HEADER as usize);
        COMPRESSOR.with_borrow_mut(|compressor| {
            for range in ranges {
                plain.clear();
                for record in &stored[range.clone()] {
                    push_frame(&mut plain, record);
                }
                let plain_len = u32::try_from(plain.len()).unwrap_or(u32::MAX);
                let packed = compressor
                    .as_mut()
                    .and_then(|c| c.compress(&plain).ok())
                    .filter(|z| z.len() <= plain.len() / 8 * 7 && plain_len <= MAX_PLAIN);
                let (stored_bytes, plain_field) = match &packed {
                    Some(z) => (&z[..], plain_len),
                    None => (&plain[..], 0),
                };
                let len = u32::try_from(stored_bytes.len()).unwrap_or(u32::MAX);
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&plain_field.to_be_bytes());
                let offset = bytes.len() as u64;
                bytes.extend_from_slice(stored_bytes);
                chunks.push(ChunkAt {
                    first: range.start,
                    offset,
                    len,
                    plain: packed.is_some().then_some(plain_len),
                });
            }
        });
        bytes[..4].copy_from_slice(&MAGIC_BLOCKS);
    }
    let count = u32::try_from(stored.len()).unwrap_or(u32::MAX);
    let body_len = bytes.len() as u64 - HEADER;
    bytes[4..8].copy_from_slice(&count.to_be_bytes());
    bytes[8..HEADER as usize].copy_from_slice(&body_len.to_be_bytes());
    Encoded { bytes, chunks }
}

thread_local! {
    /// The writer's compressor, kept between groups (`None` if zstd could
    /// not make one: chunks are then stored as they are).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(LEVEL).ok());
    /// Each reading thread's decompressor, kept between chunks.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// A compressed chunk inflated to exactly `plain` bytes, or why not.
fn inflate(stored: &[u8], plain: u32) -> Result<Vec<u8>, String> {
    if plain > MAX_PLAIN {
        return Err(format!("a chunk claiming {plain} bytes inflated"));
    }
    // A damaged length must not make a huge buffer: the frame's own size
    // must say the same.
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(size)) if size == u64::from(plain) => {}
        _ => return Err("a compressed chunk whose frame does not say its size".into()),
    }
    let out = DECOMPRESSOR.with_borrow_mut(|d| match d {
        Some(d) => d.decompress(stored, plain as usize),
        None => zstd::bulk::decompress(stored, plain as usize),
    });
    match out {
        Ok(out) if out.len() == plain as usize => Ok(out),
        Ok(out) => Err(format!(
            "a chunk inflated to {} bytes, not {plain}",
            out.len()
        )),
        Err(e) => Err(format!("a chunk that does not inflate: {e}")),
    }
}

/// A segment file's bytes with every compressed chunk inflated in place:
/// what a search for plaintext (the privacy tests, an operator's grep) must
/// look through. Groups are walked by their headers; from the first byte
/// that is not a whole group on, the bytes are kept as they are.
pub fn segment_contents(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER as usize) {
        let body_len = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
        let Some(body) = usize::try_from(body_len).ok().and_then(|len| {
            bytes.get(at + HEADER as usize..(at + HEADER as usize).checked_add(len)?)
        }) else {
            break;
        };
        match header[..4].try_into().expect("4 bytes") {
            MAGIC_FRAMES => out.extend_from_slice(&bytes[at..at + HEADER as usize + body.len()]),
            MAGIC_BLOCKS => {
                out.extend_from_slice(header);
                let mut rest = body;
                while let Some((stored_len, plain)) = block_header(rest) {
                    let end = BLOCK_HEADER as usize + stored_len as usize;
                    let Some(stored) = rest.get(BLOCK_HEADER as usize..end) else {
                        break;
                    };
                    out.extend_from_slice(&rest[..BLOCK_HEADER as usize]);
                    match plain {
                        0 => out.extend_from_slice(stored),
                        n => match inflate(stored, n) {
                            Ok(plain) => out.extend_from_slice(&plain),
                            Err(_) => out.extend_from_slice(stored),
                        },
                    }
                    rest = &rest[end..];
                }
                out.extend_from_slice(rest);
            }
            _ => break,
        }
        at += HEADER as usize + body.len();
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// A whole, valid group found by [`Segments::scan`].
pub(crate) struct Scanned {
    pub(crate) segment: u64,
    /// Offset just past the group in its segment.
    pub(crate) end: u64,
    pub(crate) records: Vec<Record>,
    /// Its chunks: each one's first position and place.
    pub(crate) chunks: Vec<(u64, Place)>,
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

    /// Appends one group (see [`encode_group`]) whose first record is at
    /// `first` (not yet synced; see [`Segments::sync`]): one write. Returns
    /// the segment and the offset of the group. A failed write is cut off
    /// again as far as it can be.
    pub(crate) fn append(&self, first: u64, group: &[u8]) -> io::Result<(u64, u64)> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.as_ref().is_none_or(|t| t.len >= self.segment_bytes) {
            *tail = Some(self.create(first)?);
        }
        let tail = tail.as_mut().expect("a tail segment was just made");
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

    /// The chunk at `place`: its frames, inflated if it was compressed.
    pub(crate) fn read(&self, place: Place) -> io::Result<Vec<u8>> {
        let mut out = vec![0; place.len as usize];
        self.file(place.segment)?
            .read_exact_at(&mut out, place.offset)?;
        match place.plain {
            None => Ok(out),
            Some(plain) => inflate(&out, plain).map_err(|reason| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment {} at byte {}: {reason}",
                        name(place.segment),
                        place.offset
                    ),
                )
            }),
        }
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
                    Ok(group) => {
                        if let Some(last) = group.records.last() {
                            next = last.position + 1;
                            prev = last.hash;
                        }
                        let chunks = group
                            .chunks
                            .iter()
                            .map(|c| (group.records[c.first].position, c.place(segment_at, at)))
                            .collect();
                        found.push(Scanned {
                            segment: segment_at,
                            end: group.end,
                            records: group.records,
                            chunks,
                        });
                        at = group.end;
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

/// A group read back: its records, its chunks, and the offset just past it.
struct Group {
    records: Vec<Record>,
    chunks: Vec<ChunkAt>,
    end: u64,
}

/// The group at `at` of a segment `len` bytes long, or why it is not taken.
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
    let blocks = match header[..4].try_into().expect("4 bytes") {
        MAGIC_BLOCKS => true,
        MAGIC_FRAMES => false,
        _ => return Ok(Err(Bad::Torn("no group header".into()))),
    };
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
    // The chunks' frames: the blocks inflated, or the body itself.
    let mut plain_chunks: Vec<(Vec<u8>, ChunkAt)> = Vec::new();
    let mut frames_body = Vec::new();
    if blocks {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let offset = HEADER + (body.len() - rest.len()) as u64 + BLOCK_HEADER;
            let Some((stored_len, plain_len)) = block_header(rest) else {
                return Ok(Err(damaged("a block header runs past the body".into())));
            };
            let Some(stored) =
                rest.get(BLOCK_HEADER as usize..BLOCK_HEADER as usize + stored_len as usize)
            else {
                return Ok(Err(damaged("a block runs past the body".into())));
            };
            rest = &rest[BLOCK_HEADER as usize + stored.len()..];
            let (plain, plain_field) = match plain_len {
                0 => (stored.to_vec(), None),
                n => match inflate(stored, n) {
                    Ok(plain) => (plain, Some(n)),
                    Err(reason) => return Ok(Err(damaged(reason))),
                },
            };
            plain_chunks.push((
                plain,
                ChunkAt {
                    first: 0,
                    offset,
                    len: stored_len,
                    plain: plain_field,
                },
            ));
        }
    } else {
        frames_body = body;
    }
    let mut records = Vec::new();
    let mut stored = Vec::new();
    let (mut expect, mut link) = (next, prev);
    let mut take = |frames: &[u8], records: &mut Vec<Record>| -> Result<(), Bad> {
        let mut rest = frames;
        while !rest.is_empty() {
            let Some((frame, after)) = rest
                .get(..4)
                .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
                .and_then(|l| Some((rest.get(4..4 + l)?, &rest[4 + l..])))
            else {
                return Err(damaged("a record frame runs past its chunk".into()));
            };
            let record = match Record::from_stored_bytes(frame) {
                Ok(record) => record,
                Err(reason) => return Err(damaged(format!("record {expect}: {reason}"))),
            };
            if record.compute_hash() != record.hash {
                return Err(damaged(format!("record {expect} does not match its hash")));
            }
            // Whole records at the wrong place are no unfinished write.
            if record.position != expect || record.prev_hash != link {
                return Err(Bad::Wrong(format!(
                    "record {} (hashing correctly) where position {expect}, linked to the previous record, is expected",
                    record.position
                )));
            }
            expect += 1;
            link = record.hash;
            records.push(record);
            stored.push(frame.len());
            rest = after;
        }
        Ok(())
    };
    let mut chunks = Vec::new();
    if blocks {
        for (plain, mut chunk) in plain_chunks {
            chunk.first = records.len();
            if let Err(bad) = take(&plain, &mut records) {
                return Ok(Err(bad));
            }
            if chunk.first == records.len() {
                return Ok(Err(damaged("an empty block".into())));
            }
            chunks.push(chunk);
        }
    } else if let Err(bad) = take(&frames_body, &mut records) {
        return Ok(Err(bad));
    }
    if records.len() != count as usize {
        return Ok(Err(damaged(format!(
            "{} records where the header says {count}",
            records.len()
        ))));
    }
    if !blocks {
        // The chunks the writer indexed: the same split over the frames.
        let mut offset = HEADER;
        for range in chunk_ranges(stored.iter().copied()) {
            let len: u64 = stored[range.clone()].iter().map(|&b| 4 + b as u64).sum();
            chunks.push(ChunkAt {
                first: range.start,
                offset,
                len: u32::try_from(len).unwrap_or(u32::MAX),
                plain: None,
            });
            offset += len;
        }
    }
    Ok(Ok(Group {
        records,
        chunks,
        end,
    }))
}

/// A block's stored and plain lengths, if its header is whole.
fn block_header(bytes: &[u8]) -> Option<(u32, u32)> {
    let stored = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let plain = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
    Some((stored, plain))
}

/// The first record of a group whose body begins `body`, if its first
/// frame is there whole.
fn first_record(blocks: bool, body: &[u8]) -> Option<Record> {
    let first_frame = |frames: &[u8]| -> Option<Record> {
        let l = u32::from_be_bytes(frames.get(..4)?.try_into().ok()?) as usize;
        Record::from_stored_bytes(frames.get(4..4 + l)?).ok()
    };
    if !blocks {
        return first_frame(body);
    }
    let (stored_len, plain_len) = block_header(body)?;
    let stored = body.get(BLOCK_HEADER as usize..BLOCK_HEADER as usize + stored_len as usize)?;
    match plain_len {
        0 => first_frame(stored),
        n => first_frame(&inflate(stored, n).ok()?),
    }
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
    while let Some(found) = rest[from..]
        .windows(4)
        .position(|w| w == MAGIC_BLOCKS || w == MAGIC_FRAMES)
    {
        let header = from + found;
        from = header + 1;
        let blocks = rest[header..header + 4] == MAGIC_BLOCKS;
        let record = rest
            .get(header + HEADER as usize..)
            .and_then(|body| first_record(blocks, body))
            .filter(|r| r.position >= next && r.compute_hash() == r.hash);
        if let Some(record) = record {
            return Ok(Some((record.position, at + header as u64)));
        }
    }
    Ok(None)
}
