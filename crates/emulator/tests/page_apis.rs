//! The Messenger Profile API, the Attachment Upload API,
//! `pass_thread_metadata` and private replies to comments, checked over HTTP.

mod common;

use common::*;
use emulator::{AppConfig, ClientError, PageConfig, SetOwner};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DAY: i64 = 86_400_000;
const MIB: usize = 1024 * 1024;

/// The status of a failed control call.
fn status_of(e: ClientError) -> u16 {
    match e {
        ClientError::Status { status, body } => {
            assert!(body["error"].is_string(), "a JSON error: {body}");
            status
        }
        other => panic!("not a status error: {other}"),
    }
}

// ----- Messenger Profile ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn messenger_profile_is_merged_read_and_deleted_per_page() {
    let f = Fixture::cr();
    let c = f.emu.control();
    assert_eq!(c.messenger_profile(PAGE).await.unwrap(), json!({}));
    let (s, b) = f
        .get(BOT_TOKEN, "messenger_profile?fields=get_started")
        .await;
    assert_eq!((s, b), (200, json!({"data": []})));

    let (s, b) = f
        .post(
            BOT_TOKEN,
            "messenger_profile",
            json!({
                "get_started": {"payload": "GET_STARTED"},
                "greeting": [{"locale": "default", "text": "Hello {{user_first_name}}"}],
                "whitelisted_domains": ["https://shop.example"],
            }),
        )
        .await;
    assert_eq!((s, &b), (200, &json!({"result": "success"})));
    // Form style: JSON-encoded values, plain strings, on /{page_id}/.
    let resp = f
        .http
        .post(format!("{}/{PAGE}/messenger_profile", f.emu.graph_url()))
        .bearer_auth(CRM_TOKEN)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(
            "ice_breakers=%5B%7B%22question%22%3A%22Hours%3F%22%2C%22payload%22%3A%22HOURS%22%7D%5D\
             &account_linking_url=https%3A%2F%2Flogin.example%2Flink&platform=messenger",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // A later POST merges: it replaces only what it names.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "messenger_profile",
            json!({"get_started": {"payload": "START_V2"}}),
        )
        .await;
    assert_eq!(s, 200);

    let (s, b) = f
        .get(
            CRM_TOKEN,
            "messenger_profile?fields=get_started,ice_breakers,persistent_menu",
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"data": [{
            "get_started": {"payload": "START_V2"},
            "ice_breakers": [{"question": "Hours?", "payload": "HOURS"}],
        }]})
    );
    let whole = c.messenger_profile(PAGE).await.unwrap();
    assert_eq!(whole["account_linking_url"], "https://login.example/link");
    assert_eq!(whole["greeting"][0]["locale"], "default");
    assert_eq!(
        whole["whitelisted_domains"],
        json!(["https://shop.example"])
    );
    assert_eq!(whole.as_object().unwrap().len(), 5);

    // DELETE with a JSON array in the body, then comma-separated in the query.
    let (s, b) = f
        .delete(
            BOT_TOKEN,
            "messenger_profile",
            json!({"fields": ["greeting", "persistent_menu"]}),
        )
        .await;
    assert_eq!((s, b), (200, json!({"result": "success"})));
    let (s, _) = f
        .delete(
            BOT_TOKEN,
            "messenger_profile?fields=ice_breakers,account_linking_url",
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        c.messenger_profile(PAGE).await.unwrap(),
        json!({
            "get_started": {"payload": "START_V2"},
            "whitelisted_domains": ["https://shop.example"],
        })
    );
    let (_, b) = f
        .get(BOT_TOKEN, "messenger_profile?fields=greeting,ice_breakers")
        .await;
    assert_eq!(b, json!({"data": []}));
    // Unknown page on the control API.
    assert_eq!(
        status_of(c.messenger_profile("nope").await.unwrap_err()),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messenger_profile_bad_input_answers_100_and_changes_nothing() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "messenger_profile",
            json!({"get_started": {"payload": "GS"}}),
        )
        .await;
    assert_eq!(s, 200);
    let before = c.messenger_profile(PAGE).await.unwrap();

    let bad_posts = [
        // An unknown property refuses the whole call.
        json!({"get_started": {"payload": "OTHER"}, "target_audience": {}}),
        json!({}),
        json!({"get_started": "GS"}),
        json!({"get_started": {}}),
        json!({"greeting": [{"text": "no locale"}]}),
        json!({"greeting": {"locale": "default", "text": "not a list"}}),
        json!({"whitelisted_domains": [1]}),
        json!({"persistent_menu": null}),
        json!({"account_linking_url": {"url": "x"}}),
        json!({"get_started": {"payload": "OTHER"}, "platform": "instagram"}),
    ];
    for body in bad_posts {
        let (s, b) = f.post(BOT_TOKEN, "messenger_profile", body.clone()).await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{body} → {b}");
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("(#100)"));
    }
    for query in [
        "messenger_profile",
        "messenger_profile?fields=",
        "messenger_profile?fields=get_started,bogus",
    ] {
        let (s, b) = f.get(BOT_TOKEN, query).await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{query} → {b}");
    }
    for body in [
        json!({}),
        json!({"fields": []}),
        json!({"fields": ["get_started", "bogus"]}),
    ] {
        let (s, b) = f.delete(BOT_TOKEN, "messenger_profile", body.clone()).await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{body} → {b}");
    }
    let (s, b) = f
        .post(BOT_TOKEN, "messenger_profile?fields=x", json!({}))
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    // Other methods and tokens.
    let resp = f
        .http
        .put(format!("{}/me/messenger_profile", f.emu.graph_url()))
        .bearer_auth(BOT_TOKEN)
        .json(&json!({"get_started": {"payload": "PUT"}}))
        .send()
        .await
        .unwrap();
    let b: Value = resp.json().await.unwrap();
    assert_eq!(code(&b), (100, Some(33)));
    let (s, b) = f
        .post(
            "nope",
            "messenger_profile",
            json!({"get_started": {"payload": "X"}}),
        )
        .await;
    assert_eq!((s, code(&b).0), (400, 190));

    assert_eq!(c.messenger_profile(PAGE).await.unwrap(), before);
}

