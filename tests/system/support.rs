//! Starting Baton for a test: a temporary data directory, a sled log, a
//! manual clock, port 0. Helpers to sign and post webhooks and to read the log.
#![allow(dead_code)]

use std::sync::Arc;

use domain::{Event, Timestamp};
use event_log::{EventStore, SledStore};
use server::{Config, ManualClock, Running};

/// 2026-11-01T09:00:00Z, where the emulator's clock starts too.
pub const T0: Timestamp = Timestamp::from_millis(1_793_523_600_000);
pub const PAGE: &str = "5550001";
/// A second page that none of the managed apps serves.
pub const OTHER_PAGE: &str = "5550002";
pub const BOT: &str = "1001";
pub const HUMAN: &str = "1002";
pub const BOT_SECRET: &str = "bot-app-secret";
pub const HUMAN_SECRET: &str = "human-app-secret";

/// A configuration with one Conversation Routing page, the bot as default app,
/// the human inbox app and the Page Inbox. `graph` is the Graph base URL.
pub fn config_toml(graph: &str, mode: &str) -> String {
    config_toml_with(graph, mode, Tuning::default())
}

/// Settings a test may change.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub timeout_ms: u64,
    pub rate: f64,
    pub burst: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            timeout_ms: 5000,
            rate: 300.0,
            burst: 300.0,
        }
    }
}

pub fn config_toml_with(graph: &str, mode: &str, tuning: Tuning) -> String {
    let (timeout, rate, burst) = (tuning.timeout_ms, tuning.rate, tuning.burst);
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "unused"
max_body_bytes = 65536
graph_timeout_ms = {timeout}
body_timeout_ms = 300
admin_token = "admin-secret"
send_backoff_ms = 1
send_rate_per_second = {rate}
send_burst = {burst}

[[pages]]
id = "{PAGE}"
name = "Test page"
routing = {mode}
apps = ["{BOT}", "{HUMAN}", "263902037430900"]

[[pages]]
id = "{OTHER_PAGE}"
name = "Another page, answered in the Page Inbox only"
routing = {{ mode = "conversation_routing", default_app = "263902037430900" }}
apps = ["263902037430900"]

[[apps]]
id = "{BOT}"
name = "Bot"
kind = "bot"
management = "managed"
may_take_control = true
app_secret = "{BOT_SECRET}"
verify_token = "verify-bot"
api_token = "baton-bot"
graph_base_url = "{graph}"
page_tokens = {{ "{PAGE}" = "page-token-bot" }}

[[apps]]
id = "{HUMAN}"
name = "Human inbox"
kind = "human"
management = "managed"
app_secret = "{HUMAN_SECRET}"
verify_token = "verify-human"
api_token = "baton-human"
graph_base_url = "{graph}"
page_tokens = {{ "{PAGE}" = "page-token-human" }}

[[apps]]
id = "263902037430900"
name = "Page Inbox"
kind = "human"
management = "external"
"#
    )
}

pub fn cr_mode() -> String {
    format!(r#"{{ mode = "conversation_routing", default_app = "{BOT}" }}"#)
}

pub struct TestBaton {
    pub running: Running<SledStore>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub config_text: String,
}

impl TestBaton {
    pub async fn start(config_text: &str) -> TestBaton {
        Self::start_in(tempfile::tempdir().unwrap(), config_text).await
    }

    pub async fn start_in(dir: tempfile::TempDir, config_text: &str) -> TestBaton {
        let config = Config::parse(config_text, "test.toml", |_| None).unwrap();
        let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let running = server::start(config, store, clock.clone()).await.unwrap();
        TestBaton {
            running,
            clock,
            dir,
            http: reqwest::Client::new(),
            config_text: config_text.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url())
    }

    /// Posts a body signed with `secret` in both schemes.
    pub async fn post_signed(&self, app: &str, secret: &str, body: &[u8]) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/webhooks/{app}")))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                wire::signature::sign_sha256(secret.as_bytes(), body),
            )
            .header(
                "x-hub-signature",
                wire::signature::sign_sha1(secret.as_bytes(), body),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn head(&self) -> u64 {
        self.running.state.store.head().await.unwrap().position
    }

    /// Every event in the log, decoded, in order.
    pub async fn events(&self) -> Vec<Event> {
        let records = self
            .running
            .state
            .store
            .read_all(1, 1_000_000)
            .await
            .unwrap();
        records
            .iter()
            .map(|r| Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap())
            .collect()
    }

    pub async fn count(&self, type_name: &str) -> usize {
        self.events()
            .await
            .iter()
            .filter(|e| e.type_name() == type_name)
            .count()
    }

    /// Stops the server and closes the store, keeping the data directory.
    pub async fn stop(self) -> (tempfile::TempDir, String) {
        let state = self.running.state.clone();
        self.running.stop().await;
        drop(state);
        (self.dir, self.config_text)
    }
}

/// A Messenger envelope with the given entries.
pub fn envelope(entries: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"object": "page", "entry": entries})).unwrap()
}

/// A user message item.
pub fn message_item(psid: &str, mid: &str, at: i64) -> serde_json::Value {
    serde_json::json!({
        "sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": at,
        "message": {"mid": mid, "text": "hello"}
    })
}
