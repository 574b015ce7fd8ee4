//! App-scoped ids: people registered through the control API, the ID
//! Matching API (`GET /{asid}/ids_for_pages` with an app token) and Meta's
//! data-deletion callback with its `signed_request`, checked over HTTP.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use emulator::{
    signed_request, AppConfig, ClientError, Emulator, EmulatorError, NewPerson, PageConfig,
    DEFAULT_EPOCH_MS,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A second page the bot has a token for, without a name.
const PAGE2: &str = "1002";
/// A page of the world no managed app has a token for.
const PAGE3: &str = "1003";
const BOT_ASID: &str = "asid-bot-1";
const CRM_ASID: &str = "asid-crm-1";

fn bot_app_token() -> String {
    format!("{BOT}|{BOT_SECRET}")
}

/// The CR page, a nameless second page of the bot's, and a page no managed
/// app is on; the bot has a data-deletion callback at `deletion_url`.
fn fixture(deletion_url: Option<&str>) -> Fixture {
    let url = deletion_url.map(str::to_string);
    Fixture::with(move |w, bot, crm| {
        let mut nameless = PageConfig::conversation_routing(PAGE2, BOT);
        nameless.name = String::new();
        let bot = bot.with_token(PAGE2, "tok-bot-2");
        let bot = match url {
            Some(u) => bot.with_data_deletion_url(u),
            None => bot,
        };
        w.with_page(PageConfig::conversation_routing(PAGE, BOT))
            .with_page(nameless)
            .with_page(PageConfig::zero_config(PAGE3))
            .with_app(bot)
            .with_app(crm)
    })
}

