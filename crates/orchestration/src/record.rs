//! The one recorder: decide against a snapshot of the projections, append
//! what was decided with the stream versions it saw, retry a bounded number
//! of times when another writer got there first, and return only once the
//! projections have folded the new records (read your writes). Every writer
//! (ingress, the Graph-compatible API, the outbox, timers, reconciliation,
//! dispatch's dead letters) goes through here, and so through [`encode`],
//! the one event → record encoding.
//!
//! It decides nothing itself and calls nobody outside the log: effects are
//! carried out by the caller after `record` returns (the decision is durable).

use std::time::{Duration, Instant};

use domain::ids::Timestamp;
use domain::{DecodeError, Event, Page, ThreadKey, ThreadLedger};
use event_log::{
    AppendError, EventStore, ExpectedVersion, KeyId, KeyVault, NewRecord, Record, Sealed,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::clock::Clock;

use crate::metrics::Metrics;
use crate::projections::{Projections, State};

/// How often a plan is made again after losing a race on a stream.
pub const MAX_CONFLICTS: usize = 32;
/// How often an answer that cannot be asked for again (Meta's reply to a call
/// that already left) is retried on a busy log before giving up.
const MAX_BUSY_RETRIES: usize = 8;

/// Why a decision could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("page {0} is not configured")]
    UnknownPage(String),
    #[error("the event log is busy")]
    Busy,
    #[error("the event log cannot accept writes")]
    Unavailable(#[source] AppendError),
    #[error("the event log cannot be read")]
    Unreadable(#[source] event_log::StorageError),
}

/// A JSON object written out with its `raw` member as exactly `raw_text`
/// (first), when given; JSON text is JSON, so reading it back gives the same
/// value, and [`Opened::raw_text`] the same bytes.
fn with_raw_text(mut object: Value, raw_text: Option<&str>) -> Vec<u8> {
    let (Some(text), Some(map)) = (raw_text, object.as_object_mut()) else {
        return serde_json::to_vec(&object).expect("JSON values serialise");
    };
    if map.remove("raw").is_none() {
        return serde_json::to_vec(&object).expect("JSON values serialise");
    }
    let rest = serde_json::to_vec(&object).expect("JSON values serialise");
    let mut out = Vec::with_capacity(rest.len() + text.len() + 8);
    out.extend_from_slice(b"{\"raw\":");
    out.extend_from_slice(text.as_bytes());
    if rest.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(&rest[1..]);
    out
}

/// The `raw` member of a JSON object, as the text it was written with.
fn raw_member(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        raw: Option<&'a serde_json::value::RawValue>,
    }
    let text = std::str::from_utf8(json).ok()?;
    let raw: Raw<'_> = serde_json::from_str(text).ok()?;
    raw.raw.map(|r| r.get().to_owned())
}

/// The one encoding of an event as a record of the log.
pub fn encode(event: &Event) -> NewRecord {
    let enc = event.encode();
    NewRecord::new(
        event.stream_name(),
        enc.type_name,
        enc.schema_version,
        enc.payload,
    )
}

/// One record to append, with the event it encodes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub event: Event,
    pub record: NewRecord,
    /// The people its content is about; emptied once the content is sealed.
    subjects: Vec<ThreadKey>,
    /// Its content is left out, not sealed: it predates an erasure.
    forget_content: bool,
    /// Its `raw` item exactly as Meta's bytes had it, kept as its content's
    /// `raw` (the delivery's body refers to it instead of copying it).
    raw_text: Option<String>,
}

impl Planned {
    pub fn new(event: Event) -> Self {
        let record = encode(&event);
        let subjects = domain::privacy::subjects(&event);
        Self {
            event,
            record,
            subjects,
            forget_content: false,
            raw_text: None,
        }
    }

    /// Whether its content will be left out (see [`Planned::without_content`]).
    pub fn forgets_content(&self) -> bool {
        self.forget_content
    }

    /// Keeps its `raw` item as exactly this JSON text (the same value as
    /// the event's `raw`, as Meta's bytes wrote it).
    pub fn keep_raw_text(&mut self, text: String) {
        self.raw_text = Some(text);
    }

    /// Records it without its content (evidence Meta timed before the
    /// person's content was erased, arriving late).
    pub fn without_content(mut self) -> Self {
        self.forget_content = true;
        self
    }

    /// Its content is about these people (a raw delivery names nobody by
    /// itself; its recorder knows whose items it carries).
    pub fn about(mut self, people: Vec<ThreadKey>) -> Self {
        self.subjects = people;
        self
    }

