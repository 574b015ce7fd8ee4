//! Trust boundaries and hostile input: each test is an attack that worked
//! against Baton before, tried again. Rows of docs/security.md.

use std::net::SocketAddr;

use event_log::EventStore;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::*;
use crate::support::*;

fn graphless() -> BatonToml {
    BatonToml::new("http://127.0.0.1:9")
}

fn addr(baton: &TestBaton) -> SocketAddr {
    baton.running.addr
}

/// Writes raw bytes on a fresh connection and reads the answer until the
/// server closes it (or answers and the body is complete).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_off_everywhere_and_a_bad_token_is_refused_before_the_body() {
    let baton = TestBaton::start(&graphless().render()).await;
    let a = addr(&baton);
    // A wrong token in the query: refused at once, not a byte of body read.
    let (status, body) = raw(
        a,
        b"POST /v21.0/me/messages?access_token=nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    )
    .await;
    assert_eq!(
        (status, json_of(&body)["error"]["code"].clone()),
        (400, json!(190)),
        "{body}"
    );
    // A right token and a body that never comes: cut off after body_timeout_ms, in each surface's shape.
    let (status, body) = raw(
        a,
        b"POST /v21.0/me/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer baton-bot\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(json_of(&body)["error"]["code"], 2, "Meta's shape: {body}");
    for (path, token) in [
        ("/api/sends/check".to_owned(), "baton-bot"),
        (format!("/api/apps/{BOT}/redrive"), "admin-secret"),
    ] {
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{");
        let (status, body) = raw(a, head.as_bytes()).await;
        assert_eq!(status, 408, "{path}: {body}");
        assert_eq!(
            json_of(&body)["error"],
            "body_timeout",
            "{path}: Baton's shape: {body}"
        );
    }
    // Meanwhile health and signed webhooks were answered.
    let res = baton.http.get(baton.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_slow_connections_do_not_stop_intake() {
    let baton = TestBaton::start(&graphless().render()).await;
    let a = addr(&baton);
    let slow: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(raw(
                a,
                b"POST /v21.0/me/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer baton-bot\r\nContent-Length: 50\r\n\r\n",
            ))
        })
        .collect();
    // While they hang, a signed webhook is recorded.
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    assert_eq!(
        baton.post_signed(BOT, BOT_SECRET, &body).await.status(),
        200
    );
    for s in slow {
        assert_eq!(s.await.unwrap().0, 408);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_headers_that_are_malformed_or_duplicated_fail_even_beside_a_valid_one() {
    let baton = TestBaton::start(&graphless().render()).await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    let good1 = wire::signature::sign_sha1(BOT_SECRET.as_bytes(), &body);
    let good256 = wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body);
    let post = |headers: Vec<(&'static str, reqwest::header::HeaderValue)>| {
        let mut req = baton
            .http
            .post(baton.url(&format!("/webhooks/{BOT}")))
            .header("content-type", "application/json")
            .body(body.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let bytes = |b: &[u8]| reqwest::header::HeaderValue::from_bytes(b).unwrap();
    // A non-text SHA-256 header beside a valid SHA-1 one.
    let res = post(vec![
        ("x-hub-signature-256", bytes(b"sha256=\xff\xfe")),
        ("x-hub-signature", bytes(good1.as_bytes())),
    ])
    .await
    .unwrap();
    assert_eq!(res.status(), 401);
    // The valid header twice, or a valid and a wrong copy.
    for second in [good256.as_bytes(), b"sha256=00".as_slice()] {
        let res = post(vec![
            ("x-hub-signature-256", bytes(good256.as_bytes())),
            ("x-hub-signature-256", bytes(second)),
        ])
        .await
        .unwrap();
        assert_eq!(res.status(), 401);
    }
    assert_eq!(
        baton.count("WebhookDeliveryReceived").await,
        0,
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_in_metas_shape_and_recorded_nowhere() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let head = stack.baton.head().await;
    let cases: Vec<(&str, Value)> = vec![
        (
            "extend_thread_control",
            json!({"recipient": {"id": "u1"}, "duration": 0}),
        ),
        (
            "extend_thread_control",
            json!({"recipient": {"id": "u1"}, "duration": 7 * 86_400 + 1}),
        ),
        (
            "messages",
            json!({"recipient": {"id": "u1"}, "messaging_type": 7, "message": {"text": "hi"}}),
        ),
        (
            "pass_thread_control",
            json!({"recipient": {"id": "u1"}, "target_app_id": HUMAN, "metadata": {"x": "y".repeat(20_000)}}),
        ),
        (
            "pass_thread_control",
            json!({"recipient": {"id": "u1"}, "target_app_id": HUMAN, "metadata": "m".repeat(1000)}),
        ),
        (
            "messages",
            json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "hi", "attachment_note": "x".repeat(5000)}}),
        ),
    ];
    for (edge, body) in cases {
        let (status, answer) = stack.graph_post("baton-bot", edge, body).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (400, json!(100)),
            "{edge}: {answer}"
        );
    }
    // Duplicate JSON keys: refused rather than letting the last copy win.
    let res = stack
        .baton
        .http
        .post(stack.baton.url("/v21.0/me/messages"))
        .bearer_auth("baton-bot")
        .header("content-type", "application/json")
        .body(r#"{"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "a", "text": "b"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let answer: Value = res.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate"),
        "{answer}"
    );
    assert_eq!(stack.baton.head().await, head, "nothing was recorded");
    assert_eq!(stack.upstream_calls("/").await, 0, "nothing reached Meta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_surfaces_json_shape() {
    let baton = TestBaton::start(&graphless().render()).await;
    let http = &baton.http;
    // 404 and 405, Graph-shaped under /v{n}/, Baton's shape elsewhere.
    let res = http.get(baton.url("/v21.0/me/a/b")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], 100);
    let res = http.get(baton.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");
    let res = http
        .put(baton.url("/v21.0/me/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], 100);
    let res = http.delete(baton.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    // 413 on the Graph API, in Meta's shape.
    let res = http
        .post(baton.url("/v21.0/me/messages"))
        .bearer_auth("baton-bot")
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], 100);
    // The dry run takes bodies up to max_body_bytes (it used to stop at a
    // 256 KiB default whatever the configuration): 320 KB under a 1 MiB limit.
    let roomy = TestBaton::start(&graphless().max_body_bytes(1 << 20).render()).await;
    let padding = "p".repeat(4000);
    let fields: serde_json::Map<String, Value> = (0..80)
        .map(|i| (format!("pad{i}"), json!(padding)))
        .collect();
    let mut big =
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}});
    big.as_object_mut().unwrap().extend(fields);
    let res = http
        .post(roomy.url("/api/sends/check"))
        .bearer_auth("baton-bot")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    // Redrive with a body that is not JSON: Baton's error, not actix's text.
    let res = http
        .post(baton.url(&format!("/api/apps/{BOT}/redrive")))
        .bearer_auth("admin-secret")
        .body("position=3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_bounded_bound_to_their_request_and_serialised() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    for u in ["u1", "u2", "u3"] {
        stack.user_says(u, "hello").await;
    }
    let long = "k".repeat(256);
    let (status, body) = stack
        .send_with_key("baton-bot", text("u1", "hi"), Some(&long))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    let (status, _) = stack
        .send_with_key("baton-bot", text("u1", "first"), Some("k1"))
        .await;
    assert_eq!(status, 200);
    // The same key for another request: an error, never a silent replay.
    let (status, body) = stack
        .send_with_key("baton-bot", text("u2", "other"), Some("k1"))
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    // Ten requests at once, one key, different recipients: one message.
    let sends = (0..10).map(|i| {
        let psid = ["u1", "u2", "u3"][i % 3];
        stack.send_with_key("baton-bot", text(psid, "once"), Some("k2"))
    });
    let answers = futures_util::future::join_all(sends).await;
    let sent = answers.iter().filter(|(s, _)| *s == 200).count();
    assert!(sent >= 1, "{answers:?}");
    let total: usize = [
        stack.page_messages("u1").await,
        stack.page_messages("u2").await,
        stack.page_messages("u3").await,
    ]
    .iter()
    .map(|m| m.iter().filter(|t| *t == "once").count())
    .sum();
    assert_eq!(total, 1, "one key, one message: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_take_in_another_apps_name_is_confirmed_with_meta_before_anyone_is_refused() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    // The human app's developers (who know its Meta secret) forge Meta's
    // take webhook: the human took the thread from the bot.
    let take = json!({"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": T0.millis() + 1000,
        "take_thread_control": {"previous_owner_app_id": BOT, "new_owner_app_id": HUMAN, "metadata": "forged"}});
    let body = envelope(json!([{"id": PAGE, "time": T0.millis() + 1000, "messaging": [take]}]));
    assert_eq!(
        stack
            .baton
            .post_signed(HUMAN, HUMAN_SECRET, &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        stack.baton.count("ThreadControlTaken").await,
        0,
        "the claim is not applied"
    );
    // Baton asks Meta, and Meta says the bot still owns the thread.
    stack.wait_owner("u1", owner(BOT)).await;
    let (status, _) = stack.send("baton-bot", text("u1", "still mine")).await;
    assert_eq!(status, 200, "the bot was never refused");
    let (status, body) = stack.send("baton-human", text("u1", "stolen")).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_300))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_no_thread_state_and_a_bounded_record() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    // A refused send to a PSID nobody has seen: no ledger, no thread stream.
    let (status, _) = stack.send("baton-human", text("stranger-1", "hi")).await;
    assert_eq!(status, 400);
    let state = &stack.baton.running.state;
    assert!(state
        .projections
        .read()
        .thread(&Stack::thread("stranger-1"))
        .is_none());
    let timeline: Value = stack
        .baton
        .http
        .get(
            stack
                .baton
                .url(&format!("/api/threads/{PAGE}/stranger-1/timeline")),
        )
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(timeline["events"], json!([]), "no thread stream either");
    // A refused send carrying 14 fields of 4,000 characters is recorded as a summary.
    stack.user_says("u1", "hello").await;
    let mut big = text("u1", "hi");
    for i in 0..14 {
        big[format!("pad{i}")] = json!("x".repeat(4000));
    }
    let (status, _) = stack.send("baton-human", big).await;
    assert_eq!(status, 400);
    let refused = stack
        .baton
        .events()
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e {
            domain::Event::CommandRefused(r) => Some(r),
            _ => None,
        })
        .unwrap();
    let domain::Command::SendMessage(send) = refused.command else {
        panic!("a send")
    };
    assert_eq!(send.payload["omitted"], true, "{}", send.payload);
    assert!(serde_json::to_vec(&send.payload).unwrap().len() < 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reads_its_own_sends_the_auditor_reads_everything_and_changes_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, _) = stack.send("baton-bot", text("u1", "from the bot")).await;
    assert_eq!(status, 200);
    let read = |token: &'static str| {
        let url = stack.baton.url(&format!("/api/threads/{PAGE}/u1/timeline"));
        let http = stack.baton.http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let sends = |t: &Value| -> Vec<Value> {
        t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "SendAccepted")
            .cloned()
            .collect()
    };
    let human_view = read("baton-human").await;
    let [seen] = sends(&human_view).try_into().unwrap();
    assert_eq!(
        seen["redacted"], true,
        "another app's send, without ids or content"
    );
    assert!(seen.get("event").is_none(), "{seen}");
    let bot_view = read("baton-bot").await;
    let [own] = sends(&bot_view).try_into().unwrap();
    assert!(
        own["event"]["send"]["send_id"].is_string(),
        "its own send, whole"
    );
    // The auditor (configured below) reads everything and cannot redrive.
    let baton = TestBaton::start(
        &graphless()
            .setting(r#"auditor_token = "auditor-secret""#)
            .render(),
    )
    .await;
    let res = baton
        .http
        .post(baton.url(&format!("/api/apps/{BOT}/redrive")))
        .bearer_auth("auditor-secret")
        .json(&json!({"position": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = baton
        .http
        .get(baton.url("/api/admin/export"))
        .bearer_auth("auditor-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_their_token_and_apps_are_held_to_their_request_rate() {
    let baton = TestBaton::start(
        &graphless()
            .setting(r#"metrics_token = "metrics-secret""#)
            .setting("app_requests_per_second = 2")
            .render(),
    )
    .await;
    let res = baton.http.get(baton.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = baton
        .http
        .get(baton.url("/metrics"))
        .bearer_auth("metrics-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut codes = Vec::new();
    for _ in 0..4 {
        let res = baton
            .http
            .get(baton.url("/v21.0/me/thread_owner?recipient=u1"))
            .bearer_auth("baton-bot")
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        codes.push((status, body["error"]["code"].clone()));
    }
    assert_eq!(codes.last().unwrap(), &(429, json!(4)), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_come_only_from_the_allowed_networks() {
    let baton = TestBaton::start(
        &graphless()
            .setting(r#"webhook_source_networks = ["66.220.144.0/20"]"#)
            .setting(r#"trusted_proxies = ["127.0.0.1"]"#)
            .render(),
    )
    .await;
    let body = envelope(
        json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", "m.1", T0.millis())]}]),
    );
    let post = |xff: Option<&'static str>| {
        let mut req = baton
            .http
            .post(baton.url(&format!("/webhooks/{BOT}")))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
            )
            .body(body.clone());
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        req.send()
    };
    assert_eq!(
        post(None).await.unwrap().status(),
        403,
        "loopback is not Meta"
    );
    assert_eq!(
        post(Some("66.220.144.10, 10.9.9.9"))
            .await
            .unwrap()
            .status(),
        403,
        "a forged hop behind an untrusted one"
    );
    assert_eq!(
        post(Some("66.220.144.10")).await.unwrap().status(),
        200,
        "through the trusted proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_delivery_does_not_hold_up_a_small_one_and_too_many_items_are_refused() {
    let baton = TestBaton::start(&graphless().max_body_bytes(4 << 20).render()).await;
    let items = |n: usize, tag: &str| -> Vec<Value> {
        (0..n)
            .map(|i| {
                message_item(
                    &format!("{tag}{}", i % 50),
                    &format!("{tag}.{i}"),
                    T0.millis(),
                )
            })
            .collect()
    };
    // More items than Meta ever batches: refused whole, nothing stored.
    let too_many =
        envelope(json!([{"id": PAGE, "time": T0.millis(), "messaging": items(4001, "x")}]));
    let res = baton.post_signed(BOT, BOT_SECRET, &too_many).await;
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "too_many_items"
    );
    assert_eq!(baton.head().await, 0);
    let big = envelope(json!([{"id": PAGE, "time": T0.millis(), "messaging": items(3000, "b")}]));
    let small = envelope(json!([{"id": PAGE, "time": T0.millis(), "messaging": items(1, "s")}]));
    let first_chunk_recorded = baton.running.state.projections.clone();
    let big_post = baton.post_signed(BOT, BOT_SECRET, &big);
    let small_post = async {
        // Once the big delivery's first chunk is in, the small one comes.
        first_chunk_recorded
            .wait_until(|s| (s.position > 0).then_some(()))
            .await;
        baton.post_signed(BOT, BOT_SECRET, &small).await
    };
    let (big_res, small_res) = tokio::join!(big_post, small_post);
    assert_eq!(
        (big_res.status().as_u16(), small_res.status().as_u16()),
        (200, 200)
    );
    let mut positions = std::collections::BTreeMap::new();
    for r in baton
        .running
        .state
        .store
        .read_all(1, 100_000)
        .await
        .unwrap()
    {
        if let Ok(domain::Event::MessagingEventReceived(m)) =
            domain::Event::decode(&r.type_name, r.schema_version, &r.payload)
        {
            // The mid (the raw item is sealed content).
            if let domain::events::InboundEvent::Message { mid, .. } = &m.event {
                positions.insert(mid.clone(), r.position);
            }
        }
    }
    let small_at = positions["s.0"];
    let big_last = positions
        .iter()
        .filter(|(k, _)| k.starts_with("b."))
        .map(|(_, p)| *p)
        .max()
        .unwrap();
    assert!(
        small_at < big_last,
        "the small delivery was recorded between the large one's chunks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_signed_with_a_checkpoint_that_anchors_the_chain() {
    let keys = tempfile::tempdir().unwrap();
    let signer = event_log::CheckpointSigner::generate().unwrap();
    let key_path = keys.path().join("checkpoint.key");
    signer.write_key_files(&key_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = graphless()
        .data_dir(dir.path())
        .setting(&format!(
            "checkpoint_key = {:?}",
            key_path.display().to_string()
        ))
        .render();
    let baton = TestBaton::start_in(dir, &config).await;
    for i in 0..5 {
        let body = envelope(
            json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", &format!("m.{i}"), T0.millis())]}]),
        );
        assert_eq!(
            baton.post_signed(BOT, BOT_SECRET, &body).await.status(),
            200
        );
    }
    baton
        .running
        .state
        .baton
        .checkpoint_signer()
        .expect("the key is usable");
    let res = baton
        .http
        .get(baton.url("/api/admin/export"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    let header = res
        .headers()
        .get("baton-checkpoint")
        .expect("a signed checkpoint")
        .to_str()
        .unwrap()
        .to_owned();
    let export = res.text().await.unwrap();
    let signed = event_log::SignedCheckpoint::from_json(header.as_bytes()).unwrap();
    assert_eq!(signed.checkpoint.position, baton.head().await);
    let anchors = event_log::Anchors::verified(vec![signed], &signer.public_key()).unwrap();
    let report = event_log::verify_ndjson_anchored(export.as_bytes(), &anchors).unwrap();
    assert_eq!(report.anchored_position(), baton.head().await);
    // Rewriting a record and re-hashing the rest no longer passes.
    let tampered = export.replacen("m.1", "m.X", 1);
    assert!(event_log::verify_ndjson_anchored(tampered.as_bytes(), &anchors).is_err());
}
