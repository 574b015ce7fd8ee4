//! The reliability suite: Baton is killed with SIGKILL under webhook load,
//! again and again, on one data directory. Every webhook that got a 200 must
//! be in the log exactly once, positions have no gap, the chain verifies,
//! replaying the log equals the live projections of a restarted server, and
//! the bot's backend receives every recorded item with no gap and no
//! reordering per thread (duplicates allowed: dispatch is at least once).
//! Short form in CI: 20 kills (`BATON_RELIABILITY_CYCLES` for the long form).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use domain::Event;
use event_log::EventStore;
use serde_json::json;
use server::projections::State;

use crate::support::*;

fn config(dir: &std::path::Path, backend: &str) -> std::path::PathBuf {
    let text = BatonToml::new("http://127.0.0.1:9")
        .data_dir(&dir.join("data"))
        .setting(&store_line(dir))
        .bot_backend(backend)
        .render();
    let path = dir.join("baton.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `store = …` line for the server's data directory `dir/data`: the
/// store under test (the server runs as a separate process, so it reads
/// the store from its configuration; see [`spawn`] for the environment).
fn store_line(dir: &std::path::Path) -> String {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    test_support::store_setting(&data).0
}

/// The bot's backend: records (thread, mid) in arrival order, for the whole test.
pub(crate) struct Backend {
    pub(crate) url: String,
    pub(crate) seen: Arc<Mutex<Vec<(String, String)>>>,
    arrived: Arc<tokio::sync::Notify>,
    /// Items of this thread are answered 503 (its handler is down).
    refuse: Arc<Mutex<Option<String>>>,
}

impl Backend {
    pub(crate) fn start() -> Backend {
        use actix_web::{web, App, HttpResponse, HttpServer};
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let refuse: Arc<Mutex<Option<String>>> = Arc::default();
        let (s, a, limit) = (seen.clone(), arrived.clone(), refuse.clone());
        let server = HttpServer::new(move || {
            let (s, a, limit) = (s.clone(), a.clone(), limit.clone());
            App::new().route(
                "/webhook",
                web::post().to(move |body: web::Bytes| {
                    let (s, a, limit) = (s.clone(), a.clone(), limit.clone());
                    async move {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            let item = &v["entry"][0]["messaging"][0];
                            if let (Some(psid), Some(mid)) = (
                                item["sender"]["id"].as_str(),
                                item["message"]["mid"].as_str(),
                            ) {
                                if limit.lock().unwrap().as_deref() == Some(psid) {
                                    return HttpResponse::ServiceUnavailable().finish();
                                }
                                s.lock().unwrap().push((psid.to_owned(), mid.to_owned()));
                                a.notify_waiters();
                            }
                        }
                        HttpResponse::Ok().finish()
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}/webhook", server.addrs()[0]);
        tokio::spawn(server.run());
        Backend {
            url,
            seen,
            arrived,
            refuse,
        }
    }

    /// Waits until `n` distinct items have arrived.
    pub(crate) async fn wait_for_distinct(&self, n: usize) {
        loop {
            let notified = self.arrived.notified();
            if self
                .seen
                .lock()
                .unwrap()
                .iter()
                .map(|(_, m)| m)
                .collect::<BTreeSet<_>>()
                .len()
                >= n
            {
                return;
            }
            notified.await;
        }
    }

    /// Each thread's mids in the order of their first arrival.
    pub(crate) fn per_thread(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut first = BTreeSet::new();
        for (psid, mid) in self.seen.lock().unwrap().iter() {
            if first.insert(mid.clone()) {
                out.entry(psid.clone()).or_default().push(mid.clone());
            }
        }
        out
    }
}

struct Server {
    child: Child,
    url: String,
}

/// Starts the server on `config` (`DIR/baton.toml`, data in `DIR/data`),
/// with the environment its store setting needs.
fn spawn(config: &std::path::Path) -> Server {
    let data = config.with_file_name("data");
    let (_, env) = test_support::store_setting(&data);
    let (child, url) = spawn_server(config, env, "error", Stdio::null());
    Server { child, url }
}

/// Starts `reliability-server` on `config` with `env` and `RUST_LOG=log`,
/// its log to `stderr`; answers the process and the URL it listens on.
pub(crate) fn spawn_server(
    config: &std::path::Path,
    env: Vec<(String, String)>,
    log: &str,
    stderr: Stdio,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reliability-server"))
        .arg(config)
        .envs(env)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{} says where it listens: {line:?}", config.display()))
        .to_owned();
    (child, url)
}

/// Verifies the chain (and that positions have no gap) and counts the
/// message facts by dedupe key (`<page>:mid:<mid>`).
pub(crate) async fn verified_message_facts<S: EventStore>(
    store: &S,
) -> (Vec<event_log::Record>, BTreeMap<String, usize>) {
    let report = event_log::verify(store).await.unwrap();
    let records = store.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(
        records.len() as u64,
        report.records,
        "positions have no gap"
    );
    let mut facts: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        if let Ok(Event::MessagingEventReceived(m)) =
            Event::decode(&r.type_name, r.schema_version, &r.payload)
        {
            *facts.entry(m.dedupe_key).or_default() += 1;
        }
    }
    (records, facts)
}

/// The bot's dispatch cursor as the server stored it for the data directory
/// `data`: a file there on sled, a row of the database on PostgreSQL.
async fn stored_cursor(data: &std::path::Path) -> Option<dispatch::CursorState> {
    let bot = domain::AppId::parse(BOT).unwrap();
    match store_under_test() {
        StoreKind::Sled => dispatch::CursorFile::new(&data.join("dispatch"), &bot)
            .load()
            .unwrap(),
        StoreKind::Postgres => {
            let store = event_log::PgStore::connect(postgres_config(data))
                .await
                .unwrap();
            let cursor = dispatch::SharedCursors::load(&store, &bot).await.unwrap();
            store.close().await;
            cursor
        }
    }
}

fn body(mid: &str, psid: &str) -> Vec<u8> {
    envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item(psid, mid, T0.millis())]}]),
    )
}

