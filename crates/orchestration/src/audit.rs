//! The audit query layer: a thread's state at a time and the facts and
//! decisions that led there, folded from the log. `baton audit thread` and
//! the console's timeline both read through here, so there is one copy of
//! the logic.

use domain::events::{ControlView, RawBody};
use domain::ids::{AppId, ThreadKey, Timestamp};
use domain::{rules, Event, Page, ThreadLedger};
use event_log::{EventStore, Record};

/// The raw delivery recorded at `position`, byte for byte as Meta sent it:
/// its body as kept, with the items its facts carry put back (each item is
/// stored once, in its fact; see `RawBody::Spliced`). `Ok(None)` when no
/// delivery is there, it was kept without its words, or its content (or a
/// cut item's) was erased.
pub async fn delivery_body<S: EventStore>(
    store: &S,
    position: u64,
) -> Result<Option<Vec<u8>>, event_log::StorageError> {
    let Some(record) = store
        .read_all(position, 1)
        .await?
        .into_iter()
        .find(|r| r.position == position)
    else {
        return Ok(None);
    };
    let Ok(opened) = crate::record::open(Some(store.vault()), &record) else {
        return Ok(None);
    };
    let Event::WebhookDeliveryReceived(delivery) = opened.event else {
        return Ok(None);
    };
    // Erased, or kept without its words (a late delivery, or one carrying
    // another shard's page): its record holds no body.
    let holds_body = serde_json::from_slice::<serde_json::Value>(&record.payload)
        .is_ok_and(|p| p.get("body").is_some() || p.get("sealed").is_some());
    if opened.content.is_gone() || !holds_body {
        return Ok(None);
    }
    let furthest = match &delivery.body {
        RawBody::Spliced { cuts, .. } => cuts.iter().map(|c| c.after).max().unwrap_or(0),
        _ => 0,
    };
    let after = if furthest == 0 {
        Vec::new()
    } else {
        store.read_all(position + 1, furthest as usize).await?
    };
    // A cut item is the `raw` of the fact that many positions on, written
    // for the same delivery.
    Ok(delivery.body.bytes_with(|k| {
        let fact = after
            .iter()
            .find(|r| r.position == position + u64::from(k))
            .filter(|r| r.correlation_id == record.correlation_id)?;
        crate::record::open(Some(store.vault()), fact)
            .ok()
            .filter(|o| !o.content.is_gone())?
            .raw_text
    }))
}

/// The time an event says it happened (Meta's timestamp for what Meta told
/// Baton, Baton's clock for its own decisions). Every current event carries
/// one; `None` is for a future event that does not.
pub fn event_time(event: &Event) -> Option<Timestamp> {
    Some(match event {
        Event::WebhookDeliveryReceived(e) => e.received_at,
        Event::MessagingEventReceived(e) => e.at,
        Event::MessagingEventCopyReceived(e) => e.at,
        Event::UnattributedItemReceived(e) => e.at,
        Event::PolicyEnforcementReceived(e) => e.at,
        Event::ThreadRouted(e) => e.at,
        Event::ThreadControlPassed(e) => e.at,
        Event::ThreadControlTaken(e) => e.at,
        Event::ThreadControlRequested(e) => e.at,
        Event::ThreadControlReleased(e) => e.at,
        Event::ThreadControlExtended(e) => e.at,
        Event::ThreadControlExpired(e) => e.at,
        Event::AppRolesChanged(e) => e.at,
        Event::OwnershipDriftDetected(e) => e.at,
        Event::ControlCallAccepted(e) => e.at,
        Event::ControlCallCompleted(e) => e.at,
        Event::SendAccepted(e) => e.at,
        Event::CommandRefused(e) => e.at,
        Event::SendOutcomeRecorded(e) => e.at,
        Event::SendAttempted(e) => e.at,
        Event::StaleEvidenceIgnored(e) => e.at,
        Event::OwnershipConfirmed(e) => e.at,
        Event::SendRetryScheduled(e) => e.at,
        Event::OneTimeTokenIssued(e) => e.at,
        Event::OneTimeTokenConsumed(e) => e.at,
        Event::OneTimeTokenReleased(e) => e.at,
        Event::DispatchDeadLettered(e) => e.at,
        Event::DispatchRedriveRequested(e) => e.at,
        Event::MessengerProfileChanged(e) => e.at,
        Event::AttachmentUploaded(e) => e.at,
        Event::ThreadMetadataPassed(e) => e.at,
        Event::PrivateReplySent(e) => e.at,
        Event::ContentErased(e) => e.at,
        Event::ContentExpired(e) => e.at,
        Event::AppSubscriptionLost(e) => e.at,
        Event::AppSubscriptionRestored(e) => e.at,
        Event::PageTokenRejected(e) => e.at,
        Event::PageTokenAccepted(e) => e.at,
    })
}

