//! Integration tests of the ingest library without a broker: batches in, Parquet out, read
//! back with the parquet crate's own Arrow reader and compared value by value.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopline_ingest::dedup::DedupLimits;
use loopline_ingest::device_health::{self, DeviceHealthRow};
use loopline_ingest::inference::{self, InferenceRow};
use loopline_ingest::quarantine::QuarantineRow;
use loopline_ingest::sim_labels::{self, SimLabelRow};
use loopline_ingest::telemetry::read_file as read_rows;
use loopline_ingest::writer::{
    Appended, CommitRecord, Committed, LakeWriter, TABLES, WriterOptions, read_commit_log,
    read_commits, read_table_commits,
};
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{
    DeviceHealth, DeviceId, InferenceResult, Quality, SCHEMA_VERSION, SimLabel, TelemetryBatch,
};
use proptest::prelude::*;
use tokio::time::Instant;

const HOUR_US: i64 = 3_600_000_000;
/// 2026-11-29T10:00:00Z
const T0: i64 = 1_795_946_400_000_000;

/// One row as the lake should hold it; value as bits so NaN-free exact comparison is total.
type Row = (i64, String, String, String, String, u64, i16, String, i64);

fn options(lake: &Path) -> WriterOptions {
    WriterOptions {
        lake: lake.to_owned(),
        ingest_id: "test-1".into(),
        roll_rows: NonZeroUsize::new(1_000_000).unwrap(),
        roll_age: Duration::from_secs(3600),
        max_buffered_rows: NonZeroUsize::new(10_000_000).unwrap(),
        roll_bytes: usize::MAX,
        max_buffered_bytes: usize::MAX,
        zstd_level: 3,
        dedup: DedupLimits {
            window_us: 7 * 24 * 3_600_000_000,
            max_ranges: 4096,
        },
        quarantine_max_payload_bytes: 1 << 20,
    }
}

/// The commit records of what a writer call committed.
trait Records {
    fn recs(self) -> Vec<CommitRecord>;
}

impl Records for Appended {
    fn recs(self) -> Vec<CommitRecord> {
        self.commits.into_iter().map(|c| c.record).collect()
    }
}

impl Records for Vec<Committed> {
    fn recs(self) -> Vec<CommitRecord> {
        self.into_iter().map(|c| c.record).collect()
    }
}

fn expected_rows(batch: &TelemetryBatch) -> Vec<Row> {
    let id = batch.device.as_ref().unwrap();
    let mut rows = Vec::new();
    for channel in &batch.channels {
        for s in channel.samples(batch.base_ts_us).unwrap() {
            rows.push((
                s.ts_us,
                id.site.clone(),
                id.line.clone(),
                id.device.clone(),
                channel.sensor.clone(),
                f64::from(s.value).to_bits(),
                s.quality as i16,
                batch.boot_id.clone(),
                batch.seq as i64,
            ));
        }
    }
    rows
}

fn read_file(path: &Path) -> Vec<Row> {
    read_rows(path)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.ts_us,
                r.site,
                r.line,
                r.device,
                r.sensor,
                r.value.to_bits(),
                r.quality,
                r.boot_id,
                r.seq,
            )
        })
        .collect()
}

fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Checks every file against its partition path and its sort order, and returns all rows.
fn read_lake(lake: &Path, records: &[CommitRecord]) -> Vec<Row> {
    let files = parquet_files(&lake.join("telemetry"));
    assert_eq!(
        files.len(),
        records.len(),
        "files on disk vs commit records"
    );
    let mut all = Vec::new();
    for record in records {
        let path = lake.join(&record.path);
        assert!(
            files.contains(&path),
            "{} committed but missing",
            record.path
        );
        let rows = read_file(&path);
        assert_eq!(rows.len() as u64, record.rows, "{}", record.path);
        // Sorted by (device, sensor, ts) inside the file.
        for pair in rows.windows(2) {
            let key = |r: &Row| (r.3.clone(), r.4.clone(), r.0);
            assert!(key(&pair[0]) <= key(&pair[1]), "{} not sorted", record.path);
        }
        for row in &rows {
            let hour = row.0.div_euclid(HOUR_US);
            let start = chrono::DateTime::from_timestamp(hour * 3600, 0).unwrap();
            let dir = format!(
                "telemetry/site={}/line={}/date={}/hour={}/",
                row.1,
                row.2,
                start.format("%Y-%m-%d"),
                start.format("%H")
            );
            assert!(
                record.path.starts_with(&dir),
                "{} holds a row of {dir}",
                record.path
            );
        }
        assert_eq!(record.min_ts_us, rows.iter().map(|r| r.0).min().unwrap());
        assert_eq!(record.max_ts_us, rows.iter().map(|r| r.0).max().unwrap());
        all.extend(rows);
    }
    all
}

