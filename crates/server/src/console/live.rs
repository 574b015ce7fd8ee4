//! Live parts of the console: Server-Sent Events with each thread that
//! changed, and the metrics samples its charts are drawn from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use domain::{Event, ThreadKey};
use event_log::EventStore;
use maud::{html, Markup, PreEscaped};
use serde_json::json;

use super::{session, views::thread_row, Viewer};
use crate::AppState;

/// How often a sample is taken, and how many are kept (an hour).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES_KEPT: usize = 360;
/// Meta's budget for answering a webhook.
const META_BUDGET_MS: f64 = 5_000.0;
/// A keep-alive comment this often, so proxies keep the stream open (and a
/// stream notices a stop this soon).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// One sample: what happened since the previous one.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the epoch (Baton's clock).
    pub at_ms: i64,
    /// Webhook deliveries recorded per second.
    pub webhooks_per_s: f64,
    /// Webhook acknowledgement latency, p50 and p99 (ms).
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    /// Refusals by code since the previous sample.
    pub refusals: BTreeMap<String, u64>,
}

/// The samples, and the acknowledgement latencies collected since the last.
#[derive(Debug, Default)]
pub struct Samples {
    samples: Mutex<VecDeque<Sample>>,
    acks: Mutex<Vec<f64>>,
    /// The log position the last sample read up to, and when it was taken.
    last: Mutex<(u64, Option<std::time::Instant>)>,
}