    /// Seals the record's content under its people's keys for the day of
    /// `now`, leaving the facts clear; see `docs/privacy.md`. Content about
    /// nobody Baton can name stays clear.
    pub fn seal(&mut self, vault: &KeyVault, now: Timestamp) {
        let raw_text = self.raw_text.take();
        if self.subjects.is_empty() && !self.forget_content {
            self.keep_clear(raw_text);
            return;
        }
        let people = std::mem::take(&mut self.subjects);
        let type_name = self.record.type_name.as_str();
        let Ok(mut facts) = serde_json::from_slice::<Value>(&self.record.payload) else {
            return;
        };
        let Some(content) = domain::privacy::take_content(type_name, &mut facts) else {
            return;
        };
        if std::mem::take(&mut self.forget_content) {
            self.record.payload = serde_json::to_vec(&facts).expect("JSON values serialise");
            return;
        }
        let mut subjects: Vec<String> = people.iter().map(domain::privacy::subject).collect();
        subjects.sort();
        subjects.dedup();
        let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
        let plaintext = with_raw_text(content, raw_text.as_deref());
        let Ok(sealed) = vault.seal(&refs, day_of(now), &plaintext) else {
            self.keep_clear(raw_text);
            return;
        };
        if let Value::Object(map) = &mut facts {
            map.insert(SEALED.into(), sealed_json(&sealed));
        }
        self.record.payload = serde_json::to_vec(&facts).expect("JSON values serialise");
    }

    /// Leaves the content clear, with the exact `raw` text if there is one.
    fn keep_clear(&mut self, raw_text: Option<String>) {
        if raw_text.is_none() {
            return;
        }
        if let Ok(facts) = serde_json::from_slice::<Value>(&self.record.payload) {
            self.record.payload = with_raw_text(facts, raw_text.as_deref());
        }
    }

    /// Appended only if the stream is still at this version.
    pub fn expect(mut self, expected: ExpectedVersion) -> Self {
        self.record = self.record.expect(expected);
        self
    }

    /// Stored once however often it is appended.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.record = self.record.idempotency_key(key.into());
        self
    }

    /// Tied to the delivery (or request) that caused it.
    pub fn correlated_with(mut self, id: Uuid) -> Self {
        self.record = self.record.correlated_with(id);
        self
    }
}

/// The events decided on one thread, the first pinned to the version the
/// decision saw: a concurrent writer makes the batch conflict and re-plan.
/// A lone refusal on a thread with no state is recorded in its page's
/// refusals stream instead: refusing costs no thread state.
pub fn on_thread(ledger_version: u64, events: Vec<Event>) -> Vec<Planned> {
    if let (0, [Event::CommandRefused(r)]) = (ledger_version, events.as_slice()) {
        let stream = format!(
            "{}{}",
            crate::projections::REFUSALS_STREAM_PREFIX,
            r.thread.page
        );
        let event = events[0].clone();
        let enc = event.encode();
        let record = NewRecord::new(stream, enc.type_name, enc.schema_version, enc.payload);
        let subjects = domain::privacy::subjects(&event);
        return vec![Planned {
            event,
            record,
            subjects,
            forget_content: false,
            raw_text: None,
        }];
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let expected = match (i, ledger_version) {
                (0, 0) => ExpectedVersion::NoStream,
                (0, v) => ExpectedVersion::Exact(v),
                _ => ExpectedVersion::Any,
            };
            Planned::new(e).expect(expected)
        })
        .collect()
}

/// What happens when the log answers busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Give up at once (the caller can ask again: a webhook Meta retries, an
    /// app's request).
    Fail,
    /// Try again briefly: the facts cannot be had again (Meta's answer).
    Retry,
}

