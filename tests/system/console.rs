//! The console in a real browser (issue 16): Debian's Chromium, headless,
//! driven by playwright-core (exactly the version in
//! scripts/console-test/package.json, installed with `npm ci`) through
//! `scripts/console-test/run.js`, against Baton and the emulator playing
//! Meta. The script signs in, watches a thread change owner live after a
//! pass made through the Graph-compatible API, moves the timeline's time
//! slider, checks "who can I message", redrives a dead letter, checks that
//! an app token cannot see another page, and checks labels and widths at
//! 1280 and 390 px. It takes the screenshots in docs/console/ (written
//! there with BATON_UPDATE_SCREENSHOTS=1, else to a temporary directory).
//!
//! Needs Node.js, npm and Chromium: `scripts/install-node.sh` and
//! `scripts/install-chromium.sh` install them (.ci/run does).
//! `BATON_SKIP_CONSOLE_BROWSER=1` skips it, saying so on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use domain::Span;
use event_log::EventStore;
use serde_json::{json, Value};

use crate::backend::flaky_backend;
use crate::node::{npm_ci, run};
use crate::stack::{Mode, Stack};
use crate::support::*;

const SKIP_VAR: &str = "BATON_SKIP_CONSOLE_BROWSER";
const PLAYWRIGHT: &str = "playwright-core";
const PLAYWRIGHT_VERSION: &str = "1.64.1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

fn chromium() -> PathBuf {
    std::env::var_os("BATON_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Waits (on the log's head, never a sleep) until `ready` holds.
async fn wait_for(stack: &Stack, what: &str, ready: impl Fn(&[domain::Event]) -> bool) {
    let mut head = stack.baton.running.state.store.subscribe();
    loop {
        if ready(&stack.baton.events().await) {
            return;
        }
        tokio::time::timeout(Duration::from_secs(30), head.changed())
            .await
            .unwrap_or_else(|_| panic!("waited 30 s for {what}"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
    if skip {
        report(&format!(
            "SKIPPED console::the_console_works_in_a_real_browser: {SKIP_VAR}=1 is set; \
             the console's browser test (issue 16) did not run"
        ));
        return;
    }
    assert!(
        chromium().exists(),
        "the console's browser test needs Chromium at {}: run `scripts/install-chromium.sh` \
         (it installs Debian's chromium with apt-get; .ci/run does this), or set {SKIP_VAR}=1 \
         to skip this test knowingly",
        chromium().display()
    );
    let src = repo_root().join("scripts").join("console-test");
    let modules = npm_ci("console-test", &src, Duration::from_secs(600), |modules| {
        let installed: Value = serde_json::from_slice(
            &std::fs::read(modules.join(PLAYWRIGHT).join("package.json"))
                .expect("npm ci installed playwright-core"),
        )
        .unwrap();
        assert_eq!(installed["version"], PLAYWRIGHT_VERSION);
    })
    .await;

    // A conversation: the bot answers "carla"; its backend is down, so the
    // item is dead-lettered after a minute of Baton's clock, then the
    // backend comes back.
    let (backend_url, backend, _backend_server) = flaky_backend();
    let stack = Stack::start_with_backend(
        Mode::ConversationRouting,
        Tuning::default(),
        &["dispatch_dead_letter_after_secs = 60"],
        &backend_url,
    )
    .await;
    stack
        .user_says("carla", "I would like to talk to someone")
        .await;
    stack.wait_owner("carla", owner(BOT)).await;
    // The backend refused it once: the next attempt comes about a second later.
    backend
        .wait(
            "a first refused attempt",
            |b| b.refused.load(Ordering::SeqCst),
            1,
        )
        .await;
    // Dispatch ages an item from when the log wrote it (the writer's wall
    // clock), by Baton's clock (which starts at T0): move past both.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    stack
        .advance(Span(
            (wall - T0.millis()).max(0) + Span::minutes(2).millis(),
        ))
        .await;
    wait_for(&stack, "the bot's item to be dead-lettered", |events| {
        events
            .iter()
            .any(|e| matches!(e, domain::Event::DispatchDeadLettered(_)))
    })
    .await;
    let dead_position = stack
        .baton
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            domain::Event::DispatchDeadLettered(d) => Some(d.position),
            _ => None,
        })
        .unwrap();
    backend.failing.store(false, Ordering::SeqCst);
    // Carla writes again: a fresh window, and the bot holds the thread.
    stack.user_says("carla", "Hello? Anyone there?").await;
    stack.wait_owner("carla", owner(BOT)).await;
    // A refusal for the report: the human may not answer a thread the bot holds.
    let (status, body) = stack
        .send(
            "baton-human",
            json!({"recipient": {"id": "carla"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}}),
        )
        .await;
    assert_ne!(status, 200, "{body}");

    // Meta dropped the bot's subscription; the watchdog's round notices.
    stack.ctl.unsubscribe(BOT, PAGE).await.unwrap();
    let round = stack.baton.running.state.baton.check_subscriptions().await;
    assert_eq!(round.lost, 1, "{round:?}");

    let update = std::env::var_os("BATON_UPDATE_SCREENSHOTS").is_some();
    let shots = tempfile::tempdir().unwrap();
    let shots_dir = if update {
        let dir = repo_root().join("docs").join("console");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    } else {
        shots.path().to_path_buf()
    };
    let config = json!({
        "baton": stack.baton.running.base_url(),
        "chromium": chromium(),
        "admin": ADMIN_TOKEN,
        "bot_token": "baton-bot",
        "bot": BOT,
        "human": HUMAN,
        "page": PAGE,
        "other_page": OTHER_PAGE,
        "psid": "carla",
        "dead_position": dead_position,
        "shots_dir": shots_dir,
    });
    let mut cmd = Command::new("node");
    cmd.arg(src.join("run.js"))
        .env("NODE_PATH", &modules)
        .env("BATON_CONSOLE_TEST", config.to_string());
    let out = run(
        cmd,
        "node scripts/console-test/run.js",
        Duration::from_secs(300),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let steps: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for step in &steps {
        report(&format!("console: {step}"));
    }
    assert!(
        out.status.success(),
        "the browser run failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        steps.iter().filter(|s| s["ok"] == true).count() >= 30,
        "every check ran: {stdout}"
    );

    // What the browser did is in the log: the re-subscription, the pass
    // made through the API, and the redrive asked for in the console,
    // which reached the backend.
    let events = stack.baton.events().await;
    assert!(events
        .iter()
        .any(|e| matches!(e, domain::Event::AppSubscriptionRestored(_))));
    assert!(events
        .iter()
        .any(|e| matches!(e, domain::Event::ThreadControlPassed(_))));
    let redrive = events
        .iter()
        .find_map(|e| match e {
            domain::Event::DispatchRedriveRequested(r) => Some(r.clone()),
            _ => None,
        })
        .expect("the console's redrive is recorded");
    assert_eq!(
        (redrive.position, redrive.by.as_str()),
        (dead_position, "console:admin")
    );
    // Carla's second message and the redriven first one reach the backend.
    backend
        .wait(
            "the redriven item",
            |b| b.received.load(Ordering::SeqCst),
            2,
        )
        .await;
    let dispatcher = stack.baton.running.state.dispatcher.clone().unwrap();
    assert!(dispatcher.status().iter().any(|s| s.redriven >= 1));
}
