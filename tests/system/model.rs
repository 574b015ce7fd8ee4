//! The model-based randomized test of issue 12. A seeded generator
//! interleaves, across three threads and in each routing mode: user
//! messages; sends and control calls (pass, take, release, request) by every
//! app; Page Inbox takeovers with and without a webhook; Meta's disorder
//! (deliveries held and released late or in reverse order, late retries of
//! earlier deliveries, duplicates, slow answers overtaken by newer news,
//! clock skew); clock moves; and Baton crashes (every task dropped where it
//! stands, as `kill -9` would; the real SIGKILL is `reliability.rs`).
//!
//! The emulator is the oracle. Properties:
//! - **Agreement.** After the run quiesces (held deliveries released, skew
//!   gone, reconciliation done), Baton's ledger equals Meta's for every
//!   thread. A silent takeover of an idle thread is learned from the user's
//!   next message (Meta gives no other sign, and only active threads are
//!   asked about on the schedule), so the settling sends one there.
//! - **Safety.** During the run, no call Baton forwarded is refused by Meta
//!   for ownership (10/2018300, 100/2534037), and no app that owns the thread
//!   at Meta is refused by Baton for ownership, except while the thread is in
//!   doubt: from the moment a fault hides a fact from Baton until Baton
//!   agrees with Meta again. That span is the reconciliation window; its
//!   longest value (Meta's time) is printed with the counts.
//!
//! `BATON_MODEL_SEEDS` sets the seeds per mode (170 by default: 510 in all;
//! 40 per mode on PostgreSQL, where each seed's fresh database costs more
//! than the run itself, and the rules under test do not depend on the store);
//! `BATON_MODEL_SEED=<n>` runs that one seed in each mode and prints its
//! trace. A failure prints the seed and the trace of the run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use domain::events::ControlView;
use domain::Span;
use emulator::{FaultSpec, SetOwner};
use serde_json::{json, Value};

use crate::stack::*;
use crate::support::*;

const THREADS: [&str; 3] = ["m0", "m1", "m2"];
const OPS_PER_SEED: usize = 24;
const OWNERSHIP_SUBCODES: [i64; 2] = [2_018_300, 2_534_037];

/// splitmix64: small, seedable, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    Bot,
    Human,
}

impl App {
    fn id(self) -> &'static str {
        match self {
            App::Bot => BOT,
            App::Human => HUMAN,
        }
    }

    fn token(self) -> &'static str {
        match self {
            App::Bot => "baton-bot",
            App::Human => "baton-human",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    UserText(usize),
    Send(App, usize),
    Pass(App, usize, Option<&'static str>),
    Take(App, usize),
    Release(App, usize),
    Request(App, usize),
    InboxTakeover(usize),
    InboxDone(usize),
    SilentTakeover(usize),
    /// Meta holds one app's deliveries from now on.
    Hold(App),
    /// Meta sends what it held, oldest first or newest first.
    ReleaseHeld {
        reverse: bool,
    },
    /// The next delivery to the app goes out twice.
    Duplicate(App),
    /// Meta retries an earlier delivery (the k-th one, modulo).
    Redeliver(usize),
    /// A pass whose answer is held while the Page Inbox takes the thread.
    SlowPass(App, usize),
    Skew(i64),
    AdvanceMinutes(i64),
    Crash,
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::UserText(_) => "user message",
            Op::Send(..) => "send",
            Op::Pass(..) => "pass",
            Op::Take(..) => "take",
            Op::Release(..) => "release",
            Op::Request(..) => "request",
            Op::InboxTakeover(_) => "inbox takeover",
            Op::InboxDone(_) => "inbox done",
            Op::SilentTakeover(_) => "silent takeover",
            Op::Hold(_) => "hold deliveries",
            Op::ReleaseHeld { .. } => "release held",
            Op::Duplicate(_) => "duplicate",
            Op::Redeliver(_) => "late retry",
            Op::SlowPass(..) => "slow answer",
            Op::Skew(_) => "clock skew",
            Op::AdvanceMinutes(_) => "clock move",
            Op::Crash => "crash",
        }
    }
}

