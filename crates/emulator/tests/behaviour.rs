//! Meta behaviour as the emulator implements it, checked over HTTP.

mod common;

use common::*;
use emulator::{
    signature_1, signature_256, AppConfig, FaultSpec, PageConfig, Referral, SetOwner, UserMessage,
    UserPostback, UserReceipt, PAGE_INBOX_APP_ID,
};
use serde_json::json;

const DAY: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread")]
async fn user_message_goes_to_owner_on_messaging_and_others_on_standby_signed() {
    let f = Fixture::cr();
    let r = f
        .emu
        .control()
        .user_text(PAGE, USER, "héllo")
        .await
        .unwrap();
    assert_eq!(r.deliveries.len(), 2, "{r:?}");
    assert!(r.deliveries.iter().all(|d| d.ok && d.attempts == 1));

    let bot = f.bot.items_with("message");
    assert_eq!(bot.len(), 1);
    assert_eq!(bot[0].0, "messaging");
    assert_eq!(bot[0].1["message"]["text"], "héllo");
    assert_eq!(bot[0].1["sender"]["id"], USER);
    assert_eq!(bot[0].1["recipient"]["id"], PAGE);
    assert_eq!(bot[0].1["message"]["mid"], r.mid.clone().unwrap());
    let crm = f.crm.items_with("message");
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0].0, "standby");

    for (rx, secret) in [(&f.bot, BOT_SECRET), (&f.crm, CRM_SECRET)] {
        let got = &rx.received()[0];
        assert_eq!(
            got.sig256.as_deref(),
            Some(signature_256(secret, &got.body).as_str())
        );
        assert_eq!(
            got.sig1.as_deref(),
            Some(signature_1(secret, &got.body).as_str())
        );
        // Meta escapes non-ASCII characters in bodies.
        assert!(got.body.is_ascii());
        let env = got.json();
        assert_eq!(env["object"], "page");
        assert_eq!(env["entry"][0]["id"], PAGE);
    }
    // Independent check of the HMAC against a known vector.
    assert_eq!(
        signature_256("key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );

    let view = f.emu.control().thread(PAGE, USER).await.unwrap();
    assert_eq!(view.owner.as_deref(), Some(BOT));
    assert!(view.window_open);
}

#[tokio::test(flavor = "multi_thread")]
async fn postback_payload_is_stripped_on_standby() {
    let f = Fixture::cr();
    let pb = UserPostback {
        title: "Start".into(),
        payload: "GET_STARTED".into(),
        referral: None,
    };
    f.emu
        .control()
        .user_postback(PAGE, USER, &pb)
        .await
        .unwrap();
    let bot = f.bot.items_with("postback");
    assert_eq!(bot[0].0, "messaging");
    assert_eq!(bot[0].1["postback"]["payload"], "GET_STARTED");
    let crm = f.crm.items_with("postback");
    assert_eq!(crm[0].0, "standby");
    assert_eq!(crm[0].1["postback"]["title"], "Start");
    assert!(crm[0].1["postback"].get("payload").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_may_send_and_non_owner_gets_2018300_with_echoes() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let (status, body) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE",
                   "message": {"text": "hello", "metadata": "outbox-1"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recipient_id"], USER);
    let mid = body["message_id"].as_str().unwrap().to_string();
    assert!(mid.starts_with("m_"));

    let (status, body) = f.send_text(CRM_TOKEN, "me too").await;
    assert_eq!(status, 400);
    assert_eq!(code(&body), (10, Some(2018300)));
    assert_eq!(body["error"]["type"], "OAuthException");
    assert!(body["error"]["fbtrace_id"].is_string());

    c.wait_deliveries().await.unwrap();
    let echo = f.bot.items_with("message").pop().unwrap();
    assert_eq!(echo.0, "messaging");
    assert_eq!(echo.1["message"]["is_echo"], true);
    assert_eq!(echo.1["message"]["mid"], mid.as_str());
    assert_eq!(echo.1["message"]["metadata"], "outbox-1");
    assert_eq!(echo.1["message"]["app_id"], 111);
    assert_eq!(echo.1["sender"]["id"], PAGE);
    assert_eq!(echo.1["recipient"]["id"], USER);
    let echo = f.crm.items_with("message").pop().unwrap();
    assert_eq!(echo.0, "standby");
    assert_eq!(echo.1["message"]["is_echo"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn window_tags_and_human_agent() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::conversation_routing(PAGE, BOT))
            .with_app(bot)
            .with_app(crm.human_agent(true))
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    // Echoes, reads and deliveries do not refresh the window.
    assert_eq!(f.send_text(BOT_TOKEN, "a").await.0, 200);
    c.advance(DAY - 1).await.unwrap();
    c.user_read(PAGE, USER, &UserReceipt::default())
        .await
        .unwrap();
    c.user_delivery(PAGE, USER, &UserReceipt::default())
        .await
        .unwrap();
    assert_eq!(f.send_text(BOT_TOKEN, "still in").await.0, 200);
    c.advance(1).await.unwrap();
    // Control lapsed with the window: the bot is the default app again.
    let (status, body) = f.send_text(BOT_TOKEN, "late").await;
    assert_eq!((status, code(&body)), (400, (10, Some(2018278))), "{body}");

    // Retired tags answer 100.
    for tag in [
        "CONFIRMED_EVENT_UPDATE",
        "POST_PURCHASE_UPDATE",
        "ACCOUNT_UPDATE",
    ] {
        let (_, body) = f
            .post(
                BOT_TOKEN,
                "messages",
                json!({"recipient": {"id": USER}, "messaging_type": "MESSAGE_TAG", "tag": tag,
                       "message": {"text": "x"}}),
            )
            .await;
        assert_eq!(code(&body), (100, None), "{tag}: {body}");
    }
    let human = |token: &'static str| {
        let f = &f;
        async move {
            f.post(
                token,
                "messages",
                json!({"recipient": {"id": USER}, "messaging_type": "MESSAGE_TAG",
                       "tag": "HUMAN_AGENT", "message": {"text": "agent here"}}),
            )
            .await
        }
    };
    // The bot lacks the Human Agent feature: 10, as Baton's domain answers.
    assert_eq!(code(&human(BOT_TOKEN).await.1), (10, None));
    // Give the thread to the CRM (human agent app): it may use HUMAN_AGENT within 7 days.
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = human(CRM_TOKEN).await;
    assert_eq!(s, 200, "{b}");
    let (_, b) = f.send_text(CRM_TOKEN, "plain outside window").await;
    assert_eq!(code(&b), (10, Some(2018278)));
    c.advance(6 * DAY).await.unwrap();
    c.set_owner(
        PAGE,
        USER,
        &SetOwner {
            app_id: Some(CRM.into()),
            expires_at_ms: None,
        },
    )
    .await
    .unwrap();
    let (_, b) = human(CRM_TOKEN).await;
    assert_eq!(code(&b), (10, Some(2018278)), "7 days passed: {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_time_notification_tokens_are_single_use() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let r = c.user_otn_optin(PAGE, USER, "PRICE_DROP").await.unwrap();
    let token = r.token.unwrap();
    let optin = f.bot.items_with("optin").pop().unwrap();
    assert_eq!(optin.0, "messaging");
    assert_eq!(optin.1["optin"]["type"], "one_time_notif_req");
    assert_eq!(optin.1["optin"]["one_time_notif_token"], token.as_str());
    assert_eq!(optin.1["optin"]["payload"], "PRICE_DROP");

    c.advance(3 * DAY).await.unwrap();
    assert_eq!(
        code(&f.send_text(BOT_TOKEN, "closed").await.1),
        (10, Some(2018278))
    );
    let send = || {
        f.post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"one_time_notif_token": token}, "message": {"text": "back in stock"}}),
        )
    };
    let (s, b) = send().await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["recipient_id"], USER);
    let (s, b) = send().await;
    assert_eq!((s, code(&b)), (400, (100, None)));
    let view = c.thread(PAGE, USER).await.unwrap();
    assert!(view.otn_tokens[0].used);
}

