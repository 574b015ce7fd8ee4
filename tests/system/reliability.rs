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
use event_log::{EventStore, SledStore};
use serde_json::json;
use server::projections::State;

use crate::support::*;

fn config(dir: &std::path::Path, backend: &str) -> std::path::PathBuf {
    let text = config_toml("http://127.0.0.1:9", &cr_mode())
        .replace(
            "data_dir = \"unused\"",
            &format!("data_dir = {:?}", dir.join("data").display().to_string()),
        )
        .replacen(
            "page_tokens = { \"5550001\" = \"page-token-bot\" }",
            &format!(
                "page_tokens = {{ \"5550001\" = \"page-token-bot\" }}\nbackend_url = \"{backend}\""
            ),
            1,
        );
    let path = dir.join("baton.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The bot's backend: records (thread, mid) in arrival order, for the whole test.
struct Backend {
    url: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl Backend {
    fn start() -> Backend {
        use actix_web::{web, App, HttpResponse, HttpServer};
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let arrived = Arc::new(tokio::sync::Notify::new());
        let (s, a) = (seen.clone(), arrived.clone());
        let server = HttpServer::new(move || {
            let (s, a) = (s.clone(), a.clone());
            App::new().route(
                "/webhook",
                web::post().to(move |body: web::Bytes| {
                    let (s, a) = (s.clone(), a.clone());
                    async move {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            let item = &v["entry"][0]["messaging"][0];
                            if let (Some(psid), Some(mid)) = (
                                item["sender"]["id"].as_str(),
                                item["message"]["mid"].as_str(),
                            ) {
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
        Backend { url, seen, arrived }
    }

    /// Waits until `n` distinct items have arrived.
    async fn wait_for_distinct(&self, n: usize) {
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
    fn per_thread(&self) -> BTreeMap<String, Vec<String>> {
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

fn spawn(config: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reliability-server"))
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the server says where it listens")
        .to_owned();
    Server { child, url }
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
    let store = SledStore::open(dir.path().join("data/log")).unwrap();
    let report = event_log::verify(&store).await.unwrap();
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
                    .push(m.raw["message"]["mid"].as_str().unwrap().to_owned());
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
    let store = SledStore::open(dir.path().join("data/log")).unwrap();
    let parsed = server::Config::load(&config).unwrap();
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