/// The operations of one seed, generated before anything runs, so a seed
/// always means the same run.
fn generate(seed: u64, mode: Mode) -> Vec<Op> {
    let mut rng = Rng(seed ^ (mode as u64).wrapping_mul(0xA5A5_A5A5));
    let apps = [App::Bot, App::Human];
    let targets = [Some(BOT), Some(HUMAN), Some(PAGE_INBOX), None];
    let inbox = mode != Mode::ZeroConfig;
    let mut ops = vec![Op::UserText(0), Op::UserText(1), Op::UserText(2)];
    let mut crashed = false;
    while ops.len() < OPS_PER_SEED {
        let t = rng.below(THREADS.len());
        let app = rng.pick(&apps);
        let op = match rng.below(100) {
            0..=17 => Op::UserText(t),
            18..=32 => Op::Send(app, t),
            33..=42 => Op::Pass(app, t, rng.pick(&targets)),
            43..=46 => Op::Take(app, t),
            47..=51 => Op::Release(app, t),
            52..=54 => Op::Request(app, t),
            55..=58 if inbox => Op::InboxTakeover(t),
            59..=61 if inbox => Op::InboxDone(t),
            62..=64 if inbox => Op::SilentTakeover(t),
            65..=68 => Op::Hold(app),
            69..=72 => Op::ReleaseHeld {
                reverse: rng.below(2) == 0,
            },
            73..=75 => Op::Duplicate(app),
            76..=79 => Op::Redeliver(rng.below(64)),
            80..=82 if inbox => Op::SlowPass(app, t),
            83..=85 => Op::Skew(rng.pick(&[-2_000, 0, 2_000, 4_000])),
            86..=94 => Op::AdvanceMinutes(rng.pick(&[1, 5, 20, 45, 90, 25 * 60])),
            95..=99 if !crashed => {
                crashed = true;
                Op::Crash
            }
            _ => Op::UserText(t),
        };
        ops.push(op);
    }
    ops
}

#[derive(Debug, Default)]
struct Stats {
    seeds: usize,
    ops: BTreeMap<&'static str, usize>,
    calls_checked: usize,
    forwarded: usize,
    excused: usize,
    windows: usize,
    longest_window: Span,
    /// The seed and thread of the longest window.
    longest_at: (u64, &'static str),
    /// Doubts from a silent takeover of an idle thread: they end at the
    /// user's next message, not on a schedule, so they are counted apart.
    silent_idle_windows: usize,
    reconciliations: usize,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.seeds += other.seeds;
        for (k, v) in other.ops {
            *self.ops.entry(k).or_default() += v;
        }
        self.calls_checked += other.calls_checked;
        self.forwarded += other.forwarded;
        self.excused += other.excused;
        self.windows += other.windows;
        if other.longest_window > self.longest_window {
            self.longest_window = other.longest_window;
            self.longest_at = other.longest_at;
        }
        self.silent_idle_windows += other.silent_idle_windows;
        self.reconciliations += other.reconciliations;
    }
}

/// One run: the stack, the oracle's bookkeeping, the trace.
struct Run {
    seed: u64,
    stack: Option<Stack>,
    mode: Mode,
    trace: Arc<Mutex<Vec<String>>>,
    /// Per thread: since when (Meta's control clock, ms) a hidden fact may
    /// keep Baton from agreeing with Meta.
    doubt: [Option<i64>; 3],
    /// A silent takeover of a thread Meta had idle, not yet revealed by a
    /// user message.
    silent_idle: [bool; 3],
    /// The thread's doubt began with a silent takeover of an idle thread.
    unscheduled: [bool; 3],
    holding: bool,
    skew: i64,
    /// When Meta last stopped hiding (its held deliveries sent, its clock
    /// back): a doubt's window counts from then at the earliest.
    revealed_at: i64,
    now: i64,
    stats: Stats,
}

