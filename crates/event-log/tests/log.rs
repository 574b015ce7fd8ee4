//! Behaviour of the event log through its public API, against the in-memory,
//! the sled and the PostgreSQL store (on a server this test binary starts):
//! concurrency, idempotency, back-pressure, subscriptions, opening,
//! verification, export and import.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use event_log::postgres::testing::TestServer;
use event_log::{
    export_ndjson, import_ndjson, verify, verify_ndjson, AppendError, ChainFault, EventStore,
    ExpectedVersion, ImportError, MemoryStore, NewRecord, OpenError, PgStore, Record, SledStore,
    StoreConfig, VerifyError,
};

fn rec(stream: &str, payload: &str) -> NewRecord {
    NewRecord::new(stream, "Tested", 1, payload)
}

async fn all_records<S: EventStore>(store: &S) -> Vec<Record> {
    store.read_all(1, usize::MAX).await.unwrap()
}

/// A PostgreSQL store on a new database of this binary's shared server.
async fn pg_store(config: StoreConfig) -> PgStore {
    let mut pg = TestServer::shared().unwrap().store_config().unwrap();
    pg.store = config;
    PgStore::connect(pg).await.unwrap()
}

/// Runs a scenario against a fresh memory, sled and PostgreSQL store.
macro_rules! all_stores {
    ($scenario:ident, $config:expr) => {{
        let memory = MemoryStore::with_config($config);
        $scenario(&memory).await;
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open_with(dir.path(), $config).unwrap();
        $scenario(&sled).await;
        assert!(verify(&sled).await.is_ok());
        sled.close().await;
        let pg = pg_store($config).await;
        $scenario(&pg).await;
        verify(&pg).await.unwrap();
        pg.close().await;
    }};
}

// ---------------------------------------------------------------- concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_positions_and_versions_contiguous() {
    let memory = Arc::new(MemoryStore::new());
    concurrency_scenario(memory.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledStore::open(dir.path()).unwrap());
    concurrency_scenario(sled).await;
    let pg = Arc::new(pg_store(StoreConfig::default()).await);
    concurrency_scenario(pg).await;
}

async fn concurrency_scenario<S: EventStore + 'static>(store: Arc<S>) {
    const TASKS: usize = 48;
    const APPENDS: usize = 15;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut wins = 0u64;
            let mut conflicts = 0u64;
            for n in 0..APPENDS {
                if task % 3 == 0 {
                    // Read-modify-write on a contended stream: exactly one
                    // writer wins each version, the others see a conflict.
                    let stream = "contended";
                    let current = store
                        .read_stream(stream, 1, usize::MAX)
                        .await
                        .unwrap()
                        .last()
                        .map_or(0, |r| r.stream_version);
                    let expected = if current == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(current)
                    };
                    let batch = vec![rec(stream, &format!("{task}-{n}")).expect(expected)];
                    match store.append(batch).await {
                        Ok(a) => {
                            assert_eq!(a[0].stream_version, current + 1);
                            wins += 1;
                        }
                        Err(AppendError::Conflict {
                            index,
                            stream: s,
                            expected: e,
                            actual,
                        }) => {
                            assert_eq!((index, s.as_str(), e), (0, stream, expected));
                            assert!(actual > current, "conflict must report the newer version");
                            conflicts += 1;
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                } else {
                    // Two-record batches to a shared and a private stream.
                    let shared = format!("shared/{}", task % 4);
                    let own = format!("own/{task}");
                    let batch = vec![
                        rec(&shared, &format!("{task}-{n}")),
                        rec(&own, &format!("{task}-{n}")).expect(if n == 0 {
                            ExpectedVersion::NoStream
                        } else {
                            ExpectedVersion::Exact(n as u64)
                        }),
                    ];
                    let a = store.append(batch).await.unwrap();
                    assert_eq!(a[1].position, a[0].position + 1, "a batch is contiguous");
                    assert_eq!(a[1].stream_version, n as u64 + 1);
                }
            }
            (wins, conflicts)
        }));
    }
    let mut wins = 0;
    for handle in handles {
        wins += handle.await.unwrap().0;
    }
    let records = all_records(&*store).await;
    let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
    let expected: Vec<u64> = (1..=records.len() as u64).collect();
    assert_eq!(positions, expected);
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for r in &records {
        let v = versions.entry(&r.stream).or_default();
        *v += 1;
        assert_eq!(r.stream_version, *v, "stream {} version gap", r.stream);
    }
    assert_eq!(versions["contended"], wins);
    let writers = (0..TASKS).filter(|t| t % 3 != 0).count() as u64;
    assert_eq!(records.len() as u64, wins + writers * APPENDS as u64 * 2);
    assert_eq!(store.head().await.unwrap().position, records.len() as u64);
    verify(&*store).await.unwrap();
}

