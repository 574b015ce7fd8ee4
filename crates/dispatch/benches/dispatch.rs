//! Dispatch benchmark: throughput to two local backends and the latency
//! added between a durable append and the backend's receipt, each against a
//! baseline of the same HTTP client posting the same signed envelopes
//! directly. Figures are ratios from one run on one machine.
//!
//! `cargo bench -p dispatch --bench dispatch` (BENCH_ITEMS, BENCH_SAMPLES to size).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use dispatch::envelope::envelope;
use dispatch::{BackendConfig, DispatchConfig, Dispatcher, Secret};
use domain::events::{Channel, DeliveryCopy, MessagingEventCopyReceived};
use domain::ids::{AppId, PageId, Psid, ThreadKey, Timestamp};
use domain::Event;
use event_log::{EventStore, NewRecord, SledStore};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

const PAGE: &str = "1001";
const APPS: [(&str, &str, Channel); 2] = [
    ("111", "bot-secret", Channel::Messaging),
    ("222", "inbox-secret", Channel::Standby),
];
const THREADS: u64 = 100;
const CONCURRENCY: usize = 8;

struct Receipts {
    at: Mutex<HashMap<u64, Instant>>,
    tick: watch::Sender<u64>,
}

async fn receive(body: web::Bytes, st: web::Data<Receipts>) -> HttpResponse {
    let now = Instant::now();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut n = 0;
    if let Some(entries) = v["entry"].as_array() {
        let mut at = st.at.lock().unwrap();
        for e in entries {
            for ch in ["messaging", "standby"] {
                for item in e[ch].as_array().into_iter().flatten() {
                    if let Some(id) = item["message"]["seq"].as_u64() {
                        at.insert(id, now);
                        n += 1;
                    }
                }
            }
        }
    }
    st.tick.send_modify(|t| *t += n);
    HttpResponse::Ok().finish()
}

fn start_backend() -> (String, Arc<Receipts>) {
    let st = Arc::new(Receipts {
        at: Mutex::new(HashMap::new()),
        tick: watch::Sender::new(0),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let data = web::Data::from(Arc::clone(&st));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let srv = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/webhook", web::post().to(receive))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            tx.send(()).unwrap();
            let _ = srv.await;
        })
    });
    rx.recv().unwrap();
    (url, st)
}

fn raw(psid: &str, id: u64) -> Value {
    json!({"sender":{"id":psid},"recipient":{"id":PAGE},"timestamp":1_700_000_000_000u64 + id,
           "message":{"mid":format!("m-{id}"),"text":"hello","seq":id}})
}

/// The record ingress would append for `app`'s copy of item `id`.
fn record(app: usize, id: u64) -> NewRecord {
    let psid = format!("u{}", id % THREADS);
    let (app_id, _, channel) = APPS[app];
    let e = Event::MessagingEventCopyReceived(MessagingEventCopyReceived {
        thread: ThreadKey::new(PageId::parse(PAGE).unwrap(), Psid::parse(&psid).unwrap()),
        at: Timestamp::from_millis(1_700_000_000_000),
        dedupe_key: format!("m-{id}"),
        delivery: DeliveryCopy {
            app: AppId::parse(app_id).unwrap(),
            channel,
        },
        raw: raw(&psid, id),
    });
    orchestration::encode(&e)
}

/// Item ids: app 0 gets even ids, app 1 odd ones, so receipts never collide.
fn id_of(app: usize, n: u64) -> u64 {
    n * 2 + app as u64
}

async fn wait_count(st: &Receipts, n: usize) {
    let mut rx = st.tick.subscribe();
    loop {
        rx.borrow_and_update();
        if st.at.lock().unwrap().len() >= n {
            return;
        }
        rx.changed().await.unwrap();
    }
}

