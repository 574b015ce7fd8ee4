//! Dispatch against real HTTP backends on port 0 and a real event log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dispatch::{dead_letters, request_redrive, Dispatcher, ManualClock, RedriveError};
use domain::events::{Channel, DeliveryCopy, InboundEvent, MessagingEventReceived};
use domain::ids::{Span, Timestamp};
use domain::Event;
use event_log::{EventStore, MemoryStore, SledStore};
use wire::signature::{accepted, check_signatures};

fn spawn<S: EventStore + 'static>(d: &Arc<Dispatcher<S>>) -> tokio::task::JoinHandle<()> {
    let d = Arc::clone(d);
    tokio::spawn(async move {
        d.run().await.unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_gets_messaging_other_app_gets_standby_signed_in_both_schemes() {
    let bot = Backend::start();
    let inbox = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::starting_now());
    let cfg = config(
        &[(BOT, &bot, BOT_SECRET), (INBOX, &inbox, INBOX_SECRET)],
        dir.path(),
        clock,
    );
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let task = spawn(&d);

    let first = Event::MessagingEventReceived(MessagingEventReceived {
        thread: thread("u1"),
        at: Timestamp::from_millis(1_700_000_000_000),
        dedupe_key: "m-u1-0".into(),
        delivery: DeliveryCopy {
            app: app(BOT),
            channel: Channel::Messaging,
        },
        event: InboundEvent::Message {
            mid: "m-u1-0".into(),
            text: Some("hello 0".into()),
            attachment_types: vec![],
            reply_to: None,
            referral: None,
        },
        window: None,
        raw: raw_message("u1", 0, "hello 0"),
        distrusted_time: false,
    });
    let positions = append(
        store.as_ref(),
        &[
            first,
            copy("u1", 0, INBOX, Channel::Standby),
            unattributed(INBOX, 7),
        ],
    )
    .await;

    bot.wait_until("bot gets its copy", |b| b.delivered().len() == 1)
        .await;
    inbox
        .wait_until("inbox gets its two items", |b| b.delivered().len() == 2)
        .await;

    for (backend, secret, other_secret, channel) in [
        (&bot, BOT_SECRET, INBOX_SECRET, "messaging"),
        (&inbox, INBOX_SECRET, BOT_SECRET, "standby"),
    ] {
        let got = backend
            .delivered()
            .into_iter()
            .find(|r| r.json()["entry"][0][channel][0]["sender"]["id"] == "u1")
            .expect("the thread item");
        let body = got.json();
        assert_eq!(body["object"], "page");
        let entries = body["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["id"], PAGE);
        assert!(entries[0]["time"].as_i64().unwrap() > 0);
        assert_eq!(
            entries[0][channel],
            serde_json::json!([raw_message("u1", 0, "hello 0")])
        );
        let other = if channel == "messaging" {
            "standby"
        } else {
            "messaging"
        };
        assert!(
            entries[0].get(other).is_none(),
            "only the channel Meta used"
        );
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        let check = check_signatures(
            secret.as_bytes(),
            &got.body,
            got.sig256.as_deref(),
            got.sig1.as_deref(),
        );
        assert_eq!(check.sha256, domain::events::SignatureResult::Valid);
        assert_eq!(check.sha1, domain::events::SignatureResult::Valid);
        let wrong = check_signatures(
            other_secret.as_bytes(),
            &got.body,
            got.sig256.as_deref(),
            got.sig1.as_deref(),
        );
        assert!(!accepted(&wrong), "signed with this app's secret only");
    }
    // The page-level item goes only to the app Meta delivered it to.
    let page_item = inbox
        .delivered()
        .into_iter()
        .find(|r| r.json()["entry"][0]["messaging"][0]["mystery"] == 7);
    assert!(page_item.is_some());
    assert_eq!(bot.delivered().len(), 1);

    let status = wait_status(&d, INBOX, "both settled", |s| s.delivered == 2).await;
    wait_status(&d, BOT, "settled", |s| s.delivered == 1).await;
    // Settled: the cursor passed every record.
    assert_eq!(status.cursor, positions[2] + 1);
    let metrics = d.render_metrics();
    assert!(
        metrics.contains("baton_dispatch_delivered_total{app=\"222\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_dispatch_queue_depth{app=\"111\"} 0"),
        "{metrics}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["queue_depth"], 0);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_a_while_then_back_receives_everything_in_order() {
    let bot = Backend::start();
    // Down: the first 40 POSTs fail.
    let failures_left = Arc::new(std::sync::atomic::AtomicU64::new(40));
    let left = Arc::clone(&failures_left);
    bot.set_policy(move |_| {
        let ok = left
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_err();
        if ok {
            Reply::Ok
        } else {
            Reply::Fail(503)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut cfg = config(
        &[(BOT, &bot, BOT_SECRET)],
        dir.path(),
        Arc::new(ManualClock::starting_now()),
    );
    // A small pending window: reading pauses while the backend is down and
    // resumes as items settle (back-pressure), without losing any.
    cfg.max_pending = 7;
    cfg.read_batch = 4;
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let task = spawn(&d);

    let mut expected = BTreeMap::new();
    for seq in 0..20 {
        let events: Vec<Event> = ["a", "b", "c"]
            .iter()
            .map(|psid| copy(psid, seq, BOT, Channel::Messaging))
            .collect();
        append(store.as_ref(), &events).await;
    }
    for psid in ["a", "b", "c"] {
        expected.insert(psid.to_owned(), 20);
    }
    bot.wait_until("all 60 items", |b| b.delivered().len() >= 60)
        .await;
    let dups = check_order(&bot.items(), &expected);
    assert_eq!(dups, 0, "no crash, no timeout: no duplicates");
    let status = wait_status(&d, BOT, "all settled", |s| s.delivered == 60).await;
    assert_eq!(status.failures, 40);
    assert_eq!(status.dead_lettered, 0);
    assert_eq!(
        status.last_error.as_deref(),
        Some("backend answered 503 Service Unavailable")
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_down_does_not_slow_the_other() {
    let bot = Backend::start();
    let inbox = Backend::start();
    bot.set_policy(|_| Reply::Fail(500));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let cfg = config(
        &[(BOT, &bot, BOT_SECRET), (INBOX, &inbox, INBOX_SECRET)],
        dir.path(),
        Arc::new(ManualClock::starting_now()),
    );
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let task = spawn(&d);
    let mut expected = BTreeMap::new();
    for seq in 0..50 {
        let mut events = Vec::new();
        for psid in ["p0", "p1", "p2", "p3"] {
            events.push(copy(psid, seq, BOT, Channel::Messaging));
            events.push(copy(psid, seq, INBOX, Channel::Standby));
        }
        append(store.as_ref(), &events).await;
    }
    for psid in ["p0", "p1", "p2", "p3"] {
        expected.insert(psid.to_owned(), 50);
    }
    inbox
        .wait_until("the healthy backend gets all 200 items", |b| {
            b.delivered().len() >= 200
        })
        .await;
    // Measured at the moment the healthy backend finished: the other one is
    // still failing and has delivered nothing.
    assert!(bot.delivered().is_empty());
    assert!(bot.attempts() > 0);
    check_order(&inbox.items(), &expected);
    let bot_status = wait_status(&d, BOT, "all read", |s| s.queue_depth == 200).await;
    assert_eq!(bot_status.delivered, 0);
    assert!(bot_status.failures > 0);
    assert_eq!(bot_status.threads_pending, 4);
    wait_status(&d, INBOX, "drained", |s| {
        s.queue_depth == 0 && s.delivered == 200
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stuck_thread_does_not_block_the_other_threads_of_its_backend() {
    let bot = Backend::start();
    // Every POST for thread "stuck" hangs.
    bot.set_policy(|body| {
        if body["entry"][0]["messaging"][0]["sender"]["id"] == "stuck" {
            Reply::Hang
        } else {
            Reply::Ok
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut cfg = config(
        &[(BOT, &bot, BOT_SECRET)],
        dir.path(),
        Arc::new(ManualClock::starting_now()),
    );
    cfg.concurrency = 2;
    cfg.http_timeout = Duration::from_secs(120);
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let task = spawn(&d);
    let mut expected = BTreeMap::new();
    for seq in 0..30 {
        let events: Vec<Event> = ["stuck", "x", "y", "z"]
            .iter()
            .map(|psid| copy(psid, seq, BOT, Channel::Messaging))
            .collect();
        append(store.as_ref(), &events).await;
    }
    for psid in ["x", "y", "z"] {
        expected.insert(psid.to_owned(), 30);
    }
    bot.wait_until("the other threads get all 90 items", |b| {
        b.delivered().len() >= 90
    })
    .await;
    check_order(&bot.items(), &expected);
    // The stuck thread's first item is still in flight, the rest wait behind it.
    let status = wait_status(&d, BOT, "others settled", |s| s.delivered == 90).await;
    assert_eq!(status.queue_depth, 30);
    assert_eq!(status.in_flight, 1);
    assert_eq!(status.threads_pending, 1);
    assert_eq!(
        bot.attempts(),
        91,
        "the stuck thread was tried once and holds one slot"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_after_the_configured_age_then_the_thread_moves_on_and_redrive_redelivers() {
    let bot = Backend::start();
    bot.set_policy(|body| {
        if body["entry"][0]["messaging"][0]["message"]["text"] == "poison" {
            Reply::Fail(500)
        } else {
            Reply::Ok
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::starting_now());
    let mut cfg = config(&[(BOT, &bot, BOT_SECRET)], dir.path(), Arc::clone(&clock));
    cfg.dead_letter_age = Span::hours(1);
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let task = spawn(&d);

    let positions = append(
        store.as_ref(),
        &[
            copy_with_text("t", 0, BOT, Channel::Messaging, "poison"),
            copy("t", 1, BOT, Channel::Messaging),
            copy("t", 2, BOT, Channel::Messaging),
            copy("other", 0, BOT, Channel::Messaging),
        ],
    )
    .await;
    bot.wait_until(
        "the other thread is delivered and the poison tried thrice",
        |b| b.delivered().len() == 1 && b.attempts() >= 4,
    )
    .await;
    assert_eq!(key_of(&bot.items()[0].1), ("other".to_owned(), 0));
    assert!(dead_letters(store.as_ref(), &app(BOT))
        .await
        .unwrap()
        .is_empty());

    // Just over an hour passes (the clock started a moment before the item
    // was recorded): the poison item is dead-lettered, the thread moves on.
    clock.advance(Span(Span::HOUR.0 + Span::MINUTE.0));
    bot.wait_until("the rest of the thread flows", |b| b.delivered().len() == 3)
        .await;
    let seqs: Vec<_> = bot.items().iter().map(|(_, i)| key_of(i)).collect();
    assert_eq!(seqs[1..], [("t".to_owned(), 1), ("t".to_owned(), 2)]);

    let letters = dead_letters(store.as_ref(), &app(BOT)).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.event.position, positions[0]);
    assert_eq!(letter.event.thread, Some(thread("t")));
    assert!(letter.event.attempts >= 3);
    assert_eq!(
        letter.event.last_error,
        "backend answered 500 Internal Server Error"
    );
    assert!(!letter.redrive_requested);
    let status = wait_status(&d, BOT, "dead letter counted", |s| s.delivered == 3).await;
    assert_eq!(status.dead_lettered, 1);

    // Redrive: refused for a position that was never dead-lettered.
    let refused = request_redrive(
        store.as_ref(),
        &app(BOT),
        positions[1],
        "test",
        clock.now_ts(),
    )
    .await;
    assert!(matches!(refused, Err(RedriveError::NotDeadLettered { .. })));
    // The backend is fixed; the redrive delivers the item again.
    bot.set_policy(|_| Reply::Ok);
    request_redrive(
        store.as_ref(),
        &app(BOT),
        positions[0],
        "test",
        clock.now_ts(),
    )
    .await
    .unwrap();
    bot.wait_until("the redriven item arrives", |b| b.delivered().len() == 4)
        .await;
    let (_, item) = bot.items().pop().unwrap();
    assert_eq!(item["message"]["text"], "poison");
    let status = wait_status(&d, BOT, "redrive settled", |s| s.delivered == 4).await;
    assert_eq!(status.redriven, 1);
    assert!(dead_letters(store.as_ref(), &app(BOT)).await.unwrap()[0].redrive_requested);
    task.abort();
}

trait NowTs {
    fn now_ts(&self) -> Timestamp;
}

impl NowTs for ManualClock {
    fn now_ts(&self) -> Timestamp {
        dispatch::Clock::now(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_stream_and_restart_resumes_with_no_gap_and_no_reordering() {
    let bot = Backend::start();
    let inbox = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let cursors = dir.path().join("cursors");
    let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
    let threads: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let rounds = 60u64;
    let mut expected = BTreeMap::new();
    for psid in &threads {
        expected.insert(psid.clone(), rounds);
    }
    // Ingress keeps appending while the dispatcher is killed and restarted.
    let writer = {
        let store = Arc::clone(&store);
        let threads = threads.clone();
        tokio::spawn(async move {
            for seq in 0..rounds {
                let mut events = Vec::new();
                for psid in &threads {
                    events.push(copy(psid, seq, BOT, Channel::Messaging));
                    events.push(copy(psid, seq, INBOX, Channel::Standby));
                }
                append(store.as_ref(), &events).await;
                tokio::task::yield_now().await;
            }
        })
    };
    let make = || {
        let mut cfg = config(
            &[(BOT, &bot, BOT_SECRET), (INBOX, &inbox, INBOX_SECRET)],
            &cursors,
            Arc::new(ManualClock::starting_now()),
        );
        cfg.concurrency = 4;
        cfg
    };
    let first = Arc::new(Dispatcher::new(Arc::clone(&store), make()).await.unwrap());
    let task = spawn(&first);
    bot.wait_until("some items before the crash", |b| {
        b.delivered().len() >= 150
    })
    .await;
    task.abort();
    let _ = task.await;
    let cut = bot.delivered().len();
    assert!(cursors.join(format!("{BOT}.cursor")).exists());

    let second = Arc::new(Dispatcher::new(Arc::clone(&store), make()).await.unwrap());
    let resumed_from = second.app_status(&app(BOT)).unwrap().cursor;
    assert!(resumed_from > 1, "the first run's cursor was durable");
    let task = spawn(&second);
    writer.await.unwrap();
    let total = threads.len() * usize::try_from(rounds).unwrap();
    for backend in [&bot, &inbox] {
        backend
            .wait_until("every item after the restart", |b| {
                let mut distinct = std::collections::HashSet::new();
                b.items().iter().for_each(|(_, i)| {
                    distinct.insert(key_of(i));
                });
                distinct.len() == total
            })
            .await;
    }
    let bot_dups = check_order(&bot.items(), &expected);
    let inbox_dups = check_order(&inbox.items(), &expected);
    assert!(bot.items().iter().all(|(ch, _)| ch == "messaging"));
    assert!(inbox.items().iter().all(|(ch, _)| ch == "standby"));
    eprintln!(
        "restart: bot cut at {cut} deliveries, resumed from position {resumed_from}; duplicates: bot {bot_dups}, inbox {inbox_dups}"
    );
    // Duplicates are bounded by what was in flight or not yet in the cursor file.
    assert!(bot_dups < 150, "bot duplicates {bot_dups}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_and_writes_the_cursor_so_a_restart_redelivers_nothing() {
    let bot = Backend::start();
    let inbox = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let cursors = dir.path().join("cursors");
    let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
    let make = || {
        let mut cfg = config(
            &[(BOT, &bot, BOT_SECRET), (INBOX, &inbox, INBOX_SECRET)],
            &cursors,
            Arc::new(ManualClock::starting_now()),
        );
        // Only the shutdown writes the cursor in this test.
        cfg.cursor_flush_interval = Duration::from_secs(3600);
        cfg
    };
    let events: Vec<Event> = (0..40)
        .flat_map(|seq| {
            let psid = format!("t{}", seq % 4);
            [
                copy(&psid, seq, BOT, Channel::Messaging),
                copy(&psid, seq, INBOX, Channel::Standby),
            ]
        })
        .collect();
    append(store.as_ref(), &events).await;
    let first = Arc::new(Dispatcher::new(Arc::clone(&store), make()).await.unwrap());
    let trigger = orchestration::Trigger::new();
    let task = {
        let (d, signal) = (Arc::clone(&first), trigger.subscribe());
        tokio::spawn(async move { d.run_until(signal).await })
    };
    bot.wait_until("every item", |b| b.delivered().len() >= 40)
        .await;
    inbox
        .wait_until("every item", |b| b.delivered().len() >= 40)
        .await;
    trigger.fire();
    task.await.unwrap().unwrap();
    let status = first.app_status(&app(BOT)).unwrap();
    assert!(!status.running, "the worker stopped");
    assert_eq!(
        status.cursor_stored, status.cursor,
        "the stop wrote the cursor"
    );

    // A restart finds nothing left to deliver.
    let second = Arc::new(Dispatcher::new(Arc::clone(&store), make()).await.unwrap());
    let trigger = orchestration::Trigger::new();
    let task = {
        let (d, signal) = (Arc::clone(&second), trigger.subscribe());
        tokio::spawn(async move { d.run_until(signal).await })
    };
    let head = store.head().await.unwrap().position;
    wait_status(&second, BOT, "caught up", |s| s.read_position >= head).await;
    wait_status(&second, INBOX, "caught up", |s| s.read_position >= head).await;
    trigger.fire();
    task.await.unwrap().unwrap();
    assert_eq!(bot.delivered().len(), 40, "nothing redelivered to the bot");
    assert_eq!(
        inbox.delivered().len(),
        40,
        "nothing redelivered to the inbox"
    );
}
