//! Meta's disorder as the emulator produces it on request: deliveries held
//! and released in order or reversed, late retries of earlier deliveries, and
//! a skewed Meta clock. Checked over HTTP.

mod common;

use std::time::Duration;

use common::*;
use emulator::{FaultSpec, DEFAULT_EPOCH_MS};
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

/// The texts of the user messages (not echoes) an app received, in order.
fn texts(rx: &Receiver) -> Vec<String> {
    rx.items_with("message")
        .into_iter()
        .filter(|(_, i)| i["message"].get("is_echo").is_none())
        .map(|(_, i)| i["message"]["text"].as_str().unwrap_or("").to_string())
        .collect()
}

/// POSTs a raw body to the control API: (status, JSON answer).
async fn control_post(f: &Fixture, path: &str, body: &str) -> (u16, Value) {
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

#[tokio::test(flavor = "multi_thread")]
async fn held_deliveries_wait_for_their_release_and_keep_their_bytes() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let hold = c
        .add_fault(&FaultSpec::WebhookHold {
            count: u32::MAX,
            app_id: Some(BOT.into()),
        })
        .await
        .unwrap();
    assert_eq!(hold.remaining, u32::MAX);

    let first = c.user_text(PAGE, USER, "one").await.unwrap();
    let bot = first.deliveries.iter().find(|d| d.app_id == BOT).unwrap();
    assert!(
        bot.held && !bot.ok && !bot.dropped && bot.attempts == 0,
        "{bot:?}"
    );
    // The CRM's copy is not held.
    assert!(first.deliveries.iter().any(|d| d.app_id == CRM && d.ok));
    c.advance(60_000).await.unwrap();
    c.user_text(PAGE, USER, "two").await.unwrap();
    // The bot's echo (a Graph call delivers afterwards) is held too, and
    // waiting for deliveries does not wait for held ones.
    assert_eq!(f.send_text(BOT_TOKEN, "echo me").await.0, 200);
    tokio::time::timeout(Duration::from_secs(10), c.wait_deliveries())
        .await
        .expect("wait_deliveries does not wait for held deliveries")
        .unwrap();
    assert!(f.bot.received().is_empty());
    assert_eq!(texts(&f.crm), ["one", "two"]);

    let held: Vec<_> = c
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.held)
        .collect();
    assert_eq!(held.len(), 3);
    assert!(held
        .iter()
        .all(|a| a.app_id == BOT && a.attempt == 0 && a.status.is_none()));

    // Reverse: newest first, each with the bytes and signatures it was made
    // with (its timestamps are from when it was made).
    let released = c.release_deliveries(Some(BOT), true).await.unwrap();
    assert_eq!(released.len(), 3);
    assert!(released.iter().all(|d| d.ok && !d.held && d.attempts == 1));
    let got = f.bot.received();
    assert_eq!(got.len(), 3);
    for (got, held) in got.iter().zip(held.iter().rev()) {
        assert_eq!(got.body, held.body.as_bytes());
        assert_eq!(got.sig256.as_deref(), Some(held.signature_256.as_str()));
        assert_eq!(got.sig1.as_deref(), Some(held.signature_1.as_str()));
    }
    let bodies: Vec<Value> = got.iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies[0]["entry"][0]["messaging"][0]["message"]["is_echo"],
        true
    );
    assert_eq!(
        bodies[1]["entry"][0]["messaging"][0]["message"]["text"],
        "two"
    );
    assert_eq!(
        bodies[2]["entry"][0]["messaging"][0]["message"]["text"],
        "one"
    );
    assert_eq!(bodies[2]["entry"][0]["time"], DEFAULT_EPOCH_MS);
    assert_eq!(
        bodies[2]["entry"][0]["messaging"][0]["timestamp"],
        DEFAULT_EPOCH_MS
    );

    // The release lifted the hold: the next delivery flows, and a second
    // release has nothing to send.
    assert!(c.faults().await.unwrap().is_empty());
    let r = c.user_text(PAGE, USER, "three").await.unwrap();
    assert!(r.deliveries.iter().all(|d| d.ok && !d.held));
    assert_eq!(texts(&f.bot), ["two", "one", "three"]);
    assert!(c.release_deliveries(None, false).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_on_every_app_outlives_a_release_for_one_and_counts_run_out() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.add_fault(&serde_json::from_value(json!({"kind": "webhook_hold"})).unwrap())
        .await
        .unwrap();
    c.user_text(PAGE, USER, "one").await.unwrap();
    c.user_text(PAGE, USER, "two").await.unwrap();
    assert!(f.bot.received().is_empty() && f.crm.received().is_empty());

    // Releasing one app sends its deliveries in order; the hold on every app
    // stays, so its later deliveries are held again.
    let r = c.release_deliveries(Some(CRM), false).await.unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(texts(&f.crm), ["one", "two"]);
    assert!(f.bot.received().is_empty());
    c.user_text(PAGE, USER, "three").await.unwrap();
    assert_eq!(texts(&f.crm), ["one", "two"]);

    // Releasing everything sends the rest in the order it was held.
    let r = c.release_deliveries(None, false).await.unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(texts(&f.bot), ["one", "two", "three"]);
    assert_eq!(texts(&f.crm), ["one", "two", "three"]);
    assert!(c.faults().await.unwrap().is_empty());

    // A counted hold keeps only that many.
    c.add_fault(&FaultSpec::WebhookHold {
        count: 1,
        app_id: Some(CRM.into()),
    })
    .await
    .unwrap();
    c.user_text(PAGE, USER, "four").await.unwrap();
    c.user_text(PAGE, USER, "five").await.unwrap();
    assert_eq!(texts(&f.crm), ["one", "two", "three", "five"]);
    c.release_deliveries(Some(CRM), false).await.unwrap();
    assert_eq!(texts(&f.crm), ["one", "two", "three", "five", "four"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliver_resends_a_dropped_delivery_late_to_the_current_callback() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hello").await.unwrap();
    c.add_fault(&FaultSpec::WebhookDrop {
        count: 1,
        app_id: Some(BOT.into()),
    })
    .await
    .unwrap();
    c.user_text(PAGE, USER, "lost").await.unwrap();
    let dropped = c
        .deliveries()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.dropped)
        .unwrap();
    assert_eq!(dropped.app_id, BOT);

    // Later events happen; the bot's callback moves.
    let moved = Receiver::start();
    c.set_callback(BOT, Some(&moved.url)).await.unwrap();
    c.advance(60_000).await.unwrap();
    c.user_text(PAGE, USER, "later").await.unwrap();
    assert_eq!(texts(&moved), ["later"]);

    // The retry arrives after them, byte for byte, and faults do not touch it.
    c.add_fault(&FaultSpec::WebhookDrop {
        count: 1,
        app_id: Some(BOT.into()),
    })
    .await
    .unwrap();
    let r = c.redeliver(dropped.seq).await.unwrap();
    assert!(r.ok && !r.dropped && r.attempts == 1, "{r:?}");
    assert_eq!(r.url, moved.url);
    assert_ne!(r.delivery_id, dropped.delivery_id);
    assert_eq!(c.faults().await.unwrap()[0].remaining, 1);
    assert_eq!(texts(&moved), ["later", "lost"]);
    let got = moved.received().pop().unwrap();
    assert_eq!(got.body, dropped.body.as_bytes());
    assert_eq!(got.sig256.as_deref(), Some(dropped.signature_256.as_str()));
    assert_eq!(got.sig1.as_deref(), Some(dropped.signature_1.as_str()));
    assert_eq!(
        got.json()["entry"][0]["messaging"][0]["timestamp"],
        DEFAULT_EPOCH_MS
    );

    // Logged like any other attempt.
    let last = c.deliveries().await.unwrap().pop().unwrap();
    assert_eq!(last.delivery_id, r.delivery_id);
    assert_eq!((last.attempt, last.status), (1, Some(200)));
    assert_eq!((last.body, last.url), (dropped.body, moved.url.clone()));

    // A retry that fails is retried as Meta does.
    moved.fail_next(500, 1);
    let r = c.redeliver(dropped.seq).await.unwrap();
    assert_eq!((r.attempts, r.ok), (2, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_control_input_gets_a_json_error_and_changes_nothing() {
    let f = Fixture::cr();
    let c = f.emu.control();
    c.add_fault(&FaultSpec::WebhookHold {
        count: u32::MAX,
        app_id: Some(BOT.into()),
    })
    .await
    .unwrap();
    c.user_text(PAGE, USER, "kept").await.unwrap();

    for (path, body, status) in [
        ("/deliveries/release", r#"{"order": "backwards"}"#, 400),
        ("/deliveries/release", r#"{"order": "fifo""#, 400),
        ("/deliveries/release", r#"{"app": "111"}"#, 400),
        ("/deliveries/release", r#"{"app_id": "404"}"#, 404),
        ("/deliveries/999999/redeliver", "", 404),
        ("/deliveries/abc/redeliver", "", 400),
        ("/clock/skew", r#"{"millis": "soon"}"#, 400),
        ("/clock/skew", "{", 400),
        ("/clock/skew", "{}", 400),
        ("/faults", r#"{"kind": "webhook_hold", "count": -1}"#, 400),
    ] {
        let (s, b) = control_post(&f, path, body).await;
        assert_eq!(s, status, "{path} {body}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path} {body}: {b}"
        );
    }
    let err = c.redeliver(424242).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    // Nothing moved: the hold and what it keeps, the clock, the logs.
    assert!(f.bot.received().is_empty());
    assert_eq!(c.faults().await.unwrap().len(), 1);
    let clock = c.clock().await.unwrap();
    assert_eq!((clock.now_ms, clock.skew_ms), (DEFAULT_EPOCH_MS, 0));
    assert_eq!(c.deliveries().await.unwrap().len(), 2);
    assert_eq!(
        c.release_deliveries(Some(BOT), false).await.unwrap().len(),
        1
    );
    assert_eq!(texts(&f.bot), ["kept"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_skew_moves_meta_timestamps_and_meta_rules_together() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let hour = 3_600_000;
    let clock = c.set_skew(hour).await.unwrap();
    assert_eq!(
        (clock.now_ms, clock.skew_ms, clock.meta_now_ms),
        (DEFAULT_EPOCH_MS, hour, DEFAULT_EPOCH_MS + hour)
    );
    let meta = DEFAULT_EPOCH_MS + hour;

    // Webhooks: entry time and item timestamps are Meta's clock.
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let env = f.bot.received()[0].json();
    assert_eq!(env["entry"][0]["time"], meta);
    assert_eq!(env["entry"][0]["messaging"][0]["timestamp"], meta);
    c.user_read(PAGE, USER, &Default::default()).await.unwrap();
    let read = f.bot.items_with("read").pop().unwrap();
    assert_eq!(read.1["read"]["watermark"], meta);
    assert_eq!(read.1["timestamp"], meta);

    // Graph answers and thread state: Meta's clock too.
    let (_, b) = f
        .get(BOT_TOKEN, &format!("thread_owner?recipient={USER}"))
        .await;
    assert_eq!(
        b["data"][0]["thread_owner"]["expiration"],
        (meta + DAY) / 1000
    );
    let view = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(view.last_user_action_ms, Some(meta));
    assert_eq!(view.expires_at_ms, Some(meta + DAY));

    // Rules run on Meta's clock: moving the skew moves Meta's time, so a
    // day on Meta's clock closes the window and lapses control.
    c.advance(DAY - hour).await.unwrap();
    assert!(c.thread(PAGE, USER).await.unwrap().window_open);
    let clock = c.set_skew(2 * hour).await.unwrap();
    assert_eq!(clock.meta_now_ms, meta + DAY);
    assert_eq!(clock.expired, [format!("{PAGE}/{USER}")]);
    let (_, b) = f.send_text(BOT_TOKEN, "too late").await;
    assert_eq!(code(&b), (10, Some(2018278)), "{b}");

    // Behind: Meta writes times earlier than the control clock.
    let clock = c.set_skew(-hour).await.unwrap();
    assert_eq!(clock.meta_now_ms, clock.now_ms - hour);
    f.bot.clear();
    c.user_text(PAGE, USER, "back").await.unwrap();
    let env = f.bot.received()[0].json();
    assert_eq!(env["entry"][0]["time"], clock.now_ms - hour);
    assert_eq!(c.clock().await.unwrap().skew_ms, -hour);
}
