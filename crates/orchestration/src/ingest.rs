//! Webhook intake: a delivery from Meta for one managed app. The signature
//! is checked over the raw bytes with that app's secret before anything
//! else; then the raw delivery and the facts each item carries are recorded
//! (one fact per item however many apps or retries deliver it; a copy from
//! another app or channel is attached to it), in one batch. It returns once
//! all of it is durable and folded. It forwards nothing: dispatch reads the log.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use domain::events::Channel;
use domain::events::{
    AppRolesChanged, Cut, DeliveryCopy, ParseOutcome, PolicyEnforcementReceived, RawBody,
    SignatureCheck, UnattributedItemReceived, WebhookDeliveryReceived,
};
use domain::rules::{self, Observation};
use domain::{AppId, Event, PageId, ThreadKey, ThreadLedger, Timestamp};
use event_log::EventStore;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;
use wire::webhook::{self, Entry, Item, ItemKind};

use crate::config::Elsewhere;
use crate::projections::{Copies, State};
use crate::record::{on_thread, OnBusy, Planned, RecordError};
use crate::Baton;

/// Items one delivery may carry. Meta batches at most 1,000 updates per
/// delivery; a delivery with more is not Meta's and is refused whole.
pub const MAX_ITEMS_PER_DELIVERY: usize = 4_000;
/// Items recorded per append: the longest another delivery waits for a large one.
pub const ITEMS_PER_CHUNK: usize = 256;

/// Why a delivery was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the delivery carries {items} items; at most {max} are accepted")]
    TooManyItems { items: usize, max: usize },
    #[error("no managed app {0} is configured here")]
    UnknownApp(String),
    /// Neither signature matched: nothing is stored.
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("the delivery could not be recorded")]
    NotRecorded(#[source] RecordError),
}

/// What became of a recorded delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// New facts recorded.
    Accepted,
    /// The same bytes were recorded before (a Meta retry).
    Duplicate,
    /// Kept verbatim: not JSON, or not a webhook envelope.
    Unparsable,
}

impl Intake {
    pub fn name(self) -> &'static str {
        match self {
            Intake::Accepted => "accepted",
            Intake::Duplicate => "duplicate",
            Intake::Unparsable => "unparsable",
        }
    }
}

