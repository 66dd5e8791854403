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
        .arg("--report")
        .arg(logs.join("report.html"))
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

/// The default demo closes the loop, measured from the lake: the recipe change on line 1 is
/// retrained, promoted, canaried and rolled out, and its F1 drops after the change and
/// recovers; the bearing fault on line 2 is reported, not retrained away, and still flagged
/// after line 1's rollout. The lake then passes the three readers' interop check.
#[test]
fn demo_closes_the_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let summary_path = logs.join("summary.json");
    let report = logs.join("report.html");
    let broker = Broker::start(logs);
    let mut cmd = Command::new(bin("loopline", "loopline"));
    cmd.args(["demo", "--broker", &broker.url])
        .arg("--lake")
        .arg(&lake)
        .arg("--report")
        .arg(&report)
        .arg("--summary-json")
        .arg(&summary_path);
    let mut demo = Proc::spawn("demo", cmd, logs);
    let status = demo.wait(Duration::from_secs(400));
    let stdout = demo.stdout();
    assert!(status.success(), "demo exited with {status}:\n{stdout}");
    let summary = read_json(&summary_path);
    assert_eq!(summary["verified"], true, "{stdout}");
    let closed = &summary["closed_loop"];
    let line = |name: &str| {
        closed["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["line"] == name)
            .unwrap_or_else(|| panic!("no {name} in {closed}"))
            .clone()
    };
    let f1 = |l: &serde_json::Value, phase: &str| l[phase]["f1"].as_f64();

    let recipe = line("line-1");
    assert_eq!(recipe["scenario"], "demo-recipe");
    assert_eq!(recipe["retrained"], true, "{stdout}");
    let jobs: Vec<&str> = recipe["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap())
        .collect();
    assert!(
        jobs.iter().any(|j| j.contains("succeeded, drift")),
        "line-1's retraining job: {jobs:?}\n{stdout}"
    );
    assert!(
        recipe["rolled_out"].is_string(),
        "line-1 was not rolled out:\n{stdout}"
    );
    let before = f1(&recipe, "before_change").expect("faults before the change");
    let after_change = f1(&recipe, "after_change").expect("faults after the change");
    let after_rollout = f1(&recipe, "after_rollout").expect("faults after the rollout");
    assert!(
        before >= 0.9,
        "line-1 F1 before the change {before}\n{stdout}"
    );
    assert!(
        after_change < 0.9 && after_change < before,
        "line-1 F1 did not drop: {after_change}\n{stdout}"
    );
    assert!(
        after_rollout >= 0.9,
        "line-1 F1 after the rollout {after_rollout}\n{stdout}"
    );
    assert!(
        recipe["after_rollout"]["windows"].as_u64().unwrap() >= 30,
        "{recipe}"
    );

    let bearing = line("line-2");
    assert_eq!(bearing["scenario"], "demo-bearing");
    assert_eq!(
        bearing["retrained"], false,
        "the bearing fault was retrained away:\n{stdout}"
    );
    let alerts: Vec<&str> = bearing["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        alerts
            .iter()
            .any(|a| a.contains("Developing machine fault")),
        "no degradation alert on line-2: {alerts:?}\n{stdout}"
    );
    let still_flagged = bearing["after_rollout"]["recall"]
        .as_f64()
        .expect("bearing faults after the rollout");
    assert!(
        still_flagged >= 0.5,
        "line-2 recall after line-1's rollout {still_flagged}\n{stdout}"
    );

    let kinds: BTreeSet<&str> = closed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    for kind in ["drift", "job", "model", "canary", "rollout", "alert"] {
        assert!(
            kinds.contains(kind),
            "the timeline has no {kind} entry: {kinds:?}"
        );
    }
    let html = std::fs::read_to_string(&report).expect("the report");
    assert!(
        html.contains("<svg") && html.contains("line-1") && html.contains("GPU"),
        "report"
    );

    // The lake this loop wrote is what every reader expects.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if python.exists() {
        let output = Command::new(&python)
            .arg(root.join("tests/interop/check_lake.py"))
            .arg("--lake")
            .arg(&lake)
            .arg("--summary")
            .arg(&summary_path)
            .output()
            .expect("running check_lake.py");
        assert!(
            output.status.success(),
            "check_lake.py:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Every query of docs/cookbook.md, in every engine, on this lake; the answers agree.
        let output = Command::new(&python)
            .arg(root.join("tests/interop/cookbook.py"))
            .arg(&lake)
            .output()
            .expect("running cookbook.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cookbook.py:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        crate::harness::announce(stdout.lines().last().unwrap_or("cookbook.py: no output"));
    } else {
        assert!(
            std::env::var("LOOPLINE_REQUIRE_PYTHON_READERS").as_deref() != Ok("1"),
            "LOOPLINE_REQUIRE_PYTHON_READERS=1 but {} is missing",
            python.display()
        );
        crate::harness::announce(
            "e2e: the Python readers are not installed; check_lake.py not run on the demo's lake",
        );
    }
}
