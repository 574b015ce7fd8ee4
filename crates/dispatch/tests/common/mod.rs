//! Test support: backends on 127.0.0.1:0 that record what they are sent and
//! can be told to fail or hang, event builders, and order checks.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use dispatch::{BackendConfig, BackendStatus, DispatchConfig, Dispatcher, ManualClock, Secret};
use domain::events::{Channel, DeliveryCopy, MessagingEventCopyReceived, UnattributedItemReceived};
use domain::ids::{AppId, PageId, Psid, ThreadKey, Timestamp};
use domain::Event;
use event_log::EventStore;
use serde_json::{json, Value};
use tokio::sync::watch;

pub const PAGE: &str = "1001";
pub const BOT: &str = "111";
pub const INBOX: &str = "222";
pub const BOT_SECRET: &str = "bot-secret";
pub const INBOX_SECRET: &str = "inbox-secret";

/// One POST as a backend received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub sig256: Option<String>,
    pub sig1: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// Every (channel, item) of the envelope.
    pub fn items(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for entry in self.json()["entry"].as_array().expect("entry array") {
            for ch in ["messaging", "standby"] {
                if let Some(items) = entry[ch].as_array() {
                    out.extend(items.iter().map(|i| (ch.to_owned(), i.clone())));
                }
            }
        }
        out
    }
}

/// What a backend answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Fail(u16),
    Hang,
}

type Policy = Box<dyn Fn(&Value) -> Reply + Send + Sync>;

struct State {
    delivered: Mutex<Vec<Received>>,
    attempts: Mutex<u64>,
    policy: Mutex<Policy>,
    tick: watch::Sender<u64>,
}

/// A webhook backend on port 0.
pub struct Backend {
    pub url: String,
    state: Arc<State>,
    handle: ServerHandle,
}

async fn receive(req: HttpRequest, body: web::Bytes, st: web::Data<State>) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = (st.policy.lock().unwrap())(&json);
    *st.attempts.lock().unwrap() += 1;
    if reply == Reply::Ok {
        st.delivered.lock().unwrap().push(Received {
            sig256: h("X-Hub-Signature-256"),
            sig1: h("X-Hub-Signature"),
            content_type: h("Content-Type"),
            body: body.to_vec(),
        });
    }
    st.tick.send_modify(|t| *t += 1);
    match reply {
        Reply::Ok => HttpResponse::Ok().body("EVENT_RECEIVED"),
        Reply::Fail(code) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap()).finish()
        }
        Reply::Hang => std::future::pending().await,
    }
}

impl Backend {
    pub fn start() -> Backend {
        let state = Arc::new(State {
            delivered: Mutex::new(Vec::new()),
            attempts: Mutex::new(0),
            policy: Mutex::new(Box::new(|_| Reply::Ok)),
            tick: watch::Sender::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let data = web::Data::from(state.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let srv = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/webhook", web::post().to(receive))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .listen(listener)
                .unwrap()
                .run();
                tx.send(srv.handle()).unwrap();
                let _ = srv.await;
            })
        });
        Backend {
            url,
            state,
            handle: rx.recv().unwrap(),
        }
    }

    /// Decide each answer from the envelope's JSON.
    pub fn set_policy(&self, policy: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        *self.state.policy.lock().unwrap() = Box::new(policy);
    }

    pub fn delivered(&self) -> Vec<Received> {
        self.state.delivered.lock().unwrap().clone()
    }

    pub fn attempts(&self) -> u64 {
        *self.state.attempts.lock().unwrap()
    }

    /// Every delivered (channel, item), in arrival order.
    pub fn items(&self) -> Vec<(String, Value)> {
        self.delivered().iter().flat_map(Received::items).collect()
    }

    /// Waits (no sleeping: on each request) until `cond` holds; panics after
    /// a generous safety limit so a broken build fails instead of hanging.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&Backend) -> bool) {
        let mut rx = self.state.tick.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                rx.borrow_and_update();
                if cond(self) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for: {what}");
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

pub fn app(id: &str) -> AppId {
    AppId::parse(id).unwrap()
}

pub fn thread(psid: &str) -> ThreadKey {
    ThreadKey::new(PageId::parse(PAGE).unwrap(), Psid::parse(psid).unwrap())
}