#[tokio::test(flavor = "multi_thread")]
async fn conversation_routing_thread_control() {
    let third = Receiver::start();
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::conversation_routing(PAGE, BOT))
            .with_app(bot)
            .with_app(crm)
            .with_app(
                AppConfig::new("333", "third-secret")
                    .with_callback(&third.url)
                    .with_token(PAGE, "tok-333")
                    .may_take(true),
            )
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let rcp = json!({"recipient": {"id": USER}});

    // Non-owner pass and release: 100/2534037.
    let (_, b) = f
        .post(
            CRM_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (_, b) = f
        .post(CRM_TOKEN, "release_thread_control", rcp.clone())
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));

    // Owner passes to the CRM: the CRM gets pass_thread_control.
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM, "metadata": "to crm"}),
        )
        .await;
    assert_eq!((s, b.clone()), (200, json!({"success": true})));
    c.wait_deliveries().await.unwrap();
    let pass = f.crm.items_with("pass_thread_control");
    assert_eq!(pass.len(), 1);
    assert_eq!(pass[0].0, "messaging");
    assert_eq!(
        pass[0].1["pass_thread_control"]["previous_owner_app_id"],
        BOT
    );
    assert_eq!(pass[0].1["pass_thread_control"]["new_owner_app_id"], CRM);
    assert_eq!(pass[0].1["pass_thread_control"]["metadata"], "to crm");
    // Now the bot is on standby.
    assert_eq!(
        code(&f.send_text(BOT_TOKEN, "x").await.1),
        (10, Some(2018300))
    );
    c.user_text(PAGE, USER, "who is there").await.unwrap();
    assert_eq!(f.bot.items_with("message").last().unwrap().0, "standby");
    assert_eq!(f.crm.items_with("message").last().unwrap().0, "messaging");

    // thread_owner: the owner and the default app see it, others see nothing.
    let (_, b) = f
        .get(CRM_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(b["data"][0]["thread_owner"]["app_id"], CRM);
    assert!(b["data"][0]["thread_owner"]["expiration"].is_i64());
    let (_, b) = f
        .get(BOT_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(b["data"][0]["thread_owner"]["app_id"], CRM);
    let (_, b) = f
        .get("tok-333", &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(b, json!({"data": []}));

    // Take: refused for an app without the toggle (200, a permission), allowed
    // for one with it.
    let (_, b) = f.post(BOT_TOKEN, "take_thread_control", rcp.clone()).await;
    assert_eq!(code(&b), (200, None));
    let (s, _) = f
        .post(
            "tok-333",
            "take_thread_control",
            json!({"recipient": {"id": USER}, "metadata": "mine"}),
        )
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    let take = f.crm.items_with("take_thread_control");
    assert_eq!(
        take[0].1["take_thread_control"]["previous_owner_app_id"],
        CRM
    );
    assert_eq!(take[0].1["take_thread_control"]["new_owner_app_id"], "333");

    // Request: the owner is told.
    let (s, _) = f
        .post(
            CRM_TOKEN,
            "request_thread_control",
            json!({"recipient": {"id": USER}, "metadata": "please"}),
        )
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    let req = third.items_with("request_thread_control");
    assert_eq!(
        req[0].1["request_thread_control"]["requested_owner_app_id"],
        CRM
    );
    assert_eq!(req[0].1["request_thread_control"]["metadata"], "please");

    // Extend: owner only, at most 7 days.
    let (_, b) = f
        .post(
            CRM_TOKEN,
            "extend_thread_control",
            json!({"recipient": {"id": USER}, "duration": 3600}),
        )
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (_, b) = f
        .post(
            "tok-333",
            "extend_thread_control",
            json!({"recipient": {"id": USER}, "duration": 700000}),
        )
        .await;
    assert_eq!(code(&b).0, 100);
    let (s, _) = f
        .post(
            "tok-333",
            "extend_thread_control",
            json!({"recipient": {"id": USER}, "duration": 3 * 86400}),
        )
        .await;
    assert_eq!(s, 200);
    c.advance(2 * DAY).await.unwrap();
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some("333")
    );
    let clock = c.advance(DAY).await.unwrap();
    assert_eq!(clock.expired, vec![format!("{PAGE}/{USER}")]);
    let view = c.thread(PAGE, USER).await.unwrap();
    assert!(view.idle);

    // Idle: only the default app... and a user message gives it control.
    c.user_text(PAGE, USER, "back").await.unwrap();
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(BOT)
    );
    // Release: no webhook, thread idle.
    c.wait_deliveries().await.unwrap();
    let before: usize = [&f.bot, &f.crm, &third]
        .iter()
        .map(|r| r.received().len())
        .sum();
    let (s, _) = f
        .post(BOT_TOKEN, "release_thread_control", rcp.clone())
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    let after: usize = [&f.bot, &f.crm, &third]
        .iter()
        .map(|r| r.received().len())
        .sum();
    assert_eq!(before, after, "release sends no webhook");
    assert!(c.thread(PAGE, USER).await.unwrap().idle);
    let (_, b) = f
        .get(BOT_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(b, json!({"data": []}));
    // Idle: the default app may send, others may not.
    assert_eq!(f.send_text(BOT_TOKEN, "default").await.0, 200);
    assert_eq!(
        code(&f.send_text(CRM_TOKEN, "no").await.1),
        (10, Some(2018300))
    );
    // Idle: the default app may pass without target... to itself is refused; to the CRM works.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    let pass = f.crm.items_with("pass_thread_control").pop().unwrap();
    assert!(pass.1["pass_thread_control"]["previous_owner_app_id"].is_null());
    // Inline control on send: the owner sends and passes back to the default app.
    let (s, b) = f
        .post(
            CRM_TOKEN,
            "messages",
            json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "bye"},
              "thread_control": {"control_type": "pass"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(BOT)
    );
    c.wait_deliveries().await.unwrap();
    assert_eq!(
        f.bot.items_with("pass_thread_control").pop().unwrap().1["pass_thread_control"]
            ["previous_owner_app_id"],
        CRM
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_config_rules() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::zero_config(PAGE))
            .with_app(bot)
            .with_app(crm)
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    assert_eq!(f.bot.items_with("message")[0].0, "messaging");
    assert_eq!(f.crm.items_with("message")[0].0, "messaging");
    assert_eq!(f.send_text(BOT_TOKEN, "a").await.0, 200);
    assert_eq!(f.send_text(CRM_TOKEN, "b").await.0, 200);
    let rcp = json!({"recipient": {"id": USER}});
    let (s, b) = f.post(BOT_TOKEN, "take_thread_control", rcp.clone()).await;
    assert_eq!((s, code(&b)), (400, (27, None)));
    // Request on an idle thread: the first requester gets control.
    assert_eq!(
        f.post(CRM_TOKEN, "request_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(CRM)
    );
    // The second requester is refused control: the owner is told instead.
    assert_eq!(
        f.post(BOT_TOKEN, "request_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    c.wait_deliveries().await.unwrap();
    assert_eq!(f.crm.items_with("request_thread_control").len(), 1);
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(CRM)
    );
    // Release, then any app may pass the idle thread.
    assert_eq!(
        f.post(CRM_TOKEN, "release_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": BOT}),
        )
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));
}

