//! What dispatch reads from the log: the items Meta delivered to one app (with
//! the channel it used), and dispatch's own dead-letter and redrive facts. It
//! classifies records; it sends nothing and keeps no state.

use std::sync::Arc;

use domain::events::{Channel, DeliveryCopy, ParseOutcome, RawBody};
use domain::ids::{AppId, PageId, ThreadKey};
use domain::Event;
use event_log::{KeyId, KeyVault, Record};
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
    /// The item as Meta delivered it to this app (Baton's own send marker
    /// taken out of echoes).
    pub raw: Value,
    /// The whole delivery body exactly as Meta sent it, when the item came
    /// alone in its delivery: forwarded byte for byte.
    pub original: Option<Arc<Vec<u8>>>,
    /// The item as the JSON text its record holds (Meta's bytes, where the
    /// delivery's body refers to it), until the body is put together.
    pub raw_text: Option<String>,
    /// The keys that sealed its content: once one is destroyed (the
    /// person's content was erased), the item is dropped, not sent.
    pub keys: Vec<KeyId>,
}

/// What one record means to one app's dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum Relevant {
    /// An item Meta delivered to this app.
    Item(Item),
    /// Someone asked to deliver the item at `position` again.
    Redrive { position: u64 },
    /// A delivery to this app that carried exactly one item: its body, for
    /// the item record that follows it (same correlation id), and its
    /// position (a body that refers to its item's fact names it by its
    /// distance from here).
    SingleItemDelivery {
        id: uuid::Uuid,
        position: u64,
        body: RawBody,
    },
}

/// The `metadata` Baton writes into a send the app left without one, to
/// match its echo: never shown to any app.
const BATON_MARKER: &str = "baton:send:";

/// The whole body of the single-item delivery at `position`, for its item
/// `item` read from the record at `item_position`: as it came, or put
/// together with the item's own bytes where the body refers to them. `None`
/// when it cannot be put together exactly, was kept without its words, or
/// holds Baton's marker.
pub fn original(
    body: &RawBody,
    position: u64,
    item: &Item,
    item_position: u64,
) -> Option<Arc<Vec<u8>>> {
    let bytes = body.bytes_with(|after| {
        (position.checked_add(u64::from(after)) == Some(item_position))
            .then(|| item.raw_text.clone())
            .flatten()
    })?;
    // A delivery kept without its words (late, or carrying another shard's
    // page) reads as an empty body: nothing to forward as it came.
    if bytes.is_empty() {
        return None;
    }
    let marked = bytes
        .windows(BATON_MARKER.len())
        .any(|w| w == BATON_MARKER.as_bytes());
    (!marked).then(|| Arc::new(bytes))
}

/// Takes Baton's marker out of an echo: the app sent no metadata.
fn without_marker(mut raw: Value) -> Value {
    let marked = raw["message"]["metadata"]
        .as_str()
        .is_some_and(|m| m.starts_with(BATON_MARKER));
    if marked {
        if let Some(message) = raw.get_mut("message").and_then(Value::as_object_mut) {
            message.remove("metadata");
        }
    }
    raw
}

/// Type names that can matter to dispatch; everything else is skipped
/// without decoding.
const RELEVANT_TYPES: [&str; 7] = [
    "WebhookDeliveryReceived",
    "MessagingEventReceived",
    "MessagingEventCopyReceived",
    "PolicyEnforcementReceived",
    "AppRolesChanged",
    "UnattributedItemReceived",
    "DispatchRedriveRequested",
];

/// Classifies `record` for `app`, opening its content with `vault`. Records
/// that fail to decode are not items (ingress keeps unknown kinds verbatim
/// in its own events), so they are skipped with a warning rather than
/// blocking the app forever. Items whose content was erased are dropped:
/// a backend cannot act on a message whose words are gone, and the thread's
/// later items keep their order.
pub fn classify(record: &Record, app: &AppId, vault: &KeyVault) -> Option<Relevant> {
    if !RELEVANT_TYPES.contains(&record.type_name.as_str()) {
        return None;
    }
    // A raw delivery (the whole body) matters only to the app that received
    // it: its stream says which, so the others do not decode it.
    if record.type_name == "WebhookDeliveryReceived"
        && record.stream.strip_prefix("deliveries/") != Some(app.as_str())
    {
        return None;
    }
    let (event, keys, raw_text) = match orchestration::record::open(Some(vault), record) {
        Ok(opened) if opened.content.is_gone() => {
            tracing::info!(position = record.position, content = ?opened.content, "dispatch drops an item whose content is gone");
            return None;
        }
        Ok(opened) => (opened.event, opened.keys, opened.raw_text),
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
            raw: without_marker(raw),
            original: None,
            raw_text: raw_text.clone(),
            keys: keys.clone(),
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
        // Meta's bytes can be forwarded as they came only for a delivery of
        // one item, and only without Baton's marker in them (checked again
        // once the body is whole, see `original`).
        Event::WebhookDeliveryReceived(e) if e.app == *app => match (e.parsed, &e.body) {
            (
                ParseOutcome::Parsed {
                    entries: 1,
                    items: 1,
                },
                RawBody::Text(body) | RawBody::Spliced { skeleton: body, .. },
            ) if !body.contains(BATON_MARKER) => Some(Relevant::SingleItemDelivery {
                id: record.correlation_id?,
                position: record.position,
                body: e.body,
            }),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use domain::events::Cut;
    use domain::{PageId, Psid, ThreadKey};

    use super::*;

    fn item(raw_text: Option<&str>) -> Item {
        let thread = ThreadKey::new(PageId::parse("1").unwrap(), Psid::parse("u1").unwrap());
        Item {
            position: 7,
            key: OrderKey::Thread(thread),
            channel: Channel::Messaging,
            recorded_at_ms: 0,
            raw: Value::Null,
            original: None,
            raw_text: raw_text.map(str::to_owned),
            keys: Vec::new(),
        }
    }

    /// A single-item delivery goes out as it came only when it can be put
    /// together exactly: its item at the position its body names, a body
    /// that was kept (not one left without its words), and no marker.
    #[test]
    fn the_original_body_is_whole_or_not_at_all() {
        let spliced = RawBody::Spliced {
            skeleton: r#"{"entry":[{"messaging":[]}]}"#.into(),
            cuts: vec![Cut { at: 24, after: 2 }],
        };
        let exact = r#"{"entry":[{"messaging":[{"t":"caf\u00e9"}]}]}"#;
        let whole = original(&spliced, 5, &item(Some(r#"{"t":"caf\u00e9"}"#)), 7);
        assert_eq!(whole.as_deref().map(Vec::as_slice), Some(exact.as_bytes()));
        assert_eq!(
            original(&spliced, 5, &item(Some("{}")), 8),
            None,
            "another position"
        );
        assert_eq!(
            original(&spliced, 5, &item(None), 7),
            None,
            "the item's bytes are gone"
        );
        let marked = item(Some(r#"{"metadata":"baton:send:1"}"#));
        assert_eq!(original(&spliced, 5, &marked, 7), None, "Baton's marker");
        assert_eq!(
            original(&RawBody::Text(String::new()), 5, &item(None), 6),
            None,
            "kept without its words"
        );
        let text = RawBody::Text(exact.into());
        assert_eq!(
            original(&text, 5, &item(None), 6)
                .as_deref()
                .map(Vec::as_slice),
            Some(exact.as_bytes())
        );
    }
}
