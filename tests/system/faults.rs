//! Storage faults: when the log cannot write (a full disk, an unwritable data
//! directory, a failed fsync), Baton refuses to acknowledge, says why, and
//! leaves the log intact. The fault is injected under a real sled store by a
//! wrapper, since a test running as root cannot make a directory unwritable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_log::{
    AppendError, Appended, EventStore, Head, NewRecord, Record, SledStore, StorageError,
};
use serde_json::json;
use tokio::sync::watch;

use crate::support::*;

#[derive(Debug)]
struct FullDisk {
    inner: SledStore,
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_to_acknowledge_says_why_and_leaves_the_log_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FullDisk {
        inner: SledStore::open(dir.path().join("log")).unwrap(),
        full: AtomicBool::new(false),
    });
    let config = server::Config::parse(
        &config_toml("http://127.0.0.1:9", &cr_mode()),
        "test.toml",
        |_| None,
    )
    .unwrap();
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
