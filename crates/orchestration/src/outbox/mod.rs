//! Sends: the gate, the outbox and the worker that drains it.
//!
//! [`Baton::send`] decides a send against the thread's ledger and records the
//! acceptance (or the refusal), then waits, with a timeout, for the outcome
//! the worker records. The worker ([`run`]) takes its work from the log (the
//! projection's open sends, oldest acceptance first): it applies the page's
//! rate limit, records each attempt before the call leaves, calls Meta, and
//! records a retry or the outcome, as the send's [`machine`] says. Sends to
//! one thread go out one at a time, in acceptance order; threads and pages
//! do not wait for each other. At start the same worker resumes what the
//! last stop left: never-attempted sends are sent, interrupted attempts are
//! recorded as unknown (their echo settles them), retries wait their turn.
//!
//! The HTTP request is not the outbox: a client that hangs up does not stop
//! its send, and a retry with the same `Idempotency-Key` waits for the same
//! outcome.

pub mod limiter;
pub mod machine;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::events::{Event, SendAttempted, SendOutcome, SendRetryScheduled};
use domain::rules;
use domain::{
    Command, CommandId, Page, PageId, Recipient, Rejection, SendContent, SendMessage, ThreadKey,
    ThreadLedger, Timestamp,
};
use event_log::EventStore;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Config;
use crate::graph_client::GraphAnswer;
use crate::projections::{SendStatus, State, SEND_METADATA_PREFIX};
use crate::record::{OnBusy, RecordError};
use crate::shutdown::Shutdown;
use crate::{Acting, Baton};

use limiter::RateLimiter;
use machine::{AfterAnswer, Next, RetryPolicy, SendMachine};

/// The outbox's in-memory part: the per-page rate limiter, and the locks
/// that serialise requests sharing an `Idempotency-Key`.
#[derive(Debug)]
pub(crate) struct OutboxState {
    limiter: Mutex<RateLimiter>,
    policy: RetryPolicy,
    keys: Mutex<HashMap<KeyOf, Arc<tokio::sync::Mutex<()>>>>,
}

/// An app's `Idempotency-Key`.
type KeyOf = (domain::AppId, String);

impl OutboxState {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            limiter: Mutex::new(RateLimiter::new(
                config.send_rate_per_second,
                config.send_burst,
            )),
            policy: RetryPolicy {
                max_attempts: config.send_max_attempts.max(1),
                backoff: Duration::from_millis(config.send_backoff_ms),
            },
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The lock for one app's key; dropped from the map once nobody holds it.
    fn key_lock(&self, app: &domain::AppId, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, lock| Arc::strong_count(lock) > 1);
        keys.entry((app.clone(), key.to_owned()))
            .or_default()
            .clone()
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a send got no outcome to report.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The recipient's token is unknown, or for another page.
    #[error("{0}")]
    Refused(Rejection),
    /// The decision could not be recorded; nothing was sent.
    #[error("the send could not be recorded")]
    NotRecorded(#[source] RecordError),
    /// The `Idempotency-Key` was first used with another request.
    #[error("Idempotency-Key {key:?} was first used with a different request")]
    KeyReused { key: String },
}

/// What Baton would decide for a send now (the dry run).
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Allowed {
        basis: Option<Value>,
        window_closes_at: Option<Timestamp>,
    },
    Refused {
        rejection: Rejection,
        window_closes_at: Option<Timestamp>,
    },
}

enum Decided {
    Accepted,
    Refused(Rejection),
    Replay(CommandId),
    KeyReused,
}

/// The digest an `Idempotency-Key` is bound to: the app, the page and the
/// request as the app sent it.
fn request_digest(acting: &Acting, send: &SendMessage) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(acting.app.as_str().as_bytes());
    h.update([0]);
    h.update(acting.page.as_str().as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&send.payload).unwrap_or_default());
    hex::encode(h.finalize())
}

