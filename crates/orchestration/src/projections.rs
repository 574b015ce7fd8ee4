//! Projections: the thread ledgers, the pages, the dedupe index, the outbox
//! (every send and, while it is open, what the outbox needs to carry it on)
//! and the expiry index, folded from the log by the domain's `apply`. One
//! follower task reads the log in order from the subscription, so state is a
//! function of the log alone; writers wait for the follower to reach the
//! positions they appended (read your writes). It never writes to the log.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use domain::events::{Channel, Event, GraphError, InboundEvent, SendOutcome};
use domain::{
    AppId, CommandId, Page, PageId, Rejection, SendMessage, Span, ThreadKey, ThreadLedger,
    Timestamp,
};
use event_log::sharded::ShardedMap;
use event_log::{EventStore, Record, StorageError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod codec;

/// Baton tags a send without metadata with `baton:send:<send id>`, so its
/// echo can settle an unknown outcome.
pub const SEND_METADATA_PREFIX: &str = "baton:send:";

/// How long the dedupe index remembers an item, from when Baton recorded it:
/// the longest retry horizon Meta documents (generic Graph webhooks retry for
/// up to 36 h; Messenger gives up sooner, unsubscribing after 1 h of
/// failures). A copy retried later than this is recorded as a new item.
pub const DEDUPE_RETENTION: Span = Span::hours(36);
/// How long an `Idempotency-Key` is remembered (as Stripe's API does).
pub const IDEMPOTENCY_RETENTION: Span = Span::hours(24);
/// How long a comment's private reply is remembered: Meta allows replies
/// for 7 days after the comment, which came before the reply.
pub const PRIVATE_REPLY_RETENTION: Span = Span::days(8);
/// How long a settled or refused send is kept for replays and echoes.
pub const SETTLED_SEND_RETENTION: Span = Span::hours(24);
/// How long a send whose outcome is unknown waits for its echo.
pub const UNKNOWN_SEND_RETENTION: Span = Span::days(7);

/// Which apps (and on which channel) have delivered an item already.
pub type Copies = Vec<(AppId, Channel)>;

/// Where a send stands, as the outbox sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendStatus {
    /// Accepted and durable; Meta has not answered yet.
    Pending,
    Sent {
        message_id: String,
        recipient_id: Option<String>,
    },
    Failed {
        error: GraphError,
    },
    /// No answer came; the echo will settle it.
    Unknown {
        reason: String,
    },
    Refused {
        rejection: Rejection,
    },
}

impl SendStatus {
    /// The status an outcome gives a send to `psid`.
    pub fn from_outcome(outcome: &SendOutcome, psid: &str) -> SendStatus {
        match outcome {
            SendOutcome::Sent {
                message_id,
                recipient_id,
            } => SendStatus::Sent {
                message_id: message_id.clone(),
                recipient_id: recipient_id.clone(),
            },
            SendOutcome::SettledByEcho { mid } => SendStatus::Sent {
                message_id: mid.clone(),
                recipient_id: Some(psid.to_owned()),
            },
            SendOutcome::Failed { error } => SendStatus::Failed {
                error: error.clone(),
            },
            SendOutcome::Unknown { reason } => SendStatus::Unknown {
                reason: reason.clone(),
            },
        }
    }
}

/// One send in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendRecord {
    pub thread: ThreadKey,
    pub app: AppId,
    pub status: SendStatus,
    /// The send's inline `thread_control`, which its echo settles too.
    pub thread_control: Option<domain::InlineControl>,
    /// While the send is pending: what the outbox needs to carry it on.
    pub open: Option<OpenSend>,
}

/// A pending send as the outbox left it: after a restart, the same worker
/// code resumes it from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSend {
    /// The log position of its acceptance (the outbox's order).
    pub accepted_at: u64,
    pub send: SendMessage,
    /// Attempts recorded so far (`SendAttempted`).
    pub attempts: u32,
    /// Whether Meta's answer to the last attempt is recorded. An attempt
    /// without an answer may have reached Meta.
    pub answered: bool,
    /// When the next attempt is due, after a "not sent" answer.
    pub retry_at: Option<Timestamp>,
}

impl SendRecord {
    /// Enough of the original send for `rules::settle_send`.
    pub fn as_send(&self, send_id: &CommandId) -> domain::SendMessage {
        domain::SendMessage {
            send_id: send_id.clone(),
            app: self.app.clone(),
            recipient: domain::Recipient::Psid(self.thread.psid.clone()),
            messaging_type: None,
            tag: None,
            content: domain::SendContent::Message { metadata: None },
            thread_control: self.thread_control.clone(),
            payload: serde_json::Value::Null,
            idempotency_key: None,
            graph_version: None,
            request_digest: None,
        }
    }
}

/// What the log says about one app on one page's health: its last
/// subscription fact, and whether its page token stands rejected. Folded
/// from the page's stream; the watchdog and the token checks decide against
/// it, so a restart does not record the same loss or breakage again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPageFacts {
    /// The last `AppSubscriptionLost` or `AppSubscriptionRestored`.
    pub subscription: Option<SubscriptionFact>,
    /// The last `PageTokenRejected`, until a `PageTokenAccepted` clears it.
    pub token_rejected: Option<domain::events::PageTokenRejected>,
    /// When the last `PageTokenAccepted` was recorded.
    pub token_accepted_at: Option<Timestamp>,
}

/// The last subscription fact of an app on a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionFact {
    Lost {
        at: Timestamp,
        last_fields: Vec<String>,
    },
    Restored {
        at: Timestamp,
        fields: Vec<String>,
    },
}

impl SubscriptionFact {
    pub fn at(&self) -> Timestamp {
        match self {
            SubscriptionFact::Lost { at, .. } | SubscriptionFact::Restored { at, .. } => *at,
        }
    }

    pub fn is_lost(&self) -> bool {
        matches!(self, SubscriptionFact::Lost { .. })
    }
}

