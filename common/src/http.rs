//! A minimal read-only HTTP endpoint for `GET /metrics` and `GET /healthz`, shared by the
//! binaries that serve them.
//!
//! These two pages need neither routing nor keep-alive nor TLS, and the agent has to stay
//! small on a Pi, so this is a minimal HTTP/1.1 responder over tokio rather than an HTTP
//! framework: each connection reads one request head (at most 8 KiB, 5 s), answers, and
//! closes. What the pages say is the caller's, through [`Pages`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

const MAX_REQUEST_HEAD: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the two pages show.
pub trait Pages: Send + Sync + 'static {
    /// The metrics page: its content type and body.
    fn metrics(&self) -> (&'static str, String);
    /// `Ok(text)` answers 200, `Err(reason)` answers 503 Service Unavailable.
    fn health(&self) -> Result<String, String>;
}

/// The Prometheus text format's content type (exposition format 0.0.4).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The OpenMetrics text format's content type.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves until `shutdown`. Binding errors are returned at once, so a
/// wrong address fails the start rather than a later scrape.
pub async fn serve(
    addr: SocketAddr,
    pages: Arc<dyn Pages>,
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
                    let pages = Arc::clone(&pages);
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, pages.as_ref()).await {
                            debug!(error = %e, "metrics request failed");
                        }
                    });
                }
                Err(e) => debug!(error = %e, "metrics accept failed"),
            }
        }
    }))
}

async fn answer(mut stream: TcpStream, pages: &dyn Pages) -> std::io::Result<()> {
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
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let (content_type, body) = pages.metrics();
            ("200 OK", content_type, body)
        }
        ("GET", "/healthz") => match pages.health() {
            Ok(body) => ("200 OK", text, body),
            Err(reason) => ("503 Service Unavailable", text, reason),
        },
        ("GET", _) => (
            "404 Not Found",
            text,
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
        _ => ("405 Method Not Allowed", text, "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches `path` from a [`serve`]d endpoint: the status line and the body. For tests and
/// the demo's own checks.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    request(addr, "GET", path, None).await
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK` → 200); `None` when the line
/// is not one.
pub fn status_code(status_line: &str) -> Option<u16> {
    let mut parts = status_line.split_whitespace();
    parts
        .next()
        .filter(|version| version.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Sends one HTTP/1.1 request (with a JSON body, if any) and reads the whole response: the
/// status line and the body. The command-line clients of Loopline's own HTTP APIs use it.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = json_body.unwrap_or_default();
    let content = if json_body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_read_from_status_lines_only() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code(""), None);
        assert_eq!(status_code("200 OK"), None);
        assert_eq!(status_code("HTTP/1.1 OK"), None);
    }

    struct Fixed {
        healthy: bool,
    }

    impl Pages for Fixed {
        fn metrics(&self) -> (&'static str, String) {
            (PROMETHEUS_TEXT, "loopline_test_total 7\n".to_owned())
        }
        fn health(&self) -> Result<String, String> {
            if self.healthy {
                Ok("ok\n".into())
            } else {
                Err("not subscribed\n".into())
            }
        }
    }

    #[tokio::test]
    async fn serves_metrics_health_and_refuses_the_rest() {
        for healthy in [true, false] {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = probe.local_addr().unwrap();
            drop(probe);
            let stop = CancellationToken::new();
            let server = serve(addr, Arc::new(Fixed { healthy }), stop.clone())
                .await
                .unwrap();
            let (status, body) = get(addr, "/metrics").await.unwrap();
            assert_eq!(
                (status.as_str(), body.as_str()),
                ("HTTP/1.1 200 OK", "loopline_test_total 7\n")
            );
            let (status, body) = get(addr, "/healthz").await.unwrap();
            if healthy {
                assert_eq!(
                    (status.as_str(), body.as_str()),
                    ("HTTP/1.1 200 OK", "ok\n")
                );
            } else {
                assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
                assert_eq!(body, "not subscribed\n");
            }
            let (status, _) = get(addr, "/nope").await.unwrap();
            assert_eq!(status, "HTTP/1.1 404 Not Found");
            stop.cancel();
            server.await.unwrap();
        }
    }
}
