//! What dispatch reads from the log: the items Meta delivered to one app (with
//! the channel it used), and dispatch's own dead-letter and redrive facts. It
//! classifies records; it sends nothing and keeps no state.

use domain::events::{Channel, DeliveryCopy};
use domain::ids::{AppId, PageId, ThreadKey};
use domain::Event;
use event_log::Record;
use serde_json::Value;

/// The unit of ordering: a thread, or a page for page-level items (policy
/// enforcement, app roles, unattributed items).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderKey {
    Thread(ThreadKey),
    Page(PageId),
}

impl OrderKey {
    /// The page the item belongs to (`entry[].id`).
    pub fn page(&self) -> &PageId {
        match self {
            OrderKey::Thread(t) => &t.page,
            OrderKey::Page(p) => p,
        }
    }

    pub fn thread(&self) -> Option<&ThreadKey> {
        match self {
            OrderKey::Thread(t) => Some(t),
            OrderKey::Page(_) => None,
        }
    }
}

/// One item to deliver to one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Log position of the record that carries the item.
    pub position: u64,
    pub key: OrderKey,
    pub channel: Channel,
    /// When the log recorded it (ms), which is also the envelope's `time`.
    pub recorded_at_ms: i64,
    /// The item exactly as Meta delivered it to this app.
    pub raw: Value,
}

/// What one record means to one app's dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum Relevant {
    /// An item Meta delivered to this app.
    Item(Item),
    /// Someone asked to deliver the item at `position` again.
    Redrive { position: u64 },
}

/// Type names that can matter to dispatch; everything else is skipped
/// without decoding.
const RELEVANT_TYPES: [&str; 6] = [
    "MessagingEventReceived",
    "MessagingEventCopyReceived",
    "PolicyEnforcementReceived",
    "AppRolesChanged",
    "UnattributedItemReceived",
    "DispatchRedriveRequested",
];

/// Classifies `record` for `app`. Records that fail to decode are not items
/// (ingress keeps unknown kinds verbatim in its own events), so they are
/// skipped with a warning rather than blocking the app forever.
pub fn classify(record: &Record, app: &AppId) -> Option<Relevant> {
    if !RELEVANT_TYPES.contains(&record.type_name.as_str()) {
        return None;
    }
    let event = match Event::decode(&record.type_name, record.schema_version, &record.payload) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!(position = record.position, type_name = %record.type_name, error = %e, "dispatch skips a record it cannot decode");
            return None;
        }
    };
    let recorded_at_ms = i64::try_from(record.recorded_at_ms).unwrap_or(i64::MAX);
    let item = |key: OrderKey, delivery: &DeliveryCopy, raw: Value| {
        (delivery.app == *app).then_some(Relevant::Item(Item {
            position: record.position,
            key,
            channel: delivery.channel,
            recorded_at_ms,
            raw,
        }))
    };
    match event {
        Event::MessagingEventReceived(e) => item(OrderKey::Thread(e.thread), &e.delivery, e.raw),
        Event::MessagingEventCopyReceived(e) => {
            item(OrderKey::Thread(e.thread), &e.delivery, e.raw)
        }
        Event::PolicyEnforcementReceived(e) => item(OrderKey::Page(e.page), &e.delivery, e.raw),
        Event::UnattributedItemReceived(e) => item(OrderKey::Page(e.page), &e.delivery, e.raw),
        Event::AppRolesChanged(e) => {
            let delivery = e.delivery?;
            item(OrderKey::Page(e.page), &delivery, e.raw)
        }
        Event::DispatchRedriveRequested(e) if e.app == *app => Some(Relevant::Redrive {
            position: e.position,
        }),
        _ => None,
    }
}