/// The folded state.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub pages: HashMap<PageId, Page>,
    /// Every thread's ledger, boxed: the map keeps spare slots as it grows
    /// (up to half of them empty after it doubles), and a slot holding a
    /// pointer is 40 bytes where one holding the whole entry would be
    /// over 300. Sharded, as is `seen`: a fold slice that doubled a
    /// million-entry map held the write lock, and every webhook's planner,
    /// for hundreds of milliseconds.
    threads: ShardedMap<ThreadKey, Box<Tracked>>,
    /// One-Time Notification token → its thread.
    pub tokens: HashMap<String, ThreadKey>,
    /// The outbox: every send decided, by id.
    pub sends: HashMap<CommandId, SendRecord>,
    /// `(app, Idempotency-Key)` → the send it first produced.
    pub idempotency: HashMap<(AppId, String), Idempotent>,
    /// Echoes of Baton's own sends (tagged `baton:send:<id>`): send → mid.
    pub echoed: HashMap<CommandId, String>,
    /// Comments (page, comment id) already answered with a private reply.
    pub replied_comments: HashSet<(PageId, String)>,
    /// Erasures by request id (a data-deletion callback's confirmation
    /// code): which threads, when. Erasures are rare; kept for status pages.
    pub erasures: HashMap<String, Vec<(ThreadKey, Timestamp)>>,
    /// Page health facts per (page, app): one entry per pair that has any
    /// (bounded by the configuration's pages and apps).
    pub page_health: BTreeMap<(PageId, AppId), AppPageFacts>,
    /// Pending sends by the position of their acceptance: the outbox's queue.
    pub open_sends: BTreeMap<u64, CommandId>,
    /// When each active thread's control lapses, in time order (the expiry
    /// timer wakes on the first; it never scans every thread).
    expiries: TimeIndex,
    /// Active threads by when Meta last confirmed their owner, oldest first,
    /// and threads whose owner is unknown, first of all (the scheduled
    /// reconciliation asks about the first ones).
    confirmations: TimeIndex,
    /// Dedupe index: a 64-bit digest of each item's dedupe key → its copies
    /// (a boxed slice of exactly their number: a vector would keep room for
    /// four).
    seen: ShardedMap<u64, Box<[(AppId, Channel)]>>,
    /// What each index forgets, and when (Baton's recorded time): the
    /// retention of the dedupe, idempotency and settled-send indexes.
    forget: BTreeMap<(Timestamp, u64), Forget>,
    forget_seq: u64,
    /// The recorded time of the last record folded (the fold's clock, so a
    /// replay forgets exactly what the live server forgot).
    pub recorded_at: Timestamp,
    /// The last log position folded in.
    pub position: u64,
    /// Records whose payload could not be decoded (a newer schema): skipped.
    pub undecodable: u64,
}

/// The first request an `Idempotency-Key` was used with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotent {
    pub send_id: CommandId,
    /// The request's digest, when it was recorded (older logs lack it).
    pub request_digest: Option<String>,
}

/// One entry an index forgets after its retention. Every delivered item
/// files one, so it is kept small: the rare keys with text are boxed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Forget {
    Seen(u64),
    Key(Box<(AppId, String)>),
    Send(CommandId),
    Reply(Box<(PageId, String)>),
}

/// Streams holding refusals on threads that had no state: a refusal there
/// creates no thread state (no ledger, no stream).
pub const REFUSALS_STREAM_PREFIX: &str = "refusals/";

/// An item's dedupe key as the index keeps it: the first 8 bytes of its
/// SHA-256, the same in every build (a projection snapshot keeps these
/// digests; `DefaultHasher` is not promised to stay the same across Rust
/// releases).
fn digest(key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(key.as_bytes());
    u64::from_be_bytes([
        hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
    ])
}

/// What Meta delivered: the raw delivery and its items, whose words the
/// fold never reads.
fn is_inbound(type_name: &str) -> bool {
    matches!(
        type_name,
        "WebhookDeliveryReceived"
            | "MessagingEventReceived"
            | "MessagingEventCopyReceived"
            | "UnattributedItemReceived"
    )
}

/// Decodes a stored record as the fold reads it: the content the
/// projections keep opened with `vault`; inbound items (whose words are
/// never folded) as they are stored. `None` when it cannot be decoded.
pub fn decode_for_fold(record: &Record, vault: Option<&event_log::KeyVault>) -> Option<Event> {
    match vault {
        Some(vault) if !is_inbound(&record.type_name) => crate::record::open(Some(vault), record)
            .map(|o| o.event)
            .ok(),
        _ => Event::decode(&record.type_name, record.schema_version, &record.payload).ok(),
    }
}

impl State {
    pub fn new(pages: impl IntoIterator<Item = Page>) -> Self {
        let pages: HashMap<PageId, Page> = pages.into_iter().map(|p| (p.id.clone(), p)).collect();
        // The configuration's pages and apps are kept once per process:
        // every thread's key and owner decoded from the log then shares them.
        for page in pages.values() {
            page.id.keep();
            for app in page.apps.keys() {
                app.keep();
            }
        }
        Self {
            pages,
            threads: ShardedMap::new(),
            tokens: HashMap::new(),
            sends: HashMap::new(),
            idempotency: HashMap::new(),
            echoed: HashMap::new(),
            replied_comments: HashSet::new(),
            erasures: HashMap::new(),
            page_health: BTreeMap::new(),
            open_sends: BTreeMap::new(),
            expiries: TimeIndex::default(),
            confirmations: TimeIndex::default(),
            seen: ShardedMap::new(),
            forget: BTreeMap::new(),
            forget_seq: 0,
            recorded_at: Timestamp::from_millis(0),
            position: 0,
            undecodable: 0,
        }
    }

