//! NDJSON export, offline verification and import of the log. The file
//! carries every hashed field, so it can be verified on another machine
//! without sled; nothing here interprets payloads.

use std::io::{BufRead, Write};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{ExportError, ImportError, VerifyError};
use crate::record::{from_hex, to_hex, ChainHash, Head, Record};
use crate::store::EventStore;
use crate::verify::{ChainVerifier, VerifyReport};

/// One exported line. Field order is fixed by this struct, so an export is
/// deterministic.
#[derive(Serialize)]
struct LineOut<'a> {
    position: u64,
    stream: &'a str,
    stream_version: u64,
    event_id: Uuid,
    recorded_at_ms: u64,
    #[serde(rename = "type")]
    type_name: &'a str,
    schema_version: u16,
    causation_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    idempotency_key: Option<&'a str>,
    prev_hash: String,
    hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
    /// A note on the payload's sealed content (`"erased"`), outside the hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    position: u64,
    stream: String,
    stream_version: u64,
    event_id: Uuid,
    recorded_at_ms: u64,
    #[serde(rename = "type")]
    type_name: String,
    schema_version: u16,
    causation_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    idempotency_key: Option<String>,
    prev_hash: String,
    hash: String,
    // `Option<&RawValue>` alone would read a payload of `null` as absent.
    #[serde(default, borrow, deserialize_with = "present_raw")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_hex: Option<String>,
    /// Read and ignored: a note, not part of the record.
    #[serde(default, rename = "content")]
    _content: Option<String>,
}

fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The payload as a JSON value whose text is exactly its bytes, or `None`
/// when it must be written as hex (not UTF-8, not JSON, multi-line, or with
/// surrounding whitespace that a JSON value would not keep).
fn payload_as_json(bytes: &[u8]) -> Option<&RawValue> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.contains(['\n', '\r']) {
        return None;
    }
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    (raw.get() == text).then_some(raw)
}

/// One record as an NDJSON line, without the trailing newline.
pub fn ndjson_line(record: &Record) -> String {
    ndjson_line_noted(record, None)
}

/// [`ndjson_line`] with a note on the payload's sealed content (such as
/// `"erased"`) in a `content` field that the hash does not cover.
pub fn ndjson_line_noted(record: &Record, content: Option<&str>) -> String {
    let payload = payload_as_json(&record.payload);
    let line = LineOut {
        position: record.position,
        stream: &record.stream,
        stream_version: record.stream_version,
        event_id: record.event_id,
        recorded_at_ms: record.recorded_at_ms,
        type_name: &record.type_name,
        schema_version: record.schema_version,
        causation_id: record.causation_id,
        correlation_id: record.correlation_id,
        idempotency_key: record.idempotency_key.as_deref(),
        prev_hash: record.prev_hash.to_hex(),
        hash: record.hash.to_hex(),
        payload,
        payload_hex: payload.is_none().then(|| to_hex(&record.payload)),
        content,
    };
    // Serializing plain strings, integers and a validated raw value to a
    // String cannot fail.
    #[allow(clippy::expect_used)]
    serde_json::to_string(&line).expect("serialize an NDJSON line")
}

/// Parses one NDJSON line (without its newline) back into a record. Does not
/// check the hash; see [`ChainVerifier`].
pub fn parse_ndjson_line(line: &[u8]) -> Result<Record, String> {
    let parsed: LineIn<'_> = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    let payload = match (parsed.payload, parsed.payload_hex) {
        (Some(raw), None) => raw.get().as_bytes().to_vec(),
        (None, Some(hex)) => from_hex(&hex).ok_or("payload_hex is not hexadecimal")?,
        _ => return Err("exactly one of payload and payload_hex is required".into()),
    };
    let hash = |text: &str, field: &str| {
        ChainHash::from_hex(text).ok_or_else(|| format!("{field} is not 64 hexadecimal digits"))
    };
    Ok(Record {
        position: parsed.position,
        stream: parsed.stream,
        stream_version: parsed.stream_version,
        event_id: parsed.event_id,
        recorded_at_ms: parsed.recorded_at_ms,
        type_name: parsed.type_name,
        schema_version: parsed.schema_version,
        causation_id: parsed.causation_id,
        correlation_id: parsed.correlation_id,
        idempotency_key: parsed.idempotency_key,
        payload,
        prev_hash: hash(&parsed.prev_hash, "prev_hash")?,
        hash: hash(&parsed.hash, "hash")?,
    })
}

const PAGE: usize = 1024;

