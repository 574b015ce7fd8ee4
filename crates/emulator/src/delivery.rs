//! Webhook delivery: envelopes, signatures, the ordered delivery worker,
//! retries and the attempt log; and Meta's other call to an app, the
//! data-deletion callback with its `signed_request`.
//!
//! One worker sends every delivery in the order the engine planned them, so
//! tests see Meta-like ordering without races. It never sleeps between
//! retries; it retries at once, up to the configured attempt count. Releases
//! of held deliveries and late redeliveries are jobs on the same queue, so
//! they happen after everything queued before them.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use crate::api::{DeliveryAttempt, DeliveryResult, ReleaseOrder};
use crate::engine::{Engine, Planned, WebhookFault};
use crate::server::Shared;

/// A webhook ready to send, signed when it was made.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    pub id: u64,
    pub app_id: String,
    pub url: String,
    pub channel: String,
    pub body: String,
    pub signature_256: String,
    pub signature_1: String,
}

impl Delivery {
    fn signed(
        id: u64,
        app_id: String,
        url: String,
        secret: &str,
        channel: String,
        body: String,
    ) -> Self {
        Delivery {
            id,
            app_id,
            url,
            channel,
            signature_256: signature_256(secret, body.as_bytes()),
            signature_1: signature_1(secret, body.as_bytes()),
            body,
        }
    }
}

/// What the worker is asked to do.
#[derive(Debug)]
pub(crate) enum Work {
    /// New deliveries: every webhook fault applies.
    Send(Vec<Delivery>),
    /// Lift the holds for an app (every app: `None`) and send what they kept;
    /// drop and duplicate faults apply, holds do not.
    Release {
        app_id: Option<String>,
        order: ReleaseOrder,
    },
    /// Meta's late retry of an earlier delivery: no fault applies.
    Redeliver(Delivery),
}

/// A unit of work for the worker; `done` is answered after it is attempted.
#[derive(Debug)]
pub(crate) struct Job {
    pub work: Work,
    pub done: Option<oneshot::Sender<Vec<DeliveryResult>>>,
}

/// Which webhook faults apply to one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Faults {
    All,
    AllButHold,
    None,
}