fn batch(
    device: &DeviceId,
    boot: &str,
    seq: u64,
    base: i64,
    n: usize,
    step_us: i64,
) -> TelemetryBatch {
    let channels = ["vibration", "temperature"]
        .iter()
        .enumerate()
        .map(|(c, sensor)| {
            let mut b = ChannelBuilder::new(*sensor, "x", base);
            for i in 0..n {
                let quality = if i % 7 == 3 {
                    Quality::Uncertain
                } else {
                    Quality::Good
                };
                b.push(
                    base + i as i64 * step_us,
                    (seq as f32) * 0.5 + i as f32 + c as f32 / 4.0,
                    quality,
                );
            }
            b.finish()
        })
        .collect();
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        device: Some(device.clone()),
        boot_id: boot.into(),
        seq,
        base_ts_us: base,
        channels,
        ..Default::default()
    }
}

#[test]
fn batches_spanning_an_hour_split_into_two_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let dev = DeviceId::checked("plant", "l1", "d1").unwrap();
    // 100 samples at 1 ms from 40 ms before the hour: 40 land in hour 10, 60 in hour 11.
    let b = batch(&dev, "b1", 0, T0 + HOUR_US - 40_000, 100, 1000);
    let now = Instant::now();
    assert!(writer.append(&b, now).unwrap().recs().is_empty());
    assert_eq!(writer.buffered_rows(), 200);
    let records = writer.flush().unwrap().recs();
    assert_eq!(records.len(), 2);
    let mut by_hour: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &records {
        let hour = r
            .path
            .split("hour=")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        by_hour.insert(hour, r.rows);
    }
    assert_eq!(by_hour, BTreeMap::from([("10", 80), ("11", 120)]));
    let mut got = read_lake(dir.path(), &records);
    let mut want = expected_rows(&b);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(
        records[0]
            .path
            .starts_with("telemetry/site=plant/line=l1/date=2026-11-29/hour="),
        "{}",
        records[0].path
    );
}

#[test]
fn rolls_by_rows_by_age_and_by_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.roll_rows = NonZeroUsize::new(500).unwrap();
    opts.roll_age = Duration::from_secs(10);
    opts.max_buffered_rows = NonZeroUsize::new(700).unwrap();
    let mut writer = LakeWriter::open(opts).unwrap();
    let a = DeviceId::checked("s", "a", "d").unwrap();
    let b = DeviceId::checked("s", "b", "d").unwrap();
    let t = Instant::now();
    // 2 channels x 100 samples = 200 rows per batch.
    assert!(
        writer
            .append(&batch(&a, "x", 0, T0, 100, 1000), t)
            .unwrap()
            .recs()
            .is_empty()
    );
    assert!(
        writer
            .append(&batch(&a, "x", 1, T0 + 100_000, 100, 1000), t)
            .unwrap()
            .recs()
            .is_empty()
    );
    // Third batch brings line a to 600 rows >= 500: rolled by rows.
    let by_rows = writer
        .append(&batch(&a, "x", 2, T0 + 200_000, 100, 1000), t)
        .unwrap()
        .recs();
    assert_eq!(
        by_rows.iter().map(|r| r.rows).collect::<Vec<_>>(),
        vec![600]
    );
    assert_eq!(writer.buffered_rows(), 0);

    // Line b's 400 rows and line a's 400 rows: 800 > 700, the largest (a tie broken either
    // way) is committed early.
    writer
        .append(&batch(&b, "x", 0, T0, 100, 1000), t)
        .unwrap()
        .recs();
    writer
        .append(&batch(&b, "x", 1, T0 + 100_000, 100, 1000), t)
        .unwrap()
        .recs();
    writer
        .append(&batch(&a, "x", 3, T0 + 300_000, 100, 1000), t)
        .unwrap()
        .recs();
    let by_memory = writer
        .append(&batch(&a, "x", 4, T0 + 400_000, 100, 1000), t)
        .unwrap()
        .recs();
    assert_eq!(by_memory.len(), 1);
    assert_eq!(by_memory[0].rows, 400);
    assert_eq!(writer.buffered_rows(), 400);

    // Nothing is due before roll_age; everything is after.
    assert!(
        writer
            .roll_due(t + Duration::from_secs(9))
            .unwrap()
            .recs()
            .is_empty()
    );
    assert_eq!(writer.next_roll(), Some(t + Duration::from_secs(10)));
    let by_age = writer.roll_due(t + Duration::from_secs(10)).unwrap().recs();
    assert_eq!(by_age.iter().map(|r| r.rows).sum::<u64>(), 400);
    assert_eq!(writer.next_roll(), None);

    let log = read_commit_log(writer.commit_log_path()).unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log.iter().map(|r| r.n).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(log.iter().map(|r| r.rows).sum::<u64>(), 1400);
}

#[test]
fn file_numbers_continue_after_reopen_and_a_torn_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    let t = Instant::now();
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    writer
        .append(&batch(&dev, "x", 0, T0, 10, 1000), t)
        .unwrap()
        .recs();
    let first = writer.flush().unwrap().recs();
    let log_path = writer.commit_log_path().to_owned();
    drop(writer);
    // A crash mid-append leaves half a line.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    std::io::Write::write_all(&mut log, b"{\"v\":1,\"n\":7,\"tab").unwrap();
    drop(log);
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    writer
        .append(&batch(&dev, "x", 1, T0, 10, 1000), t)
        .unwrap()
        .recs();
    let second = writer.flush().unwrap().recs();
    assert_eq!(first[0].n, 0);
    assert_eq!(second[0].n, 1);
    assert_ne!(first[0].path, second[0].path);
    assert!(
        second[0].path.ends_with("part-test-1-00000001.parquet"),
        "{}",
        second[0].path
    );

    // A bad line in the middle is an error naming the file and line.
    let text = std::fs::read_to_string(&log_path).unwrap();
    std::fs::write(&log_path, format!("garbage\n{text}")).unwrap();
    let err = LakeWriter::open(options(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("test-1.log"),
        "{err}"
    );
}

