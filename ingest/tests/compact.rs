//! Compaction of a lake that `LakeWriter` wrote: which partitions it rewrites, that every row
//! survives exactly once, that the logs still name the files on disk, and what a reader
//! listing a partition during compactions sees.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap its own fixtures should fail loudly

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{Field, Schema};
use chrono::{DateTime, Utc};
use clap::Parser;
use loopline_ingest::compact::{
    COMPACTION_LOG, CompactArgs, CompactOptions, STAGING_DIR, TRASH_DIR, compact, compact_until,
    live_files,
};
use loopline_ingest::lock::{COMPACT_LOCK, LockFile};
use loopline_ingest::writer::{LakeWriter, WriterOptions};

/// The tables a good batch fills (every one but quarantine).
const DATA_TABLES: [&str; 4] = ["telemetry", "inference", "device_health", "sim_labels"];
use loopline_ingest::{device_health, inference, sim_labels, telemetry};
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{
    DeviceHealth, DeviceId, InferenceResult, Quality, SCHEMA_VERSION, SimLabel, TelemetryBatch,
};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::time::Instant;

const HOUR_US: i64 = 3_600_000_000;
/// 2026-11-29T10:00:00Z
const T0: i64 = 1_795_946_400_000_000;
const SAMPLES: usize = 20;

fn at(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap()
}

/// Closes hours 10 and 11 (they ended more than an hour before), not hour 12.
fn now_closing_two_hours() -> DateTime<Utc> {
    at(T0 + 3 * HOUR_US + HOUR_US / 2)
}

fn options(lake: &Path) -> CompactOptions {
    CompactOptions::new(lake)
}

fn writer(lake: &Path, id: &str) -> LakeWriter {
    LakeWriter::open(WriterOptions {
        lake: lake.to_owned(),
        ingest_id: id.into(),
        roll_rows: NonZeroUsize::new(1_000_000).unwrap(),
        roll_age: Duration::from_secs(3600),
        max_buffered_rows: NonZeroUsize::new(10_000_000).unwrap(),
        zstd_level: 3,
        roll_bytes: usize::MAX,
        max_buffered_bytes: usize::MAX,
        dedup: loopline_ingest::dedup::DedupLimits {
            window_us: i64::MAX,
            max_ranges: 4096,
        },
        quarantine_max_payload_bytes: 1 << 20,
    })
    .unwrap()
}

/// A batch with `samples` samples on two sensors, an inference result, a health snapshot and
/// a label, every part in the hour of `base`.
fn batch(line: &str, device: &str, seq: u64, base: i64, samples: usize) -> TelemetryBatch {
    let channels = ["vibration", "temperature"]
        .iter()
        .enumerate()
        .map(|(c, sensor)| {
            let mut b = ChannelBuilder::new(*sensor, "x", base);
            for i in 0..samples {
                b.push(
                    base + i as i64 * 1000,
                    seq as f32 + i as f32 * 0.25 + c as f32,
                    Quality::Good,
                );
            }
            b.finish()
        })
        .collect();
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        device: Some(DeviceId::checked("plant", line, device).unwrap()),
        boot_id: "b1".into(),
        seq,
        base_ts_us: base,
        channels,
        model_version: "v1".into(),
        inferences: vec![InferenceResult {
            window_start_us: base,
            window_end_us: base + 9_999,
            score: seq as f32,
            anomaly: seq.is_multiple_of(3),
            model_version: String::new(),
            latency_us: 700,
        }],
        health: Some(DeviceHealth {
            ts_us: base + 5_000,
            npu_utilisation: 0.5,
            npu_temperature_c: 50.0 + seq as f32,
            npu_clock_mhz: 1000,
            npu_fps: 30.0,
            ..Default::default()
        }),
        sim_labels: vec![SimLabel {
            start_us: base,
            end_us: base + 10_000,
            fault: "normal".into(),
            severity: 0.0,
            sensor: String::new(),
        }],
        ..Default::default()
    }
}