impl Samples {
    /// Ingress reports how long a webhook took to answer.
    pub fn ack(&self, took: Duration) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if acks.len() < 100_000 {
            acks.push(took.as_secs_f64() * 1000.0);
        }
    }

    pub fn snapshot(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    fn take_acks(&self) -> Vec<f64> {
        std::mem::take(&mut *self.acks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn last(&self) -> (u64, Option<std::time::Instant>) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_last(&self, position: u64) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            (position, Some(std::time::Instant::now()));
    }
}

/// Webhook deliveries and refusals by code recorded after `read`, and the
/// position read up to.
async fn count_since<S: EventStore>(store: &S, mut read: u64) -> (u64, BTreeMap<String, u64>, u64) {
    let mut webhooks = 0u64;
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let Ok(batch) = store.read_all(read + 1, 4096).await else {
            break;
        };
        let Some(last) = batch.last() else { break };
        read = last.position;
        for r in &batch {
            match r.type_name.as_str() {
                "WebhookDeliveryReceived" => webhooks += 1,
                "CommandRefused" => {
                    if let Ok(Event::CommandRefused(e)) =
                        Event::decode(&r.type_name, r.schema_version, &r.payload)
                    {
                        *refusals.entry(e.rejection.code.to_string()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    (webhooks, refusals, read)
}

/// What happened since the last sample, as a sample of its own (the
/// metrics page shows it last, so a fresh server shows something).
pub async fn partial<S: EventStore>(state: &AppState<S>) -> Sample {
    let (from, since) = state.samples.last();
    let (webhooks, refusals, _) = count_since(state.store.as_ref(), from).await;
    let mut acks = state
        .samples
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    acks.sort_by(f64::total_cmp);
    let elapsed_s = since.map_or(1.0, |t| t.elapsed().as_secs_f64().max(1.0));
    Sample {
        at_ms: state.clock.now().millis(),
        webhooks_per_s: webhooks as f64 / elapsed_s,
        ack_p50_ms: quantile(&acks, 0.5),
        ack_p99_ms: quantile(&acks, 0.99),
        refusals,
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Takes a sample every 10 seconds (`SAMPLE_EVERY`) from the log and ingress until
/// `shutdown`: deliveries and refusals recorded since the last sample.
pub async fn sample<S: EventStore + 'static>(
    state: std::sync::Arc<AppState<S>>,
    mut shutdown: orchestration::shutdown::Shutdown,
) {
    let read = state.store.head().await.map(|h| h.position).unwrap_or(0);
    state.samples.set_last(read);
    loop {
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            () = shutdown.recv() => return,
        }
        let (from, _) = state.samples.last();
        let (webhooks, refusals, read) = count_since(state.store.as_ref(), from).await;
        state.samples.set_last(read);
        let mut acks = state.samples.take_acks();
        acks.sort_by(f64::total_cmp);
        state.samples.push(Sample {
            at_ms: state.clock.now().millis(),
            webhooks_per_s: webhooks as f64 / SAMPLE_EVERY.as_secs_f64(),
            ack_p50_ms: quantile(&acks, 0.5),
            ack_p99_ms: quantile(&acks, 0.99),
            refusals,
        });
    }
}

/// A small line chart, as inline SVG, with an optional limit line.
fn line_chart(label: &str, unit: &str, points: &[f64], limit: Option<f64>) -> Markup {
    let (w, h) = (600.0, 120.0);
    // One point is drawn as a level line across the chart.
    let level;
    let points = match points {
        [only] => {
            level = [*only, *only];
            &level[..]
        }
        more => more,
    };
    let top = points.iter().copied().chain(limit).fold(1.0_f64, f64::max);
    let n = points.len().max(2) as f64 - 1.0;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", i as f64 / n * w, h - v / top * h))
        .collect();
    let last = points.last().copied().unwrap_or(0.0);
    html! {
        figure {
            svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label={(label) ": latest " (format!("{last:.1}")) " " (unit)} preserveAspectRatio="none" {
                @if let Some(limit) = limit {
                    line x1="0" x2=(w) y1=(format!("{:.1}", h - limit / top * h)) y2=(format!("{:.1}", h - limit / top * h)) class="limit" {}
                }
                polyline points=(path.join(" ")) class="series" {}
            }
            figcaption { (label) ": latest " strong { (format!("{last:.1}")) " " (unit) } " · max " (format!("{:.1}", points.iter().copied().fold(0.0, f64::max))) " " (unit)
                @if let Some(limit) = limit { " · limit " (limit) " " (unit) } }
        }
    }
}

/// The metrics page's charts.
pub fn charts(samples: &[Sample]) -> Markup {
    let rate: Vec<f64> = samples.iter().map(|s| s.webhooks_per_s).collect();
    let p99: Vec<f64> = samples.iter().map(|s| s.ack_p99_ms).collect();
    let p50: Vec<f64> = samples.iter().map(|s| s.ack_p50_ms).collect();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for s in samples {
        for (code, n) in &s.refusals {
            *totals.entry(code.as_str()).or_default() += n;
        }
    }
    let most = totals.values().copied().max().unwrap_or(1).max(1);
    html! {
        p { (samples.len().saturating_sub(1)) " samples, one every " (SAMPLE_EVERY.as_secs()) " s (the last hour at most), and what happened since the last one. Reload for the latest." }
        (line_chart("Webhooks recorded", "per s", &rate, None))
        (line_chart("Webhook acknowledgement p99", "ms", &p99, Some(META_BUDGET_MS)))
        (line_chart("Webhook acknowledgement p50", "ms", &p50, None))
        h2 { "Refusals by code" }
        @if totals.is_empty() { p { "No refusals in this period." } }
        ul.bars { @for (code, n) in &totals {
            li { span.code { "#" (code) } span.bar style=(PreEscaped(format!("width:{}%", n * 100 / most))) {} span { (n) } }
        } }
    }
}

/// `GET /console/live`: Server-Sent Events, one `thread` event per thread
/// that changed, with its current row, for the pages the viewer sees.
pub async fn stream<S: EventStore + 'static>(
    state: web::Data<AppState<S>>,
    req: HttpRequest,
) -> HttpResponse {
    let session = match session(&state, &req) {
        Ok(s) => s,
        Err(res) => return res,
    };
    let state = state.into_inner();
    let start = state.projections.position();
    let head = state.projections.subscribe();
    let viewer = session.viewer;
    let events = futures_util::stream::unfold(
        (state, head, start, viewer, true),
        |(state, mut head, mut read, viewer, first)| async move {
            if first {
                let hello = web::Bytes::from_static(b"retry: 2000\n: connected\n\n");
                return Some((
                    Ok::<_, actix_web::Error>(hello),
                    (state, head, read, viewer, false),
                ));
            }
            loop {
                if state.baton.is_stopping() {
                    return None;
                }
                let changed = tokio::time::timeout(KEEP_ALIVE, head.changed()).await;
                match changed {
                    Err(_) => {
                        let ping = web::Bytes::from_static(b": keep-alive\n\n");
                        return Some((Ok(ping), (state, head, read, viewer, false)));
                    }
                    Ok(Err(_)) => return None,
                    Ok(Ok(())) => {}
                }
                let to = *head.borrow_and_update();
                let mut threads: Vec<ThreadKey> = Vec::new();
                while read < to {
                    let Ok(batch) = state.store.read_all(read + 1, 4096).await else {
                        break;
                    };
                    let Some(last) = batch.last() else { break };
                    read = last.position.min(to);
                    for r in batch.iter().filter(|r| r.position <= to) {
                        if let Some(key) = r
                            .stream
                            .strip_prefix("thread/")
                            .and_then(|rest| rest.split_once('/'))
                            .and_then(|(p, u)| {
                                Some(ThreadKey::new(
                                    domain::PageId::parse(p).ok()?,
                                    domain::Psid::parse(u).ok()?,
                                ))
                            })
                        {
                            if !threads.contains(&key) && visible(&state, &viewer, &key) {
                                threads.push(key);
                            }
                        }
                    }
                }
                if threads.is_empty() {
                    continue;
                }
                let now = state.clock.now();
                let mut out = String::new();
                for key in threads {
                    let Some(row) = thread_row(&state, &key, now) else {
                        continue;
                    };
                    let data = json!({
                        "thread": format!("{}/{}", key.page, key.psid),
                        "state": row.state,
                        "owner": row.owner.as_ref().map(ToString::to_string),
                        "window_closes_at": row.window_closes_at.map(|t| t.millis()),
                        "window_closes_at_text": row.window_closes_at.map(|t| t.to_string()),
                        "last_activity": row.last_activity.map(|t| t.to_string()),
                    });
                    out.push_str("event: thread\ndata: ");
                    out.push_str(&data.to_string());
                    out.push_str("\n\n");
                }
                return Some((
                    Ok(web::Bytes::from(out)),
                    (state, head, read, viewer, false),
                ));
            }
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}

fn visible<S>(state: &AppState<S>, viewer: &Viewer, key: &ThreadKey) -> bool {
    viewer.sees_page(state, &key.page)
}
