//! Test support shared by Baton's system tests, CLI tests and benchmarks:
//! the one test configuration ([`BatonToml`]: a Conversation Routing page
//! with a bot, a human inbox and the Page Inbox, plus a page only the Page
//! Inbox answers), Baton started for a test ([`TestBaton`]: port 0, a
//! temporary sled log or a fresh PostgreSQL database, a manual clock) and
//! the whole stack with the emulator playing Meta ([`stack::Stack`]). It is
//! for tests only: nothing here is part of Baton.
//!
//! **Which store.** A test binary whose target name ends in `postgres`
//! (the system suite's second target, `system-postgres`, built from the
//! same sources as `system`) runs every [`TestBaton`] on PostgreSQL: a
//! database of its own on one [`TestServer`] shared by the binary; any
//! other binary runs on sled. See [`store_under_test`] and
//! [`sled_only`].

pub mod stack;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use domain::{Event, Timestamp};
use event_log::postgres::testing::TestServer;
use event_log::{AnyStore, EventStore, PgStore, SledStore};
use server::{Config, ManualClock, Running};

/// 2026-11-01T09:00:00Z, where the emulator's clock starts too.
pub const T0: Timestamp = Timestamp::from_millis(1_793_523_600_000);
pub const PAGE: &str = "5550001";
/// A second page that none of the managed apps serves.
pub const OTHER_PAGE: &str = "5550002";
pub const BOT: &str = "1001";
pub const HUMAN: &str = "1002";
pub const PAGE_INBOX: &str = "263902037430900";
pub const BOT_SECRET: &str = "bot-app-secret";
pub const HUMAN_SECRET: &str = "human-app-secret";
/// What Baton signs forwarded deliveries with (never Meta's app secret).
pub const BOT_FORWARD_SECRET: &str = "bot-forward-secret";
pub const HUMAN_FORWARD_SECRET: &str = "human-forward-secret";
pub const ADMIN_TOKEN: &str = "admin-secret";

/// Settings a test may change.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub timeout_ms: u64,
    pub rate: f64,
    pub burst: f64,
    /// How long a stop keeps answering 503 before closing the listener.
    pub stop_grace_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            timeout_ms: 5000,
            rate: 300.0,
            burst: 300.0,
            stop_grace_ms: 0,
        }
    }
}

/// The test configuration, as `baton.toml` text.
#[derive(Debug, Clone)]
pub struct BatonToml {
    graph: String,
    routing: String,
    data_dir: Option<PathBuf>,
    tuning: Tuning,
    bot_backend: Option<String>,
    human_backend: Option<String>,
    extra: Vec<String>,
    max_body_bytes: usize,
}

impl BatonToml {
    /// Conversation Routing with the bot as default app; `graph` is the
    /// Graph API base URL (the emulator's, or a closed port).
    pub fn new(graph: &str) -> Self {
        Self {
            graph: graph.to_owned(),
            routing: cr_mode(),
            data_dir: None,
            tuning: Tuning::default(),
            bot_backend: None,
            human_backend: None,
            extra: Vec::new(),
            max_body_bytes: 65_536,
        }
    }

