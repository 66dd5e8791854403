use std::collections::BTreeSet;
use std::time::Duration;

use loopline_proto::Message;
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::topic::Kind;
use loopline_proto::v1::{DeviceId, Quality, SCHEMA_VERSION, TelemetryBatch};

use crate::harness::{Broker, lake_rows};
use crate::pipeline::{read_json, start_agent, start_ingest, wait_for_committed_rows};

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn batch(device: &str, samples: usize) -> TelemetryBatch {
    let base = now_us() - 1_000_000;
    let mut channel = ChannelBuilder::new("temperature", "Cel", base);
    for i in 0..samples {
        channel.push(base + i as i64 * 100, 21.5, Quality::Good);
    }
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        device: Some(DeviceId::checked("plant-e2e", "line-m", device).unwrap()),
        boot_id: "badbadbadbadbadbadbadbadbadbadba".into(),
        seq: 0,
        base_ts_us: base,
        channels: vec![channel.finish()],
        ..Default::default()
    }
}

#[test]
fn malformed_payloads_are_counted_and_skipped_while_good_ones_flow() {
    const BATCHES: u32 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let lake = logs.join("lake");
    let broker = Broker::start(logs);
    let mut ingest = start_ingest(&broker, &lake, logs, &["--max-payload-bytes", "65536"]);
    let mut agent = start_agent(&broker, "line-m", "d1", BATCHES, logs);

    let topic = DeviceId::checked("plant-e2e", "line-m", "d1")
        .unwrap()
        .topic(Kind::Telemetry);
    let good = batch("d1", 10).encode_to_vec();
    let spoofed = batch("intruder", 10).encode_to_vec();
    let mut nan = batch("d1", 10);
    nan.channels[0].values[3] = f32::NAN;
    let mut future = batch("d1", 10);
    future.base_ts_us += 7 * 24 * 3_600_000_000;
    let mut version = batch("d1", 10);
    version.schema_version = 99;
    let oversized = batch("d1", 20_000).encode_to_vec();
    assert!(oversized.len() > 65_536);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff; 12], "undecodable"),
        (good[..good.len() - 5].to_vec(), "undecodable"),
        (spoofed, "identity_mismatch"),
        (nan.encode_to_vec(), "out_of_range"),
        (future.encode_to_vec(), "out_of_range"),
        (version.encode_to_vec(), "schema_version"),
        (oversized, "oversized"),
    ];
    // Twice each, while the agent's good batches flow.
    let mut messages = Vec::new();
    for _ in 0..2 {
        for (payload, _) in &bad {
            messages.push((topic.clone(), payload.clone()));
        }
        broker.publish_all(&messages);
        messages.clear();
        std::thread::sleep(Duration::from_millis(300));
    }

    let status = agent.wait(Duration::from_secs(60));
    assert!(status.success(), "agent exited with {status}");
    let report = read_json(&logs.join("agent-line-m.json"));
    let device = &report["devices"][0];
    assert_eq!(device["batches_acked"], u64::from(BATCHES));
    let samples = device["samples_acked"].as_u64().unwrap();
    let boot_id = device["boot_id"].as_str().unwrap().to_owned();

    wait_for_committed_rows(&lake, samples, Duration::from_secs(30));
    // Ingest never stopped for the bad input.
    assert!(!ingest.stderr().contains("ingest failed"));
    ingest.terminate();
    assert!(ingest.wait(Duration::from_secs(20)).success());

    let report = read_json(&logs.join("ingest-report.json"));
    let rejected = &report["rejected"];
    let mut want = std::collections::BTreeMap::new();
    for (_, reason) in &bad {
        *want.entry(*reason).or_insert(0u64) += 2;
    }
    for (reason, count) in &want {
        assert_eq!(rejected[*reason], *count, "{reason}: {rejected}");
    }
    assert_eq!(
        report["messages_received"],
        u64::from(BATCHES) + 2 * bad.len() as u64
    );
    // Each cause is logged once, not once per message.
    assert_eq!(
        ingest.stderr().matches("reason=undecodable").count(),
        1,
        "{}",
        ingest.stderr()
    );

    // Every bad message is in the quarantine table, verbatim, with its reason.
    let mut quarantined: std::collections::BTreeMap<String, u64> = Default::default();
    for file in crate::harness::parquet_files(&lake.join("quarantine")) {
        for row in loopline_ingest::quarantine::read_file(&file).unwrap() {
            assert_eq!(row.topic, topic);
            let original = bad.iter().find(|(payload, reason)| {
                *reason == row.reason && payload.as_slice() == row.payload.as_slice()
            });
            assert!(
                original.is_some(),
                "{} payload of {} bytes is not one sent",
                row.reason,
                row.payload_bytes
            );
            assert_eq!(row.payload_bytes as usize, row.payload.len());
            *quarantined.entry(row.reason).or_default() += 1;
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        want.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    assert_eq!(quarantined, want);
    if let Some(counts) = crate::harness::python_counts(&lake) {
        assert_eq!(counts["rows"], samples);
        for (reason, n) in &want {
            assert_eq!(counts["quarantine"][reason], *n, "{counts}");
        }
    }

    // The lake holds exactly the agent's batches and nothing of the bad ones.
    let rows = lake_rows(&lake);
    assert_eq!(rows.len() as u64, samples);
    assert!(
        rows.iter()
            .all(|r| r.device == "d1" && r.boot_id == boot_id)
    );
    let seqs: BTreeSet<i64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..i64::from(BATCHES)).collect());
}
