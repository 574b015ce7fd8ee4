//! The emulator playing Meta and Baton behind it, wired together: the
//! emulator's apps deliver their webhooks to Baton, Baton calls the
//! emulator's Graph API, and both clocks move together.

use domain::events::ControlView;
use domain::rules;
use domain::{PageId, Psid, Span, ThreadKey, ThreadLedger};
use emulator::{AppConfig, ControlClient, Emulator, EmulatorHandle, PageConfig, World};
use serde_json::{json, Value};
use server::projections::{Projections, State};

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ConversationRouting,
    ZeroConfig,
    HandoverV1,
}

#[derive(Debug)]
pub struct Stack {
    pub emulator: EmulatorHandle,
    pub ctl: ControlClient,
    pub baton: TestBaton,
    hop_primary: Option<String>,
    /// Extra lines of Baton's configuration, kept across restarts.
    settings: Vec<String>,
    /// The bot's backend_url, if it has one (kept across restarts).
    bot_backend: Option<String>,
}

impl Stack {
    pub async fn start(mode: Mode) -> Stack {
        Self::start_tuned(mode, Tuning::default()).await
    }

    pub async fn start_tuned(mode: Mode, tuning: Tuning) -> Stack {
        Self::start_with(mode, tuning, &[]).await
    }

    /// Starts with extra lines in Baton's configuration (`key = value`).
    pub async fn start_with(mode: Mode, tuning: Tuning, settings: &[&str]) -> Stack {
        Self::start_full(mode, tuning, settings, None).await
    }

    /// [`Stack::start_with`], with the bot forwarding its events to
    /// `bot_backend` (dispatch).
    pub async fn start_with_backend(
        mode: Mode,
        tuning: Tuning,
        settings: &[&str],
        bot_backend: &str,
    ) -> Stack {
        Self::start_full(mode, tuning, settings, Some(bot_backend.to_owned())).await
    }

    async fn start_full(
        mode: Mode,
        tuning: Tuning,
        settings: &[&str],
        bot_backend: Option<String>,
    ) -> Stack {
        let settings: Vec<String> = settings.iter().map(|s| (*s).to_owned()).collect();
        let hop_primary = matches!(mode, Mode::HandoverV1).then(|| BOT.to_owned());
        let page = match mode {
            Mode::ConversationRouting => PageConfig::conversation_routing(PAGE, BOT),
            Mode::ZeroConfig => PageConfig::zero_config(PAGE),
            Mode::HandoverV1 => {
                PageConfig::handover_v1(PAGE, BOT, &[HUMAN, emulator::PAGE_INBOX_APP_ID])
            }
        };
        // The webhook fields docs/operations.md tells operators to subscribe.
        let fields: Vec<&str> = emulator::DEFAULT_FIELDS
            .iter()
            .copied()
            .chain(["messaging_policy_enforcement"])
            .collect();
        let world = World::default()
            .with_page(page)
            .with_app(
                AppConfig::new(BOT, BOT_SECRET)
                    .with_token(PAGE, "page-token-bot")
                    .with_fields(&fields)
                    .may_take(true),
            )
            .with_app(
                AppConfig::new(HUMAN, HUMAN_SECRET)
                    .with_token(PAGE, "page-token-human")
                    .with_fields(&fields)
                    .human_agent(true),
            );
        let emulator = Emulator::start(world).expect("emulator starts");
        let baton_mode = match mode {
            Mode::ConversationRouting => cr_mode(),
            Mode::ZeroConfig => zero_config_mode(),
            Mode::HandoverV1 => handover_v1_mode(),
        };
        let baton = TestBaton::start(&render(
            &emulator,
            &baton_mode,
            tuning,
            &settings,
            bot_backend.as_deref(),
        ))
        .await;
        let ctl = emulator.control();
        for app in [BOT, HUMAN] {
            ctl.set_callback(app, Some(&baton.url(&format!("/webhooks/{app}"))))
                .await
                .unwrap();
        }
        assert_eq!(
            ctl.clock().await.unwrap().now_ms,
            T0.millis(),
            "both clocks start together"
        );
        Stack {
            emulator,
            ctl,
            baton,
            hop_primary,
            settings,
            bot_backend,
        }
    }

    /// Stops Baton in order and closes its store (on PostgreSQL, its
    /// connections); the emulator goes with the stack. For a test that runs
    /// many stacks in one runtime, where a dropped one would keep running
    /// until the test ends.
    pub async fn stop(self) {
        self.baton.stop().await;
    }