    /// The largest request body Baton reads (64 KiB unless set).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// A top-level setting, as a TOML line (`metrics_token = "m"`).
    pub fn setting(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    /// The test page's `routing` value (TOML inline table).
    pub fn routing(mut self, routing: &str) -> Self {
        self.routing = routing.to_owned();
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Dispatch the bot's events to `url`.
    pub fn bot_backend(mut self, url: &str) -> Self {
        self.bot_backend = Some(url.to_owned());
        self
    }

    /// Dispatch the human inbox's events to `url`.
    pub fn human_backend(mut self, url: &str) -> Self {
        self.human_backend = Some(url.to_owned());
        self
    }

    pub fn render(&self) -> String {
        let Tuning {
            timeout_ms,
            rate,
            burst,
            stop_grace_ms,
        } = self.tuning;
        let graph = &self.graph;
        let routing = &self.routing;
        let data_dir = self
            .data_dir
            .as_ref()
            .map_or_else(|| "unused".to_owned(), |d| d.display().to_string());
        let backend = |url: &Option<String>| {
            url.as_ref()
                .map(|u| format!("backend_url = {u:?}\n"))
                .unwrap_or_default()
        };
        let (bot_backend, human_backend) =
            (backend(&self.bot_backend), backend(&self.human_backend));
        let extra = self.extra.join("\n");
        let max_body = self.max_body_bytes;
        format!(
            r#"
listen = "127.0.0.1:0"
data_dir = {data_dir:?}
max_body_bytes = {max_body}
graph_timeout_ms = {timeout_ms}
body_timeout_ms = 300
admin_token = "{ADMIN_TOKEN}"
send_backoff_ms = 1
stop_grace_ms = {stop_grace_ms}
send_rate_per_second = {rate}
send_burst = {burst}
{extra}

[[pages]]
id = "{PAGE}"
name = "Test page"
routing = {routing}
apps = ["{BOT}", "{HUMAN}", "{PAGE_INBOX}"]

[[pages]]
id = "{OTHER_PAGE}"
name = "Another page, answered in the Page Inbox only"
routing = {{ mode = "conversation_routing", default_app = "{PAGE_INBOX}" }}
apps = ["{PAGE_INBOX}"]

[[apps]]
id = "{BOT}"
name = "Bot"
kind = "bot"
management = "managed"
may_take_control = true
may_set_messenger_profile = true
app_secret = "{BOT_SECRET}"
forward_secret = "{BOT_FORWARD_SECRET}"
verify_token = "verify-bot"
api_token = "baton-bot"
graph_base_url = "{graph}"
page_tokens = {{ "{PAGE}" = "page-token-bot" }}
{bot_backend}
[[apps]]
id = "{HUMAN}"
name = "Human inbox"
kind = "human"
management = "managed"
app_secret = "{HUMAN_SECRET}"
forward_secret = "{HUMAN_FORWARD_SECRET}"
verify_token = "verify-human"
api_token = "baton-human"
graph_base_url = "{graph}"
page_tokens = {{ "{PAGE}" = "page-token-human" }}
{human_backend}
[[apps]]
id = "{PAGE_INBOX}"
name = "Page Inbox"
kind = "human"
management = "external"
"#
        )
    }
}

/// The test configuration with the page in `mode` (a TOML inline table).
pub fn config_toml(graph: &str, mode: &str) -> String {
    BatonToml::new(graph).routing(mode).render()
}

/// The test configuration (Conversation Routing, a Graph API nobody
/// answers) keeping what the server writes beside the log in `data_dir`:
/// for a test that starts the server on a store of its own.
pub fn offline_config(data_dir: &Path) -> Config {
    let text = BatonToml::new("http://127.0.0.1:9")
        .routing(&cr_mode())
        .data_dir(data_dir)
        .render();
    Config::parse(&text, "test.toml", |_| None).unwrap()
}

/// [`config_toml`] with other timeouts and rates.
pub fn config_toml_with(graph: &str, mode: &str, tuning: Tuning) -> String {
    BatonToml::new(graph).routing(mode).tuning(tuning).render()
}

/// The runtime tests and benchmarks drive Baton with: two workers, as the
/// machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Prints a figure a test measured so that it shows in CI's log even when
/// the test passes (the test harness captures `println!`, not the stream).
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Resident memory of this process, from /proc (Linux): no allocator hooks
/// (the workspace forbids `unsafe`), which is precise enough at a million
/// threads. For the benchmarks' bytes per thread.
pub fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A count from the environment (`BATON_BENCH_…`), or `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `app` controls the thread.
pub fn owner(app: &str) -> domain::events::ControlView {
    domain::events::ControlView::Owner {
        app: domain::AppId::parse(app).unwrap(),
    }
}

/// A text reply to `psid` as Meta's Send API takes it.
pub fn text(psid: &str, t: &str) -> serde_json::Value {
    serde_json::json!({"recipient": {"id": psid}, "messaging_type": "RESPONSE", "message": {"text": t}})
}

/// Conversation Routing with the bot as default app.
pub fn cr_mode() -> String {
    format!(r#"{{ mode = "conversation_routing", default_app = "{BOT}" }}"#)
}

/// Zero-config: every app answers, nobody owns.
pub fn zero_config_mode() -> String {
    r#"{ mode = "zero_config" }"#.to_owned()
}

/// Handover v1 with the bot as primary.
pub fn handover_v1_mode() -> String {
    format!(
        r#"{{ mode = "handover_v1", primary = "{BOT}", secondaries = ["{HUMAN}", "{PAGE_INBOX}"] }}"#
    )
}

/// The store a test binary runs Baton on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded sled log in the test's directory.
    Sled,
    /// A database of its own on the binary's shared [`TestServer`].
    Postgres,
}

/// The store this test binary runs Baton on, from the binary's name: a
/// test target named `…postgres` (cargo names its binary
/// `<target>-<hash>`, dashes as underscores) runs on PostgreSQL, any other
/// on sled. A runtime check, so one set of test sources compiles into both
/// targets with nothing passed around.
pub fn store_under_test() -> StoreKind {
    static KIND: std::sync::OnceLock<StoreKind> = std::sync::OnceLock::new();
    *KIND.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Drop cargo's `-<hash>` suffix.
        let target = name.rsplit_once('-').map_or(name, |(target, _)| target);
        if target.ends_with("postgres") {
            StoreKind::Postgres
        } else {
            StoreKind::Sled
        }
    })
}

/// For a test that is about sled itself (its files, its syncs, its lock):
/// returns `true`, after saying so on stderr, when this binary runs on
/// PostgreSQL, so the test returns early there:
///
/// ```ignore
/// if test_support::sled_only("it counts sled's syncs") { return; }
/// ```
///
/// The one place a test is skipped on PostgreSQL; `why` says why.
pub fn sled_only(why: &str) -> bool {
    let skip = store_under_test() == StoreKind::Postgres;
    if skip {
        report(&format!("skipped on PostgreSQL (sled only: {why})"));
    }
    skip
}

/// Opens the store for a test whose data directory is `dir`, on the store
/// under test: sled in `dir/log`, or PostgreSQL. The PostgreSQL database is
/// created on first use and its URL kept in `dir/postgres-url`, so a restart
/// on the same directory reconnects to the same database; the content-key
/// vault is `dir/vault`, where `baton serve` keeps it on PostgreSQL.
pub async fn open_store(dir: &Path) -> AnyStore {
    match store_under_test() {
        StoreKind::Sled => AnyStore::Sled(open_log(&dir.join("log")).await),
        StoreKind::Postgres => {
            let config = postgres_config(dir);
            match PgStore::connect(config).await {
                Ok(store) => AnyStore::Postgres(store),
                Err(e) => panic!("cannot open the PostgreSQL log of {}: {e}", dir.display()),
            }
        }
    }
}

/// The PostgreSQL store configuration of the test directory `dir` (see
/// [`open_store`]), creating its database on first use.
pub fn postgres_config(dir: &Path) -> event_log::PgStoreConfig {
    let url_file = dir.join("postgres-url");
    let url = match std::fs::read_to_string(&url_file) {
        Ok(url) => url.trim().to_owned(),
        Err(_) => {
            let server = TestServer::shared().expect("the test PostgreSQL server starts");
            let url = server.create_database().expect("a test database");
            std::fs::write(&url_file, &url).expect("writing postgres-url");
            url
        }
    };
    let mut config = event_log::PgStoreConfig::new(url);
    // Fail fast in tests rather than wait for a server that is gone.
    config.connect_timeout = std::time::Duration::from_secs(5);
    config
}

/// On PostgreSQL, the records of the test directory `dir`'s database that
/// hold `needle` anywhere (payload bytes or any text column), as
/// `"event_log_records position N"`; on sled nothing (the sled log is files
/// in `dir`, which a search of the directory covers). For tests that check
/// that content never reaches storage in clear.
pub fn database_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    if store_under_test() != StoreKind::Postgres {
        return Vec::new();
    }
    let url = postgres_config(dir).url;
    let database = url.rsplit('/').next().unwrap_or_default();
    let hex: String = needle.iter().map(|b| format!("{b:02x}")).collect();
    let sql = format!(
        "SELECT position FROM event_log_records r \
         WHERE position(decode('{hex}', 'hex') IN r.payload) > 0 \
            OR strpos(r::text, convert_from(decode('{hex}', 'hex'), 'UTF8')) > 0 \
         ORDER BY position"
    );
    let out = TestServer::shared()
        .expect("the test PostgreSQL server")
        .psql(database, &sql)
        .expect("searching the test database");
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|p| format!("event_log_records position {}", p.trim()))
        .collect()
}

