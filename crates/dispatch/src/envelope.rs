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
    let body = serde_json::to_vec(&body).expect("a JSON value always serialises");
    SignedEnvelope {
        signature_256: wire::signature::sign_sha256(secret.expose(), &body),
        signature_1: wire::signature::sign_sha1(secret.expose(), &body),
        body,
    }
}
