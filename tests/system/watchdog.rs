//! Page health against the emulator: the subscription watchdog notices an
//! app Meta dropped (once, across checks and restarts), the admin subscribes
//! it again and webhooks flow again; a revoked page token shows invalid after
//! a call fails with 190 and is recorded once; and the health endpoints
//! refuse what they should while changing nothing.

use std::time::Duration;

use domain::events::SubscriptionSource;
use domain::{Event, Span};
use serde_json::{json, Value};

use crate::stack::*;
use crate::support::*;

const AUDITOR: &str = "auditor-secret";

async fn get_health(stack: &Stack, token: Option<&str>) -> (u16, Value) {
    let mut req = stack.baton.http.get(stack.baton.url("/api/health/pages"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn resubscribe(stack: &Stack, token: Option<&str>, page: &str, app: &str) -> (u16, Value) {
    let url = stack
        .baton
        .url(&format!("/api/health/pages/{page}/apps/{app}/resubscribe"));
    let mut req = stack.baton.http.post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// One app's entry on one page in a health answer.
fn entry(body: &Value, page: &str, app: &str) -> Value {
    body["pages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == page)
        .unwrap_or_else(|| panic!("page {page} in {body}"))["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == app)
        .unwrap_or_else(|| panic!("app {app} on {page} in {body}"))
        .clone()
}

async fn admin_health(stack: &Stack, app: &str) -> Value {
    let (status, body) = get_health(stack, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    entry(&body, PAGE, app)
}

/// Moves both clocks by `by` and waits (at most 30 s) until the watchdog
/// has finished a round on its schedule.
async fn scheduled_round(stack: &Stack, by: Span) {
    let mut rounds = stack.baton.running.state.subscription_rounds();
    rounds.borrow_and_update();
    stack.advance(by).await;
    tokio::time::timeout(Duration::from_secs(30), rounds.changed())
        .await
        .expect("the watchdog runs a round once its time has come")
        .unwrap();
}

async fn recorded<T>(stack: &Stack, pick: impl Fn(&Event) -> Option<T>) -> Vec<T> {
    stack.baton.events().await.iter().filter_map(pick).collect()
}

/// The apps Meta delivered the user's message to.
async fn user_reaches(stack: &Stack, psid: &str, words: &str) -> Vec<String> {
    let result = stack.ctl.user_text(PAGE, psid, words).await.unwrap();
    assert!(
        result.deliveries.iter().all(|d| d.ok),
        "every delivery to Baton succeeded: {:?}",
        result.deliveries
    );
    result.deliveries.into_iter().map(|d| d.app_id).collect()
}

/// What Meta itself lists as subscribed to the page.
async fn meta_lists(stack: &Stack) -> Value {
    let url = format!(
        "{}/v21.0/{PAGE}/subscribed_apps?access_token=page-token-human",
        stack.emulator.base_url()
    );
    stack
        .baton
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_recorded_once_and_the_admin_brings_the_webhooks_back() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let before = admin_health(&stack, BOT).await;
    assert_eq!(before["subscription"]["state"], "unknown", "{before}");
    assert_eq!(before["subscription"]["checked_at"], Value::Null);

    // Meta drops the bot after an hour of failed webhooks.
    stack.ctl.unsubscribe(BOT, PAGE).await.unwrap();
    scheduled_round(&stack, Span::hours(1)).await;
    let lost = recorded(&stack, |e| match e {
        Event::AppSubscriptionLost(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].page.as_str(), lost[0].app.as_str()), (PAGE, BOT));
    let lost_at = lost[0].at.millis();
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        (
            bot["subscription"]["state"].clone(),
            bot["subscription"]["since"].clone(),
            bot["subscription"]["checked_at"].clone()
        ),
        (json!("unsubscribed"), json!(lost_at), json!(lost_at)),
        "{bot}"
    );
    let human = admin_health(&stack, HUMAN).await;
    assert_eq!(human["subscription"]["state"], "subscribed", "{human}");
    assert_eq!(
        human["subscription"]["since"],
        Value::Null,
        "no fact about it"
    );
    assert_eq!(
        (
            bot["token"]["state"].clone(),
            human["token"]["state"].clone()
        ),
        (json!("valid"), json!("valid")),
        "the watchdog's own calls show the tokens work"
    );
    // The bot gets nothing for the page any more.
    assert!(!user_reaches(&stack, "u2", "anyone there?")
        .await
        .contains(&BOT.to_owned()));

    // The next check sees the same: nothing more is recorded.
    scheduled_round(&stack, Span::hours(1)).await;
    assert_eq!(stack.baton.count("AppSubscriptionLost").await, 1);
    let checked = admin_health(&stack, BOT).await;
    assert!(
        checked["subscription"]["checked_at"].as_i64() > Some(lost_at),
        "{checked}"
    );
    assert_eq!(checked["subscription"]["since"], json!(lost_at));

    // Nor after a restart: the loss is folded from the log.
    let stack = stack.restart_baton(Tuning::default()).await;
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        (
            bot["subscription"]["state"].clone(),
            bot["subscription"]["since"].clone(),
            bot["subscription"]["checked_at"].clone()
        ),
        (json!("unsubscribed"), json!(lost_at), Value::Null),
        "known from the log before any check: {bot}"
    );
    scheduled_round(&stack, Span::hours(1)).await;
    assert_eq!(stack.baton.count("AppSubscriptionLost").await, 1);

    // The admin subscribes it again; the restoration is recorded.
    let (status, body) = resubscribe(&stack, Some(ADMIN_TOKEN), PAGE, BOT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["subscribed"].clone(), body["restored"].clone()),
        (json!(true), json!(true)),
        "{body}"
    );
    let wanted: Vec<&str> = orchestration::health::DEFAULT_FIELDS.to_vec();
    assert_eq!(
        body["fields"],
        json!(wanted),
        "never seen: the default fields"
    );
    let restored = recorded(&stack, |e| match e {
        Event::AppSubscriptionRestored(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(
        restored[0].source,
        SubscriptionSource::Resubscribe {
            by: "api:admin".into()
        }
    );
    let listed = meta_lists(&stack).await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == BOT),
        "Meta lists the bot again: {listed}"
    );
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        (
            bot["subscription"]["state"].clone(),
            bot["subscription"]["since"].clone()
        ),
        (json!("subscribed"), json!(restored[0].at.millis())),
        "{bot}"
    );

    // Webhooks flow again: a user's message reaches Baton from the bot.
    assert!(user_reaches(&stack, "u3", "hello again")
        .await
        .contains(&BOT.to_owned()));
    let from_bot = recorded(&stack, |e| match e {
        Event::MessagingEventReceived(m)
            if m.thread.psid.as_str() == "u3" && m.delivery.app.as_str() == BOT =>
        {
            Some(())
        }
        Event::MessagingEventCopyReceived(m)
            if m.thread.psid.as_str() == "u3" && m.delivery.app.as_str() == BOT =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        from_bot.len(),
        1,
        "the bot's copy of u3's message is recorded"
    );
    assert_eq!(stack.ledger_view("u3"), owner(BOT));

    // The next check agrees: nothing more is recorded.
    scheduled_round(&stack, Span::hours(1)).await;
    assert_eq!(stack.baton.count("AppSubscriptionLost").await, 1);
    assert_eq!(stack.baton.count("AppSubscriptionRestored").await, 1);
    stack.assert_consistent("u3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_fixed_at_meta_is_seen_restored_by_the_next_check() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let baton = &stack.baton.running.state;
    // A round while all is well records nothing, and learns the bot's fields.
    let round = baton.check_subscriptions().await;
    assert_eq!((round.checked, round.lost, round.restored), (2, 0, 0));
    let head = stack.baton.head().await;

    stack.ctl.unsubscribe(BOT, PAGE).await.unwrap();
    let round = baton.check_subscriptions().await;
    assert_eq!((round.lost, round.restored), (1, 0));
    let lost = recorded(&stack, |e| match e {
        Event::AppSubscriptionLost(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert!(
        lost[0]
            .last_fields
            .contains(&"messaging_handovers".to_owned()),
        "the fields it was last seen with: {:?}",
        lost[0].last_fields
    );
    assert_eq!(stack.baton.head().await, head + 1, "one fact, nothing else");

    // Someone subscribes it again at Meta, with fewer fields.
    let url = format!(
        "{}/v21.0/{PAGE}/subscribed_apps?subscribed_fields=messages,standby&access_token=page-token-bot",
        stack.emulator.base_url()
    );
    let res = stack.baton.http.post(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let round = baton.check_subscriptions().await;
    assert_eq!((round.lost, round.restored), (0, 1));
    let restored = recorded(&stack, |e| match e {
        Event::AppSubscriptionRestored(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].source, SubscriptionSource::Check);
    assert_eq!(restored[0].fields, ["messages", "standby"]);
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        bot["subscription"]["fields"],
        json!(["messages", "standby"])
    );
    let round = baton.check_subscriptions().await;
    assert_eq!((round.lost, round.restored), (0, 0));
    assert_eq!(stack.baton.head().await, head + 2);
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_page_token_shows_invalid_after_a_190_and_is_recorded_once() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let human = admin_health(&stack, HUMAN).await;
    assert_eq!(human["token"]["state"], "unknown", "no call yet: {human}");

    stack.ctl.revoke_token(BOT, PAGE).await.unwrap();
    let (status, body) = stack.send("baton-bot", text("u1", "hi")).await;
    assert_eq!(
        (
            status,
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (400, json!(190), json!(460)),
        "Meta's refusal reaches the app: {body}"
    );
    let rejected = recorded(&stack, |e| match e {
        Event::PageTokenRejected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (
            rejected[0].app.as_str(),
            rejected[0].edge.as_str(),
            rejected[0].code,
            rejected[0].subcode
        ),
        (BOT, "messages", 190, Some(460))
    );
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        (
            bot["token"]["state"].clone(),
            bot["token"]["error"]["subcode"].clone(),
            bot["token"]["invalid_since"].clone(),
            bot["token"]["edge"].clone()
        ),
        (
            json!("invalid"),
            json!(460),
            json!(rejected[0].at.millis()),
            json!("messages")
        ),
        "{bot}"
    );
    // A second failure is not a second breakage.
    let (status, _) = stack.send("baton-bot", text("u1", "hello?")).await;
    assert_eq!(status, 400);
    assert_eq!(stack.baton.count("PageTokenRejected").await, 1);

    // The human's token works (a control call succeeds)...
    let request = json!({"recipient": {"id": "u1"}, "metadata": "a human is free"});
    let (status, body) = stack
        .graph_post("baton-human", "request_thread_control", request.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin_health(&stack, HUMAN).await["token"]["state"], "valid");
    // ...until Meta revokes it too: a control call shows it.
    stack.ctl.revoke_token(HUMAN, PAGE).await.unwrap();
    let (status, body) = stack
        .graph_post("baton-human", "request_thread_control", request)
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(190)),
        "{body}"
    );
    let human = admin_health(&stack, HUMAN).await;
    assert_eq!(
        (
            human["token"]["state"].clone(),
            human["token"]["edge"].clone()
        ),
        (json!("invalid"), json!("request_thread_control")),
        "{human}"
    );
    assert_eq!(stack.baton.count("PageTokenRejected").await, 2);

    // The watchdog cannot read subscribed_apps with them: that is an
    // error of the check, never a lost subscription.
    let round = stack.baton.running.state.check_subscriptions().await;
    assert_eq!(
        (round.checked, round.failed, round.lost),
        (0, 2, 0),
        "{round:?}"
    );
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(bot["subscription"]["state"], "unknown", "{bot}");
    assert!(
        bot["subscription"]["check_error"]["message"]
            .as_str()
            .unwrap()
            .contains("190/460"),
        "{bot}"
    );
    assert_eq!(stack.baton.count("PageTokenRejected").await, 2);
    assert_eq!(stack.baton.count("AppSubscriptionLost").await, 0);

    // After a restart the breakage is known from the log, and not recorded again.
    let stack = stack.restart_baton(Tuning::default()).await;
    let bot = admin_health(&stack, BOT).await;
    assert_eq!(
        (
            bot["token"]["state"].clone(),
            bot["token"]["invalid_since"].clone()
        ),
        (json!("invalid"), json!(rejected[0].at.millis())),
        "{bot}"
    );
    let (status, _) = stack.send("baton-bot", text("u1", "still there?")).await;
    assert_eq!(status, 400);
    assert_eq!(stack.baton.count("PageTokenRejected").await, 2);
    stack.assert_consistent("u1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoints_refuse_bad_tokens_and_unknown_pages_and_change_nothing() {
    let auditor = format!("auditor_token = \"{AUDITOR}\"");
    let stack = Stack::start_with(Mode::ConversationRouting, Tuning::default(), &[&auditor]).await;
    stack.user_says("u1", "hello").await;
    let head = stack.baton.head().await;

    // Reading: no token or a wrong one is 401.
    for token in [None, Some("nope")] {
        let (status, body) = get_health(&stack, token).await;
        assert_eq!(
            (status, body["error"].clone()),
            (401, json!("unauthorized")),
            "{body}"
        );
    }
    // The admin and the auditor see every page.
    for token in [ADMIN_TOKEN, AUDITOR] {
        let (status, body) = get_health(&stack, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        let pages: Vec<&str> = body["pages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(pages, [PAGE, OTHER_PAGE]);
        assert_eq!(body["check_every_secs"], 3600);
    }
    let (_, body) = get_health(&stack, Some(ADMIN_TOKEN)).await;
    let page = &body["pages"][0];
    assert_eq!(
        (page["mode"].clone(), page["default_app"].clone()),
        (json!("conversation_routing"), json!(BOT)),
        "{page}"
    );
    let inbox = entry(&body, PAGE, PAGE_INBOX);
    assert_eq!(
        (
            inbox["kind"].clone(),
            inbox["managed"].clone(),
            inbox["subscription"]["state"].clone(),
            inbox["token"]["state"].clone()
        ),
        (
            json!("human"),
            json!(false),
            json!("unknown"),
            json!("unknown")
        ),
        "{inbox}"
    );
    // An app sees its own pages, and only itself on them.
    let (status, body) = get_health(&stack, Some("baton-human")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pages"].as_array().unwrap().len(), 1, "{body}");
    let apps: Vec<&str> = body["pages"][0]["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(apps, [HUMAN]);
    assert_eq!(body["pages"][0]["apps"][0]["kind"], "human");

    // Re-subscribing: admin only.
    let refusals = [
        (None, PAGE, BOT, 401, "unauthorized"),
        (Some("nope"), PAGE, BOT, 401, "unauthorized"),
        (Some(AUDITOR), PAGE, BOT, 403, "forbidden"),
        (Some("baton-bot"), PAGE, BOT, 403, "forbidden"),
        (Some("baton-human"), PAGE, HUMAN, 403, "forbidden"),
        (Some(ADMIN_TOKEN), "9999999", BOT, 404, "not_found"),
        (Some(ADMIN_TOKEN), OTHER_PAGE, HUMAN, 404, "not_found"),
        (Some(ADMIN_TOKEN), PAGE, "4242", 404, "not_found"),
        (Some(ADMIN_TOKEN), PAGE, PAGE_INBOX, 400, "bad_request"),
    ];
    for (token, page, app, status, code) in refusals {
        let (got, body) = resubscribe(&stack, token, page, app).await;
        assert_eq!(
            (got, body["error"].clone()),
            (status, json!(code)),
            "{token:?} {page} {app}: {body}"
        );
        assert!(body["message"].is_string(), "{body}");
    }
    let res = stack
        .baton
        .http
        .get(
            stack
                .baton
                .url(&format!("/api/health/pages/{PAGE}/apps/{BOT}/resubscribe")),
        )
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(stack.baton.head().await, head, "nothing was recorded");
    assert_eq!(
        stack.upstream_calls("subscribed_apps").await,
        0,
        "nothing reached Meta"
    );

    // Re-subscribing an app nobody lost asks Meta and records nothing.
    let (status, body) = resubscribe(&stack, Some(ADMIN_TOKEN), PAGE, HUMAN).await;
    assert_eq!(
        (status, body["restored"].clone()),
        (200, json!(false)),
        "{body}"
    );
    assert_eq!(stack.upstream_calls("subscribed_apps").await, 1);
    assert_eq!(stack.baton.head().await, head);
}