impl<S: EventStore + 'static> Baton<S> {
    /// Verifies and records one delivery for `app`: `signature_256` and
    /// `signature_1` are the `X-Hub-Signature-256` and `X-Hub-Signature`
    /// headers as received.
    pub async fn ingest(
        &self,
        app: &AppId,
        body: &[u8],
        signature_256: Option<&str>,
        signature_1: Option<&str>,
    ) -> Result<Intake, IngestError> {
        let check = self.check_signature(app, body, signature_256, signature_1)?;
        let label = app.as_str();
        let delivery_id = Uuid::now_v7();
        // A span per delivery only when debugging: at the default level it
        // is neither built nor formatted.
        let span = tracing::debug_span!("webhook", %app, delivery = %delivery_id);
        let result = self
            .record_delivery(app, body, check, delivery_id)
            .instrument(span)
            .await;
        match &result {
            Ok(intake) => self.metrics.delivery(label, intake.name()),
            Err(IngestError::NotRecorded(RecordError::Busy)) => {
                self.metrics.delivery(label, "busy")
            }
            Err(e) => {
                self.metrics.delivery(label, "error");
                tracing::error!(error = %e, "cannot record a webhook delivery");
            }
        }
        result
    }

    /// Checks a delivery's signature with `app`'s secret, as [`Baton::ingest`]
    /// does before recording anything (also before a node hands a delivery
    /// on to other shards).
    pub fn check_signature(
        &self,
        app: &AppId,
        body: &[u8],
        signature_256: Option<&str>,
        signature_1: Option<&str>,
    ) -> Result<SignatureCheck, IngestError> {
        let Some((_, managed)) = self.config.managed(app) else {
            return Err(IngestError::UnknownApp(app.to_string()));
        };
        let check = wire::signature::check_signatures(
            managed.app_secret.expose().as_bytes(),
            body,
            signature_256,
            signature_1,
        );
        if !wire::signature::accepted(&check) {
            let label = app.as_str();
            self.metrics.delivery(label, "bad_signature");
            self.metrics.signature_failure(label);
            tracing::warn!(%app, sha256 = ?check.sha256, sha1 = ?check.sha1, "webhook signature refused");
            return Err(IngestError::BadSignature(wire::signature::refusal_reason(
                &check,
            )));
        }
        Ok(check)
    }

    async fn record_delivery(
        &self,
        app: &AppId,
        body: &[u8],
        check: SignatureCheck,
        delivery_id: Uuid,
    ) -> Result<Intake, IngestError> {
        let now = self.clock.now();
        let parsed = webhook::parse_envelope(body, now);
        let parse_outcome = match &parsed {
            Ok(env) => ParseOutcome::Parsed {
                entries: env.entries.len() as u32,
                items: env.item_count() as u32,
            },
            Err(webhook::EnvelopeError::NotJson(e)) => ParseOutcome::NotJson { error: e.clone() },
            Err(webhook::EnvelopeError::NotAnEnvelope(e)) => {
                ParseOutcome::NotAnEnvelope { error: e.clone() }
            }
        };
        let text = std::str::from_utf8(body).ok();
        // Where each item's bytes lie in the body, for the items whose
        // facts will carry them (the body then refers to those facts).
        let slices = match (&parsed, text) {
            (Ok(_), Some(text)) => item_slices(text),
            _ => Vec::new(),
        };
        let delivery_event = |body: RawBody| -> Event {
            WebhookDeliveryReceived {
                delivery_id: delivery_id.to_string(),
                app: app.clone(),
                received_at: now,
                signature: check,
                body,
                parsed: parse_outcome.clone(),
            }
            .into()
        };
        let items: Vec<(&Entry, &Item)> = parsed
            .as_ref()
            .map(|env| {
                env.entries
                    .iter()
                    .flat_map(|e| e.items.iter().map(move |i| (e, i)))
                    .collect()
            })
            .unwrap_or_default();
        if items.len() > MAX_ITEMS_PER_DELIVERY {
            return Err(IngestError::TooManyItems {
                items: items.len(),
                max: MAX_ITEMS_PER_DELIVERY,
            });
        }
        // The raw delivery is sealed for every person whose items it carries.
        let people = delivery_people(&items);
        // Items of pages another shard decides for: whether they came after
        // their person's erasure only that shard knows, so the raw delivery
        // is kept without its words (each shard keeps its own items' raw
        // copies, sealed, with its facts).
        let elsewhere = &self.config.elsewhere;
        let carries_elsewhere = items.iter().any(|(entry, item)| {
            elsewhere.contains_key(match &item.kind {
                ItemKind::Thread { thread, .. } => &thread.page,
                _ => &entry.page,
            })
        });
        // Meta's retries carry the same bytes: the raw delivery is kept once.
        let delivery_key = format!("delivery:{app}:{}", hex::encode(Sha256::digest(body)));
        // The raw delivery with the first chunk of its facts, then the rest a
        // chunk at a time: other deliveries are recorded in between, so a
        // large one holds nobody up for longer than one chunk.
        let mut duplicate = false;
        let mut facts = 0;
        let mut chunks = items.chunks(ITEMS_PER_CHUNK);
        let mut chunk = chunks.next().unwrap_or(&[]);
        let mut first = true;
        loop {
            let recorded = self
                .recorder
                .record(OnBusy::Fail, |snapshot| {
                    let mut plan = Vec::new();
                    let mut facts: Vec<Planned> =
                        plan_records(snapshot, &self.config.elsewhere, app, chunk, now)
                            .into_iter()
                            .map(|p| {
                                let late = match &p.event {
                                    Event::MessagingEventReceived(e) => {
                                        predates_erasure(snapshot, &e.thread, e.at)
                                    }
                                    Event::MessagingEventCopyReceived(e) => {
                                        predates_erasure(snapshot, &e.thread, e.at)
                                    }
                                    _ => false,
                                };
                                if late {
                                    p.without_content()
                                } else {
                                    p
                                }
                            })
                            .collect();
                    if first {
                        // Meta's late copy of something said before an
                        // erasure must not bring the words back.
                        let late = carries_elsewhere
                            || items.iter().any(|(_, item)| match &item.kind {
                                ItemKind::Thread { thread, at, .. } => {
                                    predates_erasure(snapshot, thread, *at)
                                }
                                _ => false,
                            });
                        let body = match text {
                            Some(text) if !late => splice(text, &slices, &items, &mut facts),
                            Some(text) => RawBody::Text(text.to_owned()),
                            None => RawBody::Base64(
                                base64::engine::general_purpose::STANDARD.encode(body),
                            ),
                        };
                        // A body with every item cut out is about nobody.
                        let about = if only_the_frame(&body) {
                            Vec::new()
                        } else {
                            people.clone()
                        };
                        let delivery = Planned::new(delivery_event(body))
                            .about(about)
                            .idempotency_key(delivery_key.clone());
                        plan.push(if late {
                            delivery.without_content()
                        } else {
                            delivery
                        });
                    }
                    plan.extend(facts);
                    let plan = plan
                        .into_iter()
                        .map(|p| p.correlated_with(delivery_id))
                        .collect();
                    Ok((plan, ()))
                })
                .await
                .map_err(IngestError::NotRecorded)?;
            if first {
                duplicate = recorded.duplicates.first() == Some(&true);
            }
            facts += recorded.events.len();
            self.reconcile_unknown_owners(&recorded.events);
            first = false;
            match chunks.next() {
                Some(next) => chunk = next,
                None => break,
            }
        }
        tracing::debug!(facts, "webhook recorded");
        Ok(match (&parsed, duplicate) {
            (_, true) => Intake::Duplicate,
            (Err(_), _) => Intake::Unparsable,
            (Ok(_), _) => Intake::Accepted,
        })
    }
}

