//! Scale: one million distinct threads fed to a durable server, one message
//! each, as issue 17 describes. Reports, per slice of 100,000 deliveries,
//! the acknowledgement latency (p50, p99, p99.9) and the ratio of each
//! slice's p99 to the first slice's (the baseline, in the same run); then
//! resident bytes per thread, bytes on disk per delivery against the raw
//! webhook bytes, and the time to ready after a restart on the same data:
//! from the projection snapshot the stop wrote, and then without it (the
//! whole log folded, the baseline). Afterwards it checks that every
//! acknowledged item is stored exactly once.
//!
//! Run: `cargo bench -p server --bench scale` (`BATON_BENCH_THREADS=200000`
//! for a shorter run; the slice is a tenth of the total;
//! `BATON_BENCH_SNAPSHOT_EVERY=0` for no background snapshot during it;
//! `BATON_BENCH_DATA_DIR=<empty or new directory>` to keep the data
//! directory afterwards, to look at or to time a restart on).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_log::{EventStore, SledStore};
use server::{Config, ManualClock};
use test_support::{BOT, BOT_SECRET, PAGE};

const CONNECTIONS: usize = 32;

fn config(data_dir: &Path) -> Config {
    let mut toml = test_support::BatonToml::new("http://127.0.0.1:9").data_dir(data_dir);
    // `BATON_BENCH_SNAPSHOT_EVERY=0`: no background snapshot during the run
    // (the default writes one per million records).
    if let Ok(every) = std::env::var("BATON_BENCH_SNAPSHOT_EVERY") {
        toml = toml.setting(&format!("snapshot_every_records = {every}"));
    }
    let text = toml.render();
    Config::parse(&text, "bench.toml", |_| None).expect("bench config")
}

/// Delivery `n`: the first message of sender `n`, as Meta sends it.
fn delivery(n: usize) -> Vec<u8> {
    let at = test_support::T0.millis() + n as i64;
    format!(
        r#"{{"object":"page","entry":[{{"id":"{PAGE}","time":{at},"messaging":[{{"sender":{{"id":"{psid}"}},"recipient":{{"id":"{PAGE}"}},"timestamp":{at},"message":{{"mid":"m_{n}","text":"Hello, is my order shipped yet? Order #{n}"}}}}]}}]}}"#,
        psid = 7_000_000_000_000_000u64 + n as u64,
    )
    .into_bytes()
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_bytes(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Posts deliveries `0..threads` over [`CONNECTIONS`] connections; the
/// latency of delivery `n` is at index `n`.
async fn feed(url: &str, threads: usize) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (next, url) = (next.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= threads {
                    return latencies;
                }
                let body = delivery(n);
                let sig = wire::signature::sign_sha256(BOT_SECRET.as_bytes(), &body);
                let t = Instant::now();
                let res = http
                    .post(format!("{url}/webhooks/{BOT}"))
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                let status = res.status();
                if status != 200 {
                    let why = res.text().await.unwrap_or_default();
                    panic!("delivery {n} refused with {status}: {why}");
                }
                latencies.push((n, t.elapsed()));
            }
        }));
    }
    let mut latencies = vec![Duration::ZERO; threads];
    for t in tasks {
        for (n, d) in t.await.unwrap() {
            latencies[n] = d;
        }
    }
    latencies
}