/// Commits one file per table of the partition of `base` (the batch's parts all sit there).
fn commit(w: &mut LakeWriter, line: &str, seq: u64, base: i64, samples: usize) {
    let device = if seq.is_multiple_of(2) { "d1" } else { "d2" };
    w.append(&batch(line, device, seq, base, samples), Instant::now())
        .unwrap();
    // Every table but quarantine, which a good batch never reaches.
    assert_eq!(w.flush().unwrap().len(), DATA_TABLES.len());
}

/// Hours 10, 11 and 12 of lines l1 and l2, `files` small files per partition and table.
fn build_lake(lake: &Path, files: usize) {
    let mut w = writer(lake, "ing-1");
    let mut seq = 0;
    for hour in 0..3 {
        for line in ["l1", "l2"] {
            for f in 0..files {
                let base = T0 + hour * HOUR_US + f as i64 * 60_000_000;
                commit(&mut w, line, seq, base, SAMPLES);
                seq += 1;
            }
        }
    }
}

fn partition(table: &str, line: &str, hour: u32) -> String {
    format!("{table}/site=plant/line={line}/date=2026-11-29/hour={hour:02}")
}

/// Every `*.parquet` a reader would list under the table folders, with its footer's rows.
fn disk_files(lake: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = DATA_TABLES.iter().map(|t| lake.join(t)).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".parquet") && !name.starts_with(['.', '_']) {
                let rel = path
                    .strip_prefix(lake)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.insert(rel, footer_rows(&path));
            }
        }
    }
    out
}

fn footer_rows(path: &Path) -> u64 {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder.metadata().file_metadata().num_rows() as u64
}

fn assert_logs_match_disk(lake: &Path) {
    let live: BTreeMap<String, u64> = live_files(lake)
        .unwrap()
        .into_iter()
        .map(|f| {
            assert!(f.path.starts_with(&format!("{}/", f.table)), "{f:?}");
            (f.path, f.rows)
        })
        .collect();
    assert_eq!(
        live,
        disk_files(lake),
        "files the logs name vs files on disk"
    );
}

