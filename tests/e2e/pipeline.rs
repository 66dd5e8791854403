use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use loopline_ingest::telemetry::TelemetryRow;
use loopline_ingest::writer::read_commit_log;
use loopline_proto::Message;
use loopline_proto::topic::TELEMETRY_FILTER;
use loopline_proto::v1::TelemetryBatch;
use serde_json::Value;

use crate::harness::{Broker, Proc, bin, lake_rows, parquet_files};

/// Starts `loopline-ingest` on `lake` and waits for its subscription.
pub fn start_ingest(broker: &Broker, lake: &Path, logs: &Path, extra: &[&str]) -> Proc {
    start_ingest_as("e2e", broker, lake, logs, extra)
}

/// Starts `loopline-ingest` with ingest id `id`; its report goes to `ingest-report.json` for
/// `e2e`, `ingest-<id>-report.json` otherwise.
pub fn start_ingest_as(
    id: &str,
    broker: &Broker,
    lake: &Path,
    logs: &Path,
    extra: &[&str],
) -> Proc {
    let report = if id == "e2e" {
        "ingest-report.json".to_owned()
    } else {
        format!("ingest-{id}-report.json")
    };
    let mut cmd = Command::new(bin("loopline-ingest", "loopline-ingest"));
    cmd.arg("--broker")
        .arg(&broker.ingest_url)
        .arg("--lake")
        .arg(lake)
        .args([
            "--ingest-id",
            id,
            "--roll-age",
            "300ms",
            "--roll-rows",
            "5000",
        ])
        .arg("--report-file")
        .arg(logs.join(report))
        .args(extra);
    let name = if id == "e2e" {
        "ingest".to_owned()
    } else {
        format!("ingest-{id}")
    };
    let mut ingest = Proc::spawn(&name, cmd, logs);
    ingest.wait_for_log("subscribed", Duration::from_secs(20));
    ingest
}

