//! The agent's optional Prometheus endpoint: `GET /metrics` and `GET /healthz`.
//!
//! The agent has to stay small on a Pi, and these two read-only pages need neither routing
//! nor keep-alive nor TLS, so this is a minimal HTTP/1.1 responder over tokio rather than an
//! HTTP framework: each connection reads one request head (at most 8 KiB, 5 s), answers, and
//! closes. The counters are the shared [`AgentStats`]; names carry the `loopline_agent_`
//! prefix and are documented in `docs/configuration.md`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use loopline_common::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info};

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

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves until `shutdown`. Binding errors are returned at once, so a
/// wrong address fails the start rather than a later scrape.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(address = %listener.local_addr()?, "metrics endpoint listening");
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let stats = Arc::clone(&stats);
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &stats).await {
                            debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => debug!(error = %e, "metrics accept failed"),
            }
        }
    }))
}

async fn answer(mut stream: TcpStream, stats: &AgentStats) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let request_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&stats.snapshot()),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
    async fn serves_metrics_and_health_over_http() {
        let stats = Arc::new(AgentStats::new());
        stats.sealed(7);
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        let server = serve(addr, Arc::clone(&stats), stop.clone()).await.unwrap();
        for (path, expected) in [
            ("/metrics", "loopline_agent_samples_sealed_total 7"),
            ("/healthz", "ok"),
            ("/nope", "404 Not Found"),
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            assert!(response.contains(expected), "{path}: {response}");
        }
        stop.cancel();
        server.await.unwrap();
    }
}