#[test]
fn no_temporary_files_remain() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    writer
        .append(&batch(&dev, "x", 0, T0, 50, 1000), Instant::now())
        .unwrap()
        .recs();
    writer.flush().unwrap().recs();
    for path in parquet_files(dir.path()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.') && !name.ends_with(".tmp"),
            "{name} left behind"
        );
    }
    // What a crash leaves in the temporary folder is never in the lake, and the next start
    // clears it.
    drop(writer);
    let tmp = dir.path().join("_loopline/tmp/test-1");
    std::fs::write(tmp.join("part-test-1-00000009.parquet.tmp"), b"half a file").unwrap();
    let _writer = LakeWriter::open(options(dir.path())).unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// Redeliveries add no rows: while the first copy is buffered, after it is committed, and
/// after a restart that rebuilt the state from the commit log, including a crash that left
/// one table's part committed and another's not.
#[test]
fn duplicates_add_no_rows_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    let first = batch_with_parts(&dev, "boot-a", 0, T0, 20, 3);
    let second = batch_with_parts(&dev, "boot-a", 1, T0 + 1_000_000, 20, 3);
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let a = writer.append(&first, Instant::now()).unwrap();
    assert_eq!((a.new_parts, a.duplicate_parts), (TABLES.len() - 1, 0));
    let again = writer.append(&first, Instant::now()).unwrap();
    assert!(again.is_duplicate());
    // The copy waits for the same buffers as the first.
    let mut want = a.buffers.clone();
    want.sort_unstable();
    let mut got = again.buffers.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    let committed = writer.flush().unwrap().recs();
    let telemetry_rows: u64 = committed
        .iter()
        .filter(|r| r.table == "telemetry")
        .map(|r| r.rows)
        .sum();
    let samples = (first.channels.len() * 20) as u64;
    assert_eq!(
        telemetry_rows, samples,
        "one copy of each channel's 20 samples"
    );
    let after = writer.append(&first, Instant::now()).unwrap();
    assert!(after.is_duplicate() && after.buffers.is_empty());

    // Only the second batch's telemetry reaches a file before the "crash".
    let mut opts = options(dir.path());
    opts.roll_rows = NonZeroUsize::new(samples as usize).unwrap();
    drop(writer);
    let mut writer = LakeWriter::open(opts.clone()).unwrap();
    let b = writer.append(&second, Instant::now()).unwrap();
    assert_eq!(b.commits.len(), 1);
    assert_eq!(b.commits[0].record.table, "telemetry");
    drop(writer); // the other tables' rows of `second` are lost, and it was never acknowledged

    let mut writer = LakeWriter::open(opts).unwrap();
    assert!(
        writer
            .append(&first, Instant::now())
            .unwrap()
            .is_duplicate()
    );
    let redelivered = writer.append(&second, Instant::now()).unwrap();
    assert_eq!(
        redelivered.duplicate_parts, 1,
        "telemetry is already in the lake"
    );
    assert_eq!(redelivered.new_parts, TABLES.len() - 2);
    writer.flush().unwrap();
    let records = read_commits(&dir.path().join("_loopline/commits/test-1.log")).unwrap();
    for table in ["telemetry", "inference", "device_health", "sim_labels"] {
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| r.table == table)
            .flat_map(|r| {
                r.sources
                    .iter()
                    .flat_map(|s| s.seqs.iter().flat_map(|&(lo, hi)| lo..=hi))
            })
            .collect();
        assert_eq!(seqs.len(), 2, "{table}: {seqs:?}");
        assert_eq!(
            seqs.iter().collect::<std::collections::BTreeSet<_>>().len(),
            2,
            "{table}"
        );
    }
}

