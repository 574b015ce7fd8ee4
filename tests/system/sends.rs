//! The send gate and the sender against the emulator: Baton refuses up front
//! what Meta would refuse, sends what it accepts exactly once, and records
//! every decision and outcome.

use domain::Span;
use emulator::FaultSpec;
use serde_json::{json, Value};

use crate::stack::{Mode, Stack};
use crate::support::*;

fn tagged(psid: &str, tag: &str, t: &str) -> Value {
    json!({"recipient": {"id": psid}, "messaging_type": "MESSAGE_TAG", "tag": tag, "message": {"text": t}})
}

async fn upstream_messages(stack: &Stack) -> usize {
    stack.upstream_calls("/messages").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_window_reply_is_sent_once_and_recorded() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, body) = stack
        .send("baton-bot", text("u1", "Hi! How can I help?"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message_id"].as_str().unwrap().starts_with("m_"));
    assert_eq!(body["recipient_id"], "u1");
    assert_eq!(stack.page_messages("u1").await, ["Hi! How can I help?"]);
    assert_eq!(stack.baton.count("SendAccepted").await, 1);
    assert_eq!(stack.baton.count("SendOutcomeRecorded").await, 1);
    stack.assert_consistent("u1").await;
}

/// Meta's policy of Sep 2026: the first message after a Click-to-Messenger
/// ad click opens 7 days, also when the user already had a thread and the
/// click arrives as its own referral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_message_after_an_ad_click_in_an_existing_thread_may_be_answered_for_seven_days()
{
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.advance(Span::hours(30)).await;
    let ad = emulator::Referral {
        source: Some("ADS".into()),
        ad_id: Some("ad-7".into()),
        ..Default::default()
    };
    stack.ctl.user_referral(PAGE, "u1", &ad).await.unwrap();
    stack.advance(Span::MINUTE).await;
    stack.user_says("u1", "about that offer").await;
    stack.advance(Span::days(3)).await;
    let (status, body) = stack
        .send("baton-bot", text("u1", "Still interested?"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.page_messages("u1").await, ["Still interested?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_24_hours_is_refused_locally() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.advance(Span::hours(24)).await;
    let (status, body) = stack.send("baton-bot", text("u1", "still there?")).await;
    assert_eq!(status, 400);
    assert_eq!(
        (
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (json!(10), json!(2_018_278))
    );
    assert_eq!(upstream_messages(&stack).await, 0, "never forwarded");
    assert_eq!(stack.baton.count("CommandRefused").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_agent_from_the_human_app_on_day_six_and_never_from_the_bot() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "I need a person").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    stack
        .graph_post(
            "baton-human",
            "extend_thread_control",
            json!({"recipient": {"id": "u1"}, "duration": 7 * 86_400}),
        )
        .await;
    stack.advance(Span::days(6)).await;
    let (status, body) = stack
        .send(
            "baton-human",
            tagged("u1", "HUMAN_AGENT", "Sorry for the wait"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack
        .send("baton-bot", tagged("u1", "HUMAN_AGENT", "beep"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 10);
    assert_eq!(stack.page_messages("u1").await, ["Sorry for the wait"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_tags_and_non_owners_are_refused_and_never_forwarded() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    for tag in [
        "ACCOUNT_UPDATE",
        "POST_PURCHASE_UPDATE",
        "CONFIRMED_EVENT_UPDATE",
    ] {
        let (status, body) = stack.send("baton-bot", tagged("u1", tag, "update")).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(100)),
            "{tag}"
        );
    }
    let (status, body) = stack.send("baton-human", text("u1", "me too")).await;
    assert_eq!(status, 400);
    assert_eq!(
        (
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (json!(10), json!(2_018_300))
    );
    assert_eq!(upstream_messages(&stack).await, 0);
    assert_eq!(stack.baton.count("CommandRefused").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_tokens_are_used_once_expire_and_never_go_out_twice_concurrently() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "notify me").await;
    let t1 = stack
        .ctl
        .user_otn_optin(PAGE, "u1", "restock")
        .await
        .unwrap()
        .token
        .unwrap();
    let t2 = stack
        .ctl
        .user_otn_optin(PAGE, "u1", "restock-2")
        .await
        .unwrap()
        .token
        .unwrap();
    let t3 = stack
        .ctl
        .user_otn_optin(PAGE, "u1", "restock-3")
        .await
        .unwrap()
        .token
        .unwrap();
    stack.advance(Span::days(30)).await;
    let otn = |t: &str| json!({"recipient": {"one_time_notif_token": t}, "message": {"text": "Back in stock!"}});
    let (status, body) = stack.send("baton-bot", otn(&t1)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = stack.send("baton-bot", otn(&t1)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "a spent token"
    );
    // Two concurrent sends with one token: exactly one goes out.
    let (a, b) = tokio::join!(
        stack.send("baton-bot", otn(&t2)),
        stack.send("baton-bot", otn(&t2))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
    assert_eq!(stack.page_messages("u1").await.len(), 2);
    stack.advance(Span::days(366)).await;
    let (status, body) = stack.send("baton-bot", otn(&t3)).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "an expired token"
    );
    let (status, _) = stack.send("baton-bot", otn("no-such-token")).await;
    assert_eq!(status, 400);
    assert_eq!(upstream_messages(&stack).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_5xx_and_613_are_retried_and_the_message_goes_out_once() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack
        .ctl
        .add_fault(&FaultSpec::ServerError {
            count: 2,
            endpoint: Some("messages".into()),
            status: None,
        })
        .await
        .unwrap();
    stack
        .ctl
        .add_fault(&FaultSpec::RateLimit {
            count: 1,
            endpoint: Some("messages".into()),
        })
        .await
        .unwrap();
    let (status, body) = stack.send("baton-bot", text("u1", "made it")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        upstream_messages(&stack).await,
        4,
        "two 5xx, one 613, one success"
    );
    assert_eq!(
        stack.page_messages("u1").await,
        ["made it"],
        "sent exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_recorded_with_its_reason() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let fault = FaultSpec::GraphError {
        count: 1,
        endpoint: Some("messages".into()),
        status: None,
        code: 551,
        subcode: Some(1_545_041),
        message: Some("This person isn't available right now.".into()),
    };
    stack.ctl.add_fault(&fault).await.unwrap();
    let (status, body) = stack.send("baton-bot", text("u1", "hi")).await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!(551)));
    assert_eq!(upstream_messages(&stack).await, 1, "not retried");
    let outcome = stack
        .baton
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            domain::Event::SendOutcomeRecorded(o) => Some(o.outcome),
            _ => None,
        });
    assert!(
        matches!(outcome, Some(domain::events::SendOutcome::Failed { error }) if error.code == 551 && error.subcode == Some(1_545_041))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_recorded_unknown_and_settled_by_the_echo() {
    let tuning = Tuning {
        timeout_ms: 300,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ConversationRouting, tuning).await;
    stack.user_says("u1", "hello").await;
    stack.hold_next_answer("messages").await;
    let (status, body) = stack.send("baton-bot", text("u1", "slow one")).await;
    // Meta did send it and delivers its echo at once, while holding the
    // answer: the echo settles the unknown outcome. When it is folded before
    // the request's wait ends, the app gets the echo's message id; else 504
    // "do not resend", and the echo settles it moments later.
    let settled_mid = match status {
        200 => body["message_id"].as_str().map(str::to_owned),
        504 => {
            assert_eq!(body["error"]["code"], 2, "{body}");
            None
        }
        other => panic!("{other}: {body}"),
    };
    stack.ctl.release_held().await.unwrap();
    stack.ctl.wait_deliveries().await.unwrap();
    let outcomes: Vec<domain::events::SendOutcome> = stack.baton.send_outcomes().await;
    assert!(
        matches!(outcomes[0], domain::events::SendOutcome::Unknown { .. }),
        "{outcomes:?}"
    );
    let domain::events::SendOutcome::SettledByEcho { mid } = &outcomes[1] else {
        panic!("{outcomes:?}");
    };
    if let Some(answered) = settled_mid {
        assert_eq!(&answered, mid, "the app got the echo's message id");
    }
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(
        stack.page_messages("u1").await,
        ["slow one"],
        "never re-sent blindly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_replays_the_first_answer() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let first = stack
        .send_with_key("baton-bot", text("u1", "once"), Some("key-1"))
        .await;
    let again = stack
        .send_with_key("baton-bot", text("u1", "once"), Some("key-1"))
        .await;
    assert_eq!(first, again);
    assert_eq!(first.0, 200);
    assert_eq!(upstream_messages(&stack).await, 1);
    // A refusal is replayed too.
    stack.advance(Span::hours(25)).await;
    let r1 = stack
        .send_with_key("baton-bot", text("u1", "late"), Some("key-2"))
        .await;
    let r2 = stack
        .send_with_key("baton-bot", text("u1", "late"), Some("key-2"))
        .await;
    assert_eq!((r1.0, r2.0), (400, 400));
    assert_eq!(
        r1.1["error"]["error_subcode"],
        r2.1["error"]["error_subcode"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_rate_limit_holds_under_a_burst() {
    // One token per 200 ms: far longer than recording a send takes on
    // either store (PostgreSQL's round trips spread the sends out more
    // than sled's), so the burst really outruns the bucket.
    let tuning = Tuning {
        rate: 5.0,
        burst: 2.0,
        ..Tuning::default()
    };
    let stack = Stack::start_tuned(Mode::ZeroConfig, tuning).await;
    stack.user_says("u1", "hello").await;
    let sends = (0..6).map(|i| stack.send("baton-bot", text("u1", &format!("msg {i}"))));
    let results = futures_join_all(sends).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert!(
        stack
            .baton
            .running
            .state
            .baton
            .sends_delayed_by_rate_limit()
            >= 4,
        "a bucket of 2 makes the other 4 wait"
    );
    assert_eq!(upstream_messages(&stack).await, 6);
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut handles = Vec::new();
    for f in futures {
        handles.push(f);
    }
    let mut out = Vec::new();
    // Poll them together: a join over a vector without an extra dependency.
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(results.into_iter().map(|r| r.unwrap()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_says_allowed_or_refused_with_reasons() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let check = |token: &'static str, body: Value| {
        let http = stack.baton.http.clone();
        let url = stack.baton.url("/api/sends/check");
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ok = check("baton-bot", text("u1", "hi")).await;
    assert_eq!(ok["allowed"], true);
    assert_eq!(ok["basis"]["owner"], "thread_owner");
    assert_eq!(ok["window_closes_at"], T0.millis() + 86_400_000);
    let no = check("baton-human", text("u1", "hi")).await;
    assert_eq!(no["allowed"], false);
    assert_eq!(no["refusal"], "not_thread_owner");
    assert_eq!(no["error_subcode"], 2_018_300);
    assert_eq!(upstream_messages(&stack).await, 0);
    assert_eq!(
        stack.baton.count("SendAccepted").await,
        0,
        "a dry run records nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_release_and_sender_actions_and_bad_bodies() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    stack.pass("baton-bot", "u1", Some(HUMAN)).await;
    let (status, _) = stack
        .send(
            "baton-bot",
            json!({"recipient": {"id": "u1"}, "sender_action": "typing_on"}),
        )
        .await;
    assert_eq!(status, 400, "sender actions are gated like messages");
    let (status, body) = stack
        .send("baton-human", json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "All done, handing back"}, "thread_control": {"control_type": "release"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.ledger_view("u1"), domain::events::ControlView::Idle);
    stack.assert_consistent("u1").await;
    for bad in [
        json!({"messaging_type": "RESPONSE", "message": {"text": "x"}}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "x"}, "sender_action": "typing_on"}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "SOMETIMES", "message": {"text": "x"}}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": ""}}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE"}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "x"}, "thread_control": {"control_type": "steal"}}),
        json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "x", "metadata": "baton:send:someone-elses"}}),
    ] {
        let (status, body) = stack.send("baton-bot", bad.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(100)),
            "{bad}"
        );
    }
    assert_eq!(upstream_messages(&stack).await, 1);
}

/// Meta's shapes and codes (issue 14): no token at all is 104; a user who
/// never wrote to the page is 100/2018001 and nothing reaches Meta; a
/// sender action is answered with `recipient_id` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metas_codes_for_no_token_and_an_unknown_user_and_its_shape_for_sender_actions() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let res = stack
        .baton
        .http
        .post(stack.baton.url("/v21.0/me/messages"))
        .json(&text("u1", "no token"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["error"]["code"].clone(), body["error"]["type"].clone()),
        (json!(104), json!("OAuthException")),
        "{body}"
    );
    let (status, body) = stack.send("baton-bot", text("u404", "hello?")).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (400, json!(100), json!(2_018_001)),
        "{body}"
    );
    let (status, body) = stack.pass("baton-bot", "u404", Some(HUMAN)).await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_001)),
        "{body}"
    );
    assert_eq!(
        stack.ctl.calls().await.unwrap().len(),
        0,
        "nothing reached Meta"
    );
    let (status, body) = stack
        .send(
            "baton-bot",
            json!({"recipient": {"id": "u1"}, "sender_action": "typing_on"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"recipient_id": "u1"})));
}