    /// A digest of the thread ledgers' facts (without the person's content
    /// they hold) and the pages, independent of map order: two folds of the
    /// same log give the same digest, with the content keys or without.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut threads: Vec<(&ThreadKey, &ThreadLedger)> =
            self.threads.iter().map(|(k, t)| (k, &t.ledger)).collect();
        threads.sort_by(|a, b| a.0.cmp(b.0));
        let mut pages: Vec<(&PageId, &Page)> = self.pages.iter().collect();
        pages.sort_by(|a, b| a.0.cmp(b.0));
        let mut h = Sha256::new();
        h.update(self.position.to_be_bytes());
        for (_, ledger) in threads {
            // Facts only: a replay of an export (no keys) cannot open the
            // person's content, and must still agree.
            let bytes = if ledger.holds_content() {
                let mut bare = ledger.clone();
                bare.forget_content();
                serde_json::to_vec(&bare)
            } else {
                serde_json::to_vec(ledger)
            };
            h.update(bytes.unwrap_or_default());
        }
        for (_, page) in pages {
            h.update(serde_json::to_vec(page).unwrap_or_default());
        }
        hex::encode(h.finalize())
    }

    pub fn copies(&self, dedupe_key: &str) -> Option<&[(AppId, Channel)]> {
        self.seen.get(&digest(dedupe_key)).map(|copies| &**copies)
    }

    pub fn thread(&self, key: &ThreadKey) -> Option<&ThreadLedger> {
        self.threads.get(key).map(|tracked| &tracked.ledger)
    }

    /// How many threads have state.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Every thread's ledger, in no order.
    pub fn ledgers(&self) -> impl Iterator<Item = &ThreadLedger> {
        self.threads.values().map(|tracked| &tracked.ledger)
    }

    /// The thread's ledger, or a fresh one for a thread with no state yet.
    pub fn ledger(&self, key: &ThreadKey) -> std::borrow::Cow<'_, ThreadLedger> {
        match self.threads.get(key) {
            Some(t) => std::borrow::Cow::Borrowed(&t.ledger),
            None => std::borrow::Cow::Owned(ThreadLedger::new(key.clone())),
        }
    }

    /// Threads whose control lapses at or before `now`, soonest first.
    pub fn due_expiries(&self, now: Timestamp) -> Vec<ThreadKey> {
        self.expiries.due(now, usize::MAX, |_| true)
    }

    /// When the next control lapses, if any thread is active.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first()
    }

    /// At most `limit` active threads whose owner Meta last confirmed at or
    /// before `before` (never confirmed: since the last control change),
    /// longest unconfirmed first, with those of unknown owner before all;
    /// only the threads `keep` keeps.
    pub fn unconfirmed_since(
        &self,
        before: Timestamp,
        limit: usize,
        keep: impl Fn(&ThreadKey) -> bool,
    ) -> Vec<ThreadKey> {
        self.confirmations.due(before, limit, keep)
    }

    /// The pending sends, oldest acceptance first.
    pub fn open_sends(&self) -> impl Iterator<Item = (&CommandId, &SendRecord, &OpenSend)> {
        self.open_sends.values().filter_map(|id| {
            let record = self.sends.get(id)?;
            Some((id, record, record.open.as_ref()?))
        })
    }

    /// The send an echo settles: one Baton tagged (`metadata = baton:send:<id>`),
    /// sent by the same app, whose outcome was recorded as unknown (a timeout,
    /// or a restart that interrupted it). A pending send's echo is kept in
    /// `echoed` and settles it when its outcome is recorded.
    pub fn send_settled_by(&self, event: &InboundEvent) -> Option<(CommandId, &SendRecord)> {
        let InboundEvent::Echo {
            metadata: Some(m),
            app_id: Some(sender),
            ..
        } = event
        else {
            return None;
        };
        let id = CommandId::parse(m.strip_prefix(SEND_METADATA_PREFIX)?).ok()?;
        let record = self.sends.get(&id)?;
        let open = matches!(record.status, SendStatus::Unknown { .. });
        (open && &record.app == sender).then_some((id, record))
    }

    /// Folds one stored record, without its personal content.
    pub fn apply_record(&mut self, record: &Record) {
        self.apply_record_with(record, None);
    }

    /// Folds one stored record, opening with `vault` the content the
    /// projections keep: the messages sends carry to Meta and the metadata
    /// control calls pass on. What inbound items say is never folded, so
    /// the ingest path decodes them as they are.
    pub fn apply_record_with(&mut self, record: &Record, vault: Option<&event_log::KeyVault>) {
        let decoded = decode_for_fold(record, vault);
        self.apply_decoded(record, decoded.as_ref());
    }

    /// Folds one stored record whose event is already decoded (`None`: it
    /// could not be, a newer schema). The record gives the position, the
    /// recorded time and the stream; the event its facts.
    pub fn apply_decoded(&mut self, record: &Record, event: Option<&Event>) {
        self.position = record.position;
        let recorded =
            Timestamp::from_millis(i64::try_from(record.recorded_at_ms).unwrap_or(i64::MAX));
        self.recorded_at = self.recorded_at.max(recorded);
        match event {
            Some(event) if record.stream.starts_with(REFUSALS_STREAM_PREFIX) => {
                // A refusal on a thread that had no state: the outbox and
                // idempotency indexes learn of it; no ledger is made.
                self.apply_facts(event);
            }
            Some(event) => self.apply(event),
            None => self.undecodable += 1,
        }
        self.forget_expired();
    }

    /// Schedules `what` to be forgotten `after` the current recorded time.
    fn forget_after(&mut self, after: Span, what: Forget) {
        self.forget_seq += 1;
        self.forget
            .insert((self.recorded_at.plus(after), self.forget_seq), what);
    }

    /// Forgets what has outlived its retention.
    fn forget_expired(&mut self) {
        while let Some(entry) = self.forget.first_entry() {
            if entry.key().0 > self.recorded_at {
                return;
            }
            match entry.remove() {
                Forget::Seen(d) => {
                    self.seen.remove(&d);
                }
                Forget::Key(k) => {
                    self.idempotency.remove(&*k);
                }
                Forget::Reply(k) => {
                    self.replied_comments.remove(&*k);
                }
                Forget::Send(id) => {
                    // A send still pending is never forgotten: the outbox owns it.
                    if self
                        .sends
                        .get(&id)
                        .is_some_and(|r| r.status != SendStatus::Pending)
                    {
                        self.sends.remove(&id);
                        self.echoed.remove(&id);
                    }
                }
            }
        }
    }

    /// How many entries the retention-bounded indexes hold (dedupe,
    /// idempotency keys, sends): for the resource test and metrics.
    pub fn index_sizes(&self) -> (usize, usize, usize) {
        (self.seen.len(), self.idempotency.len(), self.sends.len())
    }

    pub fn apply(&mut self, event: &Event) {
        self.apply_facts(event);
        self.apply_thread(event);
    }

    /// The outbox, idempotency, token and dedupe indexes (not the ledger).
    fn apply_facts(&mut self, event: &Event) {
        match event {
            Event::AppSubscriptionLost(e) => {
                self.page_health
                    .entry((e.page.clone(), e.app.clone()))
                    .or_default()
                    .subscription = Some(SubscriptionFact::Lost {
                    at: e.at,
                    last_fields: e.last_fields.clone(),
                });
            }
            Event::AppSubscriptionRestored(e) => {
                self.page_health
                    .entry((e.page.clone(), e.app.clone()))
                    .or_default()
                    .subscription = Some(SubscriptionFact::Restored {
                    at: e.at,
                    fields: e.fields.clone(),
                });
            }
            Event::PageTokenRejected(e) => {
                self.page_health
                    .entry((e.page.clone(), e.app.clone()))
                    .or_default()
                    .token_rejected = Some(e.clone());
            }
            Event::PageTokenAccepted(e) => {
                let facts = self
                    .page_health
                    .entry((e.page.clone(), e.app.clone()))
                    .or_default();
                facts.token_rejected = None;
                facts.token_accepted_at = Some(e.at);
            }
            Event::ContentErased(e) => {
                self.erasures
                    .entry(e.request.clone())
                    .or_default()
                    .push((e.thread.clone(), e.at));
            }
            Event::MessagingEventReceived(e) => {
                if let InboundEvent::Echo {
                    mid,
                    metadata: Some(m),
                    app_id: Some(sender),
                } = &e.event
                {
                    if let Some(id) = m
                        .strip_prefix(SEND_METADATA_PREFIX)
                        .and_then(|id| CommandId::parse(id).ok())
                    {
                        // Only the sending app's echo, delivered on that
                        // app's own endpoint, speaks for its send.
                        if self
                            .sends
                            .get(&id)
                            .is_some_and(|r| &r.app == sender && r.app == e.delivery.app)
                        {
                            self.echoed.insert(id, mid.clone());
                        }
                    }
                }
                self.remember_copy(&e.dedupe_key, &e.delivery);
            }
            Event::MessagingEventCopyReceived(e) => {
                self.remember_copy(&e.dedupe_key, &e.delivery);
            }
            Event::OneTimeTokenIssued(e) => {
                self.tokens.insert(e.token.clone(), e.thread.clone());
            }
            Event::PrivateReplySent(e) => {
                let key = (e.page.clone(), e.comment_id.clone());
                if self.replied_comments.insert(key.clone()) {
                    self.forget_after(PRIVATE_REPLY_RETENTION, Forget::Reply(Box::new(key)));
                }
            }
            Event::SendAccepted(e) => {
                self.remember_key(&e.send);
                self.sends.insert(
                    e.send.send_id.clone(),
                    SendRecord {
                        thread: e.thread.clone(),
                        app: e.send.app.clone(),
                        status: SendStatus::Pending,
                        thread_control: e.send.thread_control.clone(),
                        open: Some(OpenSend {
                            accepted_at: self.position,
                            send: e.send.clone(),
                            attempts: 0,
                            // An older log's acceptance may have been attempted.
                            answered: e.attempts_recorded,
                            retry_at: None,
                        }),
                    },
                );
                self.open_sends
                    .insert(self.position, e.send.send_id.clone());
            }
            Event::SendAttempted(e) => {
                if let Some(open) = self.sends.get_mut(&e.send_id).and_then(|r| r.open.as_mut()) {
                    open.attempts = open.attempts.max(e.attempt);
                    open.answered = false;
                    open.retry_at = None;
                }
            }
            Event::SendRetryScheduled(e) => {
                if let Some(open) = self.sends.get_mut(&e.send_id).and_then(|r| r.open.as_mut()) {
                    open.answered = true;
                    open.retry_at = Some(e.retry_at);
                }
            }
            Event::CommandRefused(e) => {
                // Only a refusal a retry may ask about (it has an
                // Idempotency-Key) is kept, and only for a day.
                if let domain::Command::SendMessage(send) = &e.command {
                    if send.idempotency_key.is_none() {
                        return;
                    }
                    self.remember_key(send);
                    self.forget_after(SETTLED_SEND_RETENTION, Forget::Send(send.send_id.clone()));
                    self.sends.insert(
                        send.send_id.clone(),
                        SendRecord {
                            thread: e.thread.clone(),
                            app: send.app.clone(),
                            thread_control: None,
                            open: None,
                            status: SendStatus::Refused {
                                rejection: e.rejection.clone(),
                            },
                        },
                    );
                }
            }
            Event::SendOutcomeRecorded(e) => {
                if let Some(record) = self.sends.get_mut(&e.send_id) {
                    if matches!(record.status, SendStatus::Sent { .. })
                        && matches!(e.outcome, SendOutcome::Unknown { .. })
                    {
                        // The echo settled it before the timeout was recorded.
                        return;
                    }
                    record.status = SendStatus::from_outcome(&e.outcome, e.thread.psid.as_str());
                    if let Some(open) = record.open.take() {
                        self.open_sends.remove(&open.accepted_at);
                    }
                    let keep = match e.outcome {
                        SendOutcome::Unknown { .. } => UNKNOWN_SEND_RETENTION,
                        _ => SETTLED_SEND_RETENTION,
                    };
                    self.forget_after(keep, Forget::Send(e.send_id.clone()));
                }
            }
            _ => {}
        }
    }

    fn remember_copy(&mut self, dedupe_key: &str, delivery: &domain::events::DeliveryCopy) {
        let d = digest(dedupe_key);
        let copies = self.seen.entry(d).or_default();
        let first = copies.is_empty();
        let mut grown = std::mem::take(copies).into_vec();
        grown.reserve_exact(1);
        grown.push((delivery.app.clone(), delivery.channel));
        *copies = grown.into_boxed_slice();
        if first {
            self.forget_after(DEDUPE_RETENTION, Forget::Seen(d));
        }
    }

    fn remember_key(&mut self, send: &SendMessage) {
        let Some(key) = &send.idempotency_key else {
            return;
        };
        let k = (send.app.clone(), key.clone());
        self.idempotency.insert(
            k.clone(),
            Idempotent {
                send_id: send.send_id.clone(),
                request_digest: send.request_digest.clone(),
            },
        );
        self.forget_after(IDEMPOTENCY_RETENTION, Forget::Key(Box::new(k)));
    }

    fn apply_thread(&mut self, event: &Event) {
        if let Some(thread) = event.thread() {
            let tracked = self.threads.entry(thread.clone()).or_insert_with(|| {
                Box::new(Tracked {
                    ledger: ThreadLedger::new(thread.clone()),
                    expiry: None,
                    confirmation: None,
                })
            });
            let ledger = &mut tracked.ledger;
            ledger.apply(event);
            let expiry = self
                .pages
                .get(&thread.page)
                .and_then(|p| domain::rules::control_expiry(ledger, p));
            // Threads an app holds are reconciled on the schedule (a legacy
            // secondary's control never lapses; a legacy primary holding a
            // thread is what Meta calls idle). An unknown owner is due at
            // once: the reconciliation its contradiction asked for may have
            // been lost (a crash, a full queue).
            let legacy_primary = self.pages.get(&thread.page).and_then(|p| match &p.mode {
                domain::RoutingMode::HandoverV1 { primary, .. } => Some(primary),
                _ => None,
            });
            let confirmed = match &ledger.control {
                domain::Control::Unknown { .. } => Some(Timestamp::from_millis(0)),
                domain::Control::Active { owner, .. } if Some(owner) != legacy_primary => Some(
                    ledger
                        .confirmed_at
                        .or(ledger.control_changed_at)
                        .unwrap_or(Timestamp::from_millis(0)),
                ),
                _ => None,
            };
            // Filed under the ledger's own key (the event's copy of the
            // psid would be kept alive otherwise).
            let key = &tracked.ledger.key;
            self.expiries.set(key, &mut tracked.expiry, expiry);
            self.confirmations
                .set(key, &mut tracked.confirmation, confirmed);
        } else {
            for page in self.pages.values_mut() {
                page.apply(event);
            }
        }
    }
}

