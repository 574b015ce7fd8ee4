//! The real `baton` binary against a realistic log: the real server runs
//! in-process on port 0 with a temporary sled directory, receives signed
//! webhooks and app sends (a stub stands in for the Graph API), and is
//! stopped; then the binary verifies, exports, replays, audits and redrives.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use domain::events::DispatchDeadLettered;
use domain::{AppId, Event, PageId, Psid, ThreadKey, Timestamp};
use event_log::{EventStore, SledStore};
use serde_json::{json, Value};
use server::{Config, ManualClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use test_support::{ADMIN_TOKEN as ADMIN, BOT, BOT_SECRET, HUMAN, HUMAN_SECRET, PAGE};

/// 2026-11-01T09:00:00Z.
const T0: i64 = test_support::T0.millis();

fn config_toml(data_dir: &Path, graph: &str) -> String {
    test_support::BatonToml::new(graph)
        .data_dir(data_dir)
        .render()
}

/// A Graph API stand-in that accepts every send.
async fn graph_stub() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut sock, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as many body bytes as it announces.
                loop {
                    let Ok(read) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buf).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = format!(r#"{{"recipient_id":"u1","message_id":"m_out_{n}"}}"#);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A stopped server's data directory with a realistic log.
struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The live projections' digest after the last append.
    live_digest: String,
    /// Position of u1's first message (delivered to the bot), dead-lettered.
    dead_item: u64,
    /// Position of u2's message (delivered to the bot, not dead-lettered).
    u2_item: u64,
    /// Position of the `ThreadRouted` of u1.
    routed: u64,
    /// Position of the `DispatchDeadLettered` record.
    dead_letter: u64,
}

fn envelope(items: Value, channel: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"object": "page", "entry": [{"id": PAGE, "time": T0, channel: items}]}),
    )
    .unwrap()
}

fn message(psid: &str, mid: &str, at: i64) -> Value {
    json!({"sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": at, "message": {"mid": mid, "text": "hello"}})
}