impl<S: EventStore + 'static> Baton<S> {
    /// How long a request waits for its send's outcome: every attempt's
    /// timeout and backoff, and a second to record it.
    pub fn outcome_wait(&self) -> Duration {
        let policy = self.outbox.policy;
        let calls = Duration::from_millis(self.config.graph_timeout_ms)
            .saturating_mul(policy.max_attempts + 1);
        let backoffs: Duration = (1..policy.max_attempts).map(|a| policy.backoff(a)).sum();
        calls + backoffs + Duration::from_secs(1)
    }

    /// Decides a send, records the decision, and waits (at most
    /// [`Baton::outcome_wait`]) for the outbox to record Meta's answer.
    /// A retried `Idempotency-Key` waits for the first send's outcome.
    /// `SendStatus::Pending` means the wait ran out: the send goes on.
    pub async fn send(
        &self,
        acting: &Acting,
        mut send: SendMessage,
    ) -> Result<SendStatus, SendError> {
        let thread = self.thread_of(&acting.page, &send)?;
        let span = tracing::info_span!("send", app = %acting.app, page = %thread.page, psid = %thread.psid, send = %send.send_id);
        async {
            send.graph_version = Some(acting.version.clone());
            // Requests sharing a key are decided one at a time, whatever
            // their recipient: the second sees the first's record.
            let key_lock = send
                .idempotency_key
                .as_ref()
                .map(|k| self.outbox.key_lock(&send.app, k));
            let _serialised = match &key_lock {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            if send.idempotency_key.is_some() {
                send.request_digest = Some(request_digest(acting, &send));
            }
            if matches!(send.content, SendContent::Message { metadata: None }) {
                // Tag the message so that its echo can settle an unknown outcome.
                let tag = format!("{SEND_METADATA_PREFIX}{}", send.send_id);
                if let Some(m) = send
                    .payload
                    .get_mut("message")
                    .and_then(Value::as_object_mut)
                {
                    m.insert("metadata".into(), json!(tag));
                }
            }
            let now = self.clock.now();
            let command = Command::SendMessage(send.clone());
            // A refusal that rests on an owner nobody at Meta has confirmed
            // lately, or that Meta's news contradicted, is checked with Meta
            // first.
            if self.owner_refusal_in_doubt(&thread, &command, now, true) {
                self.reconcile_ahead(&thread, &acting.version).await;
            }
            let decided = self
                .recorder
                .record_on(&thread, OnBusy::Fail, |snapshot, ledger, page| {
                    if let Some(key) = &send.idempotency_key {
                        if let Some(first) =
                            snapshot.idempotency.get(&(send.app.clone(), key.clone()))
                        {
                            let same = first.request_digest.is_none()
                                || first.request_digest == send.request_digest;
                            return if same {
                                (Vec::new(), Decided::Replay(first.send_id.clone()))
                            } else {
                                (Vec::new(), Decided::KeyReused)
                            };
                        }
                    }
                    match rules::decide(ledger, page, &command, now) {
                        Ok(events) => (events, Decided::Accepted),
                        Err(r) => (
                            vec![rules::refusal(ledger, &command, &r, now)],
                            Decided::Refused(r),
                        ),
                    }
                })
                .await
                .map_err(SendError::NotRecorded)?;
            let id = match decided.value {
                Decided::Refused(rejection) => {
                    tracing::info!(code = rejection.code, reason = %rejection.reason, "send refused");
                    return Ok(SendStatus::Refused { rejection });
                }
                Decided::Replay(first) => first,
                Decided::KeyReused => {
                    return Err(SendError::KeyReused {
                        key: send.idempotency_key.clone().unwrap_or_default(),
                    })
                }
                Decided::Accepted => send.send_id.clone(),
            };
            drop(_serialised);
            Ok(self.wait_for_outcome(&id).await)
        }
        .instrument(span)
        .await
    }

    /// The send's status once it is settled (or refused), or `Pending` when
    /// [`Baton::outcome_wait`] runs out first.
    pub async fn wait_for_outcome(&self, id: &CommandId) -> SendStatus {
        let settled = |state: &State| {
            state
                .sends
                .get(id)
                .map(|r| r.status.clone())
                .filter(|s| *s != SendStatus::Pending)
        };
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            status = tokio::time::timeout(self.outcome_wait(), self.projections.wait_until(settled)) => {
                status.ok().flatten().unwrap_or(SendStatus::Pending)
            }
            () = stopping.recv() => settled(&self.projections.read()).unwrap_or(SendStatus::Pending),
        }
    }

    /// How often a send had to wait for its page's rate limit.
    pub fn sends_delayed_by_rate_limit(&self) -> u64 {
        self.outbox.limiter().delayed()
    }

    /// The dry run: what Baton would decide for `send` now. Records nothing.
    pub fn check_send(&self, page: &PageId, send: &SendMessage) -> Result<Check, SendError> {
        let thread = self.thread_of(page, send)?;
        let now = self.clock.now();
        let snapshot = self.projections.read();
        let page = snapshot
            .pages
            .get(page)
            .ok_or_else(|| SendError::NotRecorded(RecordError::UnknownPage(page.to_string())))?;
        let ledger = snapshot.ledger(&thread);
        let window_closes_at = ledger.window.map(|w| w.closes_at);
        Ok(
            match rules::decide(&ledger, page, &Command::SendMessage(send.clone()), now) {
                Ok(events) => Check::Allowed {
                    basis: events.iter().find_map(|e| match e {
                        Event::SendAccepted(a) => serde_json::to_value(&a.basis).ok(),
                        _ => None,
                    }),
                    window_closes_at,
                },
                Err(rejection) => Check::Refused {
                    rejection,
                    window_closes_at,
                },
            },
        )
    }

    /// Where a send is recorded: the recipient's thread, the token's thread,
    /// or a synthetic thread `user_ref-<ref>` for plugin user refs (no PSID yet).
    fn thread_of(&self, page: &PageId, send: &SendMessage) -> Result<ThreadKey, SendError> {
        match &send.recipient {
            Recipient::Psid(psid) => Ok(ThreadKey::new(page.clone(), psid.clone())),
            Recipient::OneTimeToken(token) => {
                let snapshot = self.projections.read();
                let thread = snapshot
                    .tokens
                    .get(token)
                    .cloned()
                    .ok_or_else(|| SendError::Refused(rules::unknown_token()))?;
                if &thread.page != page {
                    return Err(SendError::Refused(Rejection::new(
                        domain::RejectionKind::TokenWrongPage,
                        format!(
                            "one_time_notif_token belongs to page {}, not {page}",
                            thread.page
                        ),
                    )));
                }
                Ok(thread)
            }
            Recipient::UserRef(r) => {
                let safe: String = r
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let psid = domain::Psid::parse(format!("user_ref-{safe}")).map_err(|e| {
                    SendError::Refused(Rejection::new(
                        domain::RejectionKind::TokenUnknown,
                        format!("recipient.user_ref: {e}"),
                    ))
                })?;
                Ok(ThreadKey::new(page.clone(), psid))
            }
        }
    }
}

