//! Prometheus `/metrics` (OpenMetrics text, every counter of [`IngestStats`]) and `/healthz`
//! (200 while the broker has granted the subscription, 503 otherwise), served by
//! [`loopline_common::http`]. Metric names are listed in `docs/configuration.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use loopline_common::{CancellationToken, http};
use tokio::task::JoinHandle;

use crate::stats::IngestStats;

/// Binds `addr` and serves until `shutdown`. Binding errors are returned at once.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    http::serve(addr, Arc::new(IngestPages(stats)), shutdown).await
}

struct IngestPages(Arc<IngestStats>);

impl http::Pages for IngestPages {
    fn metrics(&self) -> (&'static str, String) {
        (http::OPENMETRICS_TEXT, self.0.encode())
    }

    fn health(&self) -> Result<String, String> {
        if self.0.is_subscribed() {
            Ok(format!(
                "ok: subscribed, {} messages waiting for their commit\n",
                self.0.unacked()
            ))
        } else {
            Err("not subscribed: the broker is unreachable or refused the subscription\n".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_follows_the_subscription_and_metrics_name_every_table() {
        let stats = Arc::new(IngestStats::default());
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        let server = serve(addr, stats.clone(), stop.clone()).await.unwrap();
        let (status, _) = http::get(addr, "/healthz").await.unwrap();
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        stats.set_subscribed(true);
        let (status, body) = http::get(addr, "/healthz").await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.starts_with("ok: subscribed"), "{body}");
        let (_, body) = http::get(addr, "/metrics").await.unwrap();
        assert!(body.contains("loopline_ingest_subscribed 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        stop.cancel();
        server.await.unwrap();
    }
}
