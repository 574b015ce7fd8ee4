//! Dispatch end to end: Meta (the emulator) delivers to Baton, Baton forwards
//! each app's copy to that app's backend in Meta's envelope, signed with the
//! app's secret in both schemes, on the channel Meta used.

use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use emulator::{AppConfig, Emulator, PageConfig, World};
use serde_json::Value;

use crate::support::*;

type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Vec<u8>)>>>;

async fn hook(seen: web::Data<Seen>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.lock().unwrap().push((
        h("x-hub-signature-256"),
        h("x-hub-signature"),
        body.to_vec(),
    ));
    HttpResponse::Ok().finish()
}

fn backend() -> (String, Seen, actix_web::dev::ServerHandle) {
    let seen: Seen = Arc::default();
    let data = web::Data::new(seen.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/webhook", web::post().to(hook))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/webhook", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, seen, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_gets_its_own_copy_on_metas_channel_signed_both_ways() {
    let world = World::default()
        .with_page(PageConfig::conversation_routing(PAGE, BOT))
        .with_app(
            AppConfig::new(BOT, BOT_SECRET)
                .with_token(PAGE, "page-token-bot")
                .may_take(true),
        )
        .with_app(AppConfig::new(HUMAN, HUMAN_SECRET).with_token(PAGE, "page-token-human"));
    let emulator = Emulator::start(world).unwrap();
    let ctl = emulator.control();
    let (bot_url, bot_seen, bot_handle) = backend();
    let (human_url, human_seen, human_handle) = backend();
    let dir = tempfile::tempdir().unwrap();
    let text = BatonToml::new(&emulator.base_url())
        .data_dir(dir.path())
        .bot_backend(&bot_url)
        .human_backend(&human_url)
        .render();
    let baton = TestBaton::start_in(dir, &text).await;
    for app in [BOT, HUMAN] {
        ctl.set_callback(app, Some(&baton.url(&format!("/webhooks/{app}"))))
            .await
            .unwrap();
    }
    ctl.user_text(PAGE, "u1", "hello").await.unwrap();
    let postback = emulator::UserPostback {
        payload: "GET_STARTED".into(),
        title: "Get Started".into(),
        ..Default::default()
    };
    ctl.user_postback(PAGE, "u1", &postback).await.unwrap();

    // Wait on the condition: both backends have both items.
    let dispatcher = baton
        .running
        .state
        .dispatcher
        .clone()
        .expect("dispatch is on");
    let mut bot_status = dispatcher
        .subscribe_status(&domain::AppId::parse(BOT).unwrap())
        .unwrap();
    let mut human_status = dispatcher
        .subscribe_status(&domain::AppId::parse(HUMAN).unwrap())
        .unwrap();
    bot_status.wait_for(|s| s.delivered >= 2).await.unwrap();
    human_status.wait_for(|s| s.delivered >= 2).await.unwrap();

    for (seen, secret, other_secret, channel) in [
        (&bot_seen, BOT_FORWARD_SECRET, BOT_SECRET, "messaging"),
        (&human_seen, HUMAN_FORWARD_SECRET, HUMAN_SECRET, "standby"),
    ] {
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        for (sig256, sig1, body) in &seen {
            let check = wire::signature::check_signatures(
                secret.as_bytes(),
                body,
                sig256.as_deref(),
                sig1.as_deref(),
            );
            assert_eq!(
                (check.sha256, check.sha1),
                (
                    domain::events::SignatureResult::Valid,
                    domain::events::SignatureResult::Valid
                )
            );
            let wrong = wire::signature::check_signatures(
                other_secret.as_bytes(),
                body,
                sig256.as_deref(),
                None,
            );
            assert!(!wire::signature::accepted(&wrong));
            let v: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["object"], "page");
            assert_eq!(v["entry"][0]["id"], PAGE);
            assert!(v["entry"][0][channel].is_array(), "{channel}: {v}");
        }
        let postback: Value = serde_json::from_slice(&seen[1].2).unwrap();
        let payload = &postback["entry"][0][channel][0]["postback"]["payload"];
        // Meta strips the payload from standby copies; Baton forwards what Meta sent.
        assert_eq!(payload.is_null(), channel == "standby", "{postback}");
    }
    // Visible in the API and in /metrics.
    let res = baton
        .http
        .get(baton.url(&format!("/api/apps/{BOT}/delivery")))
        .bearer_auth("baton-bot")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"]["delivered"], 2);
    let res = baton
        .http
        .get(baton.url(&format!("/api/apps/{BOT}/delivery")))
        .bearer_auth("baton-human")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "an app sees only its own delivery");
    let res = baton
        .http
        .post(baton.url(&format!("/api/apps/{BOT}/redrive")))
        .bearer_auth("admin-secret")
        .json(&serde_json::json!({"position": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "not dead-lettered");
    let metrics = baton
        .http
        .get(baton.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("baton_dispatch_"), "{metrics}");
    bot_handle.stop(true).await;
    human_handle.stop(true).await;
}

/// Forwarding keeps Meta's bytes (issue 14): a single-item delivery reaches
/// the backend byte for byte as Meta sent it (its key order, its `\u`
/// escapes, its `entry.time`), signed with the forwarding secret; the items
/// of a multi-item delivery go out one by one with non-ASCII still escaped
/// as Meta writes it; and an echo of Baton's own send never shows Baton's
/// marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_receive_metas_bytes_and_never_batons_markers() {
    let (bot_url, bot_seen, bot_handle) = backend();
    let dir = tempfile::tempdir().unwrap();
    let text = BatonToml::new("http://127.0.0.1:9")
        .data_dir(dir.path())
        .bot_backend(&bot_url)
        .render();
    let baton = TestBaton::start_in(dir, &text).await;
    let dispatcher = baton
        .running
        .state
        .dispatcher
        .clone()
        .expect("dispatch is on");
    let mut status = dispatcher
        .subscribe_status(&domain::AppId::parse(BOT).unwrap())
        .unwrap();
    // Meta's serialisation: its own key order, non-ASCII as \u escapes.
    let single = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":1793523600123,"messaging":[{{"sender":{{"id":"u1"}},"recipient":{{"id":"{PAGE}"}},"timestamp":{ts},"message":{{"mid":"m_1","text":"caf\u00e9 \ud83d\ude00 \u4f60\u597d"}}}}]}}]}}"#,
        ts = T0.millis()
    );
    let res = baton.post_signed(BOT, BOT_SECRET, single.as_bytes()).await;
    assert_eq!(res.status(), 200);
    status.wait_for(|s| s.delivered >= 1).await.unwrap();
    let (sig256, _, body) = bot_seen.lock().unwrap()[0].clone();
    assert_eq!(
        String::from_utf8(body.clone()).unwrap(),
        single,
        "byte for byte as Meta sent it"
    );
    let check = wire::signature::check_signatures(
        BOT_FORWARD_SECRET.as_bytes(),
        &body,
        sig256.as_deref(),
        None,
    );
    assert_eq!(check.sha256, domain::events::SignatureResult::Valid);

    // Two items in one delivery: each goes out alone, still escaped.
    let two = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":1793523601000,"messaging":[{{"sender":{{"id":"u2"}},"recipient":{{"id":"{PAGE}"}},"timestamp":{ts},"message":{{"mid":"m_2","text":"\u00fcber"}}}},{{"sender":{{"id":"u2"}},"recipient":{{"id":"{PAGE}"}},"timestamp":{ts},"message":{{"mid":"m_3","text":"plain"}}}}]}}]}}"#,
        ts = T0.millis() + 1000
    );
    let res = baton.post_signed(BOT, BOT_SECRET, two.as_bytes()).await;
    assert_eq!(res.status(), 200);
    status.wait_for(|s| s.delivered >= 3).await.unwrap();
    let forwarded = String::from_utf8(bot_seen.lock().unwrap()[1].2.clone()).unwrap();
    assert!(forwarded.contains(r#""text":"\u00fcber""#), "{forwarded}");
    assert!(
        forwarded.contains(r#"[{"sender":{"id":"u2"},"recipient":{"id":"#),
        "Meta's key order: {forwarded}"
    );
    assert!(forwarded.is_ascii());

    // The echo of a send Baton tagged to match it: the marker is gone.
    let echo = format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":1793523602000,"messaging":[{{"sender":{{"id":"{PAGE}"}},"recipient":{{"id":"u1"}},"timestamp":{ts},"message":{{"is_echo":true,"app_id":{BOT},"metadata":"baton:send:01a232b9-fec7-7059-8113-2f46b3b3470d","mid":"m_4","text":"hi"}}}}]}}]}}"#,
        ts = T0.millis() + 2000
    );
    let res = baton.post_signed(BOT, BOT_SECRET, echo.as_bytes()).await;
    assert_eq!(res.status(), 200);
    status.wait_for(|s| s.delivered >= 4).await.unwrap();
    let forwarded = String::from_utf8(bot_seen.lock().unwrap()[3].2.clone()).unwrap();
    assert!(!forwarded.contains("baton:send"), "{forwarded}");
    let v: Value = serde_json::from_str(&forwarded).unwrap();
    assert_eq!(v["entry"][0]["messaging"][0]["message"]["mid"], "m_4");
    assert!(v["entry"][0]["messaging"][0]["message"]
        .get("metadata")
        .is_none());
    bot_handle.stop(true).await;
}
