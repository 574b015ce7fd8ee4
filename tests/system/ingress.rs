//! Webhook ingress against the real server: the handshake, signatures, body
//! limits, dedupe of retries and of copies, batches, malformed bodies, replay.

use domain::events::Channel;
use domain::Event;
use event_log::EventStore;
use serde_json::json;
use server::projections::{Projections, State};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_handshake_answers_the_challenge_and_refuses_the_rest() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let get = |q: &str| {
        baton
            .http
            .get(baton.url(&format!("/webhooks/{BOT}?{q}")))
            .send()
    };
    let ok = get("hub.mode=subscribe&hub.verify_token=verify-bot&hub.challenge=1158201444")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for q in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=verify-bot&hub.challenge=1",
        "hub.mode=subscribe&hub.verify_token=verify-human&hub.challenge=1",
        "hub.mode=subscribe&hub.verify_token=verify-bot",
        "",
    ] {
        assert_eq!(get(q).await.unwrap().status(), 403, "{q}");
    }
    let unknown = baton
        .http
        .get(baton.url("/webhooks/4242?hub.mode=subscribe"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(baton.head().await, 0, "a handshake records nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_message_is_one_fact_once_durable() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    let res = baton.post_signed(BOT, BOT_SECRET, &body).await;
    assert_eq!(res.status(), 200);
    let events = baton.events().await;
    let names: Vec<&str> = events.iter().map(Event::type_name).collect();
    assert_eq!(
        names,
        [
            "WebhookDeliveryReceived",
            "MessagingEventReceived",
            "ThreadRouted"
        ]
    );
    match &events[1] {
        Event::MessagingEventReceived(m) => {
            assert_eq!(m.delivery.app.as_str(), BOT);
            assert_eq!(m.delivery.channel, Channel::Messaging);
            assert_eq!(m.raw["message"]["mid"], "m.1", "the item is kept verbatim");
            assert!(m.window.is_some());
        }
        other => panic!("{other:?}"),
    }
    // The 200 came after the projections folded the facts (read-your-writes).
    let state = baton.running.state.projections.read();
    assert_eq!(state.position, 3);
    assert_eq!(state.thread_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_delivery_with_several_entries_and_items_is_fully_recorded() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let t = T0.millis();
    let body = envelope(json!([
        {"id": PAGE, "time": t, "messaging": [
            message_item("u1", "m.1", t),
            message_item("u2", "m.2", t + 1),
            {"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": t + 2, "postback": {"mid": "m.3", "title": "Go", "payload": "GO"}},
            {"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": t + 3, "read": {"watermark": t + 1}}
        ]},
        {"id": PAGE, "time": t, "standby": [message_item("u3", "m.4", t + 4)]},
        {"id": "9990009", "time": t, "messaging": [message_item("u4", "m.5", t + 5)]}
    ]));
    assert_eq!(
        baton.post_signed(BOT, BOT_SECRET, &body).await.status(),
        200
    );
    let events = baton.events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.type_name() == "MessagingEventReceived")
            .count(),
        5
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.type_name() == "UnattributedItemReceived")
            .count(),
        1,
        "an item for a page Baton does not serve is kept, not dropped"
    );
    match &events[0] {
        Event::WebhookDeliveryReceived(d) => {
            assert_eq!(
                d.parsed,
                domain::events::ParseOutcome::Parsed {
                    entries: 3,
                    items: 6
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_delivery_is_not_duplicated() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    for _ in 0..3 {
        assert_eq!(
            baton.post_signed(BOT, BOT_SECRET, &body).await.status(),
            200
        );
    }
    // The same item in a different delivery (another batch) is still one fact.
    let other = envelope(
        json!([{"id": PAGE, "time": T0.millis() + 9, "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    assert_eq!(
        baton.post_signed(BOT, BOT_SECRET, &other).await.status(),
        200
    );
    assert_eq!(baton.count("MessagingEventReceived").await, 1);
    assert_eq!(baton.count("MessagingEventCopyReceived").await, 0);
    assert_eq!(
        baton.count("WebhookDeliveryReceived").await,
        2,
        "identical bytes are kept once"
    );
    assert_eq!(
        baton.running.state.metrics.deliveries_of(BOT, "duplicate"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_for_two_apps_are_one_fact_with_both_deliveries() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let t = T0.millis();
    let owner_copy =
        envelope(json!([{"id": PAGE, "time": t, "messaging": [message_item("u1", "m.1", t)]}]));
    let standby_copy =
        envelope(json!([{"id": PAGE, "time": t, "standby": [message_item("u1", "m.1", t)]}]));
    // Both apps' deliveries race; either may land first.
    let (a, b) = tokio::join!(
        baton.post_signed(BOT, BOT_SECRET, &owner_copy),
        baton.post_signed(HUMAN, HUMAN_SECRET, &standby_copy)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let events = baton.events().await;
    let received: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::MessagingEventReceived(m) => {
                Some((m.delivery.app.to_string(), m.delivery.channel))
            }
            Event::MessagingEventCopyReceived(m) => {
                Some((m.delivery.app.to_string(), m.delivery.channel))
            }
            _ => None,
        })
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(baton.count("MessagingEventReceived").await, 1);
    assert!(received.contains(&(BOT.to_owned(), Channel::Messaging)));
    assert!(received.contains(&(HUMAN.to_owned(), Channel::Standby)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_missing_signatures_are_refused_and_store_nothing() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    let post = |sig256: Option<String>, sig1: Option<String>| {
        let mut req = baton
            .http
            .post(baton.url(&format!("/webhooks/{BOT}")))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(s) = sig256 {
            req = req.header("x-hub-signature-256", s);
        }
        if let Some(s) = sig1 {
            req = req.header("x-hub-signature", s);
        }
        req.send()
    };
    let cases = [
        (None, None),
        (Some("sha256=deadbeef".to_owned()), None),
        (
            Some(wire::signature::sign_sha256(HUMAN_SECRET.as_bytes(), &body)),
            None,
        ),
        (None, Some(wire::signature::sign_sha1(b"wrong", &body))),
        (
            Some(wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body)),
            Some("sha1=00".to_owned()),
        ),
        (
            Some(wire::signature::sign_sha256(
                BOT_SECRET.as_bytes(),
                b"another body",
            )),
            None,
        ),
    ];
    for (s256, s1) in cases {
        let res = post(s256.clone(), s1.clone()).await.unwrap();
        assert_eq!(res.status(), 401, "{s256:?} {s1:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_signature");
        assert!(!body["message"].as_str().unwrap().contains(BOT_SECRET));
    }
    assert_eq!(
        baton.head().await,
        0,
        "nothing is stored for a bad signature"
    );
    let metrics = baton
        .http
        .get(baton.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "baton_webhook_signature_failures_total{{app=\"{BOT}\"}} 6"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_wrong_content_types_are_refused() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let big = vec![b' '; 70_000];
    let res = baton.post_signed(BOT, BOT_SECRET, &big).await;
    assert_eq!(res.status(), 413);
    let body = envelope(json!([]));
    let res = baton
        .http
        .post(baton.url(&format!("/webhooks/{BOT}")))
        .header("content-type", "text/plain")
        .header(
            "x-hub-signature-256",
            wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = baton.post_signed("4242", BOT_SECRET, &body).await;
    assert_eq!(res.status(), 404);
    assert_eq!(baton.head().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_is_not_json_is_recorded_and_acknowledged() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let truncated = br#"{"object":"page","entry":[{"id":"5550001","messaging":[{"sender""#;
    assert_eq!(
        baton.post_signed(BOT, BOT_SECRET, truncated).await.status(),
        200,
        "Meta must not retry it forever"
    );
    let events = baton.events().await;
    assert_eq!(events.len(), 1);
    match &events[0] {
        Event::WebhookDeliveryReceived(d) => assert!(matches!(
            d.parsed,
            domain::events::ParseOutcome::NotJson { .. }
        )),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_mangled_payloads_never_crashes_the_server() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let t = T0.millis();
    let good = String::from_utf8(envelope(json!([{"id": PAGE, "time": t, "messaging": [
        message_item("u1", "m.1", t),
        {"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": t, "pass_thread_control": {"previous_owner_app_id": null, "new_owner_app_id": HUMAN}},
        {"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": t, "optin": {"type": "one_time_notif_req", "one_time_notif_token": "tok", "payload": "p"}}
    ]}])))
    .unwrap();
    let mut corpus: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{\"entry\":5}".to_vec(),
        b"{\"object\":\"page\",\"entry\":[{\"id\":null}]}".to_vec(),
        b"{\"object\":\"page\",\"entry\":[{\"id\":\"5550001\",\"messaging\":[null,1,\"x\",{}]}]}".to_vec(),
        b"{\"object\":\"page\",\"entry\":[{\"id\":\"5550001\",\"messaging\":[{\"sender\":{\"id\":{}},\"message\":[]}]}]}".to_vec(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x01],
        good.replace("5550001", "").into_bytes(),
        good.replace("\"timestamp\"", "\"timestamp\":\"soon\",\"x\"").into_bytes(),
        good.replace("m.1", "m.1\u{0000}").into_bytes(),
    ];
    // Every truncation and a sweep of single-byte changes of a good body.
    for cut in (0..good.len()).step_by(7) {
        corpus.push(good.as_bytes()[..cut].to_vec());
    }
    for pos in (0..good.len()).step_by(11) {
        let mut b = good.clone().into_bytes();
        b[pos] = b"}{\"0:,[]x\\"[pos % 10];
        corpus.push(b);
    }
    for body in &corpus {
        let status = baton.post_signed(BOT, BOT_SECRET, body).await.status();
        assert!(
            status == 200 || status.is_client_error(),
            "{status} for {:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        baton
            .http
            .get(baton.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The good body still works after all that, and the chain verifies.
    assert_eq!(
        baton
            .post_signed(BOT, BOT_SECRET, good.as_bytes())
            .await
            .status(),
        200
    );
    event_log::verify(baton.running.state.store.as_ref())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_log_from_zero_equals_the_live_projections() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let t = T0.millis();
    let deliveries = [
        (BOT, BOT_SECRET, "messaging", message_item("u1", "m.1", t)),
        (HUMAN, HUMAN_SECRET, "standby", message_item("u1", "m.1", t)),
        (
            HUMAN,
            HUMAN_SECRET,
            "messaging",
            json!({"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": t + 5, "pass_thread_control": {"previous_owner_app_id": BOT, "new_owner_app_id": HUMAN, "metadata": "to a human"}}),
        ),
        (
            BOT,
            BOT_SECRET,
            "standby",
            message_item("u1", "m.2", t + 10),
        ),
        (
            HUMAN,
            HUMAN_SECRET,
            "messaging",
            message_item("u1", "m.2", t + 10),
        ),
        (
            BOT,
            BOT_SECRET,
            "messaging",
            json!({"sender": {"id": "u2"}, "recipient": {"id": PAGE}, "timestamp": t + 20, "optin": {"type": "one_time_notif_req", "one_time_notif_token": "tok-1", "payload": "restock"}}),
        ),
        (
            BOT,
            BOT_SECRET,
            "messaging",
            json!({"recipient": {"id": PAGE}, "timestamp": t + 30, "policy_enforcement": {"action": "warning", "reason": "careful"}}),
        ),
    ];
    for (app, secret, channel, item) in deliveries {
        let body = envelope(json!([{"id": PAGE, "time": t, channel: [item]}]));
        assert_eq!(baton.post_signed(app, secret, &body).await.status(), 200);
    }
    let live = baton.running.state.projections.read().clone();
    assert_eq!(live.thread_count(), 2);
    let thread = live
        .ledgers()
        .find(|l| l.key.psid.as_str() == "u1")
        .unwrap();
    assert_eq!(thread.control.owner().map(|a| a.as_str()), Some(HUMAN));
    let config = server::Config::parse(&baton.config_text, "test.toml", |_| None).unwrap();
    let replayed = Projections::new(State::new(config.pages.values().map(|(_, p)| p.clone())));
    replayed
        .catch_up(baton.running.state.store.as_ref())
        .await
        .unwrap();
    assert_eq!(*replayed.read(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    baton.post_signed(BOT, BOT_SECRET, &body).await;
    assert_eq!(
        baton
            .http
            .get(baton.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        baton
            .http
            .get(baton.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = baton
        .http
        .get(baton.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        &format!("baton_webhook_deliveries_total{{app=\"{BOT}\",outcome=\"accepted\"}} 1"),
        "baton_append_latency_seconds_count 1",
        "baton_append_queue_depth 0",
        "baton_log_head_position 3",
        "baton_projection_position 3",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_body_is_cut_off_and_stores_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let mut conn = tokio::net::TcpStream::connect(baton.running.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /webhooks/{BOT} HTTP/1.1\r\nHost: baton\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"object\":\"pa"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // Then nothing more: the server gives up after body_timeout_ms (300 ms here).
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"));
    assert_eq!(baton.head().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_act_on_a_page_it_is_not_on() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let res = baton
        .http
        .post(baton.url(&format!("/v21.0/{OTHER_PAGE}/pass_thread_control")))
        .bearer_auth("baton-human")
        .json(&json!({"recipient": {"id": "u1"}, "target_app_id": BOT}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        (
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (json!(100), json!(33))
    );
    // Nor read another page's threads.
    let res = baton
        .http
        .get(baton.url(&format!("/api/threads/{OTHER_PAGE}/u1")))
        .bearer_auth("baton-human")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(baton.head().await, 0, "nothing recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_deliver_facts_for_a_page_it_is_not_on() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    // The bot signs (with its own secret) items claiming to come from a page it does not serve.
    let body = envelope(
        json!([{"id": OTHER_PAGE, "time": T0.millis(), "messaging": [
            {"sender": {"id": "u9"}, "recipient": {"id": OTHER_PAGE}, "timestamp": T0.millis(), "message": {"mid": "m.x", "text": "hi"}},
            {"recipient": {"id": OTHER_PAGE}, "timestamp": T0.millis(), "policy_enforcement": {"action": "block", "reason": "forged"}},
            {"recipient": {"id": OTHER_PAGE}, "timestamp": T0.millis(), "app_roles": {BOT: ["primary_receiver"]}}
        ]}]),
    );
    assert_eq!(
        baton.post_signed(BOT, BOT_SECRET, &body).await.status(),
        200,
        "kept, not retried forever"
    );
    let events = baton.events().await;
    let names: Vec<&str> = events.iter().map(Event::type_name).collect();
    assert_eq!(
        names,
        [
            "WebhookDeliveryReceived",
            "UnattributedItemReceived",
            "UnattributedItemReceived",
            "UnattributedItemReceived"
        ]
    );
    let state = baton.running.state.projections.read().clone();
    assert!(
        state.thread_count() == 0,
        "no thread state from another page's items"
    );
    let other = state
        .pages
        .get(&domain::PageId::parse(OTHER_PAGE).unwrap())
        .unwrap();
    assert!(other.blocked.is_none(), "a forged block changes nothing");
}

/// The raw delivery is stored once (issue 17): the items its facts carry are
/// cut out of its body and kept in those facts, and the log gives the body
/// back byte for byte: Meta's escapes (`\/`, `\u`), its whitespace and key
/// order, two entries, standby beside messaging, two people, an item Meta
/// repeated in the same delivery (one fact: the repeat stays in the body), a
/// page-level item (kept in its own fact) and an echo carrying Baton's
/// marker (left in the body). A retry of the same bytes stores nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_stored_once_and_comes_back_byte_for_byte() {
    let baton = TestBaton::start(&config_toml("http://127.0.0.1:9", &cr_mode())).await;
    let ts = T0.millis();
    let single = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":{ts},"messaging":[{{"sender":{{"id":"u1"}},"recipient":{{"id":"{PAGE}"}},"timestamp":{ts},"message":{{"mid":"m_1","text":"caf\u00e9 see https:\/\/example.com\/a"}}}}]}}]}}"#
    );
    let item = |psid: &str, mid: &str, at: i64| {
        format!(
            r#"{{ "recipient": {{"id":"{PAGE}"}}, "sender": {{"id":"{psid}"}}, "timestamp": {at}, "message": {{"mid":"{mid}","text":"x\/y"}} }}"#
        )
    };
    let repeated = item("u2", "m_2", ts + 1);
    let enforcement = format!(
        r#"{{"recipient":{{"id":"{PAGE}"}},"timestamp":{},"policy-enforcement":{{"action":"block","reason":"spam"}}}}"#,
        ts + 5
    );
    let many = format!(
        "{{\"object\": \"page\",\n \"entry\": [\n  {{\"id\": \"{PAGE}\", \"time\": {t}, \"messaging\": [{a}, {repeated}, {repeated}, {enforcement}],\n   \"standby\": [{b}]}},\n  {{\"id\": \"{PAGE}\", \"time\": {t}, \"messaging\": [ {c} ]}}\n ]\n}}\n",
        t = ts + 10,
        a = item("u3", "m_3", ts + 2),
        b = item("u3", "m_4", ts + 3),
        c = item("u2", "m_5", ts + 4),
    );
    let echo = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":{t},"messaging":[{{"sender":{{"id":"{PAGE}"}},"recipient":{{"id":"u1"}},"timestamp":{t},"message":{{"is_echo":true,"app_id":{BOT},"metadata":"baton:send:01a232b9-fec7-7059-8113-2f46b3b3470d","mid":"m_6","text":"hi"}}}}]}}]}}"#,
        t = ts + 20
    );
    let bodies = [single.as_str(), many.as_str(), echo.as_str()];
    for body in bodies {
        let res = baton.post_signed(BOT, BOT_SECRET, body.as_bytes()).await;
        assert_eq!(res.status(), 200, "{body}");
    }
    let head = baton.head().await;
    let retry = baton.post_signed(BOT, BOT_SECRET, single.as_bytes()).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(baton.head().await, head, "a retry stores nothing");

    let store = baton.running.state.store.as_ref();
    let records = store.read_all(1, 10_000).await.unwrap();
    let deliveries: Vec<u64> = records
        .iter()
        .filter(|r| r.type_name == "WebhookDeliveryReceived")
        .map(|r| r.position)
        .collect();
    assert_eq!(deliveries.len(), 3);
    for (position, body) in deliveries.iter().zip(bodies) {
        let back = orchestration::audit::delivery_body(store, *position)
            .await
            .unwrap()
            .expect("the delivery is there");
        assert_eq!(String::from_utf8(back).unwrap(), body, "byte for byte");
    }
    // What each delivery's record keeps of its body.
    let kept = |position: u64| {
        let record = records.iter().find(|r| r.position == position).unwrap();
        match orchestration::record::open(Some(store.vault()), record)
            .unwrap()
            .event
        {
            Event::WebhookDeliveryReceived(d) => d.body,
            other => panic!("{other:?}"),
        }
    };
    let skeleton = |body: domain::events::RawBody| match body {
        domain::events::RawBody::Spliced { skeleton, cuts } => (skeleton, cuts.len()),
        other => panic!("not stored once: {other:?}"),
    };
    let (rest, cuts) = skeleton(kept(deliveries[0]));
    assert_eq!(cuts, 1);
    assert!(!rest.contains("m_1") && !rest.contains("caf"), "{rest}");
    let (rest, cuts) = skeleton(kept(deliveries[1]));
    assert_eq!(cuts, 4, "m_3, m_4, m_5 and one of the two m_2");
    assert_eq!(rest.matches("m_2").count(), 1, "the repeat stays: {rest}");
    assert!(
        rest.contains("policy-enforcement"),
        "kept by its own fact and here: {rest}"
    );
    assert!(!rest.contains("m_3") && !rest.contains("m_4") && !rest.contains("m_5"));
    assert_eq!(
        kept(deliveries[2]),
        domain::events::RawBody::Text(echo.clone()),
        "an item with Baton's marker stays in its body"
    );
    // A body that kept nothing but Meta's frame is stored clear; one that
    // kept an item stays sealed.
    let payload = |position: u64| {
        let record = records.iter().find(|r| r.position == position).unwrap();
        String::from_utf8(record.payload.clone()).unwrap()
    };
    assert!(payload(deliveries[0]).contains(r#""skeleton":"{\"object\":\"page\""#));
    assert!(
        !payload(deliveries[0]).contains("sealed"),
        "{}",
        payload(deliveries[0])
    );
    assert!(payload(deliveries[1]).contains("sealed"));
    assert!(!payload(deliveries[1]).contains("skeleton"));
    // Each cut item is in its fact, as Meta's bytes had it.
    let facts: Vec<String> = records
        .iter()
        .filter(|r| r.type_name == "MessagingEventReceived")
        .filter_map(|r| {
            orchestration::record::open(Some(store.vault()), r)
                .unwrap()
                .raw_text
        })
        .collect();
    assert!(facts
        .iter()
        .any(|f| f.contains(r#"https:\/\/example.com\/a"#)));
    assert!(facts.contains(&item("u3", "m_4", ts + 3)), "{facts:?}");

    // A frame that carries more than Meta's frame stays sealed whole: words
    // hidden in a repeated key, a free-text time, a key Baton does not
    // know. A `null` standby array is no reason not to cut.
    let hostile = [
        format!(
            r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":{{"note":"SECRET-a1 12 Main St"}},"time":{ts},"messaging":[{}]}}]}}"#,
            item("u4", "m_7", ts + 30)
        ),
        format!(
            r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":"SECRET-a2","messaging":[{}]}}]}}"#,
            item("u4", "m_8", ts + 31)
        ),
        format!(
            r#"{{"object":"page","note":"SECRET-a3","entry":[{{"id":"{PAGE}","time":{ts},"messaging":[{}]}}]}}"#,
            item("u4", "m_9", ts + 32)
        ),
    ];
    let framed = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":{ts},"standby":null,"messaging":[{}]}}]}}"#,
        item("u4", "m_10", ts + 33)
    );
    for body in hostile.iter().chain([&framed]) {
        let res = baton.post_signed(BOT, BOT_SECRET, body.as_bytes()).await;
        assert_eq!(res.status(), 200, "{body}");
    }
    let records = store.read_all(1, 10_000).await.unwrap();
    let later: Vec<&event_log::Record> = records
        .iter()
        .filter(|r| r.type_name == "WebhookDeliveryReceived")
        .skip(3)
        .collect();
    assert_eq!(later.len(), 4);
    for (record, body) in later.iter().zip(hostile.iter().chain([&framed])) {
        let payload = String::from_utf8(record.payload.clone()).unwrap();
        let back = orchestration::audit::delivery_body(store, record.position)
            .await
            .unwrap();
        assert_eq!(back.as_deref(), Some(body.as_bytes()), "byte for byte");
        if body.contains("SECRET") {
            assert!(payload.contains("sealed"), "{payload}");
            assert!(!payload.contains("SECRET"), "{payload}");
        } else {
            assert!(payload.contains("skeleton"), "cut, and clear: {payload}");
        }
    }

    // Erasing u1's content takes the item out of the first delivery for
    // good (its frame, clear, has none of u1's words); the others are whole.
    let res = baton
        .http
        .post(baton.url("/api/admin/erasures"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"page_id": PAGE, "psid": "u1"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let back = |position: u64| orchestration::audit::delivery_body(store, position);
    assert_eq!(back(deliveries[0]).await.unwrap(), None);
    assert_eq!(
        back(deliveries[1]).await.unwrap().as_deref(),
        Some(many.as_bytes())
    );
}