/// A thread's ledger, and the times the thread is filed under in the
/// timers' indexes (kept here rather than in a second map per index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked {
    ledger: ThreadLedger,
    expiry: Option<Timestamp>,
    confirmation: Option<Timestamp>,
}

/// Threads ordered by a time, each at most once: the soonest first.
#[derive(Debug, Clone, Default, PartialEq)]
struct TimeIndex {
    order: BTreeSet<(Timestamp, ThreadKey)>,
}

impl TimeIndex {
    /// Files `thread`, now filed under `filed`, under `at` instead (or takes
    /// it out with `None`), and notes it in `filed`.
    fn set(&mut self, thread: &ThreadKey, filed: &mut Option<Timestamp>, at: Option<Timestamp>) {
        if *filed == at {
            return;
        }
        if let Some(b) = filed.take() {
            self.order.remove(&(b, thread.clone()));
        }
        if let Some(a) = at {
            self.order.insert((a, thread.clone()));
        }
        *filed = at;
    }

    /// At most `limit` threads filed at or before `now` that `keep` keeps,
    /// soonest first.
    fn due(
        &self,
        now: Timestamp,
        limit: usize,
        keep: impl Fn(&ThreadKey) -> bool,
    ) -> Vec<ThreadKey> {
        self.order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, key)| keep(key))
            .take(limit)
            .map(|(_, key)| key.clone())
            .collect()
    }

    fn first(&self) -> Option<Timestamp> {
        self.order.first().map(|(at, _)| *at)
    }
}

