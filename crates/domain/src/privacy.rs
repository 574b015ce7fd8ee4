//! Which parts of a fact are a person's content, and whose.
//!
//! Content is what a person wrote or was sent, or what identifies what they
//! did beyond the facts Baton decides on: message text, postback and quick
//! reply payloads, referral refs, the raw items and deliveries, the messages
//! apps send, and the metadata apps pass each other. The log stores it
//! sealed under the person's keys (see `event_log::KeyVault`), apart from
//! the facts, so erasing it leaves every ownership and decision fact, and
//! the hash chain, intact. Ids (mids, PSIDs), times, kinds, channels and
//! Baton's own send marker stay clear: the rules fold them.
//!
//! This module is pure: it names the content of each event type and moves
//! it between an event's JSON and a separate content object.

use serde_json::{Map, Value};

use crate::events::Event;
use crate::ids::{PageId, Psid, ThreadKey};

/// The content fields of an event type, as dotted paths into its JSON.
/// Types not listed carry no content.
pub fn content_paths(type_name: &str) -> &'static [&'static str] {
    match type_name {
        "MessagingEventReceived" => &[
            "raw",
            "event.text",
            "event.payload",
            "event.title",
            "event.referral.ref",
            "event.optin.ref",
            "event.optin.payload",
            "event.authorization_code",
        ],
        "MessagingEventCopyReceived" | "UnattributedItemReceived" => &["raw"],
        "WebhookDeliveryReceived" => &["body"],
        "SendAccepted" => &["send.payload"],
        // The person's opt-in payload, copied from their item.
        "OneTimeTokenIssued" => &["payload"],
        "CommandRefused" => &["command.payload", "command.metadata"],
        "ControlCallAccepted" => &["command.metadata"],
        "ThreadControlPassed"
        | "ThreadControlTaken"
        | "ThreadControlRequested"
        | "ThreadControlReleased"
        | "ThreadMetadataPassed" => &["metadata"],
        _ => &[],
    }
}

/// The person a thread is with, as the vault names them: `<page>/<psid>`.
pub fn subject(thread: &ThreadKey) -> String {
    format!("{}/{}", thread.page, thread.psid)
}

/// The people an event's content is about, when the event itself says: the
/// thread's person, or the sender of an item Baton could not attribute to a
/// configured page. A raw delivery names nobody by itself; its recorder
/// knows whose items it carries.
pub fn subjects(event: &Event) -> Vec<ThreadKey> {
    if content_paths(event.type_name()).is_empty() {
        return Vec::new();
    }
    if let Some(thread) = event.thread() {
        return vec![thread.clone()];
    }
    match event {
        Event::UnattributedItemReceived(e) => raw_person(&e.page, &e.raw).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The person of a raw `messaging[]` item: its sender, or its recipient
/// when the page sent it (an echo).
pub fn raw_person(page: &PageId, raw: &Value) -> Option<ThreadKey> {
    let id = |side: &str| raw.get(side)?.get("id")?.as_str().map(str::to_owned);
    let sender = id("sender")?;
    let person = if sender == page.as_str() {
        id("recipient")?
    } else {
        sender
    };
    Some(ThreadKey::new(page.clone(), Psid::parse(&person).ok()?))
}

/// Takes the content of an event's JSON out into an object keyed by path.
/// `None` when the event carries none (every path absent or null).
pub fn take_content(type_name: &str, payload: &mut Value) -> Option<Value> {
    let mut content = Map::new();
    for path in content_paths(type_name) {
        if let Some(value) = remove_path(payload, path) {
            if !value.is_null() {
                content.insert((*path).to_owned(), value);
            }
        }
    }
    (!content.is_empty()).then_some(Value::Object(content))
}

/// Puts content taken by [`take_content`] back where it came from.
pub fn put_content(payload: &mut Value, content: Value) {
    let Value::Object(content) = content else {
        return;
    };
    for (path, value) in content {
        insert_path(payload, &path, value);
    }
}

fn remove_path(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (walk(value, parent)?, last),
        None => (value, path),
    };
    parent.as_object_mut()?.remove(last)
}

fn walk<'a>(mut value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    for key in path.split('.') {
        value = value.as_object_mut()?.get_mut(key)?;
    }
    Some(value)
}

fn insert_path(value: &mut Value, path: &str, new: Value) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => match walk(value, parent) {
            Some(parent) => (parent, last),
            None => return,
        },
        None => (value, path),
    };
    if let Some(object) = parent.as_object_mut() {
        object.insert(last.to_owned(), new);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_leaves_and_returns_in_place() {
        let original = json!({
            "thread": {"page": "1", "psid": "2"},
            "event": {"kind": "message", "mid": "m.1", "text": "my address is 5 Elm St",
                      "referral": {"ref": "promo-42", "source": "ADS"}},
            "raw": {"sender": {"id": "2"}, "message": {"text": "my address is 5 Elm St"}},
        });
        let mut facts = original.clone();
        let content = take_content("MessagingEventReceived", &mut facts).unwrap();
        let text = facts.to_string();
        assert!(!text.contains("Elm"), "{text}");
        assert!(!text.contains("promo-42"), "{text}");
        assert!(text.contains("m.1") && text.contains("ADS"), "{text}");
        put_content(&mut facts, content);
        assert_eq!(facts, original);
    }

    #[test]
    fn events_without_content_give_none() {
        let mut facts = json!({"thread": {"page": "1", "psid": "2"}, "at": 5});
        assert_eq!(take_content("ThreadRouted", &mut facts), None);
        let mut no_text = json!({"event": {"kind": "read", "watermark": 1}, "raw": null});
        assert_eq!(take_content("MessagingEventReceived", &mut no_text), None);
    }

    #[test]
    fn the_person_of_an_echo_is_its_recipient() {
        let page = PageId::parse("10").unwrap();
        let echo = json!({"sender": {"id": "10"}, "recipient": {"id": "77"}});
        assert_eq!(raw_person(&page, &echo).unwrap().psid.as_str(), "77");
        let message = json!({"sender": {"id": "77"}, "recipient": {"id": "10"}});
        assert_eq!(raw_person(&page, &message).unwrap().psid.as_str(), "77");
        assert_eq!(raw_person(&page, &json!({"optin": {}})), None);
    }
}
