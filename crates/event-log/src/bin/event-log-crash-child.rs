//! Test helper for the crash test: appends to a sled log from many tasks
//! forever and prints `<position> <idempotency key>` for every acknowledged
//! record, one flushed line each, until it is killed (or, given a third
//! argument n, until it aborts itself between writing its nth group and
//! syncing it). Not a tool for users.

use std::io::Write;
use std::sync::Arc;

use event_log::{AppendError, EventStore, NewRecord, SledStore};

const TASKS: usize = 16;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(tag)) = (args.next(), args.next()) else {
        eprintln!("usage: event-log-crash-child <dir> <tag> [<abort before the nth sync>]");
        std::process::exit(2);
    };
    let abort_at: Option<u64> = args.next().and_then(|n| n.parse().ok());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    runtime.block_on(async move {
        let store = match SledStore::open(&dir) {
            Ok(store) => Arc::new(store),
            Err(e) => {
                eprintln!("open: {e}");
                std::process::exit(2);
            }
        };
        if let Some(n) = abort_at {
            // Dies between writing a group and syncing it: no unwinding, no
            // destructor, nothing more written.
            let groups = std::sync::atomic::AtomicU64::new(0);
            store.set_before_sync(move || {
                if groups.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == n {
                    std::process::abort();
                }
            });
        }
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let tag = tag.clone();
            tasks.push(tokio::spawn(async move {
                append_forever(&store, &tag, task).await
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

async fn append_forever(store: &SledStore, tag: &str, task: usize) {
    for n in 0u64.. {
        // Odd tasks append two-record batches to two streams, to exercise
        // batch atomicity across a crash.
        let size = 1 + task % 2;
        let batch: Vec<NewRecord> = (0..size)
            .map(|i| {
                let key = format!("{tag}-{task}-{n}-{i}");
                let payload = format!(r#"{{"tag":"{tag}","task":{task},"n":{n},"i":{i}}}"#);
                NewRecord::new(format!("s/{}", (task + i) % 5), "Tick", 1, payload)
                    .idempotency_key(key)
            })
            .collect();
        let keys: Vec<String> = batch
            .iter()
            .filter_map(|r| r.idempotency_key.clone())
            .collect();
        let appended = loop {
            match store.append(batch.clone()).await {
                Ok(appended) => break appended,
                Err(AppendError::Busy) => tokio::task::yield_now().await,
                Err(e) => {
                    eprintln!("append: {e}");
                    std::process::exit(3);
                }
            }
        };
        let mut out = std::io::stdout().lock();
        for (a, key) in appended.iter().zip(&keys) {
            if writeln!(out, "{} {key}", a.position)
                .and_then(|()| out.flush())
                .is_err()
            {
                std::process::exit(0);
            }
        }
    }
}