fn files_in(lake: &Path, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(lake.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Every row of a partition, as the table's own reader returns it, in a canonical order.
fn partition_rows(lake: &Path, dir: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for name in files_in(lake, dir) {
        rows.extend(file_rows(&lake.join(dir).join(name)));
    }
    rows.sort();
    rows
}

fn file_rows(path: &Path) -> Vec<String> {
    fn debug<T: std::fmt::Debug, E: std::fmt::Debug>(rows: Result<Vec<T>, E>) -> Vec<String> {
        rows.unwrap().iter().map(|r| format!("{r:?}")).collect()
    }
    let text = path.to_str().unwrap();
    if text.contains("/telemetry/") {
        debug(telemetry::read_file(path))
    } else if text.contains("/inference/") {
        debug(inference::read_file(path))
    } else if text.contains("/device_health/") {
        debug(device_health::read_file(path))
    } else {
        debug(sim_labels::read_file(path))
    }
}

/// Every partition folder of the lake, with its rows.
fn all_partitions(lake: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in DATA_TABLES {
        for line in ["l1", "l2"] {
            for hour in 10..13 {
                let dir = partition(table, line, hour);
                if lake.join(&dir).is_dir() {
                    out.insert(dir.clone(), partition_rows(lake, &dir));
                }
            }
        }
    }
    out
}

#[test]
fn closed_partitions_are_merged_sorted_and_keep_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 4);
    let before = all_partitions(lake);
    assert_eq!(before.len(), DATA_TABLES.len() * 2 * 3);
    let open_before: BTreeMap<String, Vec<(String, u64)>> = DATA_TABLES
        .iter()
        .flat_map(|t| ["l1", "l2"].map(|l| partition(t, l, 12)))
        .map(|d| {
            let names = files_in(lake, &d)
                .into_iter()
                .map(|n| {
                    (
                        n.clone(),
                        fs::metadata(lake.join(&d).join(&n)).unwrap().ino(),
                    )
                })
                .collect();
            (d, names)
        })
        .collect();

    let report = compact(&options(lake), now_closing_two_hours()).unwrap();
    let closed = DATA_TABLES.len() * 2 * 2;
    assert_eq!(report.partitions_compacted, closed);
    assert_eq!(report.files_before, closed * 4);
    assert_eq!(report.files_after, closed);
    assert_eq!(report.late_files_kept, 0);
    assert!(report.bytes_after.is_some());
    let rows_closed: usize = before
        .iter()
        .filter(|(d, _)| !d.ends_with("hour=12"))
        .map(|(_, rows)| rows.len())
        .sum();
    assert_eq!(report.rows, rows_closed as u64);

    // Every partition holds exactly the rows it held; closed ones in one file.
    assert_eq!(all_partitions(lake), before);
    for table in DATA_TABLES {
        for line in ["l1", "l2"] {
            for hour in [10, 11] {
                let names = files_in(lake, &partition(table, line, hour));
                assert_eq!(names.len(), 1, "{table} {line} {hour}: {names:?}");
                assert!(names[0].starts_with("part-compact~"), "{names:?}");
            }
        }
    }
    // Open partitions: the same files, not even rewritten.
    for (d, names) in &open_before {
        let now: Vec<(String, u64)> = files_in(lake, d)
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    fs::metadata(lake.join(d).join(&n)).unwrap().ino(),
                )
            })
            .collect();
        assert_eq!(&now, names, "{d}");
    }
    // Sorted by the table's declared columns, and declared so, without an Arrow schema.
    let merged = lake.join(partition("telemetry", "l1", 10));
    let file = merged.join(&files_in(lake, &partition("telemetry", "l1", 10))[0]);
    let rows = telemetry::read_file(&file).unwrap();
    assert!(
        rows.windows(2)
            .all(|p| (&p[0].device, &p[0].sensor, p[0].ts_us)
                <= (&p[1].device, &p[1].sensor, p[1].ts_us))
    );
    let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(&file).unwrap())
        .unwrap()
        .metadata()
        .clone();
    let sorting = meta.row_group(0).sorting_columns().unwrap();
    assert_eq!(
        sorting.iter().map(|c| c.column_idx).collect::<Vec<_>>(),
        vec![1, 2, 0]
    );
    assert!(
        meta.file_metadata()
            .key_value_metadata()
            .is_none_or(|kv| kv.iter().all(|kv| kv.key != "ARROW:schema"))
    );

    assert_logs_match_disk(lake);
    let log = fs::read_to_string(lake.join(COMPACTION_LOG)).unwrap();
    assert_eq!(log.lines().count(), closed);
    assert_eq!(fs::read_dir(lake.join(TRASH_DIR)).unwrap().count(), closed);
    assert_eq!(fs::read_dir(lake.join(STAGING_DIR)).unwrap().count(), 0);

    // A second run has nothing to do.
    let again = compact(&options(lake), now_closing_two_hours()).unwrap();
    assert_eq!(again.partitions_compacted, 0);
    assert_eq!(again.files_before, 0);
    assert_eq!(all_partitions(lake), before);
    assert_logs_match_disk(lake);
}

