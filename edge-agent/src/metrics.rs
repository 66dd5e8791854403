//! The agent's optional Prometheus endpoint: `GET /metrics` and `GET /healthz`.
//!
//! Served by [`loopline_common::http`]. The counters are the shared [`AgentStats`]; names
//! carry the `loopline_agent_` prefix and are documented in `docs/configuration.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use loopline_common::{CancellationToken, http};
use tokio::task::JoinHandle;

use crate::stats::{AgentStats, StatsSnapshot};

/// Metric names, each with its help text and type.
const METRICS: [(&str, &str, &str); 9] = [
    (
        "loopline_agent_batches_sealed_total",
        "counter",
        "Telemetry batches sealed.",
    ),
    (
        "loopline_agent_samples_sealed_total",
        "counter",
        "Samples sealed, over all channels.",
    ),
    (
        "loopline_agent_batches_acked_total",
        "counter",
        "Batches the broker acknowledged (PUBACK).",
    ),
    (
        "loopline_agent_samples_acked_total",
        "counter",
        "Samples in acknowledged batches.",
    ),
    (
        "loopline_agent_lost_batches_total",
        "counter",
        "Batches lost: dropped from a full spool or never spooled.",
    ),
    (
        "loopline_agent_lost_samples_total",
        "counter",
        "Samples in lost batches.",
    ),
    (
        "loopline_agent_connection_errors_total",
        "counter",
        "Failed broker connections and connection losses.",
    ),
    (
        "loopline_agent_windows_scored_total",
        "counter",
        "Inference windows the model scored.",
    ),
    (
        "loopline_agent_anomalies_total",
        "counter",
        "Inference windows flagged anomalous.",
    ),
];

/// Binds `addr` and serves the agent's counters until `shutdown`. Binding errors are
/// returned at once, so a wrong address fails the start rather than a later scrape.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    http::serve(addr, Arc::new(AgentPages(stats)), shutdown).await
}

struct AgentPages(Arc<AgentStats>);

impl http::Pages for AgentPages {
    fn metrics(&self) -> (&'static str, String) {
        (http::PROMETHEUS_TEXT, render(&self.0.snapshot()))
    }

    fn health(&self) -> Result<String, String> {
        Ok("ok\n".to_owned())
    }
}

/// The Prometheus text exposition of a snapshot.
pub fn render(s: &StatsSnapshot) -> String {
    let values = [
        s.batches_sealed,
        s.samples_sealed,
        s.batches_acked,
        s.samples_acked,
        s.lost_batches,
        s.lost_samples,
        s.connection_errors,
        s.windows_scored,
        s.anomalies,
    ];
    let mut out = String::with_capacity(1024);
    for ((name, kind, help), value) in METRICS.iter().zip(values) {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_its_value() {
        let stats = AgentStats::new();
        stats.sealed(40);
        stats.acked(40);
        stats.scored(3, 1);
        let text = render(&stats.snapshot());
        assert!(
            text.contains("loopline_agent_samples_acked_total 40\n"),
            "{text}"
        );
        assert!(
            text.contains("loopline_agent_windows_scored_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("loopline_agent_anomalies_total 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), METRICS.len());
    }

    #[tokio::test]
    async fn serves_the_agent_counters() {
        let stats = Arc::new(AgentStats::new());
        stats.sealed(7);
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        let server = serve(addr, Arc::clone(&stats), stop.clone()).await.unwrap();
        let (status, body) = http::get(addr, "/metrics").await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains("loopline_agent_samples_sealed_total 7\n"),
            "{body}"
        );
        let (status, body) = http::get(addr, "/healthz").await.unwrap();
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ok\n")
        );
        stop.cancel();
        server.await.unwrap();
    }
}
