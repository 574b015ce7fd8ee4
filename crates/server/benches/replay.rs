//! Replay speed and memory per thread.
//! 1. Replaying the log into projections (read + decode + fold) against merely
//!    reading and decoding it, in the same run (target: replay >= 50% of the
//!    read-and-decode speed).
//! 2. Resident bytes per tracked thread at one million threads.
//!
//! Run: `cargo bench -p server --bench replay` (`BATON_BENCH_THREADS` to change
//! the thread count of part 2).

use std::time::Instant;

use domain::events::{Channel, DeliveryCopy, InboundEvent};
use domain::rules::{self, Observation};
use domain::{
    AppId, AppKind, AppProfile, Event, Management, Page, PageId, Psid, RoutingMode, ThreadKey,
    ThreadLedger, Timestamp,
};
use event_log::{EventStore, MemoryStore, NewRecord};
use server::projections::State;

fn page() -> Page {
    let bot = AppId::parse("1001").unwrap();
    Page::new(
        PageId::parse("5550001").unwrap(),
        RoutingMode::ConversationRouting {
            default_app: bot.clone(),
        },
        [
            AppProfile::new(bot, AppKind::Bot, Management::Managed).allowed_to_take(),
            AppProfile::new(
                AppId::parse("1002").unwrap(),
                AppKind::Human,
                Management::Managed,
            ),
        ],
    )
}

/// A realistic thread history: messages on both channels, a pass to the human app and back.
fn thread_events(page: &Page, n: usize, t0: Timestamp) -> Vec<Event> {
    let key = ThreadKey::new(page.id.clone(), Psid::parse(format!("user-{n}")).unwrap());
    let mut ledger = ThreadLedger::new(key);
    let mut out = Vec::new();
    let observe = |ledger: &mut ThreadLedger, obs: Observation, out: &mut Vec<Event>| {
        for e in rules::observe(ledger, page, obs, t0) {
            ledger.apply(&e);
            out.push(e);
        }
    };
    for m in 0..3 {
        let mid = format!("m.{n}.{m}");
        let event = InboundEvent::Message {
            mid: mid.clone(),
            text: Some("Hello, where is my order?".into()),
            attachment_types: vec![],
            reply_to: None,
            referral: None,
        };
        let raw = serde_json::json!({"sender": {"id": format!("user-{n}")}, "recipient": {"id": "5550001"}, "timestamp": t0.millis(), "message": {"mid": mid, "text": "Hello, where is my order?"}});
        let bot = DeliveryCopy {
            app: AppId::parse("1001").unwrap(),
            channel: Channel::Messaging,
        };
        let human = DeliveryCopy {
            app: AppId::parse("1002").unwrap(),
            channel: Channel::Standby,
        };
        observe(
            &mut ledger,
            Observation::Item {
                at: t0,
                dedupe_key: mid.clone(),
                delivery: bot,
                event: event.clone(),
                raw: raw.clone(),
            },
            &mut out,
        );
        observe(
            &mut ledger,
            Observation::Copy {
                at: t0,
                dedupe_key: mid,
                delivery: human,
                event,
                raw,
            },
            &mut out,
        );
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let page = page();
    let t0 = Timestamp::from_millis(1_793_523_600_000);

    // Part 1: replay versus read-and-decode.
    let threads = 20_000;
    let store = MemoryStore::new();
    rt.block_on(async {
        for n in 0..threads {
            let batch: Vec<NewRecord> = thread_events(&page, n, t0)
                .iter()
                .map(orchestration::encode)
                .collect();
            store.append(batch).await.unwrap();
        }
    });
    let records = rt.block_on(store.read_all(1, usize::MAX)).unwrap();
    let n = records.len();
    let mut best_decode = f64::MAX;
    let mut best_replay = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut decoded = 0usize;
        for r in rt.block_on(store.read_all(1, usize::MAX)).unwrap() {
            if Event::decode(&r.type_name, r.schema_version, &r.payload).is_ok() {
                decoded += 1;
            }
        }
        assert_eq!(decoded, n);
        best_decode = best_decode.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut state = State::new([page.clone()]);
        for r in rt.block_on(store.read_all(1, usize::MAX)).unwrap() {
            state.apply_record(&r);
        }
        assert_eq!(state.thread_count(), threads);
        best_replay = best_replay.min(t.elapsed().as_secs_f64());
    }
    println!("replay: {n} records over {threads} threads (best of 3)");
    println!(
        "  read + decode:          {:>10.0} records/s",
        n as f64 / best_decode
    );
    println!(
        "  read + decode + fold:   {:>10.0} records/s",
        n as f64 / best_replay
    );
    println!(
        "  replay / read-and-decode: {:.2} (target >= 0.50)",
        best_decode / best_replay
    );
    drop(records);

    // Part 2: heap bytes per tracked thread.
    let million: usize = std::env::var("BATON_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let before = test_support::resident_bytes();
    let t = Instant::now();
    let mut state = State::new([page.clone()]);
    for n in 0..million {
        for e in thread_events(&page, n, t0) {
            state.apply(&e);
        }
    }
    let fold = t.elapsed().as_secs_f64();
    let after = test_support::resident_bytes();
    println!(
        "memory: {million} threads (3 messages on two channels each) hold {:.0} MiB: {:.0} bytes per thread (ledger + dedupe index)",
        (after - before) as f64 / (1024.0 * 1024.0),
        (after - before) as f64 / million as f64
    );

    // Part 3: the same state written as a projection snapshot and loaded
    // back (while the original is still held, as a start would find the
    // heap: not after freeing millions of entries), against folding its
    // events in part 2.
    let dir = tempfile::tempdir().unwrap();
    let config = orchestration::snapshot::config_digest(&State::new([page.clone()]));
    let t = Instant::now();
    let written =
        orchestration::snapshot::write(dir.path(), &state, event_log::ChainHash::ZERO, &config, 0)
            .unwrap();
    let write = t.elapsed().as_secs_f64();
    let empty = MemoryStore::new();
    let t = Instant::now();
    let loaded = rt
        .block_on(orchestration::snapshot::load(
            dir.path(),
            &State::new([page.clone()]),
            &empty,
        ))
        .unwrap()
        .expect("the snapshot loads");
    let load = t.elapsed().as_secs_f64();
    assert!(
        loaded == state,
        "the snapshot loads back to the state it was written from"
    );
    drop((loaded, state));
    println!(
        "snapshot: {million} threads in {:.0} bytes per thread; written in {write:.2} s, loaded in {load:.2} s; folding their events above (made in memory, not read or decoded) took {fold:.2} s; load / fold {:.2}",
        written.bytes as f64 / million as f64,
        load / fold
    );
}
