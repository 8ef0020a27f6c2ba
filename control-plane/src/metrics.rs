//! Process-wide counters, rendered as Prometheus text by `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters shared by the gRPC and REST layers. Cheap to update (relaxed atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Usage records newly stored (resent duplicates excluded).
    pub usage_records_ingested: AtomicU64,
    /// Usage batches stored and acknowledged.
    pub usage_batches_acked: AtomicU64,
    /// Usage batches that could not be stored (the edge resends them).
    pub usage_batches_failed: AtomicU64,
    /// FilterSync streams currently open (one per connected Envoy).
    pub sync_streams_open: AtomicI64,
    /// Snapshots sent to edges over FilterSync.
    pub snapshots_sent: AtomicU64,
    /// Configuration version last published.
    pub config_version: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        metric(
            "tokenrouter_usage_records_ingested_total",
            "counter",
            "Usage records stored (duplicates from resent batches excluded).",
            get(&self.usage_records_ingested),
        );
        metric(
            "tokenrouter_usage_batches_acked_total",
            "counter",
            "Usage batches stored and acknowledged.",
            get(&self.usage_batches_acked),
        );
        metric(
            "tokenrouter_usage_batches_failed_total",
            "counter",
            "Usage batches that could not be stored (not acknowledged; the edge resends).",
            get(&self.usage_batches_failed),
        );
        metric(
            "tokenrouter_sync_streams_open",
            "gauge",
            "FilterSync streams currently open.",
            self.sync_streams_open.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "tokenrouter_snapshots_sent_total",
            "counter",
            "Configuration snapshots sent to edges.",
            get(&self.snapshots_sent),
        );
        metric(
            "tokenrouter_config_version",
            "gauge",
            "Configuration version currently published.",
            get(&self.config_version),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.usage_records_ingested, 3);
        let text = m.render();
        assert!(text.contains("# TYPE tokenrouter_usage_records_ingested_total counter\n"));
        assert!(text.contains("\ntokenrouter_usage_records_ingested_total 3\n"));
        assert!(text.contains("\ntokenrouter_sync_streams_open 0\n"));
    }
}
