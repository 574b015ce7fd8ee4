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

/// A minute later the bot passes `u1` to the human, then Meta's retry of
/// `late` arrives: the newer pass stands, and the late evidence is kept as
/// stale, not applied.
async fn pass_to_the_human_then_redeliver(stack: &Stack, late: &emulator::DeliveryAttempt) {
    stack.advance(Span::seconds(60)).await;
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    let before = evidence_counts(stack).await;
    assert_eq!(redeliver(stack, late).await, 200);
    assert_eq!(
        stack.ledger_view("u1"),
        owner(HUMAN),
        "the newer pass stands"
    );
    late_evidence_was_kept_not_applied(stack, before).await;
}

/// How many stale-evidence and drift facts the log holds.
async fn evidence_counts(stack: &Stack) -> (usize, usize) {
    (
        stack.baton.count("StaleEvidenceIgnored").await,
        stack.baton.count("OwnershipDriftDetected").await,
    )
}

/// The late evidence changed nothing: no drift was recorded for it. It was
/// kept as stale evidence (one `StaleEvidenceIgnored`), or, when it was
/// another app's copy of an item recorded before a change Meta timed (the
/// pass webhook came before Baton's own answer), it was no newer than the
/// change and said nothing at all.
async fn late_evidence_was_kept_not_applied(stack: &Stack, (stale, drift): (usize, usize)) {
    let (stale_now, drift_now) = evidence_counts(stack).await;
    assert_eq!(drift_now, drift, "no drift for late evidence");
    assert!(
        stale_now == stale || stale_now == stale + 1,
        "kept at most once: {stale} then {stale_now}"
    );
}

/// A minute later the user of `u1` writes `text`, and Meta fails to deliver
/// `app`'s copy (it will retry): the lost delivery.
async fn a_minute_later_lose_the_copy_of(
    stack: &Stack,
    app: &str,
    text: &str,
) -> emulator::DeliveryAttempt {
    let drop = FaultSpec::WebhookDrop {
        count: 1,
        app_id: Some(app.into()),
    };
    stack.ctl.add_fault(&drop).await.unwrap();
    stack.advance(Span::seconds(60)).await;
    stack.ctl.user_text(PAGE, "u1", text).await.unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.dropped && d.app_id == app)
        .expect("the lost delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_of_a_delivery_meta_failed_does_not_undo_a_newer_pass() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // Meta fails to deliver the bot's copy of the next message; it will retry.
    let dropped = a_minute_later_lose_the_copy_of(&stack, BOT, "are you there?").await;
    // Later the bot passes the thread to the human inbox.
    stack.advance(Span::seconds(60)).await;
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    // Now Meta's retry of the old delivery arrives.
    let before = evidence_counts(&stack).await;
    assert_eq!(redeliver(&stack, &dropped).await, 200);
    assert_eq!(
        stack.ledger_view("u1"),
        owner(HUMAN),
        "the newer pass stands"
    );
    late_evidence_was_kept_not_applied(&stack, before).await;
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
    stack.hold_next_answer("messages").await;
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
    stack.hold_next_answer("pass_thread_control").await;
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

/// Baton's thread read API (`/api/threads/{page}/{psid}`), as the auditor sees it.
async fn thread_state(stack: &Stack, psid: &str) -> Value {
    stack
        .baton
        .http
        .get(stack.baton.url(&format!("/api/threads/{PAGE}/{psid}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The thread's owner at Meta (the emulator); `None` when idle.
async fn owner_at_meta(stack: &Stack, psid: &str) -> Option<String> {
    stack.ctl.thread(PAGE, psid).await.unwrap().owner
}

/// `GET /v21.0/me/thread_owner?recipient={psid}` at `base`, with `token`.
async fn get_thread_owner(stack: &Stack, base: &str, token: &str, psid: &str) -> (u16, Value) {
    let res = stack
        .baton
        .http
        .get(format!("{base}/v21.0/me/thread_owner"))
        .query(&[("recipient", psid), ("access_token", token)])
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Issue 12, case 1 (the handover variant): Meta's retry of an old pass
/// webhook (human → bot), arriving after a newer pass (bot → human), is kept
/// but does not hand the thread back to the bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_pass_webhook_retried_after_a_newer_pass_does_not_undo_it() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    // The human passes back; Meta fails to deliver the bot's pass webhook.
    stack
        .ctl
        .add_fault(&FaultSpec::WebhookDrop {
            count: 1,
            app_id: Some(BOT.into()),
        })
        .await
        .unwrap();
    stack.advance(Span::seconds(60)).await;
    let (status, _) = stack.pass("baton-human", "u1", Some(BOT)).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), owner(BOT));
    let dropped = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.dropped && d.app_id == BOT && d.body.contains("pass_thread_control"))
        .expect("the dropped pass webhook (human → bot)");
    // Later the bot passes the thread to the human again; then Meta's retry
    // of the old pass webhook arrives.
    pass_to_the_human_then_redeliver(&stack, &dropped).await;
    let (status, body) = stack.send("baton-bot", text("u1", "me again")).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_300)),
        "the bot stays silent: {body}"
    );
    let (status, body) = stack.send("baton-human", text("u1", "Hi, Ana here")).await;
    assert_eq!(status, 200, "the owner at Meta is not locked out: {body}");
    stack.assert_consistent("u1").await;
}

