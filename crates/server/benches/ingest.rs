//! Ingest load generator: posts pre-signed, distinct webhook bodies to the
//! real server over many connections and reports items/s and acknowledgement
//! latency (p50/p99/p999), first with the durable sled log, then in the same
//! run with the in-memory log (no disk: persistence switched off), and prints
//! the ratios; for bodies of 1, 4 and 10 items. The same load then runs on
//! PostgreSQL (a local server the benchmark starts, as the tests do; durable
//! at COMMIT) for the PostgreSQL/sled ratio (`BATON_BENCH_POSTGRES=0` skips
//! it). After each durable run it reads the log back and checks that every
//! acknowledged item is stored exactly once.
//! Run: `cargo bench -p server --bench ingest`
//! (`BATON_BENCH_DELIVERIES=20000` for a longer run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_log::postgres::testing::TestServer;
use event_log::{EventStore, MemoryStore, PgStore, SledStore};
use server::{Config, ManualClock};

use test_support::{BOT_SECRET, HUMAN_SECRET, PAGE};

const CONNECTIONS: usize = 32;
const ITEMS_PER_DELIVERY: [usize; 3] = [1, 4, 10];

fn config() -> Config {
    let text = test_support::BatonToml::new("http://127.0.0.1:9").render();
    Config::parse(&text, "bench.toml", |_| None).expect("bench config")
}

/// Delivery `n`: a batch of messages over many threads, as the bot's copy on
/// `messaging`; every third delivery is the human app's `standby` copy of the
/// previous one (so dedupe of copies is exercised too).
fn delivery(n: usize, items_per_delivery: usize) -> (String, Vec<u8>) {
    let t0: i64 = 1_793_523_600_000;
    let (app, channel, base) = if n % 3 == 2 {
        ("1002", "standby", n - 1)
    } else {
        ("1001", "messaging", n)
    };
    let items: Vec<serde_json::Value> = (0..items_per_delivery)
        .map(|i| {
            let psid = format!("user-{}", (base * items_per_delivery + i) % 5000);
            serde_json::json!({
                "sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": t0 + base as i64,
                "message": {"mid": format!("m.{base}.{i}"), "text": "Hello, is my order shipped yet? Order #12345"}
            })
        })
        .collect();
    let body = serde_json::json!({"object": "page", "entry": [{"id": PAGE, "time": t0 + base as i64, channel: items}]});
    (app.to_owned(), serde_json::to_vec(&body).unwrap())
}

struct Outcome {
    events_per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

async fn run<S: EventStore + 'static>(store: Arc<S>, deliveries: usize, items: usize) -> Outcome {
    let clock = Arc::new(ManualClock::new(test_support::T0));
    let running = server::start(config(), store, clock)
        .await
        .expect("server starts");
    let url = running.base_url();
    // Signed before the clock starts: the load generator only sends.
    let bodies: Arc<Vec<(String, Vec<u8>, String)>> = Arc::new(
        (0..deliveries)
            .map(|n| {
                let (app, body) = delivery(n, items);
                let secret = if app == test_support::BOT {
                    BOT_SECRET
                } else {
                    HUMAN_SECRET
                };
                let sig = wire::signature::sign_sha256(secret.as_bytes(), &body);
                (app, body, sig)
            })
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (bodies, next, url) = (bodies.clone(), next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= bodies.len() {
                    return latencies;
                }
                let (app, body, sig) = &bodies[n];
                let t = Instant::now();
                let res = http
                    .post(format!("{url}/webhooks/{app}"))
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig.as_str())
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(res.status(), 200, "delivery {n} refused");
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    running.stop().await;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let events = deliveries * items;
    Outcome {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
    }
}

/// Every item the bot's deliveries carried is in the log exactly once (the
/// human's standby copies are copies of those, never new facts).
async fn stored_exactly_once<S: EventStore>(store: &S, deliveries: usize, items: usize) {
    let records = store.read_all(1, usize::MAX).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for r in records
        .iter()
        .filter(|r| r.type_name == "MessagingEventReceived")
    {
        let event = domain::Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap();
        if let domain::Event::MessagingEventReceived(e) = event {
            assert!(
                seen.insert(e.dedupe_key.clone()),
                "{} stored twice",
                e.dedupe_key
            );
        }
    }
    let bot_deliveries = (0..deliveries).filter(|n| n % 3 != 2).count();
    assert_eq!(
        seen.len(),
        bot_deliveries * items,
        "every acknowledged item stored once"
    );
}

fn main() {
    let deliveries: usize = test_support::env_count("BATON_BENCH_DELIVERIES", 6000);
    let rt = test_support::runtime();
    // A local PostgreSQL (the project's test server) for the same load, unless
    // BATON_BENCH_POSTGRES=0.
    let pg = (std::env::var("BATON_BENCH_POSTGRES").as_deref() != Ok("0")).then(|| {
        TestServer::start().expect("a local PostgreSQL (BATON_BENCH_POSTGRES=0 skips it)")
    });
    rt.block_on(async {
        // Warm up both paths once (connection pools, allocator, page cache).
        let _ = run(Arc::new(MemoryStore::new()), 300, 4).await;
        println!("ingest: {deliveries} signed, distinct deliveries over {CONNECTIONS} connections, per body size");
        println!("{:<8} {:<28} {:>12} {:>10} {:>10} {:>10}", "items", "backend", "items/s", "p50", "p99", "p999");
        for items in ITEMS_PER_DELIVERY {
            let dir = tempfile::tempdir().unwrap();
            let sled = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
            let durable = run(sled.clone(), deliveries, items).await;
            stored_exactly_once(sled.as_ref(), deliveries, items).await;
            let memory = run(Arc::new(MemoryStore::new()), deliveries, items).await;
            let postgres = match &pg {
                Some(server) => {
                    let config = server.store_config().expect("a database");
                    let store = Arc::new(PgStore::connect(config).await.expect("PostgreSQL"));
                    let o = run(store.clone(), deliveries, items).await;
                    stored_exactly_once(store.as_ref(), deliveries, items).await;
                    Some(o)
                }
                None => None,
            };
            let rows = [("sled (durable, fdatasync)", Some(&durable)), ("memory (persistence off)", Some(&memory)), ("postgres (durable, COMMIT)", postgres.as_ref())];
            for (name, o) in rows {
                let Some(o) = o else { continue };
                println!("{items:<8} {name:<28} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}", o.events_per_sec, o.p50, o.p99, o.p999);
            }
            println!(
                "{items:<8} durable/memory throughput: {:.2} (target >= 0.70); p99 durable/memory: {:.2} (target <= 2.0); every item stored once",
                durable.events_per_sec / memory.events_per_sec,
                durable.p99.as_secs_f64() / memory.p99.as_secs_f64()
            );
            if let Some(p) = &postgres {
                println!(
                    "{items:<8} postgres/sled throughput: {:.2}; p99 postgres/sled: {:.2}",
                    p.events_per_sec / durable.events_per_sec,
                    p.p99.as_secs_f64() / durable.p99.as_secs_f64()
                );
            }
        }
    });
}
