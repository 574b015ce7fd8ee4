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