/// Issue 12, case 4: a sender action with inline `thread_control`. Meta
/// shows the action but hands nothing over (inline control rides on
/// messages only), so Baton records no pass or release either, and does not
/// judge the control: even one that would be refused on a message (a pass
/// to the default app, the bot itself) is forwarded, as Meta accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_action_with_inline_control_records_no_handover() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let controls = [
        json!({"control_type": "pass", "app_id": HUMAN}),
        json!({"control_type": "release"}),
        json!({"control_type": "pass", "target_app_id": HUMAN}),
    ];
    let mut forwarded = 0;
    for control in controls {
        let action = json!({"recipient": {"id": "u1"}, "sender_action": "typing_on", "thread_control": control});
        let (status, body) = stack.send("baton-bot", action).await;
        forwarded += 1;
        assert_eq!(
            (status, body["recipient_id"].clone()),
            (200, json!("u1")),
            "Meta's answer to an action: {control} {body}"
        );
        assert_eq!(
            stack.upstream_calls("/messages").await,
            forwarded,
            "{control}"
        );
        assert_eq!(stack.ledger_view("u1"), owner(BOT), "{control}");
        assert_eq!(
            owner_at_meta(&stack, "u1").await.as_deref(),
            Some(BOT),
            "{control}"
        );
        stack.assert_consistent("u1").await;
    }
    for handover in ["ThreadControlPassed", "ThreadControlReleased"] {
        assert_eq!(stack.baton.count(handover).await, 0, "{handover}");
    }
    let (status, body) = stack.send("baton-bot", text("u1", "still here")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = stack.send("baton-human", text("u1", "hi")).await;
    assert_eq!(status, 400, "the human was never handed the thread");
}

/// The user action `result` was delivered to every app, folded (it opened
/// the window at `at_ms`), and left `u1` idle at Meta and in the ledger.
async fn still_idle_with_the_window_opened_at(
    stack: &Stack,
    result: &emulator::ActionResult,
    at_ms: i64,
) {
    assert!(
        !result.deliveries.is_empty() && result.deliveries.iter().all(|d| d.ok),
        "{:?}",
        result.deliveries
    );
    stack.ctl.wait_deliveries().await.unwrap();
    assert_eq!(stack.ledger_view("u1"), ControlView::Idle);
    assert_eq!(owner_at_meta(stack, "u1").await, None);
    assert_eq!(
        thread_state(stack, "u1").await["last_user_action_at"],
        at_ms,
        "the action was folded: it opens the window"
    );
}

