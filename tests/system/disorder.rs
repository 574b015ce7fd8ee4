//! Meta's disorder against the emulator: a retry delivered long after later
//! events, a block retried after its unblock, a silent takeover, a timestamp
//! from the future. The ledger keeps every fact and believes the newest
//! evidence (issue 12's cases).

use domain::events::ControlView;
use domain::Span;
use emulator::{FaultSpec, SetOwner};
use serde_json::{json, Value};

use crate::stack::*;
use crate::support::*;

/// Re-posts a delivery the emulator made (or dropped) earlier, as Meta's
/// retry: the same bytes and signatures.
async fn redeliver(stack: &Stack, delivery: &emulator::DeliveryAttempt) -> u16 {
    stack
        .baton
        .http
        .post(stack.baton.url(&format!("/webhooks/{}", delivery.app_id)))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", &delivery.signature_256)
        .header("x-hub-signature", &delivery.signature_1)
        .body(delivery.body.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_of_a_delivery_meta_failed_does_not_undo_a_newer_pass() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta fails to deliver the bot's copy of the next message; it will retry.
    stack
        .ctl
        .add_fault(&FaultSpec::WebhookDrop {
            count: 1,
            app_id: Some(BOT.into()),
        })
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    stack
        .ctl
        .user_text(PAGE, "u1", "are you there?")
        .await
        .unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    let dropped = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.dropped && d.app_id == BOT)
        .expect("the dropped delivery");
    // Later the bot passes the thread to the human inbox.
    stack.advance(Span::seconds(60)).await;
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    // Now Meta's retry of the old delivery arrives.
    assert_eq!(redeliver(&stack, &dropped).await, 200);
    assert_eq!(
        stack.ledger_view("u1"),
        owner(HUMAN),
        "the newer pass stands"
    );
    assert_eq!(
        stack.baton.count("StaleEvidenceIgnored").await,
        1,
        "kept, not applied"
    );
    let (status, body) = stack.send("baton-human", text("u1", "Hi, Ana here")).await;
    assert_eq!(status, 200, "the owner at Meta is not locked out: {body}");
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_retried_after_its_unblock_does_not_block_the_page() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.advance(Span::seconds(60)).await;
    stack
        .ctl
        .policy_enforcement(PAGE, "block", Some("spam"))
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    stack
        .ctl
        .policy_enforcement(PAGE, "unblock", None)
        .await
        .unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    let block = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.app_id == BOT && d.body.contains("\"block\""))
        .expect("the block webhook");
    assert_eq!(
        redeliver(&stack, &block).await,
        200,
        "Meta's late retry of the block"
    );
    let (status, body) = stack.send("baton-bot", text("u1", "still open")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_takeover_is_learned_from_meta_before_the_bot_talks_over_it() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, _) = stack
        .graph_post(
            "baton-bot",
            "release_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), ControlView::Idle);
    // The Page Inbox takes the idle thread; no webhook says so.
    stack
        .ctl
        .set_owner(
            PAGE,
            "u1",
            &SetOwner {
                app_id: Some(PAGE_INBOX.into()),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    // The user writes: the bot, the default app, gets it on standby.
    stack
        .ctl
        .user_text(PAGE, "u1", "hello again")
        .await
        .unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    stack.wait_owner("u1", owner(PAGE_INBOX)).await;
    let (status, body) = stack.send("baton-bot", text("u1", "Hi!")).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_300))
    );
    assert_eq!(
        stack.upstream_calls("/messages").await,
        0,
        "refused before Meta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timestamp_from_the_future_pins_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let before: Value = stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/u1")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let far = T0.millis() + 10 * 365 * 86_400_000;
    let item = json!({"sender": {"id": "u1"}, "recipient": {"id": PAGE}, "timestamp": far,
        "message": {"mid": "m.future", "text": "from 2036"}});
    let body = envelope(json!([{"id": PAGE, "time": far, "messaging": [item]}]));
    assert_eq!(
        stack
            .baton
            .post_signed(BOT, BOT_SECRET, &body)
            .await
            .status(),
        200
    );
    let after: Value = stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/u1")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for field in [
        "window_closes_at",
        "control_expires_at",
        "last_user_action_at",
        "owner",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(
        stack.baton.count("MessagingEventReceived").await,
        2,
        "kept verbatim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_echo_does_not_reapply_an_old_inline_pass() {
    let tuning = Tuning {
        timeout_ms: 300,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ConversationRouting, tuning).await;
    stack.user_says("u1", "hello").await;
    // Meta holds its answer to the next send, and fails to deliver its echo.
    stack
        .ctl
        .add_fault(&FaultSpec::Delay {
            count: 1,
            endpoint: Some("messages".into()),
            millis: None,
        })
        .await
        .unwrap();
    stack
        .ctl
        .add_fault(&FaultSpec::WebhookDrop {
            count: 1,
            app_id: Some(BOT.into()),
        })
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    let mut body = text("u1", "A human will take over");
    body["thread_control"] = json!({"control_type": "pass", "app_id": HUMAN});
    let (status, _) = stack.send("baton-bot", body).await;
    assert_eq!(status, 504, "the outcome is unknown");
    stack.ctl.release_held().await.unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    // Meta did the inline pass (its webhook reached the human), and later
    // the human passes the thread back.
    stack.wait_owner("u1", owner(HUMAN)).await;
    stack.advance(Span::seconds(60)).await;
    let (status, _) = stack.pass("baton-human", "u1", Some(BOT)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    // Now Meta's retry of the echo arrives: it settles the send, but its
    // inline pass is older news.
    let echo = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.dropped && d.app_id == BOT && d.body.contains("is_echo"))
        .expect("the dropped echo");
    assert_eq!(redeliver(&stack, &echo).await, 200);
    assert_eq!(
        stack.ledger_view("u1"),
        owner(BOT),
        "the newer pass back stands"
    );
    let outcomes: Vec<_> = stack.baton.send_outcomes().await;
    assert!(
        matches!(
            outcomes.last(),
            Some(domain::events::SendOutcome::SettledByEcho { .. })
        ),
        "{outcomes:?}"
    );
    let (status, body) = stack.send("baton-bot", text("u1", "I'm back")).await;
    assert_eq!(status, 200, "the bot is not refused: {body}");
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_landing_after_newer_news_does_not_override_it() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta carries out the pass at once but holds its answer.
    stack
        .ctl
        .add_fault(&FaultSpec::Delay {
            count: 1,
            endpoint: Some("pass_thread_control".into()),
            millis: None,
        })
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    let pass = stack.pass("baton-bot", "u1", Some(HUMAN));
    let meanwhile = async {
        // The pass happened at Meta; then the Page Inbox takes the thread.
        loop {
            let t = stack.ctl.thread(PAGE, "u1").await.unwrap();
            if t.owner.as_deref() == Some(HUMAN) {
                break;
            }
            tokio::task::yield_now().await;
        }
        stack.ctl.inbox_takeover(PAGE, "u1", None).await.unwrap();
        stack.ctl.wait_deliveries().await.unwrap();
        // Only now does Meta's answer to the pass arrive.
        stack.ctl.release_held().await.unwrap();
    };
    let ((status, _), ()) = tokio::join!(pass, meanwhile);
    assert_eq!(status, 200);
    stack.wait_owner("u1", owner(PAGE_INBOX)).await;
    assert_eq!(
        stack.ledger_view("u1"),
        owner(PAGE_INBOX),
        "the takeover stands"
    );
    let (status, body) = stack.send("baton-human", text("u1", "hi")).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_300))
    );
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_confirmation_is_checked_with_meta_before_the_owner_at_meta_is_refused() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta moves the thread to the human inbox; no webhook reaches Baton.
    stack
        .ctl
        .set_owner(
            PAGE,
            "u1",
            &SetOwner {
                app_id: Some(HUMAN.into()),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap();
    // Within ten minutes of Meta's last word, the ledger is trusted.
    let (status, _) = stack.send("baton-human", text("u1", "too soon")).await;
    assert_eq!(status, 400);
    // Later, before refusing the human, Baton asks Meta, and follows it.
    stack.advance(Span::seconds(11 * 60)).await;
    let (status, body) = stack.send("baton-human", text("u1", "Hi, Ana here")).await;
    assert_eq!(status, 200, "the owner at Meta is not refused: {body}");
    let state: Value = stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/u1")))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["owner"], HUMAN);
    assert_eq!(
        state["owner_confirmed_at"],
        T0.millis() + 11 * 60_000,
        "{state}"
    );
    stack.assert_consistent("u1").await;
}
