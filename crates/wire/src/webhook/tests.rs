use super::*;
use proptest::prelude::*;
use serde_json::json;

const NOW: Timestamp = Timestamp::from_millis(1_793_523_600_000);

fn parse(v: Value) -> Envelope {
    parse_envelope(&serde_json::to_vec(&v).unwrap(), NOW).unwrap()
}

#[test]
fn every_entry_and_item_on_both_channels() {
    let env = parse(json!({
        "object": "page",
        "entry": [
            {"id": "p1", "time": 1_793_523_600_000i64, "messaging": [
                {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_001i64, "message": {"mid": "m1", "text": "hi"}},
                {"sender": {"id": 42}, "recipient": {"id": "p1"}, "timestamp": "1793523600002", "postback": {"title": "Go", "payload": "GO", "mid": "m2"}}
            ]},
            {"id": 777, "time": 1_793_523_600_000i64, "standby": [
                {"sender": {"id": "u2"}, "recipient": {"id": "777"}, "timestamp": 1_793_523_600_003i64, "read": {"watermark": 1_793_523_600_000i64}}
            ]}
        ]
    }));
    assert_eq!(env.entries.len(), 2);
    assert_eq!(env.item_count(), 3);
    let first = &env.entries[0].items[0];
    assert_eq!(first.channel, Channel::Messaging);
    match &first.kind {
        ItemKind::Thread {
            thread,
            dedupe_key,
            event,
            at,
        } => {
            assert_eq!(thread.psid.as_str(), "u1");
            assert_eq!(dedupe_key, "p1:mid:m1");
            assert_eq!(at.millis(), 1_793_523_600_001);
            assert!(matches!(event, InboundEvent::Message { .. }));
        }
        other => panic!("{other:?}"),
    }
    match &env.entries[0].items[1].kind {
        ItemKind::Thread {
            thread, event, at, ..
        } => {
            assert_eq!(thread.psid.as_str(), "42", "numeric ids become strings");
            assert_eq!(at.millis(), 1_793_523_600_002, "string timestamps are read");
            assert!(matches!(
                event,
                InboundEvent::Postback {
                    payload: Some(_),
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.entries[1].page.as_str(), "777");
    assert_eq!(env.entries[1].items[0].channel, Channel::Standby);
}

#[test]
fn echoes_belong_to_the_recipient_thread() {
    let env = parse(
        json!({"object": "page", "entry": [{"id": "p1", "messaging": [
            {"sender": {"id": "p1"}, "recipient": {"id": "u1"}, "timestamp": 1, "message": {"is_echo": true, "mid": "m9", "app_id": 263_902_037_430_900u64, "metadata": "x"}}
        ]}]}),
    );
    match &env.entries[0].items[0].kind {
        ItemKind::Thread {
            thread,
            event: InboundEvent::Echo { app_id, .. },
            at,
            ..
        } => {
            assert_eq!(thread.psid.as_str(), "u1");
            assert!(app_id.as_ref().unwrap().is_page_inbox());
            assert_eq!(at.millis(), 1000, "a small number is seconds");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn postback_copies_share_a_key_without_the_payload() {
    let a = parse(
        json!({"object": "page", "entry": [{"id": "p1", "messaging": [{"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 5, "postback": {"title": "Go", "payload": "GO"}}]}]}),
    );
    let b = parse(
        json!({"object": "page", "entry": [{"id": "p1", "standby": [{"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 5, "postback": {"title": "Go"}}]}]}),
    );
    assert_eq!(
        a.entries[0].items[0].kind.dedupe_key(),
        b.entries[0].items[0].kind.dedupe_key()
    );
}

#[test]
fn handovers_roles_policy_and_optins() {
    let env = parse(
        json!({"object": "page", "entry": [{"id": "p1", "messaging": [
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "pass_thread_control": {"previous_owner_app_id": null, "new_owner_app_id": 1001, "metadata": "hi"}},
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "take_thread_control": {"previous_owner_app_id": "1001", "new_owner_app_id": "263902037430900"}},
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "request_thread_control": {"requested_owner_app_id": 1002}},
            {"recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "app_roles": {"1001": ["primary_receiver"]}},
            {"recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "policy_enforcement": {"action": "block", "reason": "spam"}},
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "optin": {"type": "one_time_notif_req", "payload": "stock", "one_time_notif_token": "tok"}},
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 1_793_523_600_000i64, "game_play": {"game_id": 1}}
        ]}]}),
    );
    let kinds: Vec<&ItemKind> = env.entries[0].items.iter().map(|i| &i.kind).collect();
    assert!(matches!(
        kinds[0],
        ItemKind::Thread {
            event: InboundEvent::Handover {
                notice: HandoverNotice::Passed { from: None, .. }
            },
            ..
        }
    ));
    assert!(matches!(
        kinds[1],
        ItemKind::Thread {
            event: InboundEvent::Handover {
                notice: HandoverNotice::Taken { from: Some(_), .. }
            },
            ..
        }
    ));
    assert!(matches!(
        kinds[2],
        ItemKind::Thread {
            event: InboundEvent::Handover {
                notice: HandoverNotice::Requested { .. }
            },
            ..
        }
    ));
    assert!(matches!(kinds[3], ItemKind::AppRoles { .. }));
    assert!(matches!(
        kinds[4],
        ItemKind::PolicyEnforcement {
            action: EnforcementAction::Block,
            ..
        }
    ));
    assert!(matches!(
        kinds[5],
        ItemKind::Thread {
            event: InboundEvent::Optin {
                optin: Optin::OneTimeNotification { .. }
            },
            ..
        }
    ));
    assert!(
        matches!(kinds[6], ItemKind::Thread { event: InboundEvent::Unknown { key: Some(k) }, .. } if k == "game_play")
    );
}

#[test]
fn bodies_that_are_not_envelopes() {
    assert!(matches!(
        parse_envelope(b"{\"object\":", NOW),
        Err(EnvelopeError::NotJson(_))
    ));
    assert!(matches!(
        parse_envelope(b"[]", NOW),
        Err(EnvelopeError::NotAnEnvelope(_))
    ));
    assert!(matches!(
        parse_envelope(b"{\"object\":\"page\"}", NOW),
        Err(EnvelopeError::NotAnEnvelope(_))
    ));
    assert!(matches!(
        parse_envelope(b"{\"entry\":[{\"time\":1}]}", NOW),
        Err(EnvelopeError::NotAnEnvelope(_))
    ));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        parse_envelope(deep.as_bytes(), NOW),
        Err(EnvelopeError::NotJson(_))
    ));
}

#[test]
fn malformed_items_are_kept_not_dropped() {
    let env = parse(
        json!({"object": "page", "entry": [{"id": "p1", "messaging": [
        42, {"message": {"mid": "x"}}, {"sender": {"id": "a/b"}, "message": {"mid": "y"}}
    ], "standby": {"not": "a list"}}]}),
    );
    assert_eq!(env.item_count(), 4);
    assert!(env.entries[0]
        .items
        .iter()
        .all(|i| matches!(i.kind, ItemKind::Unattributed { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The parser never panics, whatever the bytes.
    #[test]
    fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_envelope(&bytes, NOW);
    }

    /// Nor on mangled envelopes: a valid one with one byte changed or cut short.
    #[test]
    fn never_panics_on_mangled_envelopes(pos in 0usize..400, byte in any::<u8>(), cut in any::<bool>()) {
        let mut body = serde_json::to_vec(&json!({"object": "page", "entry": [{"id": "p1", "time": 1, "messaging": [
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 2, "message": {"mid": "m1", "text": "hé", "quick_reply": {"payload": "Q"}}},
            {"sender": {"id": "u1"}, "recipient": {"id": "p1"}, "timestamp": 3, "optin": {"type": "one_time_notif_req", "one_time_notif_token": "t"}}
        ]}]})).unwrap();
        let pos = pos % body.len();
        if cut { body.truncate(pos) } else { body[pos] = byte }
        let _ = parse_envelope(&body, NOW);
    }
}