/// The event's own time, else when the log recorded it.
pub fn record_time(record: &Record, event: &Event) -> Timestamp {
    event_time(event).unwrap_or_else(|| {
        Timestamp::from_millis(i64::try_from(record.recorded_at_ms).unwrap_or(i64::MAX))
    })
}

/// Whether `event` is part of `key`'s own history (its facts, decisions and
/// dead letters).
pub fn concerns(event: &Event, key: &ThreadKey) -> bool {
    match event {
        Event::DispatchDeadLettered(e) => e.thread.as_ref() == Some(key),
        other => other.thread() == Some(key),
    }
}

/// One line of a thread's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub position: u64,
    pub at: Timestamp,
    pub type_name: &'static str,
    pub explanation: String,
}

/// Folds a thread's history up to a time (or all of it): feed it the log's
/// events in order with [`ThreadHistory::observe`], then ask
/// [`ThreadHistory::state`].
#[derive(Debug, Clone)]
pub struct ThreadHistory {
    pub key: ThreadKey,
    /// The page as its own facts left it by the cutoff (a legacy primary, a
    /// block).
    pub page: Page,
    pub ledger: ThreadLedger,
    pub steps: Vec<Step>,
    /// Events of the thread after the cutoff.
    pub later: u64,
    cutoff: Option<Timestamp>,
    last_time: Option<Timestamp>,
}

/// What the thread looked like at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadAt {
    pub at: Timestamp,
    /// `idle`, `active` or `unknown`.
    pub state: &'static str,
    pub owner: Option<AppId>,
    pub answering_app: Option<AppId>,
    pub control_expires_at: Option<Timestamp>,
    /// When the standard window closes, and whether it was open at `at`.
    pub window: Option<(Timestamp, bool)>,
}

impl ThreadHistory {
    /// A fold of `key`'s history on `page` up to `cutoff` (all of it when
    /// `None`).
    pub fn new(key: ThreadKey, page: Page, cutoff: Option<Timestamp>) -> ThreadHistory {
        ThreadHistory {
            ledger: ThreadLedger::new(key.clone()),
            key,
            page,
            steps: Vec::new(),
            later: 0,
            cutoff,
            last_time: None,
        }
    }

    /// The time the history is folded up to, if any.
    pub fn cutoff(&self) -> Option<Timestamp> {
        self.cutoff
    }

    /// Takes one event of the log (any stream; others are skipped).
    pub fn observe(&mut self, record: &Record, event: &Event) {
        let when = record_time(record, event);
        let ours = concerns(event, &self.key);
        let page_level = matches!(
            event,
            Event::PolicyEnforcementReceived(_) | Event::AppRolesChanged(_)
        );
        if !ours && !page_level {
            return;
        }
        if self.cutoff.is_some_and(|c| when > c) {
            if ours {
                self.later += 1;
            }
            return;
        }
        // Page-level facts change what the rules say (a legacy primary, a
        // block) but are not this thread's history.
        self.page.apply(event);
        if !ours {
            return;
        }
        self.ledger.apply(event);
        self.last_time = Some(self.last_time.map_or(when, |l| l.max(when)));
        self.steps.push(Step {
            position: record.position,
            at: when,
            type_name: event.type_name(),
            explanation: domain::explain::explain(event),
        });
    }

    /// The state at the cutoff, or, without one, at `now` but never before
    /// the last fact (a clock set back).
    pub fn state(&self, now: Timestamp) -> ThreadAt {
        let at = self
            .cutoff
            .unwrap_or_else(|| self.last_time.map_or(now, |l| l.max(now)));
        let view = rules::control_at(&self.ledger, &self.page, at);
        let state = match &view {
            ControlView::Idle => "idle",
            ControlView::Owner { .. } => "active",
            ControlView::Unknown => "unknown",
        };
        let owner = match &view {
            ControlView::Owner { app } => Some(app.clone()),
            _ => None,
        };
        let answering_app = rules::answering_app(&view, &self.page).cloned();
        let control_expires_at = match view {
            ControlView::Owner { .. } => rules::control_expiry(&self.ledger, &self.page),
            _ => None,
        };
        let window = self.ledger.window.map(|w| (w.closes_at, at < w.closes_at));
        ThreadAt {
            at,
            state,
            owner,
            answering_app,
            control_expires_at,
            window,
        }
    }
}
