//! Durable append throughput: group commit against one flush per record,
//! with 1, 16 and 256 concurrent writers, in one run on one machine.
//!
//! `cargo bench -p event-log --bench append`; set `BATON_BENCH_SCALE=N` to
//! multiply the record counts by N, and `BATON_BENCH_WRITERS=256` (say) to
//! run one concurrency only. The in-memory store is shown as a
//! no-durability reference. "per group" is the records each durable group
//! held on average (each group is one `fdatasync`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_log::{EventStore, MemoryStore, NewRecord, SledStore, StoreConfig};

struct Outcome {
    appends: usize,
    elapsed: Duration,
    waits: Vec<Duration>,
    /// Durable groups written (sled only).
    groups: u64,
}

impl Outcome {
    fn per_second(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.waits.len() as f64 - 1.0) * p).round() as usize;
        self.waits[index]
    }
}

async fn run<S: EventStore + 'static>(store: Arc<S>, writers: usize, appends: usize) -> Outcome {
    let per_writer = appends.div_ceil(writers);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut waits = Vec::with_capacity(per_writer);
                for n in 0..per_writer {
                    let payload = format!(
                        r#"{{"object":"page","entry":[{{"id":"1","messaging":[{{"sender":{{"id":"{w}"}},"message":{{"mid":"m.{n}","text":"hello there"}}}}]}}]}}"#
                    );
                    let record = NewRecord::new(format!("thread/1/{w}"), "MessageReceived", 1, payload)
                        .idempotency_key(format!("m.{w}.{n}"));
                    let t = Instant::now();
                    store.append(vec![record]).await.expect("append");
                    waits.push(t.elapsed());
                }
                waits
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(per_writer * writers);
    for task in tasks {
        waits.extend(task.await.expect("writer task"));
    }
    let elapsed = start.elapsed();
    waits.sort_unstable();
    Outcome {
        appends: per_writer * writers,
        elapsed,
        waits,
        groups: 0,
    }
}

async fn sled_run(config: StoreConfig, writers: usize, appends: usize) -> Outcome {
    // Under the target directory rather than /tmp, which may be a tmpfs
    // where fsync costs nothing.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let store = Arc::new(SledStore::open_with(dir.path(), config).expect("open"));
    let mut outcome = run(store.clone(), writers, appends).await;
    outcome.groups = store.groups();
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close().await;
    }
    outcome
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let scale: usize = std::env::var("BATON_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let only: Option<usize> = std::env::var("BATON_BENCH_WRITERS")
        .ok()
        .and_then(|s| s.parse().ok());
    println!(
        "{:>7} | {:<22} | {:>7} | {:>12} | {:>10} | {:>10} | {:>9} | {:>12}",
        "writers",
        "mode",
        "appends",
        "appends/s",
        "p50 wait",
        "p99 wait",
        "per group",
        "group/single"
    );
    println!("{}", "-".repeat(111));
    runtime.block_on(async {
        for writers in [1usize, 16, 256] {
            if only.is_some_and(|only| only != writers) {
                continue;
            }
            // One flush per record costs a flush per append whatever the
            // concurrency, so it gets a smaller count to keep the run short.
            let single = sled_run(StoreConfig::one_flush_per_batch(), writers, 2_000 * scale).await;
            let group_count = match writers {
                1 => 2_000,
                16 => 10_000,
                _ => 51_200,
            } * scale;
            let group = sled_run(StoreConfig::default(), writers, group_count).await;
            let ratio = group.per_second() / single.per_second();
            for (mode, outcome, ratio) in [
                ("sled, flush per record", &single, String::new()),
                ("sled, group commit", &group, format!("{ratio:.1}x")),
            ] {
                println!(
                    "{:>7} | {:<22} | {:>7} | {:>12.0} | {:>10} | {:>10} | {:>9.1} | {:>12}",
                    writers,
                    mode,
                    outcome.appends,
                    outcome.per_second(),
                    ms(outcome.percentile(0.50)),
                    ms(outcome.percentile(0.99)),
                    outcome.appends as f64 / outcome.groups.max(1) as f64,
                    ratio
                );
            }
        }
        let memory = run(Arc::new(MemoryStore::new()), 256, 51_200 * scale).await;
        println!(
            "{:>7} | {:<22} | {:>7} | {:>12.0} | {:>10} | {:>10} | {:>9} | {:>12}",
            256,
            "memory (no durability)",
            memory.appends,
            memory.per_second(),
            ms(memory.percentile(0.50)),
            ms(memory.percentile(0.99)),
            "",
            ""
        );
    });
}