/// Issue 12, case 5: a reaction and a plugin opt-in on an idle thread open
/// the window but route the thread to nobody, as at Meta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_or_a_plugin_optin_leaves_an_idle_thread_idle() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let hello = stack.ctl.user_text(PAGE, "u1", "hello").await.unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    let (status, _) = stack
        .graph_post(
            "baton-bot",
            "release_thread_control",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(stack.ledger_view("u1"), ControlView::Idle);
    let routed = stack.baton.count("ThreadRouted").await;

    stack.advance(Span::seconds(60)).await;
    let reaction = emulator::UserReaction {
        mid: hello.mid.expect("the message's mid"),
        ..Default::default()
    };
    let result = stack
        .ctl
        .user_reaction(PAGE, "u1", &reaction)
        .await
        .unwrap();
    still_idle_with_the_window_opened_at(&stack, &result, T0.millis() + 60_000).await;
    stack.assert_consistent("u1").await;

    stack.advance(Span::seconds(60)).await;
    let result = stack
        .ctl
        .user_plugin_optin(PAGE, "u1", Some("newsletter"), None)
        .await
        .unwrap();
    still_idle_with_the_window_opened_at(&stack, &result, T0.millis() + 120_000).await;
    assert_eq!(
        stack.baton.count("ThreadRouted").await,
        routed,
        "neither routed the thread"
    );
    stack.assert_consistent("u1").await;
}

/// Issue 12, case 6: a standby copy of an older message, lost and retried
/// by Meta after the thread was passed to the app it went to, neither makes
/// the owner unknown nor lets every app send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_standby_copy_to_the_new_owner_neither_unsets_it_nor_opens_the_gate() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    // While the bot owns the thread, Meta fails to deliver the human inbox's
    // standby copy of the user's next message.
    let dropped = a_minute_later_lose_the_copy_of(&stack, HUMAN, "can I talk to a person?").await;
    assert_eq!(dropped.channel, "standby");
    // Later the bot passes the thread to the human inbox; then Meta's retry
    // of the old standby copy reaches it.
    pass_to_the_human_then_redeliver(&stack, &dropped).await;
    let (status, body) = stack.send("baton-bot", text("u1", "Hi!")).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_300)),
        "{body}"
    );
    assert_eq!(
        stack.upstream_calls("/messages").await,
        0,
        "refused before Meta"
    );
    let (status, body) = stack.send("baton-human", text("u1", "Hi, Ana here")).await;
    assert_eq!(status, 200, "{body}");
    stack.assert_consistent("u1").await;
}

/// Issue 12, case 8: a One-Time Notification send held by the page's rate
/// limit when Baton stops is not stranded: after the restart either it goes
/// out with its token, or the token is given back and can be used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_send_held_by_the_rate_limit_across_a_restart_is_not_stranded() {
    // One call allowed now, the next in 1000 s.
    let slow = Tuning {
        rate: 0.001,
        burst: 1.0,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ConversationRouting, slow).await;
    stack.user_says("u1", "notify me").await;
    let token = stack
        .ctl
        .user_otn_optin(PAGE, "u1", "restock")
        .await
        .unwrap()
        .token
        .unwrap();
    let otn = |t: &str| json!({"recipient": {"one_time_notif_token": t}, "message": {"text": "Back in stock!"}});
    // Spend the burst.
    let (status, _) = stack.send("baton-bot", text("u1", "first")).await;
    assert_eq!(status, 200);
    // The token send is accepted and waits for the rate; its client hangs up.
    let inflight = {
        let http = stack.baton.http.clone();
        let url = stack.baton.url("/v21.0/me/messages");
        let body = otn(&token);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth("baton-bot")
                .json(&body)
                .send()
                .await
        })
    };
    stack
        .baton
        .running
        .state
        .projections
        .wait_until(|s| (s.open_sends.len() == 1).then_some(()))
        .await
        .expect("the token send is accepted");
    inflight.abort();
    let _ = inflight.await;
    assert_eq!(
        stack.baton.count("SendAttempted").await,
        1,
        "held, not sent"
    );

    let stack = stack.restart_baton(Tuning::default()).await;
    stack
        .baton
        .running
        .state
        .projections
        .wait_until(|s| s.open_sends.is_empty().then_some(()))
        .await
        .expect("the token send is settled");
    stack.ctl.wait_deliveries().await.unwrap();
    let used_at_meta = |t: &emulator::ThreadView| {
        t.otn_tokens
            .iter()
            .find(|o| o.token == token)
            .expect("Meta's token")
            .used
    };
    let state = thread_state(&stack, "u1").await;
    if used_at_meta(&stack.ctl.thread(PAGE, "u1").await.unwrap()) {
        // Resumed: Meta accepted it with the token.
        assert_eq!(state["tokens"][0]["available"], false, "{state}");
    } else {
        // Given back: the token is usable again.
        assert_eq!(state["tokens"][0]["available"], true, "{state}");
        let (status, body) = stack.send("baton-bot", otn(&token)).await;
        assert_eq!(status, 200, "the given-back token works: {body}");
    }
    assert!(used_at_meta(&stack.ctl.thread(PAGE, "u1").await.unwrap()));
    assert_eq!(stack.page_messages("u1").await, ["first", "Back in stock!"]);
    let (status, body) = stack.send("baton-bot", otn(&token)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "spent once: {body}"
    );
}