/// The byte ranges of a delivery's items (each entry's `messaging[]` and
/// `standby[]` members) in its text; none when the body cannot be read
/// that way.
fn item_slices(text: &str) -> Vec<std::ops::Range<usize>> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        entry: Vec<EntryItems<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct EntryItems<'a> {
        #[serde(borrow, default)]
        messaging: Option<Vec<&'a RawValue>>,
        #[serde(borrow, default)]
        standby: Option<Vec<&'a RawValue>>,
    }
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(text) else {
        return Vec::new();
    };
    let base = text.as_ptr() as usize;
    envelope
        .entry
        .iter()
        .flat_map(|e| {
            e.messaging
                .iter()
                .flatten()
                .chain(e.standby.iter().flatten())
        })
        .map(|raw| {
            let start = raw.get().as_ptr() as usize - base;
            start..start + raw.get().len()
        })
        .collect()
}

/// The delivery's body with the items its facts will carry cut out: each
/// such fact keeps its item as Meta's bytes had them (`Planned::raw_text`),
/// and the body says where each goes back. Only the facts on threads before
/// the first record with an idempotency key are taken: a duplicate there
/// would not be stored again, and the facts after it would land at other
/// positions than the body says. Items that would bring Baton's send
/// marker along stay in the body (dispatch forwards a body as it came only
/// without it).
fn splice(
    text: &str,
    slices: &[std::ops::Range<usize>],
    items: &[(&Entry, &Item)],
    facts: &mut [Planned],
) -> RawBody {
    // `slices` are in the parser's order (each entry's `messaging[]`, then
    // its `standby[]`): the i-th is the i-th item's bytes.
    if slices.len() != items.len() {
        return RawBody::Text(text.to_owned());
    }
    let mut by_key: HashMap<(String, Channel), Vec<usize>> = HashMap::new();
    for (i, (_, item)) in items.iter().enumerate() {
        if let ItemKind::Thread { dedupe_key, .. } = &item.kind {
            by_key
                .entry((dedupe_key.clone(), item.channel))
                .or_default()
                .push(i);
        }
    }
    let mut cuts: Vec<(std::ops::Range<usize>, u32)> = Vec::new();
    for (i, fact) in facts.iter_mut().enumerate() {
        if fact.record.idempotency_key.is_some() {
            break;
        }
        if fact.forgets_content() {
            continue;
        }
        let (raw, dedupe_key, channel) = match &fact.event {
            Event::MessagingEventReceived(e) => (&e.raw, &e.dedupe_key, e.delivery.channel),
            Event::MessagingEventCopyReceived(e) => (&e.raw, &e.dedupe_key, e.delivery.channel),
            _ => continue,
        };
        // The item this fact carries: the first one left with its key and
        // channel that is the same value (identical items are
        // interchangeable).
        let Some(candidates) = by_key.get_mut(&(dedupe_key.clone(), channel)) else {
            continue;
        };
        let Some(k) = candidates.iter().position(|&j| items[j].1.raw == *raw) else {
            continue;
        };
        let range = slices[candidates.remove(k)].clone();
        let Ok(after) = u32::try_from(i + 1) else {
            continue;
        };
        if text[range.clone()].contains(crate::projections::SEND_METADATA_PREFIX) {
            continue;
        }
        fact.keep_raw_text(text[range.clone()].to_owned());
        cuts.push((range, after));
    }
    if cuts.is_empty() {
        return RawBody::Text(text.to_owned());
    }
    cuts.sort_by_key(|(range, _)| range.start);
    let mut skeleton = String::with_capacity(text.len());
    let mut from = 0;
    let mut out = Vec::with_capacity(cuts.len());
    for (range, after) in cuts {
        skeleton.push_str(&text[from..range.start]);
        out.push(Cut {
            at: u32::try_from(skeleton.len()).unwrap_or(u32::MAX),
            after,
        });
        from = range.end;
    }
    skeleton.push_str(&text[from..]);
    RawBody::Spliced {
        skeleton,
        cuts: out,
    }
}

