//! Dispatch's benchmarks, each against a baseline measured in the same run:
//!
//! 1. **Scheduler decisions per second with 10,000 queued jobs.** One decision is one job
//!    taken from the queue, marked dispatched in SQLite (durable: WAL, `synchronous=FULL`),
//!    started on a backend that starts nothing, and ended. Baseline: bare durable SQLite
//!    transactions (one row updated each) on the same disk, the floor of any decision that
//!    is recorded before it is acted on. Also the pure decision ([`pick`]) over the same
//!    queue, without the database.
//! 2. **Trigger to running on the local pool.** A full dispatch (API, loop, local backend)
//!    is started; each sample submits a job over HTTP (what a trigger does when it fires) and
//!    polls the API until the job is `running`; the figure is the job's recorded
//!    `started_us - created_us`. Baseline: fork and exec of the same command by hand.
//!
//! `cargo bench -p loopline-dispatch --bench dispatch -- [--queued N] [--samples N] [--out F]`
//! prints a table and writes JSON (default `bench/results/dispatch.json`).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loopline_dispatch::backend::{Backend, BackendError, JobSpec, Observed};
use loopline_dispatch::config::DispatchConfig;
use loopline_dispatch::scheduler::{
    Candidate, Dispatcher, DispatcherConfig, JobLauncher, RetryPolicy, pick,
};
use loopline_dispatch::store::{Job, JobRequest, State, Store};
use serde_json::json;

/// A backend whose jobs start at once and end on the next poll.
#[derive(Debug, Default)]
struct InstantBackend {
    next: AtomicU64,
}

impl Backend for InstantBackend {
    fn name(&self) -> &'static str {
        "instant"
    }
    fn submit(&self, _spec: &JobSpec) -> Result<String, BackendError> {
        Ok(self.next.fetch_add(1, Ordering::Relaxed).to_string())
    }
    fn poll(&self, _handle: &str) -> Result<Observed, BackendError> {
        Ok(Observed::Exited { code: 0 })
    }
    fn cancel(&self, _handle: &str) -> Result<(), BackendError> {
        Ok(())
    }
}

#[derive(Debug)]
struct NoFolder;

impl JobLauncher for NoFolder {
    fn spec(&self, job: &Job, gpus: Option<Vec<u32>>) -> std::io::Result<JobSpec> {
        Ok(JobSpec {
            job_id: job.name(),
            command: vec!["/bin/true".into()],
            env: Vec::new(),
            gpus: job.request.gpus,
            gpu_indices: gpus,
            workdir: PathBuf::from("/tmp"),
            time_limit: Duration::from_secs(60),
        })
    }
}

fn request(line: usize, n: usize) -> JobRequest {
    JobRequest {
        site: "plant-1".into(),
        line: format!("line-{line}"),
        family: "anomaly-ae".into(),
        priority: (n % 3) as i64,
        gpus: 1,
        dedup_key: Some(format!("bench-{n}")),
        idempotency_key: None,
        trigger: "benchmark".into(),
        trigger_kind: "manual".into(),
        data_from_us: 0,
        data_to_us: 1,
        max_attempts: 1,
        queue_timeout: Duration::from_secs(86_400),
        run_timeout: Duration::from_secs(86_400),
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn decisions(dir: &Path, queued: usize, decisions: usize) -> serde_json::Value {
    // Baseline: bare durable transactions.
    let baseline_db = rusqlite::Connection::open(dir.join("baseline.db")).unwrap();
    baseline_db
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    baseline_db
        .pragma_update(None, "synchronous", "FULL")
        .unwrap();
    baseline_db
        .execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 0);",
        )
        .unwrap();
    let start = Instant::now();
    for i in 0..decisions {
        baseline_db
            .execute("UPDATE t SET v = ?1 WHERE id = 1", [i as i64])
            .unwrap();
    }
    let baseline_per_s = decisions as f64 / start.elapsed().as_secs_f64();

    let mut store = Store::open(&dir.join("dispatch.db")).unwrap();
    let lines = 16;
    for n in 0..queued {
        store.submit(&request(n % lines, n), n as i64).unwrap();
    }
    let candidates: Vec<Candidate> = store
        .jobs(&[State::Queued], None, usize::MAX)
        .unwrap()
        .iter()
        .map(Candidate::of)
        .collect();
    let usage: HashMap<String, f64> = (0..lines)
        .map(|l| (format!("line-{l}"), l as f64))
        .collect();
    let rounds = 2_000;
    let start = Instant::now();
    let mut picked = 0;
    for _ in 0..rounds {
        if pick(&candidates, &[], 4, &usage, i64::MAX).is_some() {
            picked += 1;
        }
    }
    let pure_per_s = f64::from(picked) / start.elapsed().as_secs_f64();

    let mut dispatcher = Dispatcher::new(
        store,
        Arc::new(InstantBackend::default()),
        Arc::new(NoFolder),
        DispatcherConfig {
            capacity: 4,
            assign_gpus: true,
            retry: RetryPolicy::default(),
            fair_share_window: Duration::from_secs(3600),
        },
    );
    let start = Instant::now();
    let mut made = 0;
    let mut now = queued as i64 + 1;
    while made < decisions {
        let events = dispatcher.tick(now).unwrap();
        made += events
            .iter()
            .filter(|e| e.job.state == State::Dispatched)
            .count();
        now += 1;
    }
    let per_s = made as f64 / start.elapsed().as_secs_f64();
    json!({
        "queued_jobs": queued,
        "decisions": made,
        "decisions_per_s": per_s,
        "pure_pick_per_s": pure_per_s,
        "baseline_durable_transactions_per_s": baseline_per_s,
        "ratio_to_baseline": per_s / baseline_per_s,
    })
}