async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Option<u16> {
    let res = http
        .post(format!("{url}/webhooks/{BOT}"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .ok()?;
    Some(res.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_webhook_load_loses_no_acknowledged_webhook() {
    let cycles: usize = std::env::var("BATON_RELIABILITY_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    let config = config(dir.path(), &backend.url);
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for cycle in 0..cycles {
        let mut server = spawn(&config);
        // Kill after a varying number of acknowledgements, while requests are in flight.
        let kill_after = 3 + (cycle * 7) % 40;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut tasks = Vec::new();
        for task in 0..8 {
            let (url, acked, count, tx) =
                (server.url.clone(), acked.clone(), count.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                for n in 0.. {
                    let mid = format!("c{cycle}-t{task}-{n}");
                    match post(&http, &url, body(&mid, &format!("u{}", n % 25))).await {
                        Some(200) => {
                            acked.lock().unwrap().insert(mid);
                            if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
                                == kill_after
                            {
                                let _ = tx.try_send(());
                            }
                        }
                        Some(_) => {}
                        None => return, // the server is gone
                    }
                }
            }));
        }
        drop(tx);
        rx.recv().await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }

    // Every acknowledged webhook is in the log exactly once; the chain verifies.
    let store = open_store(&dir.path().join("data")).await;
    let (_, facts) = verified_message_facts(&store).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= cycles * 3,
        "the load really ran: {} acks",
        acked.len()
    );
    for mid in &acked {
        assert_eq!(
            facts.get(&format!("{PAGE}:mid:{mid}")),
            Some(&1),
            "acknowledged {mid} must be recorded exactly once"
        );
    }
    assert!(facts.values().all(|n| *n == 1), "no fact is recorded twice");
    store.close().await;

    // Replay equals live: a restarted server replays the log, takes more
    // webhooks live, and its projections equal an offline replay.
    let mut server = spawn(&config);
    let http = reqwest::Client::new();
    for n in 0..10 {
        assert_eq!(
            post(
                &http,
                &server.url,
                body(&format!("final-{n}"), &format!("u{n}"))
            )
            .await,
            Some(200)
        );
    }
    let live: serde_json::Value = http
        .get(format!("{}/api/admin/projections", server.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Dispatch: every item recorded for the bot reaches its backend, in order per thread.
    let export = http
        .get(format!("{}/api/admin/export", server.url))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in export.lines() {
        let r = event_log::parse_ndjson_line(line.as_bytes()).unwrap();
        if let Ok(Event::MessagingEventReceived(m)) =
            Event::decode(&r.type_name, r.schema_version, &r.payload)
        {
            if m.delivery.app.as_str() == BOT {
                expected
                    .entry(m.thread.psid.to_string())
                    .or_default()
                    // The mid: the raw item is sealed content.
                    .push(message_mid(&m));
            }
        }
    }
    let total: usize = expected.values().map(Vec::len).sum();
    backend.wait_for_distinct(total).await;
    let received = backend.per_thread();
    for (psid, mids) in &expected {
        assert_eq!(
            received.get(psid),
            Some(mids),
            "thread {psid}: a gap or a reordering in dispatch"
        );
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let store = open_store(&dir.path().join("data")).await;
    let (_, env) = test_support::store_setting(&dir.path().join("data"));
    let parsed = server::Config::parse(
        &std::fs::read_to_string(&config).unwrap(),
        "baton.toml",
        |name| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()),
    )
    .unwrap();
    let mut state = State::new(parsed.pages.values().map(|(_, p)| p.clone()));
    let position = live["position"].as_u64().unwrap();
    for r in store
        .read_all(1, usize::MAX)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.position <= position)
    {
        state.apply_record(r);
    }
    assert_eq!(
        state.digest(),
        live["digest"].as_str().unwrap(),
        "replay from zero equals live"
    );
    store.close().await;
}

/// How a request under a stop ended. A client that is told "stopping"
/// backs off, as Meta and a well-behaved app do.
#[derive(Debug)]
enum Ended {
    Answered(u16, serde_json::Value),
    /// No connection: the server had stopped accepting.
    Refused,
    /// A connection that broke without an answer: what a stop must not do.
    Broken(String),
}

async fn ended(req: reqwest::RequestBuilder) -> Ended {
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.bytes().await {
                Ok(body) => Ended::Answered(
                    status,
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                ),
                Err(e) => Ended::Broken(format!("answer cut off: {e}")),
            }
        }
        Err(e) if e.is_connect() => Ended::Refused,
        Err(e) => Ended::Broken(e.to_string()),
    }
}

/// Sends SIGTERM (the stop `baton serve`, systemd and containers use) and
/// waits for the process to exit; answers whether it exited cleanly.
async fn terminate(mut server: Server) -> bool {
    let pid = server.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
    tokio::task::spawn_blocking(move || server.child.wait().unwrap().success())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_and_loses_nothing() {
    use emulator::{AppConfig, Emulator, PageConfig, World};
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::start();
    // The backend acknowledges every thread but one right up to the stop
    // (only the cursor written at the stop remembers the last of them); the
    // refused thread's items wait, and go out after the restart.
    *backend.refuse.lock().unwrap() = Some("w4".to_owned());
    // Meta: the emulator, which knows the people the bot answers.
    let world = World::default()
        .with_page(PageConfig::conversation_routing(PAGE, BOT))
        .with_app(AppConfig::new(BOT, BOT_SECRET).with_token(PAGE, "page-token-bot"));
    let emulator = Emulator::start(world).unwrap();
    let ctl = emulator.control();
    const READERS: usize = 4;
    for u in 0..READERS {
        ctl.user_text(PAGE, &format!("s{u}"), "hello")
            .await
            .unwrap();
    }
    let path = dir.path().join("baton.toml");
    let text = BatonToml::new(&emulator.base_url())
        .data_dir(&dir.path().join("data"))
        .setting(&store_line(dir.path()))
        .bot_backend(&backend.url)
        .tuning(Tuning {
            stop_grace_ms: 300,
            ..Tuning::default()
        })
        .render();
    std::fs::write(&path, text).unwrap();

    let server = spawn(&path);
    let url = server.url.clone();
    // A fresh connection per request: a stopped server refuses, it cannot
    // break a pooled connection under a request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // The people open their window at Baton's clock (the system's).
    let now = server::Clock::now(&server::SystemClock).millis();
    for u in 0..READERS {
        let body = envelope(
            json!([{"id": PAGE, "time": now, "messaging": [message_item(&format!("s{u}"), &format!("open-{u}"), now)]}]),
        );
        assert_eq!(post(&http, &url, body).await, Some(200));
    }

    let acked_webhooks: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered = Arc::new(AtomicUsize::new(0));
    let broken: Arc<Mutex<Vec<String>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for task in 0..3 {
        let (http, url, acked, answered, broken, progress) = (
            http.clone(),
            url.clone(),
            acked_webhooks.clone(),
            answered.clone(),
            broken.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let mid = format!("w{task}.{i}");
                let b = body(&mid, &format!("w{}", i % 5));
                let req = http
                    .post(format!("{url}/webhooks/{BOT}"))
                    .header("content-type", "application/json")
                    .header(
                        "x-hub-signature-256",
                        wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &b),
                    )
                    .body(b);
                match ended(req).await {
                    Ended::Answered(503, body) if body["error"] == "stopping" => return,
                    Ended::Answered(status, _) => {
                        if status == 200 {
                            acked.lock().unwrap().push(mid);
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        progress.notify_one();
                    }
                    Ended::Refused => return,
                    Ended::Broken(e) => broken.lock().unwrap().push(e),
                }
            }
        }));
    }
    for task in 0..2 {
        let (http, url, sent, answered, broken, progress) = (
            http.clone(),
            url.clone(),
            sent.clone(),
            answered.clone(),
            broken.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let psid = format!("s{}", (task + i) % READERS);
                let req = http
                    .post(format!("{url}/v21.0/me/messages"))
                    .bearer_auth("baton-bot")
                    .json(
                        &json!({"recipient": {"id": psid}, "messaging_type": "RESPONSE",
                        "message": {"text": format!("answer {task}.{i}")}}),
                    );
                match ended(req).await {
                    Ended::Answered(503, body)
                        if body["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("stopping")) =>
                    {
                        return
                    }
                    Ended::Answered(status, body) => {
                        if status == 200 {
                            let mid = body["message_id"].as_str().unwrap().to_owned();
                            sent.lock().unwrap().push(mid);
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        progress.notify_one();
                    }
                    Ended::Refused => return,
                    Ended::Broken(e) => broken.lock().unwrap().push(e),
                }
            }
        }));
    }
    while answered.load(Ordering::SeqCst) < 60 {
        progress.notified().await;
    }
    assert!(terminate(server).await, "SIGTERM stops Baton cleanly");
    for t in tasks {
        t.await.unwrap();
    }
    let broken = broken.lock().unwrap().clone();
    assert!(
        broken.is_empty(),
        "every request is answered or refused: {broken:?}"
    );
    let acked_webhooks = acked_webhooks.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(!acked_webhooks.is_empty() && !sent.is_empty());
    let delivered_before_restart = backend.seen.lock().unwrap().len();
    let acked_before: BTreeSet<String> = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    // The cursor written at the stop covers everything acknowledged.
    let cursor = stored_cursor(&dir.path().join("data"))
        .await
        .expect("the stop wrote the bot's cursor");

    // Restart with the backend whole again: dispatch resumes where its
    // cursor was written at the stop.
    *backend.refuse.lock().unwrap() = None;
    let server = spawn(&path);
    backend
        .wait_for_distinct(acked_webhooks.len() + READERS)
        .await;
    let export = reqwest::Client::new()
        .get(format!("{}/api/admin/export", server.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(terminate(server).await);

    // Nothing acknowledged is lost: every 200 webhook's item and every 200
    // send's outcome is in the log.
    let mut recorded_mids = BTreeSet::new();
    let mut sent_mids = BTreeSet::new();
    for line in export.lines() {
        let r = event_log::parse_ndjson_line(line.as_bytes()).unwrap();
        match Event::decode(&r.type_name, r.schema_version, &r.payload) {
            Ok(Event::MessagingEventReceived(m)) => {
                // The mid: the raw item is sealed content.
                let mid = message_mid(&m);
                if acked_before.contains(&mid) {
                    assert!(
                        r.position < cursor.cursor || cursor.settled.contains(&r.position),
                        "{mid} at {} was acknowledged before the stop; the cursor written then says {cursor:?}",
                        r.position
                    );
                }
                recorded_mids.insert(mid);
            }
            Ok(Event::SendOutcomeRecorded(o)) => {
                if let domain::events::SendOutcome::Sent { message_id, .. } = o.outcome {
                    sent_mids.insert(message_id);
                }
            }
            _ => {}
        }
    }
    for mid in &acked_webhooks {
        assert!(
            recorded_mids.contains(mid),
            "acknowledged webhook {mid} is in the log"
        );
    }
    for mid in &sent {
        assert!(
            sent_mids.contains(mid),
            "answered send {mid} has its outcome in the log"
        );
    }
    // Dispatch re-delivered nothing its backend acknowledged before the stop.
    let seen = backend.seen.lock().unwrap().clone();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, mid) in &seen {
        *counts.entry(mid).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered twice after the restart: {twice:?}"
    );
    println!(
        "sigterm: {} webhooks and {} sends answered 200 before the stop, {} items delivered before it and {} after, none twice",
        acked_webhooks.len(),
        sent.len(),
        delivered_before_restart,
        seen.len() - delivered_before_restart
    );
}