/// Whether a body keeps nothing of anyone's: every item was cut out, and
/// around them is only Meta's frame: an `object` name, and for each entry
/// its numeric `id` and `time` and its `messaging` and `standby` arrays,
/// nothing else and no key twice. Such a body is stored clear: it holds
/// the page's id and Meta's batch time, no words of anyone's.
fn only_the_frame(body: &RawBody) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Frame {
        object: String,
        entry: Vec<FrameEntry>,
    }
    // Deserialised only to check their shape.
    #[allow(dead_code)]
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FrameEntry {
        id: FrameId,
        time: Option<u64>,
        messaging: Option<Vec<()>>,
        standby: Option<Vec<()>>,
    }
    #[allow(dead_code)]
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum FrameId {
        Number(u64),
        Text(String),
    }
    let RawBody::Spliced { .. } = body else {
        return false;
    };
    // Each cut item reads as `null`; a derived struct refuses a key twice.
    let Some(framed) = body.bytes_with(|_| Some("null".to_owned())) else {
        return false;
    };
    let Ok(frame) = serde_json::from_slice::<Frame>(&framed) else {
        return false;
    };
    let name = |s: &str| {
        !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    };
    name(&frame.object)
        && frame.entry.iter().all(|e| match &e.id {
            FrameId::Number(_) => true,
            FrameId::Text(id) => {
                !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit())
            }
        })
}

/// Whether Meta timed this evidence at or before the last erasure of the
/// thread's person.
fn predates_erasure(state: &State, thread: &ThreadKey, at: Timestamp) -> bool {
    state
        .thread(thread)
        .and_then(|l| l.erased_at)
        .is_some_and(|erased| at <= erased)
}

/// The people a delivery's items are about: each thread's, and the sender
/// of items that name no configured thread.
fn delivery_people(items: &[(&Entry, &Item)]) -> Vec<ThreadKey> {
    let mut people: Vec<ThreadKey> = items
        .iter()
        .filter_map(|(entry, item)| match &item.kind {
            ItemKind::Thread { thread, .. } => Some(thread.clone()),
            _ => domain::privacy::raw_person(&entry.page, &item.raw),
        })
        .collect();
    people.sort_by(|a, b| (&a.page, &a.psid).cmp(&(&b.page, &b.psid)));
    people.dedup();
    people
}

