//! The lake's compatibility rules (`docs/lake.md`), held: a new sensor or device never changes
//! a table's schema, and files written before a nullable column was added read together with
//! newer ones, in Loopline's own reader and in pyarrow, DuckDB and Polars.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::Schema;
use loopline_ingest::dedup::DedupLimits;
use loopline_ingest::writer::{CommitRecord, LakeWriter, WriterOptions, table_properties};
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{DeviceId, InferenceResult, Quality, SCHEMA_VERSION, TelemetryBatch};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::ZstdLevel;
use tokio::time::Instant;

use crate::harness::python_json;

/// 2026-11-29T10:00:00Z.
const T0: i64 = 1_795_946_400_000_000;

fn batch(device: &str, sensor: &str, seq: u64) -> TelemetryBatch {
    let base = T0 + seq as i64 * 1_000_000;
    let mut channel = ChannelBuilder::new(sensor, "1", base);
    for i in 0..50 {
        channel.push(base + i * 1000, i as f32, Quality::Good);
    }
    TelemetryBatch {
        schema_version: SCHEMA_VERSION,
        device: Some(DeviceId::checked("s", "l", device).unwrap()),
        boot_id: "0123456789abcdef0123456789abcdef".into(),
        seq,
        base_ts_us: base,
        model_version: "line-l-v7".into(),
        channels: vec![channel.finish()],
        inferences: (0..4)
            .map(|i| InferenceResult {
                window_start_us: base + i * 10_000,
                window_end_us: base + i * 10_000 + 9_999,
                score: 0.5,
                anomaly: false,
                model_version: "line-l-v7".into(),
                latency_us: 100,
            })
            .collect(),
        ..Default::default()
    }
}

fn commit(lake: &Path, batch: &TelemetryBatch) -> Vec<CommitRecord> {
    let mut writer = LakeWriter::open(WriterOptions {
        lake: lake.to_owned(),
        ingest_id: "evolution".into(),
        roll_rows: NonZeroUsize::new(1_000_000).unwrap(),
        roll_age: Duration::from_secs(3600),
        max_buffered_rows: NonZeroUsize::new(1_000_000).unwrap(),
        roll_bytes: usize::MAX,
        max_buffered_bytes: usize::MAX,
        zstd_level: 3,
        dedup: DedupLimits {
            window_us: i64::MAX,
            max_ranges: 64,
        },
        quarantine_max_payload_bytes: 1 << 20,
    })
    .unwrap();
    writer.append(batch, Instant::now()).unwrap();
    writer
        .flush()
        .unwrap()
        .into_iter()
        .map(|c| c.record)
        .collect()
}

fn file_schema(path: &Path) -> Arc<Schema> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone()
}

#[test]
fn files_from_before_a_column_was_added_read_together_with_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let first = commit(&lake, &batch("d1", "vibration", 0));
    // Another device with another sensor: new rows, the same schema.
    let second = commit(&lake, &batch("d2", "pressure", 1));
    let path_of = |records: &[CommitRecord], table: &str| {
        lake.join(&records.iter().find(|r| r.table == table).unwrap().path)
    };
    assert_eq!(
        file_schema(&path_of(&first, "telemetry")),
        file_schema(&path_of(&second, "telemetry"))
    );

    // The inference file of d1 as an ingester from before `model_version` existed would have
    // written it: the same rows, encoded the same way, without that column.
    let newer = path_of(&first, "inference");
    let file = std::fs::File::open(&newer).unwrap();
    let rows: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (schema, properties, _) =
        table_properties("inference", ZstdLevel::try_new(3).unwrap()).unwrap();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| schema.field(i).name() != "model_version")
        .collect();
    let older = newer.with_file_name("part-older-00000000.parquet");
    let out = std::fs::File::create(&older).unwrap();
    let projected = rows[0].project(&keep).unwrap();
    let mut writer = ArrowWriter::try_new_with_options(
        out,
        projected.schema(),
        ArrowWriterOptions::new()
            .with_properties(properties)
            .with_skip_arrow_metadata(true),
    )
    .unwrap();
    writer.write(&projected).unwrap();
    writer.close().unwrap();
    std::fs::remove_file(&newer).unwrap();
    // d1's rows now come from the older file; d2's from a current one.

    let old_rows = loopline_ingest::inference::read_file(&older).unwrap();
    assert_eq!(old_rows.len(), 4);
    assert!(old_rows.iter().all(|r| r.model_version.is_none()));
    let new_rows = loopline_ingest::inference::read_file(&path_of(&second, "inference")).unwrap();
    assert!(
        new_rows
            .iter()
            .all(|r| r.model_version.as_deref() == Some("line-l-v7"))
    );

    let lake_arg = lake.to_string_lossy().into_owned();
    if let Some(read) = python_json(
        "read_evolved.py",
        &[
            "--lake",
            &lake_arg,
            "--table",
            "inference",
            "--column",
            "model_version",
        ],
    ) {
        for reader in ["pyarrow", "duckdb", "polars"] {
            assert_eq!(read[reader]["rows"], 8, "{reader}: {read}");
            assert_eq!(read[reader]["nulls"], 4, "{reader}: {read}");
            assert_eq!(read[reader]["has_column"], true, "{reader}: {read}");
        }
    }
}
