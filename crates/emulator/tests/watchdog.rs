//! What a subscription and token watchdog sees: `subscribed_apps`, Meta
//! dropping an app's subscription (as after an hour of failed webhooks) and
//! Meta invalidating a page token (190/460), checked over HTTP.

mod common;

use common::*;
use emulator::{AppConfig, PageConfig, PAGE_INBOX_APP_ID};
use serde_json::{json, Value};

/// A second page whose default app is the bot; the CRM is not on it.
const PAGE2: &str = "1002";
const BOT_TOKEN2: &str = "tok-bot-2";
/// A third app on the first page, with no name and no callback.
const SPY: &str = "333";
const SPY_TOKEN: &str = "tok-spy";
const INVALIDATED: &str = "Error validating access token: The session has been invalidated because the user changed their password or Facebook has changed the session for security reasons.";

fn fixture() -> Fixture {
    Fixture::with(|w, bot, crm| {
        let mut spy = AppConfig::new(SPY, "spy-secret").with_token(PAGE, SPY_TOKEN);
        spy.name = String::new();
        w.with_page(PageConfig::conversation_routing(PAGE, BOT))
            .with_page(PageConfig::conversation_routing(PAGE2, BOT))
            .with_app(bot.with_token(PAGE2, BOT_TOKEN2))
            .with_app(crm)
            .with_app(spy)
    })
}

/// A Graph call to `/v21.0/{path}` with `token` as a query parameter.
async fn graph(f: &Fixture, method: &str, path: &str, token: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let resp = f
        .http
        .request(method, format!("{}/{path}", f.emu.graph_url()))
        .query(&[("access_token", token)])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The apps `GET /{page}/subscribed_apps` lists: (id, name, fields).
async fn subscribed(f: &Fixture, page: &str, token: &str) -> Vec<(String, String, Value)> {
    let (s, b) = graph(f, "GET", &format!("{page}/subscribed_apps"), token).await;
    assert_eq!(s, 200, "{b}");
    b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_string(),
                a["name"].as_str().unwrap().to_string(),
                a["subscribed_fields"].clone(),
            )
        })
        .collect()
}

fn ids(list: &[(String, String, Value)]) -> Vec<&str> {
    list.iter().map(|(id, _, _)| id.as_str()).collect()
}