/// The events that settle `send` with `outcome` on the thread now, and, when
/// the outcome is unknown but the send's echo is already in the log, the
/// settlement by that echo (inline thread control included). The one place
/// an echo settles a send: ingress calls it for echoes that arrive later.
pub fn settle(
    state: &State,
    ledger: &ThreadLedger,
    page: &Page,
    send: &SendMessage,
    outcome: &SendOutcome,
    now: Timestamp,
) -> Vec<Event> {
    let mut events = rules::settle_send(ledger, page, send, outcome, now);
    if let (SendOutcome::Unknown { .. }, Some(mid)) = (outcome, state.echoed.get(&send.send_id)) {
        let mut after = ledger.clone();
        for e in &events {
            after.apply(e);
        }
        events.extend(rules::settle_send(
            &after,
            page,
            send,
            &SendOutcome::SettledByEcho { mid: mid.clone() },
            now,
        ));
    }
    events
}

/// The settlement of an unknown send by its echo, when `event` is the echo of
/// one: sent by the same app, on the same thread, and delivered on that
/// app's own endpoint (another app's endpoint, or its backend, cannot settle
/// it).
pub fn settle_by_echo(
    state: &State,
    ledger: &ThreadLedger,
    page: &Page,
    event: &domain::events::InboundEvent,
    delivered_to: &domain::AppId,
    now: Timestamp,
) -> Vec<Event> {
    let (Some((send_id, record)), domain::events::InboundEvent::Echo { mid, .. }) =
        (state.send_settled_by(event), event)
    else {
        return Vec::new();
    };
    if record.thread != ledger.key || &record.app != delivered_to {
        return Vec::new();
    }
    rules::settle_send(
        ledger,
        page,
        &record.as_send(&send_id),
        &SendOutcome::SettledByEcho { mid: mid.clone() },
        now,
    )
}

/// What one unit of the worker's work came to.
struct Done {
    send_id: CommandId,
    page: PageId,
    /// Try again after this long (a "not sent" answer, or the log was busy).
    retry_after: Option<Duration>,
    /// Hold the whole page this long (Meta throttled it).
    pause_page: Option<Duration>,
}