fn batch_strategy() -> impl Strategy<Value = TelemetryBatch> {
    (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["d1", "d2", "d3"]),
        0u64..1_000_000,
        // Bases within a three-hour span, so batches cross partitions.
        0i64..3 * HOUR_US,
        prop::collection::vec(
            (
                prop::sample::select(vec!["vibration", "temperature", "current"]),
                prop::collection::vec((0i64..200_000, -1.0e6f32..1.0e6, 0u32..3), 1..40),
            ),
            1..4,
        ),
    )
        .prop_map(|(line, device, seq, base_off, channels)| {
            let base = T0 + base_off;
            let mut seen = std::collections::HashSet::new();
            let channels = channels
                .into_iter()
                .filter(|(sensor, _)| seen.insert(*sensor))
                .map(|(sensor, samples)| {
                    let mut b = ChannelBuilder::new(sensor, "u", base);
                    let mut ts = base;
                    for (step, value, q) in samples {
                        ts += step;
                        b.push(ts, value, Quality::try_from(q as i32).unwrap());
                    }
                    b.finish()
                })
                .collect();
            TelemetryBatch {
                schema_version: SCHEMA_VERSION,
                device: Some(DeviceId::checked("site", line, device).unwrap()),
                boot_id: format!("boot-{device}"),
                seq,
                base_ts_us: base,
                channels,
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// proto -> Arrow -> Parquet -> Arrow: every sample comes back exactly once, bit for bit,
    /// in the right partition and order, whatever the rolling.
    #[test]
    fn every_sample_round_trips(
        batches in prop::collection::vec(batch_strategy(), 1..12),
        roll_rows in 20usize..400,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.roll_rows = NonZeroUsize::new(roll_rows).unwrap();
        opts.max_buffered_rows = NonZeroUsize::new(roll_rows * 2).unwrap();
        let mut writer = LakeWriter::open(opts).unwrap();
        let mut records = Vec::new();
        let mut want = Vec::new();
        for b in &batches {
            records.extend(writer.append(b, Instant::now()).unwrap().recs());
            want.extend(expected_rows(b));
        }
        records.extend(writer.flush().unwrap().recs());
        prop_assert_eq!(writer.buffered_rows(), 0);
        prop_assert_eq!(&read_commit_log(writer.commit_log_path()).unwrap(), &records);
        let mut got = read_lake(dir.path(), &records);
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------- inference, health, labels

/// `batch(..)` plus `inferences` windows of 10 ms from `base`, a health snapshot at the end of
/// the samples, and one label per window, alternating machine and sensor faults.
fn batch_with_parts(
    device: &DeviceId,
    boot: &str,
    seq: u64,
    base: i64,
    samples: usize,
    inferences: usize,
) -> TelemetryBatch {
    let mut b = batch(device, boot, seq, base, samples, 1000);
    b.model_version = "line-1-v3".into();
    b.inferences = (0..inferences as i64)
        .map(|i| InferenceResult {
            window_start_us: base + i * 10_000,
            window_end_us: base + i * 10_000 + 9_999,
            score: seq as f32 + i as f32 / 8.0,
            anomaly: i % 3 == 2,
            // Every other result names no model: it ran the batch's.
            model_version: if i % 2 == 0 {
                "line-1-v2".into()
            } else {
                String::new()
            },
            latency_us: u32::MAX - i as u32,
        })
        .collect();
    b.health = Some(DeviceHealth {
        ts_us: base + samples as i64 * 1000,
        npu_utilisation: 0.25 + seq as f32 / 100.0,
        npu_temperature_c: 55.5,
        npu_power_w: 2.25,
        npu_clock_mhz: 1200,
        throttle_level: 1,
        npu_errors: 2,
        spool_pending: 3 + seq,
        dropped_samples: 5,
        npu_fps: 100.0,
        latency_p50_us: 700,
        latency_p95_us: 900,
        latency_p99_us: u32::MAX,
        npu_ecc_errors: i64::MAX as u64,
        npu_resets: 1,
        npu_failed_inferences: 9,
        spool_bytes: 1 << 40,
        spool_quarantined_segments: 4,
    });
    b.sim_labels = (0..inferences as i64)
        .map(|i| SimLabel {
            start_us: base + i * 10_000,
            end_us: base + i * 10_000 + 10_000,
            fault: if i % 2 == 0 {
                "imbalance"
            } else {
                "sensor_stuck"
            }
            .into(),
            severity: i as f32 / 10.0,
            sensor: if i % 2 == 0 {
                String::new()
            } else {
                "vibration".into()
            },
        })
        .collect();
    b
}

fn expected_inference(b: &TelemetryBatch) -> Vec<InferenceRow> {
    let id = b.device.as_ref().unwrap();
    b.inferences
        .iter()
        .map(|r| InferenceRow {
            ts_us: r.window_end_us,
            window_start_us: r.window_start_us,
            site: id.site.clone(),
            line: id.line.clone(),
            device: id.device.clone(),
            boot_id: b.boot_id.clone(),
            seq: b.seq as i64,
            model_version: [&r.model_version, &b.model_version]
                .into_iter()
                .find(|v| !v.is_empty())
                .cloned(),
            score: r.score,
            anomaly: r.anomaly,
            latency_us: i64::from(r.latency_us),
        })
        .collect()
}

fn expected_health(b: &TelemetryBatch) -> Vec<DeviceHealthRow> {
    let id = b.device.as_ref().unwrap();
    b.health
        .iter()
        .map(|h| DeviceHealthRow {
            site: id.site.clone(),
            line: id.line.clone(),
            device: id.device.clone(),
            boot_id: b.boot_id.clone(),
            seq: b.seq as i64,
            model_version: (!b.model_version.is_empty()).then(|| b.model_version.clone()),
            health: *h,
        })
        .collect()
}

fn expected_labels(b: &TelemetryBatch) -> Vec<SimLabelRow> {
    let id = b.device.as_ref().unwrap();
    b.sim_labels
        .iter()
        .map(|l| SimLabelRow {
            start_us: l.start_us,
            end_us: l.end_us,
            site: id.site.clone(),
            line: id.line.clone(),
            device: id.device.clone(),
            boot_id: b.boot_id.clone(),
            seq: b.seq as i64,
            fault: l.fault.clone(),
            severity: l.severity,
            sensor: (!l.sensor.is_empty()).then(|| l.sensor.clone()),
        })
        .collect()
}

/// What every file of every table must satisfy: on disk exactly as committed, rows matching
/// the record, each row in its partition, rows in the table's order. Returns the rows of
/// each file, read with `read`, with each row's (device, partition timestamp).
fn check_table<R>(
    lake: &Path,
    table: &str,
    records: &[CommitRecord],
    read: impl Fn(&Path) -> Vec<R>,
    key: impl Fn(&R) -> (String, String, String, i64),
) -> Vec<R> {
    let records: Vec<&CommitRecord> = records.iter().filter(|r| r.table == table).collect();
    let on_disk = if lake.join(table).exists() {
        parquet_files(&lake.join(table))
    } else {
        Vec::new()
    };
    assert_eq!(on_disk.len(), records.len(), "{table}: files vs records");
    let mut all = Vec::new();
    for record in records {
        let path = lake.join(&record.path);
        assert!(
            on_disk.contains(&path),
            "{} committed but missing",
            record.path
        );
        let rows = read(&path);
        assert_eq!(rows.len() as u64, record.rows, "{}", record.path);
        let keys: Vec<_> = rows.iter().map(&key).collect();
        for pair in keys.windows(2) {
            assert!(
                (&pair[0].2, pair[0].3) <= (&pair[1].2, pair[1].3),
                "{} not sorted by (device, ts)",
                record.path
            );
        }
        for (site, line, _, ts) in &keys {
            let start = chrono::DateTime::from_timestamp(ts.div_euclid(HOUR_US) * 3600, 0).unwrap();
            let dir = format!(
                "{table}/site={site}/line={line}/date={}/hour={}/part-test-1-",
                start.format("%Y-%m-%d"),
                start.format("%H")
            );
            assert!(
                record.path.starts_with(&dir),
                "{} holds a row of {dir}",
                record.path
            );
        }
        assert_eq!(record.min_ts_us, keys.iter().map(|k| k.3).min().unwrap());
        assert_eq!(record.max_ts_us, keys.iter().map(|k| k.3).max().unwrap());
        all.extend(rows);
    }
    all
}

fn lake_inference(lake: &Path, records: &[CommitRecord]) -> Vec<InferenceRow> {
    let mut rows = check_table(
        lake,
        inference::TABLE,
        records,
        |p| inference::read_file(p).unwrap(),
        |r| (r.site.clone(), r.line.clone(), r.device.clone(), r.ts_us),
    );
    rows.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq, a.ts_us)
            .cmp(&(&b.line, &b.device, &b.boot_id, b.seq, b.ts_us))
    });
    rows
}

fn lake_health(lake: &Path, records: &[CommitRecord]) -> Vec<DeviceHealthRow> {
    let mut rows = check_table(
        lake,
        device_health::TABLE,
        records,
        |p| device_health::read_file(p).unwrap(),
        |r| {
            (
                r.site.clone(),
                r.line.clone(),
                r.device.clone(),
                r.health.ts_us,
            )
        },
    );
    rows.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq).cmp(&(&b.line, &b.device, &b.boot_id, b.seq))
    });
    rows
}

