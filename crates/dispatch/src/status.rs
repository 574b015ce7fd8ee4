//! What an operator sees of each backend: a serialisable status (for
//! `GET /api/apps/{app_id}/delivery`) and a Prometheus text rendering
//! (`baton_dispatch_*`). Read-only snapshots; nothing here drives delivery.

use std::fmt::Write as _;

use serde::Serialize;

/// A snapshot of one backend's delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub app: String,
    /// Lowest log position not yet settled for this app (in memory).
    pub cursor: u64,
    /// The cursor last written to the cursor file (a restart resumes here).
    pub cursor_stored: u64,
    /// Last log position this backend has read.
    pub read_position: u64,
    /// Items read and not yet settled (delivered or dead-lettered).
    pub queue_depth: u64,
    /// POSTs in flight.
    pub in_flight: u64,
    /// Threads (or pages) with at least one pending item.
    pub threads_pending: u64,
    /// Threads whose head item is waiting for a retry.
    pub threads_retrying: u64,
    /// Age of the oldest pending item, by the dispatcher's clock (ms).
    pub oldest_pending_age_ms: Option<i64>,
    /// Items the backend answered with 2xx.
    pub delivered: u64,
    /// POSTs attempted.
    pub attempts: u64,
    /// POSTs that failed (non-2xx, timeout, connection error).
    pub failures: u64,
    /// Items given up on and recorded as `DispatchDeadLettered`.
    pub dead_lettered: u64,
    /// Redrive requests taken up.
    pub redriven: u64,
    /// Items skipped at start because the cursor file says they were settled.
    pub skipped_on_resume: u64,
    /// Items dropped before an attempt because their content was erased
    /// while they waited.
    #[serde(default)]
    pub dropped_erased: u64,
    /// The last failure, for humans.
    pub last_error: Option<String>,
    /// Whether the backend's worker is running.
    pub running: bool,
}

/// Renders statuses as Prometheus text exposition (one sample per app).
pub fn render_prometheus(statuses: &[BackendStatus]) -> String {
    type Field = fn(&BackendStatus) -> Option<f64>;
    #[allow(clippy::cast_precision_loss)] // metrics are approximate by nature
    let metrics: [(&str, &str, &str, Field); 13] = [
        (
            "queue_depth",
            "gauge",
            "Items read from the log and not yet settled.",
            |s| Some(s.queue_depth as f64),
        ),
        ("in_flight", "gauge", "POSTs in flight.", |s| {
            Some(s.in_flight as f64)
        }),
        (
            "threads_pending",
            "gauge",
            "Threads with pending items.",
            |s| Some(s.threads_pending as f64),
        ),
        (
            "threads_retrying",
            "gauge",
            "Threads waiting to retry their head item.",
            |s| Some(s.threads_retrying as f64),
        ),
        (
            "oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest pending item.",
            |s| Some(s.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0),
        ),
        (
            "cursor",
            "gauge",
            "Lowest log position not yet settled.",
            |s| Some(s.cursor as f64),
        ),
        ("read_position", "gauge", "Last log position read.", |s| {
            Some(s.read_position as f64)
        }),
        (
            "delivered_total",
            "counter",
            "Items delivered (2xx).",
            |s| Some(s.delivered as f64),
        ),
        ("attempts_total", "counter", "POSTs attempted.", |s| {
            Some(s.attempts as f64)
        }),
        ("failures_total", "counter", "POSTs that failed.", |s| {
            Some(s.failures as f64)
        }),
        (
            "dead_lettered_total",
            "counter",
            "Items dead-lettered.",
            |s| Some(s.dead_lettered as f64),
        ),
        (
            "redriven_total",
            "counter",
            "Redrive requests taken up.",
            |s| Some(s.redriven as f64),
        ),
        ("up", "gauge", "1 while the backend's worker runs.", |s| {
            Some(if s.running { 1.0 } else { 0.0 })
        }),
    ];
    let mut out = String::new();
    for (name, kind, help, field) in metrics {
        let _ = writeln!(out, "# HELP baton_dispatch_{name} {help}");
        let _ = writeln!(out, "# TYPE baton_dispatch_{name} {kind}");
        for s in statuses {
            if let Some(v) = field(s) {
                let _ = writeln!(
                    out,
                    "baton_dispatch_{name}{{app=\"{}\"}} {v}",
                    escape_label(&s.app)
                );
            }
        }
    }
    out
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_metric_per_app() {
        let text = render_prometheus(&[BackendStatus {
            app: "111".into(),
            queue_depth: 3,
            delivered: 10,
            oldest_pending_age_ms: Some(1500),
            running: true,
            ..BackendStatus::default()
        }]);
        assert!(text.contains("# TYPE baton_dispatch_delivered_total counter"));
        assert!(text.contains("baton_dispatch_delivered_total{app=\"111\"} 10\n"));
        assert!(text.contains("baton_dispatch_queue_depth{app=\"111\"} 3\n"));
        assert!(text.contains("baton_dispatch_oldest_pending_age_seconds{app=\"111\"} 1.5\n"));
        assert!(text.contains("baton_dispatch_up{app=\"111\"} 1\n"));
    }
}
