//! `baton demo`: everything Baton does, offline, in one command. It starts the
//! emulator (standing in for Meta), Baton on an embedded sled log in a
//! temporary directory, and two sample backends (a bot and a human inbox)
//! that print what Baton forwards to them; then it plays a conversation — the
//! user asks for a human, the bot passes control, the human answers, a send
//! outside the window is refused with its reason, the human hands back, the
//! bot answers again — and prints the thread's audit timeline.

use std::io::Write;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{bail, Context};
use domain::Span;
use emulator::{AppConfig, Emulator, PageConfig, World};
use serde_json::{json, Value};

const PAGE: &str = "5550001";
const BOT: &str = "1001";
const HUMAN: &str = "1002";
const USER: &str = "user-ana";

/// A sample backend: checks both signatures and keeps what it received.
#[derive(Debug, Clone)]
struct Backend {
    name: &'static str,
    secret: &'static str,
    received: Arc<Mutex<Vec<Value>>>,
}

async fn backend_hook(
    state: web::Data<Backend>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let check = wire::signature::check_signatures(
        state.secret.as_bytes(),
        &body,
        header("x-hub-signature-256"),
        header("x-hub-signature"),
    );
    if !wire::signature::accepted(&check) {
        return HttpResponse::Unauthorized().finish();
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        state
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(v);
    }
    HttpResponse::Ok().body("EVENT_RECEIVED")
}

fn start_backend(backend: Backend) -> anyhow::Result<(String, actix_web::dev::ServerHandle)> {
    let data = web::Data::new(backend);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/webhook", web::post().to(backend_hook))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")?;
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok((format!("http://{addr}/webhook"), handle))
}

/// The configuration shipped in `deploy/baton.example.toml`, pointed at the
/// emulator, the sample backends and the demo's data directory: the demo runs
/// the same server an operator starts from that file.
const EXAMPLE: &str = include_str!("../../../deploy/baton.example.toml");