/// The outbox worker: runs until `shutdown`, then finishes the calls in
/// flight (each records its outcome) and returns.
pub async fn run<S: EventStore + 'static>(baton: Arc<Baton<S>>, mut shutdown: Shutdown) {
    let mut folded = baton.projections.subscribe();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut in_flight: HashSet<CommandId> = HashSet::new();
    let mut task_sends: HashMap<tokio::task::Id, CommandId> = HashMap::new();
    let mut due: HashMap<CommandId, Instant> = HashMap::new();
    let mut stopping = false;
    loop {
        let mut wake: Option<Instant> = None;
        if !stopping {
            for (send, thread, step) in plan(&baton, &in_flight, &mut due) {
                let id = send.send_id.clone();
                match step {
                    Step::Wait(until) => wake = Some(wake.map_or(until, |w| w.min(until))),
                    Step::Run(work) => {
                        in_flight.insert(id.clone());
                        due.remove(&id);
                        let span = tracing::info_span!("outbox", send = %id, app = %send.app, page = %thread.page, psid = %thread.psid);
                        let task = tasks
                            .spawn(carry_out(baton.clone(), send, thread, work).instrument(span));
                        task_sends.insert(task.id(), id);
                    }
                }
            }
        }
        if stopping && tasks.is_empty() {
            return;
        }
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(done) = tasks.join_next_with_id() => match done {
                Ok((task, done)) => {
                    task_sends.remove(&task);
                    in_flight.remove(&done.send_id);
                    if let Some(after) = done.retry_after {
                        due.insert(done.send_id.clone(), Instant::now() + after);
                    }
                    if let Some(pause) = done.pause_page {
                        baton.outbox.limiter().pause(&done.page, pause, std::time::Instant::now());
                    }
                }
                Err(e) => {
                    // Only that send is released; it is looked at again in a
                    // second (an attempt without an answer becomes unknown).
                    tracing::error!(error = %e, "an outbox task failed; the send stays pending");
                    if let Some(send) = task_sends.remove(&e.id()) {
                        in_flight.remove(&send);
                        due.insert(send, Instant::now() + Duration::from_secs(1));
                    }
                }
            },
            changed = folded.changed(), if !stopping => {
                if changed.is_err() {
                    stopping = true;
                }
            }
            () = sleep, if !stopping => {}
            () = shutdown.recv(), if !stopping => {
                tracing::info!(in_flight = tasks.len(), "outbox draining: calls in flight finish and record their outcome");
                stopping = true;
            }
        }
    }
}

/// One step the worker takes now for a send.
enum Step {
    Wait(Instant),
    Run(Work),
}

enum Work {
    Attempt(u32),
    Settle(SendOutcome),
}

/// The steps due now: the first open send of each thread not already being
/// carried, in acceptance order, within each page's rate limit.
fn plan<S>(
    baton: &Baton<S>,
    in_flight: &HashSet<CommandId>,
    due: &mut HashMap<CommandId, Instant>,
) -> Vec<(SendMessage, ThreadKey, Step)> {
    let snapshot = baton.projections.read();
    let now = baton.clock.now();
    let instant = Instant::now();
    let mut busy_threads: HashSet<&ThreadKey> = HashSet::new();
    let mut steps = Vec::new();
    for (id, record, open) in snapshot.open_sends() {
        if !busy_threads.insert(&record.thread) || in_flight.contains(id) {
            continue; // one send at a time per thread, in order
        }
        let step = |step| (open.send.clone(), record.thread.clone(), step);
        let next = SendMachine::resume(open, baton.outbox.policy).poll();
        if let Next::WaitUntil { retry_at } = next {
            // Due by this process's timer when it scheduled the retry, else
            // (after a restart) by the time the log gives.
            due.entry(id.clone()).or_insert_with(|| {
                let left = (retry_at.millis() - now.millis()).max(0) as u64;
                instant + Duration::from_millis(left)
            });
        }
        if let Some(at) = due.get(id).filter(|at| **at > instant) {
            steps.push(step(Step::Wait(*at)));
            continue;
        }
        let work = match next {
            Next::Settle(outcome) => Work::Settle(outcome),
            Next::WaitUntil { .. } => Work::Attempt(open.attempts + 1),
            Next::Attempt { attempt } => Work::Attempt(attempt),
        };
        if let Work::Attempt(_) = work {
            let acquired = baton
                .outbox
                .limiter()
                .try_acquire(&record.thread.page, std::time::Instant::now());
            if let Err(wait) = acquired {
                steps.push(step(Step::Wait(instant + wait)));
                continue;
            }
        }
        steps.push(step(Step::Run(work)));
    }
    steps
}