// ----- Attachment Upload --------------------------------------------------------

/// A multipart body with a `message` part and, when given, a `filedata` part.
fn multipart(message: &Value, file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----BatonBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{message}\r\n"
        )
        .as_bytes(),
    );
    if let Some((mime, data)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"filedata\"; filename=\"f.bin\"\r\nContent-Type: {mime}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn image_message() -> Value {
    json!({"attachment": {"type": "image", "payload": {"is_reusable": true}}})
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread")]
async fn attachments_upload_by_url_or_file_and_are_sent_by_id() {
    let f = Fixture::cr();
    let c = f.emu.control();
    // From a URL, JSON body.
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "message_attachments",
            json!({"message": {"attachment": {"type": "video",
                "payload": {"url": "https://cdn.example/v.mp4", "is_reusable": true}}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let url_id = b["attachment_id"].as_str().unwrap().to_string();
    assert!(url_id.chars().all(|ch| ch.is_ascii_digit()), "{url_id}");
    let a = c.attachment(&url_id).await.unwrap();
    assert_eq!(a.id, url_id);
    assert_eq!(a.type_, "video");
    assert_eq!(a.url.as_deref(), Some("https://cdn.example/v.mp4"));
    assert_eq!((a.bytes, a.sha256.as_deref()), (None, None));
    assert!(a.is_reusable);
    assert_eq!((a.page_id.as_str(), a.app_id.as_str()), (PAGE, BOT));

    // From a file, multipart, with binary bytes that look like a boundary.
    let data: Vec<u8> = b"\x89PNG\r\n\x1a\n\r\n------BatonBoundary\x00\xff"
        .iter()
        .copied()
        .cycle()
        .take(100_000)
        .collect();
    let (ct, body) = multipart(&image_message(), Some(("image/png", &data[..])));
    let (s, b) = f
        .post_raw(CRM_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!(s, 200, "{b}");
    let file_id = b["attachment_id"].as_str().unwrap().to_string();
    assert_ne!(file_id, url_id);
    let a = c.attachment(&file_id).await.unwrap();
    assert_eq!(a.type_, "image");
    assert_eq!(a.bytes, Some(100_000));
    assert_eq!(a.sha256, Some(sha256_hex(&data)));
    assert_eq!(a.url, None);
    assert_eq!(a.filename.as_deref(), Some("f.bin"));
    assert_eq!(a.content_type.as_deref(), Some("image/png"));
    assert_eq!(a.app_id, CRM);
    // The call log summarises the file instead of holding it.
    let calls = c.calls().await.unwrap();
    let last = calls.last().unwrap();
    assert_eq!(last.endpoint, "message_attachments");
    assert_eq!(last.params["filedata"]["bytes"], 100_000);

    // Sending by id: a known id is accepted like any message (by any app
    // of the page), an unknown one answers 100 and sends nothing.
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let send = |id: &str| {
        json!({"recipient": {"id": USER}, "messaging_type": "RESPONSE",
               "message": {"attachment": {"type": "image", "payload": {"attachment_id": id}}}})
    };
    let (s, b) = f.post(BOT_TOKEN, "messages", send(&file_id)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["recipient_id"], USER);
    let before = c.thread(PAGE, USER).await.unwrap().transcript.len();
    let (s, b) = f.post(BOT_TOKEN, "messages", send("123456")).await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Invalid attachment id"));
    assert_eq!(c.thread(PAGE, USER).await.unwrap().transcript.len(), before);
    // The id check comes before the thread checks: a non-owner gets 100 too.
    let (_, b) = f.post(CRM_TOKEN, "messages", send("123456")).await;
    assert_eq!(code(&b), (100, None));

    // Another page may not send this page's attachment.
    c.put_page(&PageConfig::conversation_routing("2002", CRM))
        .await
        .unwrap();
    c.put_app(
        &AppConfig::new(CRM, CRM_SECRET)
            .with_callback(&f.crm.url)
            .with_token(PAGE, CRM_TOKEN)
            .with_token("2002", "tok-crm-2"),
    )
    .await
    .unwrap();
    c.user_text("2002", USER, "hi").await.unwrap();
    let (_, b) = f.post("tok-crm-2", "messages", send(&file_id)).await;
    assert_eq!(code(&b), (100, None), "{b}");

    // Unknown ids on the control API.
    assert_eq!(status_of(c.attachment("999").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn attachment_upload_bad_input_and_the_25_mb_limit() {
    let f = Fixture::cr();
    let with = |att: Value| json!({"message": {"attachment": att}});
    let bad = [
        json!({}),
        json!({"message": {"text": "no attachment"}}),
        with(json!({"type": "template", "payload": {"url": "https://x.example/a"}})),
        with(json!({"type": "IMAGE", "payload": {"url": "https://x.example/a"}})),
        with(json!({"payload": {"url": "https://x.example/a"}})),
        with(json!({"type": "image"})),
        with(json!({"type": "image", "payload": {}})),
        with(json!({"type": "image", "payload": {"url": "ftp://x.example/a"}})),
        with(
            json!({"type": "image", "payload": {"url": "https://x.example/a", "is_reusable": "yes"}}),
        ),
    ];
    for body in bad {
        let (s, b) = f.post(BOT_TOKEN, "message_attachments", body.clone()).await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{body} → {b}");
    }
    // Multipart: no file and no URL, both, an empty file, a broken body, no boundary.
    let (ct, body) = multipart(&image_message(), None);
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    let both = json!({"attachment": {"type": "file", "payload": {"url": "https://x.example/a"}}});
    let (ct, body) = multipart(&both, Some(("text/plain", &b"hello"[..])));
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    let (ct, body) = multipart(&image_message(), Some(("image/png", &b""[..])));
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    let (ct, mut body) = multipart(&image_message(), Some(("image/png", &b"abc"[..])));
    body.truncate(body.len() - 10);
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("multipart"));
    let (s, b) = f
        .post_raw(
            BOT_TOKEN,
            "message_attachments",
            "multipart/form-data",
            b"--x\r\n".to_vec(),
        )
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    // Not a POST.
    let (_, b) = f.get(BOT_TOKEN, "message_attachments").await;
    assert_eq!(code(&b), (100, Some(33)));

    // 25 MB (25 MiB) exactly is accepted; one byte more is 100/2018109.
    let big = vec![7u8; 25 * MIB];
    let (ct, body) = multipart(&image_message(), Some(("image/png", &big[..])));
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!(s, 200, "{b}");
    let a = f
        .emu
        .control()
        .attachment(b["attachment_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(a.bytes, Some(25 * MIB as u64));
    assert_eq!(a.sha256, Some(sha256_hex(&big)));
    let mut bigger = big;
    bigger.push(7);
    let (ct, body) = multipart(&image_message(), Some(("image/png", &bigger[..])));
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, Some(2018109))), "{b}");
    // A body far over the limit is drained and answered the same way.
    bigger.resize(27 * MIB, 7);
    let (ct, body) = multipart(&image_message(), Some(("image/png", &bigger[..])));
    let (s, b) = f
        .post_raw(BOT_TOKEN, "message_attachments", &ct, body)
        .await;
    assert_eq!((s, code(&b)), (400, (100, Some(2018109))), "{b}");
}

// ----- pass_thread_metadata ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn pass_thread_metadata_from_the_holder_reaches_the_other_apps() {
    let f = Fixture::cr();
    let c = f.emu.control();
    // A third app, not subscribed to messaging_handovers: it gets nothing.
    let ops = Receiver::start();
    c.put_app(
        &AppConfig::new("333", "ops-secret")
            .with_callback(&ops.url)
            .with_token(PAGE, "tok-ops")
            .with_fields(&["messages"]),
    )
    .await
    .unwrap();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let meta = |m: &str| json!({"recipient": {"id": USER}, "metadata": m});

    // The bot owns the thread: the CRM may not pass metadata.
    let (s, b) = f.post(CRM_TOKEN, "pass_thread_metadata", meta("x")).await;
    assert_eq!((s, code(&b)), (400, (100, Some(2534037))), "{b}");
    let (s, b) = f
        .post(BOT_TOKEN, "pass_thread_metadata", meta("order=42"))
        .await;
    assert_eq!((s, &b), (200, &json!({"success": true})));
    c.wait_deliveries().await.unwrap();
    let got = f.crm.items_with("pass_thread_metadata");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "messaging");
    let item = &got[0].1;
    assert_eq!(item["sender"]["id"], USER);
    assert_eq!(item["recipient"]["id"], PAGE);
    assert!(item["timestamp"].is_i64());
    assert_eq!(
        item["pass_thread_metadata"],
        json!({"app_id": BOT, "metadata": "order=42"})
    );
    assert!(f.bot.items_with("pass_thread_metadata").is_empty());
    assert!(ops.items_with("pass_thread_metadata").is_empty());
    // Nothing about the thread changed.
    let view = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(view.owner.as_deref(), Some(BOT));

    // Bad input: nothing is sent.
    f.crm.clear();
    let long = "x".repeat(1000);
    for body in [
        json!({"recipient": {"id": USER}}),
        meta(""),
        meta(&long),
        json!({"metadata": "no recipient"}),
    ] {
        let (s, b) = f
            .post(BOT_TOKEN, "pass_thread_metadata", body.clone())
            .await;
        assert_eq!((s, code(&b)), (400, (100, None)), "{body} → {b}");
    }
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "pass_thread_metadata",
            json!({"recipient": {"id": "404"}, "metadata": "m"}),
        )
        .await;
    assert_eq!(code(&b), (100, Some(2018001)));
    let (s, _) = f
        .post(BOT_TOKEN, "pass_thread_metadata", meta(&long[..999]))
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    assert_eq!(f.crm.items_with("pass_thread_metadata").len(), 1);

    // After a pass, the new owner may and the old one may not.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f.post(BOT_TOKEN, "pass_thread_metadata", meta("x")).await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (s, _) = f
        .post(CRM_TOKEN, "pass_thread_metadata", meta("back"))
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    let got = f.bot.items_with("pass_thread_metadata");
    assert_eq!(got[0].1["pass_thread_metadata"]["app_id"], CRM);

    // An idle thread is the default app's.
    c.set_owner(
        PAGE,
        USER,
        &SetOwner {
            app_id: None,
            expires_at_ms: None,
        },
    )
    .await
    .unwrap();
    let (_, b) = f.post(CRM_TOKEN, "pass_thread_metadata", meta("x")).await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (s, _) = f
        .post(BOT_TOKEN, "pass_thread_metadata", meta("idle"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_thread_metadata_in_handover_v1_is_the_primarys_on_idle_threads() {
    let f = Fixture::with(|w, bot, crm| {
        w.with_page(PageConfig::handover_v1(PAGE, BOT, &[CRM]))
            .with_app(bot)
            .with_app(crm)
    });
    let c = f.emu.control();
    c.user_text(PAGE, USER, "hi").await.unwrap();
    let meta = json!({"recipient": {"id": USER}, "metadata": "m"});
    let (_, b) = f
        .post(CRM_TOKEN, "pass_thread_metadata", meta.clone())
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (s, _) = f
        .post(BOT_TOKEN, "pass_thread_metadata", meta.clone())
        .await;
    assert_eq!(s, 200);
    c.wait_deliveries().await.unwrap();
    assert_eq!(f.crm.items_with("pass_thread_metadata").len(), 1);
    // Once the secondary holds the thread, it is the one that may.
    let (s, _) = f
        .post(
            BOT_TOKEN,
            "pass_thread_control",
            json!({"recipient": {"id": USER}, "target_app_id": CRM}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f
        .post(BOT_TOKEN, "pass_thread_metadata", meta.clone())
        .await;
    assert_eq!(code(&b), (100, Some(2534037)));
    let (s, _) = f.post(CRM_TOKEN, "pass_thread_metadata", meta).await;
    assert_eq!(s, 200);
}

// ----- comments and private replies ----------------------------------------------

fn reply(comment_id: &str, text: &str) -> Value {
    json!({"recipient": {"comment_id": comment_id}, "message": {"text": text}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_gets_one_private_reply_within_seven_days() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let comment = c.user_comment(PAGE, USER, "how much?").await.unwrap();
    assert!(comment.starts_with(&format!("{PAGE}_1_")), "{comment}");
    // A comment opens no thread.
    assert_eq!(status_of(c.thread(PAGE, USER).await.unwrap_err()), 404);

    // Any app of the page may reply, without messaging_type.
    let (s, b) = f
        .post(CRM_TOKEN, "messages", reply(&comment, "DM'd you"))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["recipient_id"], USER);
    let mid = b["message_id"].as_str().unwrap().to_string();
    assert!(mid.starts_with("m_"));
    let view = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(view.transcript.len(), 1);
    assert_eq!(view.transcript[0].mid, mid);
    assert_eq!(view.transcript[0].from, "page");
    assert_eq!(view.transcript[0].app_id.as_deref(), Some(CRM));
    assert_eq!(view.transcript[0].text.as_deref(), Some("DM'd you"));
    // The reply opens no window and gives no control.
    assert!(!view.window_open);
    assert_eq!(view.last_user_action_ms, None);
    assert!(view.idle);
    let (_, b) = f.send_text(BOT_TOKEN, "follow-up").await;
    assert_eq!(code(&b), (10, Some(2018278)));
    // It echoes like any page message (the default app has the idle thread).
    c.wait_deliveries().await.unwrap();
    let echo = f.bot.items_with("message").pop().unwrap();
    assert_eq!(echo.0, "messaging");
    assert_eq!(echo.1["message"]["mid"], mid.as_str());
    assert_eq!(echo.1["message"]["app_id"], 222);

    // Only one reply per comment.
    let (s, b) = f
        .post(BOT_TOKEN, "messages", reply(&comment, "again"))
        .await;
    assert_eq!((s, code(&b)), (400, (10900, None)), "{b}");
    assert_eq!(
        b["error"]["message"],
        "(#10900) The comment has already been replied to"
    );

    // Within 7 days of the comment, not after.
    let late = c
        .user_comment_on(PAGE, USER, Some("1001_77"), "still there?")
        .await
        .unwrap();
    assert!(late.starts_with("1001_77_"), "{late}");
    let in_time = c.user_comment(PAGE, "9002", "hello").await.unwrap();
    c.advance(7 * DAY - 1).await.unwrap();
    let (s, b) = f
        .post(BOT_TOKEN, "messages", reply(&in_time, "just in time"))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["recipient_id"], "9002");
    c.advance(1).await.unwrap();
    let before = c.thread(PAGE, USER).await.unwrap().transcript.len();
    let (s, b) = f
        .post(BOT_TOKEN, "messages", reply(&late, "too late"))
        .await;
    assert_eq!((s, code(&b)), (400, (10903, None)), "{b}");
    assert_eq!(
        b["error"]["message"],
        "(#10903) This message is sent outside of allowed window"
    );
    assert_eq!(c.thread(PAGE, USER).await.unwrap().transcript.len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn private_reply_and_comment_bad_input() {
    let f = Fixture::cr();
    let c = f.emu.control();
    let comment = c.user_comment(PAGE, USER, "hi").await.unwrap();
    let (s, b) = f
        .post(BOT_TOKEN, "messages", reply("1001_1_404", "x"))
        .await;
    assert_eq!((s, code(&b)), (400, (100, None)), "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("(#100)") && msg.contains("comment") && msg.contains("does not exist"));
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"comment_id": comment}, "sender_action": "typing_on"}),
        )
        .await;
    assert_eq!(code(&b), (100, None));
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"comment_id": comment}, "message": {"text": "x"},
                   "thread_control": {"control_type": "release"}}),
        )
        .await;
    assert_eq!(code(&b), (100, None));
    let (_, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"comment_id": comment}, "messaging_type": "NOPE",
                   "message": {"text": "x"}}),
        )
        .await;
    assert_eq!(code(&b), (100, None));
    // None of that used the comment up; a page blocked by policy may not reply.
    c.policy_enforcement(PAGE, "block", None).await.unwrap();
    let (_, b) = f.post(BOT_TOKEN, "messages", reply(&comment, "x")).await;
    assert_eq!(code(&b), (10, Some(1893063)));
    c.policy_enforcement(PAGE, "unblock", None).await.unwrap();
    let (s, b) = f
        .post(
            BOT_TOKEN,
            "messages",
            json!({"recipient": {"comment_id": comment}, "messaging_type": "RESPONSE",
                   "message": {"text": "ok", "metadata": "reply-1"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let view = c.thread(PAGE, USER).await.unwrap();
    assert_eq!(view.transcript[0].metadata.as_deref(), Some("reply-1"));

    // Another page's comment does not exist for this page.
    c.put_page(&PageConfig::conversation_routing("2002", BOT))
        .await
        .unwrap();
    let other = c.user_comment("2002", USER, "hi").await.unwrap();
    let (_, b) = f.post(BOT_TOKEN, "messages", reply(&other, "x")).await;
    assert_eq!(code(&b), (100, None));

    // The control API refuses bad comments with a JSON 400 (404: no page).
    let post = |body: &'static str, page: &'static str| {
        let http = f.http.clone();
        let url = format!("{}/_emulator/pages/{page}/comments", f.emu.base_url());
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let b: Value = resp.json().await.unwrap();
            assert!(b["error"].is_string(), "{b}");
            status
        }
    };
    assert_eq!(post(r#"{"text":"no psid"}"#, PAGE).await, 400);
    assert_eq!(post(r#"{"psid":"9001"}"#, PAGE).await, 400);
    assert_eq!(post(r#"{"psid":"","text":"x"}"#, PAGE).await, 400);
    assert_eq!(
        post(r#"{"psid":"9001","text":"x","extra":1}"#, PAGE).await,
        400
    );
    assert_eq!(
        post(r#"{"psid":"9001","text":"x","post_id":""}"#, PAGE).await,
        400
    );
    assert_eq!(post("not json", PAGE).await, 400);
    assert_eq!(post(r#"{"psid":"9001","text":"x"}"#, "nope").await, 404);
    assert_eq!(
        status_of(c.user_comment("nope", USER, "x").await.unwrap_err()),
        404
    );
}
