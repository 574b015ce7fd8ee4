//! Thread control through Baton's Graph-compatible API, against the emulator,
//! in each routing mode. After every scenario the ledger equals the
//! emulator's view and replaying the log from zero gives the same ledger.

use domain::events::ControlView;
use domain::Span;
use emulator::FaultSpec;
use serde_json::json;

use crate::stack::{Mode, Stack};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_message_reaches_baton_once_per_app_on_the_right_channel_and_is_one_fact() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let result = stack.ctl.user_text(PAGE, "u1", "hello").await.unwrap();
    let mut channels: Vec<(String, String)> = result
        .deliveries
        .iter()
        .map(|d| (d.app_id.clone(), d.channel.clone()))
        .collect();
    channels.sort();
    assert_eq!(
        channels,
        [
            (BOT.to_owned(), "messaging".to_owned()),
            (HUMAN.to_owned(), "standby".to_owned())
        ]
    );
    assert!(result.deliveries.iter().all(|d| d.status == Some(200)));
    assert_eq!(stack.baton.count("MessagingEventReceived").await, 1);
    assert_eq!(stack.baton.count("MessagingEventCopyReceived").await, 1);
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_retrying_a_delivery_records_it_once() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack
        .ctl
        .add_fault(&FaultSpec::WebhookDuplicate {
            count: 2,
            app_id: None,
        })
        .await
        .unwrap();
    stack.user_says("u1", "hello").await;
    stack.ctl.wait_deliveries().await.unwrap();
    assert_eq!(stack.baton.count("MessagingEventReceived").await, 1);
    assert_eq!(stack.baton.count("MessagingEventCopyReceived").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_bot_passes_to_the_human_app_and_the_human_passes_back() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "I want a human").await;
    let (status, body) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!((status, body), (200, json!({"success": true})));
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
    // The human's messages now reach it on messaging, the bot's on standby.
    stack.user_says("u1", "thanks").await;
    stack.assert_consistent("u1").await;
    let (status, _) = stack.pass("baton-human", "u1", None).await;
    assert_eq!(status, 200, "no target: back to the default app");
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    stack.assert_consistent("u1").await;
    let drift = stack.baton.count("OwnershipDriftDetected").await;
    if drift > 0 {
        for e in stack.baton.events().await {
            eprintln!("{e:?}");
        }
    }
    assert_eq!(drift, 0, "Meta and Baton agreed all along");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_the_owner_and_stays_pending() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "request_thread_control",
            json!({"recipient": {"id": "u1"}, "metadata": "agent free"}),
        )
        .await;
    assert_eq!(status, 200);
    let snapshot = stack.baton.running.state.projections.read().clone();
    let ledger = snapshot.thread(&Stack::thread("u1")).unwrap();
    assert_eq!(ledger.pending_requests.len(), 1);
    assert_eq!(ledger.pending_requests[0].app.as_str(), HUMAN);
    // Meta told the owner (the bot) with a request webhook.
    let told = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .iter()
        .any(|d| d.app_id == BOT && d.json().to_string().contains("request_thread_control"));
    assert!(told, "the owner got request_thread_control");
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_by_an_allowed_app_and_a_refusal_for_one_that_is_not() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    let (status, body) = stack
        .graph_post(
            "baton-human",
            "take_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(
        status, 200,
        "the human app takes what it owns: success, nothing changes: {body}"
    );
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    let (status, _) = stack
        .graph_post(
            "baton-bot",
            "take_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    stack.pass("baton-human", "u1", None).await;
    // Now the bot owns; the human app may not take (not allowed by the business).
    let before = stack.upstream_calls("take_thread_control").await;
    let (status, body) = stack
        .graph_post(
            "baton-human",
            "take_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 200);
    assert_eq!(
        stack.upstream_calls("take_thread_control").await,
        before,
        "refused locally, never forwarded"
    );
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_to_idle_then_the_default_app_answers() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "release_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), ControlView::Idle);
    stack.assert_consistent("u1").await;
    let events = stack.baton.events().await;
    assert!(
        events
            .iter()
            .any(|e| e.type_name() == "ThreadControlReleased"),
        "release sends no webhook: Baton records its own success"
    );
    // The next user message goes to the default app again.
    stack.user_says("u1", "anyone?").await;
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_control_past_24_hours_and_silence_expires_it() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "extend_thread_control",
            json!({"recipient": {"id": "u1"}, "duration": 2 * 86_400}),
        )
        .await;
    assert_eq!(status, 200);
    stack.advance(Span::hours(30)).await;
    assert_eq!(stack.baton.running.expire_due().await, 0);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
    stack.advance(Span::hours(20)).await;
    assert_eq!(stack.baton.running.expire_due().await, 1);
    assert_eq!(stack.ledger_view("u1"), ControlView::Idle);
    assert_eq!(stack.baton.count("ThreadControlExpired").await, 1);
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_expires_after_24_hours_of_silence() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    stack.advance(Span::hours(23)).await;
    assert_eq!(stack.baton.running.expire_due().await, 0);
    stack.advance(Span::hours(2)).await;
    assert_eq!(stack.baton.running.expire_due().await, 1);
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_inbox_takeover_is_seen_only_through_webhooks() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let result = stack
        .ctl
        .inbox_takeover(PAGE, "u1", Some("Hi, a human here"))
        .await
        .unwrap();
    assert!(result.deliveries.iter().all(|d| d.ok));
    assert_eq!(stack.ledger_view("u1"), owner(emulator::PAGE_INBOX_APP_ID));
    stack.assert_consistent("u1").await;
    // The human marks it done in the inbox: control returns to the default app.
    stack.ctl.inbox_done(PAGE, "u1").await.unwrap();
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_from_a_non_owner_is_refused_locally_with_metas_error() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, body) = stack
        .pass("baton-human", "u1", Some(emulator::PAGE_INBOX_APP_ID))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["error_subcode"], 2_534_037);
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["fbtrace_id"].is_string());
    assert_eq!(
        stack.upstream_calls("pass_thread_control").await,
        0,
        "never sent upstream"
    );
    assert_eq!(
        stack.baton.count("CommandRefused").await,
        1,
        "the refusal is recorded with its reason"
    );
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_after_meta_changes_the_owner_behind_batons_back() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta gives the thread to the human app without any webhook.
    let expires = T0.millis() + 20 * 3_600_000;
    let set = emulator::SetOwner {
        app_id: Some(HUMAN.to_owned()),
        expires_at_ms: Some(expires),
    };
    stack.ctl.set_owner(PAGE, "u1", &set).await.unwrap();
    assert_eq!(stack.ledger_view("u1"), owner(BOT), "Baton cannot know yet");
    // The bot's pass is allowed by the ledger, refused by Meta: drift, then Baton asks Meta.
    let (status, body) = stack
        .pass("baton-bot", "u1", Some(emulator::PAGE_INBOX_APP_ID))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["error_subcode"], 2_534_037,
        "Meta's own answer is passed back"
    );
    assert_eq!(
        stack.baton.count("OwnershipDriftDetected").await,
        2,
        "refusal → unknown, thread_owner → the human app"
    );
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_refuses_take_and_grants_the_first_request() {
    let stack = Stack::start(Mode::ZeroConfig).await;
    stack.user_says("u1", "hello").await;
    let (status, body) = stack
        .graph_post(
            "baton-bot",
            "take_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!(27)));
    assert_eq!(stack.upstream_calls("take_thread_control").await, 0);
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "request_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_v1_primary_passes_and_the_secondary_passes_back_without_a_target() {
    let stack = Stack::start(Mode::HandoverV1).await;
    stack.user_says("u1", "hello").await;
    stack.assert_consistent("u1").await;
    let (status, body) = stack.pass("baton-bot", "u1", None).await;
    assert_eq!(status, 400, "the primary must name a target: {body}");
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
    let (status, _) = stack.pass("baton-human", "u1", None).await;
    assert_eq!(status, 200);
    stack.assert_consistent("u1").await;
    let (status, body) = stack
        .graph_post(
            "baton-human",
            "take_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!(200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_owner_and_secondary_receivers_answer_in_metas_shape() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let get = |token: &'static str, path: String| {
        let url = stack.baton.url(&path);
        let http = stack.baton.http.clone();
        async move {
            let res = http
                .get(url)
                .query(&[("access_token", token)])
                .send()
                .await
                .unwrap();
            (
                res.status().as_u16(),
                res.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = get(
        "baton-bot",
        format!("/v21.0/{PAGE}/thread_owner?recipient=u1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"][0]["thread_owner"]["app_id"], BOT);
    assert!(body["data"][0]["thread_owner"]["expiration"].is_number());
    let (_, body) = get(
        "baton-human",
        "/v21.0/me/thread_owner?recipient=u1".to_owned(),
    )
    .await;
    assert_eq!(
        body,
        json!({"data": []}),
        "neither owner nor default app: nothing to see"
    );
    let (status, body) = get(
        "baton-bot",
        "/v21.0/me/secondary_receivers?fields=id,name".to_owned(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == HUMAN && a["name"] == "Human inbox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_other_pages_and_malformed_bodies_are_refused_and_forward_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let url = |path: &str| stack.baton.url(path);
    let http = &stack.baton.http;
    let cases: Vec<(reqwest::RequestBuilder, u16, i64)> = vec![
        (
            http.post(url(&format!("/v21.0/{PAGE}/pass_thread_control")))
                .json(&json!({"recipient": {"id": "u1"}})),
            400,
            104, // no token at all, as Meta answers
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=nope"
            )))
            .json(&json!({"recipient": {"id": "u1"}})),
            400,
            190,
        ),
        (
            http.post(url(
                "/v21.0/7777777/pass_thread_control?access_token=baton-bot",
            ))
            .json(&json!({"recipient": {"id": "u1"}})),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=baton-bot&appsecret_proof=00"
            )))
            .json(&json!({"recipient": {"id": "u1"}})),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=baton-bot"
            )))
            .header("content-type", "application/json")
            .body("{\"recipient\":"),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=baton-bot"
            )))
            .json(&json!({"target_app_id": HUMAN})),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=baton-bot"
            )))
            .json(&json!({"recipient": {"id": ""}})),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/extend_thread_control?access_token=baton-bot"
            )))
            .json(&json!({"recipient": {"id": "u1"}, "duration": "soon"})),
            400,
            100,
        ),
        (
            http.post(url(&format!(
                "/v21.0/{PAGE}/pass_thread_control?access_token=baton-bot"
            )))
            .json(&json!([1, 2])),
            400,
            100,
        ),
    ];
    for (req, status, code) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    assert_eq!(
        stack.upstream_calls("thread_control").await,
        0,
        "nothing was forwarded"
    );
    // A correct appsecret_proof and a form body work, as with Meta.
    let proof = {
        use hmac_proof::proof;
        proof(BOT_SECRET, "baton-bot")
    };
    let res = http
        .post(url(&format!("/v21.0/{PAGE}/pass_thread_control")))
        .form(&[
            ("access_token", "baton-bot"),
            ("appsecret_proof", proof.as_str()),
            ("recipient", "{\"id\":\"u1\"}"),
            ("target_app_id", HUMAN),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    stack.ctl.wait_deliveries().await.unwrap();
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_explains_every_ownership_change_in_order() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await; // refused: not the owner any more
    stack
        .graph_post(
            "baton-human",
            "release_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    let timeline = stack.timeline("u1").await;
    let changes: Vec<String> = timeline
        .iter()
        .filter(|e| {
            [
                "ThreadRouted",
                "ThreadControlPassed",
                "ThreadControlReleased",
                "CommandRefused",
            ]
            .contains(&e["type"].as_str().unwrap())
        })
        .map(|e| e["explanation"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(changes.len(), 4, "{changes:#?}");
    assert!(
        changes[0].contains(&format!("routed to {BOT}")),
        "{}",
        changes[0]
    );
    assert!(
        changes[1].contains(&format!("control passed from {BOT} to {HUMAN}")),
        "{}",
        changes[1]
    );
    assert!(
        changes[2].contains("refused with 100/2534037"),
        "{}",
        changes[2]
    );
    assert!(
        changes[3].contains(&format!("{HUMAN} released control")),
        "{}",
        changes[3]
    );
    let versions: Vec<u64> = timeline
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps"
    );
    // The state endpoint agrees.
    let res = stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/u1")))
        .bearer_auth("baton-human")
        .send()
        .await
        .unwrap();
    let view: serde_json::Value = res.json().await.unwrap();
    assert_eq!(view["state"], "idle");
    assert_eq!(view["answering_app"], BOT);
    let res = stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/u1")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

mod hmac_proof {
    pub fn proof(secret: &str, token: &str) -> String {
        // appsecret_proof = hex(HMAC-SHA256(app secret, access token)); the
        // webhook signature helper computes the same MAC.
        wire::signature::sign_sha256(secret.as_bytes(), token.as_bytes())
            .trim_start_matches("sha256=")
            .to_owned()
    }
}
