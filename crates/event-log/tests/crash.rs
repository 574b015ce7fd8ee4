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

        runtime.block_on(async {
            let store = SledStore::open(dir.path()).unwrap();
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
            previous_head = records.len() as u64;

            let mut stored: HashMap<&str, u64> = HashMap::new();
            for r in &records {
                let key = r.idempotency_key.as_deref().unwrap();
                assert!(
                    stored.insert(key, r.position).is_none(),
                    "cycle {cycle}: key {key} stored twice"
                );
            }
            for (key, position) in &acked {
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
        });
    }
    assert!(acked.len() >= KILL_AFTER.iter().sum::<usize>());
}
