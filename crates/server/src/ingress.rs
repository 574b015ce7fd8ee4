//! Webhook ingress: Meta's verify handshake and `POST /webhooks/{app_id}`.
//! It reads the raw body under a size limit, checks the signature with that
//! app's secret before anything else, records the raw delivery and the facts
//! each item carries (one fact per item however many apps or retries deliver
//! it), and answers 200 only once all of it is durable. It never forwards
//! anything: dispatch reads the log.

use std::collections::HashMap;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use domain::events::{
    AppRolesChanged, DeliveryCopy, InboundEvent, ParseOutcome, PolicyEnforcementReceived, RawBody,
    SendOutcome, UnattributedItemReceived, WebhookDeliveryReceived,
};
use domain::rules::{self, Observation};
use domain::{AppId, Event, ThreadKey, ThreadLedger, Timestamp};
use event_log::{AppendError, EventStore, ExpectedVersion, NewRecord};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use wire::webhook::{self, Envelope, ItemKind};

use crate::auth::ct_eq;
use crate::error::ApiError;
use crate::projections::{Copies, State};
use crate::AppState;

/// How often a delivery is re-planned after losing a race on a thread.
const MAX_CONFLICT_RETRIES: usize = 16;

/// `GET /webhooks/{app_id}`: answer `hub.challenge` when mode and token match.
pub async fn verify<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    app: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let app_id = AppId::parse(app.into_inner()).map_err(|e| ApiError::UnknownApp(e.to_string()))?;
    let Some((_, managed)) = state.config.managed(&app_id) else {
        return Err(ApiError::UnknownApp(app_id.to_string()));
    };
    let mode = query.get("hub.mode").map(String::as_str);
    let token = query
        .get("hub.verify_token")
        .map(String::as_bytes)
        .unwrap_or_default();
    match (mode, query.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge))
            if ct_eq(token, managed.verify_token.expose().as_bytes()) =>
        {
            Ok(HttpResponse::Ok()
                .content_type("text/plain")
                .body(challenge.clone()))
        }
        _ => {
            tracing::warn!(app = %app_id, "webhook verification refused");
            Err(ApiError::VerifyRefused)
        }
    }
}

/// `POST /webhooks/{app_id}`.
pub async fn receive<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    app: web::Path<String>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let app_id = AppId::parse(app.into_inner()).map_err(|e| ApiError::UnknownApp(e.to_string()))?;
    let Some((_, managed)) = state.config.managed(&app_id) else {
        return Err(ApiError::UnknownApp(app_id.to_string()));
    };
    let metrics = &state.metrics;
    let app_label = app_id.as_str();

    if let Some(ct) = req.headers().get("content-type") {
        let ct = ct.to_str().unwrap_or_default();
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            metrics.delivery(app_label, "unsupported_media_type");
            return Err(ApiError::UnsupportedMediaType(ct.to_owned()));
        }
    }
    let limit = state.config.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if len > limit {
            metrics.delivery(app_label, "too_large");
            return Err(ApiError::TooLarge { limit });
        }
    }
    let mut body = web::BytesMut::new();
    let timeout = std::time::Duration::from_millis(state.config.body_timeout_ms);
    let read = async {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BadBody(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            metrics.delivery(
                app_label,
                if matches!(e, ApiError::TooLarge { .. }) {
                    "too_large"
                } else {
                    "bad_body"
                },
            );
            return Err(e);
        }
        Err(_) => {
            metrics.delivery(app_label, "body_timeout");
            return Err(ApiError::BodyTimeout(state.config.body_timeout_ms));
        }
    }
    let body = body.freeze();

    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let check = wire::signature::check_signatures(
        managed.app_secret.expose().as_bytes(),
        &body,
        header("x-hub-signature-256"),
        header("x-hub-signature"),
    );
    if !wire::signature::accepted(&check) {
        metrics.delivery(app_label, "bad_signature");
        metrics.signature_failure(app_label);
        tracing::warn!(app = %app_id, sha256 = ?check.sha256, sha1 = ?check.sha1, "webhook signature refused");
        return Err(ApiError::BadSignature(wire::signature::refusal_reason(
            &check,
        )));
    }

    let now = state.clock.now();
    let delivery_id = Uuid::now_v7();
    let parsed = webhook::parse_envelope(&body, now);
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
    let raw_body = match std::str::from_utf8(&body) {
        Ok(text) => RawBody::Text(text.to_owned()),
        Err(_) => RawBody::Base64(base64::engine::general_purpose::STANDARD.encode(&body)),
    };
    let delivery_event: Event = WebhookDeliveryReceived {
        delivery_id: delivery_id.to_string(),
        app: app_id.clone(),
        received_at: now,
        signature: check,
        body: raw_body,
        parsed: parse_outcome,
    }
    .into();
    // Meta's retries carry the same bytes: the raw delivery is kept once.
    let delivery_key = format!("delivery:{app_id}:{}", hex::encode(Sha256::digest(&body)));

    let _span = tracing::info_span!("webhook", app = %app_id, delivery = %delivery_id).entered();
    let mut attempts = 0;
    loop {
        let plan = {
            let snapshot = state.projections.read();
            plan_records(&snapshot, &app_id, parsed.as_ref().ok(), now)
        };
        let mut records = Vec::with_capacity(plan.len() + 1);
        records.push(encode(&delivery_event, delivery_id).idempotency_key(delivery_key.clone()));
        let new_facts = plan.len();
        records.extend(plan.into_iter().map(|(event, expected, key)| {
            let mut r = encode(&event, delivery_id).expect(expected);
            if let Some(key) = key {
                r = r.idempotency_key(key);
            }
            r
        }));
        let started = Instant::now();
        state.metrics.append_started();
        let result = state.store.append(records).await;
        state
            .metrics
            .append_finished(started.elapsed(), new_facts + 1);
        match result {
            Ok(appended) => {
                let last = appended.iter().map(|a| a.position).max().unwrap_or(0);
                state.projections.wait_for(last).await;
                let outcome = match (&parsed, appended[0].duplicate) {
                    (_, true) => "duplicate",
                    (Err(_), false) => "unparsable",
                    (Ok(_), false) => "accepted",
                };
                metrics.delivery(app_label, outcome);
                tracing::debug!(facts = new_facts, outcome, "webhook recorded");
                return Ok(HttpResponse::Ok()
                    .content_type("text/plain")
                    .body("EVENT_RECEIVED"));
            }
            Err(AppendError::Conflict { stream, .. }) if attempts < MAX_CONFLICT_RETRIES => {
                // Another delivery touched the same thread first: fold it in and re-plan.
                attempts += 1;
                tracing::debug!(%stream, attempts, "thread moved under this delivery; re-planning");
                let head = state
                    .store
                    .head()
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                state.projections.wait_for(head.position).await;
            }
            Err(AppendError::Busy) => {
                metrics.delivery(app_label, "busy");
                return Err(ApiError::Busy);
            }
            Err(AppendError::Conflict { .. }) => {
                metrics.delivery(app_label, "busy");
                return Err(ApiError::Busy);
            }
            Err(e) => {
                metrics.delivery(app_label, "error");
                tracing::error!(error = %e, "cannot record a webhook delivery");
                return Err(ApiError::Unavailable(e.to_string()));
            }
        }
    }
}

