//! The narrow `telemetry` table: one row per sample, and the in-memory buffer that becomes
//! one Parquet file.
//!
//! Columns, in file order: `ts timestamp(us, UTC)`, `device`, `sensor`, `value float64`,
//! `quality int16`, `boot_id`, `seq int64`. `site` and `line` (and `date`, `hour`) are Hive
//! partition keys, held by the path alone as Hive-style writers do: a file that also held them
//! would make pyarrow's `read_table` and pandas fail to merge the two. Strings are
//! dictionary-encoded in the file; no Arrow schema is embedded, so every reader sees plain
//! strings. Rows of one file are sorted by (device, sensor, ts), then (boot_id, seq) to make
//! the order total. `docs/lake.md` is the user-facing reference; change both together.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, Float64Array, Int16Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use loopline_proto::v1::TelemetryBatch;

pub use crate::table::ReadError;
use crate::table::{
    FileBatches, FromBatch, Interner, RowBuffer, TsRange, dict_type, distinct_hours, hour_of,
    sorted_order, take, timestamps, ts_type,
};

/// Name of the table's folder under the lake root.
pub const TABLE: &str = "telemetry";

/// Column positions, for sorting metadata and tests.
pub mod col {
    pub const TS: usize = 0;
    pub const DEVICE: usize = 1;
    pub const SENSOR: usize = 2;
    pub const VALUE: usize = 3;
    pub const QUALITY: usize = 4;
    pub const BOOT_ID: usize = 5;
    pub const SEQ: usize = 6;
}

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("ts", ts_type(), false),
                Field::new("device", dict_type(), false),
                Field::new("sensor", dict_type(), false),
                Field::new("value", DataType::Float64, false),
                Field::new("quality", DataType::Int16, false),
                Field::new("boot_id", dict_type(), false),
                Field::new("seq", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Rows of one partition (site, line, hour) waiting to become one file. Site and line are
/// the partition's, so they are not stored per row.
#[derive(Debug, Default)]
pub struct TelemetryBuffer {
    ts: Vec<i64>,
    device: Vec<i32>,
    sensor: Vec<i32>,
    value: Vec<f64>,
    quality: Vec<i16>,
    boot_id: Vec<i32>,
    seq: Vec<i64>,
    devices: Interner,
    sensors: Interner,
    boot_ids: Interner,
    range: TsRange,
}

/// Bytes one buffered row costs, for the memory budget.
pub const ROW_BYTES: usize = 8 + 4 + 4 + 8 + 2 + 4 + 8;

impl TelemetryBuffer {
    /// Appends the samples of `batch` whose timestamps satisfy `keep` (the caller routes each
    /// hour to its own buffer). `batch` must have passed [`crate::validate::check`].
    pub fn append(&mut self, batch: &TelemetryBatch, keep: impl Fn(i64) -> bool) -> usize {
        let Some(device) = batch.device.as_ref() else {
            return 0;
        };
        let device = self.devices.intern(&device.device);
        let boot_id = self.boot_ids.intern(&batch.boot_id);
        // Validated: seq fits in i64.
        let seq = batch.seq as i64;
        let before = self.ts.len();
        for channel in &batch.channels {
            let Ok(samples) = channel.samples(batch.base_ts_us) else {
                continue;
            };
            let sensor = self.sensors.intern(&channel.sensor);
            for sample in samples.filter(|s| keep(s.ts_us)) {
                self.range.add(sample.ts_us);
                self.ts.push(sample.ts_us);
                self.device.push(device);
                self.sensor.push(sensor);
                self.value.push(f64::from(sample.value));
                self.quality.push(sample.quality as i16);
                self.boot_id.push(boot_id);
                self.seq.push(seq);
            }
        }
        self.ts.len() - before
    }
}

impl RowBuffer for TelemetryBuffer {
    const TABLE: &'static str = TABLE;
    const PARTITION_TS: &'static str = "ts";
    const SORTED_BY: &'static [&'static str] = &["device", "sensor", "ts"];
    const DELTA_COLUMNS: &'static [&'static str] = &["ts", "seq"];
    const PLAIN_COLUMNS: &'static [&'static str] = &["value"];

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
            + self.sensors.heap_size()
            + self.boot_ids.heap_size()
    }

    /// Sorted by (device, sensor, ts, boot_id, seq).
    fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let device_rank = self.devices.ranks();
        let sensor_rank = self.sensors.ranks();
        let boot_rank = self.boot_ids.ranks();
        let order = sorted_order(self.ts.len(), |i| {
            (
                device_rank[self.device[i] as usize],
                sensor_rank[self.sensor[i] as usize],
                self.ts[i],
                boot_rank[self.boot_id[i] as usize],
                self.seq[i],
            )
        });
        let columns: Vec<ArrayRef> = vec![
            timestamps(take(&order, &self.ts)),
            self.devices.dictionary(take(&order, &self.device)),
            self.sensors.dictionary(take(&order, &self.sensor)),
            Arc::new(Float64Array::from(take(&order, &self.value))),
            Arc::new(Int16Array::from(take(&order, &self.quality))),
            self.boot_ids.dictionary(take(&order, &self.boot_id)),
            Arc::new(Int64Array::from(take(&order, &self.seq))),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

impl FromBatch for TelemetryBuffer {
    fn hours(batch: &TelemetryBatch) -> Vec<i64> {
        distinct_hours(|| {
            batch
                .channels
                .iter()
                .filter_map(|c| c.samples(batch.base_ts_us).ok())
                .flatten()
                .map(|s| s.ts_us)
        })
    }

    fn append_hour(&mut self, batch: &TelemetryBatch, hour: i64) -> usize {
        self.append(batch, |ts| hour_of(ts) == hour)
    }
}

/// One row of the table as a reader sees it, with `site` and `line` taken from the path.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    pub ts_us: i64,
    pub site: String,
    pub line: String,
    pub device: String,
    pub sensor: String,
    pub value: f64,
    pub quality: i16,
    pub boot_id: String,
    pub seq: i64,
}

