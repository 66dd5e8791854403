//! Integration tests of the ingest library without a broker: batches in, Parquet out, read
//! back with the parquet crate's own Arrow reader and compared value by value.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopline_ingest::telemetry::read_file as read_rows;
use loopline_ingest::writer::{CommitRecord, LakeWriter, WriterOptions, read_commit_log};
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{DeviceId, Quality, SCHEMA_VERSION, TelemetryBatch};
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
        zstd_level: 3,
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
    assert!(writer.append(&b, now).unwrap().is_empty());
    assert_eq!(writer.buffered_rows(), 200);
    let records = writer.flush().unwrap();
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
            .is_empty()
    );
    assert!(
        writer
            .append(&batch(&a, "x", 1, T0 + 100_000, 100, 1000), t)
            .unwrap()
            .is_empty()
    );
    // Third batch brings line a to 600 rows >= 500: rolled by rows.
    let by_rows = writer
        .append(&batch(&a, "x", 2, T0 + 200_000, 100, 1000), t)
        .unwrap();
    assert_eq!(
        by_rows.iter().map(|r| r.rows).collect::<Vec<_>>(),
        vec![600]
    );
    assert_eq!(writer.buffered_rows(), 0);

    // Line b's 400 rows and line a's 400 rows: 800 > 700, the largest (a tie broken either
    // way) is committed early.
    writer.append(&batch(&b, "x", 0, T0, 100, 1000), t).unwrap();
    writer
        .append(&batch(&b, "x", 1, T0 + 100_000, 100, 1000), t)
        .unwrap();
    writer
        .append(&batch(&a, "x", 3, T0 + 300_000, 100, 1000), t)
        .unwrap();
    let by_memory = writer
        .append(&batch(&a, "x", 4, T0 + 400_000, 100, 1000), t)
        .unwrap();
    assert_eq!(by_memory.len(), 1);
    assert_eq!(by_memory[0].rows, 400);
    assert_eq!(writer.buffered_rows(), 400);

    // Nothing is due before roll_age; everything is after.
    assert!(
        writer
            .roll_due(t + Duration::from_secs(9))
            .unwrap()
            .is_empty()
    );
    assert_eq!(writer.next_roll(), Some(t + Duration::from_secs(10)));
    let by_age = writer.roll_due(t + Duration::from_secs(10)).unwrap();
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
        .unwrap();
    let first = writer.flush().unwrap();
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
        .unwrap();
    let second = writer.flush().unwrap();
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
        .unwrap();
    writer.flush().unwrap();
    for path in parquet_files(dir.path()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with('.') && !name.ends_with(".tmp"),
            "{name} left behind"
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
            records.extend(writer.append(b, Instant::now()).unwrap());
            want.extend(expected_rows(b));
        }
        records.extend(writer.flush().unwrap());
        prop_assert_eq!(writer.buffered_rows(), 0);
        prop_assert_eq!(&read_commit_log(writer.commit_log_path()).unwrap(), &records);
        let mut got = read_lake(dir.path(), &records);
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }
}
