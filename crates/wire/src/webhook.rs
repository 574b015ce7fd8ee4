//! Webhook envelopes: `{"object", "entry": [{"id", "time", "messaging": [...],
//! "standby": [...]}]}`. Every entry and every item is read; each item is
//! classified by which key it carries, and kept verbatim beside its meaning.
//! A malformed item becomes an `Unattributed` item (kept, never dropped, never
//! a panic); only a body that is not an envelope at all is an error.

use std::collections::BTreeMap;

use domain::events::{Channel, EnforcementAction, HandoverNotice, InboundEvent, Optin, Referral};
use domain::{AppId, PageId, Psid, ThreadKey, Timestamp};
use serde_json::Value;

/// Why a body is not a webhook envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not a webhook envelope: {0}")]
    NotAnEnvelope(String),
}

/// A parsed delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub object: String,
    pub entries: Vec<Entry>,
}

impl Envelope {
    pub fn item_count(&self) -> usize {
        self.entries.iter().map(|e| e.items.len()).sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub page: PageId,
    pub time: Option<Timestamp>,
    pub items: Vec<Item>,
}

/// One `messaging[]` or `standby[]` item.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub channel: Channel,
    /// The item exactly as delivered.
    pub raw: Value,
    pub kind: ItemKind,
}

/// What an item is about.
// Items are short-lived values on the ingress path: boxing the common
// variant to shrink the rare ones would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ItemKind {
    /// A user event, an echo or a handover webhook on a thread.
    Thread {
        thread: ThreadKey,
        at: Timestamp,
        dedupe_key: String,
        event: InboundEvent,
    },
    /// Legacy `app_roles`.
    AppRoles {
        at: Timestamp,
        dedupe_key: String,
        roles: BTreeMap<AppId, Vec<String>>,
    },
    PolicyEnforcement {
        at: Timestamp,
        dedupe_key: String,
        action: EnforcementAction,
        reason: Option<String>,
    },
    /// Anything that names no thread or cannot be read: kept verbatim.
    Unattributed {
        at: Timestamp,
        dedupe_key: String,
        why: String,
    },
}

impl ItemKind {
    /// Meta's time for the item.
    pub fn at(&self) -> Timestamp {
        match self {
            ItemKind::Thread { at, .. }
            | ItemKind::AppRoles { at, .. }
            | ItemKind::PolicyEnforcement { at, .. }
            | ItemKind::Unattributed { at, .. } => *at,
        }
    }

    pub fn dedupe_key(&self) -> &str {
        match self {
            ItemKind::Thread { dedupe_key, .. }
            | ItemKind::AppRoles { dedupe_key, .. }
            | ItemKind::PolicyEnforcement { dedupe_key, .. }
            | ItemKind::Unattributed { dedupe_key, .. } => dedupe_key,
        }
    }
}

/// Reads an id Meta sent as a string or a number.
pub fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a timestamp sent as a number or a string, in milliseconds or (as in
/// Meta's odd test payloads) in seconds: anything below 10^11 is seconds.
pub fn timestamp(v: &Value) -> Option<Timestamp> {
    let raw = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        _ => return None,
    };
    if raw < 0 {
        return None;
    }
    Some(Timestamp::from_millis(if raw < 100_000_000_000 {
        raw.saturating_mul(1000)
    } else {
        raw
    }))
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// A short stable digest of a value, for dedupe keys of items without an id.
fn digest(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

/// Parses a raw body. `received_at` stands in for missing timestamps.
pub fn parse_envelope(body: &[u8], received_at: Timestamp) -> Result<Envelope, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
    let Value::Object(map) = &value else {
        return Err(EnvelopeError::NotAnEnvelope(
            "the top level is not an object".into(),
        ));
    };
    let object = map
        .get("object")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(entries) = map.get("entry").and_then(Value::as_array) else {
        return Err(EnvelopeError::NotAnEnvelope("no \"entry\" array".into()));
    };
    let mut parsed = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Some(page) = entry
            .get("id")
            .and_then(id_string)
            .and_then(|s| PageId::parse(s).ok())
        else {
            return Err(EnvelopeError::NotAnEnvelope(format!(
                "entry[{i}] has no valid \"id\""
            )));
        };
        let time = entry.get("time").and_then(timestamp);
        let mut items = Vec::new();
        for (key, channel) in [
            ("messaging", Channel::Messaging),
            ("standby", Channel::Standby),
        ] {
            match entry.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for raw in list {
                        let at_default = time.unwrap_or(received_at);
                        items.push(Item {
                            channel,
                            kind: classify(&page, raw, at_default),
                            raw: raw.clone(),
                        });
                    }
                }
                Some(other) => items.push(Item {
                    channel,
                    kind: ItemKind::Unattributed {
                        at: time.unwrap_or(received_at),
                        dedupe_key: format!("{page}:odd:{}", digest(other)),
                        why: format!("entry[{i}].{key} is not an array"),
                    },
                    raw: other.clone(),
                }),
            }
        }
        parsed.push(Entry { page, time, items });
    }
    Ok(Envelope {
        object,
        entries: parsed,
    })
}