async fn trigger_to_running(dir: &Path, samples: usize) -> serde_json::Value {
    // Baseline: fork + exec of the same command, to the moment the child exists.
    let mut spawn_ms = Vec::new();
    for _ in 0..samples {
        let start = Instant::now();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        spawn_ms.push(start.elapsed().as_secs_f64() * 1e3);
        child.wait().unwrap();
    }
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = probe.local_addr().unwrap();
    drop(probe);
    let config = DispatchConfig {
        lake: dir.join("lake"),
        listen,
        gpus: 4,
        // The contract's flags land in $1…, which the stand-in ignores.
        trainer_command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "sleep 0.3".into(),
            "trainer".into(),
        ],
        evaluate_interval: Duration::from_secs(3600),
        ..DispatchConfig::default()
    };
    let stop = loopline_common::CancellationToken::new();
    let running = loopline_dispatch::service::start(config, stop.clone())
        .await
        .unwrap();
    let mut latency_ms = Vec::new();
    for n in 0..samples {
        let body = json!({ "line": format!("line-{n}"), "reason": "benchmark" }).to_string();
        let (_, text) = loopline_common::http::request(listen, "POST", "/api/v1/jobs", Some(&body))
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        let id = answer["job"]["id"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = loopline_common::http::get(listen, &format!("/api/v1/jobs/{id}"))
                .await
                .unwrap();
            let job: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let (Some(started), Some(created)) = (
                job["job"]["started_us"].as_i64(),
                job["job"]["created_us"].as_i64(),
            ) {
                latency_ms.push((started - created) as f64 / 1e3);
                break;
            }
            assert!(Instant::now() < deadline, "job {id} did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    running.stop().await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let max = latency_ms.iter().copied().fold(0.0, f64::max);
    let p50 = median(&mut latency_ms);
    let spawn_p50 = median(&mut spawn_ms);
    json!({
        "samples": samples,
        "trigger_to_running_p50_ms": p50,
        "trigger_to_running_max_ms": max,
        "baseline_spawn_p50_ms": spawn_p50,
        "ratio_to_baseline": p50 / spawn_p50,
        "goal_ms": 1000.0,
    })
}

fn main() {
    let queued = arg("--queued", 10_000);
    let samples = arg("--samples", 20);
    let out = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--out")
        .map(|w| PathBuf::from(&w[1]))
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../bench/results/dispatch.json"
            ))
        });
    let dir = tempfile::tempdir().unwrap();
    let scheduler = decisions(dir.path(), queued, 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let latency = runtime.block_on(trigger_to_running(dir.path(), samples));
    let result = json!({ "scheduler": scheduler, "trigger_to_running": latency });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap() + "\n").unwrap();
    eprintln!("wrote {}", out.display());
}
