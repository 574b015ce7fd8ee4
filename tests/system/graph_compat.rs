//! Graph compatibility beyond single sends (issue 14): the batch API, node
//! reads (the page, a user's profile) and their refusals, in Meta's shapes.

use serde_json::{json, Value};

use crate::stack::*;
use crate::support::*;

async fn post_root(stack: &Stack, body: &Value, form: bool) -> (u16, Value) {
    let req = stack.baton.http.post(stack.baton.url("/v21.0/"));
    let req = if form {
        let fields: Vec<(String, String)> = body
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        req.form(&fields)
    } else {
        req.json(body)
    };
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    stack.ctl.wait_deliveries().await.unwrap();
    (status, body)
}

async fn get(stack: &Stack, path: &str) -> (u16, Value) {
    let res = stack
        .baton
        .http
        .get(stack.baton.url(path))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn item_body(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_serves_each_item_through_the_same_gate_and_answers_in_metas_shape() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let send = |text: &str| {
        json!({
            "method": "POST",
            "relative_url": "me/messages",
            "body": format!("messaging_type=RESPONSE&recipient=%7B%22id%22%3A%22u1%22%7D&message=%7B%22text%22%3A%22{text}%22%7D"),
        })
    };
    let batch = json!({
        "access_token": "baton-bot",
        "batch": [
            send("one"),
            {"method": "GET", "relative_url": "/v21.0/me/thread_owner?recipient=u1"},
            // A user who never wrote: refused by the gate, in Meta's error shape.
            {"method": "POST", "relative_url": "me/messages", "body": "messaging_type=RESPONSE&recipient=%7B%22id%22%3A%22u404%22%7D&message=%7B%22text%22%3A%22x%22%7D"},
            {"method": "POST", "relative_url": "me/pass_thread_control", "body": format!("recipient=%7B%22id%22%3A%22u1%22%7D&target_app_id={HUMAN}")},
            // The bot no longer owns the thread: refused before Meta.
            send("two"),
            {"method": "GET", "relative_url": "me/messenger_profile"},
        ],
    });
    let (status, answers) = post_root(&stack, &batch, false).await;
    assert_eq!(status, 200, "{answers}");
    let answers = answers.as_array().unwrap().clone();
    let codes: Vec<u64> = answers
        .iter()
        .map(|a| a["code"].as_u64().unwrap())
        .collect();
    assert_eq!(codes, [200, 200, 400, 200, 400, 400], "{answers:?}");
    assert!(item_body(&answers[0])["message_id"]
        .as_str()
        .unwrap()
        .starts_with("m_"));
    assert_eq!(
        item_body(&answers[1])["data"][0]["thread_owner"]["app_id"],
        BOT
    );
    assert_eq!(item_body(&answers[2])["error"]["error_subcode"], 2_018_001);
    assert_eq!(item_body(&answers[3])["success"], true);
    assert_eq!(item_body(&answers[4])["error"]["error_subcode"], 2_018_300);
    assert_eq!(item_body(&answers[5])["error"]["code"], 100);
    assert_eq!(answers[0]["headers"][0]["name"], "Content-Type");
    assert_eq!(
        stack.page_messages("u1").await,
        ["one"],
        "only the gated send left"
    );
    assert_eq!(stack.ledger_view("u1"), owner(HUMAN));
    stack.assert_consistent("u1").await;

    // The same batch form-encoded, the token in the form.
    let form = json!({
        "access_token": "baton-human",
        "include_headers": "false",
        "batch": json!([send("three")]).to_string(),
    });
    let (status, answers) = post_root(&stack, &form, true).await;
    assert_eq!(status, 200, "{answers}");
    assert_eq!(answers[0]["code"], 200, "{answers}");
    assert!(answers[0].get("headers").is_none());
    assert_eq!(stack.page_messages("u1").await, ["one", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_whole_and_change_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let one = json!({"method": "POST", "relative_url": "me/messages", "body": "messaging_type=RESPONSE&recipient=%7B%22id%22%3A%22u1%22%7D&message=%7B%22text%22%3A%22x%22%7D"});
    let too_many: Vec<Value> = (0..51).map(|_| one.clone()).collect();
    let cases = [
        (json!({"access_token": "baton-bot"}), 400, 100),
        (
            json!({"access_token": "baton-bot", "batch": "not a list"}),
            400,
            100,
        ),
        (
            json!({"access_token": "baton-bot", "batch": too_many}),
            400,
            100,
        ),
        (json!({"batch": [one.clone()]}), 400, 104),
        (
            json!({"access_token": "nope", "batch": [one.clone()]}),
            400,
            190,
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = post_root(&stack, &body, false).await;
        assert_eq!(
            (got, answer["error"]["code"].clone()),
            (status, json!(code)),
            "{answer}"
        );
    }
    // A malformed item is answered as its own error; the others are served.
    let batch = json!({"access_token": "baton-bot", "batch": [{"method": "POST"}, {"method": "PATCH", "relative_url": "me/messages"}, {"method": "GET", "relative_url": "a/b/c/d"}]});
    let (status, answers) = post_root(&stack, &batch, false).await;
    assert_eq!(status, 200);
    for a in answers.as_array().unwrap() {
        assert_eq!(a["code"], 400, "{a}");
        assert_eq!(item_body(a)["error"]["code"], 100, "{a}");
    }
    assert!(
        stack.page_messages("u1").await.is_empty(),
        "nothing was sent"
    );
    assert_eq!(
        stack.ctl.calls().await.unwrap().len(),
        0,
        "nothing reached Meta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reads_pass_metas_answer_through_for_the_page_and_users_it_has_seen() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let (status, page) = get(&stack, "/v21.0/me?access_token=baton-bot").await;
    assert_eq!((status, page["id"].clone()), (200, json!(PAGE)), "{page}");
    let (status, page) = get(
        &stack,
        &format!("/v21.0/{PAGE}?fields=messaging_feature_status&access_token=baton-human"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messaging_feature_status"]["hop_v2"], true);
    let (status, user) = get(
        &stack,
        "/v21.0/u1?fields=first_name,last_name&access_token=baton-bot",
    )
    .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(
        (user["id"].clone(), user["last_name"].clone()),
        (json!("u1"), json!("u1"))
    );
    let calls = stack.ctl.calls().await.unwrap();
    assert_eq!(calls.len(), 3, "each read asked Meta once");
    assert_eq!(calls[2].path, "/v21.0/u1");

    // A user the page never heard from is no object, and Meta is not asked.
    let (status, err) = get(&stack, "/v21.0/u404?access_token=baton-bot").await;
    assert_eq!(
        (
            status,
            err["error"]["code"].clone(),
            err["error"]["error_subcode"].clone()
        ),
        (400, json!(100), json!(33)),
        "{err}"
    );
    // No token, a wrong token, another page's id: Meta's codes.
    let (status, err) = get(&stack, "/v21.0/u1").await;
    assert_eq!((status, err["error"]["code"].clone()), (400, json!(104)));
    let (status, err) = get(&stack, "/v21.0/u1?access_token=nope").await;
    assert_eq!((status, err["error"]["code"].clone()), (400, json!(190)));
    let (status, err) = get(
        &stack,
        &format!("/v21.0/{OTHER_PAGE}?access_token=baton-bot"),
    )
    .await;
    assert_eq!(
        (status, err["error"]["error_subcode"].clone()),
        (400, json!(33)),
        "{err}"
    );
    assert_eq!(
        stack.ctl.calls().await.unwrap().len(),
        3,
        "none of them reached Meta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_baton_does_not_serve_get_metas_unsupported_request_error_and_change_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    for edge in ["subscribed_apps", "custom_labels"] {
        let (status, body) = stack
            .graph_post("baton-bot", edge, json!({"recipient": {"id": "u1"}}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(100)),
            "{edge}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Unsupported"),
            "{body}"
        );
        let (status, body) = get(&stack, &format!("/v21.0/me/{edge}?access_token=baton-bot")).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(100)),
            "{edge}: {body}"
        );
    }
    let to_a_post = json!({"recipient": {"post_id": "123_456"}, "message": {"text": "hi"}});
    let (status, body) = stack.send("baton-bot", to_a_post).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    // Without a token, nothing is said about what is served.
    let (status, body) = get(&stack, "/v21.0/me/subscribed_apps").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!(104)));
    assert_eq!(
        stack.ctl.calls().await.unwrap().len(),
        0,
        "nothing reached Meta"
    );
    assert_eq!(
        stack.baton.count("CommandRefused").await,
        0,
        "nothing was recorded"
    );
}

async fn call(
    stack: &Stack,
    method: reqwest::Method,
    token: &str,
    edge: &str,
    body: Value,
) -> (u16, Value) {
    let res = stack
        .baton
        .http
        .request(method, stack.baton.url(&format!("/v21.0/me/{edge}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    stack.ctl.wait_deliveries().await.unwrap();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messenger_profile_is_read_by_any_app_and_changed_only_by_an_allowed_one() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let greeting = json!([{"locale": "default", "text": "Hi, how can we help?"}]);
    let (status, body) = call(
        &stack,
        reqwest::Method::POST,
        "baton-bot",
        "messenger_profile",
        json!({"greeting": greeting, "get_started": {"payload": "GO"}}),
    )
    .await;
    assert_eq!(
        (status, body.clone()),
        (200, json!({"result": "success"})),
        "{body}"
    );
    assert_eq!(
        stack.ctl.messenger_profile(PAGE).await.unwrap()["greeting"],
        greeting
    );
    assert_eq!(stack.baton.count("MessengerProfileChanged").await, 1);
    // Any app on the page reads it.
    let (status, body) = get(
        &stack,
        "/v21.0/me/messenger_profile?fields=greeting&access_token=baton-human",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["greeting"], greeting);
    // The human inbox is not allowed to change the whole page's profile.
    let (status, body) = call(
        &stack,
        reqwest::Method::POST,
        "baton-human",
        "messenger_profile",
        json!({"greeting": [{"locale": "default", "text": "no"}]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!(200)),
        "{body}"
    );
    assert_eq!(
        stack.ctl.messenger_profile(PAGE).await.unwrap()["greeting"],
        greeting
    );
    // Bad requests: refused here, or by Meta (passed through); none recorded.
    let (status, body) = call(
        &stack,
        reqwest::Method::POST,
        "baton-bot",
        "messenger_profile",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    let (status, body) = get(&stack, "/v21.0/me/messenger_profile?access_token=baton-bot").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    let (status, body) = call(
        &stack,
        reqwest::Method::POST,
        "baton-bot",
        "messenger_profile",
        json!({"no_such_property": 1}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    assert_eq!(stack.baton.count("MessengerProfileChanged").await, 1);
    // Delete.
    let (status, body) = call(
        &stack,
        reqwest::Method::DELETE,
        "baton-bot",
        "messenger_profile",
        json!({"fields": ["greeting"]}),
    )
    .await;
    assert_eq!((status, body), (200, json!({"result": "success"})));
    assert!(stack
        .ctl
        .messenger_profile(PAGE)
        .await
        .unwrap()
        .get("greeting")
        .is_none());
    assert_eq!(stack.baton.count("MessengerProfileChanged").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_metadata_is_passed_by_the_thread_owner_only_and_recorded() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack.user_says("u1", "hello").await;
    let meta =
        |psid: &str| json!({"recipient": {"id": psid}, "metadata": "order 1234, refund asked"});
    // The bot owns the thread: the human inbox may not.
    let (status, body) = stack
        .graph_post("baton-human", "pass_thread_metadata", meta("u1"))
        .await;
    assert_eq!(
        (
            status,
            body["error"]["code"].clone(),
            body["error"]["error_subcode"].clone()
        ),
        (400, json!(100), json!(2_534_037)),
        "{body}"
    );
    assert_eq!(
        stack.upstream_calls("pass_thread_metadata").await,
        0,
        "refused before Meta"
    );
    let (status, body) = stack
        .graph_post("baton-bot", "pass_thread_metadata", meta("u1"))
        .await;
    assert_eq!(
        (status, body["success"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let told = stack.ctl.deliveries().await.unwrap();
    assert!(
        told.iter()
            .any(|d| d.app_id == HUMAN && d.body.contains("pass_thread_metadata")),
        "the other app was told"
    );
    assert_eq!(stack.baton.count("ThreadMetadataPassed").await, 1);
    let (status, body) = stack
        .graph_post("baton-bot", "pass_thread_metadata", meta("u404"))
        .await;
    assert_eq!(
        (status, body["error"]["error_subcode"].clone()),
        (400, json!(2_018_001)),
        "{body}"
    );
    let (status, body) = stack
        .graph_post(
            "baton-bot",
            "pass_thread_metadata",
            json!({"recipient": {"id": "u1"}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    assert_eq!(stack.baton.count("ThreadMetadataPassed").await, 1);
    stack.assert_consistent("u1").await;
}

fn multipart(boundary: &str, message: &Value, file: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{message}\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"filedata\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_upload_as_json_or_multipart_pass_through_and_are_recorded() {
    let stack = Stack::start_with(
        Mode::ConversationRouting,
        Tuning::default(),
        &["max_attachment_bytes = 4096"],
    )
    .await;
    stack.user_says("u1", "hello").await;
    let by_url = json!({"message": {"attachment": {"type": "image", "payload": {"url": "https://example.invalid/a.png", "is_reusable": true}}}});
    let (status, body) = stack
        .graph_post("baton-bot", "message_attachments", by_url)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["attachment_id"].is_string(), "{body}");
    // A file, as multipart/form-data: passed through byte for byte.
    let file: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let message = json!({"attachment": {"type": "image", "payload": {"is_reusable": true}}});
    let upload = |file: &[u8]| {
        stack
            .baton
            .http
            .post(
                stack
                    .baton
                    .url("/v21.0/me/message_attachments?access_token=baton-bot"),
            )
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(multipart("XyZ", &message, file))
    };
    let res = upload(&file).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let id = body["attachment_id"].as_str().unwrap().to_owned();
    let kept = stack.ctl.attachment(&id).await.unwrap();
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&file));
    assert_eq!(
        (kept.bytes, kept.sha256.as_deref()),
        (Some(2000), Some(sha.as_str()))
    );
    let recorded = stack
        .baton
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            domain::Event::AttachmentUploaded(a) if a.attachment_id == id => Some(a),
            _ => None,
        });
    let recorded = recorded.expect("the upload is recorded");
    assert_eq!(
        (recorded.bytes, recorded.sha256.as_deref()),
        (2000, Some(sha.as_str()))
    );
    assert_eq!(stack.baton.count("AttachmentUploaded").await, 2);
    // The id sends like any attachment.
    let send = json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"attachment": {"type": "image", "payload": {"attachment_id": id}}}});
    let (status, body) = stack.send("baton-bot", send).await;
    assert_eq!(status, 200, "{body}");
    // Over max_attachment_bytes: 413, nothing sent to Meta.
    let calls = stack.ctl.calls().await.unwrap().len();
    let res = upload(&vec![7u8; 5000]).send().await.unwrap();
    assert_eq!(res.status(), 413);
    // No type, no file part: 400/100.
    let (status, body) = stack.graph_post("baton-bot", "message_attachments", json!({"message": {"attachment": {"payload": {"url": "https://example.invalid/a.png"}}}})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    let res = stack
        .baton
        .http
        .post(
            stack
                .baton
                .url("/v21.0/me/message_attachments?access_token=baton-bot"),
        )
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{}\r\n--XyZ--\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(
        stack.ctl.calls().await.unwrap().len(),
        calls,
        "none reached Meta"
    );
    assert_eq!(stack.baton.count("AttachmentUploaded").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_gets_one_private_reply_and_it_is_recorded() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let comment = stack
        .ctl
        .user_comment(PAGE, "u7", "how much is it?")
        .await
        .unwrap();
    let reply =
        json!({"recipient": {"comment_id": comment}, "message": {"text": "Sent you the price!"}});
    let (status, body) = stack.send("baton-bot", reply.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recipient_id"], "u7");
    assert_eq!(stack.page_messages("u7").await, ["Sent you the price!"]);
    assert_eq!(stack.baton.count("PrivateReplySent").await, 1);
    // A second reply to the same comment: refused here, as Meta would.
    let calls = stack.upstream_calls("/messages").await;
    let (status, body) = stack.send("baton-bot", reply).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(10_900)),
        "{body}"
    );
    assert_eq!(
        stack.upstream_calls("/messages").await,
        calls,
        "refused before Meta"
    );
    // A comment Meta does not know: Meta's answer, passed through.
    let unknown = json!({"recipient": {"comment_id": "999_999"}, "message": {"text": "?"}});
    let (status, body) = stack.send("baton-bot", unknown).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(100)),
        "{body}"
    );
    assert_eq!(stack.baton.count("PrivateReplySent").await, 1);
}
