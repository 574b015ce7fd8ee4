//! Storage faults: when the log cannot write (a full disk, an unwritable data
//! directory, a failed fsync), Baton refuses to acknowledge, says why, and
//! leaves the log intact. The fault is injected under the real store under
//! test (sled or PostgreSQL) by a wrapper, since a test running as root
//! cannot make a directory unwritable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_log::{
    AnyStore, AppendError, Appended, EventStore, Head, NewRecord, Record, StorageError,
};
use serde_json::json;
use tokio::sync::watch;

use crate::support::*;

#[derive(Debug)]
struct FullDisk {
    inner: AnyStore,
    full: AtomicBool,
}

impl EventStore for FullDisk {
    async fn append(&self, batch: Vec<NewRecord>) -> Result<Vec<Appended>, AppendError> {
        if self.full.load(Ordering::SeqCst) {
            let cause = StorageError::Engine(Box::new(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device (os error 28)",
            )));
            return Err(AppendError::WriterStopped {
                cause: Arc::new(cause),
            });
        }
        self.inner.append(batch).await
    }
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<Record>, StorageError> {
        self.inner.read_all(from, limit).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StorageError> {
        self.inner.read_stream(stream, from_version, limit).await
    }
    async fn head(&self) -> Result<Head, StorageError> {
        self.inner.head().await
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }
    async fn restore(&self, records: Vec<Record>) -> Result<Head, AppendError> {
        self.inner.restore(records).await
    }
    fn vault(&self) -> &event_log::KeyVault {
        self.inner.vault()
    }

    fn local_files(&self) -> bool {
        self.inner.local_files()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_to_acknowledge_says_why_and_leaves_the_log_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FullDisk {
        inner: open_store(dir.path()).await,
        full: AtomicBool::new(false),
    });
    let config = offline_config(dir.path());
    let running = server::start(
        config,
        store.clone(),
        Arc::new(server::ManualClock::new(T0)),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let post = |mid: &'static str| {
        let body = envelope(
            json!([{"id": PAGE, "time": T0.millis(), "messaging": [message_item("u1", mid, T0.millis())]}]),
        );
        http.post(format!("{}/webhooks/{BOT}", running.base_url()))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
    };
    assert_eq!(post("m.1").await.unwrap().status(), 200);
    let head = store.head().await.unwrap();

    store.full.store(true, Ordering::SeqCst);
    let res = post("m.2").await.unwrap();
    assert_eq!(res.status(), 503, "no acknowledgement without durability");
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "log_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "says why: {body}"
    );
    // A send decision cannot be recorded either, so nothing is sent.
    let res = http
        .post(format!("{}/v21.0/me/messages", running.base_url()))
        .bearer_auth("baton-bot")
        .json(&json!({"recipient": {"id": "u1"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);

    assert_eq!(store.head().await.unwrap(), head, "nothing was written");
    event_log::verify(&store.inner).await.unwrap();
    // Once the disk has room again, deliveries are recorded (Meta retries the refused one).
    store.full.store(false, Ordering::SeqCst);
    assert_eq!(post("m.2").await.unwrap().status(), 200);
    event_log::verify(&store.inner).await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_interrupted_by_a_crash_is_recorded_unknown_at_start_and_settled_by_its_echo() {
    use domain::events::{Channel, DeliveryCopy, SendOutcome};
    use domain::rules::{self, Observation};
    // What the server keeps beside the log (its projection snapshot) goes
    // to the test's directory, not to the working directory.
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path());
    let page = config
        .page(&domain::PageId::parse(PAGE).unwrap())
        .unwrap()
        .clone();
    // The history a crash leaves behind: the user wrote, a send was accepted, nothing else.
    let thread = domain::ThreadKey::new(page.id.clone(), domain::Psid::parse("u1").unwrap());
    let mut ledger = domain::ThreadLedger::new(thread.clone());
    let mut history = rules::observe(
        &ledger,
        &page,
        Observation::Item {
            at: T0,
            dedupe_key: "5550001:mid:m.1".into(),
            delivery: DeliveryCopy {
                app: domain::AppId::parse(BOT).unwrap(),
                channel: Channel::Messaging,
            },
            event: domain::events::InboundEvent::Message {
                mid: "m.1".into(),
                text: Some("hi".into()),
                attachment_types: vec![],
                reply_to: None,
                referral: None,
            },
            raw: json!({}),
        },
        T0,
    );
    for e in &history {
        ledger.apply(e);
    }
    let send_id = domain::CommandId::parse("0190d7a4-0000-7000-8000-0000000000aa").unwrap();
    let send = domain::SendMessage {
        send_id: send_id.clone(),
        app: domain::AppId::parse(BOT).unwrap(),
        recipient: domain::Recipient::Psid(thread.psid.clone()),
        messaging_type: Some(domain::MessagingType::Response),
        tag: None,
        content: domain::SendContent::Message { metadata: None },
        thread_control: None,
        payload: json!({"message": {"text": "hello", "metadata": format!("baton:send:{send_id}")}}),
        idempotency_key: None,
        graph_version: None,
        request_digest: None,
    };
    history.extend(rules::decide(&ledger, &page, &domain::Command::SendMessage(send), T0).unwrap());
    // The outbox recorded its attempt, called Meta, and the process died
    // before Meta's answer was recorded.
    history.push(
        domain::events::SendAttempted {
            thread: thread.clone(),
            at: T0,
            send_id: send_id.clone(),
            attempt: 1,
        }
        .into(),
    );
    let store = Arc::new(open_store(dir.path()).await);
    let records = history.iter().map(orchestration::encode).collect();
    store.append(records).await.unwrap();

    let running = server::start(
        config,
        store.clone(),
        Arc::new(server::ManualClock::new(T0)),
    )
    .await
    .unwrap();
    let outcomes = |events: Vec<Record>| -> Vec<SendOutcome> {
        events
            .iter()
            .filter_map(|r| {
                match domain::Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap() {
                    domain::Event::SendOutcomeRecorded(o) => Some(o.outcome),
                    _ => None,
                }
            })
            .collect()
    };
    // The outbox worker resumes it at start: the attempt may have reached
    // Meta, so its outcome is unknown (never sent again blindly).
    settled(&running, &send_id).await;
    let recorded = outcomes(store.read_all(1, usize::MAX).await.unwrap());
    assert!(
        matches!(recorded.as_slice(), [SendOutcome::Unknown { .. }]),
        "{recorded:?}"
    );

    // Meta had sent it: its echo (from the sending app) settles it.
    let echo = json!({"sender": {"id": PAGE}, "recipient": {"id": "u1"}, "timestamp": T0.millis(),
        "message": {"is_echo": true, "app_id": BOT, "mid": "m.out", "text": "hello", "metadata": format!("baton:send:{send_id}")}});
    let body = envelope(json!([{"id": PAGE, "time": T0.millis(), "messaging": [echo]}]));
    let res = reqwest::Client::new()
        .post(format!("{}/webhooks/{BOT}", running.base_url()))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let recorded = outcomes(store.read_all(1, usize::MAX).await.unwrap());
    assert!(
        matches!(recorded.as_slice(), [SendOutcome::Unknown { .. }, SendOutcome::SettledByEcho { mid }] if mid == "m.out"),
        "{recorded:?}"
    );
    running.stop().await;
}

/// Waits until the outbox has recorded an outcome for `send`.
async fn settled<S: EventStore + 'static>(running: &server::Running<S>, send: &domain::CommandId) {
    use server::projections::SendStatus;
    running
        .state
        .projections
        .wait_until(|s| {
            s.sends
                .get(send)
                .filter(|r| r.status != SendStatus::Pending)
                .map(|_| ())
        })
        .await
        .expect("the projections follow the log");
}