#[test]
fn a_stopped_run_swaps_whole_partitions_and_the_next_run_takes_up_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 3);
    let before = all_partitions(lake);
    let closed = DATA_TABLES.len() * 2 * 2;

    // Asked to stop before the fourth partition, as SIGTERM would.
    let asked = AtomicU64::new(0);
    let report = compact_until(&options(lake), now_closing_two_hours(), &|| {
        asked.fetch_add(1, Ordering::SeqCst) >= 3
    })
    .unwrap();
    assert!(report.stopped);
    assert_eq!(report.partitions_compacted, 3);
    assert_eq!(report.partitions.len(), 3);
    assert_eq!(all_partitions(lake), before, "rows moved or lost");
    assert_logs_match_disk(lake);
    let swapped: Vec<&str> = report.partitions.iter().map(|p| p.dir.as_str()).collect();
    for (d, _) in before.iter().filter(|(d, _)| !d.ends_with("hour=12")) {
        let names = files_in(lake, d);
        if swapped.contains(&d.as_str()) {
            assert_eq!(names.len(), 1, "{d}: {names:?}");
        } else {
            assert_eq!(names.len(), 3, "{d} was touched: {names:?}");
        }
    }
    assert_eq!(fs::read_dir(lake.join(STAGING_DIR)).unwrap().count(), 0);

    let rest = compact(&options(lake), now_closing_two_hours()).unwrap();
    assert!(!rest.stopped);
    assert_eq!(rest.partitions_compacted, closed - 3);
    assert_eq!(all_partitions(lake), before);
    assert_logs_match_disk(lake);
}

#[test]
fn dry_run_reports_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 3);
    let before = disk_files(lake);
    let mut opts = options(lake);
    opts.dry_run = true;
    let report = compact(&opts, now_closing_two_hours()).unwrap();
    assert!(report.dry_run);
    assert_eq!(report.partitions_compacted, DATA_TABLES.len() * 4);
    assert_eq!(report.files_before, DATA_TABLES.len() * 4 * 3);
    assert_eq!(report.files_after, DATA_TABLES.len() * 4);
    assert_eq!(report.bytes_after, None);
    let rows: u64 = before
        .iter()
        .filter(|(p, _)| !p.contains("hour=12"))
        .map(|(_, r)| r)
        .sum();
    assert_eq!(report.rows, rows);
    assert_eq!(report.partitions.len(), DATA_TABLES.len() * 4);
    assert_eq!(disk_files(lake), before);
    assert!(!lake.join("_loopline/compact").exists());
    assert!(!lake.join(COMPACTION_LOG).exists());
}

#[test]
fn nothing_is_closed_before_its_lateness() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let before = disk_files(lake);
    // Hour 11 ended at T0 + 2h: not yet closed with 2h of lateness at T0 + 3h30.
    let mut opts = options(lake);
    opts.lateness = Duration::from_secs(2 * 3600);
    let report = compact(&opts, at(T0 + 3 * HOUR_US + HOUR_US / 2)).unwrap();
    assert_eq!(report.partitions_compacted, DATA_TABLES.len() * 2);
    assert!(report.partitions.iter().all(|p| p.dir.ends_with("hour=10")));
    assert!(
        disk_files(lake)
            .keys()
            .any(|p| p.contains("hour=11/part-ing-1"))
    );
    assert_eq!(
        before.values().sum::<u64>(),
        disk_files(lake).values().sum::<u64>()
    );
}

#[test]
fn files_at_half_the_target_are_kept_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    let mut w = writer(lake, "ing-1");
    // One large file, then four small ones, in one partition.
    commit(&mut w, "l1", 0, T0, 4000);
    for seq in 1..5 {
        commit(&mut w, "l1", seq, T0 + seq as i64 * 1000, SAMPLES);
    }
    let dir_rel = partition("telemetry", "l1", 10);
    let names = files_in(lake, &dir_rel);
    let big = names
        .iter()
        .max_by_key(|n| fs::metadata(lake.join(&dir_rel).join(n)).unwrap().len())
        .unwrap()
        .clone();
    let big_meta = fs::metadata(lake.join(&dir_rel).join(&big)).unwrap();
    let before = partition_rows(lake, &dir_rel);
    let mut opts = options(lake);
    opts.target_file_bytes = 2 * big_meta.len();
    let report = compact(&opts, now_closing_two_hours()).unwrap();
    let p = report.partitions.iter().find(|p| p.dir == dir_rel).unwrap();
    assert_eq!((p.merged, p.kept, p.written), (4, 1, 1));
    let after = files_in(lake, &dir_rel);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&big));
    // The same file (a hard link of it), not a copy.
    let kept = fs::metadata(lake.join(&dir_rel).join(&big)).unwrap();
    assert_eq!(kept.ino(), big_meta.ino());
    assert_eq!(partition_rows(lake, &dir_rel), before);
    assert_logs_match_disk(lake);
}