/// A raw control call: (status, JSON answer).
async fn control(f: &Fixture, path: &str, body: &str) -> (u16, Value) {
    let resp = f
        .http
        .post(format!("{}/_emulator{path}", f.emu.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

// ----- subscribed_apps ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn subscribed_apps_lists_the_page_apps_and_follows_subscribe_and_unsubscribe() {
    let f = fixture();
    // Every app of the page is subscribed from the start with its fields,
    // whoever asks; a nameless app is named by its id; the Page Inbox gets
    // no webhooks and is not listed.
    let list = subscribed(&f, PAGE, CRM_TOKEN).await;
    assert_eq!(ids(&list), [BOT, CRM, SPY]);
    assert_eq!(list[0].1, format!("App {BOT}"));
    assert_eq!(list[2].1, SPY);
    // The fields come back sorted.
    let mut defaults: Vec<&str> = emulator::DEFAULT_FIELDS.to_vec();
    defaults.sort_unstable();
    assert_eq!(list[0].2, json!(defaults));
    assert!(!ids(&list).contains(&PAGE_INBOX_APP_ID));
    assert_eq!(ids(&subscribed(&f, PAGE2, BOT_TOKEN2).await), [BOT]);

    // The CRM unsubscribes: gone from the list, and no more webhooks.
    let (s, b) = graph(&f, "DELETE", &format!("{PAGE}/subscribed_apps"), CRM_TOKEN).await;
    assert_eq!((s, b), (200, json!({"success": true})));
    assert_eq!(ids(&subscribed(&f, PAGE, BOT_TOKEN).await), [BOT, SPY]);
    f.emu.control().user_text(PAGE, USER, "one").await.unwrap();
    assert!(f.crm.received().is_empty());
    assert_eq!(f.bot.items_with("message").len(), 1);

    // It subscribes again with query parameters, as Meta documents.
    let (s, b) = graph(
        &f,
        "POST",
        &format!("{PAGE}/subscribed_apps?subscribed_fields=messages,standby"),
        CRM_TOKEN,
    )
    .await;
    assert_eq!((s, b), (200, json!({"success": true})));
    let list = subscribed(&f, PAGE, BOT_TOKEN).await;
    assert_eq!(list[1].0, CRM);
    assert_eq!(list[1].2, json!(["messages", "standby"]));
    f.emu.control().user_text(PAGE, USER, "two").await.unwrap();
    let crm = f.crm.items_with("message");
    assert_eq!(crm.len(), 1);
    assert_eq!(
        (crm[0].0.as_str(), &crm[0].1["message"]["text"]),
        ("standby", &json!("two"))
    );

    // Missing or empty fields: 100, and the subscription stays as it was.
    for query in ["", "?subscribed_fields=", "?subscribed_fields=,,"] {
        let (s, b) = graph(
            &f,
            "POST",
            &format!("{PAGE}/subscribed_apps{query}"),
            CRM_TOKEN,
        )
        .await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{query}: {b}");
    }
    assert_eq!(
        subscribed(&f, PAGE, BOT_TOKEN).await[1].2,
        json!(["messages", "standby"])
    );
    // A token for another page, or no page token at all.
    let (s, b) = graph(&f, "GET", &format!("{PAGE2}/subscribed_apps"), CRM_TOKEN).await;
    assert_eq!((s, code(&b)), (400, (100, Some(33))), "{b}");
    let (s, b) = graph(
        &f,
        "POST",
        &format!("{PAGE}/subscribed_apps?subscribed_fields=messages"),
        "nope",
    )
    .await;
    assert_eq!((s, code(&b)), (400, (190, None)), "{b}");
    let (s, b) = graph(
        &f,
        "DELETE",
        &format!("{PAGE}/subscribed_apps"),
        &format!("{BOT}|{BOT_SECRET}"),
    )
    .await;
    assert_eq!((s, code(&b)), (400, (190, None)), "{b}");
    assert_eq!(ids(&subscribed(&f, PAGE, BOT_TOKEN).await), [BOT, CRM, SPY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn meta_dropping_a_subscription_stops_the_apps_webhooks_for_that_page_only() {
    let f = fixture();
    let c = f.emu.control();
    c.unsubscribe(BOT, PAGE).await.unwrap();

    // The watchdog sees it: the bot is gone from the page, not from PAGE2.
    assert_eq!(ids(&subscribed(&f, PAGE, CRM_TOKEN).await), [CRM, SPY]);
    assert_eq!(ids(&subscribed(&f, PAGE2, BOT_TOKEN2).await), [BOT]);

    // No webhook for that page reaches the bot: neither the user's message
    // (which still gives the bot the idle thread) nor a handover notice.
    let r = c.user_text(PAGE, USER, "hello").await.unwrap();
    assert_eq!(
        r.deliveries
            .iter()
            .map(|d| d.app_id.as_str())
            .collect::<Vec<_>>(),
        [CRM]
    );
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(BOT)
    );
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = f
        .post(
            CRM_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": BOT}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    c.wait_deliveries().await.unwrap();
    assert!(f.bot.received().is_empty());
    assert_eq!(f.crm.items_with("pass_thread_control").len(), 1);
    // The other page still delivers to the bot.
    c.user_text(PAGE2, USER, "elsewhere").await.unwrap();
    assert_eq!(f.bot.items_with("message").len(), 1);

    // Replacing the page does not subscribe the bot again; neither does
    // dropping it twice change anything.
    c.put_page(&PageConfig::conversation_routing(PAGE, BOT))
        .await
        .unwrap();
    c.unsubscribe(BOT, PAGE).await.unwrap();
    assert_eq!(ids(&subscribed(&f, PAGE, CRM_TOKEN).await), [CRM, SPY]);

    // The bot subscribes again: webhooks flow from the next event on.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "subscribed_apps",
            json!({"subscribed_fields": ["messages", "messaging_handovers"]}),
        )
        .await;
    assert_eq!(s, 200);
    f.bot.clear();
    c.user_text(PAGE, USER, "back").await.unwrap();
    let bot = f.bot.items_with("message");
    assert_eq!(bot.len(), 1);
    assert_eq!(bot[0].1["message"]["text"], "back");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_refuses_unknown_apps_pages_and_apps_not_on_the_page() {
    let f = fixture();
    for (path, body, status) in [
        (
            "/apps/404/unsubscribe",
            format!(r#"{{"page": "{PAGE}"}}"#),
            404,
        ),
        (
            "/apps/111/unsubscribe",
            r#"{"page": "404"}"#.to_string(),
            400,
        ),
        // The CRM is not on PAGE2.
        (
            "/apps/222/unsubscribe",
            format!(r#"{{"page": "{PAGE2}"}}"#),
            400,
        ),
        ("/apps/111/unsubscribe", "{}".to_string(), 400),
        (
            "/apps/111/unsubscribe",
            format!(r#"{{"page": {PAGE}}}"#),
            400,
        ),
        (
            "/apps/111/unsubscribe",
            format!(r#"{{"page": "{PAGE}", "x": 1}}"#),
            400,
        ),
        ("/apps/111/unsubscribe", "{".to_string(), 400),
    ] {
        let (s, b) = control(&f, path, &body).await;
        assert_eq!(s, status, "{path} {body}: {b}");
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b}");
    }
    assert_eq!(ids(&subscribed(&f, PAGE, BOT_TOKEN).await), [BOT, CRM, SPY]);
    assert_eq!(ids(&subscribed(&f, PAGE2, BOT_TOKEN2).await), [BOT]);
}

// ----- token health -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_page_token_answers_190_460_on_every_graph_call() {
    let f = fixture();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    c.revoke_token(BOT, PAGE).await.unwrap();

    let rcp = json!({"recipient": {"id": USER}});
    let send =
        json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "x"}});
    let calls: Vec<(&str, String)> = vec![
        ("POST", "me/messages".into()),
        ("GET", "me".into()),
        ("GET", format!("{PAGE}/subscribed_apps")),
        (
            "POST",
            format!("{PAGE}/subscribed_apps?subscribed_fields=messages"),
        ),
        ("DELETE", format!("{PAGE}/subscribed_apps")),
        ("GET", format!("me/thread_owner?recipient={USER}")),
        ("POST", "me/pass_thread_control".into()),
        ("GET", USER.to_string()),
        // Another page's node or an unknown edge: the token fails first.
        ("GET", format!("{PAGE2}/subscribed_apps")),
        ("GET", "me/nothing_here".into()),
        ("GET", "asid-1/ids_for_pages".into()),
    ];
    for (method, path) in &calls {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = f
            .http
            .request(m, format!("{}/{path}", f.emu.graph_url()))
            .bearer_auth(BOT_TOKEN)
            .json(if path.ends_with("messages") {
                &send
            } else {
                &rcp
            })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{method} {path}");
        let auth = resp.headers()["WWW-Authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(auth.contains("invalid_token"), "{auth}");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(code(&b), (190, Some(460)), "{method} {path}: {b}");
        assert_eq!(b["error"]["type"], "OAuthException");
        assert_eq!(b["error"]["message"], INVALIDATED);
        assert!(b["error"]["fbtrace_id"].is_string());
    }
    // Nothing happened: no message was sent, the bot is still subscribed,
    // the thread is still the bot's.
    let thread = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(thread.transcript.len(), 1);
    assert_eq!(thread.owner.as_deref(), Some(BOT));
    assert_eq!(ids(&subscribed(&f, PAGE, CRM_TOKEN).await), [BOT, CRM, SPY]);
    // The call log keeps the refused calls under the bot's name.
    let log = c.calls().await.unwrap();
    assert!(log
        .iter()
        .filter(|r| r.status == 400)
        .all(|r| r.app_id.as_deref() == Some(BOT) && r.response["error"]["error_subcode"] == 460));

    // Webhooks do not depend on the token: the bot still gets the user.
    f.bot.clear();
    c.user_text(PAGE, USER, "still here").await.unwrap();
    assert_eq!(f.bot.items_with("message").len(), 1);
    // Other tokens are fine: the CRM's, and the bot's for PAGE2.
    assert_eq!(ids(&subscribed(&f, PAGE, CRM_TOKEN).await).len(), 3);
    c.user_text(PAGE2, USER, "hi").await.unwrap();
    let (s, b) = graph(&f, "GET", "me", BOT_TOKEN2).await;
    assert_eq!((s, b["id"].clone()), (200, json!(PAGE2)), "{b}");

    // A revoked token stays revoked, even configured again; a new one works.
    let (bot, _) = apps(&f.bot, &f.crm);
    c.put_app(&bot.clone().with_token(PAGE2, BOT_TOKEN2))
        .await
        .unwrap();
    assert_eq!(code(&f.send_text(BOT_TOKEN, "x").await.1), (190, Some(460)));
    c.put_app(
        &bot.with_token(PAGE, "tok-bot-new")
            .with_token(PAGE2, BOT_TOKEN2),
    )
    .await
    .unwrap();
    let (s, b) = f.send_text("tok-bot-new", "new token").await;
    assert_eq!(s, 200, "{b}");
    // The old token, no longer configured, is still the invalidated session.
    assert_eq!(code(&f.send_text(BOT_TOKEN, "x").await.1), (190, Some(460)));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_refuses_unknown_apps_and_pages_without_a_token() {
    let f = fixture();
    for (path, status) in [
        ("/apps/404/tokens/1001/revoke", 404),
        // The CRM has no token for PAGE2, nor anyone for an unknown page.
        ("/apps/222/tokens/1002/revoke", 404),
        ("/apps/111/tokens/404/revoke", 404),
    ] {
        let (s, b) = control(&f, path, "{}").await;
        assert_eq!(s, status, "{path}: {b}");
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()), "{b}");
    }
    // Nothing was revoked.
    for token in [BOT_TOKEN, CRM_TOKEN, BOT_TOKEN2] {
        let (s, b) = graph(&f, "GET", "me", token).await;
        assert_eq!(s, 200, "{token}: {b}");
    }
    // Revoking twice is fine; only that token is hit.
    let c = f.emu.control();
    c.revoke_token(CRM, PAGE).await.unwrap();
    c.revoke_token(CRM, PAGE).await.unwrap();
    assert_eq!(
        code(&graph(&f, "GET", "me", CRM_TOKEN).await.1),
        (190, Some(460))
    );
    assert_eq!(graph(&f, "GET", "me", BOT_TOKEN).await.0, 200);
}