fn lake_labels(lake: &Path, records: &[CommitRecord]) -> Vec<SimLabelRow> {
    let mut rows = check_table(
        lake,
        sim_labels::TABLE,
        records,
        |p| sim_labels::read_file(p).unwrap(),
        |r| (r.site.clone(), r.line.clone(), r.device.clone(), r.start_us),
    );
    rows.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq, a.start_us)
            .cmp(&(&b.line, &b.device, &b.boot_id, b.seq, b.start_us))
    });
    rows
}

/// Every table's rows come back exactly, each in the partition of its own timestamp, with
/// the commit log naming each file's table.
#[test]
fn every_table_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let a = DeviceId::checked("plant", "l1", "d1").unwrap();
    let b = DeviceId::checked("plant", "l2", "d1").unwrap();
    let t = Instant::now();
    let batches = vec![
        batch_with_parts(&a, "boot-a", 0, T0, 50, 4),
        batch_with_parts(&b, "boot-b", 0, T0 + 1000, 50, 2),
        // Windows on both sides of the hour: inference and labels split, health lands after.
        batch_with_parts(&a, "boot-a", 1, T0 + HOUR_US - 25_000, 50, 5),
        // No model version anywhere: model_version is null in both tables.
        {
            let mut x = batch_with_parts(&b, "boot-b", 1, T0 + 2 * HOUR_US, 10, 1);
            x.model_version.clear();
            x.inferences[0].model_version.clear();
            x
        },
        // Samples only: adds no rows to the other tables.
        batch(&a, "boot-a", 2, T0 + 300_000, 10, 1000),
    ];
    let mut records = Vec::new();
    for x in &batches {
        records.extend(writer.append(x, t).unwrap().recs());
    }
    records.extend(writer.flush().unwrap().recs());
    assert_eq!(writer.buffered_rows(), 0);

    // The log holds every table's records in commit order; read_commit_log only telemetry's.
    let log = read_commits(writer.commit_log_path()).unwrap();
    assert_eq!(log, records);
    let telemetry: Vec<_> = records
        .iter()
        .filter(|r| r.table == "telemetry")
        .cloned()
        .collect();
    assert_eq!(
        read_commit_log(writer.commit_log_path()).unwrap(),
        telemetry
    );
    assert_eq!(
        read_table_commits(writer.commit_log_path(), "inference").unwrap(),
        records
            .iter()
            .filter(|r| r.table == "inference")
            .cloned()
            .collect::<Vec<_>>()
    );
    let mut ns: Vec<u64> = log.iter().map(|r| r.n).collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (0..log.len() as u64).collect::<Vec<_>>(),
        "one numbering over all tables"
    );
    for r in &log {
        assert!(TABLES.contains(&r.table.as_str()), "{r:?}");
        assert!(
            r.path.starts_with(&format!("{}/site=plant/", r.table)),
            "{r:?}"
        );
    }

    let mut want_telemetry: Vec<Row> = batches.iter().flat_map(expected_rows).collect();
    let mut got_telemetry = read_lake(dir.path(), &telemetry);
    want_telemetry.sort();
    got_telemetry.sort();
    assert_eq!(got_telemetry, want_telemetry);

    let mut want = batches
        .iter()
        .flat_map(expected_inference)
        .collect::<Vec<_>>();
    want.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq, a.ts_us)
            .cmp(&(&b.line, &b.device, &b.boot_id, b.seq, b.ts_us))
    });
    let got = lake_inference(dir.path(), &records);
    assert_eq!(got.len(), 4 + 2 + 5 + 1);
    assert_eq!(got, want);
    assert_eq!(got.last().unwrap().model_version, None);
    assert_eq!(got[1].model_version.as_deref(), Some("line-1-v3"));
    assert_eq!(got[0].latency_us, i64::from(u32::MAX));

    let got = lake_health(dir.path(), &records);
    let want: Vec<_> = batches.iter().flat_map(expected_health).collect();
    assert_eq!(got.len(), 4);
    let mut want_sorted = want.clone();
    want_sorted.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq).cmp(&(&b.line, &b.device, &b.boot_id, b.seq))
    });
    assert_eq!(got, want_sorted);
    assert_eq!(got[0].health.npu_ecc_errors, i64::MAX as u64);

    let got = lake_labels(dir.path(), &records);
    let mut want: Vec<_> = batches.iter().flat_map(expected_labels).collect();
    want.sort_by(|a, b| {
        (&a.line, &a.device, &a.boot_id, a.seq, a.start_us)
            .cmp(&(&b.line, &b.device, &b.boot_id, b.seq, b.start_us))
    });
    assert_eq!(got, want);
    assert_eq!(got[0].sensor, None);
    assert_eq!(got[1].sensor.as_deref(), Some("vibration"));

    // The batch straddling the hour put its windows on both sides.
    let hours: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r.table == "inference" && r.path.contains("line=l1"))
        .map(|r| {
            r.path
                .split("hour=")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(hours, ["10", "11"].into_iter().collect());
}

/// The files of every new table carry the same encoding promises as telemetry's: zstd,
/// statistics, the sort order declared, microsecond UTC timestamps, no Arrow schema.
#[test]
fn every_table_is_encoded_for_every_reader() {
    use parquet::basic::{Compression, LogicalType, TimeUnit};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let dir = tempfile::tempdir().unwrap();
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    writer
        .append(&batch_with_parts(&dev, "x", 0, T0, 20, 3), Instant::now())
        .unwrap()
        .recs();
    writer
        .quarantine(
            &QuarantineRow {
                received_at_us: T0,
                topic: "loopline/v1/s/l/d/telemetry",
                reason: "undecodable",
                detail: "not protobuf",
                payload: b"\xff\xfe",
            },
            Instant::now(),
        )
        .unwrap();
    let records = writer.flush().unwrap().recs();
    let quarantined: Vec<_> = records.iter().filter(|r| r.table == "quarantine").collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0].sources.is_empty());
    let rows =
        loopline_ingest::quarantine::read_file(&dir.path().join(&quarantined[0].path)).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].reason.as_str(),
            rows[0].payload.as_slice(),
            rows[0].payload_bytes
        ),
        ("undecodable", &b"\xff\xfe"[..], 2)
    );
    assert_eq!(rows[0].ingest_id, "test-1");
    assert_eq!(
        records
            .iter()
            .map(|r| r.table.as_str())
            .collect::<std::collections::BTreeSet<_>>(),
        TABLES.into_iter().collect()
    );
    let sorted_by = [
        ("telemetry", vec!["device", "sensor", "ts"]),
        ("inference", vec!["device", "ts"]),
        ("device_health", vec!["device", "ts"]),
        ("sim_labels", vec!["device", "start_ts"]),
        ("quarantine", vec!["received_at", "topic"]),
    ];
    for record in &records {
        let file = std::fs::File::open(dir.path().join(&record.path)).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        let meta = reader.metadata();
        let schema = meta.file_metadata().schema_descr();
        assert!(
            meta.file_metadata()
                .key_value_metadata()
                .is_none_or(|kv| kv.iter().all(|e| e.key != "ARROW:schema")),
            "{}",
            record.path
        );
        let group = meta.row_group(0);
        let want = &sorted_by
            .iter()
            .find(|(t, _)| *t == record.table)
            .unwrap()
            .1;
        let declared: Vec<String> = group
            .sorting_columns()
            .unwrap()
            .iter()
            .map(|c| schema.column(c.column_idx as usize).name().to_owned())
            .collect();
        assert_eq!(&declared, want, "{}", record.path);
        let mut timestamps = 0;
        for (i, column) in group.columns().iter().enumerate() {
            assert!(
                matches!(column.compression(), Compression::ZSTD(_)),
                "{}",
                record.path
            );
            assert!(column.statistics().is_some(), "{} column {i}", record.path);
            if let Some(LogicalType::Timestamp(ts)) = schema.column(i).logical_type_ref() {
                assert!(ts.is_adjusted_to_u_t_c);
                assert!(matches!(ts.unit, TimeUnit::MICROS), "{}", record.path);
                timestamps += 1;
            }
            assert!(
                !matches!(schema.column(i).logical_type_ref(), Some(LogicalType::Integer(int)) if !int.is_signed),
                "{}: unsigned column {}",
                record.path,
                schema.column(i).name()
            );
        }
        let want_ts =
            if ["telemetry", "device_health", "quarantine"].contains(&record.table.as_str()) {
                1
            } else {
                2
            };
        assert_eq!(timestamps, want_ts, "{}", record.path);
    }
}

