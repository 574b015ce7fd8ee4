//! Pins the stored encoding of every event type: one sample per type, encoded
//! and compared byte for byte with `tests/snapshots/<Type>.v<N>.json`. A change
//! to the schema shows up as a diff of those files to review. Run with
//! `BATON_UPDATE_SNAPSHOTS=1` to rewrite them after an intended change (and
//! add an upcaster if stored data must still be read).

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use domain::events::*;
use domain::{
    Command, CommandId, DecodeError, InlineControl, MessagingType, Recipient, Rejection,
    RejectionKind, SendContent, SendMessage,
};
use serde_json::json;
use support::*;

fn cid(s: &str) -> CommandId {
    CommandId::parse(s).unwrap()
}

fn sample_send() -> SendMessage {
    SendMessage {
        send_id: cid("send-1"),
        app: human(),
        recipient: Recipient::Psid(thread().psid),
        messaging_type: Some(MessagingType::MessageTag),
        tag: Some("HUMAN_AGENT".into()),
        content: SendContent::Message {
            metadata: Some("outbox-1".into()),
        },
        thread_control: Some(InlineControl::Release),
        payload: json!({"message": {"text": "We are on it"}, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}),
        idempotency_key: None,
        graph_version: None,
        request_digest: None,
    }
}

fn samples() -> Vec<Event> {
    let t = thread();
    let delivery = DeliveryCopy {
        app: bot(),
        channel: Channel::Messaging,
    };
    vec![
        WebhookDeliveryReceived {
            delivery_id: "0190d7a4-0000-7000-8000-000000000001".into(),
            app: bot(),
            received_at: T0,
            signature: SignatureCheck {
                sha256: SignatureResult::Valid,
                sha1: SignatureResult::Absent,
            },
            body: RawBody::Text(r#"{"object":"page","entry":[]}"#.into()),
            parsed: ParseOutcome::Parsed { entries: 0, items: 0 },
        }
        .into(),
        MessagingEventReceived {
            thread: t.clone(),
            at: T0,
            dedupe_key: "mid.1".into(),
            delivery: delivery.clone(),
            event: message("mid.1"),
            window: domain::policy::window_grant(&message("mid.1"), T0),
            raw: json!({"sender": {"id": "user-1"}, "recipient": {"id": "5550001"}, "timestamp": T0.millis(), "message": {"mid": "mid.1", "text": "hi"}}),
            distrusted_time: false,
        }
        .into(),
        MessagingEventCopyReceived {
            thread: t.clone(),
            at: T0,
            dedupe_key: "mid.1".into(),
            delivery: DeliveryCopy {
                app: human(),
                channel: Channel::Standby,
            },
            raw: json!({"message": {"mid": "mid.1", "text": "hi"}}),
        }
        .into(),
        UnattributedItemReceived {
            page: page_id(),
            at: T0,
            delivery: delivery.clone(),
            raw: json!({"game_play": {"game_id": "1"}}),
        }
        .into(),
        PolicyEnforcementReceived {
            page: page_id(),
            at: T0,
            action: EnforcementAction::Block,
            reason: Some("spam".into()),
            delivery: delivery.clone(),
            raw: json!({"policy_enforcement": {"action": "block", "reason": "spam"}}),
        }
        .into(),
        ThreadRouted {
            thread: t.clone(),
            at: T0,
            owner: bot(),
            dedupe_key: "mid.1".into(),
        }
        .into(),
        ThreadControlPassed {
            thread: t.clone(),
            at: T0,
            from: None,
            to: inbox(),
            metadata: Some("needs a human".into()),
            origin: FactOrigin::Call { call_id: cid("call-1") },
        }
        .into(),
        ThreadControlTaken {
            thread: t.clone(),
            at: T0,
            from: Some(human()),
            by: bot(),
            metadata: None,
            origin: FactOrigin::Webhook { app: human() },
        }
        .into(),
        ThreadControlRequested {
            thread: t.clone(),
            at: T0,
            by: inbox(),
            told: Some(bot()),
            metadata: Some("agent available".into()),
            granted: false,
            origin: FactOrigin::Webhook { app: bot() },
        }
        .into(),
        ThreadControlReleased {
            thread: t.clone(),
            at: T0,
            by: human(),
            metadata: None,
            origin: FactOrigin::Call { call_id: cid("call-2") },
        }
        .into(),
        ThreadControlExtended {
            thread: t.clone(),
            at: T0,
            by: human(),
            duration_secs: 172_800,
            until: hours(48),
            origin: FactOrigin::Call { call_id: cid("call-3") },
        }
        .into(),
        ThreadControlExpired {
            thread: t.clone(),
            at: hours(25),
            owner: human(),
            expired_at: hours(24),
        }
        .into(),
        AppRolesChanged {
            page: page_id(),
            at: T0,
            roles: BTreeMap::from([(bot(), vec!["primary_receiver".to_owned()]), (human(), vec!["secondary_receiver".to_owned()])]),
            delivery: Some(delivery.clone()),
            raw: json!({"app_roles": {"1001": ["primary_receiver"]}}),
        }
        .into(),
        OwnershipDriftDetected {
            thread: t.clone(),
            at: T0,
            ledger: ControlView::Owner { app: bot() },
            observed: ControlView::Owner { app: inbox() },
            evidence: DriftEvidence::Echo {
                app: inbox(),
                mid: "mid.9".into(),
            },
        }
        .into(),
        StaleEvidenceIgnored {
            thread: t.clone(),
            at: hours(2),
            evidence_at: T0,
            claimed: ControlView::Owner { app: bot() },
            ledger: ControlView::Owner { app: human() },
            ledger_since: hours(1),
            evidence: DriftEvidence::MessagingDelivery { app: bot() },
        }
        .into(),
        OwnershipConfirmed {
            thread: t.clone(),
            at: hours(3),
            owner: ControlView::Owner { app: human() },
        }
        .into(),
        ControlCallAccepted {
            thread: t.clone(),
            at: T0,
            command: Command::PassThreadControl {
                call_id: cid("call-1"),
                app: bot(),
                target: Some(inbox()),
                metadata: Some("needs a human".into()),
            },
            basis: ControlBasis {
                mode: "conversation_routing".into(),
                before: ControlView::Owner { app: bot() },
                rule: ControlRule::OwnerMayPass,
            },
        }
        .into(),
        ControlCallCompleted {
            thread: t.clone(),
            at: T0,
            call_id: cid("call-1"),
            outcome: GraphOutcome::Failed {
                error: GraphError {
                    code: 100,
                    subcode: Some(2_534_037),
                    message: "(#100) calling app is not the thread owner".into(),
                    fbtrace_id: Some("AbC".into()),
                    is_transient: false,
                },
            },
        }
        .into(),
        SendAccepted {
            thread: t.clone(),
            at: T0,
            send: sample_send(),
            basis: SendBasis {
                mode: "conversation_routing".into(),
                owner: OwnerBasis::ThreadOwner,
                control: ControlView::Owner { app: human() },
                window: WindowBasis::HumanAgent {
                    last_user_action_at: T0,
                    closes_at: hours(168),
                },
            },
            attempts_recorded: true,
        }
        .into(),
        CommandRefused {
            thread: t.clone(),
            at: T0,
            command: Command::TakeThreadControl {
                call_id: cid("call-4"),
                app: other(),
                metadata: None,
            },
            rejection: Rejection::new(RejectionKind::TakeNotSupported, "take_thread_control is not supported"),
        }
        .into(),
        SendOutcomeRecorded {
            thread: t.clone(),
            at: T0,
            send_id: cid("send-1"),
            outcome: SendOutcome::Sent {
                message_id: "m_abc".into(),
                recipient_id: Some("user-1".into()),
            },
        }
        .into(),
        SendAttempted {
            thread: t.clone(),
            at: T0,
            send_id: cid("send-1"),
            attempt: 1,
        }
        .into(),
        SendRetryScheduled {
            thread: t.clone(),
            at: T0,
            send_id: cid("send-1"),
            attempt: 1,
            error: GraphError {
                code: 613,
                subcode: None,
                message: "(#613) Calls to this api have exceeded the rate limit.".into(),
                fbtrace_id: Some("A1b2".into()),
                is_transient: false,
            },
            retry_at: hours(1),
        }
        .into(),
        OneTimeTokenIssued {
            thread: t.clone(),
            at: T0,
            token: "otn-1".into(),
            payload: Some("back-in-stock".into()),
            expires_at: hours(365 * 24),
        }
        .into(),
        OneTimeTokenConsumed {
            thread: t.clone(),
            at: hours(48),
            token: "otn-1".into(),
            send_id: cid("send-2"),
        }
        .into(),
        OneTimeTokenReleased {
            thread: t.clone(),
            at: hours(48),
            token: "otn-1".into(),
            send_id: cid("send-2"),
        }
        .into(),
        DispatchDeadLettered {
            app: bot(),
            position: 42,
            thread: Some(t.clone()),
            at: hours(2),
            attempts: 9,
            last_error: "HTTP 503 from http://127.0.0.1:3001/webhook".into(),
        }
        .into(),
        DispatchRedriveRequested {
            app: bot(),
            position: 42,
            at: hours(3),
            by: "cli".into(),
        }
        .into(),
        MessengerProfileChanged {
            page: page_id(),
            app: bot(),
            at: hours(4),
            change: ProfileChange::Set {
                properties: json!({"greeting": [{"locale": "default", "text": "Hi!"}]}),
            },
        }
        .into(),
        AttachmentUploaded {
            page: page_id(),
            app: bot(),
            at: hours(4),
            attachment_id: "1857777774821032".into(),
            kind: Some("image".into()),
            bytes: 2048,
            sha256: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
            url: None,
        }
        .into(),
        ThreadMetadataPassed {
            thread: t.clone(),
            app: human(),
            at: hours(4),
            metadata: "order 1234, refund asked".into(),
        }
        .into(),
        PrivateReplySent {
            page: page_id(),
            app: bot(),
            at: hours(4),
            comment_id: "5550001_1_1".into(),
            recipient_id: Some("user-1".into()),
            message_id: Some("m_9".into()),
        }
        .into(),
        ContentErased {
            thread: t.clone(),
            at: hours(5),
            by: "meta:111".into(),
            request: "del-7f3a".into(),
        }
        .into(),
        ContentExpired {
            page: page_id(),
            at: hours(6),
            before: hours(0),
            retention_days: 90,
            keys: 12,
        }
        .into(),
        AppSubscriptionLost {
            page: page_id(),
            app: bot(),
            at: hours(7),
            last_fields: vec!["messages".into(), "standby".into()],
        }
        .into(),
        AppSubscriptionRestored {
            page: page_id(),
            app: bot(),
            at: hours(8),
            fields: vec!["messages".into(), "standby".into()],
            source: SubscriptionSource::Resubscribe {
                by: "api:admin".into(),
            },
        }
        .into(),
        PageTokenRejected {
            page: page_id(),
            app: human(),
            at: hours(9),
            edge: "messages".into(),
            code: 190,
            subcode: Some(460),
            message: "Error validating access token: The session has been invalidated".into(),
            fbtrace_id: Some("AbC123".into()),
        }
        .into(),
        PageTokenAccepted {
            page: page_id(),
            app: human(),
            at: hours(10),
            edge: "messages".into(),
        }
        .into(),
    ]
}

fn snapshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

#[test]
fn every_event_type_has_a_sample() {
    let names: Vec<&str> = samples().iter().map(Event::type_name).collect();
    assert_eq!(
        names,
        Event::TYPE_NAMES,
        "add a sample (and a snapshot) for each new event type"
    );
}

#[test]
fn encodings_match_the_pinned_snapshots() {
    let update = std::env::var_os("BATON_UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for event in samples() {
        let encoded = event.encode();
        let path = snapshot_dir().join(format!(
            "{}.v{}.json",
            encoded.type_name, encoded.schema_version
        ));
        let mut actual = String::from_utf8(encoded.payload.clone()).unwrap();
        actual.push('\n');
        if update {
            std::fs::create_dir_all(snapshot_dir()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => mismatches.push(format!(
                "{}:\n  pinned: {expected}  now:    {actual}",
                path.display()
            )),
            Err(e) => mismatches.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        mismatches.is_empty(),
        "encodings changed (BATON_UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn pinned_snapshots_decode_to_the_samples() {
    if std::env::var_os("BATON_UPDATE_SNAPSHOTS").is_some() {
        return; // the other test is rewriting the files right now
    }
    for event in samples() {
        let path = snapshot_dir().join(format!(
            "{}.v{}.json",
            event.type_name(),
            event.schema_version()
        ));
        let bytes = std::fs::read(&path).unwrap();
        let decoded = Event::decode(
            event.type_name(),
            event.schema_version(),
            bytes.trim_ascii_end(),
        )
        .unwrap();
        assert_eq!(decoded, event);
    }
}

/// WebhookDeliveryReceived v2 only added the spliced body: the pinned v1
/// record reads as it did, and a spliced body comes back whole with its
/// items, and not without one.
#[test]
fn a_v1_delivery_still_reads_and_a_spliced_body_puts_its_items_back() {
    let v1 = std::fs::read(snapshot_dir().join("WebhookDeliveryReceived.v1.json")).unwrap();
    let old = Event::decode("WebhookDeliveryReceived", 1, v1.trim_ascii_end()).unwrap();
    assert_eq!(old, samples()[0]);

    let body = RawBody::Spliced {
        skeleton: r#"{"entry":[{"messaging":[,]}]}"#.into(),
        cuts: vec![Cut { at: 24, after: 1 }, Cut { at: 25, after: 3 }],
    };
    let Event::WebhookDeliveryReceived(mut delivery) = samples()[0].clone() else {
        panic!("the first sample is a delivery");
    };
    delivery.body = body.clone();
    let event = Event::WebhookDeliveryReceived(delivery);
    let enc = event.encode();
    assert_eq!(enc.schema_version, 2);
    assert!(String::from_utf8_lossy(&enc.payload).contains(r#""encoding":"spliced""#));
    assert_eq!(
        Event::decode(enc.type_name, 2, &enc.payload).unwrap(),
        event
    );
    let item = |after: u32| match after {
        1 => Some(r#"{"a":"\/"}"#.to_owned()),
        3 => Some("{ }".to_owned()),
        _ => None,
    };
    assert_eq!(
        body.bytes_with(item).unwrap(),
        br#"{"entry":[{"messaging":[{"a":"\/"},{ }]}]}"#
    );
    assert_eq!(
        body.bytes_with(|after| item(after).filter(|_| after != 3)),
        None
    );
    let beyond = RawBody::Spliced {
        skeleton: "{}".into(),
        cuts: vec![Cut { at: 9, after: 1 }],
    };
    assert_eq!(beyond.bytes_with(item), None, "a cut past the skeleton");
    assert_eq!(
        RawBody::Base64("AAE=".into()).bytes_with(item).unwrap(),
        [0, 1]
    );
}

#[test]
fn decoding_refuses_what_it_cannot_read() {
    let sample = &samples()[5];
    let enc = sample.encode();
    assert!(matches!(
        Event::decode("NoSuchEvent", 1, &enc.payload),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        Event::decode(enc.type_name, 2, &enc.payload),
        Err(DecodeError::FutureVersion {
            found: 2,
            known: 1,
            ..
        })
    ));
    assert!(matches!(
        Event::decode(enc.type_name, 0, &enc.payload),
        Err(DecodeError::NoUpcaster { .. })
    ));
    assert!(matches!(
        Event::decode(enc.type_name, 1, b"{\"thread\":"),
        Err(DecodeError::BadPayload { .. })
    ));
    let err = Event::decode(enc.type_name, 1, b"{}").unwrap_err();
    assert!(
        err.to_string()
            .contains("ThreadRouted v1 payload is not valid"),
        "{err}"
    );
}

#[test]
fn streams_are_named_by_thread_page_or_delivering_app() {
    let s = samples();
    assert_eq!(s[0].stream_name(), "deliveries/1001");
    assert_eq!(s[1].stream_name(), "thread/5550001/user-1");
    assert_eq!(s[4].stream_name(), "page/5550001");
}