/// Batches that land in the same group: a conflicting one fails alone and
/// writes nothing; the others are unaffected.
#[tokio::test]
async fn a_conflict_fails_only_its_own_batch() {
    let memory = MemoryStore::new();
    memory.append(vec![rec("x", "0")]).await.unwrap();
    conflict_in_group_scenario(&memory, memory.pause_writer().await.unwrap()).await;
    let pg = pg_store(StoreConfig::default()).await;
    pg.append(vec![rec("x", "0")]).await.unwrap();
    conflict_in_group_scenario(&pg, pg.pause_writer().await.unwrap()).await;
    pg.close().await;
}

/// Holds `x` at version 1 and the writer paused by `pause`.
async fn conflict_in_group_scenario<S: EventStore>(store: &S, pause: event_log::WriterPause) {
    let a = store.append(vec![rec("y", "a")]);
    // Second record conflicts: the first must not be written either.
    let b = store.append(vec![
        rec("y", "b"),
        rec("x", "b").expect(ExpectedVersion::Exact(5)),
    ]);
    let c = store.append(vec![rec("x", "c").expect(ExpectedVersion::Exact(1))]);
    let d = store.append(vec![rec("x", "d").expect(ExpectedVersion::NoStream)]);
    drop(pause);
    let a = a.await.unwrap();
    match b.await {
        Err(AppendError::Conflict {
            index: 1,
            stream,
            expected: ExpectedVersion::Exact(5),
            actual: 1,
        }) if stream == "x" => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.await.unwrap()[0].stream_version, 2);
    match d.await {
        Err(AppendError::Conflict {
            index: 0,
            actual: 2,
            ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a[0].position, 2);
    let payloads: Vec<Vec<u8>> = all_records(store)
        .await
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, vec![b"0".to_vec(), b"a".to_vec(), b"c".to_vec()]);
    verify(store).await.unwrap();
}

#[tokio::test]
async fn invalid_records_are_refused_before_queueing() {
    let store = MemoryStore::new();
    let err = store
        .append(vec![rec("ok", "1"), rec("", "2")])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::InvalidRecord { index: 1, .. }));
    assert!(store.append(Vec::new()).await.unwrap().is_empty());
    assert_eq!(store.head().await.unwrap().position, 0);
}

// ---------------------------------------------------------------- idempotency

async fn idempotency_scenario<S: EventStore>(store: &S) {
    // Sequential: the retry gets the original answer, flagged.
    let first = store
        .append(vec![rec("s", "1").idempotency_key("k1")])
        .await
        .unwrap()[0];
    // The retry's expected version no longer holds, but it is a duplicate,
    // so it must not turn into a conflict.
    let again = store
        .append(vec![rec("s", "1")
            .idempotency_key("k1")
            .expect(ExpectedVersion::NoStream)])
        .await
        .unwrap()[0];
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (again.position, again.stream_version, again.event_id),
        (first.position, first.stream_version, first.event_id)
    );

    // Twice in one batch: stored once.
    let same_batch = store
        .append(vec![
            rec("s", "2").idempotency_key("k2"),
            rec("s", "2").idempotency_key("k2"),
            rec("s", "3"),
        ])
        .await
        .unwrap();
    assert_eq!(same_batch[0].position, same_batch[1].position);
    assert!(same_batch[1].duplicate);
    assert_eq!(same_batch[2].position, same_batch[0].position + 1);

    let records = all_records(store).await;
    let keys: Vec<_> = records
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(keys, vec!["k1".to_string(), "k2".to_string()]);
}

