//! The `inference` table: one row per window the device's NPU scored.
//!
//! Columns, in file order: `ts timestamp(us, UTC)` (the window's last sample, so the row sits
//! beside the telemetry it judged), `window_start timestamp(us, UTC)`, `device`, `boot_id`,
//! `seq int64`, `model_version` (nullable), `score float32`, `anomaly bool`,
//! `latency_us int64`. Partitioned by the hour of `ts`; rows of a file sorted by
//! (device, ts), then (boot_id, seq, window_start). `latency_us` is a `uint32` on the wire and
//! `int64` here: lossless, and Spark has no unsigned types. `docs/lake.md` is the user-facing
//! reference; change both together.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use loopline_proto::v1::TelemetryBatch;

use crate::table::{
    FileBatches, FromBatch, Interner, ReadError, RowBuffer, TsRange, dict_type, distinct_hours,
    hour_of, opt_string, sorted_order, take, timestamps, ts_type,
};

/// Name of the table's folder under the lake root.
pub const TABLE: &str = "inference";

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("ts", ts_type(), false),
                Field::new("window_start", ts_type(), false),
                Field::new("device", dict_type(), false),
                Field::new("boot_id", dict_type(), false),
                Field::new("seq", DataType::Int64, false),
                Field::new("model_version", dict_type(), true),
                Field::new("score", DataType::Float32, false),
                Field::new("anomaly", DataType::Boolean, false),
                Field::new("latency_us", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Inference results of one partition waiting to become one file.
#[derive(Debug, Default)]
pub struct InferenceBuffer {
    ts: Vec<i64>,
    window_start: Vec<i64>,
    device: Vec<i32>,
    boot_id: Vec<i32>,
    seq: Vec<i64>,
    model_version: Vec<Option<i32>>,
    score: Vec<f32>,
    anomaly: Vec<bool>,
    latency_us: Vec<i64>,
    devices: Interner,
    boot_ids: Interner,
    versions: Interner,
    range: TsRange,
}

/// Bytes one buffered row costs.
const ROW_BYTES: usize = 8 + 8 + 4 + 4 + 8 + 8 + 4 + 1 + 8;

impl RowBuffer for InferenceBuffer {
    const TABLE: &'static str = TABLE;
    const PARTITION_TS: &'static str = "ts";
    const SORTED_BY: &'static [&'static str] = &["device", "ts"];
    const DELTA_COLUMNS: &'static [&'static str] = &["ts", "window_start", "seq"];
    const PLAIN_COLUMNS: &'static [&'static str] = &["score"];

    fn schema() -> SchemaRef {
        schema()
    }

    fn rows(&self) -> usize {
        self.ts.len()
    }

    fn ts_range(&self) -> (i64, i64) {
        self.range.get()
    }

    fn heap_size(&self) -> usize {
        self.ts.capacity() * ROW_BYTES
            + self.devices.heap_size()
            + self.boot_ids.heap_size()
            + self.versions.heap_size()
    }

    /// Sorted by (device, ts, boot_id, seq, window_start).
    fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let device_rank = self.devices.ranks();
        let boot_rank = self.boot_ids.ranks();
        let order = sorted_order(self.ts.len(), |i| {
            (
                device_rank[self.device[i] as usize],
                self.ts[i],
                boot_rank[self.boot_id[i] as usize],
                self.seq[i],
                self.window_start[i],
            )
        });
        let columns: Vec<ArrayRef> = vec![
            timestamps(take(&order, &self.ts)),
            timestamps(take(&order, &self.window_start)),
            self.devices.dictionary(take(&order, &self.device)),
            self.boot_ids.dictionary(take(&order, &self.boot_id)),
            Arc::new(Int64Array::from(take(&order, &self.seq))),
            self.versions
                .dictionary_nullable(take(&order, &self.model_version)),
            Arc::new(Float32Array::from(take(&order, &self.score))),
            Arc::new(BooleanArray::from(take(&order, &self.anomaly))),
            Arc::new(Int64Array::from(take(&order, &self.latency_us))),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

impl FromBatch for InferenceBuffer {
    fn hours(batch: &TelemetryBatch) -> Vec<i64> {
        distinct_hours(|| batch.inferences.iter().map(|r| r.window_end_us))
    }

    fn append_hour(&mut self, batch: &TelemetryBatch, hour: i64) -> usize {
        let Some(device) = batch.device.as_ref() else {
            return 0;
        };
        let before = self.ts.len();
        let mut ids = None;
        for result in batch
            .inferences
            .iter()
            .filter(|r| hour_of(r.window_end_us) == hour)
        {
            let (device, boot_id) = *ids.get_or_insert_with(|| {
                (
                    self.devices.intern(&device.device),
                    self.boot_ids.intern(&batch.boot_id),
                )
            });
            // A result that names no model ran the batch's model.
            let version = if result.model_version.is_empty() {
                &batch.model_version
            } else {
                &result.model_version
            };
            self.range.add(result.window_end_us);
            self.ts.push(result.window_end_us);
            self.window_start.push(result.window_start_us);
            self.device.push(device);
            self.boot_id.push(boot_id);
            // Validated: seq fits in i64.
            self.seq.push(batch.seq as i64);
            self.model_version
                .push(self.versions.intern_non_empty(version));
            self.score.push(result.score);
            self.anomaly.push(result.anomaly);
            self.latency_us.push(i64::from(result.latency_us));
        }
        self.ts.len() - before
    }
}

/// One row of the table as a reader sees it, with `site` and `line` taken from the path.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRow {
    pub ts_us: i64,
    pub window_start_us: i64,
    pub site: String,
    pub line: String,
    pub device: String,
    pub boot_id: String,
    pub seq: i64,
    pub model_version: Option<String>,
    pub score: f32,
    pub anomaly: bool,
    pub latency_us: i64,
}

