//! Privacy: erasing one person's content (the admin API, Meta's
//! data-deletion callback) and retention, with the chain intact and the
//! ownership history kept (`docs/privacy.md`).

use std::path::Path;

use domain::Span;
use emulator::NewPerson;
use event_log::EventStore;
use serde_json::{json, Value};

use crate::stack::*;
use crate::support::*;

/// Every file under the test data directory `dir` that holds `needle`,
/// and, on PostgreSQL, every record of its database that does.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = database_holding(dir, needle);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
        } else if let Ok(mut bytes) = std::fs::read(&path) {
            // Segments compress their records: search them inflated.
            if path.extension().is_some_and(|e| e == "seg") {
                bytes = event_log::segment_contents(&bytes);
            }
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// The texts of the messages in a thread's timeline, and how many message
/// events there are whose content is marked erased.
fn message_texts(timeline: &[Value]) -> (Vec<String>, usize) {
    let messages: Vec<&Value> = timeline
        .iter()
        .filter(|e| {
            e["type"] == "MessagingEventReceived" && e["event"]["event"]["kind"] == "message"
        })
        .collect();
    let texts = messages
        .iter()
        .filter_map(|e| e["event"]["event"]["text"].as_str().map(str::to_owned))
        .collect();
    let erased = messages.iter().filter(|e| e["content"] == "erased").count();
    (texts, erased)
}

async fn timeline_as(stack: &Stack, token: &str, psid: &str) -> Vec<Value> {
    let url = stack
        .baton
        .url(&format!("/api/threads/{PAGE}/{psid}/timeline"));
    let res = stack
        .baton
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["events"].as_array().unwrap().clone()
}

async fn export(stack: &Stack) -> String {
    let res = stack
        .baton
        .http
        .get(stack.baton.url("/api/admin/export"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

async fn erase(stack: &Stack, token: &str, body: Value) -> (u16, Value) {
    let res = stack
        .baton
        .http
        .post(stack.baton.url("/api/admin/erasures"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_one_person_leaves_no_byte_of_their_words_and_keeps_the_chain_and_the_ownership() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    let alice_words = "ALICE-7f3a lives at 5 Elm Street";
    let reply_words = "HUMAN-2b8c we will call you at 555-0199";
    let bob_words = "BOB-91cd keep this";
    let alice_optin = "ALICE-OTN-5d2 restock size 9";
    stack.user_says("alice", alice_words).await;
    stack
        .ctl
        .user_otn_optin(PAGE, "alice", alice_optin)
        .await
        .unwrap();
    stack.user_says("bob", bob_words).await;
    let (status, _) = stack.pass("baton-bot", "alice", Some(HUMAN)).await;
    assert_eq!(status, 200);
    stack.wait_owner("alice", owner(HUMAN)).await;
    let (status, body) = stack
        .send(
            "baton-human",
            json!({"recipient": {"id": "alice"}, "messaging_type": "RESPONSE", "message": {"text": reply_words}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Content is sealed from the start: the words never reach the disk clear,
    // yet the read API shows them to the thread's readers.
    let data_dir = stack.baton.dir.path().to_path_buf();
    // The search finds what is stored in clear (a type name), on sled's
    // files and in PostgreSQL's records alike, so finding nothing below means
    // something.
    assert!(!files_holding(&data_dir, b"ThreadRouted").is_empty());
    for words in [alice_words, alice_optin, reply_words, bob_words] {
        assert_eq!(
            files_holding(&data_dir, words.as_bytes()),
            Vec::<String>::new()
        );
    }
    let (texts, erased) = message_texts(&stack.timeline("alice").await);
    assert_eq!((texts, erased), (vec![alice_words.to_owned()], 0));

    // Bad input changes nothing; only the admin erases.
    let who = json!({"page_id": PAGE, "psid": "alice"});
    assert_eq!(erase(&stack, "baton-bot", who.clone()).await.0, 403);
    assert_eq!(erase(&stack, "wrong", who.clone()).await.0, 401);
    assert_eq!(
        erase(&stack, ADMIN_TOKEN, json!({"psid": "alice"})).await.0,
        400
    );
    assert_eq!(
        erase(
            &stack,
            ADMIN_TOKEN,
            json!({"page_id": "999", "psid": "alice"})
        )
        .await
        .0,
        404
    );
    assert_eq!(stack.baton.count("ContentErased").await, 0);

    let (status, body) = erase(&stack, ADMIN_TOKEN, who).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["erased"]["keys_destroyed"].as_u64().unwrap() >= 1,
        "{body}"
    );

    // No byte of Alice's words, or of what was sent to her, anywhere.
    for words in [alice_words, alice_optin, reply_words] {
        assert_eq!(
            files_holding(&data_dir, words.as_bytes()),
            Vec::<String>::new()
        );
    }
    // The read API: her message is marked erased, the ownership history and
    // the erasure itself are there.
    let timeline = stack.timeline("alice").await;
    let (texts, erased) = message_texts(&timeline);
    assert_eq!((texts.len(), erased), (0, 1), "{timeline:#?}");
    let types: Vec<&str> = timeline.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "ThreadRouted",
        "ThreadControlPassed",
        "SendAccepted",
        "ContentErased",
    ] {
        assert!(types.contains(&kind), "{kind} missing from {types:?}");
    }
    // The send, as its own app reads it (the bot sees only that it happened).
    let timeline = timeline_as(&stack, "baton-human", "alice").await;
    let sent = timeline
        .iter()
        .find(|e| e["type"] == "SendAccepted")
        .unwrap();
    assert_eq!(sent["content"], "erased");
    assert!(!sent.to_string().contains("HUMAN-2b8c"), "{sent}");
    // Bob's content is intact.
    let (texts, erased) = message_texts(&stack.timeline("bob").await);
    assert_eq!((texts, erased), (vec![bob_words.to_owned()], 0));

    // The export: nothing of Alice, her records marked, and it verifies.
    let text = export(&stack).await;
    assert!(!text.contains("ALICE-7f3a") && !text.contains("HUMAN-2b8c"));
    let marked = text
        .lines()
        .filter(|l| l.contains("\"content\":\"erased\""))
        .count();
    assert!(
        marked >= 3,
        "the message, the raw delivery and the send: {marked}"
    );
    assert!(text
        .lines()
        .filter(|l| l.contains("\"content\":\"erased\""))
        .all(|l| !l.contains("\"psid\":\"bob\"")));
    let report = event_log::verify_ndjson(text.as_bytes()).unwrap();
    assert_eq!(report.records, stack.baton.head().await);
    // Any other change is still detected: one byte of a fact.
    let tampered = text.replacen("\"psid\":\"bob\"", "\"psid\":\"bop\"", 1);
    assert!(event_log::verify_ndjson(tampered.as_bytes()).is_err());
    let live = event_log::verify(stack.baton.running.state.store.as_ref())
        .await
        .unwrap();
    assert_eq!(live.records, stack.baton.head().await);

    // After a restart the keys are still gone and Bob's still there.
    let stack = stack.restart_baton(Tuning::default()).await;
    let (texts, erased) = message_texts(&stack.timeline("alice").await);
    assert_eq!((texts.len(), erased), (0, 1));
    let (texts, _) = message_texts(&stack.timeline("bob").await);
    assert_eq!(texts, vec![bob_words.to_owned()]);
    stack.assert_consistent("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_older_than_the_pages_retention_is_erased_and_the_facts_stay() {
    let stack = Stack::start_with(
        Mode::ConversationRouting,
        Tuning::default(),
        &["content_retention_days = 30"],
    )
    .await;
    stack
        .user_says("erin", "OLD-5e1 words from the first day")
        .await;
    stack.advance(Span::days(31)).await;
    stack.user_says("erin", "NEW-6f2 words from today").await;

    let expired = stack.baton.running.state.expire_content().await.unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].retention_days, 30);
    let (texts, erased) = message_texts(&stack.timeline("erin").await);
    assert_eq!(
        (texts, erased),
        (vec!["NEW-6f2 words from today".to_owned()], 1)
    );
    // Running it again the same day destroys nothing more and records nothing.
    assert!(stack
        .baton
        .running
        .state
        .expire_content()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(stack.baton.count("ContentExpired").await, 1);
    // Who owned the thread stays on record.
    assert_eq!(stack.ledger_view("erin"), owner(BOT));
    let events = stack.baton.events().await;
    assert!(events
        .iter()
        .any(|e| matches!(e, domain::Event::ThreadRouted(_))));

    // The schedule does the same on its own when the clock enters a new day.
    stack.advance(Span::days(31)).await;
    let mut head = stack.baton.running.state.store.subscribe();
    while stack.baton.count("ContentExpired").await < 2 {
        tokio::time::timeout(std::time::Duration::from_secs(30), head.changed())
            .await
            .expect("the retention schedule runs within seconds")
            .unwrap();
    }
    let (texts, erased) = message_texts(&stack.timeline("erin").await);
    assert_eq!((texts.len(), erased), (0, 2));
    let files = files_holding(stack.baton.dir.path(), b"OLD-5e1");
    assert!(files.is_empty(), "{files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metas_data_deletion_callback_erases_the_person_and_a_forged_one_changes_nothing() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    stack
        .ctl
        .register_person(&NewPerson {
            psids: [(PAGE.to_owned(), "carol".to_owned())].into(),
            asids: [(BOT.to_owned(), "asid-carol".to_owned())].into(),
        })
        .await
        .unwrap();
    let callback = stack.baton.url(&format!("/privacy/{BOT}/data-deletion"));
    stack
        .ctl
        .set_data_deletion_url(BOT, Some(&callback))
        .await
        .unwrap();
    stack
        .user_says("carol", "CAROL-c41 my card ends 4242")
        .await;
    stack.user_says("dave", "DAVE-d52 keep me").await;

    // Forged: signed with another secret, or not signed at all.
    let post = |body: String| {
        stack
            .baton
            .http
            .post(&callback)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let payload = r#"{"algorithm":"HMAC-SHA256","issued_at":1793523600,"user_id":"asid-carol"}"#;
    let forged = emulator::signed_request("not-the-app-secret", payload);
    let res = post(format!("signed_request={forged}")).await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_signature", "{body}");
    assert_eq!(
        post("user_id=asid-carol".into()).await.unwrap().status(),
        400
    );
    assert_eq!(
        post("signed_request=garbage".into())
            .await
            .unwrap()
            .status(),
        401
    );
    let unknown = stack
        .baton
        .http
        .post(stack.baton.url("/privacy/9999/data-deletion"))
        .body(format!("signed_request={forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(stack.baton.count("ContentErased").await, 0);
    let (texts, _) = message_texts(&stack.timeline("carol").await);
    assert_eq!(texts, vec!["CAROL-c41 my card ends 4242".to_owned()]);

    // Meta's own request: signed with the app secret, for the app's ASID.
    let answer = stack.ctl.data_deletion(BOT, "asid-carol").await.unwrap();
    assert_eq!(answer.status, Some(200), "{answer:?}");
    let code = answer.body["confirmation_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = answer.body["url"].as_str().unwrap().to_owned();
    assert!(
        url.ends_with(&format!("/privacy/deletions/{code}")),
        "{url}"
    );
    let status: Value = stack
        .baton
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["erased"][0]["page_id"], PAGE);
    let unknown_code = stack
        .baton
        .http
        .get(stack.baton.url("/privacy/deletions/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_code.status(), 404);

    let (texts, erased) = message_texts(&stack.timeline("carol").await);
    assert_eq!((texts.len(), erased), (0, 1));
    let (texts, _) = message_texts(&stack.timeline("dave").await);
    assert_eq!(texts, vec!["DAVE-d52 keep me".to_owned()]);
    let erasure = stack
        .baton
        .events()
        .await
        .into_iter()
        .find_map(|e| match e {
            domain::Event::ContentErased(e) => Some(e),
            _ => None,
        })
        .unwrap();
    assert_eq!(erasure.by, format!("meta:{BOT}"));
    assert_eq!(erasure.request, code);
    assert!(files_holding(stack.baton.dir.path(), b"CAROL-c41").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_never_sends_erased_content_queued_or_redriven() {
    use std::sync::atomic::Ordering;
    let (url, backend, _server) = crate::backend::flaky_backend();
    let stack =
        Stack::start_with_backend(Mode::ConversationRouting, Tuning::default(), &[], &url).await;
    // Fay's message waits in dispatch: the bot's backend refuses it.
    stack.user_says("fay", "FAY-a9e my passport number").await;
    backend
        .wait("a refused attempt", |b| b.refused.load(Ordering::SeqCst), 1)
        .await;
    let (status, body) = erase(&stack, ADMIN_TOKEN, json!({"page_id": PAGE, "psid": "fay"})).await;
    assert_eq!(status, 200, "{body}");
    // The backend comes back; Gus writes. Gus's message arrives, Fay's never.
    backend.failing.store(false, Ordering::SeqCst);
    stack.user_says("gus", "GUS-b7f hello").await;
    backend
        .wait("Gus's message", |b| b.received.load(Ordering::SeqCst), 1)
        .await;
    // Fay's item is dropped at its next turn, without an attempt.
    let dispatcher = stack.baton.running.state.dispatcher.clone().unwrap();
    let bot = domain::AppId::parse(BOT).unwrap();
    let mut status = dispatcher.subscribe_status(&bot).unwrap();
    let dropped = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        status.wait_for(|s| s.dropped_erased == 1 && s.queue_depth == 0),
    )
    .await
    .is_ok_and(|seen| seen.is_ok());
    assert!(dropped, "{:?}", dispatcher.app_status(&bot));
    // The store must be free for the restart below.
    drop((status, dispatcher));
    assert_eq!(backend.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    let bodies: Vec<String> = backend
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(bodies.iter().any(|b| b.contains("GUS-b7f")), "{bodies:?}");
    assert!(bodies.iter().all(|b| !b.contains("FAY-a9e")), "{bodies:?}");

    // After a restart, dispatch reads the log again from its cursor: Fay's
    // item is not sent either (it is dropped when read).
    let stack = stack.restart_baton(Tuning::default()).await;
    stack.user_says("gus", "GUS-c8a again").await;
    backend
        .wait(
            "Gus's second message",
            |b| b.received.load(Ordering::SeqCst),
            2,
        )
        .await;
    let bodies = backend.bodies.lock().unwrap().clone();
    assert!(bodies
        .iter()
        .all(|b| !String::from_utf8_lossy(b).contains("FAY-a9e")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_from_before_an_erasure_does_not_bring_the_words_back() {
    let stack = Stack::start(Mode::ConversationRouting).await;
    // Meta holds the human inbox's standby copies.
    stack
        .ctl
        .add_fault(&emulator::FaultSpec::WebhookHold {
            count: u32::MAX,
            app_id: Some(HUMAN.into()),
        })
        .await
        .unwrap();
    let said = stack
        .ctl
        .user_text(PAGE, "hana", "HANA-e41 my old address")
        .await
        .unwrap();
    assert!(
        said.deliveries.iter().any(|d| d.held),
        "{:?}",
        said.deliveries
    );
    let (status, body) = erase(
        &stack,
        ADMIN_TOKEN,
        json!({"page_id": PAGE, "psid": "hana"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The copy arrives after the erasure, and Meta retries it too.
    let copies = stack.baton.count("MessagingEventCopyReceived").await;
    stack
        .ctl
        .release_deliveries(Some(HUMAN), false)
        .await
        .unwrap();
    let mut head = stack.baton.running.state.store.subscribe();
    while stack.baton.count("MessagingEventCopyReceived").await == copies {
        tokio::time::timeout(std::time::Duration::from_secs(30), head.changed())
            .await
            .expect("the late copy is recorded")
            .unwrap();
    }
    // Recorded (who got what, on which channel), with nothing of what she said.
    let text = export(&stack).await;
    assert!(!text.contains("HANA-e41"));
    assert!(files_holding(stack.baton.dir.path(), b"HANA-e41").is_empty());
    let timeline = timeline_as(&stack, ADMIN_TOKEN, "hana").await;
    assert!(!serde_json::to_string(&timeline)
        .unwrap()
        .contains("HANA-e41"));
    let copy = timeline
        .iter()
        .find(|e| e["type"] == "MessagingEventCopyReceived")
        .unwrap();
    assert!(copy["event"]["raw"].is_null(), "{copy}");
    // Her next message, a minute after the erasure, is kept as usual.
    stack.advance(Span::MINUTE).await;
    stack.user_says("hana", "HANA-f52 my new address").await;
    let (texts, _) = message_texts(&stack.timeline("hana").await);
    assert_eq!(texts, vec!["HANA-f52 my new address".to_owned()]);
}