/// Writes every record up to the head at the time of the call as NDJSON,
/// one record per line, and returns that head.
pub async fn export_ndjson<S: EventStore, W: Write>(
    store: &S,
    out: W,
) -> Result<Head, ExportError> {
    export_ndjson_noted(store, out, |_| None).await
}

/// [`export_ndjson`] with `note` saying, for each record, what became of its
/// sealed content (see [`ndjson_line_noted`]).
pub async fn export_ndjson_noted<S: EventStore, W: Write>(
    store: &S,
    mut out: W,
    note: impl Fn(&Record) -> Option<&'static str>,
) -> Result<Head, ExportError> {
    let head = store.head().await?;
    let mut next = 1;
    while next <= head.position {
        let limit = usize::try_from(head.position - next + 1).map_or(PAGE, |n| n.min(PAGE));
        let page = store.read_all(next, limit).await?;
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        for record in &page {
            out.write_all(ndjson_line_noted(record, note(record)).as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(head)
}

/// Reads NDJSON lines and hands out records that passed the chain check.
struct VerifiedLines<R> {
    reader: R,
    verifier: ChainVerifier,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> VerifiedLines<R> {
    fn new(reader: R, verifier: ChainVerifier) -> VerifiedLines<R> {
        VerifiedLines {
            reader,
            verifier,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn next_record(&mut self) -> Result<Option<Record>, VerifyError> {
        self.buf.clear();
        // Bytes, not `read_line`: a damaged byte that breaks UTF-8 must be
        // reported at its line, not as an I/O error.
        if self.reader.read_until(b'\n', &mut self.buf)? == 0 {
            return Ok(None);
        }
        self.line += 1;
        let text = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        let record = parse_ndjson_line(text).map_err(|reason| VerifyError::Malformed {
            line: self.line,
            position: self.verifier.head().position + 1,
            reason,
        })?;
        self.verifier
            .check(&record)
            .map_err(|(position, fault)| VerifyError::Broken {
                position,
                line: Some(self.line),
                fault,
            })?;
        Ok(Some(record))
    }

    fn report(&self) -> VerifyReport {
        VerifyReport {
            records: self.verifier.head().position,
            head: self.verifier.head(),
        }
    }
}

/// Verifies an NDJSON export without any store: the chain from position 1,
/// reporting the first bad line and position. A file cut short after a
/// whole line still verifies; compare the returned head with the live one.
pub fn verify_ndjson<R: BufRead>(reader: R) -> Result<VerifyReport, VerifyError> {
    verify_ndjson_with(reader, ChainVerifier::new()).map(|(report, _)| report)
}

/// [`verify_ndjson`] with a given verifier (one carrying anchors); hands it
/// back so the caller can ask what it matched.
pub(crate) fn verify_ndjson_with<R: BufRead>(
    reader: R,
    verifier: ChainVerifier,
) -> Result<(VerifyReport, ChainVerifier), VerifyError> {
    let mut lines = VerifiedLines::new(reader, verifier);
    while lines.next_record()?.is_some() {}
    Ok((lines.report(), lines.verifier))
}

/// Imports an NDJSON export into an EMPTY store, verifying as it goes and
/// keeping the original positions, ids, times and hashes.
///
/// Records are written in verified chunks; if a later line fails, the store
/// keeps the verified prefix written so far (the error says how many).
/// The store must not receive other appends meanwhile.
pub async fn import_ndjson<S: EventStore, R: BufRead>(
    store: &S,
    reader: R,
) -> Result<VerifyReport, ImportError> {
    let head = store.head().await?;
    if head.position != 0 {
        return Err(ImportError::NotEmpty {
            head: head.position,
        });
    }
    let mut lines = VerifiedLines::new(reader, ChainVerifier::new());
    let mut chunk = Vec::with_capacity(PAGE);
    let mut imported = 0;
    loop {
        let next = lines
            .next_record()
            .map_err(|source| ImportError::Verify { imported, source })?;
        let done = next.is_none();
        chunk.extend(next);
        if chunk.len() >= PAGE || (done && !chunk.is_empty()) {
            let head = store
                .restore(std::mem::take(&mut chunk))
                .await
                .map_err(|source| ImportError::Append { imported, source })?;
            imported = head.position;
        }
        if done {
            return Ok(lines.report());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_that_are_not_exact_json_go_hex() {
        assert!(payload_as_json(br#"{"a":1}"#).is_some());
        assert!(payload_as_json(b"null").is_some());
        assert!(payload_as_json(b" 1").is_none());
        assert!(payload_as_json(b"{\n}").is_none());
        assert!(payload_as_json(b"not json").is_none());
        assert!(payload_as_json(&[0xff, 0x00]).is_none());
    }
}