/// The facts a delivery adds, given the projections now: the domain observes
/// each item against the thread's ledger (kept current across the items of
/// this delivery), skipping copies already recorded, and the items of pages
/// another shard decides for (that shard records them).
fn plan_records(
    state: &State,
    elsewhere: &BTreeMap<PageId, Elsewhere>,
    app: &AppId,
    items: &[(&Entry, &Item)],
    now: Timestamp,
) -> Vec<Planned> {
    struct Group {
        ledger: ThreadLedger,
        events: Vec<Event>,
    }
    let mut order: Vec<ThreadKey> = Vec::new();
    let mut groups: HashMap<ThreadKey, Group> = HashMap::new();
    let mut page_events: Vec<(Event, String)> = Vec::new();
    let mut local_seen: HashMap<String, Copies> = HashMap::new();

    for (entry, item) in items.iter().copied() {
        {
            let delivery = DeliveryCopy {
                app: app.clone(),
                channel: item.channel,
            };
            let page_key = |key: &str| format!("page:{key}:{app}:{:?}", item.channel);
            // An app speaks only for the pages it is configured on: anything
            // else it delivers is kept verbatim and changes no state.
            let item_page = match &item.kind {
                ItemKind::Thread { thread, .. } => &thread.page,
                _ => &entry.page,
            };
            if elsewhere.contains_key(item_page) {
                continue;
            }
            if !state
                .pages
                .get(item_page)
                .is_some_and(|p| p.apps.contains_key(app))
            {
                let e = UnattributedItemReceived {
                    page: item_page.clone(),
                    at: item.kind.at(),
                    delivery,
                    raw: item.raw.clone(),
                };
                page_events.push((e.into(), page_key(item.kind.dedupe_key())));
                continue;
            }
            match &item.kind {
                ItemKind::Thread {
                    thread,
                    at,
                    dedupe_key,
                    event,
                } => {
                    let Some(page) = state.pages.get(&thread.page) else {
                        continue; // checked above
                    };
                    let mut copies: Copies = state
                        .copies(dedupe_key)
                        .map(<[_]>::to_vec)
                        .unwrap_or_default();
                    copies.extend(local_seen.get(dedupe_key).cloned().unwrap_or_default());
                    let me = (app.clone(), item.channel);
                    if copies.contains(&me) {
                        continue; // a retry of a copy already recorded
                    }
                    let observation = if copies.is_empty() {
                        Observation::Item {
                            at: *at,
                            dedupe_key: dedupe_key.clone(),
                            delivery,
                            event: event.clone(),
                            raw: item.raw.clone(),
                        }
                    } else {
                        Observation::Copy {
                            at: *at,
                            dedupe_key: dedupe_key.clone(),
                            delivery,
                            event: event.clone(),
                            raw: item.raw.clone(),
                        }
                    };
                    local_seen.entry(dedupe_key.clone()).or_default().push(me);
                    let group = groups.entry(thread.clone()).or_insert_with(|| {
                        order.push(thread.clone());
                        Group {
                            ledger: state.ledger(thread).into_owned(),
                            events: Vec::new(),
                        }
                    });
                    let events = rules::observe(&group.ledger, page, observation, now);
                    for e in &events {
                        group.ledger.apply(e);
                    }
                    group.events.extend(events);
                    // An echo of a send whose outcome is not known settles it,
                    // inline thread control included.
                    let settled =
                        crate::outbox::settle_by_echo(state, &group.ledger, page, event, app, now);
                    for e in &settled {
                        group.ledger.apply(e);
                    }
                    group.events.extend(settled);
                }
                ItemKind::AppRoles {
                    at,
                    dedupe_key,
                    roles,
                } => {
                    let e = AppRolesChanged {
                        page: entry.page.clone(),
                        at: *at,
                        roles: roles.clone(),
                        delivery: Some(delivery),
                        raw: item.raw.clone(),
                    };
                    page_events.push((e.into(), page_key(dedupe_key)));
                }
                ItemKind::PolicyEnforcement {
                    at,
                    dedupe_key,
                    action,
                    reason,
                } => {
                    let e = PolicyEnforcementReceived {
                        page: entry.page.clone(),
                        at: *at,
                        action: *action,
                        reason: reason.clone(),
                        delivery,
                        raw: item.raw.clone(),
                    };
                    page_events.push((e.into(), page_key(dedupe_key)));
                }
                ItemKind::Unattributed { at, dedupe_key, .. } => {
                    let e = UnattributedItemReceived {
                        page: entry.page.clone(),
                        at: *at,
                        delivery,
                        raw: item.raw.clone(),
                    };
                    page_events.push((e.into(), page_key(dedupe_key)));
                }
            }
        }
    }

    let mut planned = Vec::new();
    for key in order {
        let group = groups
            .remove(&key)
            .expect("every ordered thread has a group");
        // The first record pins the thread's version: a concurrent delivery
        // that got there first makes this batch conflict and re-plan.
        let version = state.thread(&key).map_or(0, |l| l.version);
        planned.extend(on_thread(version, group.events));
    }
    planned.extend(
        page_events
            .into_iter()
            .map(|(e, key)| Planned::new(e).idempotency_key(key)),
    );
    planned
}