#[test]
fn other_tables_roll_by_rows_by_age_and_by_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.roll_rows = NonZeroUsize::new(5).unwrap();
    opts.roll_age = Duration::from_secs(10);
    opts.max_buffered_rows = NonZeroUsize::new(6).unwrap();
    let mut writer = LakeWriter::open(opts).unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    let t = Instant::now();
    // Parts only, no samples: `results` results, 1 snapshot, 0 labels per batch.
    let parts = |seq: u64, base: i64, results: usize| {
        let mut b = batch_with_parts(&dev, "x", seq, base, 0, results);
        b.channels.clear();
        b.sim_labels.clear();
        b
    };
    assert!(
        writer
            .append(&parts(0, T0, 3), t)
            .unwrap()
            .recs()
            .is_empty()
    );
    assert_eq!(writer.buffered_rows(), 4);
    // 6 results >= 5: the inference partition rolls by rows; health (2) waits.
    let by_rows = writer.append(&parts(1, T0 + 100_000, 3), t).unwrap().recs();
    assert_eq!(
        by_rows
            .iter()
            .map(|r| (r.table.as_str(), r.rows))
            .collect::<Vec<_>>(),
        vec![("inference", 6)]
    );
    assert_eq!(writer.buffered_rows(), 2);
    // 2 results + 3 snapshots, then 3 + 4 = 7 > 6: the largest partition of any table
    // (health, 4) goes early.
    assert!(
        writer
            .append(&parts(2, T0 + 200_000, 2), t)
            .unwrap()
            .recs()
            .is_empty()
    );
    let by_memory = writer.append(&parts(3, T0 + 300_000, 1), t).unwrap().recs();
    assert_eq!(
        by_memory
            .iter()
            .map(|r| (r.table.as_str(), r.rows))
            .collect::<Vec<_>>(),
        vec![("device_health", 4)]
    );
    assert_eq!(writer.buffered_rows(), 3);
    // The rest rolls with age, like telemetry.
    assert!(
        writer
            .roll_due(t + Duration::from_secs(9))
            .unwrap()
            .recs()
            .is_empty()
    );
    assert_eq!(writer.next_roll(), Some(t + Duration::from_secs(10)));
    let by_age = writer.roll_due(t + Duration::from_secs(10)).unwrap().recs();
    assert_eq!(
        by_age
            .iter()
            .map(|r| (r.table.as_str(), r.rows))
            .collect::<Vec<_>>(),
        vec![("inference", 3)]
    );
    assert_eq!(writer.next_roll(), None);
    assert!(
        !dir.path().join("telemetry").exists(),
        "no samples, no telemetry folder"
    );
    assert!(
        !dir.path().join("sim_labels").exists(),
        "no labels, no sim_labels folder"
    );

    let log = read_commits(writer.commit_log_path()).unwrap();
    assert_eq!(log.iter().map(|r| r.n).collect::<Vec<_>>(), vec![0, 1, 2]);
    let inference = lake_inference(dir.path(), &log);
    assert_eq!(inference.len(), 9);
    assert_eq!(lake_health(dir.path(), &log).len(), 4);
    assert!(
        read_commit_log(writer.commit_log_path())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_commit_line_without_a_table_is_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("_loopline/commits/test-1.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(
        &log,
        concat!(
            r#"{"v":1,"n":4,"path":"telemetry/site=s/line=l/date=2026-11-29/hour=10/part-test-1-00000004.parquet","rows":7,"bytes":100,"min_ts_us":1,"max_ts_us":2,"committed_at_us":3}"#,
            "\n",
            r#"{"v":1,"n":5,"table":"inference","path":"inference/site=s/line=l/date=2026-11-29/hour=10/part-test-1-00000005.parquet","rows":2,"bytes":90,"min_ts_us":1,"max_ts_us":2,"committed_at_us":4}"#,
            "\n"
        ),
    )
    .unwrap();
    let all = read_commits(&log).unwrap();
    assert_eq!(
        all.iter()
            .map(|r| (r.n, r.table.as_str()))
            .collect::<Vec<_>>(),
        vec![(4, "telemetry"), (5, "inference")]
    );
    assert_eq!(read_commit_log(&log).unwrap().len(), 1);
    // Numbering goes on after the largest n of any table.
    let mut writer = LakeWriter::open(options(dir.path())).unwrap();
    let dev = DeviceId::checked("s", "l", "d").unwrap();
    writer
        .append(&batch(&dev, "x", 0, T0, 3, 1000), Instant::now())
        .unwrap()
        .recs();
    assert_eq!(writer.flush().unwrap().recs()[0].n, 6);
}