/// A raw messaging item as Meta would deliver it: `text` carries `seq`.
pub fn raw_message(psid: &str, seq: u64, text: &str) -> Value {
    json!({
        "sender": {"id": psid},
        "recipient": {"id": PAGE},
        "timestamp": 1_700_000_000_000u64 + seq,
        "message": {"mid": format!("m-{psid}-{seq}"), "text": text, "seq": seq}
    })
}

/// The copy of item `seq` of thread `psid` that `to` received on `channel`.
pub fn copy(psid: &str, seq: u64, to: &str, channel: Channel) -> Event {
    copy_with_text(psid, seq, to, channel, &format!("hello {seq}"))
}

pub fn copy_with_text(psid: &str, seq: u64, to: &str, channel: Channel, text: &str) -> Event {
    Event::MessagingEventCopyReceived(MessagingEventCopyReceived {
        thread: thread(psid),
        at: Timestamp::from_millis(1_700_000_000_000 + i64::try_from(seq).unwrap()),
        dedupe_key: format!("m-{psid}-{seq}"),
        delivery: DeliveryCopy {
            app: app(to),
            channel,
        },
        raw: raw_message(psid, seq, text),
    })
}

pub fn unattributed(to: &str, n: u64) -> Event {
    Event::UnattributedItemReceived(UnattributedItemReceived {
        page: PageId::parse(PAGE).unwrap(),
        at: Timestamp::from_millis(1_700_000_000_000),
        delivery: DeliveryCopy {
            app: app(to),
            channel: Channel::Messaging,
        },
        raw: json!({"recipient": {"id": PAGE}, "timestamp": 1, "mystery": n}),
    })
}

/// Appends events one batch, as ingress would; answers their positions.
pub async fn append<S: EventStore>(store: &S, events: &[Event]) -> Vec<u64> {
    let batch = events.iter().map(orchestration::encode).collect();
    store
        .append(batch)
        .await
        .unwrap()
        .iter()
        .map(|a| a.position)
        .collect()
}

/// Test configuration: fast backoff, a manual clock.
pub fn config(
    backends: &[(&str, &Backend, &str)],
    dir: &std::path::Path,
    clock: Arc<ManualClock>,
) -> DispatchConfig {
    let mut cfg = DispatchConfig::new(
        backends
            .iter()
            .map(|(id, b, secret)| BackendConfig {
                app: app(id),
                url: b.url.clone(),
                secret: Secret::new(*secret),
            })
            .collect(),
        dir,
    );
    cfg.backoff_base = Duration::from_millis(1);
    cfg.backoff_cap = Duration::from_millis(20);
    cfg.http_timeout = Duration::from_secs(5);
    cfg.cursor_flush_interval = Duration::from_millis(5);
    cfg.clock = clock;
    cfg
}

/// (psid, seq) of a delivered item.
pub fn key_of(item: &Value) -> (String, u64) {
    (
        item["sender"]["id"].as_str().unwrap().to_owned(),
        item["message"]["seq"].as_u64().unwrap(),
    )
}

/// Checks at-least-once, in order per thread: in each thread, item `n` is
/// first delivered only after `n - 1` was, and every `expected` item arrived.
/// Answers the number of duplicate deliveries.
pub fn check_order(items: &[(String, Value)], expected: &BTreeMap<String, u64>) -> u64 {
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0;
    for (_, item) in items {
        let (psid, seq) = key_of(item);
        if !seen.insert((psid.clone(), seq)) {
            duplicates += 1;
            continue;
        }
        let want = next.entry(psid.clone()).or_insert(0);
        assert_eq!(
            seq, *want,
            "thread {psid}: got item {seq} before item {want} (gap or reordering)"
        );
        *want += 1;
    }
    for (psid, count) in expected {
        assert_eq!(
            next.get(psid).copied().unwrap_or(0),
            *count,
            "thread {psid} incomplete"
        );
    }
    duplicates
}

/// Waits until `app`'s status satisfies `cond` (on each status change).
pub async fn wait_status<S: EventStore + 'static>(
    d: &Dispatcher<S>,
    id: &str,
    what: &str,
    cond: impl Fn(&BackendStatus) -> bool,
) -> BackendStatus {
    let mut rx = d.subscribe_status(&app(id)).expect("configured app");
    let waited = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|s| cond(s))).await;
    match waited {
        Ok(Ok(s)) => s.clone(),
        _ => panic!(
            "timed out waiting for status: {what}; last {:?}",
            d.app_status(&app(id))
        ),
    }
}