async fn post_signed(http: &reqwest::Client, base: &str, app: &str, secret: &str, body: Vec<u8>) {
    let res = http
        .post(format!("{base}/webhooks/{app}"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            wire::signature::sign_sha256(secret.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

async fn send(http: &reqwest::Client, base: &str, token: &str) -> u16 {
    http.post(format!("{base}/v21.0/me/messages?access_token={token}"))
        .json(&json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = test_support::runtime();
    let (store, config, live_digest, positions) = rt.block_on(async {
        let graph = graph_stub().await;
        let text = config_toml(dir.path(), &graph);
        let config_path = dir.path().join("baton.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::parse(&text, "baton.toml", |_| None).unwrap();
        let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0)));
        let running = server::start(config, store.clone(), clock.clone()).await.unwrap();
        let base = running.base_url();
        let http = reqwest::Client::new();

        // 09:00 u1 writes to the page: the bot (default app) gets the thread.
        post_signed(&http, &base, BOT, BOT_SECRET, envelope(json!([message("u1", "m.1", T0)]), "messaging")).await;
        // 09:01 the bot answers; the human inbox tries too and is refused.
        clock.set(Timestamp::from_millis(T0 + 60_000));
        assert_eq!(send(&http, &base, "baton-bot").await, 200);
        assert_eq!(send(&http, &base, "baton-human").await, 400);
        // 09:05 the bot passes the thread to the human inbox through Baton;
        // Meta's webhook to the human confirms it.
        clock.set(Timestamp::from_millis(T0 + 300_000));
        let passed = http
            .post(format!("{base}/v21.0/me/pass_thread_control?access_token=baton-bot"))
            .json(&json!({"recipient": {"id": "u1"}, "target_app_id": HUMAN, "metadata": "to a human"}))
            .send()
            .await
            .unwrap();
        assert_eq!(passed.status(), 200);
        let pass = json!({"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": T0 + 300_000,
            "pass_thread_control": {"previous_owner_app_id": BOT, "new_owner_app_id": HUMAN, "metadata": "to a human"}});
        post_signed(&http, &base, HUMAN, HUMAN_SECRET, envelope(json!([pass]), "messaging")).await;
        // 09:10 u1 opts in to a one-time notification; u2 writes too.
        let optin = json!({"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": T0 + 600_000,
            "optin": {"type": "one_time_notif_req", "one_time_notif_token": "tok-1", "payload": "restock"}});
        post_signed(&http, &base, BOT, BOT_SECRET, envelope(json!([optin]), "standby")).await;
        post_signed(&http, &base, BOT, BOT_SECRET, envelope(json!([message("u2", "m.2", T0 + 600_000)]), "messaging")).await;

        // Find the positions the tests need.
        let records = store.read_all(1, 10_000).await.unwrap();
        let events: Vec<(u64, Event)> = records
            .iter()
            .map(|r| (r.position, Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap()))
            .collect();
        let find = |pred: &dyn Fn(&Event) -> bool| events.iter().find(|(_, e)| pred(e)).map(|(p, _)| *p).unwrap();
        let dead_item = find(&|e| matches!(e, Event::MessagingEventReceived(m) if m.dedupe_key.contains("m.1")));
        let u2_item = find(&|e| matches!(e, Event::MessagingEventReceived(m) if m.dedupe_key.contains("m.2")));
        let routed = find(&|e| matches!(e, Event::ThreadRouted(_)));
        assert!(events.iter().any(|(_, e)| matches!(e, Event::ThreadControlPassed(_))));
        assert!(events.iter().any(|(_, e)| matches!(e, Event::OneTimeTokenIssued(_))));

        // The bot's backend never took u1's first message: a dead letter,
        // as dispatch records it.
        let dead = Event::DispatchDeadLettered(DispatchDeadLettered {
            app: AppId::parse(BOT).unwrap(),
            position: dead_item,
            thread: Some(ThreadKey::new(PageId::parse(PAGE).unwrap(), Psid::parse("u1").unwrap())),
            at: Timestamp::from_millis(T0 + 3_600_000),
            attempts: 7,
            last_error: "HTTP 500 from the backend".into(),
        });
        let appended = store
            .append(vec![orchestration::encode(&dead)])
            .await
            .unwrap();
        let dead_letter = appended[0].position;
        running.state.projections.wait_for(dead_letter).await;
        let live_digest = running.state.projections.read().digest();

        running.stop().await;
        (store, config_path, live_digest, (dead_item, u2_item, routed, dead_letter))
    });
    // Dropping the runtime drops the aborted tasks and their handles on the store.
    drop(rt);
    let store = release(store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(store.close());
    drop(rt);
    wait_unlocked(dir.path());
    let (dead_item, u2_item, routed, dead_letter) = positions;
    Fixture {
        dir,
        config,
        live_digest,
        dead_item,
        u2_item,
        routed,
        dead_letter,
    }
}

/// sled's own threads may hold the directory lock for a moment after
/// `close` returns; wait until another process can open the log (the lock
/// is a condition, not a duration).
fn wait_unlocked(data_dir: &Path) {
    for _ in 0..1000 {
        let out = baton(&["verify", "--data-dir", data_dir.to_str().unwrap()]);
        if code(&out) == 0 {
            return;
        }
        assert!(all(&out).contains("locked"), "{}", all(&out));
        std::thread::yield_now();
    }
    panic!("the event log stayed locked after the server stopped");
}

/// Waits until every other handle on the store is gone (the server's
/// worker threads drop theirs as they finish).
fn release(mut store: Arc<SledStore>) -> SledStore {
    for _ in 0..1_000_000 {
        match Arc::try_unwrap(store) {
            Ok(s) => return s,
            Err(again) => {
                store = again;
                std::thread::yield_now();
            }
        }
    }
    panic!("the server still holds the event log");
}

impl Fixture {
    fn data_dir(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

fn baton(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env_remove("BATON_ADMIN_TOKEN")
        .env_remove("BATON_CONFIG")
        .output()
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn all(out: &Output) -> String {
    format!("{}{}", stdout(out), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn verify_export_and_detect_tampering() {
    let f = fixture();
    let out = baton(&["verify", "--data-dir", f.data_dir()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("ok: {} records", f.dead_letter)),
        "{}",
        all(&out)
    );
    assert!(stdout(&out).contains("head hash"), "{}", all(&out));

    let export = f.dir.path().join("export.ndjson");
    let out = baton(&[
        "export",
        "--data-dir",
        f.data_dir(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = std::fs::read_to_string(&export).unwrap();
    assert_eq!(text.lines().count() as u64, f.dead_letter);

    let out = baton(&["verify", "--export", export.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["records"], f.dead_letter);

    // Export to stdout gives the same bytes.
    let out = baton(&["export", "--config", f.config()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert_eq!(stdout(&out), text);

    // One changed byte inside a payload (the kind of u2's message; its text
    // is sealed) breaks the chain there.
    let lines: Vec<&str> = text.lines().collect();
    let victim = f.u2_item as usize - 1;
    let tampered_line = lines[victim].replacen("\"kind\":\"message\"", "\"kind\":\"massage\"", 1);
    assert_ne!(tampered_line, lines[victim]);
    let mut tampered = lines.clone();
    tampered[victim] = &tampered_line;
    let bad = f.dir.path().join("tampered.ndjson");
    std::fs::write(&bad, tampered.join("\n") + "\n").unwrap();
    let out = baton(&["verify", "--export", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!(
            "first bad position {} (line {})",
            f.u2_item, f.u2_item
        )),
        "{}",
        all(&out)
    );

    // A removed line is found where it was.
    let mut cut = lines.clone();
    cut.remove(2);
    let gap = f.dir.path().join("gap.ndjson");
    std::fs::write(&gap, cut.join("\n") + "\n").unwrap();
    let out = baton(&["verify", "--export", gap.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains("first bad position 3"),
        "{}",
        all(&out)
    );

    // Reading a damaged file for a replay is a failed check too.
    let out = baton(&["replay", "--export", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        all(&out).contains(&format!("position {}", f.u2_item)),
        "{}",
        all(&out)
    );
}

#[test]
fn replay_rebuilds_what_the_server_had() {
    let f = fixture();
    let out = baton(&["replay", "--data-dir", f.data_dir(), "--config", f.config()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("digest        {}", f.live_digest)),
        "{text}"
    );
    assert!(text.contains("self-check    ok"), "{text}");
    assert!(
        text.contains(&format!("position      {}", f.dead_letter)),
        "{text}"
    );

    let out = baton(&["replay", "--config", f.config(), "--json"]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["digest"], f.live_digest.as_str());
    assert_eq!(report["threads"], 2);
    assert_eq!(report["owners"]["active"][HUMAN], 1, "{report}");
    assert_eq!(report["owners"]["active"][BOT], 1, "{report}");
    assert_eq!(report["halves_agree"], true);

    // From an export, with the pages: the same digest.
    let export = f.dir.path().join("export.ndjson");
    assert_eq!(
        code(&baton(&[
            "export",
            "--data-dir",
            f.data_dir(),
            "--out",
            export.to_str().unwrap()
        ])),
        0
    );
    let out = baton(&[
        "replay",
        "--export",
        export.to_str().unwrap(),
        "--config",
        f.config(),
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["digest"], f.live_digest.as_str());
}

#[test]
fn audit_thread_shows_the_state_at_a_time_and_why() {
    let f = fixture();
    // Without --at the state is now's, which depends on the machine's clock.
    let out = baton(&["audit", "thread", PAGE, "u1", "--config", f.config()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains("ThreadControlPassed"),
        "{}",
        all(&out)
    );

    let out = baton(&[
        "audit",
        "thread",
        PAGE,
        "u1",
        "--config",
        f.config(),
        "--at",
        "2026-11-01T12:00:00Z",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = stdout(&out);
    assert!(text.contains("state             active"), "{text}");
    assert!(
        text.contains(&format!("owner             {HUMAN}")),
        "{text}"
    );
    assert!(text.contains("ThreadRouted"), "{text}");
    assert!(text.contains(&format!("routed to {BOT}")), "{text}");
    assert!(text.contains("ThreadControlPassed"), "{text}");
    assert!(
        text.contains(&format!("control passed from {BOT} to {HUMAN}")),
        "{text}"
    );
    assert!(text.contains("2026-11-01T09:05:00Z"), "{text}");
    assert!(text.contains("tokens available  1 (tok-1"), "{text}");
    assert!(
        text.contains("CommandRefused"),
        "the refused send is part of the history: {text}"
    );

    // At 09:02, before the pass: the bot owned it, and no token yet.
    let out = baton(&[
        "audit",
        "thread",
        PAGE,
        "u1",
        "--config",
        f.config(),
        "--at",
        "2026-11-01T09:02:00Z",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("owner             {BOT}")), "{text}");
    assert!(text.contains(&format!("answering app     {BOT}")), "{text}");
    assert!(
        text.contains("window closes     2026-11-02T09:00:00Z (open)"),
        "{text}"
    );
    assert!(
        text.contains("control expires   2026-11-02T09:00:00Z"),
        "{text}"
    );
    assert!(!text.contains("ThreadControlPassed"), "{text}");
    assert!(
        text.contains("later events of this thread not shown"),
        "{text}"
    );

    // Epoch milliseconds work too; JSON for tools.
    let at = (T0 + 120_000).to_string();
    let out = baton(&[
        "audit",
        "thread",
        PAGE,
        "u1",
        "--config",
        f.config(),
        "--at",
        &at,
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["owner"], BOT);
    assert_eq!(report["at"], "2026-11-01T09:02:00Z");
    assert!(report["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["time"].as_str().unwrap() <= "2026-11-01T09:02:00Z"));

    // A day and more later, the human's control has lapsed: idle, the bot answers.
    let out = baton(&[
        "audit",
        "thread",
        PAGE,
        "u1",
        "--config",
        f.config(),
        "--at",
        "2026-11-03T00:00:00Z",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains("state             idle"),
        "{}",
        all(&out)
    );
    assert!(
        stdout(&out).contains(&format!("answering app     {BOT}")),
        "{}",
        all(&out)
    );

    // Without --config the routing mode is unknown: a usage error.
    let out = baton(&["audit", "thread", PAGE, "u1", "--data-dir", f.data_dir()]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    assert!(all(&out).contains("--config"), "{}", all(&out));
}

#[test]
fn audit_sends_lists_accepted_and_refused_sends() {
    let f = fixture();
    let out = baton(&["audit", "sends", "--data-dir", f.data_dir()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = stdout(&out);
    assert!(text.contains("accepted"), "{text}");
    assert!(
        text.contains("thread owner, window until 2026-11-02T09:00:00Z → sent as m_out_"),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    assert!(text.contains("2 sends: 1 accepted, 1 refused"), "{text}");

    let out = baton(&[
        "audit",
        "sends",
        "--refused",
        "--data-dir",
        f.data_dir(),
        "--json",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let rows: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["app"], HUMAN);
    assert_eq!(rows[0]["result"], "refused");
    assert!(rows[0]["code"].as_u64().is_some(), "{rows:?}");
    assert!(!rows[0]["reason"].as_str().unwrap().is_empty());

    let out = baton(&[
        "audit",
        "sends",
        "--data-dir",
        f.data_dir(),
        "--since",
        "2026-11-01T10:00:00Z",
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(stdout(&out).contains("no sends"), "{}", all(&out));
}

#[test]
fn redrive_offline_checks_the_position_then_appends() {
    let f = fixture();
    let pos = |p: u64| p.to_string();
    // Not an item of the app, nor a dead letter.
    let out = baton(&[
        "redrive",
        "--app",
        BOT,
        "--position",
        &pos(f.routed),
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(all(&out).contains("ThreadRouted"), "{}", all(&out));
    // Delivered to the bot, but never dead-lettered.
    let out = baton(&[
        "redrive",
        "--app",
        BOT,
        "--position",
        &pos(f.u2_item),
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(all(&out).contains("never dead-lettered"), "{}", all(&out));
    // The dead letter belongs to the bot, not the human inbox.
    let out = baton(&[
        "redrive",
        "--app",
        HUMAN,
        "--position",
        &pos(f.dead_letter),
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    // Past the head.
    let out = baton(&[
        "redrive",
        "--app",
        BOT,
        "--position",
        "999",
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(all(&out).contains("does not exist"), "{}", all(&out));

    // The dead-lettered item itself, or its dead-letter record: both redrive the item.
    let out = baton(&[
        "redrive",
        "--app",
        BOT,
        "--position",
        &pos(f.dead_item),
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let out = baton(&[
        "redrive",
        "--app",
        BOT,
        "--position",
        &pos(f.dead_letter),
        "--config",
        f.config(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));

    let export = f.dir.path().join("after.ndjson");
    assert_eq!(
        code(&baton(&[
            "export",
            "--data-dir",
            f.data_dir(),
            "--out",
            export.to_str().unwrap()
        ])),
        0
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let requests: Vec<Event> = text
        .lines()
        .map(|l| event_log::parse_ndjson_line(l.as_bytes()).unwrap())
        .filter_map(
            |r| match Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap() {
                e @ Event::DispatchRedriveRequested(_) => Some(e),
                _ => None,
            },
        )
        .collect();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let Event::DispatchRedriveRequested(r) = request else {
            unreachable!()
        };
        assert_eq!(
            (r.app.as_str(), r.position, r.by.as_str()),
            (BOT, f.dead_item, "cli")
        );
    }
    // The chain still verifies after the appends.
    assert_eq!(code(&baton(&["verify", "--data-dir", f.data_dir()])), 0);
}

#[test]
fn a_running_server_locks_the_directory_and_answers_instead() {
    let f = fixture();
    let rt = test_support::runtime();
    rt.block_on(async {
        let config = Config::load(&f.config).unwrap();
        let store = Arc::new(SledStore::open(f.dir.path().join("log")).unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(T0 + 7_200_000)));
        let running = server::start(config, store, clock).await.unwrap();
        let base = running.base_url();
        let run = |args: Vec<String>| {
            tokio::task::spawn_blocking(move || {
                baton(&args.iter().map(String::as_str).collect::<Vec<_>>())
            })
        };
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

        let out = run(s(&["verify", "--data-dir", f.data_dir()]))
            .await
            .unwrap();
        assert_eq!(code(&out), 2, "{}", all(&out));
        assert!(all(&out).contains("locked"), "{}", all(&out));
        assert!(all(&out).contains("--server"), "{}", all(&out));

        let out = run(s(&["verify", "--server", &base, "--token", ADMIN]))
            .await
            .unwrap();
        assert_eq!(code(&out), 0, "{}", all(&out));

        let out = run(s(&[
            "replay",
            "--server",
            &base,
            "--token",
            ADMIN,
            "--config",
            f.config(),
        ]))
        .await
        .unwrap();
        assert_eq!(code(&out), 0, "{}", all(&out));
        assert!(
            stdout(&out).contains("matches the server's"),
            "{}",
            all(&out)
        );

        // Without the pages the digest cannot match: the replay says so.
        let out = run(s(&["replay", "--server", &base, "--token", ADMIN]))
            .await
            .unwrap();
        assert_eq!(code(&out), 1, "{}", all(&out));
        assert!(all(&out).contains("DIFFERS"), "{}", all(&out));

        let out = run(s(&[
            "replay",
            "--server",
            &base,
            "--token",
            "wrong",
            "--config",
            f.config(),
        ]))
        .await
        .unwrap();
        assert_eq!(code(&out), 2, "{}", all(&out));
        assert!(all(&out).contains("401"), "{}", all(&out));

        let export = f.dir.path().join("live.ndjson");
        let out = run(s(&[
            "export",
            "--server",
            &base,
            "--token",
            ADMIN,
            "--out",
            export.to_str().unwrap(),
        ]))
        .await
        .unwrap();
        assert_eq!(code(&out), 0, "{}", all(&out));
        assert_eq!(
            std::fs::read_to_string(&export).unwrap().lines().count() as u64,
            f.dead_letter
        );

        // The redrive API belongs to the server; the CLI reports its answer.
        let out = run(s(&[
            "redrive",
            "--app",
            BOT,
            "--position",
            &f.dead_item.to_string(),
            "--server",
            &base,
            "--token",
            ADMIN,
        ]))
        .await
        .unwrap();
        assert!(matches!(code(&out), 0 | 1), "{}", all(&out));
        assert!(stdout(&out).contains("HTTP"), "{}", all(&out));

        running.stop().await;
    });
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    for args in [
        vec![],
        vec!["verify", "--bogus"],
        vec!["audit", "thread"],
        vec!["audit", "thread", PAGE, "u1", "--at", "yesterday"],
        vec!["redrive", "--app", BOT],
        vec!["verify", "--data-dir", "a", "--export", "b"],
        vec!["verify"],
        vec!["verify", "--data-dir", missing.to_str().unwrap()],
        vec!["verify", "--export", missing.to_str().unwrap()],
        vec!["replay", "--server", "http://127.0.0.1:9"],
    ] {
        let out = baton(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", all(&out));
    }
    let help = baton(&["--help"]);
    assert_eq!(code(&help), 0);
    let text = stdout(&help);
    for command in [
        "serve",
        "verify",
        "export",
        "replay",
        "audit",
        "redrive",
        "keygen",
        "checkpoint",
        "Exit codes",
    ] {
        assert!(text.contains(command), "{text}");
    }
    let help = baton(&["audit", "thread", "--help"]);
    assert_eq!(code(&help), 0);
    assert!(stdout(&help).contains("RFC 3339"), "{}", stdout(&help));
}

/// Rewrites the payload of the record at `position` (its kind "message" →
/// "massage") in an NDJSON export and recomputes its hash and every later
/// `prev_hash` and `hash` with the log's own hashing, as someone with write
/// access to the file (but not the signing key) can.
fn rewrite_and_rehash(text: &str, position: u64) -> String {
    let mut records: Vec<event_log::Record> = text
        .lines()
        .map(|l| event_log::parse_ndjson_line(l.as_bytes()).unwrap())
        .collect();
    let at = position as usize - 1;
    let payload = String::from_utf8(records[at].payload.clone()).unwrap();
    assert!(payload.contains("\"kind\":\"message\""), "{payload}");
    records[at].payload = payload
        .replacen("\"kind\":\"message\"", "\"kind\":\"massage\"", 1)
        .into_bytes();
    for i in at..records.len() {
        if i > 0 {
            records[i].prev_hash = records[i - 1].hash;
        }
        records[i].hash = records[i].compute_hash();
    }
    records
        .iter()
        .map(|r| event_log::ndjson_line(r) + "\n")
        .collect()
}

#[test]
fn a_rewritten_and_rehashed_export_fails_its_signed_checkpoint() {
    let f = fixture();
    let key = f.dir.path().join("baton.key");
    let key_s = key.to_str().unwrap();
    let out = baton(&["keygen", "--out", key_s]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let public = format!("{key_s}.pub");
    let public_hex = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    assert!(stdout(&out).contains(&public_hex), "{}", all(&out));
    assert!(stdout(&out).contains("key id"), "{}", all(&out));

    let export = f.dir.path().join("export.ndjson");
    let export_s = export.to_str().unwrap();
    let out = baton(&[
        "export",
        "--data-dir",
        f.data_dir(),
        "--out",
        export_s,
        "--key",
        key_s,
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let checkpoint = format!("{export_s}.checkpoint.json");
    let signed: Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    assert_eq!(signed["position"], f.dead_letter, "{signed}");

    // The correct export with its checkpoint: anchored up to the head.
    let out = baton(&[
        "verify",
        "--export",
        export_s,
        "--checkpoint",
        &checkpoint,
        "--public-key",
        &public,
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("anchored      up to position {}", f.dead_letter)),
        "{}",
        all(&out)
    );
    assert!(
        stdout(&out).contains(&format!(
            "not anchored  0 records after position {}",
            f.dead_letter
        )),
        "{}",
        all(&out)
    );

    // u2's message rewritten, every later hash recomputed.
    let text = std::fs::read_to_string(&export).unwrap();
    let forged_text = rewrite_and_rehash(&text, f.u2_item);
    assert_ne!(forged_text, text);
    let forged = f.dir.path().join("forged.ndjson");
    std::fs::write(&forged, &forged_text).unwrap();
    let forged_s = forged.to_str().unwrap();

    // The chain alone cannot tell, and says it is not anchored...
    let out = baton(&["verify", "--export", forged_s]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains("not anchored: no checkpoint given"),
        "{}",
        all(&out)
    );
    // ...the signed checkpoint can (the key given as hex this time).
    let out = baton(&[
        "verify",
        "--export",
        forged_s,
        "--checkpoint",
        &checkpoint,
        "--public-key",
        &public_hex,
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!(
            "first bad position {} (line {})",
            f.dead_letter, f.dead_letter
        )),
        "{}",
        all(&out)
    );
    assert!(
        stdout(&out).contains("differs from the signed checkpoint"),
        "{}",
        all(&out)
    );
    let out = baton(&[
        "verify",
        "--export",
        forged_s,
        "--checkpoint",
        &checkpoint,
        "--public-key",
        &public,
        "--json",
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["position"], f.dead_letter, "{report}");

    // An export cut before the checkpoint's position fails it; the chain
    // alone would pass.
    let cut: String = text
        .lines()
        .take(f.u2_item as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    let cut_file = f.dir.path().join("cut.ndjson");
    std::fs::write(&cut_file, cut).unwrap();
    let cut_s = cut_file.to_str().unwrap();
    assert_eq!(code(&baton(&["verify", "--export", cut_s])), 0);
    let out = baton(&[
        "verify",
        "--export",
        cut_s,
        "--checkpoint",
        &checkpoint,
        "--public-key",
        &public,
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("checkpoint position {}", f.dead_letter)),
        "{}",
        all(&out)
    );
    assert!(stdout(&out).contains("past the end"), "{}", all(&out));

    // With a second checkpoint at the rewritten record itself (signed
    // through the library, as the server will), the failure names that
    // position: the earliest checkpoint at or after the rewrite.
    let u2 =
        event_log::parse_ndjson_line(text.lines().nth(f.u2_item as usize - 1).unwrap().as_bytes())
            .unwrap();
    let signer = event_log::CheckpointSigner::from_file(&key).unwrap();
    let at_u2 = signer.sign(
        &event_log::Head {
            position: u2.position,
            hash: u2.hash,
        },
        T0,
    );
    let dir = f.dir.path().join("checkpoints-both");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.json"), at_u2.to_json()).unwrap();
    std::fs::copy(&checkpoint, dir.join("b.json")).unwrap();
    let out = baton(&[
        "verify",
        "--export",
        forged_s,
        "--checkpoint",
        dir.to_str().unwrap(),
        "--public-key",
        &public,
    ]);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("first bad position {}", f.u2_item)),
        "{}",
        all(&out)
    );
    // The genuine export passes both, anchored up to the head.
    let out = baton(&[
        "verify",
        "--export",
        export_s,
        "--checkpoint",
        dir.to_str().unwrap(),
        "--public-key",
        &public,
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(stdout(&out).contains("by 2 checkpoints"), "{}", all(&out));
}

#[test]
fn checkpoints_of_another_key_or_edited_fail_their_signature() {
    let f = fixture();
    let key = f.dir.path().join("k");
    let other = f.dir.path().join("other");
    for k in [&key, &other] {
        let out = baton(&["keygen", "--out", k.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}", all(&out));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // keygen never overwrites.
    let before = std::fs::read(&key).unwrap();
    let out = baton(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    assert!(all(&out).contains("already exists"), "{}", all(&out));
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // Signed on the stopped server's directory, by default into
    // DIR/checkpoints/<position>.json.
    let out = baton(&[
        "checkpoint",
        "--data-dir",
        f.data_dir(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let checkpoints = f.dir.path().join("checkpoints");
    let file = checkpoints.join(format!("{}.json", f.dead_letter));
    assert!(file.is_file(), "{}", all(&out));
    let public = format!("{}.pub", key.display());
    let other_public = format!("{}.pub", other.display());

    let verify = |checkpoint: &Path, public: &str| {
        baton(&[
            "verify",
            "--data-dir",
            f.data_dir(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--public-key",
            public,
        ])
    };
    let out = verify(&checkpoints, &public);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("anchored      up to position {}", f.dead_letter)),
        "{}",
        all(&out)
    );

    // Checked with another key: refused, naming the position and both keys.
    let out = verify(&file, &other_public);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("checkpoint position {}", f.dead_letter)),
        "{}",
        all(&out)
    );
    assert!(
        stdout(&out).contains("not by the given public key"),
        "{}",
        all(&out)
    );

    // Signed with another key and relabelled with ours: the signature fails.
    let other_checkpoint = f.dir.path().join("other-key.json");
    let out = baton(&[
        "checkpoint",
        "--data-dir",
        f.data_dir(),
        "--key",
        other.to_str().unwrap(),
        "--out",
        other_checkpoint.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let mut relabelled: Value =
        serde_json::from_str(&std::fs::read_to_string(other_checkpoint).unwrap()).unwrap();
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    relabelled["key_id"] = ours["key_id"].clone();
    let edited = f.dir.path().join("edited.json");
    std::fs::write(&edited, relabelled.to_string()).unwrap();
    let out = verify(&edited, &public);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(stdout(&out).contains("does not verify"), "{}", all(&out));

    // Our checkpoint with its position or its hash edited: the signature fails.
    let mut moved = ours.clone();
    moved["position"] = json!(f.u2_item);
    std::fs::write(&edited, moved.to_string()).unwrap();
    let out = verify(&edited, &public);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(
        stdout(&out).contains(&format!("checkpoint position {}", f.u2_item)),
        "{}",
        all(&out)
    );
    assert!(stdout(&out).contains("does not verify"), "{}", all(&out));
    let mut rehashed = ours.clone();
    let hash = rehashed["hash"].as_str().unwrap().to_owned();
    let flipped = if hash.starts_with('0') { "1" } else { "0" };
    rehashed["hash"] = json!(format!("{flipped}{}", &hash[1..]));
    std::fs::write(&edited, rehashed.to_string()).unwrap();
    let out = verify(&edited, &public);
    assert_eq!(code(&out), 1, "{}", all(&out));
    assert!(stdout(&out).contains("does not verify"), "{}", all(&out));

    // Usage: --checkpoint needs --public-key, export --key needs --out, and
    // a private key others can read is refused.
    let out = baton(&[
        "verify",
        "--data-dir",
        f.data_dir(),
        "--checkpoint",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    let out = baton(&[
        "export",
        "--data-dir",
        f.data_dir(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = baton(&[
            "checkpoint",
            "--data-dir",
            f.data_dir(),
            "--key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 2, "{}", all(&out));
        assert!(all(&out).contains("chmod 600"), "{}", all(&out));
    }
}

/// `baton init` writes a configuration that loads, with fresh secrets each
/// time, mode 0600, never over an existing file, and refuses bad ids.
#[test]
fn init_writes_a_working_private_configuration_with_fresh_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let out = dir.path().join(name);
        let o = baton(&[
            "init",
            "--out",
            out.to_str().unwrap(),
            "--page",
            "5550001",
            "--bot-app",
            "1001",
            "--human-app",
            "1002",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    let (a, b) = (write("a.toml"), write("b.toml"));
    let config = Config::parse(&a, "a.toml", |_| None).expect("the written file loads");
    assert_eq!(config.pages.len(), 1);
    assert!(config.admin_token.is_some() && config.auditor_token.is_some());
    let tokens = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("api_token") || l.starts_with("admin_token"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(tokens(&a).len(), 3);
    assert!(
        tokens(&a).iter().all(|t| !tokens(&b).contains(t)),
        "each run generates its own secrets"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("a.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten; bad ids refused; nothing written for them.
    let again = baton(&[
        "init",
        "--out",
        dir.path().join("a.toml").to_str().unwrap(),
        "--page",
        "1",
        "--bot-app",
        "2",
        "--human-app",
        "3",
    ]);
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a.toml")).unwrap(),
        a
    );
    let bad = dir.path().join("c.toml");
    let o = baton(&[
        "init",
        "--out",
        bad.to_str().unwrap(),
        "--page",
        "my page",
        "--bot-app",
        "1",
        "--human-app",
        "2",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--page"));
    assert!(!bad.exists());
}

/// The example configuration loads, and every setting docs/operations.md
/// documents is in it (set or commented), so a newcomer finds each one.
#[test]
fn the_example_configuration_loads_and_shows_every_documented_setting() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = std::fs::read_to_string(root.join("deploy/baton.example.toml")).unwrap();
    Config::parse(&example, "baton.example.toml", |_| None).expect("the example loads");
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut missing = Vec::new();
    for line in operations.lines().filter(|l| l.starts_with("| `")) {
        for key in line
            .split('|')
            .nth(1)
            .unwrap()
            .split('`')
            .skip(1)
            .step_by(2)
        {
            // Settings, not the metrics table's `baton_…` series.
            let top_level = !key.starts_with("baton_")
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if top_level && !example.contains(&format!("{key} =")) {
                missing.push(key.to_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "settings documented but not in the example: {missing:?}"
    );
}

#[test]
fn erase_offline_destroys_the_persons_keys_and_the_export_still_verifies() {
    let f = fixture();
    // Usage errors change nothing.
    let out = baton(&["erase", "--page", PAGE, "--data-dir", f.data_dir()]);
    assert_eq!(code(&out), 2, "{}", all(&out));
    let out = baton(&["erase", "--page", PAGE, "--psid", "u2"]);
    assert_ne!(code(&out), 0, "{}", all(&out));

    let out = baton(&[
        "erase",
        "--page",
        PAGE,
        "--psid",
        "u2",
        "--data-dir",
        f.data_dir(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    assert!(stdout(&out).contains("1 key(s) destroyed"), "{}", all(&out));

    let export = f.dir.path().join("erased.ndjson");
    let out = baton(&[
        "export",
        "--data-dir",
        f.data_dir(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let text = std::fs::read_to_string(&export).unwrap();
    let line = |p: u64| text.lines().nth(p as usize - 1).unwrap().to_owned();
    assert!(
        line(f.u2_item).contains("\"content\":\"erased\""),
        "{}",
        line(f.u2_item)
    );
    assert!(
        !line(f.dead_item).contains("\"content\""),
        "{}",
        line(f.dead_item)
    );
    assert!(text.lines().last().unwrap().contains("ContentErased"));
    let out = baton(&["verify", "--export", export.to_str().unwrap(), "--json"]);
    assert_eq!(code(&out), 0, "{}", all(&out));
    let out = baton(&["verify", "--data-dir", f.data_dir()]);
    assert_eq!(code(&out), 0, "{}", all(&out));
}
