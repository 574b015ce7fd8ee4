//! Projection snapshots (`orchestration::snapshot`): a restart loads the
//! last one and folds only the records after it, and must end exactly where
//! a fold of the whole log ends; a snapshot that does not match the log is
//! set aside, never loaded; the file holds no personal content.

use std::path::PathBuf;
use std::time::Duration;

use orchestration::snapshot;
use serde_json::json;

use crate::stack::*;
use crate::support::*;

fn snapshot_dir(stack: &Stack) -> PathBuf {
    stack.baton.dir.path().join("snapshots")
}

fn resumed(stack: &Stack) -> Option<u64> {
    stack.baton.running.state.baton.resumed_from_snapshot
}

/// A thread with a pending request carrying metadata, one with a
/// One-Time Notification token carrying its opt-in payload, a send waiting
/// in the outbox (its message is content), and a third person.
async fn busy_stack(settings: &[&str]) -> Stack {
    // One call now, the next in 1000 s: the second send waits in the outbox.
    let slow = Tuning {
        rate: 0.001,
        burst: 1.0,
        ..Tuning::default()
    };
    let stack = Stack::start_with(Mode::ConversationRouting, slow, settings).await;
    stack.user_says("u1", "hello SECRET-a1 words").await;
    stack.user_says("u2", "hello").await;
    stack.user_says("u3", "hello").await;
    let (status, _) = stack.send("baton-bot", text("u2", "first")).await;
    assert_eq!(status, 200);
    // An opt-in's payload is the person's content too.
    let token = stack
        .ctl
        .user_otn_optin(PAGE, "u2", "SECRET-o4 restock size 9")
        .await
        .unwrap()
        .token
        .unwrap();
    assert!(!token.is_empty());
    let (status, _) = stack
        .graph_post(
            "baton-human",
            "request_thread_control",
            json!({"recipient": {"id": "u1"}, "metadata": "SECRET-m2 agent free"}),
        )
        .await;
    assert_eq!(status, 200);
    // Accepted and durable; the rate holds it back (the client stops
    // waiting for its outcome after a moment).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let res = http
        .post(stack.baton.url("/v21.0/me/messages"))
        .bearer_auth("baton-bot")
        .json(&text("u3", "SECRET-s3 your parcel left"))
        .send()
        .await;
    assert!(res.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        stack
            .baton
            .running
            .state
            .projections
            .read()
            .open_sends
            .len(),
        1
    );
    stack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_snapshot_written_at_the_stop() {
    if sled_only("projection snapshots are kept beside the sled log") {
        return;
    }
    let stack = busy_stack(&[]).await;
    assert_eq!(resumed(&stack), None, "a fresh directory has no snapshot");
    let head = stack.baton.head().await;
    let stack = stack.restart_baton(Tuning::default()).await;
    let dir = snapshot_dir(&stack);
    let header = snapshot::header(&dir)
        .unwrap()
        .expect("written at the stop");
    assert_eq!(header.position, head);
    assert_eq!(resumed(&stack), Some(head), "the start loaded it");
    // Facts only: neither the words, the metadata nor the queued message.
    let bytes = std::fs::read(snapshot::path(&dir)).unwrap();
    for secret in ["SECRET-a1", "SECRET-m2", "SECRET-s3", "SECRET-o4"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is content and must not be in the snapshot"
        );
    }
    // ... and yet the restored state has them, read again from the log.
    {
        let state = stack.baton.running.state.projections.read();
        let ledger = state.thread(&Stack::thread("u1")).unwrap();
        assert_eq!(
            ledger.pending_requests[0].metadata.as_deref(),
            Some("SECRET-m2 agent free")
        );
        let ledger = state.thread(&Stack::thread("u2")).unwrap();
        assert_eq!(
            ledger.tokens[0].payload.as_deref(),
            Some("SECRET-o4 restock size 9")
        );
    }
    // Equal to a fold of the whole log, and it carries on from there.
    stack.assert_consistent("u1").await;
    stack.ctl.wait_deliveries().await.unwrap();
    assert_eq!(
        stack.page_messages("u3").await,
        ["SECRET-s3 your parcel left"]
    );
    stack.user_says("u4", "later").await;
    stack.assert_consistent("u4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_match_the_log_is_set_aside_and_the_log_folded() {
    if sled_only("projection snapshots are kept beside the sled log") {
        return;
    }
    let mut stack = busy_stack(&[]).await;
    type Tamper = fn(&mut Vec<u8>);
    let tampers: [(&str, Tamper); 4] = [
        ("a changed byte in the body", |b| {
            let last = b.len() - 2;
            b[last] ^= 0x01;
        }),
        ("cut short", |b| b.truncate(b.len() / 2)),
        ("the hash of another log's record", |b| {
            let text = String::from_utf8_lossy(b).into_owned();
            let at = text.find("\"hash\":\"").unwrap() + 8;
            b[at] = if b[at] == b'0' { b'1' } else { b'0' };
        }),
        ("a position the log does not hold", |b| {
            let text = String::from_utf8_lossy(b).into_owned();
            let at = text.find("\"position\":").unwrap() + 11;
            b.splice(at..at, *b"9999");
        }),
    ];
    for (what, tamper) in tampers {
        // A clean stop writes the snapshot, and the start loads it.
        stack = stack.restart_baton(Tuning::default()).await;
        assert!(resumed(&stack).is_some(), "{what}: the good one loads");
        stack.user_says("u5", what).await;
        // Changed while the server runs (it reads the file only at its
        // start); a crash then writes nothing over it.
        let dir = snapshot_dir(&stack);
        let path = snapshot::path(&dir);
        let mut bytes = std::fs::read(&path).unwrap();
        tamper(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        stack = stack.crash_baton(Tuning::default()).await;
        assert_eq!(resumed(&stack), None, "{what}: not loaded");
        assert!(
            dir.join(format!("{}.rejected", snapshot::FILE)).exists(),
            "{what}: set aside"
        );
        assert!(!path.exists(), "{what}: no longer in the way");
        stack.assert_consistent("u1").await;
        stack.assert_consistent("u5").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_snapshot_bounds_what_a_crash_folds_again() {
    if sled_only("projection snapshots are kept beside the sled log") {
        return;
    }
    let stack = busy_stack(&["snapshot_every_records = 10"]).await;
    let first = stack.baton.head().await;
    assert!(first >= 10, "the setup alone records {first}");
    let mut written = stack.baton.running.state.baton.snapshot_written();
    let patience = Duration::from_secs(60);
    let at = *tokio::time::timeout(patience, written.wait_for(|p| *p >= 10))
        .await
        .expect("a snapshot in the background")
        .unwrap();
    // The next one comes once ten more records are folded.
    for n in 0..8 {
        stack.user_says(&format!("w{n}"), "more").await;
    }
    let at = *tokio::time::timeout(patience, written.wait_for(|p| *p > at))
        .await
        .expect("another snapshot in the background")
        .unwrap();
    let header = snapshot::header(&snapshot_dir(&stack)).unwrap().unwrap();
    assert!(header.position >= at);
    stack.user_says("u9", "after the snapshot").await;
    // A crash: no snapshot at the stop. The start loads the background one
    // and folds the rest.
    let stack = stack.crash_baton(Tuning::default()).await;
    let from = resumed(&stack).expect("the background snapshot loads");
    assert!(from >= header.position, "{from}, {}", header.position);
    stack.assert_consistent("u1").await;
    stack.assert_consistent("u9").await;
}

/// A log that does not outlive the process (in memory) gets no snapshot:
/// nothing is written beside it at the stop, wherever `data_dir` points
/// (tests and benchmarks once left `unused/snapshots` in the working
/// directory this way).
#[tokio::test]
async fn a_log_in_memory_leaves_no_snapshot_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = offline_config(dir.path());
    let store = std::sync::Arc::new(event_log::MemoryStore::new());
    let running = server::start(
        config,
        store,
        std::sync::Arc::new(server::ManualClock::new(T0)),
    )
    .await
    .unwrap();
    assert_eq!(running.state.baton.snapshot_dir(), None);
    running.stop().await;
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}