fn tuning() -> Tuning {
    Tuning {
        rate: 10_000.0,
        burst: 10_000.0,
        ..Tuning::default()
    }
}

impl Run {
    fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("a running stack")
    }

    fn note(&self, line: String) {
        self.trace.lock().unwrap().push(line);
    }

    fn fail(&self, why: String) -> ! {
        panic!("{why}");
    }

    fn doubt(&mut self, t: usize) {
        if self.doubt[t].is_none() {
            self.doubt[t] = Some(self.now);
        }
    }

    /// Whether Meta hides anything from Baton right now.
    fn hiding(&self) -> bool {
        self.holding || self.skew != 0
    }

    /// Meta's owner of thread `t`, as the ledger would name it.
    async fn meta_view(&self, t: usize) -> ControlView {
        let meta = self.stack().ctl.thread(PAGE, THREADS[t]).await.unwrap();
        match meta.owner {
            Some(app) => owner(&app),
            None => ControlView::Idle,
        }
    }

    /// Baton's view in Meta's terms: a legacy primary holding the thread is
    /// what Meta calls idle.
    fn baton_view(&self, t: usize) -> ControlView {
        let view = self.stack().ledger_view(THREADS[t]);
        match view {
            ControlView::Owner { app } if self.mode == Mode::HandoverV1 && app.as_str() == BOT => {
                ControlView::Idle
            }
            other => other,
        }
    }

    /// Whether `app` holds thread `t` at Meta (a legacy primary holds every
    /// thread nobody else does).
    fn holds(&self, meta: &ControlView, app: App) -> bool {
        match meta {
            ControlView::Owner { app: a } => a.as_str() == app.id(),
            ControlView::Idle => self.mode == Mode::HandoverV1 && app == App::Bot,
            _ => false,
        }
    }

    async fn upstream(&self, app: App, edge: &str) -> usize {
        self.stack()
            .ctl
            .calls()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.app_id.as_deref() == Some(app.id()) && c.path.ends_with(edge))
            .count()
    }

    /// A call through Baton by `app` on thread `t`, checked for safety.
    async fn app_call(&mut self, app: App, t: usize, edge: &str, body: Value) {
        let meta = self.meta_view(t).await;
        let before = self.upstream(app, edge).await;
        let stack = self.stack();
        let (status, answer) = if edge == "messages" {
            stack.send(app.token(), body).await
        } else {
            stack.graph_post(app.token(), edge, body).await
        };
        let forwarded = self.upstream(app, edge).await > before;
        self.stats.calls_checked += 1;
        self.stats.forwarded += usize::from(forwarded);
        let subcode = answer["error"]["error_subcode"].as_i64().unwrap_or(0);
        self.note(format!(
            "    -> {status} {} (meta before: {meta:?})",
            if forwarded { "forwarded" } else { "local" }
        ));
        if status == 200 || !OWNERSHIP_SUBCODES.contains(&subcode) {
            return;
        }
        let violation = if forwarded {
            Some(format!(
                "Meta refused a call Baton forwarded for ownership: {answer}"
            ))
        } else if self.holds(&meta, app) {
            Some(format!(
                "Baton refused {app:?}, the owner at Meta: {answer}"
            ))
        } else {
            None
        };
        if let Some(v) = violation {
            if self.doubt[t].is_some() || self.hiding() {
                self.stats.excused += 1;
                self.note(format!("    excused (thread in doubt): {v}"));
            } else {
                self.fail(v);
            }
        }
    }

    async fn wait(&self) {
        self.stack().ctl.wait_deliveries().await.unwrap();
    }

    /// Moves both clocks, running Baton's timers and its scheduled
    /// reconciliation as the background tasks would. While a thread is in
    /// doubt and Meta hides nothing, the first 40 minutes go a minute at a
    /// time, so the window is measured to the minute.
    async fn advance(&mut self, by: Span) {
        let mut left = by.millis();
        while left > 0 {
            let fine = !self.hiding() && self.doubt.iter().any(Option::is_some);
            let step = if fine && by.millis() - left < Span::minutes(40).millis() {
                Span::MINUTE.millis().min(left)
            } else {
                left
            };
            let stack = self.stack();
            stack.advance(Span(step)).await;
            stack.baton.running.expire_due().await;
            stack.baton.running.state.reconcile_due().await;
            self.now += step;
            left -= step;
            if fine {
                self.clear_doubts().await;
            }
        }
    }

    async fn run(&mut self, op: Op) {
        *self.stats.ops.entry(op.kind()).or_default() += 1;
        self.note(format!("{op:?}"));
        let hidden = self.hiding();
        let ctl = self.stack().ctl.clone();
        match op {
            Op::UserText(t) => {
                ctl.user_text(PAGE, THREADS[t], "hello").await.unwrap();
                self.wait().await;
                self.silent_idle[t] = false;
            }
            Op::Send(app, t) => {
                self.app_call(app, t, "messages", text(THREADS[t], "hi"))
                    .await
            }
            Op::Pass(app, t, target) => {
                let mut body = json!({"recipient": {"id": THREADS[t]}});
                if let Some(target) = target {
                    body["target_app_id"] = json!(target);
                }
                self.app_call(app, t, "pass_thread_control", body).await;
            }
            Op::Take(app, t) => {
                let body = json!({"recipient": {"id": THREADS[t]}});
                self.app_call(app, t, "take_thread_control", body).await;
            }
            Op::Release(app, t) => {
                let body = json!({"recipient": {"id": THREADS[t]}});
                self.app_call(app, t, "release_thread_control", body).await;
            }
            Op::Request(app, t) => {
                let body = json!({"recipient": {"id": THREADS[t]}});
                self.app_call(app, t, "request_thread_control", body).await;
            }
            Op::InboxTakeover(t) => {
                // Meta may refuse (the inbox already holds it): noted, not fatal.
                let r = ctl.inbox_takeover(PAGE, THREADS[t], Some("Ana here")).await;
                self.note(format!(
                    "    -> {}",
                    if r.is_ok() { "done" } else { "refused" }
                ));
                self.wait().await;
            }
            Op::InboxDone(t) => {
                let r = ctl.inbox_done(PAGE, THREADS[t]).await;
                self.note(format!(
                    "    -> {}",
                    if r.is_ok() { "done" } else { "refused" }
                ));
                self.wait().await;
            }
            Op::SilentTakeover(t) => {
                if self.meta_view(t).await == ControlView::Idle {
                    self.silent_idle[t] = true;
                    self.unscheduled[t] |= self.doubt[t].is_none();
                }
                let to = SetOwner {
                    app_id: Some(PAGE_INBOX.into()),
                    expires_at_ms: None,
                };
                ctl.set_owner(PAGE, THREADS[t], &to).await.unwrap();
                self.doubt(t);
            }
            Op::Hold(app) => {
                let hold = FaultSpec::WebhookHold {
                    count: u32::MAX,
                    app_id: Some(app.id().into()),
                };
                ctl.add_fault(&hold).await.unwrap();
                self.holding = true;
            }
            Op::ReleaseHeld { reverse } => {
                ctl.release_deliveries(None, reverse).await.unwrap();
                self.wait().await;
                self.holding = false;
            }
            Op::Duplicate(app) => {
                let dup = FaultSpec::WebhookDuplicate {
                    count: 1,
                    app_id: Some(app.id().into()),
                };
                ctl.add_fault(&dup).await.unwrap();
            }
            Op::Redeliver(k) => {
                let sent: Vec<_> = ctl
                    .deliveries()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|d| !d.held && !d.dropped)
                    .collect();
                if let Some(d) = sent.get(k % sent.len().max(1)) {
                    for (t, p) in THREADS.iter().enumerate() {
                        if d.body.contains(&format!("\"{p}\"")) {
                            self.doubt(t);
                        }
                    }
                    ctl.redeliver(d.seq).await.unwrap();
                    self.wait().await;
                }
            }
            Op::SlowPass(app, t) => self.slow_pass(app, t).await,
            Op::Skew(ms) => {
                ctl.set_skew(ms).await.unwrap();
                self.skew = ms;
            }
            Op::AdvanceMinutes(m) => self.advance(Span::minutes(m)).await,
            Op::Crash => {
                let stack = self.stack.take().expect("a running stack");
                self.stack = Some(stack.crash_baton(tuning()).await);
            }
        }
        if hidden || self.hiding() {
            // Whatever this step touched may have been hidden from Baton.
            for t in 0..THREADS.len() {
                self.doubt(t);
            }
        }
        if hidden && !self.hiding() {
            self.revealed_at = self.now;
        }
        self.clear_doubts().await;
    }

    /// A pass whose answer Meta holds while the Page Inbox takes the thread:
    /// the answer lands after newer news.
    async fn slow_pass(&mut self, app: App, t: usize) {
        let ctl = self.stack().ctl.clone();
        let delay = FaultSpec::Delay {
            count: 1,
            endpoint: Some("pass_thread_control".into()),
            millis: None,
        };
        ctl.add_fault(&delay).await.unwrap();
        let base = self
            .stack()
            .baton
            .url(&format!("/v21.0/{PAGE}/pass_thread_control"));
        let http = self.stack().baton.http.clone();
        let body = json!({"recipient": {"id": THREADS[t]}, "target_app_id": HUMAN});
        let call = tokio::spawn(http.post(base).bearer_auth(app.token()).json(&body).send());
        // Wait until Meta has the call (its fault is spent) or Baton
        // refused it without calling.
        for _ in 0..5_000 {
            let faults = ctl.faults().await.unwrap();
            let spent = !faults
                .iter()
                .any(|f| matches!(f.spec, FaultSpec::Delay { .. }));
            if spent || call.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        ctl.clear_faults().await.unwrap();
        if self.holding {
            // Keep the app's hold: clearing removed it.
            self.holding = false;
            ctl.release_deliveries(None, false).await.unwrap();
        }
        let _ = ctl
            .inbox_takeover(PAGE, THREADS[t], Some("Taking this one"))
            .await;
        self.wait().await;
        ctl.release_held().await.unwrap();
        let status = call.await.unwrap().map(|r| r.status().as_u16());
        self.wait().await;
        self.note(format!("    -> {status:?}"));
        self.doubt(t);
    }

    /// Ends the doubt of every thread where Baton agrees with Meta again
    /// and Meta hides nothing; records how long each doubt lasted.
    async fn clear_doubts(&mut self) {
        if self.hiding() {
            return;
        }
        for (t, psid) in THREADS.iter().enumerate() {
            let Some(since) = self.doubt[t] else { continue };
            if self.baton_view(t) == self.meta_view(t).await {
                self.doubt[t] = None;
                self.stats.windows += 1;
                let window = Span(self.now - since.max(self.revealed_at));
                if std::mem::take(&mut self.unscheduled[t]) {
                    self.stats.silent_idle_windows += 1;
                } else if window > self.stats.longest_window {
                    self.stats.longest_window = window;
                    self.stats.longest_at = (self.seed, psid);
                }
            }
        }
    }

    /// Quiesces: Meta sends what it held and its clock agrees again, a
    /// silently taken idle thread gets the user's next message, and Baton
    /// reconciles on its schedule. Then every thread must agree.
    async fn settle(&mut self) {
        let ctl = self.stack().ctl.clone();
        ctl.clear_faults().await.unwrap();
        ctl.release_deliveries(None, false).await.unwrap();
        ctl.set_skew(0).await.unwrap();
        self.holding = false;
        self.skew = 0;
        self.revealed_at = self.now;
        self.wait().await;
        for (t, psid) in THREADS.iter().enumerate() {
            if self.silent_idle[t] {
                self.note(format!("settle: the user writes on {psid}"));
                ctl.user_text(PAGE, psid, "anyone?").await.unwrap();
                self.wait().await;
            }
        }
        for round in 0..4 {
            let mut differ = Vec::new();
            for (t, psid) in THREADS.iter().enumerate() {
                let (ours, meta) = (self.baton_view(t), self.meta_view(t).await);
                if ours != meta {
                    differ.push(format!("{psid}: Baton {ours:?}, Meta {meta:?}"));
                }
            }
            if differ.is_empty() {
                self.clear_doubts().await;
                return;
            }
            if round == 3 {
                let mut timelines = String::new();
                for t in THREADS {
                    for e in self.stack().timeline(t).await {
                        timelines.push_str(&format!("  {t}: {e}\n"));
                    }
                }
                self.fail(format!(
                    "after settling, Baton differs from Meta: {differ:?}\nBaton's timelines:\n{timelines}"
                ));
            }
            self.note(format!("settle round {round}: {differ:?}"));
            // Reconciliation asked on contradictions runs in the background;
            // the schedule asks about the rest after its interval.
            self.advance(Span::minutes(31)).await;
        }
    }
}