/// Starts one `loopline-agent` process for `line` publishing `batches` batches per device.
pub fn start_agent(broker: &Broker, line: &str, devices: &str, batches: u32, logs: &Path) -> Proc {
    let mut cmd = Command::new(bin("loopline-agent", "loopline-agent"));
    cmd.arg("--broker")
        .arg(&broker.url)
        .args(["--site", "plant-e2e", "--line", line, "--devices", devices])
        .args([
            "--batches",
            &batches.to_string(),
            "--batch-interval",
            "100ms",
        ])
        .args(["--sample-rate-hz", "400", "--window", "250ms"])
        .arg("--state-dir")
        .arg(logs.join("agent-state"))
        .arg("--report-file")
        .arg(logs.join(format!("agent-{line}.json")));
    Proc::spawn(&format!("agent-{line}"), cmd, logs)
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Waits until the ingester's commit log accounts for `rows` rows.
pub fn wait_for_committed_rows(lake: &Path, rows: u64, timeout: Duration) {
    wait_for_rows_in_all_logs(lake, rows, timeout);
}

/// Waits until every ingester's commit logs together hold `rows` telemetry rows.
pub fn wait_for_rows_in_all_logs(lake: &Path, rows: u64, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let committed: u64 = loopline_ingest::writer::commit_logs(lake)
            .unwrap_or_default()
            .iter()
            .flat_map(|log| read_commit_log(log).unwrap_or_default())
            .map(|r| r.rows)
            .sum();
        if committed >= rows {
            assert_eq!(committed, rows, "more rows committed than published");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {committed} of {rows} rows committed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rows a batch must become, one per sample.
pub fn rows_of(batch: &TelemetryBatch) -> Vec<TelemetryRow> {
    let id = batch.device.as_ref().expect("device identity");
    let mut rows = Vec::new();
    for channel in &batch.channels {
        for s in channel.samples(batch.base_ts_us).expect("valid channel") {
            rows.push(TelemetryRow {
                ts_us: s.ts_us,
                site: id.site.clone(),
                line: id.line.clone(),
                device: id.device.clone(),
                sensor: channel.sensor.clone(),
                value: f64::from(s.value),
                quality: s.quality as i16,
                boot_id: batch.boot_id.clone(),
                seq: batch.seq as i64,
            });
        }
    }
    rows
}

pub fn sort_rows(rows: &mut [TelemetryRow]) {
    rows.sort_by(|a, b| {
        (
            &a.site, &a.line, &a.device, &a.boot_id, a.seq, &a.sensor, a.ts_us,
        )
            .cmp(&(
                &b.site, &b.line, &b.device, &b.boot_id, b.seq, &b.sensor, b.ts_us,
            ))
    });
}

#[test]
fn every_published_batch_lands_exactly_once_with_exact_values() {
    const BATCHES: u32 = 15;
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let broker = Broker::start(logs);
    let tap = broker.tap(TELEMETRY_FILTER);
    let mut ingest = start_ingest(&broker, &lake, logs, &[]);

    let mut agents = vec![
        start_agent(&broker, "line-a", "d1,d2", BATCHES, logs),
        start_agent(&broker, "line-b", "d1", BATCHES, logs),
    ];
    for agent in &mut agents {
        let status = agent.wait(Duration::from_secs(60));
        assert!(status.success(), "{} exited with {status}", agent.name);
    }

    // What the agents say the broker acknowledged.
    let mut acked: BTreeMap<(String, String), (String, u64)> = BTreeMap::new();
    let mut windows_scored = 0;
    for line in ["line-a", "line-b"] {
        let report = read_json(&logs.join(format!("agent-{line}.json")));
        for d in report["devices"].as_array().expect("devices") {
            assert_eq!(d["batches_acked"], u64::from(BATCHES), "{d}");
            assert_eq!(d["first_seq"], 0, "{d}");
            assert_eq!(d["last_seq"], u64::from(BATCHES - 1), "{d}");
            assert_eq!(d["lost_batches"], 0, "{d}");
            assert_eq!(d["pending_batches"], 0, "{d}");
            windows_scored += d["windows_scored"].as_u64().unwrap();
            let key = (
                d["line"].as_str().unwrap().to_owned(),
                d["device"].as_str().unwrap().to_owned(),
            );
            let value = (
                d["boot_id"].as_str().unwrap().to_owned(),
                d["samples_acked"].as_u64().unwrap(),
            );
            acked.insert(key, value);
        }
    }
    assert_eq!(acked.len(), 3);
    let total_samples: u64 = acked.values().map(|(_, s)| s).sum();

    // What was on the wire, as an independent subscriber saw it.
    let wire = tap.wait_for(3 * BATCHES as usize, Duration::from_secs(20));
    assert_eq!(wire.len(), 3 * BATCHES as usize, "tap saw duplicates");
    let mut expected = Vec::new();
    for (topic, payload) in &wire {
        let batch = TelemetryBatch::decode(payload.as_slice()).expect("agent payload decodes");
        let id = batch.device.as_ref().unwrap();
        assert_eq!(*topic, id.topic(loopline_proto::topic::Kind::Telemetry));
        expected.extend(rows_of(&batch));
    }
    assert_eq!(expected.len() as u64, total_samples);

    wait_for_committed_rows(&lake, total_samples, Duration::from_secs(30));
    ingest.terminate();
    let status = ingest.wait(Duration::from_secs(20));
    assert!(status.success(), "ingest exited with {status}");

    let report = read_json(&logs.join("ingest-report.json"));
    assert_eq!(report["messages_received"], 3 * u64::from(BATCHES));
    assert_eq!(report["rows_committed"], total_samples);
    assert!(
        report["rejected"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == 0),
        "{report}"
    );

    let mut lake_rows = lake_rows(&lake);
    assert_eq!(lake_rows.len() as u64, total_samples);
    // Per device: the acknowledged boot, every seq 0..BATCHES exactly once.
    for ((line, device), (boot_id, samples)) in &acked {
        let mine: Vec<&TelemetryRow> = lake_rows
            .iter()
            .filter(|r| r.line == *line && r.device == *device)
            .collect();
        assert_eq!(mine.len() as u64, *samples, "{line}/{device}");
        assert!(
            mine.iter()
                .all(|r| r.boot_id == *boot_id && r.site == "plant-e2e")
        );
        let seqs: BTreeSet<i64> = mine.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..i64::from(BATCHES)).collect(), "{line}/{device}");
    }
    // Beside the samples: one inference row per window the NPU scored, one health row per
    // batch, and the simulator's labels, all keyed by the same (device, boot_id, seq).
    let inference: Vec<_> = parquet_files(&lake.join("inference"))
        .iter()
        .flat_map(|p| loopline_ingest::inference::read_file(p).expect("readable inference file"))
        .collect();
    assert_eq!(inference.len() as u64, windows_scored);
    // Whole windows of 250 ms (100 samples at 400 Hz) in what each device published.
    let whole_windows: u64 = acked.values().map(|(_, samples)| samples / 8 / 100).sum();
    assert_eq!(windows_scored, whole_windows);
    assert!(
        windows_scored >= 3 * 6,
        "15 batches of 100 ms hold six windows a device"
    );
    for row in &inference {
        let (boot_id, _) = &acked[&(row.line.clone(), row.device.clone())];
        assert_eq!(&row.boot_id, boot_id);
        assert_eq!(row.ts_us - row.window_start_us, 99 * 2_500);
        assert!(row.score.is_finite() && row.latency_us > 0, "{row:?}");
        assert!(
            row.model_version
                .as_deref()
                .unwrap_or("")
                .starts_with("bootstrap-")
        );
    }
    let health: Vec<_> = parquet_files(&lake.join("device_health"))
        .iter()
        .flat_map(|p| loopline_ingest::device_health::read_file(p).expect("readable health file"))
        .collect();
    assert_eq!(health.len(), 3 * BATCHES as usize);
    assert!(
        health
            .iter()
            .all(|h| h.health.npu_clock_mhz > 0 && h.health.npu_power_w > 0.0)
    );
    let labels: Vec<_> = parquet_files(&lake.join("sim_labels"))
        .iter()
        .flat_map(|p| loopline_ingest::sim_labels::read_file(p).expect("readable label file"))
        .collect();
    assert!(
        labels.len() >= 3 * BATCHES as usize,
        "every batch carries its labels"
    );

    // Exact values and timestamps, row for row.
    sort_rows(&mut lake_rows);
    sort_rows(&mut expected);
    assert!(
        lake_rows == expected,
        "lake rows differ from the published samples"
    );
}