#[tokio::test]
async fn idempotency_key_stores_a_record_once() {
    all_stores!(idempotency_scenario, StoreConfig::default());
}

#[tokio::test]
async fn same_key_in_one_group_is_stored_once() {
    let memory = MemoryStore::new();
    same_key_in_one_group_scenario(&memory, memory.pause_writer().await.unwrap()).await;
    let pg = pg_store(StoreConfig::default()).await;
    same_key_in_one_group_scenario(&pg, pg.pause_writer().await.unwrap()).await;
    pg.close().await;
}

async fn same_key_in_one_group_scenario<S: EventStore>(store: &S, pause: event_log::WriterPause) {
    let a = store.append(vec![rec("s", "x").idempotency_key("k")]);
    let b = store.append(vec![rec("t", "y").idempotency_key("k")]);
    drop(pause);
    let (a, b) = (a.await.unwrap()[0], b.await.unwrap()[0]);
    assert_eq!(a.position, b.position);
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(all_records(store).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_one_key_get_one_position() {
    let dir = tempfile::tempdir().unwrap();
    one_key_scenario(Arc::new(SledStore::open(dir.path()).unwrap())).await;
    one_key_scenario(Arc::new(pg_store(StoreConfig::default()).await)).await;
}

async fn one_key_scenario<S: EventStore + 'static>(store: Arc<S>) {
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(vec![rec(&format!("s{i}"), "{}").idempotency_key("once")])
                    .await
                    .unwrap()[0]
            })
        })
        .collect();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    let positions: HashSet<u64> = answers.iter().map(|a| a.position).collect();
    assert_eq!(positions.len(), 1);
    assert_eq!(answers.iter().filter(|a| !a.duplicate).count(), 1);
    assert_eq!(all_records(&*store).await.len(), 1);
}

// ---------------------------------------------------------------- back-pressure

async fn busy_scenario<S: EventStore>(store: &S, pause: event_log::WriterPause) {
    // The writer is paused, so the queue (capacity 2) fills deterministically.
    let a = store.append(vec![rec("s", "a")]);
    let b = store.append(vec![rec("s", "b")]);
    let c = store.append(vec![rec("s", "c")]);
    assert!(matches!(c.await, Err(AppendError::Busy)));
    drop(pause);
    assert_eq!(a.await.unwrap()[0].stream_version, 1);
    assert_eq!(b.await.unwrap()[0].stream_version, 2);
    // Drained: appends go through again.
    assert_eq!(
        store.append(vec![rec("s", "d")]).await.unwrap()[0].position,
        3
    );
}