/// Reads every row of one inference file, checking that its columns have the types this
/// module writes. `site` and `line` come from the file's `site=`/`line=` path levels.
pub fn read_file(path: &std::path::Path) -> Result<Vec<InferenceRow>, ReadError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int64Type, TimestampMicrosecondType};

    let file = FileBatches::read(path)?;
    let mut rows = Vec::new();
    for batch in &file.batches {
        let column = |name: &str, want: &DataType| file.column(batch, name, want, false);
        let ts = column("ts", &ts_type())?;
        let window_start = column("window_start", &ts_type())?;
        let device = column("device", &DataType::Utf8)?;
        let boot_id = column("boot_id", &DataType::Utf8)?;
        let seq = column("seq", &DataType::Int64)?;
        let model_version = file.column(batch, "model_version", &DataType::Utf8, true)?;
        let score = column("score", &DataType::Float32)?;
        let anomaly = column("anomaly", &DataType::Boolean)?;
        let latency = column("latency_us", &DataType::Int64)?;
        let (ts, window_start) = (
            ts.as_primitive::<TimestampMicrosecondType>(),
            window_start.as_primitive::<TimestampMicrosecondType>(),
        );
        let (device, boot_id, model_version) = (
            device.as_string::<i32>(),
            boot_id.as_string::<i32>(),
            model_version.as_string::<i32>(),
        );
        let (seq, score, anomaly, latency) = (
            seq.as_primitive::<Int64Type>(),
            score.as_primitive::<Float32Type>(),
            anomaly.as_boolean(),
            latency.as_primitive::<Int64Type>(),
        );
        for i in 0..batch.num_rows() {
            rows.push(InferenceRow {
                ts_us: ts.value(i),
                window_start_us: window_start.value(i),
                site: file.site.clone(),
                line: file.line.clone(),
                device: device.value(i).to_owned(),
                boot_id: boot_id.value(i).to_owned(),
                seq: seq.value(i),
                model_version: opt_string(model_version, i),
                score: score.value(i),
                anomaly: anomaly.value(i),
                latency_us: latency.value(i),
            });
        }
    }
    Ok(rows)
}