fn parts_strategy() -> impl Strategy<Value = TelemetryBatch> {
    (
        batch_strategy(),
        prop::collection::vec(
            (
                0i64..3 * HOUR_US,
                0i64..50_000,
                -10.0f32..10.0,
                any::<bool>(),
            ),
            0..6,
        ),
        prop::option::of((0i64..3 * HOUR_US, 0.0f32..=1.0, any::<u32>())),
        prop::collection::vec((0i64..3 * HOUR_US, 1i64..HOUR_US, 0usize..3), 0..4),
    )
        .prop_map(|(mut b, results, health, labels)| {
            b.model_version = "m".into();
            b.inferences = results
                .into_iter()
                .map(|(end, len, score, anomaly)| InferenceResult {
                    window_start_us: T0 + end - len,
                    window_end_us: T0 + end,
                    score,
                    anomaly,
                    model_version: String::new(),
                    latency_us: len as u32,
                })
                .collect();
            b.health = health.map(|(ts, utilisation, counter)| DeviceHealth {
                ts_us: T0 + ts,
                npu_utilisation: utilisation,
                npu_errors: counter,
                spool_bytes: u64::from(counter) << 20,
                ..Default::default()
            });
            b.sim_labels = labels
                .into_iter()
                .map(|(start, len, kind)| SimLabel {
                    start_us: T0 + start,
                    end_us: T0 + start + len,
                    fault: ["normal", "imbalance", "sensor_drift"][kind].into(),
                    severity: kind as f32 / 2.0,
                    sensor: if kind == 2 {
                        "temperature".into()
                    } else {
                        String::new()
                    },
                })
                .collect();
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Whatever the rolling, each table's rows come back exactly once, in the right
    /// partitions and order.
    #[test]
    fn every_part_round_trips(
        batches in prop::collection::vec(parts_strategy(), 1..10),
        roll_rows in 3usize..60,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.roll_rows = NonZeroUsize::new(roll_rows).unwrap();
        opts.max_buffered_rows = NonZeroUsize::new(roll_rows * 2).unwrap();
        let mut writer = LakeWriter::open(opts).unwrap();
        let mut records = Vec::new();
        for b in &batches {
            records.extend(writer.append(b, Instant::now()).unwrap().recs());
        }
        records.extend(writer.flush().unwrap().recs());
        prop_assert_eq!(&read_commits(writer.commit_log_path()).unwrap(), &records);

        let mut want = batches.iter().flat_map(expected_inference).collect::<Vec<_>>();
        let got = lake_inference(dir.path(), &records);
        prop_assert_eq!(got.len(), want.len());
        let bits = |r: &InferenceRow| (r.line.clone(), r.device.clone(), r.seq, r.ts_us, r.window_start_us, r.score.to_bits(), r.anomaly, r.latency_us, r.model_version.clone());
        let mut got: Vec<_> = got.iter().map(bits).collect();
        let mut want: Vec<_> = want.drain(..).map(|r| bits(&r)).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);

        let key = |r: &DeviceHealthRow| (r.line.clone(), r.device.clone(), r.seq, r.health.ts_us, r.health.npu_errors, r.health.spool_bytes);
        let mut got: Vec<_> = lake_health(dir.path(), &records).iter().map(key).collect();
        let mut want: Vec<_> = batches.iter().flat_map(expected_health).map(|r| key(&r)).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);

        let key = |r: &SimLabelRow| (r.line.clone(), r.device.clone(), r.seq, r.start_us, r.end_us, r.fault.clone(), r.sensor.clone());
        let mut got: Vec<_> = lake_labels(dir.path(), &records).iter().map(key).collect();
        let mut want: Vec<_> = batches.iter().flat_map(expected_labels).map(|r| key(&r)).collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}