    /// Stops Baton (in order, as `baton serve` does on SIGTERM) and starts
    /// it again on the same data directory with `tuning`, pointing the
    /// emulator's apps at its new address.
    pub async fn restart_baton(self, tuning: Tuning) -> Stack {
        self.restart(tuning, false).await
    }

    /// Kills Baton where it stands, as `kill -9` would (see
    /// `server::Running::crash`), and starts it again on the same data
    /// directory with `tuning`.
    pub async fn crash_baton(self, tuning: Tuning) -> Stack {
        self.restart(tuning, true).await
    }

    async fn restart(self, tuning: Tuning, crash: bool) -> Stack {
        let Stack {
            emulator,
            ctl,
            baton,
            hop_primary,
            settings,
            bot_backend,
        } = self;
        // The restarted server's clock goes on from where the old one stood.
        let now = server::Clock::now(baton.clock.as_ref());
        let (dir, text) = if crash {
            baton.crash().await
        } else {
            baton.stop().await
        };
        let mode = text
            .lines()
            .find_map(|l| l.strip_prefix("routing = "))
            .map(str::to_owned)
            .unwrap_or_else(cr_mode);
        let config = render(&emulator, &mode, tuning, &settings, bot_backend.as_deref());
        let baton = TestBaton::start_at(dir, &config, now).await;
        for app in [BOT, HUMAN] {
            ctl.set_callback(app, Some(&baton.url(&format!("/webhooks/{app}"))))
                .await
                .unwrap();
        }
        Stack {
            emulator,
            ctl,
            baton,
            hop_primary,
            settings,
            bot_backend,
        }
    }

    /// What the page said to `psid`, as the emulator's transcript has it.
    pub async fn page_messages(&self, psid: &str) -> Vec<String> {
        let thread = self.ctl.thread(PAGE, psid).await.unwrap();
        thread
            .transcript
            .iter()
            .filter(|l| l.from == "page")
            .filter_map(|l| l.text.clone())
            .collect()
    }

    /// Waits (at most 30 s, then fails) until the ledger shows `want` for `psid`.
    pub async fn wait_owner(&self, psid: &str, want: ControlView) {
        let thread = Self::thread(psid);
        let reached = self.baton.running.state.projections.wait_until(|s| {
            (s.thread(&thread).map(|l| l.control.view()) == Some(want.clone())).then_some(())
        });
        if tokio::time::timeout(std::time::Duration::from_secs(30), reached)
            .await
            .is_err()
        {
            panic!(
                "the ledger never showed {want:?}; it shows {:?}",
                self.ledger_view(psid)
            );
        }
    }

    /// Moves both clocks.
    pub async fn advance(&self, by: Span) {
        self.ctl.advance(by.millis()).await.unwrap();
        self.baton.clock.advance(by);
    }

    pub async fn user_says(&self, psid: &str, text: &str) {
        let result = self.ctl.user_text(PAGE, psid, text).await.unwrap();
        assert!(
            result.deliveries.iter().all(|d| d.ok),
            "every delivery to Baton succeeded: {:?}",
            result.deliveries
        );
    }

    /// Sends through Baton as `token`'s app; returns status and body.
    pub async fn send(&self, token: &str, body: Value) -> (u16, Value) {
        self.send_with_key(token, body, None).await
    }

    pub async fn send_with_key(&self, token: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut req = self
            .baton
            .http
            .post(self.baton.url("/v21.0/me/messages"))
            .bearer_auth(token)
            .json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        self.ctl.wait_deliveries().await.unwrap();
        (status, body)
    }