/// Resident memory of process `pid`, from /proc (bytes).
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Bytes of records in the running server's log (from its export).
async fn logged_bytes(http: &reqwest::Client, url: &str) -> u64 {
    let export = http
        .get(format!("{url}/api/admin/export"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    export
        .lines()
        .map(|l| {
            event_log::parse_ndjson_line(l.as_bytes())
                .unwrap()
                .payload
                .len() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_cost_bounded_memory_and_disk() {
    const REQUESTS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    let config = BatonToml::new("http://127.0.0.1:9")
        .data_dir(&dir.path().join("data"))
        .setting(&store_line(dir.path()))
        .setting("app_requests_per_second = 1000000")
        .render();
    std::fs::write(&path, config).unwrap();
    let mut server = spawn(&path);
    let http = reqwest::Client::new();
    let junk = "j".repeat(4000);
    let body = |i: u64| {
        let mut b = text(&format!("random-{i}"), "hello?");
        for f in 0..12 {
            b[format!("junk{f}")] = json!(junk);
        }
        b
    };
    let refuse = |i: u64| {
        http.post(format!("{}/v21.0/me/messages", server.url))
            .bearer_auth("baton-human")
            .json(&body(i))
            .send()
    };
    // Warm up the allocator and the connection pool first.
    for i in 0..200 {
        assert_eq!(refuse(1_000_000 + i).await.unwrap().status(), 400);
    }
    let pid = server.child.id();
    let (rss_before, bytes_before) = (rss_bytes(pid), logged_bytes(&http, &server.url).await);
    for i in 0..REQUESTS {
        assert_eq!(refuse(i).await.unwrap().status(), 400);
    }
    let rss_per = rss_bytes(pid).saturating_sub(rss_before) / REQUESTS;
    let disk_per = (logged_bytes(&http, &server.url).await - bytes_before) / REQUESTS;
    println!(
        "refusals: {REQUESTS} refused sends of {} bytes each: +{rss_per} B RSS and +{disk_per} B of records per request",
        serde_json::to_vec(&body(0)).unwrap().len(),
    );
    let digest: serde_json::Value = http
        .get(format!("{}/api/admin/projections", server.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(digest["threads"], 0, "no thread state");
    server.child.kill().unwrap();
    let _ = server.child.wait();
    assert!(
        disk_per <= 2048,
        "a refusal's record is a bounded summary: {disk_per} B"
    );
    // Baton's own state does not grow; what memory grows is the log's caches
    // of what it wrote (the recent-record cache, at most 16 MiB, and sled's
    // page cache, 64 MiB by default): bounded in total, about a record's
    // size per request until they fill.
    assert!(
        rss_per <= 8 * disk_per + 1024,
        "memory per refusal is the log's cache of its record: {rss_per} B RSS for {disk_per} B stored"
    );
}

/// The mid of a recorded message (its raw item is sealed content).
fn message_mid(m: &domain::events::MessagingEventReceived) -> String {
    match &m.event {
        domain::events::InboundEvent::Message { mid, .. } => mid.clone(),
        _ => String::new(),
    }
}
