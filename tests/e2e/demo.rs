use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Broker, Proc, bin, lake_rows, parquet_files};
use crate::pipeline::read_json;

/// The demo's numbers are true: what its summary claims is what the files hold.
#[test]
fn demo_summary_matches_the_lake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let summary_path = logs.join("summary.json");
    let broker = Broker::start(logs);
    let mut cmd = Command::new(bin("loopline", "loopline"));
    cmd.args(["demo", "--broker", &broker.url, "--duration", "3s"])
        .args([
            "--lines",
            "2",
            "--devices-per-line",
            "2",
            "--sample-rate-hz",
            "200",
        ])
        .args(["--batch-interval", "250ms", "--roll-age", "1s"])
        .arg("--lake")
        .arg(&lake)
        .arg("--summary-json")
        .arg(&summary_path);
    let mut demo = Proc::spawn("demo", cmd, logs);
    let status = demo.wait(Duration::from_secs(90));
    assert!(status.success(), "demo exited with {status}");
    let stdout = demo.stdout();
    assert!(
        stdout.contains("verified: every acknowledged sample"),
        "{stdout}"
    );
    assert!(stdout.contains("read_parquet("), "{stdout}");

    let summary = read_json(&summary_path);
    assert_eq!(summary["verified"], true);
    let rows = lake_rows(&lake);
    let committed = summary["rows_committed"].as_u64().unwrap();
    assert!(committed > 0);
    assert_eq!(rows.len() as u64, committed);
    assert_eq!(summary["samples_published"].as_u64().unwrap(), committed);
    assert_eq!(
        summary["files_committed"].as_u64().unwrap(),
        parquet_files(&lake.join("telemetry")).len() as u64
    );
    let devices = summary["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 4);
    for d in devices {
        let (line, device) = (d["line"].as_str().unwrap(), d["device"].as_str().unwrap());
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| r.line == line && r.device == device)
            .collect();
        assert_eq!(mine.len() as u64, d["samples"].as_u64().unwrap(), "{d}");
        let seqs: BTreeSet<i64> = mine.iter().map(|r| r.seq).collect();
        let last = d["last_seq"].as_i64().unwrap();
        assert_eq!(seqs, (0..=last).collect(), "{d}: seq not contiguous from 0");
    }
}

/// A bad setting is refused before the demo touches the lake or starts anything, with the
/// key named, rather than after the whole --duration.
#[test]
fn demo_refuses_bad_settings_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = dir.path().join("lake");
    let output = Command::new(bin("loopline", "loopline"))
        .args(["demo", "--duration", "60s", "--batch-interval", "1ms"])
        .arg("--lake")
        .arg(&lake)
        .output()
        .expect("running loopline demo");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("batch_interval"), "{stderr}");
    assert!(!lake.exists(), "the lake was created for a refused run");
}