    /// Calls Baton's Graph-compatible API as `token`'s app.
    pub async fn graph_post(&self, token: &str, edge: &str, body: Value) -> (u16, Value) {
        let res = self
            .baton
            .http
            .post(self.baton.url(&format!("/v21.0/{PAGE}/{edge}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.json().await.unwrap_or(Value::Null);
        // Webhooks the call caused (pass → new owner) are delivered after it answers.
        self.ctl.wait_deliveries().await.unwrap();
        (status, body)
    }

    pub async fn pass(&self, token: &str, psid: &str, target: Option<&str>) -> (u16, Value) {
        let mut body = json!({"recipient": {"id": psid}, "metadata": "over to you"});
        if let Some(t) = target {
            body["target_app_id"] = json!(t);
        }
        self.graph_post(token, "pass_thread_control", body).await
    }

    pub fn thread(psid: &str) -> ThreadKey {
        ThreadKey::new(PageId::parse(PAGE).unwrap(), Psid::parse(psid).unwrap())
    }

    /// Baton's view of who controls the thread now.
    pub fn ledger_view(&self, psid: &str) -> ControlView {
        let snapshot = self.baton.running.state.projections.read();
        let page = snapshot
            .pages
            .get(&PageId::parse(PAGE).unwrap())
            .unwrap()
            .clone();
        let ledger = snapshot
            .thread(&Self::thread(psid))
            .cloned()
            .unwrap_or_else(|| ThreadLedger::new(Self::thread(psid)));
        rules::control_at(&ledger, &page, self.baton.clock.now_value())
    }

    /// The thread's recorded facts, in log order, for a failure's report.
    pub async fn thread_facts(&self, psid: &str) -> Vec<String> {
        let thread = Self::thread(psid);
        self.baton
            .events()
            .await
            .iter()
            .filter(|e| e.thread() == Some(&thread))
            .map(|e| format!("{e:?}"))
            .collect()
    }

    /// Asserts the ledger agrees with the emulator, and that replaying the log
    /// from zero gives exactly the live projections.
    pub async fn assert_consistent(&self, psid: &str) {
        let meta = self.ctl.thread(PAGE, psid).await.unwrap();
        let expected = match meta.owner.clone() {
            Some(app) => ControlView::Owner {
                app: domain::AppId::parse(app).unwrap(),
            },
            None => ControlView::Idle,
        };
        let mut ours = self.ledger_view(psid);
        // Handover v1: the primary holding the thread is what Meta calls idle.
        if let ControlView::Owner { app } = &ours {
            if self.hop_primary.as_deref() == Some(app.as_str()) {
                ours = ControlView::Idle;
            }
        }
        if ours != expected {
            panic!(
                "Baton's ledger differs from Meta's view: ours {ours:?}, Meta's {meta:?}; the thread's events:\n{}",
                self.thread_facts(psid).await.join("\n")
            );
        }
        let config = server::Config::parse(&self.baton.config_text, "test.toml", |_| None).unwrap();
        let replayed = Projections::new(State::new(config.pages.values().map(|(_, p)| p.clone())));
        let projections = &self.baton.running.state.projections;
        // Background work (a reconciliation) may append meanwhile: compare
        // at one position, the live side caught up to the replay's.
        loop {
            replayed
                .catch_up(self.baton.running.state.store.as_ref())
                .await
                .unwrap();
            let at = replayed.position();
            projections
                .wait_until(|s| (s.position >= at).then_some(()))
                .await;
            let live = projections.read().clone();
            if live.position == at {
                assert_eq!(*replayed.read(), live, "replay from zero differs from live");
                return;
            }
        }
    }

    /// Meta carries out its next call to `edge` at once but holds the
    /// answer on its way back, until `ctl.release_held()`.
    pub async fn hold_next_answer(&self, edge: &str) {
        self.ctl
            .add_fault(&emulator::FaultSpec::Delay {
                count: 1,
                endpoint: Some(edge.into()),
                millis: None,
            })
            .await
            .unwrap();
    }

    /// Graph calls the emulator received for an edge.
    pub async fn upstream_calls(&self, edge: &str) -> usize {
        self.ctl
            .calls()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.path.ends_with(edge))
            .count()
    }

    /// The thread's timeline from Baton's read API.
    pub async fn timeline(&self, psid: &str) -> Vec<Value> {
        let res = self
            .baton
            .http
            .get(
                self.baton
                    .url(&format!("/api/threads/{PAGE}/{psid}/timeline")),
            )
            .bearer_auth("baton-bot")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["events"].as_array().unwrap().clone()
    }
}

/// Baton's configuration for a stack: the emulator's Graph API, the routing
/// mode, the tuning and the extra settings.
fn render(
    emulator: &EmulatorHandle,
    mode: &str,
    tuning: Tuning,
    settings: &[String],
    bot_backend: Option<&str>,
) -> String {
    let toml = settings.iter().fold(
        BatonToml::new(&emulator.base_url())
            .routing(mode)
            .tuning(tuning),
        |toml, line| toml.setting(line),
    );
    match bot_backend {
        Some(url) => toml.bot_backend(url),
        None => toml,
    }
    .render()
}

trait NowValue {
    fn now_value(&self) -> domain::Timestamp;
}

impl NowValue for server::ManualClock {
    fn now_value(&self) -> domain::Timestamp {
        server::Clock::now(self)
    }
}