/// Rewrites the committed file `path` with `change` applied to its rows (same rows count).
fn rewrite(path: &Path, change: impl Fn(&RecordBatch) -> RecordBatch) {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| change(&b.unwrap())).collect();
    let tmp = path.with_extension("rewrite");
    let mut writer =
        ArrowWriter::try_new(File::create(&tmp).unwrap(), batches[0].schema(), None).unwrap();
    for b in &batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn without(batch: &RecordBatch, column: &str) -> RecordBatch {
    let schema = batch.schema();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|i| schema.field(*i).name() != column)
        .collect();
    batch.project(&keep).unwrap()
}

fn with_column(batch: &RecordBatch, field: Field, values: ArrayRef) -> RecordBatch {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = batch.columns().to_vec();
    match fields.iter().position(|f| f.name() == field.name()) {
        Some(i) => {
            fields[i] = field;
            columns[i] = values;
        }
        None => {
            fields.push(field);
            columns.push(values);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

#[test]
fn a_file_without_a_later_nullable_column_is_merged_with_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 3);
    let dir_rel = partition("device_health", "l2", 11);
    let names = files_in(lake, &dir_rel);
    let old = lake.join(&dir_rel).join(&names[0]);
    // The rows the old file should read as: model_version null.
    let mut expected: Vec<String> = device_health::read_file(&old)
        .unwrap()
        .into_iter()
        .map(|mut r| {
            assert!(r.model_version.is_some());
            r.model_version = None;
            format!("{r:?}")
        })
        .collect();
    for name in &names[1..] {
        expected.extend(file_rows(&lake.join(&dir_rel).join(name)));
    }
    expected.sort();
    rewrite(&old, |b| without(b, "model_version"));
    // Loopline's reader takes the older file as it is: the missing column reads as null.
    assert!(
        device_health::read_file(&old)
            .unwrap()
            .iter()
            .all(|r| r.model_version.is_none()),
        "the file lacks the column"
    );

    compact(&options(lake), now_closing_two_hours()).unwrap();
    assert_eq!(files_in(lake, &dir_rel).len(), 1);
    assert_eq!(partition_rows(lake, &dir_rel), expected);
    assert_logs_match_disk(lake);
}

#[test]
fn an_unknown_column_or_another_type_is_an_error_naming_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let dir_rel = partition("telemetry", "l1", 10);
    let names = files_in(lake, &dir_rel);
    let file = lake.join(&dir_rel).join(&names[1]);

    rewrite(&file, |b| {
        let n = b.num_rows() as i64;
        with_column(
            b,
            Field::new("extra", arrow_schema::DataType::Int64, false),
            Arc::new(Int64Array::from_iter_values(0..n)),
        )
    });
    let err = compact(&options(lake), now_closing_two_hours())
        .unwrap_err()
        .to_string();
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(
        err.contains("column extra is not in the table's schema"),
        "{err}"
    );
    assert_eq!(files_in(lake, &dir_rel), names, "left as it was");
    assert_eq!(fs::read_dir(lake.join(STAGING_DIR)).unwrap().count(), 0);

    rewrite(&file, |b| {
        let b = without(b, "extra");
        let n = b.num_rows() as i32;
        with_column(
            &b,
            Field::new("seq", arrow_schema::DataType::Int32, false),
            Arc::new(Int32Array::from_iter_values(0..n)),
        )
    });
    let err = compact(&options(lake), now_closing_two_hours())
        .unwrap_err()
        .to_string();
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(err.contains("column seq is Int32"), "{err}");
    assert_eq!(files_in(lake, &dir_rel), names, "left as it was");
}

