//! What only the PostgreSQL store has to show, on real servers this test
//! binary starts: durability at COMMIT across a server crash, several stores
//! on one shard (one gapless chain, subscriptions that see each other's
//! appends, conflicts and idempotency across them), independent shards,
//! group commit, migrations, and exports that verify.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use event_log::postgres::testing::TestServer;
use event_log::{
    export_ndjson, import_ndjson, verify, verify_ndjson, AppendError, EventStore, ExpectedVersion,
    Fence, Leases, NewRecord, PgError, PgStore, PgStoreConfig, Record, SledStore,
};

fn rec(stream: &str, payload: &str) -> NewRecord {
    NewRecord::new(stream, "Tested", 1, payload)
}

fn shared() -> &'static TestServer {
    TestServer::shared().unwrap()
}

async fn all_records<S: EventStore>(store: &S) -> Vec<Record> {
    store.read_all(1, usize::MAX).await.unwrap()
}

/// Waits, a bounded time, until the store's subscription reaches `position`.
async fn until_head(store: &PgStore, position: u64) {
    let mut rx = store.subscribe();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|p| *p >= position))
        .await
        .unwrap_or_else(|_| panic!("the subscription never reached {position}"))
        .unwrap();
}

/// Positions 1..=n in order, each stream's versions 1, 2, 3... in position
/// order, and a chain that verifies.
async fn assert_one_gapless_chain(store: &PgStore) -> Vec<Record> {
    let records = all_records(store).await;
    let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=records.len() as u64).collect::<Vec<_>>());
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for r in &records {
        let v = versions.entry(&r.stream).or_default();
        *v += 1;
        assert_eq!(r.stream_version, *v, "stream {} version gap", r.stream);
    }
    let report = verify(store).await.unwrap();
    assert_eq!(report.records, records.len() as u64);
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_durable_at_commit_across_a_server_crash() {
    // A server of its own: this test crashes it.
    let server = TestServer::start().unwrap();
    let config = server.store_config().unwrap();
    let store = Arc::new(
        PgStore::connect(PgStoreConfig {
            // It will wait this long for the crashed server, twice.
            connect_timeout: Duration::from_millis(500),
            ..config.clone()
        })
        .await
        .unwrap(),
    );
    let handles: Vec<_> = (0..8)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..10 {
                    let batch = vec![
                        rec(&format!("t/{task}"), &format!("{n}"))
                            .idempotency_key(format!("k{task}-{n}")),
                        rec("shared", &format!("{task}-{n}")),
                    ];
                    answers.extend(store.append(batch).await.unwrap());
                }
                answers
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for handle in handles {
        acknowledged.extend(handle.await.unwrap());
    }
    let head = store.head().await.unwrap();
    assert_eq!(head.position, 160);
    let before = all_records(&*store).await;

    // Everything acknowledged was committed: a crash of PostgreSQL (no
    // shutdown checkpoint, crash recovery from the WAL) keeps it.
    server.stop_immediately().unwrap();
    // The store reports the lost server as a typed error, not a panic, and
    // stops its writer, as sled's does after a failed flush.
    match store.append(vec![rec("shared", "lost")]).await {
        Err(AppendError::WriterStopped { .. }) => {}
        other => panic!("expected WriterStopped, got {other:?}"),
    }
    assert!(matches!(
        store.append(vec![rec("shared", "later")]).await,
        Err(AppendError::WriterStopped { .. })
    ));
    assert!(store.read_all(1, 10).await.is_err());
    server.restart().unwrap();

    let reopened = PgStore::connect(config).await.unwrap();
    assert_eq!(reopened.head().await.unwrap(), head);
    assert_eq!(all_records(&reopened).await, before);
    for a in &acknowledged {
        let record = &before[usize::try_from(a.position - 1).unwrap()];
        assert_eq!(
            (record.event_id, record.stream_version),
            (a.event_id, a.stream_version)
        );
    }
    assert_one_gapless_chain(&reopened).await;
    // Positions, versions and idempotency keys carry on.
    let again = reopened
        .append(vec![
            rec("t/3", "4").idempotency_key("k3-4"),
            rec("shared", "after"),
        ])
        .await
        .unwrap();
    assert!(again[0].duplicate);
    assert_eq!((again[1].position, again[1].stream_version), (161, 81));
    reopened.close().await;
    Arc::try_unwrap(store).unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_shard_keep_one_gapless_chain() {
    let config = shared().store_config().unwrap();
    let a = Arc::new(PgStore::connect(config.clone()).await.unwrap());
    let b = Arc::new(PgStore::connect(config).await.unwrap());
    const TASKS: usize = 12;
    const APPENDS: usize = 12;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = if task % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            let mut wins = 0u64;
            for n in 0..APPENDS {
                if task % 3 == 0 {
                    // Read-modify-write on one stream from both stores.
                    let current = store
                        .read_stream("contended", 1, usize::MAX)
                        .await
                        .unwrap()
                        .last()
                        .map_or(0, |r| r.stream_version);
                    let expected = match current {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v),
                    };
                    match store
                        .append(vec![
                            rec("contended", &format!("{task}-{n}")).expect(expected)
                        ])
                        .await
                    {
                        Ok(done) => {
                            assert_eq!(done[0].stream_version, current + 1);
                            wins += 1;
                        }
                        Err(AppendError::Conflict { actual, .. }) => assert!(actual > current),
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                } else {
                    let batch = vec![
                        rec(&format!("shared/{}", task % 4), &format!("{task}-{n}")),
                        rec(&format!("own/{task}"), &format!("{n}")).expect(match n {
                            0 => ExpectedVersion::NoStream,
                            n => ExpectedVersion::Exact(n as u64),
                        }),
                    ];
                    let done = store.append(batch).await.unwrap();
                    assert_eq!(
                        done[1].position,
                        done[0].position + 1,
                        "a batch is contiguous"
                    );
                }
            }
            wins
        }));
    }
    let mut wins = 0;
    for handle in handles {
        wins += handle.await.unwrap();
    }
    let records = assert_one_gapless_chain(&a).await;
    let writers = (0..TASKS).filter(|t| t % 3 != 0).count() as u64;
    assert_eq!(records.len() as u64, wins + writers * APPENDS as u64 * 2);
    assert_eq!(verify(&*b).await.unwrap().head, a.head().await.unwrap());
    // Both wrote: the chain interleaves their groups.
    assert!(a.groups() > 0 && b.groups() > 0);
    Arc::try_unwrap(a).unwrap().close().await;
    Arc::try_unwrap(b).unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_sees_the_first_ones_appends_by_notify_and_by_poll() {
    let config = shared().store_config().unwrap();
    let writer = PgStore::connect(config.clone()).await.unwrap();
    // Notifications only: polling too slow to be what wakes it.
    let notified = PgStore::connect(PgStoreConfig {
        poll_interval: Duration::from_secs(3600),
        ..config.clone()
    })
    .await
    .unwrap();
    // Polling only, as behind a proxy that cannot LISTEN.
    let polled = PgStore::connect(PgStoreConfig {
        listen: false,
        poll_interval: Duration::from_millis(50),
        ..config
    })
    .await
    .unwrap();
    let mut rx = notified.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    for n in 1..=5u64 {
        let position = writer.append(vec![rec("s", &n.to_string())]).await.unwrap()[0].position;
        assert_eq!(position, n);
        until_head(&notified, n).await;
        until_head(&polled, n).await;
    }
    // What the subscription promises is readable at once.
    let head = *notified.subscribe().borrow();
    assert_eq!(notified.read_all(1, 100).await.unwrap().len() as u64, head);
    assert_eq!(polled.read_stream("s", 1, 100).await.unwrap().len(), 5);
    writer.close().await;
    notified.close().await;
    polled.close().await;
}

