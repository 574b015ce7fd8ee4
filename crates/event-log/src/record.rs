//! The record envelope, its canonical binary encoding and its hash; no I/O and
//! no knowledge of what the payload bytes mean.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Version byte that opens every canonical encoding, so a future envelope
/// change is a visible, deliberate format bump rather than a silent drift.
pub const CANONICAL_FORMAT: u8 = 1;

/// A SHA-256 digest in the hash chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The previous hash of the first record: 32 zero bytes.
    pub const ZERO: ChainHash = ChainHash([0; 32]);

    /// Lowercase hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hexadecimal characters (either case).
    pub fn from_hex(text: &str) -> Option<ChainHash> {
        let bytes = from_hex(text)?;
        Some(ChainHash(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The last durable record of a log: its position and hash.
///
/// An empty log has position 0 and [`ChainHash::ZERO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    /// Global position of the last durable record (0 when empty).
    pub position: u64,
    /// Hash of that record ([`ChainHash::ZERO`] when empty).
    pub hash: ChainHash,
}

impl Head {
    /// The head of an empty log.
    pub const EMPTY: Head = Head {
        position: 0,
        hash: ChainHash::ZERO,
    };
}

/// Optimistic concurrency check on the stream a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet (its version is 0).
    NoStream,
    /// The stream's last version must be exactly this.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// A record as a caller hands it to [`crate::EventStore::append`]; the log
/// assigns position, stream version, event id, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Stream name, e.g. `thread/<page>/<psid>`. Must not be empty.
    pub stream: String,
    /// Type name of the payload, e.g. `ThreadControlPassed`.
    pub type_name: String,
    /// Schema version of the payload type.
    pub schema_version: u16,
    /// Opaque payload bytes (the domain uses compact JSON).
    pub payload: Vec<u8>,
    /// Concurrency check against the stream's current version.
    pub expected: ExpectedVersion,
    /// When set, a record with the same key is stored only once.
    pub idempotency_key: Option<String>,
    /// Id of the event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Id that ties related events together (e.g. one webhook delivery).
    pub correlation_id: Option<Uuid>,
}

impl NewRecord {
    /// A record with no concurrency check, idempotency key or causation.
    pub fn new(
        stream: impl Into<String>,
        type_name: impl Into<String>,
        schema_version: u16,
        payload: impl Into<Vec<u8>>,
    ) -> NewRecord {
        NewRecord {
            stream: stream.into(),
            type_name: type_name.into(),
            schema_version,
            payload: payload.into(),
            expected: ExpectedVersion::Any,
            idempotency_key: None,
            causation_id: None,
            correlation_id: None,
        }
    }

    /// Sets the optimistic concurrency check.
    pub fn expect(mut self, expected: ExpectedVersion) -> NewRecord {
        self.expected = expected;
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> NewRecord {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the causation id.
    pub fn caused_by(mut self, id: Uuid) -> NewRecord {
        self.causation_id = Some(id);
        self
    }

    /// Sets the correlation id.
    pub fn correlated_with(mut self, id: Uuid) -> NewRecord {
        self.correlation_id = Some(id);
        self
    }

    /// Checks what the canonical encoding can represent.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.stream.is_empty() {
            return Err("stream name is empty");
        }
        if self.type_name.is_empty() {
            return Err("type name is empty");
        }
        let too_long = |n: usize| u32::try_from(n).is_err();
        if too_long(self.stream.len())
            || too_long(self.type_name.len())
            || too_long(self.payload.len())
            || self
                .idempotency_key
                .as_ref()
                .is_some_and(|k| too_long(k.len()))
        {
            return Err("a field is longer than 4 GiB");
        }
        Ok(())
    }
}

/// What the log answers for each record of an appended batch, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Global position of the stored record.
    pub position: u64,
    /// Version of the record in its stream.
    pub stream_version: u64,
    /// Event id of the stored record.
    pub event_id: Uuid,
    /// True when the idempotency key was already stored: nothing new was
    /// written and the fields above are those of the original record.
    pub duplicate: bool,
}

/// A stored record: the full envelope plus the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Global position, contiguous from 1.
    pub position: u64,
    /// Stream name.
    pub stream: String,
    /// Version within the stream, contiguous from 1.
    pub stream_version: u64,
    /// UUID v7 assigned by the log.
    pub event_id: Uuid,
    /// Milliseconds since the Unix epoch, from the writer's system clock.
    pub recorded_at_ms: u64,
    /// Type name of the payload.
    pub type_name: String,
    /// Schema version of the payload type.
    pub schema_version: u16,
    /// Id of the event that caused this one.
    pub causation_id: Option<Uuid>,
    /// Correlation id.
    pub correlation_id: Option<Uuid>,
    /// Idempotency key the record was appended with.
    pub idempotency_key: Option<String>,
    /// Opaque payload bytes.
    pub payload: Vec<u8>,
    /// Hash of the previous record ([`ChainHash::ZERO`] for position 1).
    pub prev_hash: ChainHash,
    /// SHA-256 of [`Record::canonical_bytes`].
    pub hash: ChainHash,
}