/// Issue 12, case 10: Meta's clock 2 s ahead of Baton's. The echo of an
/// inline pass carries Meta's later time; it must not flip the thread back
/// to the bot (nor make its owner unknown), and the owner at Meta may send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metas_clock_running_ahead_does_not_flip_an_inline_pass() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.user_says("u2", "hello").await;
    // Only Meta's clock moves: from here it runs 2 s ahead of Baton's.
    stack.ctl.advance(2000).await.unwrap();
    for (psid, target) in [("u1", PAGE_INBOX), ("u2", HUMAN)] {
        let mut body = text(psid, "Passing you on");
        body["thread_control"] = json!({"control_type": "pass", "app_id": target});
        let (status, body) = stack.send("baton-bot", body).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(owner_at_meta(&stack, psid).await.as_deref(), Some(target));
        assert_eq!(stack.ledger_view(psid), owner(target), "{psid}");
        stack.assert_consistent(psid).await;
    }
    // Both echoes reached Baton, stamped 2 s after Baton's now.
    let echoes: Vec<_> = stack
        .ctl
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.body.contains("is_echo"))
        .collect();
    assert!(echoes.len() >= 2, "{echoes:?}");
    for echo in &echoes {
        assert_eq!(echo.status, Some(200), "{echo:?}");
        let at = &echo.json()["entry"][0]["messaging"][0]["timestamp"];
        let at = if at.is_null() {
            &echo.json()["entry"][0]["standby"][0]["timestamp"]
        } else {
            at
        };
        assert_eq!(*at, json!(T0.millis() + 2000), "{}", echo.body);
    }
    assert_eq!(stack.baton.count("OwnershipDriftDetected").await, 0);
    let (status, body) = stack.send("baton-human", text("u2", "Hi, Ana here")).await;
    assert_eq!(status, 200, "the owner at Meta is not refused: {body}");
    for psid in ["u1", "u2"] {
        let (status, body) = stack.send("baton-bot", text(psid, "me again")).await;
        assert_eq!(
            (status, body["error"]["error_subcode"].clone()),
            (400, json!(2_018_300)),
            "{psid}: {body}"
        );
        stack.assert_consistent(psid).await;
    }
}