async fn one_seed(seed: u64, mode: Mode, trace: Arc<Mutex<Vec<String>>>) -> Stats {
    let stack = Stack::start_with(mode, tuning(), &[]).await;
    let mut run = Run {
        seed,
        stack: Some(stack),
        mode,
        trace,
        doubt: [None; 3],
        silent_idle: [false; 3],
        unscheduled: [false; 3],
        holding: false,
        skew: 0,
        revealed_at: 0,
        now: 0,
        stats: Stats {
            seeds: 1,
            ..Stats::default()
        },
    };
    for op in generate(seed, mode) {
        run.run(op).await;
    }
    run.settle().await;
    run.stats.reconciliations = run
        .stack()
        .ctl
        .calls()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.path.ends_with("/thread_owner"))
        .count();
    for t in THREADS {
        run.stack().assert_consistent(t).await;
    }
    // A seed's Baton would otherwise keep running, holding its store (on
    // PostgreSQL, database connections), until the whole test ends.
    if let Some(stack) = run.stack.take() {
        stack.stop().await;
    }
    run.stats
}

async fn seeds(mode: Mode) {
    let (first, count, verbose) = match std::env::var("BATON_MODEL_SEED") {
        Ok(s) => (s.parse().expect("BATON_MODEL_SEED is a number"), 1, true),
        Err(_) => {
            let default = match test_support::store_under_test() {
                test_support::StoreKind::Sled => 170,
                test_support::StoreKind::Postgres => 40,
            };
            (0, env_count("BATON_MODEL_SEEDS", default) as u64, false)
        }
    };
    let mut total = Stats::default();
    for seed in first..first + count {
        let trace = Arc::new(Mutex::new(Vec::new()));
        let result = tokio::spawn(one_seed(seed, mode, trace.clone())).await;
        let lines = trace.lock().unwrap().join("\n");
        match result {
            Ok(stats) => {
                if verbose {
                    println!("seed {seed} ({mode:?}):\n{lines}");
                }
                total.add(stats);
            }
            Err(e) => {
                let e = e.into_panic();
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!(
                    "seed {seed} failed in {mode:?}: {why}\nreplay with BATON_MODEL_SEED={seed}\ntrace:\n{lines}"
                );
            }
        }
    }
    report(&format!(
        "model {mode:?}: {} seeds, ops {:?}, {} calls checked ({} forwarded), {} violations excused in doubt, {} doubts ended ({} of them silent takeovers of idle threads, ended by the user's next message), longest other reconciliation window {} min (Meta's time, from when Meta stopped hiding; seed {} thread {}), {} thread_owner calls",
        total.seeds,
        total.ops,
        total.calls_checked,
        total.forwarded,
        total.excused,
        total.windows,
        total.silent_idle_windows,
        total.longest_window.millis() / 60_000,
        total.longest_at.0,
        total.longest_at.1,
        total.reconciliations,
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_conversation_routing() {
    seeds(Mode::ConversationRouting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_zero_config() {
    seeds(Mode::ZeroConfig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_handover_v1() {
    seeds(Mode::HandoverV1).await;
}