#[test]
fn a_folder_that_is_no_lake_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = compact(&options(&dir.path().join("nope")), now_closing_two_hours())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope: not a lake"), "{err}");
    assert!(!dir.path().join("nope").exists());
}

#[test]
fn a_second_run_at_once_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let held = LockFile::open(&lake.join(COMPACT_LOCK)).unwrap();
    let _guard = held.try_exclusive().unwrap().unwrap();
    let err = compact(&options(lake), now_closing_two_hours())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another compaction of this lake is running"),
        "{err}"
    );
    assert!(err.contains("compact.lock"), "{err}");
}

#[test]
fn old_folders_stay_in_the_trash_for_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let now = now_closing_two_hours();
    let report = compact(&options(lake), now).unwrap();
    let trashed = fs::read_dir(lake.join(TRASH_DIR)).unwrap().count();
    assert_eq!(trashed, report.partitions_compacted);
    let grace = options(lake).grace;
    let within = now + chrono::Duration::from_std(grace).unwrap();
    assert_eq!(compact(&options(lake), within).unwrap().trash_removed, 0);
    assert_eq!(fs::read_dir(lake.join(TRASH_DIR)).unwrap().count(), trashed);
    let after = within + chrono::Duration::seconds(1);
    assert_eq!(
        compact(&options(lake), after).unwrap().trash_removed,
        trashed
    );
    assert_eq!(fs::read_dir(lake.join(TRASH_DIR)).unwrap().count(), 0);
    assert_logs_match_disk(lake);
}

#[test]
fn a_crash_before_the_swap_leaves_the_old_folder_and_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let before = all_partitions(lake);
    // What a run that died while writing leaves: a staging folder with a half file, and one
    // with its intent record cut short.
    let staging = lake.join(STAGING_DIR);
    fs::create_dir_all(staging.join("100-0")).unwrap();
    fs::write(
        staging.join("100-0/part-compact~100-00000000.parquet"),
        b"PAR1",
    )
    .unwrap();
    fs::create_dir_all(staging.join("100-1")).unwrap();
    fs::write(staging.join("100-1.json"), b"{\"v\":1,\"run\":100,").unwrap();
    let report = compact(&options(lake), now_closing_two_hours()).unwrap();
    assert_eq!(report.staging_cleaned, 2);
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(all_partitions(lake), before);
    assert_logs_match_disk(lake);
}

#[test]
fn a_crash_after_the_swap_is_completed_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    build_lake(lake, 2);
    let before = all_partitions(lake);
    let now = now_closing_two_hours();
    compact(&options(lake), now).unwrap();
    // Put the lake back in the state of a crash right after the last swap: the old folder
    // still at its staging path beside its intent record, the log without its line.
    let log_path = lake.join(COMPACTION_LOG);
    let log = fs::read_to_string(&log_path).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    let last = lines.pop().unwrap();
    let run: i64 = serde_json::from_str::<serde_json::Value>(last).unwrap()["run"]
        .as_i64()
        .unwrap();
    let k = lines.len();
    let name = format!("{run}-{k}");
    fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    fs::rename(
        lake.join(TRASH_DIR).join(&name),
        lake.join(STAGING_DIR).join(&name),
    )
    .unwrap();
    fs::write(lake.join(STAGING_DIR).join(format!("{name}.json")), last).unwrap();
    assert!(live_files(lake).unwrap().len() != disk_files(lake).len());

    let report = compact(&options(lake), now).unwrap();
    assert_eq!(report.staging_cleaned, 1);
    assert_eq!(report.partitions_compacted, 0);
    assert_eq!(fs::read_to_string(&log_path).unwrap(), log);
    assert!(lake.join(TRASH_DIR).join(&name).is_dir());
    assert_eq!(all_partitions(lake), before);
    assert_logs_match_disk(lake);
}

