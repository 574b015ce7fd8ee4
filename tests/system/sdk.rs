//! SDK compatibility (issue 14): the published Messenger SDK
//! `messaging-api-messenger`, exactly 1.1.0 and unmodified, installed from
//! the npm registry with `npm ci` (scripts/sdk-compat/package-lock.json),
//! driven by `scripts/sdk-compat/run.js` against Baton with only its `origin`
//! and its token changed. Each call's answer, as the SDK hands it to the app,
//! is checked, and so is its effect on Meta (the emulator): the transcript,
//! the Graph calls Baton made, who owns the thread.
//!
//! Node.js and npm are required: without them the test fails and says to run
//! `scripts/install-node.sh` (what `.ci/run` does). `BATON_SKIP_SDK_COMPAT=1`
//! skips it, saying so on stderr.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use emulator::CallRecord;
use serde_json::{json, Value};

use crate::node::{npm_ci, run};
use crate::stack::{Mode, Stack};
use crate::support::*;

/// The SDK version the test pins (scripts/sdk-compat/package.json).
const SDK: &str = "messaging-api-messenger";
const SDK_VERSION: &str = "1.1.0";
const SKIP_VAR: &str = "BATON_SKIP_SDK_COMPAT";
/// How long `npm ci` and the SDK run may take before the test gives up.
const NPM_TIMEOUT: Duration = Duration::from_secs(600);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

fn sdk_dir() -> PathBuf {
    repo_root().join("scripts").join("sdk-compat")
}

/// `tool --version`, or `None` when it cannot be run.
fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Node.js and npm, or why the test cannot run: a failure, unless the
/// skip variable is set (then `None`, said on stderr).
fn prerequisites() -> Option<(String, String)> {
    let node = tool_version("node");
    let npm = tool_version("npm");
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
        report(&format!(
            "SKIPPED sdk::an_unmodified_messenger_sdk_works_against_baton: {SKIP_VAR}=1 is set \
             (node: {}, npm: {}); the SDK compatibility test (issue 14) did not run",
            node.as_deref().unwrap_or("absent"),
            npm.as_deref().unwrap_or("absent"),
        ));
        return None;
    }
    match (node, npm) {
        (Some(node), Some(npm)) => Some((node, npm)),
        (node, npm) => panic!(
            "the SDK compatibility test needs Node.js and npm (node: {}, npm: {}): run \
             `scripts/install-node.sh` (it installs them with apt-get; .ci/run does this), \
             or set {SKIP_VAR}=1 to skip this test knowingly",
            node.as_deref().unwrap_or("not found on PATH"),
            npm.as_deref().unwrap_or("not found on PATH"),
        ),
    }
}

/// Installs the pinned SDK with `npm ci` (once per version of package.json
/// and package-lock.json); returns the `node_modules` directory.
async fn install_sdk() -> PathBuf {
    let src = sdk_dir();
    let package: Value = serde_json::from_slice(
        &std::fs::read(src.join("package.json")).expect("scripts/sdk-compat/package.json"),
    )
    .expect("package.json is JSON");
    assert_eq!(
        package["dependencies"][SDK], SDK_VERSION,
        "scripts/sdk-compat/package.json pins {SDK} at exactly {SDK_VERSION}"
    );
    npm_ci("sdk-compat", &src, NPM_TIMEOUT, |modules| {
        let installed: Value = serde_json::from_slice(
            &std::fs::read(modules.join(SDK).join("package.json"))
                .expect("npm ci installed the SDK"),
        )
        .unwrap();
        assert_eq!(installed["version"], SDK_VERSION, "the installed SDK");
    })
    .await
}

/// One SDK call as run.js printed it.
#[derive(Debug, Clone)]
struct Step {
    number: usize,
    name: String,
    app: String,
    ok: bool,
    result: Value,
    error: Value,
    requests: Value,
}

impl Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {} as {}: ", self.number, self.name, self.app)?;
        if self.ok {
            write!(f, "ok {}", self.result)
        } else {
            write!(f, "error {}", self.error)
        }?;
        write!(f, " (requests: {})", self.requests)
    }
}

/// Soft assertions: every check runs, and the test fails at the end with
/// the whole list, so one run shows everything Baton does not yet do.
#[derive(Debug, Default)]
struct Checks {
    lines: Vec<String>,
    failed: usize,
}

impl Checks {
    fn check(&mut self, what: &str, ok: bool, detail: impl Display) {
        if ok {
            self.lines.push(format!("  pass  {what}"));
        } else {
            self.failed += 1;
            self.lines.push(format!("  FAIL  {what}: {detail}"));
        }
    }