fn config(
    graph: &str,
    bot_backend: &str,
    human_backend: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let mut text = String::new();
    for line in EXAMPLE.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        let line = match key {
            "listen" => "listen = \"127.0.0.1:0\"".to_owned(),
            "data_dir" => format!("data_dir = {:?}", data_dir.display().to_string()),
            "graph_base_url" => format!("graph_base_url = {graph:?}"),
            "backend_url" if line.contains("3001") => format!("backend_url = {bot_backend:?}"),
            "backend_url" => format!("backend_url = {human_backend:?}"),
            _ => line.to_owned(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    if !text.contains(bot_backend) || !text.contains(human_backend) {
        bail!("deploy/baton.example.toml no longer has the bot (:3001) and human (:3002) backend_url lines the demo rewrites");
    }
    Ok(text)
}

struct Baton {
    url: String,
    http: reqwest::Client,
}

impl Baton {
    async fn call(&self, token: &str, edge: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let res = self
            .http
            .post(format!("{}/v21.0/me/{edge}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }
}

fn say(out: &mut impl Write, line: impl AsRef<str>) -> anyhow::Result<()> {
    writeln!(out, "{}", line.as_ref())?;
    Ok(())
}

fn outcome(status: u16, body: &Value) -> String {
    if status == 200 {
        "accepted".to_owned()
    } else {
        format!(
            "REFUSED {}{}: {}",
            body["error"]["code"],
            body["error"]["error_subcode"]
                .as_u64()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            body["error"]["message"].as_str().unwrap_or_default()
        )
    }
}

/// Runs the demo in a temporary directory, writing the story and the audit
/// timeline to `out`.
pub async fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    run_in(dir.path(), out).await
}

/// Runs the demo with its data directory (the sled log in `<dir>/log`) at
/// `dir`, which is kept afterwards for `baton verify`, `replay` and `audit`.
/// `dir` must not hold a log already.
pub async fn run_in(dir: &std::path::Path, out: &mut impl Write) -> anyhow::Result<()> {
    if dir.join("log").exists() {
        bail!(
            "{} already holds a log: give the demo a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let world = World {
        epoch_ms: now,
        ..World::default()
    }
    .with_page(PageConfig::conversation_routing(PAGE, BOT))
    .with_app(
        AppConfig::new(BOT, "example-bot-app-secret")
            .with_token(PAGE, "example-page-token-bot")
            .may_take(true),
    )
    .with_app(
        AppConfig::new(HUMAN, "example-human-app-secret")
            .with_token(PAGE, "example-page-token-human")
            .human_agent(true),
    );
    let emulator = Emulator::start(world).context("starting the emulator")?;
    let ctl = emulator.control();

    let bot = Backend {
        name: "bot backend",
        secret: "example-bot-forward-secret",
        received: Arc::default(),
    };
    let human = Backend {
        name: "human inbox backend",
        secret: "example-human-forward-secret",
        received: Arc::default(),
    };
    let (bot_url, bot_handle) = start_backend(bot.clone())?;
    let (human_url, human_handle) = start_backend(human.clone())?;

    let text = config(&emulator.base_url(), &bot_url, &human_url, dir)?;
    std::fs::write(dir.join("baton.toml"), &text).context("writing the demo's configuration")?;
    let config = server::Config::parse(&text, "demo.toml", |_| None)?;
    let store = Arc::new(event_log::SledStore::open(dir.join("log"))?);
    let clock = Arc::new(server::ManualClock::new(domain::Timestamp::from_millis(
        now,
    )));
    let running = server::start(config, store, clock.clone()).await?;
    for app in [BOT, HUMAN] {
        ctl.set_callback(app, Some(&format!("{}/webhooks/{app}", running.base_url())))
            .await?;
    }
    let baton = Baton {
        url: running.base_url(),
        http: reqwest::Client::new(),
    };
    say(
        out,
        format!(
            "Baton is up at {} (log in {}), Meta is played by the emulator at {}.",
            baton.url,
            dir.join("log").display(),
            emulator.base_url()
        ),
    )?;
    say(out, "Configuration: deploy/baton.example.toml, pointed at the emulator and the sample backends.")?;
    say(out, format!("Page {PAGE}: Conversation Routing, default app {BOT} (bot); {HUMAN} is the human inbox app.\n"))?;

    let user = |t: &'static str| {
        let ctl = ctl.clone();
        async move { ctl.user_text(PAGE, USER, t).await }
    };
    let text_to = |t: &str| json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": t}});

    say(out, "1. The user writes: \"Hi, where is my parcel?\"")?;
    user("Hi, where is my parcel?").await?;
    let (s, b) = baton
        .call(
            "baton-bot",
            "messages",
            text_to("Let me look that up for you."),
        )
        .await?;
    say(
        out,
        format!(
            "   bot replies \"Let me look that up for you.\" → {}",
            outcome(s, &b)
        ),
    )?;

    say(out, "2. The user writes: \"I want to talk to a human\"")?;
    user("I want to talk to a human").await?;
    let (s, b) = baton
        .call("baton-bot", "pass_thread_control", json!({"recipient": {"id": USER}, "target_app_id": HUMAN, "metadata": "user asked for a human"}))
        .await?;
    say(
        out,
        format!(
            "   bot passes control to the human inbox → {}",
            outcome(s, &b)
        ),
    )?;
    ctl.wait_deliveries().await?;

    say(out, "3. The human answers.")?;
    let (s, b) = baton
        .call(
            "baton-human",
            "messages",
            text_to("Hi, I'm Ana from support. Your parcel left the depot today."),
        )
        .await?;
    say(
        out,
        format!(
            "   human: \"Hi, I'm Ana from support…\" → {}",
            outcome(s, &b)
        ),
    )?;
    let (s, b) = baton
        .call(
            "baton-bot",
            "messages",
            text_to("Can I help with anything else?"),
        )
        .await?;
    say(
        out,
        format!("   bot tries to talk over the human → {}", outcome(s, &b)),
    )?;
    let (s, b) = baton
        .call(
            "baton-human",
            "extend_thread_control",
            json!({"recipient": {"id": USER}, "duration": 3 * 86_400}),
        )
        .await?;
    say(
        out,
        format!("   human extends control for 3 days → {}", outcome(s, &b)),
    )?;

    say(out, "4. A day passes without a word from the user.")?;
    ctl.advance(Span::hours(25).millis()).await?;
    clock.advance(Span::hours(25));
    let (s, b) = baton
        .call("baton-human", "messages", text_to("Did it arrive?"))
        .await?;
    say(
        out,
        format!("   human sends a plain reply → {}", outcome(s, &b)),
    )?;
    let tagged = json!({"recipient": {"id": USER}, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT", "message": {"text": "Following up: did your parcel arrive?"}});
    let (s, b) = baton.call("baton-human", "messages", tagged).await?;
    say(
        out,
        format!(
            "   human follows up with the HUMAN_AGENT tag → {}",
            outcome(s, &b)
        ),
    )?;

    say(
        out,
        "5. The user answers; the human marks the conversation done.",
    )?;
    user("Yes it did, thanks!").await?;
    let (s, b) = baton
        .call(
            "baton-human",
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "metadata": "done"}),
        )
        .await?;
    say(
        out,
        format!(
            "   human passes control back to the default app → {}",
            outcome(s, &b)
        ),
    )?;
    ctl.wait_deliveries().await?;
    let (s, b) = baton
        .call(
            "baton-bot",
            "messages",
            text_to("Glad it arrived! Anything else I can do?"),
        )
        .await?;
    say(out, format!("   bot answers again → {}", outcome(s, &b)))?;
    if s != 200 {
        bail!("the bot could not answer after getting control back: {b}");
    }

    // What the backends saw: Baton's dispatch forwards each app's copies.
    ctl.wait_deliveries().await?;
    let head = event_log::EventStore::head(running.state.store.as_ref())
        .await?
        .position;
    if let Some(dispatcher) = &running.state.dispatcher {
        for app in [BOT, HUMAN] {
            let id = domain::AppId::parse(app)?;
            if let Some(mut status) = dispatcher.subscribe_status(&id) {
                let settled = |s: &dispatch::BackendStatus| {
                    s.read_position >= head && s.queue_depth == 0 && s.in_flight == 0
                };
                tokio::time::timeout(std::time::Duration::from_secs(10), status.wait_for(settled))
                    .await
                    .context("waiting for dispatch to reach the backends")??;
            }
        }
    }
    for backend in [&bot, &human] {
        let received = backend
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let kinds: Vec<String> = received
            .iter()
            .filter_map(|v| {
                let entry = &v["entry"][0];
                let (channel, item) = if entry["messaging"].is_array() {
                    ("messaging", &entry["messaging"][0])
                } else {
                    ("standby", &entry["standby"][0])
                };
                let what = [
                    "message",
                    "postback",
                    "pass_thread_control",
                    "take_thread_control",
                    "read",
                    "delivery",
                ]
                .into_iter()
                .find(|k| item.get(*k).is_some())?;
                let what = if item["message"]["is_echo"] == true {
                    "echo"
                } else {
                    what
                };
                Some(format!("{what}/{channel}"))
            })
            .collect();
        say(
            out,
            format!(
                "   the {} received {} signed deliveries from Baton: {}",
                backend.name,
                received.len(),
                kinds.join(", ")
            ),
        )?;
    }

    say(
        out,
        "\nAudit timeline of the thread (GET /api/threads/{page}/{psid}/timeline):",
    )?;
    let timeline: Value = baton
        .http
        .get(format!("{}/api/threads/{PAGE}/{USER}/timeline", baton.url))
        // The auditor's view: every app's sends, with their reasons.
        .bearer_auth("example-auditor-token")
        .send()
        .await?
        .json()
        .await?;
    for e in timeline["events"].as_array().cloned().unwrap_or_default() {
        say(
            out,
            format!(
                "  #{:<4} {:<28} {}",
                e["position"],
                e["type"].as_str().unwrap_or_default(),
                e["explanation"].as_str().unwrap_or_default()
            ),
        )?;
    }
    let state: Value = baton
        .http
        .get(format!("{}/api/threads/{PAGE}/{USER}", baton.url))
        .bearer_auth("baton-bot")
        .send()
        .await?
        .json()
        .await?;
    say(
        out,
        format!(
            "\nNow: thread {}, owner {}, window open: {}.",
            state["state"], state["owner"], state["window_open"]
        ),
    )?;

    let state = running.state.clone();
    running.stop().await;
    drop(state);
    bot_handle.stop(true).await;
    human_handle.stop(true).await;
    emulator.stop().await;
    Ok(())
}