async fn carry_out<S: EventStore + 'static>(
    baton: Arc<Baton<S>>,
    send: SendMessage,
    thread: ThreadKey,
    work: Work,
) -> Done {
    let mut done = Done {
        send_id: send.send_id.clone(),
        page: thread.page.clone(),
        retry_after: None,
        pause_page: None,
    };
    let attempt = match work {
        Work::Settle(outcome) => {
            tracing::warn!(
                "a send interrupted by the last stop is recorded as unknown; its echo settles it"
            );
            if !record_outcome(&baton, &thread, &send, outcome).await {
                done.retry_after = Some(Duration::from_secs(1));
            }
            return done;
        }
        Work::Attempt(n) => n,
    };
    // 1. The attempt is durable before the call leaves.
    let marked = baton
        .recorder
        .record_on(&thread, OnBusy::Retry, |_, ledger, _| {
            let e: Event = SendAttempted {
                thread: ledger.key.clone(),
                at: baton.clock.now(),
                send_id: send.send_id.clone(),
                attempt,
            }
            .into();
            (vec![e], ())
        })
        .await;
    if let Err(e) = marked {
        tracing::error!(error = %e, "cannot record a send attempt; trying again shortly");
        done.retry_after = Some(Duration::from_secs(1));
        return done;
    }
    // 2. The call.
    let answer = call_meta(&baton, &thread.page, &send).await;
    // 3. What the answer means.
    let open = baton
        .projections
        .read()
        .sends
        .get(&send.send_id)
        .and_then(|r| r.open.clone());
    let Some(open) = open else {
        return done; // settled meanwhile (an echo came first)
    };
    match SendMachine::resume(&open, baton.outbox.policy).on_answer(attempt, &answer) {
        AfterAnswer::Retry {
            error,
            after,
            pause_page,
        } => {
            tracing::warn!(
                code = error.code,
                attempt,
                "Meta did not send it; trying again"
            );
            let retry_at = baton
                .clock
                .now()
                .plus(domain::Span(after.as_millis() as i64));
            let recorded = baton
                .recorder
                .record_on(&thread, OnBusy::Retry, |_, ledger, _| {
                    let e: Event = SendRetryScheduled {
                        thread: ledger.key.clone(),
                        at: baton.clock.now(),
                        send_id: send.send_id.clone(),
                        attempt,
                        error: error.clone(),
                        retry_at,
                    }
                    .into();
                    (vec![e], ())
                })
                .await;
            if let Err(e) = recorded {
                tracing::error!(error = %e, "cannot record Meta's \"not sent\" answer; the send is unknown until its echo");
            }
            done.retry_after = Some(after);
            done.pause_page = pause_page.then_some(after);
        }
        AfterAnswer::Settle(outcome) => {
            if !record_outcome(&baton, &thread, &send, outcome).await {
                done.retry_after = Some(Duration::from_secs(1));
            }
        }
    }
    done
}

/// Records the outcome (and the echo's settlement if it came first), then
/// carries out what it calls for: a reconciliation when Meta said another app
/// controls the thread.
async fn record_outcome<S: EventStore + 'static>(
    baton: &Baton<S>,
    thread: &ThreadKey,
    send: &SendMessage,
    outcome: SendOutcome,
) -> bool {
    let now = baton.clock.now();
    let recorded = baton
        .recorder
        .record_on(thread, OnBusy::Retry, |snapshot, ledger, page| {
            if snapshot
                .sends
                .get(&send.send_id)
                .is_some_and(|r| r.status != SendStatus::Pending)
            {
                return (Vec::new(), ()); // already settled (by its echo)
            }
            (settle(snapshot, ledger, page, send, &outcome, now), ())
        })
        .await;
    match recorded {
        Err(e) => {
            tracing::error!(error = %e, "Meta answered a send but the answer could not be recorded; its echo settles it");
            false
        }
        Ok(r) => {
            let drifted = crate::reconcile::contradicted(&r.events).next().is_some();
            if drifted {
                let version = send.graph_version.as_deref().unwrap_or("v21.0");
                baton.reconcile(thread, version).await;
            }
            true
        }
    }
}

/// `POST /{version}/{page}/messages` at Meta with the sending app's page token.
async fn call_meta<S: EventStore + 'static>(
    baton: &Baton<S>,
    page: &PageId,
    send: &SendMessage,
) -> GraphAnswer {
    let denied = |message: String| GraphAnswer::Err {
        status: 403,
        error: domain::graph::error(domain::graph::code::ACCESS_DENIED, None, message),
        body: Value::Null,
    };
    let Some((_, managed)) = baton.config.managed(&send.app) else {
        return denied(format!("(#200) app {} is not managed by Baton", send.app));
    };
    let Some(token) = managed.page_tokens.get(page) else {
        return denied(format!("(#200) no page token for page {page}"));
    };
    let answer = baton
        .send_graph
        .post(
            &managed.graph_base_url,
            send.graph_version.as_deref().unwrap_or("v21.0"),
            page.as_str(),
            "messages",
            token.expose(),
            &send.payload,
        )
        .await;
    baton.note_token(page, &send.app, "messages", &answer).await;
    answer
}