fn encode(event: &Event, delivery_id: Uuid) -> NewRecord {
    let enc = event.encode();
    NewRecord::new(
        event.stream_name(),
        enc.type_name,
        enc.schema_version,
        enc.payload,
    )
    .correlated_with(delivery_id)
}

/// One planned record: the event, its stream check, its idempotency key.
type Planned = (Event, ExpectedVersion, Option<String>);

/// The facts a delivery adds, given the projections now: the domain observes
/// each item against the thread's ledger (kept current across the items of
/// this delivery), skipping copies already recorded.
fn plan_records(
    state: &State,
    app: &AppId,
    envelope: Option<&Envelope>,
    now: Timestamp,
) -> Vec<Planned> {
    let Some(envelope) = envelope else {
        return Vec::new();
    };
    struct Group {
        ledger: ThreadLedger,
        events: Vec<Event>,
    }
    let mut order: Vec<ThreadKey> = Vec::new();
    let mut groups: HashMap<ThreadKey, Group> = HashMap::new();
    let mut page_events: Vec<(Event, String)> = Vec::new();
    let mut local_seen: HashMap<String, Copies> = HashMap::new();

    for entry in &envelope.entries {
        for item in &entry.items {
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
                    let mut copies: Copies = state.copies(dedupe_key).cloned().unwrap_or_default();
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
                            ledger: state
                                .thread(thread)
                                .cloned()
                                .unwrap_or_else(|| ThreadLedger::new(thread.clone())),
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
                    if let (Some((send_id, record)), InboundEvent::Echo { mid, .. }) =
                        (state.send_settled_by(event), event)
                    {
                        if &record.thread == thread {
                            let outcome = SendOutcome::SettledByEcho { mid: mid.clone() };
                            let settled = rules::settle_send(
                                &group.ledger,
                                page,
                                &record.as_send(&send_id),
                                &outcome,
                                now,
                            );
                            for e in &settled {
                                group.ledger.apply(e);
                            }
                            group.events.extend(settled);
                        }
                    }
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
        let version = state.thread(&key).map_or(0, |l| l.version);
        for (i, event) in group.events.into_iter().enumerate() {
            // The first record pins the thread's version: a concurrent delivery
            // that got there first makes this batch conflict and re-plan.
            let expected = match (i, version) {
                (0, 0) => ExpectedVersion::NoStream,
                (0, v) => ExpectedVersion::Exact(v),
                _ => ExpectedVersion::Any,
            };
            planned.push((event, expected, None));
        }
    }
    planned.extend(
        page_events
            .into_iter()
            .map(|(e, key)| (e, ExpectedVersion::Any, Some(key))),
    );
    planned
}