#[tokio::test]
async fn full_queue_answers_busy_at_once() {
    let config = StoreConfig {
        queue_capacity: 2,
        ..StoreConfig::default()
    };
    let memory = MemoryStore::with_config(config.clone());
    busy_scenario(&memory, memory.pause_writer().await.unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open_with(dir.path(), config.clone()).unwrap();
    busy_scenario(&sled, sled.pause_writer().await.unwrap()).await;
    let pg = pg_store(config).await;
    busy_scenario(&pg, pg.pause_writer().await.unwrap()).await;
    pg.close().await;
    assert_eq!(
        AppendError::Busy.to_string(),
        "the event log is busy: its write queue is full, retry later"
    );
}

// ---------------------------------------------------------------- subscription

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_wakes_readers_who_resume_from_their_position() {
    let pg = Arc::new(pg_store(StoreConfig::default()).await);
    subscription_scenario(pg.clone()).await;
    Arc::try_unwrap(pg).unwrap().close().await;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    subscription_scenario(store.clone()).await;

    // A restart resumes from a stored position.
    let stored = 12;
    let path = dir.path().to_path_buf();
    let store = Arc::try_unwrap(store).unwrap();
    store.close().await;
    let store = SledStore::open(&path).unwrap();
    let rest = store.read_all(stored + 1, 100).await.unwrap();
    assert_eq!(rest.first().map(|r| r.position), Some(13));
    assert_eq!(rest.len(), 18);
    let stream = store.read_stream("a", 29, 10).await.unwrap();
    assert_eq!(
        stream.iter().map(|r| r.stream_version).collect::<Vec<_>>(),
        vec![29, 30]
    );
    store.close().await;
}

/// A reader woken by the subscription sees 30 appends in order.
async fn subscription_scenario<S: EventStore + 'static>(store: Arc<S>) {
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);

    // A reader that keeps its own position and reads after each wake-up.
    let reader = {
        let store = store.clone();
        let mut rx = store.subscribe();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut position = 0;
            while position < 30 {
                rx.changed().await.unwrap();
                // More may be durable than one page: read until caught up.
                loop {
                    let page = store.read_all(position + 1, 7).await.unwrap();
                    if page.is_empty() {
                        break;
                    }
                    for r in page {
                        position = r.position;
                        seen.push(r.position);
                    }
                }
            }
            seen
        })
    };

    let first = store.append(vec![rec("a", "1")]).await.unwrap()[0].position;
    rx.changed().await.unwrap();
    assert!(*rx.borrow_and_update() >= first);
    for i in 2..=30 {
        store.append(vec![rec("a", &i.to_string())]).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), (1..=30).collect::<Vec<u64>>());
}

// ---------------------------------------------------------------- opening

#[tokio::test]
async fn second_opener_gets_locked_and_reopen_recovers_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store
        .append(vec![rec("a", "1"), rec("b", "2"), rec("a", "3")])
        .await
        .unwrap();
    let head = store.head().await.unwrap();

    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(&err, OpenError::Locked { path } if path == dir.path()));
    let message = err.to_string();
    assert!(message.contains("in use by another process"), "{message}");
    assert!(
        message.contains("export from the running server"),
        "{message}"
    );

    store.close().await;
    // sled's I/O threads may hold the directory a moment after `close` on a
    // loaded machine (seen once in CI): wait for it, a bounded time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match SledStore::open(dir.path()) {
            Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(store.head().await.unwrap(), head);
    // Positions and stream versions continue after the restart.
    let a = store
        .append(vec![rec("a", "4").expect(ExpectedVersion::Exact(2))])
        .await
        .unwrap()[0];
    assert_eq!((a.position, a.stream_version), (4, 3));
    verify(&store).await.unwrap();
    store.close().await;
}

// ---------------------------------------------------------------- audit