async fn wait_id(st: &Receipts, id: u64) -> Instant {
    let mut rx = st.tick.subscribe();
    loop {
        rx.borrow_and_update();
        if let Some(at) = st.at.lock().unwrap().get(&id) {
            return *at;
        }
        rx.changed().await.unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// POSTs what dispatch would send, straight to the backend.
async fn post_direct(client: &reqwest::Client, url: &str, app: usize, id: u64) {
    let (_, secret, channel) = APPS[app];
    let psid = format!("u{}", id % THREADS);
    let item = raw(&psid, id);
    let signed = envelope(
        &PageId::parse(PAGE).unwrap(),
        1_700_000_000_000,
        channel,
        &[&item],
        &Secret::new(secret),
    );
    let resp = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", signed.signature_256)
        .header("X-Hub-Signature", signed.signature_1)
        .body(signed.body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let _ = resp.bytes().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let per_app = env("BENCH_ITEMS", 30_000);
    let samples = env("BENCH_SAMPLES", 1_000);
    println!("dispatch bench: {per_app} items per backend x 2 backends, {THREADS} threads, concurrency {CONCURRENCY}, {samples} latency samples");

    // Baseline throughput: the same client, the same signed envelopes, the
    // same concurrency per backend, posted directly.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let backends: Vec<_> = (0..2).map(|_| start_backend()).collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (app, (url, _)) in backends.iter().enumerate() {
        let sem = Arc::new(Semaphore::new(CONCURRENCY));
        for n in 0..per_app {
            let permit = Arc::clone(&sem).acquire_owned().await.unwrap();
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                post_direct(&client, &url, app, id_of(app, n)).await;
                drop(permit);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    for (_, st) in &backends {
        wait_count(st, per_app as usize).await;
    }
    let base_secs = started.elapsed().as_secs_f64();
    let base_tput = (2 * per_app) as f64 / base_secs;

    // Baseline latency: one POST at a time, send to receipt.
    let mut base_lat = Vec::new();
    for s in 0..samples {
        let app = (s % 2) as usize;
        let id = id_of(app, 1_000_000 + s);
        let t0 = Instant::now();
        post_direct(&client, &backends[app].0, app, id).await;
        base_lat.push(wait_id(&backends[app].1, id).await - t0);
    }

    // Dispatch throughput: a pre-filled sled log, then the dispatcher drains it.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path().join("log")).unwrap());
    let mut batch = Vec::new();
    for n in 0..per_app {
        for app in 0..2 {
            batch.push(record(app, id_of(app, n)));
        }
        if batch.len() >= 1000 {
            store.append(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    if !batch.is_empty() {
        store.append(batch).await.unwrap();
    }
    let targets: Vec<_> = (0..2).map(|_| start_backend()).collect();
    let mut cfg = DispatchConfig::new(
        APPS.iter()
            .zip(&targets)
            .map(|((app, secret, _), (url, _))| BackendConfig {
                app: AppId::parse(*app).unwrap(),
                url: url.clone(),
                secret: Secret::new(*secret),
            })
            .collect(),
        dir.path().join("cursors"),
    );
    cfg.concurrency = CONCURRENCY;
    let d = Arc::new(Dispatcher::new(Arc::clone(&store), cfg).await.unwrap());
    let started = Instant::now();
    let runner = {
        let d = Arc::clone(&d);
        tokio::spawn(async move { d.run().await })
    };
    for (_, st) in &targets {
        wait_count(st, per_app as usize).await;
    }
    let disp_secs = started.elapsed().as_secs_f64();
    let disp_tput = (2 * per_app) as f64 / disp_secs;

    // Dispatch latency: from the append call (the durable flush included,
    // reported apart) to the backend's receipt.
    let mut disp_lat = Vec::new();
    let mut append_lat = Vec::new();
    for s in 0..samples {
        let app = (s % 2) as usize;
        let id = id_of(app, 1_000_000 + s);
        let t0 = Instant::now();
        store.append(vec![record(app, id)]).await.unwrap();
        append_lat.push(t0.elapsed());
        disp_lat.push(wait_id(&targets[app].1, id).await - t0);
    }
    runner.abort();

    base_lat.sort();
    disp_lat.sort();
    append_lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (bp50, bp99) = (percentile(&base_lat, 0.5), percentile(&base_lat, 0.99));
    let (dp50, dp99) = (percentile(&disp_lat, 0.5), percentile(&disp_lat, 0.99));
    println!("throughput  baseline (direct POST): {base_tput:>9.0} items/s");
    println!("throughput  dispatch (log -> POST): {disp_tput:>9.0} items/s   ratio dispatch/baseline = {:.2}", disp_tput / base_tput);
    println!("latency p50 baseline: {:.3} ms   dispatch (durable append -> receipt): {:.3} ms   ratio = {:.2}", ms(bp50), ms(dp50), ms(dp50) / ms(bp50));
    println!("latency p99 baseline: {:.3} ms   dispatch (durable append -> receipt): {:.3} ms   ratio = {:.2}", ms(bp99), ms(dp99), ms(dp99) / ms(bp99));
    println!(
        "of which the durable append itself (sled flush): p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&append_lat, 0.5)),
        ms(percentile(&append_lat, 0.99))
    );
    println!(
        "added latency (dispatch - baseline): p50 {:.3} ms, p99 {:.3} ms",
        ms(dp50) - ms(bp50),
        ms(dp99) - ms(bp99)
    );
}