/// Issue 12, case 12: under Handover Protocol v1 the primary holds every
/// thread nobody else does. `thread_owner` names it (as Meta does, not
/// `[]`), and its own release, extend and take succeed and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_v1_the_primary_holds_an_untouched_thread_and_may_release_extend_and_take_it() {
    let stack = Stack::start(Mode::HandoverV1).await;
    stack.user_says("u1", "hello").await;
    let baton = stack.baton.running.base_url();
    let meta = stack.emulator.base_url();
    let primary_owns = json!({"data": [{"thread_owner": {"app_id": BOT}}]});
    let (status, ours) = get_thread_owner(&stack, &baton, "baton-bot", "u1").await;
    assert_eq!((status, &ours), (200, &primary_owns));
    let (_, metas) = get_thread_owner(&stack, &meta, "page-token-bot", "u1").await;
    assert_eq!(ours, metas, "the same answer as Meta's");
    for (edge, body) in [
        ("release_thread_control", json!({"recipient": {"id": "u1"}})),
        (
            "extend_thread_control",
            json!({"recipient": {"id": "u1"}, "duration": 3600}),
        ),
        ("take_thread_control", json!({"recipient": {"id": "u1"}})),
    ] {
        let (status, answer) = stack.graph_post("baton-bot", edge, body).await;
        assert_eq!(
            (status, answer.clone()),
            (200, json!({"success": true})),
            "{edge}: {answer}"
        );
        let (_, ours) = get_thread_owner(&stack, &baton, "baton-bot", "u1").await;
        assert_eq!(ours, primary_owns, "after {edge}");
        let (_, metas) = get_thread_owner(&stack, &meta, "page-token-bot", "u1").await;
        assert_eq!(metas, primary_owns, "Meta, after {edge}");
        stack.assert_consistent("u1").await;
    }
    let (status, body) = stack.send("baton-bot", text("u1", "still mine")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_owner_answer_overtaken_by_a_take_does_not_undo_it() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200);
    // Meta answers Baton's next `thread_owner` question at once ("the
    // human") but holds the answer on its way back.
    stack.hold_next_answer("thread_owner").await;
    let thread = Stack::thread("u1");
    let asking = stack.baton.running.state.reconcile(&thread, "v21.0");
    let meanwhile = async {
        while stack.upstream_calls("thread_owner").await == 0 {
            tokio::task::yield_now().await;
        }
        // The bot takes the thread; Meta accepts and Baton records it.
        let (status, body) = stack
            .graph_post(
                "baton-bot",
                "take_thread_control",
                json!({"recipient": {"id": "u1"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(stack.ledger_view("u1"), owner(BOT));
        // Only now does Meta's answer to the question arrive.
        stack.ctl.release_held().await.unwrap();
    };
    let (asked, ()) = tokio::join!(asking, meanwhile);
    assert!(asked, "Meta was asked");
    assert_eq!(
        stack.ledger_view("u1"),
        owner(BOT),
        "the take stands: the answer described the moment before it"
    );
    let stale = stack.baton.count("StaleEvidenceIgnored").await;
    assert_eq!(stale, 1, "the answer is kept as older news");
    assert_eq!(stack.baton.count("OwnershipDriftDetected").await, 0);
    let (status, body) = stack.send("baton-bot", text("u1", "I'm here")).await;
    assert_eq!(status, 200, "the owner is not refused: {body}");
    stack.assert_consistent("u1").await;
}

/// The inbox hands a thread back the moment after the bot passed it there
/// (Meta's clock has not moved): by Baton's clock that is older news, kept
/// and checked with Meta. Until Meta's answer is in, a call that the ledger
/// would refuse for not owning the thread is checked with Meta first, not
/// refused: the reconciler may not have asked yet (`model_handover_v1`,
/// seed 48, under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_on_an_owner_in_doubt_is_checked_with_meta_first() {
    // Room for the held answer on a loaded machine: Baton gives up on it
    // only after a minute.
    let tuning = Tuning {
        timeout_ms: 60_000,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ConversationRouting, tuning).await;
    stack.user_says("u1", "hello").await;
    let inbox = emulator::PAGE_INBOX_APP_ID;
    let (status, body) = stack.pass("baton-bot", "u1", Some(inbox)).await;
    assert_eq!(status, 200, "{body}");
    // The reconciler's question is answered at once but held on its way back.
    stack.hold_next_answer("thread_owner").await;
    stack.ctl.inbox_done(PAGE, "u1").await.unwrap();
    assert_eq!(stack.baton.count("StaleEvidenceIgnored").await, 1);
    let asked = async {
        while stack.upstream_calls("thread_owner").await == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), asked)
        .await
        .expect("the reconciler asks Meta");
    assert_eq!(stack.ledger_view("u1"), owner(inbox), "still in doubt");
    let (status, body) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 200, "the owner at Meta is not refused: {body}");
    assert_eq!(
        stack.upstream_calls("thread_owner").await,
        2,
        "Meta asked first"
    );
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    // Once checked, the doubt does not make every refusal ask again: the
    // bot, no longer the owner, is refused locally.
    let (status, _) = stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    assert_eq!(status, 400);
    assert_eq!(stack.upstream_calls("thread_owner").await, 2, "asked once");
    // The reconciler's answer, when it comes, is older than that pass.
    stack.ctl.release_held().await.unwrap();
    let answered = async {
        while stack.baton.count("StaleEvidenceIgnored").await < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), answered)
        .await
        .expect("the held answer is recorded, as older news");
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;
}
