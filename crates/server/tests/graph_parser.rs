//! A bounded fuzz run of the Graph-compatible request parser (run in CI):
//! random bytes, and well-formed sends mangled byte by byte, through
//! `graph_api::params` and `sends::parse_send`. Neither may panic; what they
//! accept stays within the domain's field limits; what they refuse is
//! Meta's `(#100)`. 2 × 512 generated inputs per run, plus a fixed corpus.

use actix_web::test::TestRequest;
use domain::{AppId, PageId};
use orchestration::Acting;
use proptest::prelude::*;
use server::graph_api::{params, Caller};
use server::sends::parse_send;

fn caller(params: serde_json::Map<String, serde_json::Value>) -> Caller {
    Caller {
        acting: Acting {
            app: AppId::parse("1001").unwrap(),
            page: PageId::parse("5550001").unwrap(),
            version: "v21.0".into(),
        },
        params,
    }
}

/// Parses `body` as the Graph API would, with `content_type`; checks what
/// comes out.
fn check(body: &[u8], content_type: &str) {
    let req = TestRequest::post()
        .uri("/v21.0/me/messages")
        .insert_header(("content-type", content_type))
        .to_http_request();
    match params(&req, body) {
        Err(e) => assert_eq!(e.code, 100, "{e:?}"),
        Ok(map) => {
            domain::graph::check_field_limits(&map).expect("accepted params are within the limits");
            match parse_send(&caller(map), None) {
                Ok(send) => assert!(serde_json::to_vec(&send.payload).is_ok()),
                Err(e) => assert_eq!(e.code, 100, "{e:?}"),
            }
        }
    }
}

const SEND: &str = r#"{"recipient":{"id":"u1"},"messaging_type":"RESPONSE","message":{"text":"hello","quick_replies":[{"content_type":"text","title":"Yes","payload":"Y"}],"metadata":"m"},"thread_control":{"control_type":"pass","app_id":"1002"}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), form in any::<bool>()) {
        let ct = if form { "application/x-www-form-urlencoded" } else { "application/json" };
        check(&bytes, ct);
    }

    #[test]
    fn never_panics_on_mangled_sends(edits in proptest::collection::vec((0usize..SEND.len(), any::<u8>()), 1..6), cut in 0usize..=SEND.len()) {
        let mut body = SEND.as_bytes().to_vec();
        for (pos, byte) in edits {
            body[pos] = byte;
        }
        body.truncate(cut.max(1));
        check(&body, "application/json");
    }
}

#[test]
fn a_corpus_of_hostile_requests() {
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let long_text = format!(
        r#"{{"recipient":{{"id":"u1"}},"messaging_type":"RESPONSE","message":{{"text":"{}"}}}}"#,
        "x".repeat(3000)
    );
    let many = format!(
        r#"{{"recipient":{{"id":"u1"}},"messaging_type":"RESPONSE","message":{{"quick_replies":[{}]}}}}"#,
        vec!["{}"; 500].join(",")
    );
    for body in [
        SEND,
        "",
        "null",
        "[]",
        r#"{"recipient":{"id":"u1"},"recipient":{"id":"u2"}}"#,
        r#"{"messaging_type":7}"#,
        r#"{"recipient":"u1","message":"hi"}"#,
        r#"{"recipient":{"id":""},"message":{"text":""}}"#,
        r#"{"recipient":{"one_time_notif_token":5}}"#,
        "\u{0}\u{1b}[31m",
        &deep,
        &long_text,
        &many,
    ] {
        check(body.as_bytes(), "application/json");
    }
    for body in [
        "recipient=%7B%22id%22%3A%22u1%22%7D&recipient=x",
        "a=%ZZ",
        "message={\"text\":\"hi\"",
    ] {
        check(body.as_bytes(), "application/x-www-form-urlencoded");
    }
}
