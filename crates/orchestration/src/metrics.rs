//! Prometheus text metrics, kept in atomics and small maps; no metrics crate.
//! Labels are app ids and fixed outcome names, never secrets or bodies.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the append latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default)]
pub struct Metrics {
    deliveries: Mutex<BTreeMap<(String, &'static str), u64>>,
    signature_failures: Mutex<BTreeMap<String, u64>>,
    append_buckets: [AtomicU64; BUCKETS.len()],
    append_count: AtomicU64,
    append_sum_micros: AtomicU64,
    appends_in_flight: AtomicI64,
    facts_recorded: AtomicU64,
    /// Whether this node takes part in a shard's lease (shown only then).
    leased: AtomicBool,
    lease_owner: AtomicBool,
    lease_epoch: AtomicU64,
    lease_terms: AtomicU64,
    fenced_appends: AtomicU64,
}

impl Metrics {
    pub fn delivery(&self, app: &str, outcome: &'static str) {
        let mut map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((app.to_owned(), outcome)).or_default() += 1;
    }

    pub fn signature_failure(&self, app: &str) {
        let mut map = self
            .signature_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry(app.to_owned()).or_default() += 1;
    }

    pub fn append_started(&self) {
        self.appends_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn append_finished(&self, took: Duration, records: usize) {
        self.appends_in_flight.fetch_sub(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.append_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.append_count.fetch_add(1, Ordering::Relaxed);
        self.append_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.facts_recorded
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    /// A term of ownership began.
    pub fn lease_terms_started(&self) {
        self.lease_terms.fetch_add(1, Ordering::Relaxed);
    }

    /// The lease as this node last saw it, and the appends the store has
    /// refused as stale so far.
    pub fn lease_state(&self, owner: bool, epoch: u64, fenced: u64) {
        self.leased.store(true, Ordering::Relaxed);
        self.lease_owner.store(owner, Ordering::Relaxed);
        self.lease_epoch.store(epoch, Ordering::Relaxed);
        self.fenced_appends.store(fenced, Ordering::Relaxed);
    }

    pub fn deliveries_of(&self, app: &str, outcome: &str) -> u64 {
        let map = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((a, o), _)| a == app && *o == outcome)
            .map(|(_, n)| n)
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn render(&self, log_head: u64, projected: u64) -> String {
        let mut out = String::new();
        out.push_str("# HELP baton_webhook_deliveries_total Webhook deliveries by app and outcome.\n# TYPE baton_webhook_deliveries_total counter\n");
        for ((app, outcome), n) in self
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "baton_webhook_deliveries_total{{app=\"{app}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP baton_webhook_signature_failures_total Deliveries refused for a missing or wrong signature.\n# TYPE baton_webhook_signature_failures_total counter\n");
        for (app, n) in self
            .signature_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "baton_webhook_signature_failures_total{{app=\"{app}\"}} {n}"
            );
        }
        out.push_str("# HELP baton_append_latency_seconds Time from append to durable answer.\n# TYPE baton_append_latency_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "baton_append_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                self.append_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.append_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "baton_append_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "baton_append_latency_seconds_sum {}",
            self.append_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "baton_append_latency_seconds_count {count}");
        scalar(
            &mut out,
            "baton_append_queue_depth",
            "gauge",
            "Appends waiting for durability.",
            self.appends_in_flight.load(Ordering::Relaxed).max(0),
        );
        scalar(
            &mut out,
            "baton_records_appended_total",
            "counter",
            "Records written by ingress.",
            self.facts_recorded.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "baton_log_head_position",
            "gauge",
            "Last durable log position.",
            log_head,
        );
        scalar(
            &mut out,
            "baton_projection_position",
            "gauge",
            "Last log position folded into projections.",
            projected,
        );
        if self.leased.load(Ordering::Relaxed) {
            scalar(
                &mut out,
                "baton_lease_owner",
                "gauge",
                "1 while this node owns its shard's lease.",
                u8::from(self.lease_owner.load(Ordering::Relaxed)),
            );
            scalar(
                &mut out,
                "baton_lease_epoch",
                "gauge",
                "The shard lease's epoch as this node last saw it.",
                self.lease_epoch.load(Ordering::Relaxed),
            );
            scalar(
                &mut out,
                "baton_lease_terms_total",
                "counter",
                "Terms of ownership this node began.",
                self.lease_terms.load(Ordering::Relaxed),
            );
            scalar(
                &mut out,
                "baton_fenced_appends_total",
                "counter",
                "Appends the store refused because this node's lease had moved on or lapsed.",
                self.fenced_appends.load(Ordering::Relaxed),
            );
        }
        out
    }
}

/// One metric with one value: its `HELP` and `TYPE` lines, then the value.
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
