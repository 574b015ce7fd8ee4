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

/// Signs in over plain HTTP; the session cookie and the page's CSRF token.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> (String, String) {
    let res = http
        .post(format!("{base}/console/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = http
        .get(format!("{base}/console/integrity"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();
    (cookie, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_bad_input_and_hostile_callers_and_changes_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("dora", "hello").await;
    let base = stack.baton.running.base_url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let head = stack.baton.head().await;

    // No session, or a forged one: sent to sign in.
    for cookie in [None, Some("baton_console=forged")] {
        let mut req = http.get(format!("{base}/console/threads"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 303);
        assert_eq!(res.headers()["location"], "/console/login");
    }
    // A wrong token: 401, no session.
    let res = http
        .post(format!("{base}/console/login"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());

    let (admin, admin_csrf) = sign_in(&http, &base, ADMIN_TOKEN).await;
    let get = |cookie: &str, path: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", cookie.to_owned())
            .send()
    };
    // Malformed queries and ids: a clear 400 or 404 page.
    let thread = format!("/console/threads/{PAGE}/dora");
    assert_eq!(
        get(&admin, &format!("{thread}?at=yesterday"))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get(&admin, &format!("{thread}/state?at=1e99"))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get(&admin, "/console/threads/999/dora")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(&admin, "/console/refusals?hours=-3")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get(&admin, "/console/messageable?app=9999")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(&admin, &format!("{thread}?at=1793523600000"))
            .await
            .unwrap()
            .status(),
        200
    );

    let post = |cookie: &str, path: &str, form: Vec<(&'static str, String)>| {
        http.post(format!("{base}{path}"))
            .header("cookie", cookie.to_owned())
            .form(&form)
            .send()
    };
    let redrive = format!("/console/delivery/{BOT}/redrive");
    // No CSRF token, or another session's: 403.
    let (bot, bot_csrf) = sign_in(&http, &base, "baton-bot").await;
    for csrf in [String::new(), bot_csrf.clone()] {
        let res = post(
            &admin,
            &redrive,
            vec![("csrf", csrf), ("position", "2".into())],
        )
        .await
        .unwrap();
        assert_eq!(res.status(), 403);
    }
    // An app may not redrive or re-subscribe, even with its own token right.
    let res = post(
        &bot,
        &redrive,
        vec![("csrf", bot_csrf.clone()), ("position", "2".into())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 403);
    let resubscribe = format!("/console/pages/{PAGE}/apps/{BOT}/resubscribe");
    let res = post(&bot, &resubscribe, vec![("csrf", bot_csrf)])
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // The admin, with a position that is no dead letter, or none at all.
    let res = post(
        &admin,
        &redrive,
        vec![("csrf", admin_csrf.clone()), ("position", "2".into())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 404);
    let res = post(
        &admin,
        &redrive,
        vec![("csrf", admin_csrf.clone()), ("position", "x".into())],
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 400);
    // The app's token sees no other page.
    assert_eq!(
        get(&bot, &format!("/console/threads/{OTHER_PAGE}/dora"))
            .await
            .unwrap()
            .status(),
        404
    );

    // Nothing above wrote to the log.
    assert_eq!(stack.baton.head().await, head);
    // Signing out ends the session.
    let res = post(&admin, "/console/logout", vec![("csrf", admin_csrf)])
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(get(&admin, "/console").await.unwrap().status(), 303);
}