#[tokio::test]
async fn shards_have_independent_chains() {
    let config = shared().store_config().unwrap();
    let zero = PgStore::connect(config.clone()).await.unwrap();
    let one = PgStore::connect(config.with_shard(1)).await.unwrap();
    assert_eq!((zero.shard(), one.shard()), (0, 1));
    for n in 0..5 {
        let a = zero
            .append(vec![rec("s", &format!("zero {n}")).idempotency_key("k")])
            .await
            .unwrap();
        let b = one
            .append(vec![rec("s", &format!("one {n}")).idempotency_key("k")])
            .await
            .unwrap();
        // The same key is its own in each shard.
        assert_eq!(a[0].position, 1);
        assert_eq!(b[0].position, 1);
    }
    zero.append(vec![rec("s", "zero"), rec("t", "zero")])
        .await
        .unwrap();
    one.append(vec![rec("s", "one").expect(ExpectedVersion::Exact(1))])
        .await
        .unwrap();
    let zero_records = assert_one_gapless_chain(&zero).await;
    let one_records = assert_one_gapless_chain(&one).await;
    assert_eq!((zero_records.len(), one_records.len()), (3, 2));
    assert!(one_records.iter().all(|r| r.payload.starts_with(b"one")));
    assert_eq!(zero_records[0].prev_hash, event_log::ChainHash::ZERO);
    assert_eq!(one_records[0].prev_hash, event_log::ChainHash::ZERO);
    assert_ne!(zero.head().await.unwrap(), one.head().await.unwrap());
    zero.close().await;
    one.close().await;
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict_across_stores() {
    let config = shared().store_config().unwrap();
    let a = PgStore::connect(config.clone()).await.unwrap();
    let b = PgStore::connect(config).await.unwrap();
    a.append(vec![rec("s", "1").expect(ExpectedVersion::NoStream)])
        .await
        .unwrap();
    // b decided on what it saw before a's append: the whole batch fails.
    match b
        .append(vec![
            rec("other", "x"),
            rec("s", "2").expect(ExpectedVersion::NoStream),
        ])
        .await
    {
        Err(AppendError::Conflict {
            index: 1,
            stream,
            expected: ExpectedVersion::NoStream,
            actual: 1,
        }) if stream == "s" => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(b.read_stream("other", 1, 10).await.unwrap().is_empty());
    let done = b
        .append(vec![rec("s", "2").expect(ExpectedVersion::Exact(1))])
        .await
        .unwrap();
    assert_eq!((done[0].position, done[0].stream_version), (2, 2));
    assert!(matches!(
        a.append(vec![rec("s", "3").expect(ExpectedVersion::Exact(1))])
            .await,
        Err(AppendError::Conflict { actual: 2, .. })
    ));
    assert_one_gapless_chain(&a).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_hold_across_stores() {
    let config = shared().store_config().unwrap();
    let a = Arc::new(PgStore::connect(config.clone()).await.unwrap());
    let b = Arc::new(PgStore::connect(config).await.unwrap());
    let first = a
        .append(vec![rec("s", "1").idempotency_key("k1")])
        .await
        .unwrap()[0];
    let again = b
        .append(vec![rec("s", "1")
            .idempotency_key("k1")
            .expect(ExpectedVersion::NoStream)])
        .await
        .unwrap()[0];
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(
        (again.position, again.stream_version, again.event_id),
        (first.position, first.stream_version, first.event_id)
    );
    // Both stores race with one key: one record, one position for all.
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                store
                    .append(vec![rec(&format!("r{i}"), "{}").idempotency_key("once")])
                    .await
                    .unwrap()[0]
            })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    let positions: HashSet<u64> = answers.iter().map(|x| x.position).collect();
    assert_eq!(positions.len(), 1);
    assert_eq!(answers.iter().filter(|x| !x.duplicate).count(), 1);
    assert_eq!(all_records(&*a).await.len(), 2);
    Arc::try_unwrap(a).unwrap().close().await;
    Arc::try_unwrap(b).unwrap().close().await;
}

#[tokio::test]
async fn concurrent_appends_share_one_commit() {
    let store = PgStore::connect(shared().store_config().unwrap())
        .await
        .unwrap();
    let pause = store.pause_writer().await.unwrap();
    let pending: Vec<_> = (0..50)
        .map(|i| store.append(vec![rec(&format!("s{}", i % 5), &i.to_string())]))
        .collect();
    drop(pause);
    for (i, answer) in pending.into_iter().enumerate() {
        assert_eq!(
            answer.await.unwrap()[0].position,
            i as u64 + 1,
            "submission order is position order"
        );
    }
    assert_eq!(store.groups(), 1, "50 queued appends, one transaction");
    assert_one_gapless_chain(&store).await;
    store.close().await;
}

#[tokio::test]
async fn migrate_is_idempotent_and_refuses_a_newer_schema() {
    let server = shared();
    let url = server.create_database().unwrap();
    let (first, second) = tokio::join!(
        event_log::postgres::migrate(&url),
        event_log::postgres::migrate(&url)
    );
    // Run together, under the advisory lock: one applies, one finds it done.
    let mut applied = [first.unwrap(), second.unwrap()];
    applied.sort();
    assert_eq!(applied, [0, 4]);
    assert_eq!(event_log::postgres::migrate(&url).await.unwrap(), 0);
    let name = url.rsplit('/').next().unwrap();
    let versions = server
        .psql(
            name,
            "SELECT version, name FROM event_log_migrations ORDER BY version",
        )
        .unwrap();
    assert_eq!(
        versions.trim(),
        "1|event_log\n2|leases\n3|keys\n4|keys_by_subject"
    );

    // A store connecting migrates too, and finds nothing to do.
    let mut config = server.store_config().unwrap();
    config.url = url.clone();
    let store = PgStore::connect(config.clone()).await.unwrap();
    store.append(vec![rec("s", "1")]).await.unwrap();
    store.close().await;

    server
        .psql(
            name,
            "INSERT INTO event_log_migrations (version, name) VALUES (999, 'future')",
        )
        .unwrap();
    match PgStore::connect(config).await {
        Err(PgError::SchemaTooNew {
            found: 999,
            known: 4,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn connection_failures_are_typed_errors() {
    // A port where nothing listens (bound, then freed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = PgStoreConfig::new(format!("postgres://baton:secret@127.0.0.1:{port}/none"));
    config.connect_timeout = Duration::from_secs(2);
    let err = PgStore::connect(config.clone()).await.unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    // The password never reaches messages or Debug output.
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(!format!("{config:?}").contains("secret"));
    assert!(matches!(
        event_log::postgres::migrate("not a url").await,
        Err(PgError::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn a_nul_in_a_text_field_is_refused_before_queueing() {
    let store = PgStore::connect(shared().store_config().unwrap())
        .await
        .unwrap();
    let err = store
        .append(vec![rec("ok", "1"), rec("bad\0stream", "2")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::InvalidRecord { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(store.head().await.unwrap().position, 0);
    store.close().await;
}

#[tokio::test]
async fn the_export_of_a_postgres_log_verifies_and_imports_into_sled() {
    let config = shared().store_config().unwrap();
    let a = PgStore::connect(config.clone()).await.unwrap();
    let b = PgStore::connect(config).await.unwrap();
    for n in 0..20u32 {
        let store = if n % 2 == 0 { &a } else { &b };
        let payload: Vec<u8> = if n % 5 == 0 {
            vec![0xff, 0, n as u8]
        } else {
            format!(r#"{{"n":{n}}}"#).into()
        };
        let mut record = NewRecord::new(format!("thread/p/{}", n % 3), "Tested", 2, payload);
        if n % 2 == 0 {
            record = record
                .idempotency_key(format!("key-{n}"))
                .caused_by(uuid::Uuid::now_v7());
        }
        store.append(vec![record]).await.unwrap();
    }
    let mut file = Vec::new();
    let head = export_ndjson(&b, &mut file).await.unwrap();
    let report = verify_ndjson(&file[..]).unwrap();
    assert_eq!((report.records, report.head), (20, head));

    let dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(dir.path()).unwrap();
    import_ndjson(&sled, &file[..]).await.unwrap();
    let mut again = Vec::new();
    export_ndjson(&sled, &mut again).await.unwrap();
    assert_eq!(again, file);
    sled.close().await;
    a.close().await;
    b.close().await;
}

/// The lease as one node claims it, and the other's view of it.
const TTL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_stale_owners_writes_and_a_follower_records() {
    let server = shared();
    let config = server.store_config().unwrap();
    let database = config.url.rsplit('/').next().unwrap().to_owned();
    let a = PgStore::connect(config.clone()).await.unwrap();
    let b = PgStore::connect(config).await.unwrap();

    // A takes the vacant lease; B finds A's, and where to route to.
    let claim = a.claim("node-a", "http://a:1", TTL, None).await.unwrap();
    assert!(claim.mine && claim.epoch == 1 && claim.remaining > Duration::ZERO);
    let seen = b.claim("node-b", "http://b:1", TTL, None).await.unwrap();
    assert!(!seen.mine);
    // Any store of the database finds the lease of any shard.
    let of_zero = b.lease_of(0).await.unwrap().unwrap();
    assert_eq!((of_zero.holder.as_str(), of_zero.epoch), ("node-a", 1));
    assert!(!of_zero.mine && of_zero.remaining > Duration::ZERO);
    assert_eq!(b.lease_of(7).await.unwrap(), None);
    assert_eq!(
        (seen.holder.as_str(), seen.epoch, seen.address.as_str()),
        ("node-a", 1, "http://a:1")
    );
    a.set_fence(Fence::Owner(1));
    a.append(vec![rec("t/1", "decided by a")]).await.unwrap();
    // A follower's appends carry no epoch: it records webhooks.
    b.append(vec![rec("t/1", "webhook via b")]).await.unwrap();
    // Renewed by its holder: the same epoch.
    assert_eq!(
        a.claim("node-a", "http://a:1", TTL, Some(1))
            .await
            .unwrap()
            .epoch,
        1
    );

    // A's lease lapses (A was frozen): its next write is refused by the
    // database, nothing of it is written, and its fence closes.
    server
        .psql(
            &database,
            "UPDATE event_log_leases SET expires_at = clock_timestamp() - interval '1 second'",
        )
        .unwrap();
    assert_eq!(
        b.lease_of(0).await.unwrap(),
        None,
        "a lapsed lease routes nowhere"
    );
    let head = a.head().await.unwrap();
    match a.append(vec![rec("t/1", "too late")]).await {
        Err(AppendError::Fenced { epoch: Some(1) }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.head().await.unwrap(), head);
    assert_eq!(*a.fence().borrow(), Fence::Closed);
    assert_eq!(a.fenced_appends(), 1);
    // Closed: refused before the database is asked.
    match a.append(vec![rec("t/1", "closed")]).await {
        Err(AppendError::Fenced { epoch: None }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.fenced_appends(), 1);

    // B takes over under a new epoch and decides.
    let claim = b.claim("node-b", "http://b:1", TTL, None).await.unwrap();
    assert!(claim.mine);
    assert_eq!(claim.epoch, 2);
    b.set_fence(Fence::Owner(2));
    b.append(vec![rec("t/1", "decided by b")]).await.unwrap();
    b.store_dispatch_cursor("111", r#"{"cursor":7,"settled":[9]}"#)
        .await
        .unwrap();

    // A, still believing in epoch 1, is refused: appends and cursors alike.
    a.set_fence(Fence::Owner(1));
    match a.append(vec![rec("t/1", "stale")]).await {
        Err(AppendError::Fenced { epoch: Some(1) }) => {}
        other => panic!("unexpected {other:?}"),
    }
    a.set_fence(Fence::Owner(1));
    match a.store_dispatch_cursor("111", r#"{"cursor":1}"#).await {
        Err(AppendError::Fenced { epoch: Some(1) }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.fenced_appends(), 3);
    let claim = a.claim("node-a", "http://a:1", TTL, Some(1)).await.unwrap();
    assert!(!claim.mine);
    assert_eq!((claim.holder.as_str(), claim.epoch), ("node-b", 2));
    // As a follower, A records again; the owner's cursor stands.
    a.set_fence(Fence::Follower);
    a.append(vec![rec("t/1", "webhook via a")]).await.unwrap();
    let cursor = a.load_dispatch_cursor("111").await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&cursor).unwrap(),
        serde_json::json!({"cursor": 7, "settled": [9]})
    );
    assert_eq!(a.load_dispatch_cursor("222").await.unwrap(), None);

    // A clean stop releases the lease: A takes it at once, epoch 3.
    b.release("node-b").await.unwrap();
    let claim = a.claim("node-a", "http://a:1", TTL, None).await.unwrap();
    assert!(claim.mine);
    assert_eq!(claim.epoch, 3);
    a.set_fence(Fence::Owner(3));
    a.append(vec![rec("t/1", "decided by a again")])
        .await
        .unwrap();

    // A restarted under the same id takes its live lease back at once, under
    // a new epoch, which fences the process it replaced.
    // (B's connection stands in for the restarted process's.)
    let claim = b.claim("node-a", "http://a:2", TTL, None).await.unwrap();
    assert!(claim.mine);
    assert_eq!((claim.epoch, claim.address.as_str()), (4, "http://a:2"));
    match a.append(vec![rec("t/1", "the old process")]).await {
        Err(AppendError::Fenced { epoch: Some(3) }) => {}
        other => panic!("unexpected {other:?}"),
    }

    let payloads: Vec<String> = assert_one_gapless_chain(&a)
        .await
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    assert_eq!(
        payloads,
        [
            "decided by a",
            "webhook via b",
            "decided by b",
            "webhook via a",
            "decided by a again",
        ]
    );
    a.close().await;
    b.close().await;
}

/// A person's keys found in a shard other than the erasing one (the store
/// does not know which shard decides for which page): erasure (and
/// retention) in one shard destroys them in all, and the other shard's
/// nodes forget their copies at once.
#[tokio::test]
async fn erasure_destroys_a_persons_keys_in_every_shard() {
    let server = shared();
    let config = server.store_config().unwrap();
    let database = config.url.rsplit('/').next().unwrap().to_owned();
    // Shard 0's nodes poll once an hour: only the erasure's notification
    // can tell them in time.
    let mut quiet = config.clone();
    quiet.poll_interval = Duration::from_secs(3600);
    let zero = PgStore::connect(quiet.clone()).await.unwrap();
    let zero_again = PgStore::connect(quiet).await.unwrap();
    let one = PgStore::connect(config.with_shard(1)).await.unwrap();
    let keys_of = |subject: &str| {
        server
            .psql(
                &database,
                &format!(
                    "SELECT shard FROM event_log_keys WHERE subject = '{subject}' ORDER BY shard"
                ),
            )
            .unwrap()
    };

    // Shard 0 seals Alice's words (page 2, decided by shard 1) and Bob's.
    let alice = zero
        .vault()
        .seal(&["2/alice"], 20_000, b"alice said")
        .unwrap();
    let bob = zero.vault().seal(&["1/bob"], 20_000, b"bob said").unwrap();
    zero.append(vec![rec("d", "delivery")]).await.unwrap();
    assert_eq!(keys_of("2/alice").trim(), "0");
    // Another node of shard 0 loads the key after its next read.
    all_records(&zero_again).await;
    assert!(zero_again.vault().open_sealed(&alice).unwrap().is_some());

    // Shard 1's owner erases Alice: her key in shard 0 goes too, Bob's stays.
    one.vault().erase_subject("2/alice").unwrap();
    one.append(vec![rec("e", "erased")]).await.unwrap();
    assert_eq!(keys_of("2/alice").trim(), "");
    assert_eq!(keys_of("1/bob").trim(), "0");
    let noted = server
        .psql(&database, "SELECT shard FROM event_log_key_erasures")
        .unwrap();
    assert_eq!(noted.trim(), "0", "noted for shard 0's nodes");

    // Shard 0's nodes forget their copies without reading anything: the
    // erasure notifies shard 0's channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for node in [&zero, &zero_again] {
        while node.vault().open_sealed(&alice).unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "Alice's key is forgotten"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            node.vault().open_sealed(&bob).unwrap().as_deref(),
            Some(&b"bob said"[..])
        );
    }
    // A page's retention reaches every shard too: Bob's old days, by prefix.
    one.vault().erase_before("1/", 20_001).unwrap();
    one.append(vec![rec("e", "expired")]).await.unwrap();
    assert_eq!(keys_of("1/bob").trim(), "");
    // A prefix's wildcards are taken literally: "%" erases nobody's key.
    zero.vault()
        .seal(&["3/carl"], 20_000, b"carl said")
        .unwrap();
    zero.append(vec![rec("d", "carl")]).await.unwrap();
    one.vault().erase_before("%", u32::MAX).unwrap();
    one.append(vec![rec("e", "nothing")]).await.unwrap();
    assert_eq!(keys_of("3/carl").trim(), "0");
    zero.close().await;
    zero_again.close().await;
    one.close().await;
}