/// Lists the partition through one handle on its folder and counts the rows of what it lists,
/// opening each file relative to that handle (as a scan that listed before a swap would).
fn listed_rows(dir: &Path) -> (usize, u64) {
    use rustix::fs::{Dir, Mode, OFlags, openat};
    let handle = File::open(dir).unwrap();
    let mut files = 0;
    let mut rows = 0;
    for entry in Dir::read_from(&handle).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_str().unwrap().to_owned();
        if !name.ends_with(".parquet") || name.starts_with('.') {
            continue;
        }
        let fd = openat(
            &handle,
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        rows += footer_rows_of(File::from(fd));
        files += 1;
    }
    (files, rows)
}

fn footer_rows_of(file: File) -> u64 {
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    builder.metadata().file_metadata().num_rows() as u64
}

#[test]
fn a_reader_listing_during_compactions_sees_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_owned();
    let mut w = writer(&lake, "ing-1");
    let rows_per_file = 2 * SAMPLES as u64;
    for seq in 0..3 {
        commit(&mut w, "l1", seq, T0 + seq as i64 * 1000, SAMPLES);
    }
    let dir_rel = partition("telemetry", "l1", 10);
    let watched = lake.join(&dir_rel);
    // Rows committed for sure, and rows that may be committed (a commit in flight).
    let committed = Arc::new(AtomicU64::new(3 * rows_per_file));
    let pending = Arc::new(AtomicU64::new(3 * rows_per_file));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (committed, pending, stop) = (committed.clone(), pending.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut scans = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let low = committed.load(Ordering::SeqCst);
                let (files, rows) = listed_rows(&watched);
                let high = pending.load(Ordering::SeqCst);
                assert!(files > 0, "a scan listed no file");
                assert!(
                    (low..=high).contains(&rows),
                    "a scan counted {rows} rows in {files} files, the partition had {low}..={high}"
                );
                scans += 1;
            }
            scans
        })
    };
    let now = now_closing_two_hours();
    let mut seq = 3;
    for _ in 0..8 {
        for _ in 0..2 {
            pending.fetch_add(rows_per_file, Ordering::SeqCst);
            commit(&mut w, "l1", seq, T0 + seq as i64 * 1000, SAMPLES);
            committed.fetch_add(rows_per_file, Ordering::SeqCst);
            seq += 1;
        }
        let report = compact(&options(&lake), now).unwrap();
        assert!(report.partitions_compacted >= 1);
    }
    stop.store(true, Ordering::SeqCst);
    let scans = reader.join().unwrap();
    assert!(scans > 0);
    assert_eq!(files_in(&lake, &dir_rel).len(), 1);
    assert_eq!(
        listed_rows(&lake.join(&dir_rel)),
        (1, committed.load(Ordering::SeqCst))
    );
    assert_logs_match_disk(&lake);
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    compact: CompactArgs,
}

#[test]
fn flags_parse_into_options() {
    let cli = Cli::try_parse_from([
        "compact",
        "--lake",
        "/data/lake",
        "--lateness",
        "2h",
        "--target-file-bytes",
        "64MiB",
        "--grace",
        "30s",
        "--dry-run",
    ])
    .unwrap();
    let o = cli.compact.options().unwrap();
    assert_eq!(o.lake, PathBuf::from("/data/lake"));
    assert_eq!(o.lateness, Duration::from_secs(7200));
    assert_eq!(o.target_file_bytes, 64 << 20);
    assert_eq!(o.grace, Duration::from_secs(30));
    assert_eq!(o.zstd_level, 3);
    assert!(o.dry_run);

    let defaults = Cli::try_parse_from(["compact", "--lake", "x"]).unwrap();
    let o = defaults.compact.options().unwrap();
    assert_eq!(o.lateness, Duration::from_secs(3600));
    assert_eq!(o.target_file_bytes, 128 << 20);
    assert_eq!(o.grace, Duration::from_secs(600));
    assert!(!o.dry_run);

    let bad = Cli::try_parse_from(["compact", "--lake", "x", "--zstd-level", "0"]).unwrap();
    let err = bad.compact.options().unwrap_err().to_string();
    assert!(err.contains("zstd_level"), "{err}");
}