/// `sha256=<hex>` over the raw body.
pub fn signature_256(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex>` over the raw body (the legacy header).
pub fn signature_1(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Meta's `signed_request`: `<sig>.<payload>`, where `payload` is
/// `payload_json` in base64url without padding and `sig` is the base64url
/// (no padding) HMAC-SHA256 of that `payload` string, keyed with the app
/// secret. Signing with another secret gives a forged one.
pub fn signed_request(secret: &str, payload_json: &str) -> String {
    let payload = URL_SAFE_NO_PAD.encode(payload_json.as_bytes());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{sig}.{payload}")
}

/// POSTs `signed_request` as a form to an app's data-deletion callback, once
/// (Meta documents no retries): `(status, body, error)`, the body parsed as
/// JSON when it is JSON, else kept as text.
pub(crate) async fn data_deletion_callback(
    url: &str,
    signed_request: &str,
    timeout_ms: u64,
) -> (Option<u16>, Value, Option<String>) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(timeout_ms.max(1)))
        .build()
        .unwrap_or_default();
    let sent = client
        .post(url)
        .form(&[("signed_request", signed_request)])
        .send()
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.text().await {
                Ok(text) => {
                    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    (Some(status), body, None)
                }
                Err(e) => (Some(status), Value::Null, Some(e.to_string())),
            }
        }
        Err(e) => (None, Value::Null, Some(e.to_string())),
    }
}

/// Escapes every non-ASCII character as `\uXXXX` (lowercase hex, surrogate
/// pairs beyond the BMP), as Meta does for webhook bodies. Only valid on
/// serialized JSON, where non-ASCII can occur only inside strings.
pub(crate) fn escape_unicode(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn serialize(engine: &Engine, envelope: &Value) -> String {
    let body = envelope.to_string();
    if engine.settings.escape_unicode {
        escape_unicode(&body)
    } else {
        body
    }
}

/// One delivery per planned item: `{"object":"page","entry":[{id,time,<channel>:[item]}]}`.
pub(crate) fn single_deliveries(engine: &mut Engine, planned: Vec<Planned>) -> Vec<Delivery> {
    let now = engine.now();
    let mut out = Vec::new();
    for p in planned {
        let Some((url, secret)) = engine.endpoint_of(&p.app_id) else {
            continue;
        };
        let mut entry = json!({"id": p.page_id, "time": now});
        entry[p.channel.key()] = json!([p.item]);
        let body = serialize(engine, &json!({"object": "page", "entry": [entry]}));
        let id = engine.next_seq();
        let channel = p.channel.key().to_string();
        out.push(Delivery::signed(id, p.app_id, url, &secret, channel, body));
    }
    out
}

/// One delivery per app holding all its held items: consecutive items for the
/// same page and channel share an entry.
pub(crate) fn batched_deliveries(engine: &mut Engine, planned: Vec<Planned>) -> Vec<Delivery> {
    let now = engine.now();
    let mut apps: Vec<String> = Vec::new();
    for p in &planned {
        if !apps.contains(&p.app_id) {
            apps.push(p.app_id.clone());
        }
    }
    let mut out = Vec::new();
    for app in apps {
        let Some((url, secret)) = engine.endpoint_of(&app) else {
            continue;
        };
        let mut entries: Vec<(String, &'static str, Vec<Value>)> = Vec::new();
        for p in planned.iter().filter(|p| p.app_id == app) {
            match entries.last_mut() {
                Some((page, ch, items)) if *page == p.page_id && *ch == p.channel.key() => {
                    items.push(p.item.clone())
                }
                _ => entries.push((p.page_id.clone(), p.channel.key(), vec![p.item.clone()])),
            }
        }
        let entries: Vec<Value> = entries
            .into_iter()
            .map(|(page, ch, items)| {
                let mut e = json!({"id": page, "time": now});
                e[ch] = json!(items);
                e
            })
            .collect();
        let body = serialize(engine, &json!({"object": "page", "entry": entries}));
        let id = engine.next_seq();
        out.push(Delivery::signed(
            id,
            app,
            url,
            &secret,
            "batch".into(),
            body,
        ));
    }
    out
}

/// The worker: sends jobs in order until the queue closes.
pub(crate) async fn worker(mut rx: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(
            shared.lock().settings.timeout_ms.max(1),
        ))
        .build()
        .unwrap_or_default();
    while let Some(job) = rx.recv().await {
        let (deliveries, faults) = match job.work {
            Work::Send(deliveries) => (deliveries, Faults::All),
            Work::Release { app_id, order } => (
                shared.lock().release_held(app_id.as_deref(), order),
                Faults::AllButHold,
            ),
            Work::Redeliver(d) => (vec![d], Faults::None),
        };
        let mut results = Vec::new();
        for d in deliveries {
            results.push(deliver(&shared, &client, d, faults).await);
        }
        if let Some(done) = job.done {
            let _ = done.send(results);
        }
    }
}

async fn deliver(
    shared: &Shared,
    client: &reqwest::Client,
    d: Delivery,
    faults: Faults,
) -> DeliveryResult {
    let attempt = |attempt: u32, status: Option<u16>, error: Option<String>| DeliveryAttempt {
        seq: 0,
        delivery_id: d.id,
        attempt,
        at_ms: 0,
        app_id: d.app_id.clone(),
        url: d.url.clone(),
        channel: d.channel.clone(),
        body: d.body.clone(),
        signature_256: d.signature_256.clone(),
        signature_1: d.signature_1.clone(),
        status,
        error,
        dropped: false,
        held: false,
    };
    let record = |n: u32, status: Option<u16>, error: Option<String>, dropped: bool| {
        shared.lock().record_attempt(DeliveryAttempt {
            dropped,
            ..attempt(n, status, error)
        });
    };
    let mut result = DeliveryResult {
        delivery_id: d.id,
        app_id: d.app_id.clone(),
        url: d.url.clone(),
        channel: d.channel.clone(),
        attempts: 0,
        status: None,
        ok: false,
        dropped: false,
        held: false,
    };
    let (fault, max_attempts) = {
        let mut eng = shared.lock();
        let fault = match faults {
            Faults::All => eng.take_webhook_fault(&d.app_id, true),
            Faults::AllButHold => eng.take_webhook_fault(&d.app_id, false),
            Faults::None => None,
        };
        if fault == Some(WebhookFault::Hold) {
            // Logged and kept under one lock, so a release never misses it.
            eng.record_attempt(DeliveryAttempt {
                held: true,
                ..attempt(0, None, Some("held by fault".into()))
            });
            eng.hold(d.clone());
            result.held = true;
            return result;
        }
        (fault, eng.settings.max_attempts.max(1))
    };
    if fault == Some(WebhookFault::Drop) {
        record(0, None, Some("dropped by fault".into()), true);
        result.dropped = true;
        return result;
    }
    let rounds = if fault == Some(WebhookFault::Duplicate) {
        2
    } else {
        1
    };
    for _ in 0..rounds {
        for _ in 0..max_attempts {
            result.attempts += 1;
            let sent = client
                .post(&d.url)
                .header("Content-Type", "application/json")
                .header("X-Hub-Signature-256", &d.signature_256)
                .header("X-Hub-Signature", &d.signature_1)
                .body(d.body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // Drain the body so the connection can be reused.
                    let _ = resp.bytes().await;
                    record(result.attempts, Some(status), None, false);
                    result.status = Some(status);
                    if status == 200 {
                        result.ok = true;
                        break;
                    }
                }
                Err(e) => {
                    record(result.attempts, None, Some(e.to_string()), false);
                    result.status = None;
                }
            }
        }
    }
    result
}