/// The `store = …` line of a configuration file for the test directory
/// `dir`, and the environment the configuration needs: `store = "sled"`
/// on sled; on PostgreSQL the setting and `BATON_DATABASE_URL`, for tests
/// that run Baton as a separate process from a configuration file.
pub fn store_setting(dir: &Path) -> (String, Vec<(String, String)>) {
    match store_under_test() {
        StoreKind::Sled => ("store = \"sled\"".to_owned(), Vec::new()),
        StoreKind::Postgres => (
            // One node per database: restarted (after a kill too), it takes
            // its lease back at once.
            r#"store = { postgres = { url = { env = "BATON_DATABASE_URL" }, node_id = "test-node" } }"#
                .to_owned(),
            vec![(
                "BATON_DATABASE_URL".to_owned(),
                postgres_config(dir).url.clone(),
            )],
        ),
    }
}

#[derive(Debug)]
pub struct TestBaton {
    /// On the store under test ([`store_under_test`]).
    pub running: Running<AnyStore>,
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
        Self::start_at(dir, config_text, T0).await
    }

    /// Starts on `dir` with the clock at `now` (a restart later in a test).
    pub async fn start_at(dir: tempfile::TempDir, config_text: &str, now: Timestamp) -> TestBaton {
        let mut config = Config::parse(config_text, "test.toml", |_| None).unwrap();
        // Everything the server keeps (dispatch cursors, checkpoints) lives
        // in the test's own directory, whatever the text says.
        config.data_dir = dir.path().to_path_buf();
        let store = open_store(dir.path()).await;
        if let AnyStore::Postgres(pg) = &store {
            // What the server would have read from a file, for anything
            // that looks at the configuration's store setting.
            config.store =
                server::config::StoreSetting::Postgres(server::config::PostgresSetting {
                    url: server::Secret::new(postgres_config(dir.path()).url),
                    url_env: "BATON_DATABASE_URL".to_owned(),
                    shard: pg.shard(),
                    lease_ms: 10_000,
                    advertise_url: None,
                    node_id: None,
                });
        }
        let leased = matches!(store, AnyStore::Postgres(_));
        let store = Arc::new(store);
        let clock = Arc::new(ManualClock::new(now));
        // On PostgreSQL, as `baton serve` runs there: under the shard's
        // lease, which a lone node takes at once.
        let running = if leased {
            let cluster = server::Cluster {
                lease: std::time::Duration::from_secs(10),
                advertise_url: None,
                // One node per directory: restarted (after a crash too), it
                // takes its lease back at once, as a configured id does.
                node_id: Some(format!("test-node-{}", dir.path().display())),
            };
            server::start_leased(config, store, clock.clone(), cluster).await
        } else {
            server::start(config, store, clock.clone()).await
        }
        .unwrap();
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
        post_signed(&self.http, &self.running.base_url(), app, secret, body)
            .await
            .unwrap()
    }

    pub async fn head(&self) -> u64 {
        self.running.state.store.head().await.unwrap().position
    }

    /// Every event in the log, decoded with its content, in order.
    pub async fn events(&self) -> Vec<Event> {
        let store = &self.running.state.store;
        let records = store.read_all(1, 1_000_000).await.unwrap();
        records
            .iter()
            .map(|r| server::record::open(Some(store.vault()), r).unwrap().event)
            .collect()
    }

    /// Every send outcome in the log, in order.
    pub async fn send_outcomes(&self) -> Vec<domain::events::SendOutcome> {
        self.events()
            .await
            .into_iter()
            .filter_map(|e| match e {
                Event::SendOutcomeRecorded(o) => Some(o.outcome),
                _ => None,
            })
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
    /// Kills the server where it stands (no drain; see
    /// `server::Running::crash`) and lets go of its log.
    pub async fn crash(self) -> (tempfile::TempDir, String) {
        self.running.crash().await;
        (self.dir, self.config_text)
    }

    pub async fn stop(self) -> (tempfile::TempDir, String) {
        let store = self.running.state.store.clone();
        self.running.stop().await;
        if let Ok(store) = Arc::try_unwrap(store) {
            store.close().await;
        }
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

/// Opens the sled log, waiting (a bounded time) for a store of this process
/// that was just closed to let go of the directory lock.
pub async fn open_log(path: &std::path::Path) -> SledStore {
    SledStore::open_when_free(path, std::time::Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("cannot open the log at {}: {e}", path.display()))
}

/// Posts `body` to `base`'s webhook path for `app`, signed with `secret`
/// both ways, as Meta does.
pub async fn post_signed(
    http: &reqwest::Client,
    base: &str,
    app: &str,
    secret: &str,
    body: &[u8],
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/webhooks/{app}"))
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
}