impl Record {
    /// The canonical encoding of every field except `hash`; see
    /// `docs/event-log.md` for the layout. Deterministic: equal records give
    /// equal bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            128 + self.stream.len()
                + self.type_name.len()
                + self.payload.len()
                + self.idempotency_key.as_ref().map_or(0, String::len),
        );
        out.push(CANONICAL_FORMAT);
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.position.to_be_bytes());
        put_bytes(&mut out, self.stream.as_bytes());
        out.extend_from_slice(&self.stream_version.to_be_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(&self.recorded_at_ms.to_be_bytes());
        put_bytes(&mut out, self.type_name.as_bytes());
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        put_uuid(&mut out, self.causation_id);
        put_uuid(&mut out, self.correlation_id);
        match &self.idempotency_key {
            None => out.push(0),
            Some(key) => {
                out.push(1);
                put_bytes(&mut out, key.as_bytes());
            }
        }
        put_bytes(&mut out, &self.payload);
        out
    }

    /// The hash this record's fields call for: SHA-256 of the canonical bytes
    /// (which begin with the previous hash).
    pub fn compute_hash(&self) -> ChainHash {
        ChainHash(Sha256::digest(self.canonical_bytes()).into())
    }

    /// Canonical bytes followed by the 32-byte hash: what a backend stores.
    pub(crate) fn stored_bytes(&self) -> Vec<u8> {
        let mut out = self.canonical_bytes();
        out.extend_from_slice(&self.hash.0);
        out
    }

    /// Sets `hash` from the other fields and returns the stored bytes, with
    /// one encoding: the writer hashes the canonical bytes and hands the same
    /// buffer (plus the hash) to the backend instead of encoding twice.
    pub(crate) fn seal(&mut self) -> Vec<u8> {
        let mut out = self.canonical_bytes();
        self.hash = ChainHash(Sha256::digest(&out).into());
        out.extend_from_slice(&self.hash.0);
        out
    }

    /// Inverse of [`Record::stored_bytes`]. Does not check the hash; that is
    /// the verifier's job.
    pub(crate) fn from_stored_bytes(bytes: &[u8]) -> Result<Record, &'static str> {
        let mut r = Cursor { rest: bytes };
        if r.u8()? != CANONICAL_FORMAT {
            return Err("unknown canonical format");
        }
        let prev_hash = ChainHash(r.array()?);
        let position = r.u64()?;
        let stream = r.string()?;
        let stream_version = r.u64()?;
        let event_id = Uuid::from_bytes(r.array()?);
        let recorded_at_ms = r.u64()?;
        let type_name = r.string()?;
        let schema_version = u16::from_be_bytes(r.array()?);
        let causation_id = r.uuid()?;
        let correlation_id = r.uuid()?;
        let idempotency_key = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return Err("bad option tag"),
        };
        let payload = r.bytes()?.to_vec();
        let hash = ChainHash(r.array()?);
        if !r.rest.is_empty() {
            return Err("trailing bytes");
        }
        Ok(Record {
            position,
            stream,
            stream_version,
            event_id,
            recorded_at_ms,
            type_name,
            schema_version,
            causation_id,
            correlation_id,
            idempotency_key,
            payload,
            prev_hash,
            hash,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths were checked by `NewRecord::check` (or by the importer) to fit
    // in u32; saturating keeps this total without a panic path.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_uuid(out: &mut Vec<u8>, id: Option<Uuid>) {
    match id {
        None => out.push(0),
        Some(id) => {
            out.push(1);
            out.extend_from_slice(id.as_bytes());
        }
    }
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("truncated record");
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| "truncated record")
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, &'static str> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8")
    }
    fn uuid(&mut self) -> Result<Option<Uuid>, &'static str> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(Uuid::from_bytes(self.array()?))),
            _ => Err("bad option tag"),
        }
    }
}

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Parses hexadecimal (either case); `None` on odd length or a bad digit.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record {
            position: 7,
            stream: "thread/1/2".into(),
            stream_version: 3,
            event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            recorded_at_ms: 1_700_000_000_000,
            type_name: "MessageReceived".into(),
            schema_version: 2,
            causation_id: Some(Uuid::from_u128(5)),
            correlation_id: None,
            idempotency_key: Some("k".into()),
            payload: br#"{"a":1}"#.to_vec(),
            prev_hash: ChainHash([9; 32]),
            hash: ChainHash::ZERO,
        };
        r.hash = r.compute_hash();
        r
    }

    #[test]
    fn stored_bytes_round_trip() {
        let r = sample();
        assert_eq!(Record::from_stored_bytes(&r.stored_bytes()), Ok(r));
    }

    #[test]
    fn seal_matches_compute_hash_and_stored_bytes() {
        let r = sample();
        let mut sealed = r.clone();
        sealed.hash = ChainHash::ZERO;
        let bytes = sealed.seal();
        assert_eq!(sealed, r);
        assert_eq!(bytes, r.stored_bytes());
    }

    /// Snapshot of the canonical layout: a change here is a format change and
    /// must bump `CANONICAL_FORMAT` and the docs.
    #[test]
    fn canonical_layout_snapshot() {
        let r = sample();
        let c = r.canonical_bytes();
        assert_eq!(c[0], 1);
        assert_eq!(&c[1..33], &[9; 32]);
        assert_eq!(&c[33..41], &7u64.to_be_bytes());
        assert_eq!(&c[41..45], &10u32.to_be_bytes());
        assert_eq!(&c[45..55], b"thread/1/2");
        let expected = [
            "0000000000000003",                 // stream version
            "01900000000070008000000000000001", // event id
            "0000018bcfe56800",                 // recorded at (ms)
            "0000000f",                         // type name length
            "4d657373616765526563656976656400", // "MessageReceived", schema version high byte
            "02",                               // schema version low byte
            "01",                               // causation present
            "00000000000000000000000000000005", // causation id
            "00",                               // correlation absent
            "01",                               // idempotency key present
            "00000001",                         // key length
            "6b",                               // "k"
            "00000007",                         // payload length
            "7b2261223a317d",                   // {"a":1}
        ]
        .concat();
        assert_eq!(to_hex(&c[55..]), expected);
    }

    #[test]
    fn hex_round_trip() {
        let h = ChainHash([0xab; 32]);
        assert_eq!(ChainHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChainHash::from_hex("zz"), None);
    }
}