/// Records the follower folds under one hold of the write lock: planners
/// (every webhook and command) read between two slices, so none waits for
/// a whole read batch to be folded.
const FOLD_SLICE: usize = 64;

/// Shared projections plus the follower's progress.
#[derive(Debug)]
pub struct Projections {
    state: RwLock<State>,
    position: watch::Sender<u64>,
    /// Events their recorder decided and appended, by log position: the
    /// fold takes them as they are instead of decoding (and opening) the
    /// stored payload again. Entries the fold has passed are dropped.
    decided: Mutex<BTreeMap<u64, Event>>,
}

impl Projections {
    pub fn new(state: State) -> Arc<Self> {
        let position = state.position;
        Arc::new(Self {
            state: RwLock::new(state),
            position: watch::Sender::new(position),
            decided: Mutex::new(BTreeMap::new()),
        })
    }

    /// Hands the fold the events a recorder just appended, at their
    /// positions, so it need not decode (and open) them again. Only what
    /// the store wrote at those positions may be handed over (never a
    /// duplicate's original), and with the content the stored record opens
    /// to: the fold of a handed event must equal the fold of the stored one.
    /// Inbound items are not kept: their stored form is sealed, with the
    /// content the fold never reads taken out, and decodes for less than a
    /// copy of the decided event costs.
    pub fn hand_over<'a>(&self, events: impl IntoIterator<Item = (u64, &'a Event)>) {
        let folded = self.position();
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        decided.extend(
            events
                .into_iter()
                .filter(|(p, e)| *p > folded && !is_inbound(e.type_name()))
                .map(|(p, e)| (p, e.clone())),
        );
    }

    /// The handed-over events of `records`, and forgets every one up to the
    /// last of them (including any handed over too late to be used).
    fn take_decided(&self, records: &[Record]) -> BTreeMap<u64, Event> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return BTreeMap::new();
        };
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        let later = decided.split_off(&(last.position + 1));
        let mut taken = std::mem::replace(&mut *decided, later);
        taken.split_off(&first.position)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the follower has folded `position`.
    pub async fn wait_for(&self, position: u64) {
        let mut rx = self.position.subscribe();
        // `wait_for` returns at once when the value already satisfies it; an
        // error means the follower is gone, and then nothing will come.
        let _ = rx.wait_for(|p| *p >= position).await;
    }

    /// Follows the folded position (it changes after every fold).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    /// Waits until `ready` answers for the state, checking after every fold.
    /// `None` when the follower has stopped (nothing will change any more).
    pub async fn wait_until<T>(&self, mut ready: impl FnMut(&State) -> Option<T>) -> Option<T> {
        let mut rx = self.position.subscribe();
        loop {
            if let Some(value) = ready(&self.read()) {
                return Some(value);
            }
            if rx.changed().await.is_err() {
                return ready(&self.read());
            }
        }
    }

    /// Folds every durable record from the current position to the head,
    /// 64 records (`FOLD_SLICE`) per hold of the write lock; those a recorder
    /// handed over are not decoded at all.
    pub async fn catch_up<S: EventStore>(&self, store: &S) -> Result<(), StorageError> {
        self.catch_up_to(store, u64::MAX).await
    }

    /// [`Self::catch_up`], but no further than position `until`. Yields to
    /// the runtime after each read of the log, so that a task selecting on
    /// it (a shutdown) is heard between reads, which never wait themselves
    /// on the embedded store.
    pub async fn catch_up_to<S: EventStore>(
        &self,
        store: &S,
        until: u64,
    ) -> Result<(), StorageError> {
        loop {
            let from = self.position() + 1;
            if from > until {
                return Ok(());
            }
            let limit = usize::try_from(until - from + 1).map_or(1024, |n| n.min(1024));
            let records = store.read_all(from, limit).await?;
            if records.is_empty() {
                return Ok(());
            }
            for slice in records.chunks(FOLD_SLICE) {
                let mut decided = self.take_decided(slice);
                let last = {
                    let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                    for r in slice {
                        let event = decided
                            .remove(&r.position)
                            .or_else(|| decode_for_fold(r, Some(store.vault())));
                        state.apply_decoded(r, event.as_ref());
                    }
                    state.position
                };
                self.position.send_replace(last);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Follows the log until `shutdown`: wakes on each durable group, folds it.
    pub async fn follow<S: EventStore>(
        self: Arc<Self>,
        store: Arc<S>,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let mut head = store.subscribe();
        loop {
            if let Err(e) = self.catch_up(store.as_ref()).await {
                tracing::error!(error = %e, "projection follower cannot read the log; retrying on the next append");
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = shutdown.recv() => {
                    // Fold what the other tasks wrote while draining.
                    let _ = self.catch_up(store.as_ref()).await;
                    return;
                }
            }
        }
    }
}

/// What a projection snapshot stores besides the three big collections
/// (threads, the dedupe index, the retention queue, which [`codec`]
/// encodes compactly): JSON, its maps as lists of pairs.
#[derive(Debug, Serialize, Deserialize)]
struct Rest<'a> {
    pages: Vec<Cow<'a, Page>>,
    /// Threads whose ledger holds the person's content (pending requests'
    /// metadata, tokens' payloads), left out of the file.
    reopen_threads: Vec<ThreadKey>,
    tokens: Pairs<'a, str, ThreadKey>,
    sends: Pairs<'a, CommandId, SendRecord>,
    idempotency: Pairs<'a, (AppId, String), Idempotent>,
    echoed: Pairs<'a, CommandId, str>,
    replied_comments: Vec<Cow<'a, (PageId, String)>>,
    erasures: Pairs<'a, str, [(ThreadKey, Timestamp)]>,
    page_health: Pairs<'a, (PageId, AppId), AppPageFacts>,
    open_sends: Vec<(u64, Cow<'a, CommandId>)>,
    forget_seq: u64,
    recorded_at: Timestamp,
    position: u64,
    undecodable: u64,
}

/// Pairs of a map in a snapshot.
type Pairs<'a, K, V> = Vec<(Cow<'a, K>, Cow<'a, V>)>;

/// A map's entries, lent to a snapshot.
fn lend<'a, K, V>(entries: impl Iterator<Item = (&'a K, &'a V)>) -> Pairs<'a, K, V>
where
    K: ToOwned + ?Sized + 'a,
    V: ToOwned + ?Sized + 'a,
{
    entries
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
        .collect()
}

/// A snapshot's pairs, owned again in a map.
fn own<K, V, M>(pairs: Pairs<'_, K, V>) -> M
where
    K: ToOwned + ?Sized,
    V: ToOwned + ?Sized,
    M: FromIterator<(K::Owned, V::Owned)>,
{
    pairs
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// One app's copy of an item, in the dedupe index.
type ItemCopy = (AppId, Channel);

/// A [`State`]'s facts read back from a projection snapshot
/// ([`crate::snapshot`]), still without the content the fold keeps opened
/// (an open send's message, a pending request's metadata, a token's opt-in
/// payload), which [`Facts::restore`] reads again from the log, through the
/// vault.
#[derive(Debug)]
pub struct Facts {
    rest: Rest<'static>,
    threads: ShardedMap<ThreadKey, Box<Tracked>>,
    expiries: TimeIndex,
    confirmations: TimeIndex,
    seen: ShardedMap<u64, Box<[ItemCopy]>>,
    forget: BTreeMap<(Timestamp, u64), Forget>,
}

/// Why a snapshot's facts could not be made whole again from the log.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the log cannot be read")]
    Unreadable(#[from] StorageError),
    #[error("send {0}'s acceptance is not at its position in the log")]
    SendNotFound(String),
    #[error("thread {0}'s history in the log folds to another ledger")]
    ThreadDiffers(String),
}

impl State {
    /// This state's facts, encoded for a snapshot (see `codec`): the
    /// rest as JSON, then the threads, the dedupe index and the retention
    /// queue compactly. Open sends' messages and pending requests'
    /// metadata are left out.
    pub fn encode_facts(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut reopen_threads = Vec::new();
        let mut threads = codec::Out::default();
        threads.u64(self.threads.len() as u64);
        for t in self.threads.values() {
            if codec::put_tracked(&mut threads, t)? {
                reopen_threads.push(t.ledger.key.clone());
            }
        }
        let mut seen = codec::Out::default();
        seen.u64(self.seen.len() as u64);
        for (digest, copies) in self.seen.iter() {
            codec::put_copies(&mut seen, *digest, copies);
        }
        let mut forget = codec::Out::default();
        forget.u64(self.forget.len() as u64);
        for (key, what) in &self.forget {
            codec::put_forget(&mut forget, *key, what);
        }
        let sends = self
            .sends
            .iter()
            .map(|(id, record)| {
                let record = match &record.open {
                    Some(open) if !open.send.payload.is_null() => {
                        let mut bare = record.clone();
                        if let Some(open) = bare.open.as_mut() {
                            open.send.payload = serde_json::Value::Null;
                        }
                        Cow::Owned(bare)
                    }
                    _ => Cow::Borrowed(record),
                };
                (Cow::Borrowed(id), record)
            })
            .collect();
        let rest = Rest {
            pages: self.pages.values().map(Cow::Borrowed).collect(),
            reopen_threads,
            tokens: lend(self.tokens.iter().map(|(k, v)| (k.as_str(), v))),
            sends,
            idempotency: lend(self.idempotency.iter()),
            echoed: lend(self.echoed.iter().map(|(k, v)| (k, v.as_str()))),
            replied_comments: self.replied_comments.iter().map(Cow::Borrowed).collect(),
            erasures: lend(
                self.erasures
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
            ),
            page_health: lend(self.page_health.iter()),
            open_sends: self
                .open_sends
                .iter()
                .map(|(k, v)| (*k, Cow::Borrowed(v)))
                .collect(),
            forget_seq: self.forget_seq,
            recorded_at: self.recorded_at,
            position: self.position,
            undecodable: self.undecodable,
        };
        let rest = serde_json::to_vec(&rest)?;
        let mut body = codec::Out::default();
        for section in [rest, threads.0, seen.0, forget.0] {
            body.bytes(&section);
        }
        Ok(body.0)
    }
}

impl Facts {
    /// Decodes a snapshot's body ([`State::encode_facts`]); the threads on
    /// a thread of their own while this one reads the rest.
    pub fn decode(body: &[u8]) -> Result<Facts, String> {
        let mut input = codec::In(body);
        let sections = (input.bytes(), input.bytes(), input.bytes(), input.bytes());
        let (Some(rest), Some(threads), Some(seen), Some(forget)) = sections else {
            return Err("a section is cut short".to_owned());
        };
        if !input.0.is_empty() {
            return Err("bytes after the last section".to_owned());
        }
        std::thread::scope(|scope| {
            let threads = scope.spawn(|| codec::get_threads(threads));
            let rest: Rest<'static> = serde_json::from_slice(rest).map_err(|e| e.to_string())?;
            let seen = codec::get_seen(seen).ok_or("the dedupe index cannot be decoded")?;
            let forget =
                codec::get_forget(forget).ok_or("the retention queue cannot be decoded")?;
            let (threads, expiries, confirmations) = threads
                .join()
                .map_err(|_| "the threads' decoder panicked".to_owned())?
                .ok_or("the threads cannot be decoded")?;
            Ok(Facts {
                rest,
                threads,
                expiries,
                confirmations,
                seen,
                forget,
            })
        })
    }

    /// The last log position the facts were folded to.
    pub fn position(&self) -> u64 {
        self.rest.position
    }

    /// How many threads the facts hold.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// The state the facts were taken from, made whole from `store`: each
    /// open send's message is read again from its acceptance, and each
    /// thread whose ledger held content (metadata, opt-in payloads) is
    /// folded again from its stream (up to the facts' position), both
    /// opened through the vault as the fold opens them, so content erased
    /// since the snapshot stays erased. A thread that folds to another ledger, or a send
    /// missing from its position, fails the restore.
    pub async fn restore<S: EventStore>(self, store: &S) -> Result<State, RestoreError> {
        let Facts {
            rest,
            threads,
            expiries,
            confirmations,
            seen,
            forget,
        } = self;
        let mut state = State {
            pages: rest
                .pages
                .into_iter()
                .map(|p| {
                    let p = p.into_owned();
                    (p.id.clone(), p)
                })
                .collect(),
            threads,
            tokens: own(rest.tokens),
            sends: own(rest.sends),
            idempotency: own(rest.idempotency),
            echoed: own(rest.echoed),
            replied_comments: rest
                .replied_comments
                .into_iter()
                .map(Cow::into_owned)
                .collect(),
            erasures: own(rest.erasures),
            page_health: own(rest.page_health),
            open_sends: rest
                .open_sends
                .into_iter()
                .map(|(k, v)| (k, v.into_owned()))
                .collect(),
            expiries,
            confirmations,
            seen,
            forget,
            forget_seq: rest.forget_seq,
            recorded_at: rest.recorded_at,
            position: rest.position,
            undecodable: rest.undecodable,
        };
        let vault = Some(store.vault());
        for key in rest.reopen_threads {
            let folded = fold_stream(store, &key, state.position).await?;
            let tracked = state
                .threads
                .get_mut(&key)
                .ok_or_else(|| RestoreError::ThreadDiffers(key.to_string()))?;
            let mut bare = folded.clone();
            bare.forget_content();
            if bare != tracked.ledger {
                return Err(RestoreError::ThreadDiffers(key.to_string()));
            }
            tracked.ledger = folded;
        }
        for (id, record) in &mut state.sends {
            let Some(open) = record.open.as_mut() else {
                continue;
            };
            let accepted = store.read_all(open.accepted_at, 1).await?;
            let send = accepted
                .first()
                .filter(|r| r.position == open.accepted_at)
                .and_then(|r| decode_for_fold(r, vault))
                .and_then(|event| match event {
                    Event::SendAccepted(e) if e.send.send_id == *id => Some(e.send),
                    _ => None,
                })
                .ok_or_else(|| RestoreError::SendNotFound(id.to_string()))?;
            open.send = send;
        }
        Ok(state)
    }
}

/// A thread's ledger folded from its own stream, up to `position`.
async fn fold_stream<S: EventStore>(
    store: &S,
    key: &ThreadKey,
    position: u64,
) -> Result<ThreadLedger, StorageError> {
    let stream = key.stream_name();
    let mut ledger = ThreadLedger::new(key.clone());
    let mut from = 1;
    loop {
        let records = store.read_stream(&stream, from, 1024).await?;
        for r in &records {
            if r.position > position {
                return Ok(ledger);
            }
            if let Some(event) = decode_for_fold(r, Some(store.vault())) {
                ledger.apply(&event);
            }
            from = r.stream_version + 1;
        }
        if records.len() < 1024 {
            return Ok(ledger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::events::{Channel, DeliveryCopy, MessagingEventCopyReceived};
    use domain::{MessagingType, Recipient, SendContent};

    fn record(position: u64, at: Timestamp, event: &Event) -> Record {
        let enc = event.encode();
        Record {
            position,
            stream: event.stream_name(),
            stream_version: position,
            event_id: uuid::Uuid::nil(),
            recorded_at_ms: at.millis() as u64,
            type_name: enc.type_name.to_owned(),
            schema_version: enc.schema_version,
            causation_id: None,
            correlation_id: None,
            idempotency_key: None,
            payload: enc.payload,
            prev_hash: event_log::ChainHash::ZERO,
            hash: event_log::ChainHash::ZERO,
        }
    }

    fn refused_with_key(n: u64, key: &str) -> Event {
        let thread = ThreadKey::new(
            PageId::parse("5550001").unwrap(),
            domain::Psid::parse(format!("u{n}")).unwrap(),
        );
        let send = SendMessage {
            send_id: CommandId::parse(format!("s{n}")).unwrap(),
            app: AppId::parse("1001").unwrap(),
            recipient: Recipient::Psid(thread.psid.clone()),
            messaging_type: Some(MessagingType::Response),
            tag: None,
            content: SendContent::Message { metadata: None },
            thread_control: None,
            payload: serde_json::Value::Null,
            idempotency_key: Some(key.to_owned()),
            graph_version: None,
            request_digest: None,
        };
        domain::events::CommandRefused {
            thread,
            at: Timestamp::from_millis(0),
            command: domain::Command::SendMessage(send),
            rejection: Rejection::new(domain::RejectionKind::OutsideWindow, "closed"),
        }
        .into()
    }

    /// The fold takes a recorder's handed-over events instead of decoding
    /// the stored ones, and ends in the state a replay from the log gives;
    /// what it has passed is dropped, and a hand-over that comes too late
    /// is not kept.
    #[test]
    fn handed_over_events_fold_as_the_stored_records_do() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = event_log::MemoryStore::new();
            let events: Vec<Event> = (1..=200)
                .map(|n| refused_with_key(n, &format!("k{n}")))
                .collect();
            let appended = store
                .append(events.iter().map(crate::record::encode).collect())
                .await
                .unwrap();
            let projections = Projections::new(State::new([]));
            // Every other event handed over; the rest are decoded.
            projections.hand_over(
                appended
                    .iter()
                    .zip(&events)
                    .step_by(2)
                    .map(|(a, e)| (a.position, e)),
            );
            projections.catch_up(&store).await.unwrap();
            assert!(projections.decided.lock().unwrap().is_empty());
            let mut replay = State::new([]);
            for r in store.read_all(1, usize::MAX).await.unwrap() {
                replay.apply_record(&r);
            }
            assert_eq!(*projections.read(), replay);
            assert_eq!(projections.read().index_sizes(), (0, 200, 200));
            // Too late: the fold is past it.
            projections.hand_over([(3, &events[2])]);
            assert!(projections.decided.lock().unwrap().is_empty());
        });
    }

    #[test]
    fn the_indexes_forget_on_their_stated_horizons_and_replay_forgets_the_same() {
        let t0 = Timestamp::from_millis(1_793_523_600_000);
        let copy = Event::from(MessagingEventCopyReceived {
            thread: ThreadKey::new(
                PageId::parse("5550001").unwrap(),
                domain::Psid::parse("u1").unwrap(),
            ),
            at: t0,
            dedupe_key: "mid.1".into(),
            delivery: DeliveryCopy {
                app: AppId::parse("1002").unwrap(),
                channel: Channel::Standby,
            },
            raw: serde_json::Value::Null,
        });
        let history = [
            record(1, t0, &copy),
            record(2, t0, &refused_with_key(2, "k2")),
            // A day and a minute later: the key and the refused send are forgotten.
            record(
                3,
                t0.plus(Span::hours(24)).plus(Span::seconds(60)),
                &refused_with_key(3, "k3"),
            ),
            // 36 h and a minute: the dedupe entry too.
            record(
                4,
                t0.plus(Span::hours(36)).plus(Span::seconds(60)),
                &refused_with_key(4, "k4"),
            ),
        ];
        let mut state = State::new([]);
        state.apply_record(&history[0]);
        state.apply_record(&history[1]);
        assert!(state.copies("mid.1").is_some());
        assert_eq!(state.index_sizes(), (1, 1, 1));
        state.apply_record(&history[2]);
        assert!(!state
            .idempotency
            .contains_key(&(AppId::parse("1001").unwrap(), "k2".into())));
        assert!(!state.sends.contains_key(&CommandId::parse("s2").unwrap()));
        assert!(state.copies("mid.1").is_some(), "36 h for dedupe");
        state.apply_record(&history[3]);
        assert!(state.copies("mid.1").is_none());
        // A refusal without a key leaves nothing at all.
        let mut no_key = refused_with_key(5, "x");
        if let Event::CommandRefused(r) = &mut no_key {
            if let domain::Command::SendMessage(s) = &mut r.command {
                s.idempotency_key = None;
            }
        }
        // ...and, recorded in the refusals stream (a thread with no state),
        // no ledger either.
        let mut on_refusals = record(5, t0.plus(Span::hours(37)), &no_key);
        on_refusals.stream = format!("{REFUSALS_STREAM_PREFIX}5550001");
        let (before, threads) = (state.index_sizes(), state.threads.len());
        state.apply_record(&on_refusals);
        assert_eq!(state.index_sizes(), before);
        assert_eq!(state.threads.len(), threads);
        // Replaying the same records forgets the same things.
        let mut replay = State::new([]);
        for r in history.iter().chain([&on_refusals]) {
            replay.apply_record(r);
        }
        assert_eq!(replay.index_sizes(), state.index_sizes());
    }
}
