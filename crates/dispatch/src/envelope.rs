//! Meta's webhook envelope and signature headers for one delivery to a
//! backend. Pure: no I/O, and the secret never leaves the signing call.

use domain::events::Channel;
use domain::ids::PageId;
use serde_json::Value;

use crate::config::Secret;

/// The body and headers of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEnvelope {
    pub body: Vec<u8>,
    /// `sha256=<hex>` for `X-Hub-Signature-256`.
    pub signature_256: String,
    /// `sha1=<hex>` for `X-Hub-Signature`.
    pub signature_1: String,
}

/// `{"object":"page","entry":[{"id":PAGE,"time":MS,"<channel>":[items…]}]}`,
/// signed with `secret` over the exact bytes.
pub fn envelope(
    page: &PageId,
    time_ms: i64,
    channel: Channel,
    items: &[&Value],
    secret: &Secret,
) -> SignedEnvelope {
    let mut entry = serde_json::Map::new();
    entry.insert("id".into(), Value::String(page.as_str().to_owned()));
    entry.insert("time".into(), Value::from(time_ms));
    entry.insert(
        channel.name().into(),
        Value::Array(items.iter().map(|v| (*v).clone()).collect()),
    );
    let body = serde_json::json!({ "object": "page", "entry": [Value::Object(entry)] });
    sign(meta_json(&body), secret)
}

/// Signs `body` as it is, for the headers Meta would send with it.
pub fn sign(body: Vec<u8>, secret: &Secret) -> SignedEnvelope {
    SignedEnvelope {
        signature_256: wire::signature::sign_sha256(secret.expose(), &body),
        signature_1: wire::signature::sign_sha1(secret.expose(), &body),
        body,
    }
}

/// JSON as Meta writes it: compact, with every non-ASCII character escaped
/// as `\uXXXX` (a surrogate pair beyond the Basic Multilingual Plane).
pub fn meta_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    serde::Serialize::serialize(value, &mut ser).expect("a JSON value always serialises");
    out
}

/// serde_json's compact formatter, escaping non-ASCII characters.
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}