/// A store with JSON, non-JSON and odd payloads, ids and keys.
async fn sample_log<S: EventStore>(store: &S) {
    let cause = uuid::Uuid::now_v7();
    for n in 1..=20u32 {
        let payload: Vec<u8> = match n % 5 {
            0 => vec![0xff, 0x00, n as u8],         // not UTF-8
            1 => format!("{{\n\"n\":{n}}}").into(), // multi-line JSON
            _ => format!(r#"{{"n":{n},"text":"é \"q\""}}"#).into(),
        };
        let mut record = NewRecord::new(format!("thread/p/{}", n % 3), "Tested", 2, payload);
        if n % 2 == 0 {
            record = record.idempotency_key(format!("key-{n}")).caused_by(cause);
        }
        if n % 4 == 0 {
            record = record.correlated_with(cause);
        }
        store.append(vec![record]).await.unwrap();
    }
}

async fn exported<S: EventStore>(store: &S) -> Vec<u8> {
    let mut out = Vec::new();
    export_ndjson(store, &mut out).await.unwrap();
    out
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn broken_at(file: &[u8]) -> (u64, Option<u64>, String) {
    let err = verify_ndjson(file).unwrap_err();
    (
        err.position().unwrap(),
        err.line(),
        match &err {
            VerifyError::Broken { fault, .. } => format!("{fault:?}"),
            other => format!("{other}"),
        },
    )
}

#[tokio::test]
async fn tampered_exports_fail_at_the_right_position() {
    let store = MemoryStore::new();
    sample_log(&store).await;
    let file = exported(&store).await;
    let report = verify_ndjson(&file[..]).unwrap();
    assert_eq!(report.records, 20);
    assert_eq!(report.head, store.head().await.unwrap());
    let original = lines(&file);
    assert_eq!(original.len(), 20);

    // One changed byte in a JSON payload (7 -> 8 in `"n":7`).
    let mut changed = original.clone();
    let line = String::from_utf8(changed[6].clone()).unwrap();
    changed[6] = line.replace(r#""n":7"#, r#""n":8"#).into_bytes();
    assert_ne!(changed[6], original[6]);
    let (position, line_no, fault) = broken_at(&changed.concat());
    assert_eq!((position, line_no), (7, Some(7)));
    assert_eq!(fault, "BadHash");

    // One changed byte in a hex payload (record 10: not UTF-8).
    let mut changed = original.clone();
    let line = String::from_utf8(changed[9].clone()).unwrap();
    assert!(line.contains(r#""payload_hex":"ff000a""#), "{line}");
    changed[9] = line.replace("ff000a", "ff000b").into_bytes();
    assert_eq!(broken_at(&changed.concat()).0, 10);

    // One changed byte in a hash: the record no longer matches it.
    let mut changed = original.clone();
    let line = String::from_utf8(changed[2].clone()).unwrap();
    let at = line.find(r#""hash":""#).unwrap() + 8;
    let mut bytes = line.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    changed[2] = bytes;
    assert_eq!(broken_at(&changed.concat()).0, 3);

    // A raw byte flipped anywhere in a line fails at that line at the latest.
    for (index, offset) in [(4usize, 3usize), (11, 40), (15, 100), (19, 17)] {
        let mut changed = original.clone();
        changed[index][offset] ^= 0x01;
        let (position, line_no, _) = broken_at(&changed.concat());
        assert_eq!(position, index as u64 + 1, "flip at line {}", index + 1);
        assert_eq!(line_no, Some(index as u64 + 1));
    }

    // A removed line.
    let mut removed = original.clone();
    removed.remove(4);
    let (position, line_no, fault) = broken_at(&removed.concat());
    assert_eq!((position, line_no), (5, Some(5)));
    assert_eq!(fault, "Gap { found: 6 }");

    // Swapped lines.
    let mut swapped = original.clone();
    swapped.swap(10, 11);
    let (position, line_no, fault) = broken_at(&swapped.concat());
    assert_eq!((position, line_no), (11, Some(11)));
    assert_eq!(fault, "Gap { found: 12 }");

    // A forged record whose hashes were recomputed still breaks the link
    // of the record after it.
    let mut forged: Vec<Record> = original
        .iter()
        .map(|l| event_log::parse_ndjson_line(l.strip_suffix(b"\n").unwrap()).unwrap())
        .collect();
    forged[7].payload = br#"{"n":"forged"}"#.to_vec();
    forged[7].hash = forged[7].compute_hash();
    let file: Vec<u8> = forged
        .iter()
        .flat_map(|r| format!("{}\n", event_log::ndjson_line(r)).into_bytes())
        .collect();
    let (position, _, fault) = broken_at(&file);
    assert_eq!((position, fault.as_str()), (9, "BrokenLink"));
}

#[tokio::test]
async fn export_verify_import_export_is_identical() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = SledStore::open(source_dir.path()).unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let target = SledStore::open(target_dir.path()).unwrap();
    export_import_scenario(&source, &target).await;
    source.close().await;
    target.close().await;

    let source = pg_store(StoreConfig::default()).await;
    let target = pg_store(StoreConfig::default()).await;
    export_import_scenario(&source, &target).await;
    source.close().await;
    target.close().await;
}

/// Exports a sample log from `source`, imports it into the empty `target`.
async fn export_import_scenario<S: EventStore, T: EventStore>(source: &S, target: &T) {
    sample_log(source).await;
    let first = exported(source).await;
    verify_ndjson(&first[..]).unwrap();

    let report = import_ndjson(target, &first[..]).await.unwrap();
    assert_eq!(report.head, source.head().await.unwrap());
    assert_eq!(target.head().await.unwrap(), report.head);
    verify(target).await.unwrap();
    assert_eq!(exported(target).await, first);
    // Indexes were rebuilt: stream reads, versions and keys work.
    assert_eq!(
        target.read_stream("thread/p/1", 1, 100).await.unwrap(),
        source.read_stream("thread/p/1", 1, 100).await.unwrap()
    );
    let dup = target
        .append(vec![rec("other", "{}").idempotency_key("key-4")])
        .await
        .unwrap()[0];
    assert!(dup.duplicate);
    assert_eq!(dup.position, 4);
    let next = target.append(vec![rec("thread/p/1", "{}")]).await.unwrap()[0];
    assert_eq!((next.position, next.stream_version), (21, 8));
    verify(target).await.unwrap();

    // A non-empty store is refused, and nothing is written.
    let head = target.head().await.unwrap();
    match import_ndjson(target, &first[..]).await {
        Err(ImportError::NotEmpty { head: 21 }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(target.head().await.unwrap(), head);

    // A tampered file is refused while importing.
    let mut tampered = lines(&first);
    tampered.remove(2);
    let memory = MemoryStore::new();
    match import_ndjson(&memory, &tampered.concat()[..]).await {
        Err(ImportError::Verify { source, .. }) => {
            assert_eq!(source.position(), Some(3));
            assert!(matches!(
                source,
                VerifyError::Broken {
                    fault: ChainFault::Gap { found: 4 },
                    ..
                }
            ));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A data directory written by the release before real syncs (the demo's log
/// of 2026-12, kept as a fixture; its records are in sled, before the
/// segment files) opens with the current store: every record, position and
/// chain hash intact, and it takes new appends, which go to a segment.
#[tokio::test]
async fn a_log_written_by_the_previous_release_opens_intact() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sled-log-2026-12");
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(&fixture, dir.path());
    let store = SledStore::open(dir.path()).unwrap();
    let records = store.read_all(1, usize::MAX).await.unwrap();
    assert_eq!(records.len(), 56);
    assert!(records.iter().zip(1..).all(|(r, p)| r.position == p));
    let report = verify(&store).await.unwrap();
    assert_eq!(report.records, 56);
    assert_eq!(
        report.head.hash.to_hex(),
        "72773ca6048227d5796ba8c0aaffaf6b7dd6671a4697be35b7eb8f57119484b2"
    );
    let old_stream = records[55].stream.clone();
    let old_versions = store
        .read_stream(&old_stream, 1, usize::MAX)
        .await
        .unwrap()
        .len();
    store.close().await;
    // sled's files as the upgrade found them: chunks (`c` keys), no index
    // of any segment.
    let saved = tempfile::tempdir().unwrap();
    for file in sled_files(dir.path()) {
        std::fs::copy(&file, saved.path().join(file.file_name().unwrap())).unwrap();
    }

    let store = SledStore::open(dir.path()).unwrap();
    let appended = store
        .append(vec![
            NewRecord::new("s/after-upgrade", "Tick", 1, "{}"),
            NewRecord::new(old_stream.clone(), "Tick", 1, "{}"),
        ])
        .await
        .unwrap();
    assert_eq!(appended[0].position, 57);
    assert_eq!(appended[1].stream_version, old_versions as u64 + 1);
    assert_eq!(verify(&store).await.unwrap().records, 58);
    store.close().await;
    assert!(std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "seg")));

    // The old records stay where they were (in sled) and the new ones are
    // in a segment file. After a reopen, and again after sled lost the
    // segment's index (its files put back as the upgrade found them), both
    // are read, in one pass and by stream, and the chain runs across them.
    for sled_lost_the_index in [false, true] {
        if sled_lost_the_index {
            for file in sled_files(dir.path()) {
                std::fs::remove_file(&file).unwrap();
            }
            for file in sled_files(saved.path()) {
                std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
            }
        }
        let store = SledStore::open(dir.path()).unwrap();
        let records = store.read_all(50, usize::MAX).await.unwrap();
        assert_eq!(
            records.iter().map(|r| r.position).collect::<Vec<_>>(),
            (50..=58).collect::<Vec<_>>()
        );
        assert_eq!(records[7].prev_hash, records[6].hash);
        let after = store.read_stream("s/after-upgrade", 1, 10).await.unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].position, 57);
        let spanning = store.read_stream(&old_stream, 1, usize::MAX).await.unwrap();
        assert_eq!(spanning.len(), old_versions + 1);
        assert_eq!(spanning.last().unwrap().position, 58);
        assert!(spanning.iter().zip(1..).all(|(r, v)| r.stream_version == v));
        let report = verify(&store).await.unwrap();
        assert_eq!(report.records, 58);
        store.close().await;
    }
}

/// sled's own files in a log directory (not the segments or the vault).
fn sled_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect()
}

/// Copies a fixture directory, subdirectories included.
fn copy_fixture(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_fixture(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every stream read matches the records of that stream in the whole log,
/// and every idempotency key in the log is found again at its record.
async fn indexes_agree_with_the_records(store: &SledStore) {
    let records = all_records(store).await;
    let mut streams: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in &records {
        streams.entry(&record.stream).or_default().push(record);
    }
    for (stream, expected) in streams {
        let read = store.read_stream(stream, 1, usize::MAX).await.unwrap();
        assert_eq!(read.len(), expected.len(), "{stream}");
        assert!(read.iter().zip(&expected).all(|(r, e)| r == *e), "{stream}");
        assert!(read.iter().zip(1..).all(|(r, v)| r.stream_version == v));
        let next = store.read_stream(stream, 2, 1).await.unwrap();
        assert_eq!(
            next.first().map(|r| r.stream_version),
            read.get(1).map(|_| 2)
        );
    }
    let keyed: Vec<&Record> = records
        .iter()
        .filter(|r| r.idempotency_key.is_some())
        .collect();
    let retries = keyed
        .iter()
        .map(|r| {
            NewRecord::new(r.stream.clone(), "Retry", 1, "{}")
                .idempotency_key(r.idempotency_key.clone().unwrap())
        })
        .collect();
    let head = store.head().await.unwrap();
    let appended = store.append(retries).await.unwrap();
    for (found, record) in appended.iter().zip(&keyed) {
        assert!(found.duplicate);
        assert_eq!(
            (found.position, found.stream_version, found.event_id),
            (record.position, record.stream_version, record.event_id)
        );
    }
    assert_eq!(store.head().await.unwrap(), head);
}

/// How long a test waits for sled to let go of a directory.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The sled tree of a closed log directory, once the store let go of it
/// (sled's I/O threads can hold its lock a moment after `close`).
fn sled_tree(dir: &std::path::Path) -> (sled::Db, sled::Tree) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(dir) {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            db => break db.unwrap(),
        }
    };
    let tree = db.open_tree("baton-event-log").unwrap();
    (db, tree)
}

/// A data directory written by the first release with segment files
/// (2026-12-02: streams and idempotency keys indexed by their names, sled's
/// `t` and `i` keys; 72 records in four segments of about 4 KiB, 36 of them
/// with an idempotency key, six streams) opens with the current store: its
/// indexes are converted to digest keys, every record, position and chain
/// hash is intact, every stream and key is found, and new records continue
/// old streams. The same after sled lost its files; after it lost its `g`
/// key (every group is then indexed again, beside the converted entries);
/// after it lost `g` and a stream run (a power cut may keep any subset of
/// sled's unsynced writes); and after a crash that left name keys beside
/// the digest keys they were converted to.
#[tokio::test]
async fn a_log_with_name_keyed_indexes_opens_intact() {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/segment-log-2026-12");
    let head_hash = "2a1569bc1c946396c9812fcdfe03d281aba3de556a406767b530d9e20e3532a7";
    let named = |tree: &sled::Tree| -> Vec<(sled::IVec, sled::IVec)> {
        tree.scan_prefix("t")
            .chain(tree.scan_prefix("i"))
            .map(Result::unwrap)
            .collect()
    };
    let (_untouched, untouched) = fixture_copy(&fixture);
    let in_fixture = named(&sled_tree(&untouched).1);
    assert_eq!(in_fixture.len(), 36 + 42);

    // An open that refuses the directory (a byte changed in a group before
    // the last segment, which the open reads back since sled lost its `g`
    // key) converts nothing and writes no layout key: the release that
    // wrote it still opens it.
    let (_refused, refused) = fixture_copy(&fixture);
    {
        let (db, tree) = sled_tree(&refused);
        tree.remove("g").unwrap();
        db.flush().unwrap();
    }
    let first_segment = refused.join("segments/00000000000000000001.seg");
    let mut bytes = std::fs::read(&first_segment).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&first_segment, bytes).unwrap();
    assert!(SledStore::open_when_free(&refused, PATIENCE).await.is_err());
    let (_db, tree) = sled_tree(&refused);
    assert_eq!(named(&tree), in_fixture);
    assert!(tree.get("r:layout").unwrap().is_none());
    drop((_db, tree));
    for damage in [
        "none",
        "sled lost",
        "g lost",
        "g and a run lost",
        "names beside digests",
    ] {
        let (dir, path) = fixture_copy(&fixture);
        match damage {
            "sled lost" => sled_files(&path)
                .iter()
                .for_each(|f| std::fs::remove_file(f).unwrap()),
            "g lost" | "g and a run lost" => {
                let (db, tree) = sled_tree(&path);
                assert!(tree.remove("g").unwrap().is_some());
                if damage == "g and a run lost" {
                    let last = tree.scan_prefix("t").next_back().unwrap().unwrap().0;
                    tree.remove(last).unwrap();
                }
                db.flush().unwrap();
            }
            "names beside digests" => {
                SledStore::open_when_free(&path, PATIENCE)
                    .await
                    .unwrap()
                    .close()
                    .await;
                let (db, tree) = sled_tree(&path);
                assert!(named(&tree).is_empty());
                for (key, value) in &in_fixture {
                    tree.insert(key, value).unwrap();
                }
                db.flush().unwrap();
            }
            _ => {}
        }
        let store = SledStore::open_when_free(&path, PATIENCE).await.unwrap();
        let report = verify(&store).await.unwrap();
        assert_eq!(
            (report.records, report.head.hash.to_hex()),
            (72, head_hash.into()),
            "{damage}"
        );
        indexes_agree_with_the_records(&store).await;
        let old = store
            .read_stream("thread/5550001/7000", 1, usize::MAX)
            .await
            .unwrap();
        let appended = store
            .append(vec![
                NewRecord::new("thread/5550001/7000", "Tick", 1, "{}").idempotency_key("new-1"),
                NewRecord::new("deliveries/1001", "Tick", 1, "{}").idempotency_key("new-2"),
                NewRecord::new("s/after-upgrade", "Tick", 1, "{}"),
            ])
            .await
            .unwrap();
        assert_eq!(appended[0].position, 73);
        assert_eq!(appended[0].stream_version, old.len() as u64 + 1);
        store.close().await;
        {
            let (_db, tree) = sled_tree(&path);
            assert!(named(&tree).is_empty(), "{damage}");
            assert_eq!(tree.get("r:layout").unwrap().unwrap(), "digest-keys+zstd");
        }

        let store = SledStore::open_when_free(&path, PATIENCE).await.unwrap();
        assert_eq!(verify(&store).await.unwrap().records, 75);
        indexes_agree_with_the_records(&store).await;
        store.close().await;
        drop(dir);
    }
}

/// A fresh copy of a fixture directory: the temporary directory (removed
/// when dropped) and its path.
fn fixture_copy(fixture: &std::path::Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    copy_fixture(fixture, &path);
    (dir, path)
}