    fn finish(self) {
        report(&format!(
            "SDK compatibility ({SDK} {SDK_VERSION}): {} checks, {} failed\n{}",
            self.lines.len(),
            self.failed,
            self.lines.join("\n")
        ));
        assert_eq!(
            self.failed,
            0,
            "{} of {} SDK compatibility checks failed:\n{}",
            self.failed,
            self.lines.len(),
            self.lines
                .iter()
                .filter(|l| l.starts_with("  FAIL"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn parse_steps(stdout: &str) -> (Value, Vec<Step>, Option<u64>) {
    let mut header = Value::Null;
    let mut steps = Vec::new();
    let mut done = None;
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("run.js printed a line that is not JSON ({e}): {line}"));
        if v.get("sdk").is_some() {
            header = v;
        } else if v.get("done").is_some() {
            done = v["calls"].as_u64();
        } else {
            steps.push(Step {
                number: v["step"].as_u64().expect("a step number") as usize,
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                app: v["as"].as_str().unwrap_or_default().to_owned(),
                ok: v["ok"] == json!(true),
                result: v["result"].clone(),
                error: v["error"].clone(),
                requests: v["requests"].clone(),
            });
        }
    }
    (header, steps, done)
}

/// The SDK camel-cases every key of Meta's answers (error bodies too).
fn error_code(step: &Step) -> (Option<i64>, Option<i64>) {
    let error = &step.error["data"]["error"];
    let subcode = error
        .get("errorSubcode")
        .or_else(|| error.get("error_subcode"))
        .and_then(Value::as_i64);
    (error["code"].as_i64(), subcode)
}

/// Graph calls Baton made to Meta (the emulator) for `endpoint` as `app`.
fn calls_for<'a>(calls: &'a [CallRecord], endpoint: &str, app: &str) -> Vec<&'a CallRecord> {
    calls
        .iter()
        .filter(|c| c.endpoint == endpoint && c.app_id.as_deref() == Some(app))
        .collect()
}

fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_messenger_sdk_works_against_baton() {
    let Some((node, npm)) = prerequisites() else {
        return;
    };
    let modules = install_sdk().await;

    let stack = Stack::start(Mode::ConversationRouting).await;
    // The user writes first: the window opens and the bot, the default
    // app, owns the thread.
    stack.user_says("u1", "hello").await;
    stack.ctl.wait_deliveries().await.unwrap();

    let origin = stack.baton.url("");
    let mut cmd = Command::new("node");
    cmd.arg(sdk_dir().join("run.js"))
        .args(["--origin", &origin])
        .arg("--modules")
        .arg(&modules)
        .args(["--version", "21.0", "--psid", "u1"])
        .args(["--bot-token", "baton-bot", "--bot-app", BOT])
        .args(["--human-token", "baton-human", "--human-app", HUMAN])
        .args(["--human-secret", HUMAN_SECRET]);
    let out = run(cmd, "node scripts/sdk-compat/run.js", RUN_TIMEOUT).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "run.js failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let (header, steps, done) = parse_steps(&stdout);
    report(&format!(
        "SDK compatibility: node {node}, npm {npm}, {header}\n{}",
        steps
            .iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    assert_eq!(header["sdk_version"], SDK_VERSION, "the SDK run.js loaded");
    assert_eq!(
        done,
        Some(steps.len() as u64),
        "run.js ran to the end:\n{stdout}\n{stderr}"
    );
    let expected = [
        ("getPageInfo", "bot"),
        ("sendText", "bot"),
        ("sendText.quickReplies", "bot"),
        ("sendButtonTemplate", "bot"),
        ("typingOn", "bot"),
        ("markSeen", "bot"),
        ("sendSenderAction.typing_off", "bot"),
        ("getUserProfile", "bot"),
        ("sendBatch", "bot"),
        ("getSecondaryReceivers", "bot"),
        ("getThreadOwner", "bot"),
        ("passThreadControl", "bot"),
        ("getThreadOwner", "human"),
        ("sendText", "human"),
        ("sendText", "bot"),
        ("requestThreadControl", "bot"),
        ("passThreadControl", "human"),
        ("getThreadOwner", "bot"),
        ("passThreadControl", "bot"),
        ("takeThreadControl", "bot"),
        ("getThreadOwner", "bot"),
        ("passThreadControl", "bot"),
        ("releaseThreadControl", "human"),
        ("takeThreadControl", "bot"),
        ("getThreadOwner", "bot"),
    ];
    let order: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.app.as_str()))
        .collect();
    assert_eq!(
        order, expected,
        "run.js and this test agree on the sequence"
    );

    stack.ctl.wait_deliveries().await.unwrap();
    let calls = stack.ctl.calls().await.unwrap();
    let thread = stack.ctl.thread(PAGE, "u1").await.unwrap();
    let deliveries = stack.ctl.deliveries().await.unwrap();
    let mut c = Checks::default();
    let s = |n: usize| &steps[n - 1];
    let success = |c: &mut Checks, n: usize| {
        let step = s(n);
        c.check(
            &format!(
                "#{n} {} as {} answers {{success: true}}",
                step.name, step.app
            ),
            step.ok && step.result == json!({"success": true}),
            step,
        );
    };
    let sent = |c: &mut Checks, n: usize| {
        let step = s(n);
        c.check(
            &format!(
                "#{n} {} as {} answers {{recipientId, messageId}}",
                step.name, step.app
            ),
            step.ok
                && step.result["recipientId"] == "u1"
                && step.result["messageId"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
            step,
        );
    };
    let owner_is = |c: &mut Checks, n: usize, app: &str| {
        let step = s(n);
        c.check(
            &format!(
                "#{n} getThreadOwner as {} answers {{appId: {app}, …}}",
                step.app
            ),
            step.ok && step.result["appId"] == app,
            step,
        );
    };
    let graph_call = |c: &mut Checks, n: usize, endpoint: &str, app: &str, target: Option<&str>| {
        let found = calls_for(&calls, endpoint, app).into_iter().any(|call| {
            call.status == 200
                && target.is_none_or(|t| id_of(&call.params["target_app_id"]).as_deref() == Some(t))
        });
        c.check(
            &format!(
                "#{n} Meta received {endpoint} from {app}{} and answered 200",
                target.map(|t| format!(" to {t}")).unwrap_or_default()
            ),
            found,
            format!("{endpoint} calls: {:?}", calls_for(&calls, endpoint, app)),
        );
    };

    // #1 GET /me: the page.
    let step = s(1);
    c.check(
        "#1 getPageInfo answers the page {id, name}",
        step.ok && step.result["id"] == PAGE && step.result["name"].is_string(),
        step,
    );

    // #2-#4 messages: answered as Meta does, and delivered to the user.
    sent(&mut c, 2);
    sent(&mut c, 3);
    sent(&mut c, 4);
    let bot_messages = calls_for(&calls, "messages", BOT);
    let hello = bot_messages
        .iter()
        .find(|call| call.params["message"]["text"] == "Hello from the SDK");
    c.check(
        "#2 the SDK got Meta's message_id for its text",
        hello.is_some_and(|call| call.response["message_id"] == s(2).result["messageId"]),
        format!("{hello:?}"),
    );
    let quick = bot_messages
        .iter()
        .find(|call| call.params["message"]["text"] == "Pick a colour");
    c.check(
        "#3 the quick replies reached Meta as sent",
        quick.is_some_and(|call| {
            call.params["message"]["quick_replies"]
                == json!([
                    {"content_type": "text", "title": "Red", "payload": "COLOUR_RED"},
                    {"content_type": "text", "title": "Green", "payload": "COLOUR_GREEN"},
                ])
        }),
        format!("{quick:?}"),
    );
    let template = bot_messages
        .iter()
        .find(|call| call.params["message"]["attachment"]["type"] == "template");
    c.check(
        "#4 the button template reached Meta as sent",
        template.is_some_and(|call| {
            let payload = &call.params["message"]["attachment"]["payload"];
            payload["template_type"] == "button"
                && payload["text"] == "What do you want to do next?"
                && payload["buttons"].as_array().map(Vec::len) == Some(2)
        }),
        format!("{template:?}"),
    );

    // #5-#7 sender actions: {recipientId}, and Meta got each one.
    for (n, action) in [(5, "typing_on"), (6, "mark_seen"), (7, "typing_off")] {
        let step = s(n);
        c.check(
            &format!(
                "#{n} {} answers {{recipientId}} only, as Meta does",
                step.name
            ),
            step.ok && step.result == json!({"recipientId": "u1"}),
            step,
        );
        let reached = bot_messages
            .iter()
            .any(|call| call.params["sender_action"] == action && call.status == 200);
        c.check(
            &format!("#{n} Meta received sender_action {action}"),
            reached,
            format!("{} messages calls by the bot", bot_messages.len()),
        );
    }

    // #8 GET /{psid}: the user's profile.
    let step = s(8);
    c.check(
        "#8 getUserProfile answers the user's profile {id: u1, name | firstName}",
        step.ok
            && step.result["id"] == "u1"
            && (step.result["name"].is_string() || step.result["firstName"].is_string()),
        step,
    );

    // #9 POST /v{n}/ with `batch`: one answer per item, in Meta's shape.
    let step = s(9);
    let items = step.result.as_array().cloned().unwrap_or_default();
    c.check(
        "#9 sendBatch answers two items {code: 200, body: {recipientId, messageId}}",
        step.ok
            && items.len() == 2
            && items.iter().all(|i| {
                i["code"] == 200
                    && i["body"]["recipientId"] == "u1"
                    && i["body"]["messageId"].is_string()
            }),
        step,
    );

    // #10 the page's other apps.
    let step = s(10);
    c.check(
        "#10 getSecondaryReceivers lists the human inbox",
        step.ok
            && step.result.as_array().is_some_and(|apps| {
                apps.iter()
                    .any(|a| a["id"] == HUMAN && a["name"] == "Human inbox")
            }),
        step,
    );

    // #11-#25 thread control.
    owner_is(&mut c, 11, BOT);
    success(&mut c, 12);
    graph_call(&mut c, 12, "pass_thread_control", BOT, Some(HUMAN));
    owner_is(&mut c, 13, HUMAN);
    sent(&mut c, 14);
    let step = s(15);
    c.check(
        "#15 the bot's send while the human owns is refused: 400, 10/2018300",
        !step.ok && step.error["status"] == 400 && error_code(step) == (Some(10), Some(2_018_300)),
        step,
    );
    c.check(
        "#15 the refused send never reached Meta",
        !calls
            .iter()
            .any(|call| call.params["message"]["text"] == "The bot talking over the human"),
        "Meta got it",
    );
    success(&mut c, 16);
    graph_call(&mut c, 16, "request_thread_control", BOT, None);
    c.check(
        "#16 Meta told the owner (the human inbox) of the request",
        deliveries
            .iter()
            .any(|d| d.app_id == HUMAN && d.json().to_string().contains("request_thread_control")),
        "no request_thread_control webhook to the human inbox",
    );
    success(&mut c, 17);
    graph_call(&mut c, 17, "pass_thread_control", HUMAN, Some(BOT));
    owner_is(&mut c, 18, BOT);
    success(&mut c, 19);
    success(&mut c, 20);
    graph_call(&mut c, 20, "take_thread_control", BOT, None);
    owner_is(&mut c, 21, BOT);
    success(&mut c, 22);
    success(&mut c, 23);
    graph_call(&mut c, 23, "release_thread_control", HUMAN, None);
    success(&mut c, 24);
    owner_is(&mut c, 25, BOT);
    c.check(
        "Meta counts the calls: 3 passes by the bot, 1 by the human, 2 takes, 1 request, 1 release",
        [
            calls_for(&calls, "pass_thread_control", BOT).len(),
            calls_for(&calls, "pass_thread_control", HUMAN).len(),
            calls_for(&calls, "take_thread_control", BOT).len(),
            calls_for(&calls, "request_thread_control", BOT).len(),
            calls_for(&calls, "release_thread_control", HUMAN).len(),
        ] == [3, 1, 2, 1, 1],
        format!(
            "{:?}",
            calls
                .iter()
                .filter(|c| c.endpoint.ends_with("_thread_control"))
                .map(|c| (&c.endpoint, &c.app_id, c.status))
                .collect::<Vec<_>>()
        ),
    );

    // The user saw exactly what the page sent, in order, from the right app.
    let page_lines: Vec<(Option<String>, Option<String>)> = thread
        .transcript
        .iter()
        .filter(|l| l.from == "page")
        .map(|l| (l.app_id.clone(), l.text.clone()))
        .collect();
    let line = |app: &str, text: Option<&str>| (Some(app.to_owned()), text.map(str::to_owned));
    let want = vec![
        line(BOT, Some("Hello from the SDK")),
        line(BOT, Some("Pick a colour")),
        line(BOT, None),
        line(BOT, Some("Batch one")),
        line(BOT, Some("Batch two")),
        line(HUMAN, Some("A human here")),
    ];
    c.check(
        "the user's transcript: text, quick replies, template, the batch's two texts, the human's reply",
        page_lines == want,
        format!("{page_lines:?}"),
    );
    c.check(
        "Meta's thread ends with the bot owning it",
        thread.owner.as_deref() == Some(BOT),
        format!("{:?}", thread.owner),
    );
    let ledger = stack.ledger_view("u1");
    let history = if ledger == owner(BOT) {
        String::new()
    } else {
        // What the ledger folded, for the report: which fact left it here.
        let facts = stack.thread_facts("u1").await;
        facts.iter().map(|f| format!("\n    {f}")).collect()
    };
    c.check(
        "Baton's ledger ends with the bot owning it",
        ledger == owner(BOT),
        format!("{ledger:?}; the thread's facts:{history}"),
    );
    c.finish();
    stack.assert_consistent("u1").await;
}