fn person(psids: &[(&str, &str)], asids: &[(&str, &str)]) -> NewPerson {
    let pairs = |p: &[(&str, &str)]| {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    NewPerson {
        psids: pairs(psids),
        asids: pairs(asids),
    }
}

/// The person of the tests: a PSID on each page, an ASID in each app.
async fn register_user(f: &Fixture) {
    f.emu
        .control()
        .register_person(&person(
            &[(PAGE, USER), (PAGE2, "9002"), (PAGE3, "9003")],
            &[(BOT, BOT_ASID), (CRM, CRM_ASID)],
        ))
        .await
        .unwrap();
}

/// A Graph call to `/v21.0/{path}`, the token (if any) as a query parameter.
async fn graph(f: &Fixture, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = f
        .http
        .request(method, format!("{}/{path}", f.emu.graph_url()));
    if let Some(t) = token {
        req = req.query(&[("access_token", t)]);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// POSTs a raw body to the control API: (status, JSON answer).
async fn control(f: &Fixture, method: &str, path: &str, body: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let resp = f
        .http
        .request(method, format!("{}/_emulator{path}", f.emu.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON answer"))
}

fn assert_json_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
}

// ----- the ID Matching API ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn ids_for_pages_lists_the_persons_psids_on_the_pages_of_the_app() {
    let f = fixture(None);
    let c = f.emu.control();
    let registered = c
        .register_person(&person(
            &[(PAGE, USER), (PAGE2, "9002"), (PAGE3, "9003")],
            &[(BOT, BOT_ASID), (CRM, CRM_ASID)],
        ))
        .await
        .unwrap();
    assert!(registered.id.starts_with("person_"), "{registered:?}");
    assert_eq!(registered.psids.len(), 3);
    assert_eq!(registered.asids[BOT], BOT_ASID);

    // The bot is on the first two pages; the third, where the person also
    // has a PSID, is not listed. A nameless page is named by its id.
    let (s, b) = graph(
        &f,
        "GET",
        &format!("{BOT_ASID}/ids_for_pages"),
        Some(&bot_app_token()),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({
            "data": [
                {"id": USER, "page": {"id": PAGE, "name": format!("Page {PAGE}")}},
                {"id": "9002", "page": {"id": PAGE2, "name": PAGE2}},
            ],
            "paging": {"cursors": {"before": "", "after": ""}},
        })
    );
    // The CRM app knows the same person by its own ASID, on its one page.
    let (s, b) = graph(
        &f,
        "GET",
        &format!("{CRM_ASID}/ids_for_pages"),
        Some(&format!("{CRM}|{CRM_SECRET}")),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["data"],
        json!([{"id": USER, "page": {"id": PAGE, "name": format!("Page {PAGE}")}}])
    );

    // A person with no PSID on the app's pages: an empty list.
    c.register_person(&person(&[(PAGE3, "7003")], &[(BOT, "asid-bot-2")]))
        .await
        .unwrap();
    let (s, b) = graph(
        &f,
        "GET",
        "asid-bot-2/ids_for_pages",
        Some(&bot_app_token()),
    )
    .await;
    assert_eq!((s, b["data"].clone()), (200, json!([])), "{b}");

    // The call log names the app, no page, and never the app token.
    let calls = c.calls().await.unwrap();
    let call = calls
        .iter()
        .find(|c| c.endpoint == "ids_for_pages")
        .unwrap();
    assert_eq!(call.app_id.as_deref(), Some(BOT));
    assert_eq!(call.page_id, None);
    assert!(call.params.get("access_token").is_none());
    assert!(!serde_json::to_string(&calls).unwrap().contains(BOT_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_for_pages_refuses_anything_but_the_apps_own_token_and_asids() {
    let f = fixture(None);
    register_user(&f).await;
    let path = format!("{BOT_ASID}/ids_for_pages");

    // Wrong tokens: 190, OAuthException. A page token is not an app token;
    // an app with an empty secret (the Page Inbox) has no app token.
    for token in [
        "nope".to_string(),
        format!("{BOT}|wrong-secret"),
        format!("{BOT}|"),
        format!("{BOT}|{CRM_SECRET}"),
        format!("|{BOT_SECRET}"),
        format!("404|{BOT_SECRET}"),
        format!("{}|", emulator::PAGE_INBOX_APP_ID),
        BOT_TOKEN.to_string(),
        BOT_SECRET.to_string(),
    ] {
        let (s, b) = graph(&f, "GET", &path, Some(&token)).await;
        assert_eq!((s, code(&b)), (400, (190, None)), "{token}: {b}");
        assert_eq!(b["error"]["type"], "OAuthException", "{token}: {b}");
        assert!(b["error"]["fbtrace_id"].is_string());
        assert!(b["data"].is_null(), "{token}: {b}");
    }
    // No token at all: 104, as on every other route.
    let (s, b) = graph(&f, "GET", &path, None).await;
    assert_eq!((s, code(&b)), (400, (104, None)), "{b}");

    // An ASID the app does not know (unknown, or another app's for the same
    // person): the object does not exist for it.
    for asid in [CRM_ASID, "asid-404", USER] {
        let (s, b) = graph(
            &f,
            "GET",
            &format!("{asid}/ids_for_pages"),
            Some(&bot_app_token()),
        )
        .await;
        assert_eq!((s, code(&b)), (400, (100, Some(33))), "{asid}: {b}");
        assert_eq!(b["error"]["type"], "GraphMethodException");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!(
                    "Unsupported get request. Object with ID '{asid}' does not exist"
                )),
            "{b}"
        );
    }
    // The edge is read-only.
    for method in ["POST", "DELETE"] {
        let (s, b) = graph(&f, method, &path, Some(&bot_app_token())).await;
        assert_eq!((s, code(&b)), (400, (100, Some(33))), "{method}: {b}");
        assert!(b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Unsupported {} request", method.to_lowercase())));
    }
    // An app token is not a page token either.
    let (s, b) = graph(
        &f,
        "GET",
        &format!("{PAGE}/subscribed_apps"),
        Some(&bot_app_token()),
    )
    .await;
    assert_eq!((s, code(&b)), (400, (190, None)), "{b}");

    // The right token still works after all that.
    let (s, b) = graph(&f, "GET", &path, Some(&bot_app_token())).await;
    assert_eq!((s, b["data"].as_array().map(Vec::len)), (200, Some(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn registering_a_person_checks_pages_apps_and_who_owns_an_id() {
    let f = fixture(None);
    register_user(&f).await;

    for (body, what) in [
        (r#"{"psids": {"404": "1"}}"#.to_string(), "unknown page"),
        (r#"{"asids": {"404": "a"}}"#.to_string(), "unknown app"),
        (format!(r#"{{"psids": {{"{PAGE}": " "}}}}"#), "empty psid"),
        (format!(r#"{{"asids": {{"{BOT}": ""}}}}"#), "empty asid"),
        ("{}".to_string(), "no ids"),
        (r#"{"psids": {}, "asids": {}}"#.to_string(), "empty maps"),
        (format!(r#"{{"psids": {{"{PAGE}": 9}}}}"#), "a number"),
        (format!(r#"{{"psids": [["{PAGE}", "1"]]}}"#), "a list"),
        (r#"{"psid": {}}"#.to_string(), "unknown field"),
        (r#"{"psids": "#.to_string(), "malformed"),
        // Ids that already belong to the registered person.
        (
            format!(r#"{{"psids": {{"{PAGE}": "{USER}"}}}}"#),
            "taken psid",
        ),
        (
            format!(r#"{{"asids": {{"{BOT}": "{BOT_ASID}"}}}}"#),
            "taken asid",
        ),
        // One good id does not carry a bad one.
        (
            format!(r#"{{"asids": {{"{BOT}": "asid-new", "404": "x"}}}}"#),
            "partly unknown",
        ),
    ] {
        let (s, b) = control(&f, "POST", "/people", &body).await;
        assert_json_error(s, &b, 400, what);
    }
    // Nothing was registered: "asid-new" is still unknown to the bot.
    let (s, b) = graph(&f, "GET", "asid-new/ids_for_pages", Some(&bot_app_token())).await;
    assert_eq!((s, code(&b)), (400, (100, Some(33))), "{b}");
    // The same PSID on another page, the same ASID string in another app:
    // different ids, a different person.
    let other = f
        .emu
        .control()
        .register_person(&person(&[(PAGE2, USER)], &[(CRM, BOT_ASID)]))
        .await
        .unwrap();
    assert_eq!(other.asids[CRM], BOT_ASID);
    // The typed client reports the refusal as a 400 with a JSON error.
    match f
        .emu
        .control()
        .register_person(&person(&[("404", "1")], &[]))
        .await
    {
        Err(ClientError::Status { status, body }) => {
            assert_eq!(status, 400);
            assert!(body["error"].as_str().unwrap().contains("404"), "{body}");
        }
        other => panic!("{other:?}"),
    }
}

// ----- the data-deletion callback -----------------------------------------------

/// Whether `<sig>.<payload>` is signed with `secret`, checked as an app
/// would, independently of the emulator.
fn signed_with(value: &str, secret: &str) -> bool {
    let Some((sig, payload)) = value.split_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// Takes the one field of `signed_request=<sig>.<payload>`, checks it is
/// signed with `secret`, and returns it with its payload JSON.
fn verify(form_body: &[u8], secret: &str) -> (String, Value) {
    let body = std::str::from_utf8(form_body).unwrap();
    let value = body
        .strip_prefix("signed_request=")
        .unwrap_or_else(|| panic!("one form field: {body}"));
    // base64url without padding and a dot: nothing to percent-encode.
    assert!(!value.contains(['&', '=', '%', '+', '/']), "{value}");
    assert!(signed_with(value, secret), "signed with the app secret");
    let payload = value.split_once('.').unwrap().1;
    let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    (value.to_string(), serde_json::from_str(&json).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn data_deletion_posts_metas_signed_request_and_hands_back_the_answer() {
    let app_side = Receiver::start();
    let f = fixture(Some(&app_side.url));
    let c = f.emu.control();
    register_user(&f).await;
    c.advance(61_000).await.unwrap();
    // issued_at is Meta's clock, skew included, in seconds.
    c.set_skew(-2_500).await.unwrap();
    let issued_at = (DEFAULT_EPOCH_MS + 61_000 - 2_500).div_euclid(1000);

    let confirmation =
        json!({"url": "https://app.example/deletion?id=abc", "confirmation_code": "abc"});
    app_side.answer_next(200, "application/json", &confirmation.to_string());
    let r = c.data_deletion(BOT, BOT_ASID).await.unwrap();
    assert_eq!(
        (r.status, r.body.clone(), r.error),
        (Some(200), confirmation.clone(), None)
    );

    let got = app_side.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(got[0].sig256, None, "not a webhook");
    let (value, payload) = verify(&got[0].body, BOT_SECRET);
    assert_eq!(value, r.signed_request);
    assert_eq!(
        payload,
        json!({"algorithm": "HMAC-SHA256", "expires": 0, "issued_at": issued_at, "user_id": BOT_ASID})
    );
    // The public helper builds the same request, and a forged one that the
    // app secret does not verify.
    let payload_json = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(value.split_once('.').unwrap().1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload_json,
        format!(
            r#"{{"algorithm":"HMAC-SHA256","expires":0,"issued_at":{issued_at},"user_id":"{BOT_ASID}"}}"#
        )
    );
    assert_eq!(signed_request(BOT_SECRET, &payload_json), value);
    let forged = signed_request("not-the-secret", &payload_json);
    assert_ne!(forged, value);
    assert_eq!(
        forged.split_once('.').unwrap().1,
        value.split_once('.').unwrap().1
    );
    assert!(signed_with(&forged, "not-the-secret"));
    assert!(!signed_with(&forged, BOT_SECRET), "a forged request");

    // The call log keeps the callback with its answer.
    let calls = c.calls().await.unwrap();
    let logged: Vec<_> = calls
        .iter()
        .filter(|c| c.endpoint == "data_deletion_callback")
        .collect();
    assert_eq!(logged.len(), 1);
    assert_eq!(
        (logged[0].method.as_str(), logged[0].path.as_str()),
        ("POST", app_side.url.as_str())
    );
    assert_eq!(logged[0].app_id.as_deref(), Some(BOT));
    assert_eq!(
        (logged[0].status, &logged[0].response),
        (200, &confirmation)
    );
    assert_eq!(logged[0].params["signed_request"], value);

    // A callback that answers text (or an error) is handed back as it is.
    app_side.answer_next(500, "text/plain", "no such user");
    let r = c.data_deletion(BOT, BOT_ASID).await.unwrap();
    assert_eq!((r.status, r.body), (Some(500), json!("no such user")));

    // A URL set through the control API, signed with that app's secret.
    let crm_side = Receiver::start();
    c.set_data_deletion_url(CRM, Some(&crm_side.url))
        .await
        .unwrap();
    let r = c.data_deletion(CRM, CRM_ASID).await.unwrap();
    assert_eq!((r.status, r.body), (Some(200), json!("")));
    let (_, payload) = verify(&crm_side.received()[0].body, CRM_SECRET);
    assert_eq!(payload["user_id"], CRM_ASID);

    // A callback that does not answer: no status, an error, logged as 0.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/deletion", closed.local_addr().unwrap());
    drop(closed);
    c.set_data_deletion_url(CRM, Some(&dead)).await.unwrap();
    let r = c.data_deletion(CRM, CRM_ASID).await.unwrap();
    assert_eq!((r.status, r.body), (None, Value::Null));
    assert!(r.error.is_some_and(|e| !e.is_empty()));
    let last = c.calls().await.unwrap().pop().unwrap();
    assert_eq!(
        (last.endpoint.as_str(), last.status),
        ("data_deletion_callback", 0)
    );
    assert!(last.response["error"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn data_deletion_refuses_unknown_apps_asids_and_apps_without_a_callback() {
    let app_side = Receiver::start();
    let f = fixture(Some(&app_side.url));
    register_user(&f).await;

    for (body, what) in [
        (
            format!(r#"{{"app": "{CRM}", "asid": "{CRM_ASID}"}}"#),
            "no URL",
        ),
        (r#"{"app": "404", "asid": "x"}"#.to_string(), "unknown app"),
        (
            format!(r#"{{"app": "{BOT}", "asid": "{CRM_ASID}"}}"#),
            "another app's ASID",
        ),
        (
            format!(r#"{{"app": "{BOT}", "asid": "asid-404"}}"#),
            "unknown ASID",
        ),
        (format!(r#"{{"app": "{BOT}", "asid": "{USER}"}}"#), "a PSID"),
        (format!(r#"{{"app": "{BOT}"}}"#), "missing asid"),
        (format!(r#"{{"asid": "{BOT_ASID}"}}"#), "missing app"),
        (
            format!(r#"{{"app": "{BOT}", "asid": "{BOT_ASID}", "x": 1}}"#),
            "unknown field",
        ),
        (
            format!(r#"{{"app": {BOT}, "asid": "{BOT_ASID}"}}"#),
            "a number",
        ),
        ("{".to_string(), "malformed"),
    ] {
        let (s, b) = control(&f, "POST", "/data_deletion", &body).await;
        assert_json_error(s, &b, 400, what);
    }
    for (path, body, status, what) in [
        (
            "/apps/404/data_deletion_url",
            r#"{"url": "http://x.invalid/"}"#,
            404,
            "unknown app",
        ),
        ("/apps/111/data_deletion_url", "{}", 400, "missing url"),
        (
            "/apps/111/data_deletion_url",
            r#"{"url": "ftp://x.invalid/"}"#,
            400,
            "not http",
        ),
        (
            "/apps/111/data_deletion_url",
            r#"{"url": ""}"#,
            400,
            "empty",
        ),
        (
            "/apps/111/data_deletion_url",
            r#"{"url": 5}"#,
            400,
            "a number",
        ),
        (
            "/apps/111/data_deletion_url",
            r#"{"uri": "http://x.invalid/"}"#,
            400,
            "unknown field",
        ),
    ] {
        let (s, b) = control(&f, "PUT", path, body).await;
        assert_json_error(s, &b, status, what);
    }
    // Nothing was called, logged or changed: the bot's URL still works.
    assert!(app_side.received().is_empty());
    let calls = f.emu.control().calls().await.unwrap();
    assert!(calls.iter().all(|c| c.endpoint != "data_deletion_callback"));
    let r = f.emu.control().data_deletion(BOT, BOT_ASID).await.unwrap();
    assert_eq!(r.status, Some(200));

    // Removing the URL: 400 from then on.
    let (s, _) = control(&f, "PUT", "/apps/111/data_deletion_url", r#"{"url": null}"#).await;
    assert_eq!(s, 200);
    let err = f
        .emu
        .control()
        .data_deletion(BOT, BOT_ASID)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert_eq!(app_side.received().len(), 1);

    // A world with a URL that is not http(s) does not start.
    let world = emulator::World::default()
        .with_app(AppConfig::new("5", "s").with_data_deletion_url("file:///etc/passwd"));
    assert!(matches!(
        Emulator::start(world),
        Err(EmulatorError::Config(_))
    ));
}
