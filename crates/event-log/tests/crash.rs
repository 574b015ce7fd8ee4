//! Crash safety: a child process appends from many tasks and prints every
//! acknowledged record; it is SIGKILLed at varied moments, and after each
//! kill every acknowledged record must be in the reopened store exactly once,
//! with contiguous positions and a chain that verifies.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use event_log::{verify, EventStore, SledStore};

/// Acknowledged lines to read before each kill. Deterministic and varied:
/// during start-up (0), after a few groups, and deep into a run.
const KILL_AFTER: [usize; 20] = [
    0, 1, 37, 5, 160, 12, 90, 2, 250, 23, 64, 8, 400, 3, 120, 45, 17, 600, 9, 75,
];

#[test]
fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Idempotency key -> acknowledged position, over all cycles.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut previous_head = 0;

    for (cycle, &kill_after) in KILL_AFTER.iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_event-log-crash-child"))
            .arg(dir.path())
            .arg(format!("c{cycle}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut read = 0;
        if kill_after > 0 {
            for line in stdout.lines() {
                let line = line.unwrap();
                let (position, key) = line.split_once(' ').expect("`<position> <key>`");
                let position: u64 = position.parse().unwrap();
                assert!(
                    acked.insert(key.to_owned(), position).is_none(),
                    "key {key} acknowledged twice"
                );
                read += 1;
                if read == kill_after {
                    break;
                }
            }
        }
        assert_eq!(read, kill_after, "cycle {cycle}: the child stopped early");
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        previous_head = check_after_crash(&runtime, dir.path(), &acked, previous_head, cycle);
    }
    assert!(acked.len() >= KILL_AFTER.iter().sum::<usize>());
}

/// Durability is a real sync, one per group: 256 concurrent appends are
/// grouped, and each group is made durable with one `fdatasync` of sled's
/// log (counted by the store's sync layer) before its callers hear back.
#[test]
fn every_group_is_synced_once_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let (groups, syncs) = (store.groups(), store.syncs());
        let tasks: Vec<_> = (0..256)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let record = event_log::NewRecord::new(
                        format!("s/{}", i % 7),
                        "Tick",
                        1,
                        format!(r#"{{"i":{i}}}"#),
                    );
                    loop {
                        match store.append(vec![record.clone()]).await {
                            Ok(_) => return store.syncs(),
                            Err(event_log::AppendError::Busy) => tokio::task::yield_now().await,
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let seen = task.await.unwrap();
            assert!(seen > syncs, "acknowledged only after its group's sync");
        }
        let (groups, syncs) = (store.groups() - groups, store.syncs() - syncs);
        assert_eq!(syncs, groups, "one sync per group");
        assert!(groups < 256, "appends were grouped: {groups} groups");
        eprintln!("256 appends: {groups} groups, {syncs} fdatasync calls");
    });
}

/// After a crash: every acknowledged record is in the reopened store exactly
/// once at its position, positions have no gap, nothing acknowledged earlier
/// is lost, batches are whole and the chain verifies. Returns the new head.
fn check_after_crash(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    acked: &HashMap<String, u64>,
    previous_head: u64,
    cycle: usize,
) -> u64 {
    runtime.block_on(async {
        let store = SledStore::open(dir).unwrap();
        let records = store.read_all(1, usize::MAX).await.unwrap();
        let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
        assert_eq!(
            positions,
            (1..=records.len() as u64).collect::<Vec<_>>(),
            "cycle {cycle}: gap in positions"
        );
        assert!(
            records.len() as u64 >= previous_head,
            "cycle {cycle}: records lost"
        );

        let mut stored: HashMap<&str, u64> = HashMap::new();
        for r in &records {
            let key = r.idempotency_key.as_deref().unwrap();
            assert!(
                stored.insert(key, r.position).is_none(),
                "cycle {cycle}: key {key} stored twice"
            );
        }
        for (key, position) in acked {
            assert_eq!(
                stored.get(key.as_str()),
                Some(position),
                "cycle {cycle}: acknowledged {key} missing or moved"
            );
        }
        let report = verify(&store).await.unwrap();
        assert_eq!(report.records, records.len() as u64);
        assert_eq!(report.head, store.head().await.unwrap());
        // Batches are atomic: both records of a two-record batch, or
        // neither (keys end in -0 and -1).
        let keys: HashSet<&str> = stored.keys().copied().collect();
        for key in &keys {
            if let Some(base) = key.strip_suffix("-1") {
                assert!(
                    keys.contains(format!("{base}-0").as_str()),
                    "half batch {key}"
                );
            }
        }
        store.close().await;
        records.len() as u64
    })
}

/// The process dies after writing a group and before syncing it (the child
/// aborts itself inside the store, at varied groups): the group was never
/// acknowledged, so it may or may not be there after the restart, whole,
/// but everything acknowledged before is, and the chain verifies.
#[test]
fn a_crash_between_writing_and_syncing_a_group_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut head = 0;
    for (cycle, abort_at) in [1u64, 2, 7, 30, 3, 90].into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_event-log-crash-child"))
            .arg(dir.path())
            .arg(format!("a{cycle}"))
            .arg(abort_at.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Every line the child printed before it died was acknowledged.
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let (position, key) = line.split_once(' ').expect("`<position> <key>`");
            acked.insert(key.to_owned(), position.parse().unwrap());
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: the child aborted");
        head = check_after_crash(&runtime, dir.path(), &acked, head, cycle);
    }
    assert!(!acked.is_empty());
}
