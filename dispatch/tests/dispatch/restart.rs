//! `kill -9` of dispatch while jobs run: the restarted dispatch finds them through SQLite and
//! their stored handles, and every job ends exactly once: none lost, none run twice.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A stand-in trainer honouring the contract's flags: records each run, waits for a go file
/// (so the test decides when jobs end), then writes its outputs.
const TRAINER: &str = r#"#!/bin/sh
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) shift ;;
  esac
done
echo "$LOOPLINE_JOB_ID gpus=$CUDA_VISIBLE_DEVICES pid=$$" >> "$RUNS"
n=0
while [ ! -e "$GO" ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
mkdir -p "$out"
echo '{}' > "$out/metrics.json"
exit 0
"#;

struct Dispatch {
    child: Child,
}

/// A failing test must not leave dispatch running.
impl Drop for Dispatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn start(dir: &Path, api: SocketAddr) -> Dispatch {
    let child = Command::new(env!("CARGO_BIN_EXE_loopline-dispatch"))
        .args(["serve", "--lake"])
        .arg(dir.join("lake"))
        .args([
            "--listen",
            &api.to_string(),
            "--gpus",
            "4",
            "--tick",
            "50ms",
        ])
        .args(["--evaluate-interval", "1h"])
        .arg("--trainer-command")
        .arg(dir.join("trainer.sh"))
        .env("RUNS", dir.join("runs.log"))
        .env("GO", dir.join("go"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let dispatch = Dispatch { child };
    wait_for("the API to answer", || {
        call(api, "GET", "/healthz", None).is_some()
    });
    dispatch
}

fn call(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<(String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(loopline_common::http::request(api, method, path, body))
        .ok()
}

fn json(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Value {
    let (status, text) =
        call(api, method, path, body).unwrap_or_else(|| panic!("{method} {path}: no answer"));
    assert!(status.contains(" 20"), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn states(api: SocketAddr) -> Vec<(i64, String)> {
    json(api, "GET", "/api/v1/jobs", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|job| {
            (
                job["id"].as_i64().unwrap(),
                job["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn runs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn jobs_survive_kill_9_of_dispatch_and_run_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_owned();
    let trainer = dir.join("trainer.sh");
    std::fs::write(&trainer, TRAINER).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&trainer, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let api = free_port();
    let mut first = start(&dir, api);
    for (line, key) in [("line-a", "k-a"), ("line-b", "k-b"), ("line-a", "k-a")] {
        let body = format!(r#"{{"line":"{line}","reason":"test","idempotency_key":"{key}"}}"#);
        json(api, "POST", "/api/v1/jobs", Some(&body));
    }
    wait_for("both jobs to run", || {
        let s = states(api);
        s.len() == 2 && s.iter().all(|(_, state)| state == "running")
    });
    wait_for("both trainers to start", || runs(&dir).len() == 2);

    // kill -9: no shutdown, no flush.
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = start(&dir, api);
    // The restarted dispatch sees the jobs still running in their backend.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        states(api)
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        vec!["running", "running"]
    );
    std::fs::write(dir.join("go"), b"").unwrap();
    wait_for("both jobs to succeed", || {
        states(api).iter().all(|(_, state)| state == "succeeded")
    });

    let runs = runs(&dir);
    assert_eq!(runs.len(), 2, "each job ran exactly once: {runs:?}");
    let gpus: Vec<&str> = runs
        .iter()
        .map(|r| r.split_whitespace().nth(1).unwrap())
        .collect();
    assert_ne!(
        gpus[0], gpus[1],
        "concurrent jobs got distinct GPUs: {runs:?}"
    );
    for (id, _) in states(api) {
        let detail = json(api, "GET", &format!("/api/v1/jobs/{id}"), None);
        let path: Vec<&str> = detail["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["to"].as_str().unwrap())
            .collect();
        assert_eq!(
            path,
            ["queued", "dispatched", "running", "succeeded"],
            "job {id}"
        );
    }
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
