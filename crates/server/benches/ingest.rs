//! Ingest load generator: posts pre-signed, distinct webhook bodies to the
//! real server over many connections and reports items/s and acknowledgement
//! latency (p50/p99/p999), first with the durable sled log, then in the same
//! run with the in-memory log (no disk: persistence switched off), and prints
//! the ratios; for bodies of 1, 4 and 10 items. The same load then runs on
//! PostgreSQL (a local server the benchmark starts, as the tests do; durable
//! at COMMIT) for the PostgreSQL/sled ratio (`BATON_BENCH_POSTGRES=0` skips
//! it), as `baton serve` runs there (under the shard's lease), and then on
//! three nodes sharing the database, the load spread over them in turn (a
//! load balancer's round robin), for the 3-node/1-node ratio. After each
//! durable run it reads the log back and checks that every acknowledged item
//! is stored exactly once.
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
    // Whatever the server keeps beside the log (a projection snapshot at
    // the stop, on sled) goes to a directory of the run's own.
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut config = config();
    config.data_dir = scratch.path().to_path_buf();
    let running = server::start(config, store, clock)
        .await
        .expect("server starts");
    let outcome = load(&[running.base_url()], deliveries, items).await;
    running.stop().await;
    outcome
}

/// `nodes` Baton nodes on one PostgreSQL database, each under the shard's
/// lease as `baton serve` runs there; the load goes to them in turn.
async fn run_nodes(
    server: &TestServer,
    nodes: usize,
    deliveries: usize,
    items: usize,
) -> (Outcome, PgStore) {
    let database = server.store_config().expect("a database");
    let mut running = Vec::new();
    for n in 0..nodes {
        let store = Arc::new(
            PgStore::connect(database.clone())
                .await
                .expect("PostgreSQL"),
        );
        let cluster = server::Cluster {
            lease: Duration::from_secs(10),
            advertise_url: None,
            node_id: Some(format!("bench-{n}")),
        };
        let clock = Arc::new(ManualClock::new(test_support::T0));
        running.push(
            server::start_leased(config(), store, clock, cluster)
                .await
                .expect("node starts"),
        );
    }
    let urls: Vec<String> = running.iter().map(|r| r.base_url()).collect();
    let outcome = load(&urls, deliveries, items).await;
    for node in running {
        node.stop().await;
    }
    let reader = PgStore::connect(database).await.expect("PostgreSQL");
    (outcome, reader)
}

/// Fires the signed deliveries at `urls` (in turn) over the connections.
async fn load(urls: &[String], deliveries: usize, items: usize) -> Outcome {
    let urls: Arc<Vec<String>> = Arc::new(urls.to_vec());
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
        let (bodies, next, urls) = (bodies.clone(), next.clone(), urls.clone());
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
                let url = &urls[n % urls.len()];
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
            let (postgres, three) = match &pg {
                Some(server) => {
                    let (one, store) = run_nodes(server, 1, deliveries, items).await;
                    stored_exactly_once(&store, deliveries, items).await;
                    store.close().await;
                    let (three, store) = run_nodes(server, 3, deliveries, items).await;
                    stored_exactly_once(&store, deliveries, items).await;
                    store.close().await;
                    (Some(one), Some(three))
                }
                None => (None, None),
            };
            let rows = [("sled (durable, fdatasync)", Some(&durable)), ("memory (persistence off)", Some(&memory)), ("postgres (1 node, COMMIT)", postgres.as_ref()), ("postgres (3 nodes, COMMIT)", three.as_ref())];
            for (name, o) in rows {
                let Some(o) = o else { continue };
                println!("{items:<8} {name:<28} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}", o.events_per_sec, o.p50, o.p99, o.p999);
            }
            println!(
                "{items:<8} durable/memory throughput: {:.2} (target >= 0.70); p99 durable/memory: {:.2} (target <= 2.0); every item stored once",
                durable.events_per_sec / memory.events_per_sec,
                durable.p99.as_secs_f64() / memory.p99.as_secs_f64()
            );
            if let (Some(p), Some(t)) = (&postgres, &three) {
                println!(
                    "{items:<8} postgres/sled throughput: {:.2}; p99 postgres/sled: {:.2}; 3 nodes/1 node throughput: {:.2}; p99 3 nodes/1 node: {:.2}",
                    p.events_per_sec / durable.events_per_sec,
                    p.p99.as_secs_f64() / durable.p99.as_secs_f64(),
                    t.events_per_sec / p.events_per_sec,
                    t.p99.as_secs_f64() / p.p99.as_secs_f64()
                );
            }
        }
    });
}