/// Appends records with the busy policy: the one append path of Baton, used
/// by [`Recorder::record`] for decisions and directly for facts that need no
/// decision against the projections (dispatch's dead letters and redrive
/// requests). A conflict or any other failure is returned as it is.
pub async fn append<S: EventStore>(
    store: &S,
    planned: Vec<Planned>,
    on_busy: OnBusy,
) -> Result<Vec<event_log::Appended>, AppendError> {
    let now = crate::clock::SystemClock.now();
    let records: Vec<NewRecord> = planned
        .into_iter()
        .map(|mut p| {
            p.seal(store.vault(), now);
            p.record
        })
        .collect();
    let mut busy = 0;
    let mut delay = Duration::from_millis(10);
    loop {
        match store.append(records.clone()).await {
            Err(AppendError::Busy) if on_busy == OnBusy::Retry && busy < MAX_BUSY_RETRIES => {
                busy += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// The recorder over one store and its projections.
#[derive(Debug)]
pub struct Recorder<S> {
    store: std::sync::Arc<S>,
    projections: std::sync::Arc<Projections>,
    metrics: std::sync::Arc<Metrics>,
    /// Baton's clock: content keys are made per day of it.
    clock: std::sync::Arc<dyn Clock>,
}

/// What was recorded: the plan's value, the events and the records' positions.
#[derive(Debug)]
pub struct Recorded<T> {
    pub value: T,
    pub events: Vec<Event>,
    /// Whether each record was already stored under its idempotency key.
    pub duplicates: Vec<bool>,
}

impl<S: EventStore> Recorder<S> {
    pub fn new(
        store: std::sync::Arc<S>,
        projections: std::sync::Arc<Projections>,
        metrics: std::sync::Arc<Metrics>,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            projections,
            metrics,
            clock,
        }
    }

    /// Plans against the projections now and appends the plan; re-plans on a
    /// conflict (at most [`MAX_CONFLICTS`] times). An empty plan appends
    /// nothing.
    pub async fn record<T>(
        &self,
        on_busy: OnBusy,
        mut plan: impl FnMut(&State) -> Result<(Vec<Planned>, T), RecordError>,
    ) -> Result<Recorded<T>, RecordError> {
        let mut conflicts = 0;
        loop {
            let (mut planned, value) = plan(&self.projections.read())?;
            if planned.is_empty() {
                return Ok(Recorded {
                    value,
                    events: Vec::new(),
                    duplicates: Vec::new(),
                });
            }
            let events: Vec<Event> = planned.iter().map(|p| p.event.clone()).collect();
            let now = self.clock.now();
            for p in &mut planned {
                p.seal(self.store.vault(), now);
            }
            let started = Instant::now();
            self.metrics.append_started();
            let result = append(self.store.as_ref(), planned, on_busy).await;
            self.metrics
                .append_finished(started.elapsed(), events.len());
            match result {
                Ok(appended) => {
                    let last = appended.iter().map(|a| a.position).max().unwrap_or(0);
                    // The fold takes these as decided; a duplicate's position
                    // holds its original, which the fold decodes.
                    self.projections.hand_over(
                        appended
                            .iter()
                            .zip(&events)
                            .filter(|(a, _)| !a.duplicate)
                            .map(|(a, e)| (a.position, e)),
                    );
                    self.projections.wait_for(last).await;
                    return Ok(Recorded {
                        value,
                        events,
                        duplicates: appended.iter().map(|a| a.duplicate).collect(),
                    });
                }
                Err(AppendError::Conflict { stream, .. }) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::debug!(%stream, conflicts, "the stream moved under this decision; deciding again");
                    let head = self.store.head().await.map_err(RecordError::Unreadable)?;
                    self.projections.wait_for(head.position).await;
                }
                Err(AppendError::Busy) | Err(AppendError::Conflict { .. }) => {
                    return Err(RecordError::Busy)
                }
                Err(e) => return Err(RecordError::Unavailable(e)),
            }
        }
    }

    /// [`Recorder::record`] for a decision on one thread: `decide` sees the
    /// thread's ledger (a fresh one if it has none) and its page.
    pub async fn record_on<T>(
        &self,
        thread: &ThreadKey,
        on_busy: OnBusy,
        mut decide: impl FnMut(&State, &ThreadLedger, &Page) -> (Vec<Event>, T),
    ) -> Result<Recorded<T>, RecordError> {
        // The log is folded up to its head first, so a decision is never
        // taken on a view older than what was recorded before it was asked:
        // a webhook this node acknowledged a moment ago (the acknowledgement
        // does not wait for the fold), or one another node took on a shared
        // log. Without it a pass right after Meta's own hand-back was refused
        // on the ledger from before it (`model::model_handover_v1`, seed 48,
        // under a loaded machine).
        let head = self.store.head().await.map_err(RecordError::Unreadable)?;
        self.projections.wait_for(head.position).await;
        self.record(on_busy, |snapshot| {
            let page = snapshot
                .pages
                .get(&thread.page)
                .ok_or_else(|| RecordError::UnknownPage(thread.page.to_string()))?;
            let ledger = snapshot.ledger(thread);
            let (events, value) = decide(snapshot, &ledger, page);
            Ok((on_thread(ledger.version, events), value))
        })
        .await
    }
}

/// The field of a payload that holds its sealed content.
const SEALED: &str = "sealed";

/// Days since the Unix epoch (UTC): content keys are made per day, so
/// retention can destroy whole days.
pub fn day_of(t: Timestamp) -> u32 {
    u32::try_from(t.millis().max(0) / 86_400_000).unwrap_or(u32::MAX)
}

/// The first instant of a day.
pub fn start_of_day(day: u32) -> Timestamp {
    Timestamp::from_millis(i64::from(day) * 86_400_000)
}

fn sealed_json(sealed: &Sealed) -> Value {
    use base64::Engine as _;
    json!({
        "keys": sealed.key_ids.iter().map(KeyId::to_hex).collect::<Vec<_>>(),
        "nonce": hex::encode(sealed.nonce),
        "data": base64::engine::general_purpose::STANDARD.encode(&sealed.ciphertext),
    })
}

fn sealed_from_json(value: &Value) -> Option<Sealed> {
    use base64::Engine as _;
    let key_ids = value
        .get("keys")?
        .as_array()?
        .iter()
        .map(|k| KeyId::from_hex(k.as_str()?))
        .collect::<Option<Vec<_>>>()?;
    let nonce = hex::decode(value.get("nonce")?.as_str()?)
        .ok()?
        .try_into()
        .ok()?;
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(value.get("data")?.as_str()?)
        .ok()?;
    Some(Sealed {
        key_ids,
        nonce,
        ciphertext,
    })
}

/// What became of a record's personal content when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The record carries none, or carries it clear (written before
    /// content was sealed, or about nobody Baton could name).
    Clear,
    /// Sealed, and opened with its keys.
    Opened,
    /// Sealed, and a key is gone: the content was erased.
    Erased,
    /// Sealed, but the sealed bytes do not authenticate.
    Damaged,
    /// Sealed and left sealed: the reader did not ask for it.
    Sealed,
}

impl Content {
    /// Whether the content was there once and cannot be read now.
    pub fn is_gone(self) -> bool {
        matches!(self, Content::Erased | Content::Damaged)
    }
}

/// A record read back with its content.
#[derive(Debug, Clone)]
pub struct Opened {
    pub event: Event,
    pub content: Content,
    /// The keys its sealed content needs (empty when it has none).
    pub keys: Vec<KeyId>,
    /// Its `raw` item (of an item fact) as the JSON text the record holds:
    /// Meta's bytes, where the delivery's body refers to it. `None` when it
    /// has none or it could not be read.
    pub raw_text: Option<String>,
}

/// Reads a record back as an event with its content: sealed content is
/// opened with `vault`, or, when `vault` is `None`, left out. Erased
/// content reads as absent (null text and raw, an empty body).
pub fn open(vault: Option<&KeyVault>, record: &Record) -> Result<Opened, DecodeError> {
    let clear = |payload: &[u8]| {
        Event::decode(&record.type_name, record.schema_version, payload).map(|event| Opened {
            event,
            content: Content::Clear,
            keys: Vec::new(),
            raw_text: carries_raw(&record.type_name)
                .then(|| raw_member(payload))
                .flatten(),
        })
    };
    if domain::privacy::content_paths(&record.type_name).is_empty() {
        return clear(&record.payload);
    }
    let Ok(mut facts) = serde_json::from_slice::<Value>(&record.payload) else {
        return clear(&record.payload);
    };
    let Some(sealed) = facts.as_object_mut().and_then(|m| m.remove(SEALED)) else {
        return clear(&record.payload);
    };
    let sealed = sealed_from_json(&sealed);
    let keys = sealed
        .as_ref()
        .map(|s| s.key_ids.clone())
        .unwrap_or_default();
    let mut raw_text = None;
    let content = match (vault, sealed) {
        (None, _) => Content::Sealed,
        (Some(_), None) => Content::Damaged,
        (Some(vault), Some(sealed)) => match vault.open_sealed(&sealed) {
            Ok(Some(plaintext)) => match serde_json::from_slice::<Value>(&plaintext) {
                Ok(content) => {
                    if carries_raw(&record.type_name) {
                        raw_text = raw_member(&plaintext);
                    }
                    domain::privacy::put_content(&mut facts, content);
                    Content::Opened
                }
                Err(_) => Content::Damaged,
            },
            Ok(None) => Content::Erased,
            Err(_) => Content::Damaged,
        },
    };
    let bytes = serde_json::to_vec(&facts).expect("JSON values serialise");
    let event = Event::decode(&record.type_name, record.schema_version, &bytes)?;
    Ok(Opened {
        event,
        content,
        keys,
        raw_text,
    })
}

/// Whether records of this type carry a raw item as content.
fn carries_raw(type_name: &str) -> bool {
    domain::privacy::content_paths(type_name).contains(&"raw")
}

/// What an export says of a record's sealed content: `"erased"` when a key
/// it needs is gone, `"damaged"` when its seal cannot be read; nothing when
/// it has none or it is still there. Checks the keys only, decrypts nothing.
pub fn content_note(vault: &KeyVault, record: &Record) -> Option<&'static str> {
    if domain::privacy::content_paths(&record.type_name).is_empty() {
        return None;
    }
    let facts: Value = serde_json::from_slice(&record.payload).ok()?;
    let sealed = facts.get(SEALED)?;
    match sealed_from_json(sealed) {
        None => Some("damaged"),
        Some(s) if !vault.holds(&s.key_ids) => Some("erased"),
        Some(_) => None,
    }
}
