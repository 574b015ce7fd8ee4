//! Send throughput: sends/s through Baton (gate + outbox + recorded outcome,
//! durable sled log) to the emulator, against the same client posting the
//! same requests to the emulator directly, at the same concurrency, in one
//! run; then the same through Baton on PostgreSQL (a local server the
//! benchmark starts; one node under the shard's lease, as `baton serve`
//! runs there), for the PostgreSQL/sled ratio (`BATON_BENCH_POSTGRES=0`
//! skips it). Run: `cargo bench -p server --bench send`
//! (`BATON_BENCH_SENDS=4000` for a longer run).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emulator::{AppConfig, Emulator, PageConfig, World};
use event_log::postgres::testing::TestServer;
use event_log::{PgStore, SledStore};
use serde_json::json;
use server::{Config, ManualClock};

use test_support::{BOT, BOT_SECRET, PAGE};

const USERS: usize = 200;
const CONCURRENCY: usize = 16;

fn config(graph: &str) -> Config {
    let unlimited = test_support::Tuning {
        rate: 1_000_000.0,
        burst: 1_000_000.0,
        ..test_support::Tuning::default()
    };
    let text = test_support::BatonToml::new(graph)
        .tuning(unlimited)
        .render();
    Config::parse(&text, "bench.toml", |_| None).expect("bench config")
}

struct Outcome {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(url: String, token: &'static str, sends: usize) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, url) = (next.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= sends {
                    return lat;
                }
                let body = json!({"recipient": {"id": format!("user-{}", n % USERS)}, "messaging_type": "RESPONSE", "message": {"text": format!("Your order #{n} has shipped")}});
                let t = Instant::now();
                let res = http.post(&url).bearer_auth(token).json(&body).send().await.expect("request");
                assert_eq!(res.status(), 200, "send {n} failed: {}", res.text().await.unwrap_or_default());
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Outcome {
        per_sec: sends as f64 / elapsed.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
    }
}

/// Sends/s direct and through Baton at `baton` (its threads' windows opened
/// first), with the emulator answering at once and then after 25 ms.
async fn measure(
    emulator: &emulator::EmulatorHandle,
    baton: &str,
    sends: usize,
) -> Vec<(u64, Outcome, Outcome)> {
    let ctl = emulator.control();
    ctl.set_callback(BOT, Some(&format!("{baton}/webhooks/{BOT}")))
        .await
        .unwrap();
    for u in 0..USERS {
        ctl.user_text(PAGE, &format!("user-{u}"), "where is my order?")
            .await
            .unwrap();
    }
    // Warm both paths.
    let _ = drive(
        format!("{}/v21.0/{PAGE}/messages", emulator.base_url()),
        "page-token-bot",
        200,
    )
    .await;
    let _ = drive(format!("{baton}/v21.0/me/messages"), "baton-bot", 200).await;
    let mut rows = Vec::new();
    // First with the emulator answering at once (Baton's whole cost shows),
    // then with Meta-like 25 ms answers held by the emulator.
    for latency in [0u64, 25] {
        if latency > 0 {
            let delay = emulator::FaultSpec::Delay {
                count: u32::MAX,
                endpoint: Some("messages".into()),
                millis: Some(latency),
            };
            ctl.add_fault(&delay).await.unwrap();
        }
        let n = if latency > 0 { sends / 4 } else { sends };
        let direct = drive(
            format!("{}/v21.0/{PAGE}/messages", emulator.base_url()),
            "page-token-bot",
            n,
        )
        .await;
        let through = drive(format!("{baton}/v21.0/me/messages"), "baton-bot", n).await;
        rows.push((latency, direct, through));
    }
    ctl.clear_faults().await.unwrap();
    rows
}

fn main() {
    let sends: usize = test_support::env_count("BATON_BENCH_SENDS", 2000);
    let rt = test_support::runtime();
    let pg = (std::env::var("BATON_BENCH_POSTGRES").as_deref() != Ok("0")).then(|| {
        TestServer::start().expect("a local PostgreSQL (BATON_BENCH_POSTGRES=0 skips it)")
    });
    rt.block_on(async {
        let world = World::default().with_page(PageConfig::conversation_routing(PAGE, BOT)).with_app(
            AppConfig::new(BOT, BOT_SECRET)
                .with_token(PAGE, "page-token-bot")
                // No echoes: both runs then cost Meta's side the same.
                .with_fields(&["messages", "messaging_postbacks", "messaging_handovers", "standby"]),
        );
        let emulator = Emulator::start(world).expect("emulator");
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
        let clock = || Arc::new(ManualClock::new(domain::Timestamp::from_millis(emulator::DEFAULT_EPOCH_MS)));
        let mut sled_config = config(&emulator.base_url());
        sled_config.data_dir = dir.path().to_path_buf();
        let baton = server::start(sled_config, store, clock()).await.expect("baton");
        let sled = measure(&emulator, &baton.base_url(), sends).await;
        baton.stop().await;
        let postgres = match &pg {
            Some(server) => {
                let store = Arc::new(PgStore::connect(server.store_config().expect("a database")).await.expect("PostgreSQL"));
                let cluster = server::Cluster { lease: Duration::from_secs(10), advertise_url: None, node_id: Some("bench".into()) };
                let baton = server::start_leased(config(&emulator.base_url()), store, clock(), cluster).await.expect("baton");
                let rows = measure(&emulator, &baton.base_url(), sends).await;
                baton.stop().await;
                Some(rows)
            }
            None => None,
        };
        println!("send: {sends} sends over {CONCURRENCY} connections to {USERS} threads");
        println!("{:<10} {:<36} {:>10} {:>10} {:>10}", "graph", "path", "sends/s", "p50", "p99");
        for (i, (latency, direct, through)) in sled.iter().enumerate() {
            let label = format!("{latency} ms");
            println!("{label:<10} {:<36} {:>10.0} {:>10.2?} {:>10.2?}", "client -> emulator (direct)", direct.per_sec, direct.p50, direct.p99);
            println!("{label:<10} {:<36} {:>10.0} {:>10.2?} {:>10.2?}", "client -> Baton (sled) -> emulator", through.per_sec, through.p50, through.p99);
            println!(
                "{label:<10} through/direct throughput: {:.2} (target >= 0.70: gate and outbox cost at most 30%)",
                through.per_sec / direct.per_sec
            );
            if let Some((_, pg_direct, pg)) = postgres.as_ref().map(|rows| &rows[i]) {
                println!("{label:<10} {:<36} {:>10.0} {:>10.2?} {:>10.2?}", "client -> Baton (postgres) -> emulator", pg.per_sec, pg.p50, pg.p99);
                println!(
                    "{label:<10} postgres/sled sends/s: {:.2}; p99 postgres/sled: {:.2}; postgres through/direct: {:.2}",
                    pg.per_sec / through.per_sec,
                    pg.p99.as_secs_f64() / through.p99.as_secs_f64(),
                    pg.per_sec / pg_direct.per_sec
                );
            }
        }
    });
}