/// "Who can I message now?": the threads where an app's send would be
/// accepted right now, with the basis, by the same rules as a real send;
/// the app sees only its own list, and bad input is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_can_i_message_now_lists_the_threads_a_send_would_reach_with_the_basis() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await; // the bot holds u1, window open
    stack.user_says("u2", "hello").await;
    stack.pass("baton-bot", "u2", Some(HUMAN)).await; // the human holds u2…
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "extend_thread_control",
            json!({"recipient": {"id": "u2"}, "duration": 3 * 86_400}),
        )
        .await;
    assert_eq!(status, 200, "…for three days");
    stack.user_says("u3", "hello").await;
    stack.advance(Span::hours(30)).await; // u1..u3 outside the 24 h window now
    stack.user_says("u4", "hello").await; // the bot holds u4, window open
    let list = |token: &'static str, app: &str, query: &str| {
        let url = stack
            .baton
            .url(&format!("/api/apps/{app}/messageable{query}"));
        let http = stack.baton.http.clone();
        async move {
            let res = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let psids = |body: &Value| -> Vec<String> {
        body["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["psid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, bot) = list("baton-bot", BOT, "").await;
    assert_eq!(status, 200, "{bot}");
    assert_eq!(
        psids(&bot),
        ["u4"],
        "only where the window is open and the bot may speak"
    );
    assert_eq!(bot["threads"][0]["owner"], "thread_owner");
    // The human app: u2 on day two, through HUMAN_AGENT (7 days).
    let (status, human) = list("baton-human", HUMAN, "").await;
    assert_eq!(status, 200, "{human}");
    assert_eq!(psids(&human), ["u2"]);
    assert_eq!(
        human["threads"][0]["window"]["basis"], "human_agent",
        "{human}"
    );
    // Each entry is what a real send gets: the bot's send to u4 goes out.
    let (status, _) = stack.send("baton-bot", text("u4", "still here")).await;
    assert_eq!(status, 200);
    // Only one's own list (or the admin's view); limit and bad input.
    assert_eq!(list("baton-human", BOT, "").await.0, 401);
    let (status, admin) = list(ADMIN_TOKEN, HUMAN, "?limit=1").await;
    assert_eq!((status, admin["count"].clone()), (200, json!(1)));
    let (status, err) = list("baton-bot", BOT, "?limit=many").await;
    assert_eq!(
        (status, err["error"].clone()),
        (400, json!("bad_request")),
        "{err}"
    );
    let (status, err) = list(ADMIN_TOKEN, "7777", "").await;
    assert_eq!(
        (status, err["error"].clone()),
        (404, json!("not_found")),
        "{err}"
    );
}