#[tokio::test(flavor = "multi_thread")]
async fn handover_v1_rules() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::handover_v1(PAGE, BOT, &[CRM]))
            .with_app(bot)
            .with_app(crm)
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    assert_eq!(f.bot.items_with("message")[0].0, "messaging");
    assert_eq!(f.crm.items_with("message")[0].0, "standby");
    assert_eq!(
        code(&f.send_text(CRM_TOKEN, "x").await.1),
        (10, Some(2018300))
    );
    let rcp = json!({"recipient": {"id": USER}});
    // Only the primary may take: a secondary lacks the permission (200).
    assert_eq!(
        code(
            &f.post(CRM_TOKEN, "take_thread_control", rcp.clone())
                .await
                .1
        ),
        (200, None)
    );
    assert_eq!(
        code(
            &f.post(BOT_TOKEN, "pass_thread_control", rcp.clone())
                .await
                .1
        )
        .0,
        100
    );
    let (_, b) = f.get(BOT_TOKEN, "secondary_receivers?fields=id,name").await;
    assert_eq!(b["data"][0]["id"], CRM);
    // Request goes to the primary.
    assert_eq!(
        f.post(CRM_TOKEN, "request_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    c.wait_deliveries().await.unwrap();
    assert_eq!(f.bot.items_with("request_thread_control").len(), 1);
    // Primary passes with a target; secondary passes back without one.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(f.send_text(CRM_TOKEN, "now mine").await.0, 200);
    let (_, b) = f
        .get(CRM_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(b["data"][0]["thread_owner"]["app_id"], CRM);
    assert_eq!(
        f.post(CRM_TOKEN, "pass_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    c.wait_deliveries().await.unwrap();
    let back = f.bot.items_with("pass_thread_control").pop().unwrap();
    assert_eq!(back.1["pass_thread_control"]["new_owner_app_id"], BOT);
    // Primary takes from the Page Inbox (a secondary here? no: any owner).
    c.set_owner(
        PAGE,
        USER,
        &SetOwner {
            app_id: Some(PAGE_INBOX_APP_ID.into()),
            expires_at_ms: None,
        },
    )
    .await
    .unwrap();
    // A secondary that does not own cannot see another's ownership.
    let (_, b) = f
        .get(CRM_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(code(&b), (100, Some(2018234)));
    assert_eq!(
        f.post(BOT_TOKEN, "take_thread_control", rcp.clone())
            .await
            .0,
        200
    );
    assert_eq!(f.send_text(BOT_TOKEN, "primary again").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_pages_and_parameter_forms() {
    let f = Fixture::cr();
    f.emu.control().user_text(PAGE, USER, "hi").await.unwrap();
    let (s, b) = f.send_text("nope", "x").await;
    assert_eq!((s, code(&b).0), (400, 190));
    // Another page's id with this token.
    let resp = f
        .http
        .post(format!(
            "{}/2002/messages?access_token={BOT_TOKEN}",
            f.emu.graph_url()
        ))
        .json(&json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "x"}}))
        .send()
        .await
        .unwrap();
    let b: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(code(&b), (100, Some(33)));
    // Form parameters with JSON-encoded objects and a bearer token, on /{page_id}/.
    let resp = f
        .http
        .post(format!("{}/{PAGE}/messages", f.emu.graph_url()))
        .bearer_auth(BOT_TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "recipient=%7B%22id%22%3A%22{USER}%22%7D&messaging_type=RESPONSE&message=%7B%22text%22%3A%22form%22%7D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Unknown PSID.
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"id": "404"}, "messaging_type": "RESPONSE", "message": {"text": "x"}}),
        )
        .await;
    assert_eq!(code(&b), (100, Some(2018001)));
    // subscribed_apps round trip.
    let (_, b) = f.get(BOT_TOKEN, "subscribed_apps").await;
    assert!(b["data"].as_array().unwrap().iter().any(|a| a["id"] == BOT));
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "subscribed_apps",
            json!({"subscribed_fields": "messages,messaging_handover"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f.get(BOT_TOKEN, "subscribed_apps").await;
    let me = b["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == BOT)
        .unwrap()
        .clone();
    assert_eq!(
        me["subscribed_fields"],
        json!(["messages", "messaging_handovers"])
    );
    // The call log lists every call with its answer.
    let calls = f.emu.control().calls().await.unwrap();
    assert_eq!(calls.len(), 7);
    assert_eq!(calls[0].status, 400);
    assert_eq!(calls[2].endpoint, "messages");
    assert_eq!(calls[2].app_id.as_deref(), Some(BOT));
    assert_eq!(calls[2].params["messaging_type"], "RESPONSE");
    assert!(calls[2].params.get("access_token").is_none());
    f.emu.control().reset_logs().await.unwrap();
    assert!(f.emu.control().calls().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn page_inbox_takeover_and_done() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "I need a human").await.unwrap();
    let r = c.inbox_reply(PAGE, USER, "Hi, Anna here").await.unwrap();
    let take = f.bot.items_with("take_thread_control");
    assert_eq!(take.len(), 1);
    assert_eq!(
        take[0].1["take_thread_control"]["previous_owner_app_id"],
        BOT
    );
    assert_eq!(
        take[0].1["take_thread_control"]["new_owner_app_id"],
        PAGE_INBOX_APP_ID
    );
    for rx in [&f.bot, &f.crm] {
        let echo = rx.items_with("message").pop().unwrap();
        assert_eq!(echo.0, "standby");
        assert_eq!(echo.1["message"]["app_id"], 263902037430900u64);
        assert_eq!(echo.1["message"]["mid"], r.mid.clone().unwrap());
    }
    assert_eq!(
        code(&f.send_text(BOT_TOKEN, "bot?").await.1),
        (10, Some(2018300))
    );
    c.inbox_done(PAGE, USER).await.unwrap();
    let pass = f.bot.items_with("pass_thread_control").pop().unwrap();
    assert_eq!(
        pass.1["pass_thread_control"]["previous_owner_app_id"],
        PAGE_INBOX_APP_ID
    );
    assert_eq!(pass.1["pass_thread_control"]["new_owner_app_id"], BOT);
    assert_eq!(f.send_text(BOT_TOKEN, "bot again").await.0, 200);
    // Done on a thread the inbox does not own is refused.
    let err = c.inbox_done(PAGE, USER).await.unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");
}

/// `set_owner` is the silent takeover: the Page Inbox takes an idle thread
/// and tells no app; the next user message reaches every app on `standby`.
#[tokio::test(flavor = "multi_thread")]
async fn silent_page_inbox_takeover_puts_every_app_on_standby() {
    let cr = Fixture::cr();
    let v1 = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::handover_v1(PAGE, BOT, &[CRM]))
            .with_app(bot)
            .with_app(crm)
    });
    for f in [&cr, &v1] {
        let c = f.emu.control();
        c.user_text(PAGE, USER, "hi").await.unwrap();
        c.advance(DAY).await.unwrap();
        assert!(c.thread(PAGE, USER).await.unwrap().idle);
        f.bot.clear();
        f.crm.clear();

        let view = c
            .set_owner(
                PAGE,
                USER,
                &SetOwner {
                    app_id: Some(PAGE_INBOX_APP_ID.into()),
                    expires_at_ms: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(view.owner.as_deref(), Some(PAGE_INBOX_APP_ID));
        c.wait_deliveries().await.unwrap();
        assert!(f.bot.received().is_empty() && f.crm.received().is_empty());

        let r = c.user_text(PAGE, USER, "anyone there?").await.unwrap();
        assert_eq!(r.deliveries.len(), 2, "{r:?}");
        for rx in [&f.bot, &f.crm] {
            let got = rx.items_with("message");
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "standby");
            assert_eq!(got[0].1["message"]["text"], "anyone there?");
        }
        assert_eq!(
            code(&f.send_text(BOT_TOKEN, "me?").await.1),
            (10, Some(2018300))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_faults_happen_and_clear() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    c.add_fault(&FaultSpec::ServerError {
        count: 2,
        endpoint: Some("messages".into()),
        status: None,
    })
    .await
    .unwrap();
    // Other endpoints are unaffected.
    assert_eq!(
        f.get(BOT_TOKEN, &format!("thread_owner?recipient={USER}"))
            .await
            .0,
        200
    );
    for _ in 0..2 {
        let (s, b) = f.send_text(BOT_TOKEN, "x").await;
        assert_eq!((s, b["error"]["is_transient"].clone()), (500, json!(true)));
    }
    assert_eq!(f.send_text(BOT_TOKEN, "ok").await.0, 200);
    c.add_fault(&FaultSpec::RateLimit {
        count: 5,
        endpoint: None,
    })
    .await
    .unwrap();
    assert_eq!(code(&f.send_text(BOT_TOKEN, "x").await.1), (613, None));
    assert_eq!(c.faults().await.unwrap()[0].remaining, 4);
    c.clear_faults().await.unwrap();
    assert_eq!(f.send_text(BOT_TOKEN, "ok").await.0, 200);
    let calls = c.calls().await.unwrap();
    assert_eq!(calls.iter().filter(|x| x.fault.is_some()).count(), 3);

    // Delay: the send happens, the answer is held until released.
    c.add_fault(&FaultSpec::Delay {
        count: 1,
        endpoint: Some("messages".into()),
        millis: None,
    })
    .await
    .unwrap();
    let pending = tokio::spawn({
        let http = f.http.clone();
        let url = format!("{}/me/messages?access_token={BOT_TOKEN}", f.emu.graph_url());
        async move {
            http.post(url)
                .json(&json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE", "message": {"text": "slow"}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    // Wait (on a condition, not a timer) until the emulator has the call.
    loop {
        let calls = c.calls().await.unwrap();
        if calls
            .last()
            .is_some_and(|x| x.fault.as_deref() == Some("delay"))
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!pending.is_finished());
    c.release_held().await.unwrap();
    assert_eq!(pending.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_retry_drop_and_batch() {
    let f = Fixture::cr();
    let c = f.emu.control();
    f.bot.fail_next(500, 1);
    let r = c.user_text(PAGE, USER, "hi").await.unwrap();
    let bot = r.deliveries.iter().find(|d| d.app_id == BOT).unwrap();
    assert_eq!((bot.attempts, bot.ok, bot.status), (2, true, Some(200)));
    assert_eq!(f.bot.received().len(), 2);
    let log = c.deliveries().await.unwrap();
    let bot_log: Vec<_> = log.iter().filter(|a| a.app_id == BOT).collect();
    assert_eq!(bot_log.len(), 2);
    assert_eq!(
        (bot_log[0].status, bot_log[1].status),
        (Some(500), Some(200))
    );
    assert_eq!(bot_log[0].body, bot_log[1].body);
    assert_eq!(
        bot_log[0].signature_256,
        signature_256(BOT_SECRET, bot_log[0].body.as_bytes())
    );

    // Always failing: bounded attempts.
    f.bot.fail_next(503, 10);
    let r = c.user_text(PAGE, USER, "again").await.unwrap();
    let bot = r.deliveries.iter().find(|d| d.app_id == BOT).unwrap();
    assert_eq!((bot.attempts, bot.ok), (3, false));
    f.bot.answer_ok();

    // Dropped deliveries are never sent.
    c.add_fault(&FaultSpec::WebhookDrop {
        count: 1,
        app_id: Some(CRM.into()),
    })
    .await
    .unwrap();
    let before = f.crm.received().len();
    let r = c.user_text(PAGE, USER, "lost for crm").await.unwrap();
    assert!(r.deliveries.iter().any(|d| d.app_id == CRM && d.dropped));
    assert_eq!(f.crm.received().len(), before);

    // Batching: several items in one delivery.
    c.reset_logs().await.unwrap();
    f.bot.clear();
    c.batch_begin().await.unwrap();
    let held = c.user_text(PAGE, USER, "one").await.unwrap();
    assert!(held.deliveries.is_empty());
    c.user_message(
        PAGE,
        "9002",
        &UserMessage {
            text: Some("two".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let flushed = c.batch_flush().await.unwrap();
    assert_eq!(flushed.deliveries.len(), 2);
    assert!(flushed
        .deliveries
        .iter()
        .all(|d| d.ok && d.channel == "batch"));
    let got = f.bot.received();
    assert_eq!(got.len(), 1);
    let env = got[0].json();
    assert_eq!(env["entry"][0]["messaging"].as_array().unwrap().len(), 2);
    assert_eq!(
        got[0].sig256.as_deref(),
        Some(signature_256(BOT_SECRET, &got[0].body).as_str())
    );
    // The CRM saw both on standby, in one entry.
    let crm = f.crm.received().pop().unwrap().json();
    assert_eq!(crm["entry"][0]["standby"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn referral_link_routing_and_ads_window() {
    let f = Fixture::with(|w, bot, crm| {
        let mut page = PageConfig::conversation_routing(PAGE, BOT);
        page.link_routes.insert("sales".into(), CRM.into());
        w.with_page(page).with_app(bot).with_app(crm)
    });
    let c = f.emu.control();
    let m = UserMessage {
        text: Some("from link".into()),
        referral: Some(Referral {
            ref_: Some("sales".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.user_message(PAGE, USER, &m).await.unwrap();
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(CRM)
    );
    assert_eq!(
        f.crm.items_with("message")[0].1["message"]["referral"]["source"],
        "SHORTLINK"
    );
    // Referral into the existing thread refreshes the window.
    c.advance(DAY - 10).await.unwrap();
    c.user_referral(
        PAGE,
        USER,
        &Referral {
            ref_: Some("x".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    c.advance(20).await.unwrap();
    assert!(c.thread(PAGE, USER).await.unwrap().window_open);
    assert_eq!(f.crm.items_with("referral").len(), 1);

    // First message after a Click-to-Messenger ad opens a 7-day window.
    let m = UserMessage {
        text: Some("from ad".into()),
        referral: Some(Referral {
            source: Some("ADS".into()),
            ad_id: Some("ad1".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.user_message(PAGE, "9003", &m).await.unwrap();
    c.advance(3 * DAY).await.unwrap();
    let v = c.thread(PAGE, "9003").await.unwrap();
    assert!(v.window_open && v.idle);
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"id": "9003"}, "messaging_type": "RESPONSE", "message": {"text": "still ok"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
}

/// The 7-day window follows the user's first message after an ad click, in
/// an existing thread too: the click arrives as a referral (or a postback)
/// with `source: ADS`, or on the message itself.
#[tokio::test(flavor = "multi_thread")]
async fn first_message_after_an_ad_click_opens_seven_days_in_an_existing_thread() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let ad = Referral {
        source: Some("ADS".into()),
        ad_id: Some("ad1".into()),
        ..Default::default()
    };
    let send = |psid: &'static str| {
        let f = &f;
        async move {
            f.post(
                BOT_TOKEN,
                "messages",
                json!({"recipient": {"id": psid}, "messaging_type": "RESPONSE", "message": {"text": "x"}}),
            )
            .await
        }
    };

    // An existing thread; the user clicks an ad: the referral alone gives 24 h.
    c.user_text(PAGE, USER, "hi").await.unwrap();
    c.advance(2 * DAY).await.unwrap();
    c.user_referral(PAGE, USER, &ad).await.unwrap();
    assert_eq!(
        f.bot.items_with("referral")[0].1["referral"]["source"],
        "ADS"
    );
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().ads_window_until_ms,
        None
    );
    // The first message after the click opens 7 days.
    let clicked_at = c.advance(60_000).await.unwrap().now_ms;
    c.user_text(PAGE, USER, "about the ad").await.unwrap();
    let v = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(v.ads_window_until_ms, Some(clicked_at + 7 * DAY));
    c.advance(3 * DAY).await.unwrap();
    assert_eq!(send(USER).await.0, 200);
    // Only the first: a later message does not move the 7 days.
    c.user_text(PAGE, USER, "again").await.unwrap();
    let v = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(v.ads_window_until_ms, Some(clicked_at + 7 * DAY));

    // A postback from an ad, then the first message.
    c.user_postback(
        PAGE,
        "9004",
        &UserPostback {
            title: "Start".into(),
            payload: "GET_STARTED".into(),
            referral: Some(ad.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.thread(PAGE, "9004").await.unwrap().ads_window_until_ms,
        None
    );
    let at = c.clock().await.unwrap().now_ms;
    c.user_text(PAGE, "9004", "hello").await.unwrap();
    let v = c.thread(PAGE, "9004").await.unwrap();
    assert_eq!(v.ads_window_until_ms, Some(at + 7 * DAY));

    // A message carrying the ad's referral in a thread with history.
    c.user_text(PAGE, "9005", "earlier").await.unwrap();
    c.advance(2 * DAY).await.unwrap();
    let m = UserMessage {
        text: Some("from ad".into()),
        referral: Some(ad.clone()),
        ..Default::default()
    };
    c.user_message(PAGE, "9005", &m).await.unwrap();
    c.advance(5 * DAY).await.unwrap();
    assert_eq!(send("9005").await.0, 200);
    c.advance(2 * DAY).await.unwrap();
    assert_eq!(code(&send("9005").await.1), (10, Some(2018278)));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_enforcement_blocks_sends_until_unblocked() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::conversation_routing(PAGE, BOT))
            .with_app(bot.with_fields(&["messages", "messaging_policy_enforcement"]))
            .with_app(crm)
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let r = c
        .policy_enforcement(PAGE, "block", Some("spam"))
        .await
        .unwrap();
    // Only the app subscribed to messaging_policy_enforcement is told.
    assert_eq!(r.deliveries.len(), 1, "{r:?}");
    let notice = f.bot.items_with("policy_enforcement");
    assert_eq!(notice.len(), 1);
    assert_eq!(
        notice[0].1["policy_enforcement"],
        json!({"action": "block", "reason": "spam"})
    );
    assert_eq!(notice[0].1["recipient"]["id"], PAGE);
    assert!(f.crm.items_with("policy_enforcement").is_empty());
    // Messages and sender actions are refused; thread control still works.
    assert_eq!(
        code(&f.send_text(BOT_TOKEN, "x").await.1),
        (10, Some(1893063))
    );
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"id": USER}, "sender_action": "typing_on"}),
        )
        .await;
    assert_eq!(code(&b), (10, Some(1893063)));
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    c.policy_enforcement(PAGE, "unblock", None).await.unwrap();
    assert_eq!(
        f.bot.items_with("policy_enforcement")[1].1["policy_enforcement"],
        json!({"action": "unblock"})
    );
    assert_eq!(f.send_text(CRM_TOKEN, "back").await.0, 200);
    assert!(c.policy_enforcement(PAGE, "ban", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn send_parameters_are_checked_as_documented() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::zero_config(PAGE))
            .with_app(bot)
            .with_app(crm.human_agent(true))
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let send = |token: &'static str, extra: serde_json::Value| {
        let f = &f;
        async move {
            let mut body = json!({"recipient": {"id": USER}, "message": {"text": "x"}});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            code(&f.post(token, "messages", body).await.1)
        }
    };
    // messaging_type is required on messages, and matched exactly.
    assert_eq!(send(BOT_TOKEN, json!({})).await, (100, None));
    assert_eq!(
        send(BOT_TOKEN, json!({"messaging_type": "response"})).await,
        (100, None)
    );
    // A tag needs MESSAGE_TAG, and MESSAGE_TAG needs a tag.
    assert_eq!(
        send(
            CRM_TOKEN,
            json!({"messaging_type": "RESPONSE", "tag": "HUMAN_AGENT"})
        )
        .await,
        (100, None)
    );
    assert_eq!(
        send(CRM_TOKEN, json!({"messaging_type": "MESSAGE_TAG"})).await,
        (100, None)
    );
    // Tags are case-sensitive.
    assert_eq!(
        send(
            CRM_TOKEN,
            json!({"messaging_type": "MESSAGE_TAG", "tag": "human_agent"})
        )
        .await,
        (100, None)
    );
    let (status, body) = f
        .post(
            CRM_TOKEN,
            "messages",
            json!({"recipient": {"id": USER}, "messaging_type": "MESSAGE_TAG",
                   "tag": "HUMAN_AGENT", "message": {"text": "agent here"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The News Messaging tag needs a permission no emulated page has.
    assert_eq!(
        send(
            BOT_TOKEN,
            json!({"messaging_type": "MESSAGE_TAG", "tag": "NON_PROMOTIONAL_SUBSCRIPTION"})
        )
        .await,
        (10, Some(2018065))
    );
    // Sender actions need no messaging_type.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"id": USER}, "sender_action": "mark_seen"}),
        )
        .await;
    assert_eq!(s, 200);
    // A later message from an ad opens 7 days too, not only the first one.
    let m = UserMessage {
        text: Some("from ad".into()),
        referral: Some(Referral {
            source: Some("ADS".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.user_message(PAGE, USER, &m).await.unwrap();
    c.advance(5 * DAY).await.unwrap();
    assert_eq!(f.send_text(BOT_TOKEN, "day five").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn holding_apps_may_take_but_not_request_and_v1_extend_is_a_no_op() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let rcp = json!({"recipient": {"id": USER}});
    let (s, b) = f.post(BOT_TOKEN, "take_thread_control", rcp.clone()).await;
    assert_eq!(
        s, 200,
        "the owner takes what it owns: success, nothing changes: {b}"
    );
    assert_eq!(
        c.thread(PAGE, USER).await.unwrap().owner.as_deref(),
        Some(BOT)
    );
    let (_, b) = f
        .post(BOT_TOKEN, "request_thread_control", rcp.clone())
        .await;
    assert_eq!(code(&b), (100, None), "the owner requests: {b}");
    let (s, _) = f
        .post(BOT_TOKEN, "release_thread_control", rcp.clone())
        .await;
    assert_eq!(s, 200);
    let (_, b) = f
        .post(BOT_TOKEN, "request_thread_control", rcp.clone())
        .await;
    assert_eq!(
        code(&b),
        (100, None),
        "the default app of an idle thread: {b}"
    );

    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::handover_v1(PAGE, BOT, &[CRM]))
            .with_app(bot)
            .with_app(crm)
    });
    f.emu.control().user_text(PAGE, USER, "hi").await.unwrap();
    let (s, b) = f.post(BOT_TOKEN, "take_thread_control", rcp.clone()).await;
    assert_eq!(s, 200, "the primary takes what it holds: {b}");
    let extend = json!({"recipient": {"id": USER}, "duration": 3600});
    let (s, b) = f
        .post(BOT_TOKEN, "extend_thread_control", extend.clone())
        .await;
    assert_eq!(s, 200, "the primary extends what it holds (a no-op): {b}");
    let (_, b) = f
        .post(CRM_TOKEN, "extend_thread_control", extend.clone())
        .await;
    assert_eq!(
        code(&b),
        (100, Some(2_534_037)),
        "a secondary that does not own it: {b}"
    );
    // The primary holds an idle v1 thread by default: it may release it.
    let (s, _) = f
        .post(BOT_TOKEN, "release_thread_control", rcp.clone())
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_users_profile_is_readable_by_a_page_they_wrote_to_and_no_one_else() {
    let f = Fixture::cr();
    f.emu.control().user_text(PAGE, USER, "hi").await.unwrap();
    let read = |node: &str, query: &str| {
        let url = format!("{}/{node}{query}", f.emu.graph_url());
        let http = f.http.clone();
        async move {
            let resp = http.get(url).bearer_auth(BOT_TOKEN).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, profile) = read(USER, "?fields=first_name,profile_pic").await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["id"], USER);
    assert!(profile["profile_pic"].is_string());
    assert!(profile.get("name").is_none(), "only the fields asked for");
    let (status, err) = read("stranger", "").await;
    assert_eq!((status, code(&err)), (400, (100, Some(33))));
}