/// Reads every row of one telemetry file, checking that its columns have the types this
/// module writes. `site` and `line` come from the file's `site=`/`line=` path levels.
pub fn read_file(path: &std::path::Path) -> Result<Vec<TelemetryRow>, ReadError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int16Type, Int64Type, TimestampMicrosecondType};

    let file = FileBatches::read(path)?;
    let mut rows = Vec::new();
    for batch in &file.batches {
        let column = |name: &str, want: &DataType| file.column(batch, name, want, false);
        let ts = column("ts", &ts_type())?;
        let device = column("device", &DataType::Utf8)?;
        let sensor = column("sensor", &DataType::Utf8)?;
        let value = column("value", &DataType::Float64)?;
        let quality = column("quality", &DataType::Int16)?;
        let boot_id = column("boot_id", &DataType::Utf8)?;
        let seq = column("seq", &DataType::Int64)?;
        let (ts, value, quality, seq) = (
            ts.as_primitive::<TimestampMicrosecondType>(),
            value.as_primitive::<Float64Type>(),
            quality.as_primitive::<Int16Type>(),
            seq.as_primitive::<Int64Type>(),
        );
        let (device, sensor, boot_id) = (
            device.as_string::<i32>(),
            sensor.as_string::<i32>(),
            boot_id.as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            rows.push(TelemetryRow {
                ts_us: ts.value(i),
                site: file.site.clone(),
                line: file.line.clone(),
                device: device.value(i).to_owned(),
                sensor: sensor.value(i).to_owned(),
                value: value.value(i),
                quality: quality.value(i),
                boot_id: boot_id.value(i).to_owned(),
                seq: seq.value(i),
            });
        }
    }
    Ok(rows)
}
