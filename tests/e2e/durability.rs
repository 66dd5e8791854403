//! Ingest under faults, against real Mosquitto: SIGKILL of ingest, a broker restart, and two
//! ingesters on one shared subscription. Each ends with every sample the agents had
//! acknowledged in the lake exactly once, read back in Rust and by pyarrow, DuckDB and Polars.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use loopline_ingest::writer::read_commit_log;

use crate::harness::{Broker, free_port, http_get, lake_rows, python_counts};
use crate::pipeline::{
    read_json, start_agent, start_ingest, start_ingest_as, wait_for_rows_in_all_logs,
};

/// What the agents of one line reported: per device, its boot and the batches and samples the
/// broker acknowledged.
struct Sent {
    samples: u64,
    batches: BTreeMap<String, (String, u64)>,
}

fn sent(logs: &Path, line: &str) -> Sent {
    let report = read_json(&logs.join(format!("agent-{line}.json")));
    let mut out = Sent {
        samples: 0,
        batches: BTreeMap::new(),
    };
    for device in report["devices"].as_array().expect("devices") {
        out.samples += device["samples_acked"].as_u64().unwrap();
        out.batches.insert(
            device["device"].as_str().unwrap().to_owned(),
            (
                device["boot_id"].as_str().unwrap().to_owned(),
                device["batches_acked"].as_u64().unwrap(),
            ),
        );
    }
    out
}

/// The lake holds every acknowledged sample exactly once: each device's seqs 0..batches, no
/// duplicate row, and the three Python readers count the same.
fn assert_exactly_once(lake: &Path, sent: &Sent) {
    let rows = lake_rows(lake);
    assert_eq!(
        rows.len() as u64,
        sent.samples,
        "rows in the lake vs samples acknowledged"
    );
    let keys: BTreeSet<_> = rows
        .iter()
        .map(|r| (&r.device, &r.boot_id, r.seq, &r.sensor, r.ts_us))
        .collect();
    assert_eq!(keys.len(), rows.len(), "duplicate rows in the lake");
    for (device, (boot_id, batches)) in &sent.batches {
        let seqs: BTreeSet<i64> = rows
            .iter()
            .filter(|r| &r.device == device)
            .inspect(|r| assert_eq!(&r.boot_id, boot_id, "{device}"))
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (0..*batches as i64).collect(), "{device}: seqs");
    }
    if let Some(counts) = python_counts(lake) {
        let messages: u64 = sent.batches.values().map(|(_, b)| b).sum();
        assert_eq!(counts["rows"], sent.samples, "{counts}");
        assert_eq!(counts["keys"], sent.samples, "{counts}");
        assert_eq!(counts["messages"], messages, "{counts}");
    }
}

/// SIGKILL ingest twice while agents publish: the broker keeps the persistent session's
/// messages, redelivers what was not acknowledged, and de-duplication keeps the lake exact.
#[test]
fn sigkill_of_ingest_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let Some(broker) = Broker::start_persistent(logs) else {
        return;
    };
    let mut ingest = start_ingest(&broker, &lake, logs, &[]);
    let mut agent = start_agent(&broker, "line-k", "d1,d2,d3,d4", 60, logs);
    for pause in [Duration::from_millis(1800), Duration::from_millis(1300)] {
        std::thread::sleep(pause);
        ingest.kill();
        // Down for a while: the broker queues for the session.
        std::thread::sleep(Duration::from_millis(600));
        ingest = start_ingest(&broker, &lake, logs, &[]);
    }
    assert!(agent.wait(Duration::from_secs(90)).success());
    let sent = sent(logs, "line-k");
    wait_for_rows_in_all_logs(&lake, sent.samples, Duration::from_secs(60));
    ingest.terminate();
    assert!(ingest.wait(Duration::from_secs(30)).success());
    let report = read_json(&logs.join("ingest-report.json"));
    assert_eq!(
        report["messages_acked"], report["messages_received"],
        "{report}"
    );
    assert_exactly_once(&lake, &sent);
}

/// Restart Mosquitto (persistence on) while agents publish and ingest consumes: agents spool
/// and resend, ingest reconnects to its saved session, and nothing is lost or doubled.
#[test]
fn a_broker_restart_under_load_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let Some(mut broker) = Broker::start_persistent(logs) else {
        return;
    };
    let mut ingest = start_ingest(&broker, &lake, logs, &[]);
    let mut agent = start_agent(&broker, "line-r", "d1,d2,d3", 50, logs);
    std::thread::sleep(Duration::from_millis(1800));
    broker.restart();
    assert!(agent.wait(Duration::from_secs(90)).success());
    let sent = sent(logs, "line-r");
    wait_for_rows_in_all_logs(&lake, sent.samples, Duration::from_secs(60));
    assert!(
        ingest.stderr().contains("reconnected to the broker"),
        "{}",
        ingest.stderr()
    );
    ingest.terminate();
    assert!(ingest.wait(Duration::from_secs(30)).success());
    assert_exactly_once(&lake, &sent);
}

/// Two ingesters on one MQTT 5 shared subscription split the load, each with its own files
/// and commit log, and every message lands once across them.
#[test]
fn two_ingesters_on_a_shared_subscription_land_each_message_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let Some(broker) = Broker::start(logs).mosquitto("MQTT 5 shared subscriptions") else {
        return;
    };
    let shared = ["--share-group", "loopline-ingest"];
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let mut a = start_ingest_as(
        "a",
        &broker,
        &lake,
        logs,
        &[shared[0], shared[1], "--metrics-listen", &metrics],
    );
    let mut b = start_ingest_as("b", &broker, &lake, logs, &shared);
    let mut agent = start_agent(&broker, "line-s", "d1,d2,d3,d4", 25, logs);
    assert!(agent.wait(Duration::from_secs(90)).success());
    let sent = sent(logs, "line-s");
    wait_for_rows_in_all_logs(&lake, sent.samples, Duration::from_secs(60));
    // Ingest a's own endpoint agrees with its commit log.
    let (status, health) = http_get(metrics_port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{health}");
    // The counter is bumped just after the commit log's append, so give it a moment to catch up.
    let committed_a: u64 = read_commit_log(&lake.join("_loopline/commits/a.log"))
        .unwrap()
        .iter()
        .map(|r| r.rows)
        .sum();
    let line =
        format!("loopline_ingest_rows_committed_total{{table=\"telemetry\"}} {committed_a}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = http_get(metrics_port, "/metrics");
        if text.contains(&line) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains(&line), "{line} not in:\n{text}");
    assert!(
        text.contains("# TYPE loopline_ingest_ack_lag_seconds histogram"),
        "{text}"
    );
    for ingest in [&mut a, &mut b] {
        ingest.terminate();
        assert!(ingest.wait(Duration::from_secs(30)).success());
    }
    let (ra, rb) = (
        read_json(&logs.join("ingest-a-report.json")),
        read_json(&logs.join("ingest-b-report.json")),
    );
    let (ma, mb) = (
        ra["messages_received"].as_u64().unwrap(),
        rb["messages_received"].as_u64().unwrap(),
    );
    let messages: u64 = sent.batches.values().map(|(_, n)| n).sum();
    assert_eq!(
        ma + mb,
        messages,
        "each message delivered to exactly one ingester"
    );
    assert!(ma > 0 && mb > 0, "the broker split the load: {ma} and {mb}");
    assert_exactly_once(&lake, &sent);
}