/// Every acknowledged item is in the log exactly once.
async fn stored_exactly_once<S: EventStore>(store: &S, threads: usize) {
    let mut seen = vec![false; threads];
    let mut from = 1;
    loop {
        let records = store.read_all(from, 10_000).await.unwrap();
        let Some(last) = records.last() else { break };
        from = last.position + 1;
        for r in records
            .iter()
            .filter(|r| r.type_name == "MessagingEventReceived")
        {
            let event = domain::Event::decode(&r.type_name, r.schema_version, &r.payload).unwrap();
            if let domain::Event::MessagingEventReceived(e) = event {
                let n: usize = e
                    .dedupe_key
                    .rsplit_once(":m_")
                    .and_then(|(_, n)| n.parse().ok())
                    .expect("a message of this benchmark");
                assert!(!seen[n], "{} stored twice", e.dedupe_key);
                seen[n] = true;
            }
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "every acknowledged item is stored once");
}

fn main() {
    let threads = test_support::env_count("BATON_BENCH_THREADS", 1_000_000);
    let slice = (threads / 10).max(1);
    let rt = test_support::runtime();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = match std::env::var_os("BATON_BENCH_DATA_DIR") {
        Some(kept) => {
            let kept = std::path::PathBuf::from(kept);
            std::fs::create_dir_all(&kept).expect("BATON_BENCH_DATA_DIR can be created");
            let empty = std::fs::read_dir(&kept).map(|mut d| d.next().is_none());
            assert!(
                matches!(empty, Ok(true)),
                "BATON_BENCH_DATA_DIR must be empty"
            );
            kept
        }
        None => dir.path().to_path_buf(),
    };
    let raw_bytes: usize = (0..threads).map(|n| delivery(n).len()).sum();
    rt.block_on(async {
        let clock = Arc::new(ManualClock::new(test_support::T0));
        let store = Arc::new(SledStore::open(data_dir.join("log")).unwrap());
        let running = server::start(config(&data_dir), store.clone(), clock.clone())
            .await
            .expect("server starts");
        let before = test_support::resident_bytes();
        println!(
            "scale: {threads} distinct senders, one message each, over {CONNECTIONS} connections, durable sled log"
        );
        let started = Instant::now();
        let latencies = feed(&running.base_url(), threads).await;
        let elapsed = started.elapsed();
        let after = test_support::resident_bytes();
        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>12}",
            "slice", "p50", "p99", "p99.9", "p99/first"
        );
        let mut first_p99 = None;
        let mut worst: f64 = 0.0;
        for (i, chunk) in latencies.chunks(slice).enumerate() {
            let mut sorted = chunk.to_vec();
            sorted.sort();
            let p99 = percentile(&sorted, 0.99);
            let first = *first_p99.get_or_insert(p99);
            let ratio = p99.as_secs_f64() / first.as_secs_f64();
            worst = worst.max(ratio);
            println!(
                "{:<18} {:>10.2?} {:>10.2?} {:>10.2?} {:>12.2}",
                format!("{}..{}", i * slice, i * slice + chunk.len()),
                percentile(&sorted, 0.5),
                p99,
                percentile(&sorted, 0.999),
                ratio
            );
        }
        println!(
            "acks/s {:.0}; slowest slice p99 / first slice p99: {worst:.2} (target <= 2.0)",
            threads as f64 / elapsed.as_secs_f64()
        );
        println!(
            "resident bytes per thread: {:.0} (grew {} MiB over the run; target <= 300)",
            after.saturating_sub(before) as f64 / threads as f64,
            after.saturating_sub(before) >> 20
        );
        let stopping = Instant::now();
        running.stop().await;
        let stop = stopping.elapsed();
        stored_exactly_once(store.as_ref(), threads).await;
        Arc::into_inner(store)
            .expect("the server let go of the store")
            .close()
            .await;
        let disk = disk_bytes(&data_dir);
        let snapshot = disk_bytes(&data_dir.join("snapshots"));
        let segments = disk_bytes(&data_dir.join("log/segments"));
        let vault = disk_bytes(&data_dir.join("log/vault"));
        let sled = disk_bytes(&data_dir.join("log")) - segments - vault;
        println!(
            "disk per delivery: {:.0} bytes (the records in segments {:.0}, sled's indexes {:.0}, the key vault {:.0}, the projection snapshot {:.0}); raw webhook bytes per delivery: {:.0}; ratio {:.2} (target <= 2.0)",
            disk as f64 / threads as f64,
            segments as f64 / threads as f64,
            sled as f64 / threads as f64,
            vault as f64 / threads as f64,
            snapshot as f64 / threads as f64,
            raw_bytes as f64 / threads as f64,
            disk as f64 / raw_bytes as f64
        );
        println!("stop (the projection snapshot written at the stop included): {stop:.2?}");
        // Ready after a restart: with the snapshot the stop wrote (twice:
        // the first start also warms the page cache for the others), then
        // without it (the whole log folded), the baseline.
        let mut ready = Vec::new();
        for with_snapshot in [true, true, false] {
            if !with_snapshot {
                std::fs::remove_dir_all(data_dir.join("snapshots")).unwrap();
            }
            // As `baton serve` starts: the snapshot is read while the log
            // opens.
            let t = Instant::now();
            let reading = server::snapshot::start_reading(&config(&data_dir));
            let store = Arc::new(SledStore::open(data_dir.join("log")).unwrap());
            let open = t.elapsed();
            let running =
                server::start_reading(config(&data_dir), store.clone(), clock.clone(), reading)
                    .await
                    .expect("server restarts");
            let took = t.elapsed();
            let ok = reqwest::get(format!("{}/readyz", running.base_url()))
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let resumed = running.state.baton.resumed_from_snapshot;
            assert_eq!(resumed.is_some(), with_snapshot);
            println!(
                "ready after a restart at {threads} threads, {}: {took:.2?} (the store's open {open:.2?}; readyz {ok}; target <= 2 s)",
                if with_snapshot { "from the snapshot" } else { "folding the whole log" }
            );
            ready.push(took);
            running.stop().await;
            Arc::into_inner(store)
                .expect("the server let go of the store")
                .close()
                .await;
        }
        println!(
            "ready from the snapshot (second start) / folding the whole log: {:.2}",
            ready[1].as_secs_f64() / ready[2].as_secs_f64()
        );
    });
}