fn referral(v: &Value) -> Referral {
    Referral {
        reference: str_field(v, "ref"),
        source: str_field(v, "source"),
        kind: str_field(v, "type"),
        ad_id: v.get("ad_id").and_then(id_string),
    }
}

fn app_id(v: Option<&Value>) -> Option<AppId> {
    v.and_then(id_string).and_then(|s| AppId::parse(s).ok())
}

/// Classifies one item by the key it carries.
fn classify(page: &PageId, raw: &Value, at_default: Timestamp) -> ItemKind {
    let at = raw
        .get("timestamp")
        .and_then(timestamp)
        .unwrap_or(at_default);
    let unattributed = |why: &str| ItemKind::Unattributed {
        at,
        dedupe_key: format!("{page}:unattributed:{}", digest(raw)),
        why: why.to_owned(),
    };
    if !raw.is_object() {
        return unattributed("item is not an object");
    }
    if let Some(pe) = raw
        .get("policy_enforcement")
        .or_else(|| raw.get("policy-enforcement"))
    {
        let action = match pe.get("action").and_then(Value::as_str) {
            Some("warning") => EnforcementAction::Warning,
            Some("block") => EnforcementAction::Block,
            Some("unblock") => EnforcementAction::Unblock,
            _ => EnforcementAction::Other,
        };
        return ItemKind::PolicyEnforcement {
            at,
            dedupe_key: format!("{page}:policy:{}:{}", at.millis(), digest(pe)),
            action,
            reason: str_field(pe, "reason"),
        };
    }
    if let Some(roles) = raw.get("app_roles").and_then(Value::as_object) {
        let roles = roles
            .iter()
            .filter_map(|(app, r)| {
                let app = AppId::parse(app.as_str()).ok()?;
                let list = r
                    .as_array()?
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect();
                Some((app, list))
            })
            .collect();
        return ItemKind::AppRoles {
            at,
            dedupe_key: format!("{page}:app_roles:{}:{}", at.millis(), digest(raw)),
            roles,
        };
    }

    let sender = raw
        .get("sender")
        .and_then(|s| s.get("id"))
        .and_then(id_string);
    let recipient = raw
        .get("recipient")
        .and_then(|s| s.get("id"))
        .and_then(id_string);
    let message = raw.get("message");
    let is_echo = message
        .and_then(|m| m.get("is_echo"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Echoes travel page → user: the user is the recipient.
    let psid = if is_echo { recipient } else { sender };
    let Some(psid) = psid.and_then(|p| Psid::parse(p).ok()) else {
        return unattributed("item names no valid user (sender.id / recipient.id)");
    };
    let thread = ThreadKey::new(page.clone(), psid);
    let key = |kind: &str, rest: &str| format!("{page}:{kind}:{}:{rest}", thread.psid);

    if let Some((name, notice)) = [
        "pass_thread_control",
        "take_thread_control",
        "request_thread_control",
    ]
    .iter()
    .find_map(|name| raw.get(*name).map(|v| (*name, v)))
    {
        let metadata = str_field(notice, "metadata");
        let previous = app_id(notice.get("previous_owner_app_id"));
        let parsed = match name {
            "pass_thread_control" => {
                app_id(notice.get("new_owner_app_id")).map(|to| HandoverNotice::Passed {
                    from: previous.clone(),
                    to,
                    metadata,
                })
            }
            "take_thread_control" => {
                app_id(notice.get("new_owner_app_id")).map(|by| HandoverNotice::Taken {
                    from: previous.clone(),
                    by,
                    metadata,
                })
            }
            _ => app_id(notice.get("requested_owner_app_id"))
                .map(|by| HandoverNotice::Requested { by, metadata }),
        };
        return match parsed {
            Some(notice) => ItemKind::Thread {
                dedupe_key: key(name, &format!("{}:{}", at.millis(), digest(raw))),
                thread,
                at,
                event: InboundEvent::Handover { notice },
            },
            None => unattributed("handover webhook without a valid app id"),
        };
    }

    let (event, dedupe_key) = if let Some(m) = message {
        let mid = str_field(m, "mid").unwrap_or_else(|| format!("nomid-{}", digest(raw)));
        if is_echo {
            (
                InboundEvent::Echo {
                    mid: mid.clone(),
                    app_id: app_id(m.get("app_id")),
                    metadata: str_field(m, "metadata"),
                },
                format!("{page}:echo:{mid}"),
            )
        } else if let Some(payload) = m
            .get("quick_reply")
            .and_then(|q| q.get("payload"))
            .and_then(Value::as_str)
        {
            (
                InboundEvent::QuickReply {
                    mid: mid.clone(),
                    text: str_field(m, "text"),
                    payload: payload.to_owned(),
                },
                format!("{page}:mid:{mid}"),
            )
        } else {
            let attachment_types = m
                .get("attachments")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| str_field(x, "type")).collect())
                .unwrap_or_default();
            (
                InboundEvent::Message {
                    mid: mid.clone(),
                    text: str_field(m, "text"),
                    attachment_types,
                    reply_to: m.get("reply_to").and_then(|r| str_field(r, "mid")),
                    referral: m.get("referral").map(referral),
                },
                format!("{page}:mid:{mid}"),
            )
        }
    } else if let Some(p) = raw.get("postback") {
        let mid = str_field(p, "mid");
        // Standby copies lack the payload, so the key must not use it.
        let dedupe = match &mid {
            Some(mid) => format!("{page}:mid:{mid}"),
            None => key(
                "postback",
                &format!(
                    "{}:{}",
                    at.millis(),
                    str_field(p, "title").unwrap_or_default()
                ),
            ),
        };
        (
            InboundEvent::Postback {
                mid,
                title: str_field(p, "title"),
                payload: str_field(p, "payload"),
                referral: p.get("referral").map(referral),
            },
            dedupe,
        )
    } else if let Some(r) = raw.get("reaction") {
        let mid = str_field(r, "mid").unwrap_or_default();
        let action = str_field(r, "action").unwrap_or_else(|| "react".into());
        let reaction = str_field(r, "reaction").or_else(|| str_field(r, "emoji"));
        let dedupe = key(
            "reaction",
            &format!(
                "{mid}:{action}:{}:{}",
                reaction.clone().unwrap_or_default(),
                at.millis()
            ),
        );
        (
            InboundEvent::Reaction {
                mid,
                action,
                reaction,
            },
            dedupe,
        )
    } else if let Some(r) = raw.get("read") {
        let watermark = r
            .get("watermark")
            .and_then(timestamp)
            .map_or(0, Timestamp::millis);
        (
            InboundEvent::Read { watermark },
            key("read", &watermark.to_string()),
        )
    } else if let Some(d) = raw.get("delivery") {
        let watermark = d
            .get("watermark")
            .and_then(timestamp)
            .map_or(0, Timestamp::millis);
        let mids: Vec<String> = d
            .get("mids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (
            InboundEvent::Delivery { watermark, mids },
            key("delivery", &watermark.to_string()),
        )
    } else if let Some(r) = raw.get("referral") {
        let referral = referral(r);
        let dedupe = key(
            "referral",
            &format!(
                "{}:{}",
                at.millis(),
                referral.reference.clone().unwrap_or_default()
            ),
        );
        (InboundEvent::Referral { referral }, dedupe)
    } else if let Some(o) = raw.get("optin") {
        let optin = match str_field(o, "type").as_deref() {
            Some("one_time_notif_req") => match str_field(o, "one_time_notif_token") {
                Some(token) => Optin::OneTimeNotification {
                    token,
                    payload: str_field(o, "payload"),
                },
                None => return unattributed("one-time notification opt-in without a token"),
            },
            Some("notification_messages") => Optin::NotificationMessages {
                token: str_field(o, "notification_messages_token"),
                status: str_field(o, "notification_messages_status"),
            },
            None => Optin::Plugin {
                reference: str_field(o, "ref"),
                user_ref: str_field(o, "user_ref"),
            },
            Some(other) => Optin::Other {
                name: other.to_owned(),
            },
        };
        (
            InboundEvent::Optin { optin },
            key("optin", &format!("{}:{}", at.millis(), digest(o))),
        )
    } else if let Some(a) = raw.get("account_linking") {
        let status = str_field(a, "status").unwrap_or_default();
        let dedupe = key("account_linking", &format!("{}:{status}", at.millis()));
        (
            InboundEvent::AccountLinking {
                status,
                authorization_code: str_field(a, "authorization_code"),
            },
            dedupe,
        )
    } else {
        let known = ["sender", "recipient", "timestamp"];
        let unknown_key = raw
            .as_object()
            .and_then(|o| o.keys().find(|k| !known.contains(&k.as_str())).cloned());
        let dedupe = key("unknown", &format!("{}:{}", at.millis(), digest(raw)));
        (InboundEvent::Unknown { key: unknown_key }, dedupe)
    };
    ItemKind::Thread {
        thread,
        at,
        dedupe_key,
        event,
    }
}

#[cfg(test)]
mod tests;
