//! The HTTP API and the CLI over it, against the real binary: submission, the queue when the
//! pool is full, the pool view, cancellation of a queued and of a running job, `/metrics`,
//! `/healthz`, the models view and the public key.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A trainer that never ends by itself: the test decides.
const TRAINER: &str = "#!/bin/sh\nexec sleep 600\n";

const EXE: &str = env!("CARGO_BIN_EXE_loopline-dispatch");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(api: SocketAddr, args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .args(["--api", &api.to_string()])
        .output()
        .unwrap()
}

fn cli_json(api: SocketAddr, args: &[&str]) -> Value {
    let output = cli(api, args);
    assert!(
        output.status.success(),
        "loopline-dispatch {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http(api: SocketAddr, path: &str) -> (String, String) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(loopline_common::http::get(api, path))
        .unwrap()
}

fn state_of(api: SocketAddr, id: i64) -> String {
    let job = cli_json(api, &["jobs", "show", &id.to_string()]);
    job["job"]["state"].as_str().unwrap().to_owned()
}

fn start(dir: &Path) -> (Serve, SocketAddr) {
    let trainer = dir.join("trainer.sh");
    std::fs::write(&trainer, TRAINER).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&trainer, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let api = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(EXE)
        .args(["serve", "--lake"])
        .arg(dir.join("lake"))
        .args([
            "--listen",
            &api.to_string(),
            "--gpus",
            "1",
            "--tick",
            "50ms",
        ])
        .args(["--evaluate-interval", "1h"])
        .arg("--trainer-command")
        .arg(&trainer)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    wait_for("the API", || {
        std::net::TcpStream::connect(api).is_ok() && http(api, "/healthz").0.contains("200")
    });
    (serve, api)
}

#[test]
fn the_cli_drives_jobs_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, api) = start(dir.path());

    let first = cli_json(
        api,
        &[
            "jobs",
            "submit",
            "--line",
            "line-a",
            "--reason",
            "new tooling",
        ],
    );
    assert_eq!(first["outcome"], "created");
    let a = first["job"]["id"].as_i64().unwrap();
    wait_for("job a to run", || state_of(api, a) == "running");

    // The pool has one GPU: line-b's job waits in the queue.
    let second = cli_json(
        api,
        &[
            "jobs",
            "submit",
            "--line",
            "line-b",
            "--reason",
            "operator",
            "--priority",
            "5",
            "--idempotency-key",
            "mes-1",
        ],
    );
    let b = second["job"]["id"].as_i64().unwrap();
    let again = cli_json(
        api,
        &[
            "jobs",
            "submit",
            "--line",
            "line-b",
            "--reason",
            "operator",
            "--idempotency-key",
            "mes-1",
        ],
    );
    assert_eq!(
        (again["outcome"].as_str(), again["job"]["id"].as_i64()),
        (Some("repeated"), Some(b))
    );
    let merged = cli_json(
        api,
        &["jobs", "submit", "--line", "line-a", "--reason", "again"],
    );
    assert_eq!(
        (merged["outcome"].as_str(), merged["job"]["id"].as_i64()),
        (Some("merged"), Some(a))
    );

    let queue = cli_json(api, &["queue"]);
    let queued: Vec<i64> = queue
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(queued, vec![b]);
    let pool = cli_json(api, &["pool"]);
    assert_eq!(
        (
            pool["capacity"].as_u64(),
            pool["in_use"].as_u64(),
            pool["free"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(pool["jobs"][0]["gpus"], serde_json::json!([0]));
    assert_eq!(pool["backend"], "local");

    // Cancel the queued one, then the running one: b never ran, a's process is stopped and
    // the GPU goes free.
    cli_json(api, &["jobs", "cancel", &b.to_string()]);
    wait_for("b cancelled", || state_of(api, b) == "cancelled");
    cli_json(api, &["jobs", "cancel", &a.to_string()]);
    wait_for("a cancelled", || state_of(api, a) == "cancelled");
    let pool = cli_json(api, &["pool"]);
    assert_eq!(pool["in_use"].as_u64(), Some(0));
    let detail = cli_json(api, &["jobs", "show", &a.to_string()]);
    let path: Vec<&str> = detail["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap())
        .collect();
    assert_eq!(path, ["queued", "dispatched", "running", "cancelled"]);
    assert_eq!(
        detail["transitions"][3]["reason"],
        "cancelled through the API"
    );

    // A finished job cannot be cancelled; a missing one is a 404 naming it.
    let output = cli(api, &["jobs", "cancel", &a.to_string()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("has already ended (cancelled)"));
    let output = cli(api, &["jobs", "show", "999"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("404") && stderr.contains("job 999 does not exist"),
        "{stderr}"
    );

    let listed = cli_json(api, &["jobs", "list", "--state", "cancelled"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (status, metrics) = http(api, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        metrics.contains("loopline_dispatch_jobs{state=\"cancelled\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("loopline_dispatch_pool_gpus 1"),
        "{metrics}"
    );
    let timeline = cli_json(api, &["timeline"]);
    assert!(timeline.as_array().unwrap().iter().any(|e| {
        e["text"]
            .as_str()
            .unwrap()
            .contains("job j-1 queued: manual: new tooling")
    }));

    let models = cli_json(api, &["models"]);
    let key = models["public_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 64);
    let printed = Command::new(EXE)
        .args(["public-key", "--lake"])
        .arg(dir.path().join("lake"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), key);
}
