//! Ingest load generator: posts signed, realistic webhook batches to the real
//! server over many connections and reports events/s and acknowledgement
//! latency (p50/p99/p999), first with the durable sled log, then in the same
//! run with the in-memory log (no disk: persistence switched off), and prints
//! the ratios. Run: `cargo bench -p server --bench ingest`
//! (`BATON_BENCH_DELIVERIES=20000` for a longer run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_log::{EventStore, MemoryStore, SledStore};
use server::{Config, ManualClock};

use test_support::{BOT_SECRET, HUMAN_SECRET, PAGE};

const CONNECTIONS: usize = 32;
const ITEMS_PER_DELIVERY: usize = 4;

fn config() -> Config {
    let text = test_support::BatonToml::new("http://127.0.0.1:9").render();
    Config::parse(&text, "bench.toml", |_| None).expect("bench config")
}

/// Delivery `n`: a batch of messages over many threads, as the bot's copy on
/// `messaging`; every third delivery is the human app's `standby` copy of the
/// previous one (so dedupe of copies is exercised too).
fn delivery(n: usize) -> (String, Vec<u8>) {
    let t0: i64 = 1_793_523_600_000;
    let (app, channel, base) = if n % 3 == 2 {
        ("1002", "standby", n - 1)
    } else {
        ("1001", "messaging", n)
    };
    let items: Vec<serde_json::Value> = (0..ITEMS_PER_DELIVERY)
        .map(|i| {
            let psid = format!("user-{}", (base * ITEMS_PER_DELIVERY + i) % 5000);
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

async fn run<S: EventStore + 'static>(store: Arc<S>, deliveries: usize) -> Outcome {
    let clock = Arc::new(ManualClock::new(test_support::T0));
    let running = server::start(config(), store, clock)
        .await
        .expect("server starts");
    let url = running.base_url();
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new((0..deliveries).map(delivery).collect());
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
                let (app, body) = &bodies[n];
                let secret = if app == test_support::BOT {
                    BOT_SECRET
                } else {
                    HUMAN_SECRET
                };
                let sig = wire::signature::sign_sha256(secret.as_bytes(), body);
                let t = Instant::now();
                let res = http
                    .post(format!("{url}/webhooks/{app}"))
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
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
    let events = deliveries * ITEMS_PER_DELIVERY;
    Outcome {
        events_per_sec: events as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
    }
}

fn main() {
    let deliveries: usize = test_support::env_count("BATON_BENCH_DELIVERIES", 6000);
    let rt = test_support::runtime();
    rt.block_on(async {
        // Warm up both paths once (connection pools, allocator, page cache).
        let _ = run(Arc::new(MemoryStore::new()), 300).await;
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
        let durable = run(sled, deliveries).await;
        let memory = run(Arc::new(MemoryStore::new()), deliveries).await;
        println!("ingest: {deliveries} deliveries x {ITEMS_PER_DELIVERY} items over {CONNECTIONS} connections");
        println!("{:<28} {:>12} {:>10} {:>10} {:>10}", "backend", "events/s", "p50", "p99", "p999");
        for (name, o) in [("sled (durable, flush per ack)", &durable), ("memory (persistence off)", &memory)] {
            println!("{name:<28} {:>12.0} {:>10.2?} {:>10.2?} {:>10.2?}", o.events_per_sec, o.p50, o.p99, o.p999);
        }
        println!(
            "durable/memory throughput: {:.2} (target >= 0.70); p99 durable/memory: {:.2} (target <= 2.0)",
            durable.events_per_sec / memory.events_per_sec,
            durable.p99.as_secs_f64() / memory.p99.as_secs_f64()
        );
    });
}
