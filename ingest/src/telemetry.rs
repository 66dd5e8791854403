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

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use loopline_proto::v1::TelemetryBatch;

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

fn dict() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("device", dict(), false),
                Field::new("sensor", dict(), false),
                Field::new("value", DataType::Float64, false),
                Field::new("quality", DataType::Int16, false),
                Field::new("boot_id", dict(), false),
                Field::new("seq", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Strings of one column, each stored once.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, i32>,
    values: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, value: &str) -> i32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.values.len() as i32;
        self.values.push(value.into());
        self.ids.insert(value.into(), id);
        id
    }

    /// Rank of each id in the strings' lexicographic order.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_unstable_by(|a, b| self.values[*a].cmp(&self.values[*b]));
        let mut ranks = vec![0; order.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id] = rank as u32;
        }
        ranks
    }

    fn dictionary(&self, keys: Vec<i32>) -> ArrayRef {
        let values = StringArray::from_iter_values(self.values.iter().map(|v| &**v));
        // Keys come from `intern`, so every key is in range of `values`.
        Arc::new(DictionaryArray::<Int32Type>::new(
            Int32Array::from(keys),
            Arc::new(values),
        ))
    }

    fn heap_size(&self) -> usize {
        self.values.iter().map(|v| 2 * v.len() + 48).sum()
    }
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
    min_ts_us: i64,
    max_ts_us: i64,
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
                if self.ts.is_empty() {
                    self.min_ts_us = sample.ts_us;
                    self.max_ts_us = sample.ts_us;
                } else {
                    self.min_ts_us = self.min_ts_us.min(sample.ts_us);
                    self.max_ts_us = self.max_ts_us.max(sample.ts_us);
                }
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

    pub fn rows(&self) -> usize {
        self.ts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Smallest and largest sample timestamp buffered.
    pub fn ts_range(&self) -> (i64, i64) {
        (self.min_ts_us, self.max_ts_us)
    }

    /// Approximate heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.ts.capacity() * ROW_BYTES
            + self.devices.heap_size()
            + self.sensors.heap_size()
            + self.boot_ids.heap_size()
    }

    /// The buffered rows as one record batch, sorted by (device, sensor, ts, boot_id, seq).
    pub fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let device_rank = self.devices.ranks();
        let sensor_rank = self.sensors.ranks();
        let boot_rank = self.boot_ids.ranks();
        let mut order: Vec<u32> = (0..self.ts.len() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            let i = i as usize;
            (
                device_rank[self.device[i] as usize],
                sensor_rank[self.sensor[i] as usize],
                self.ts[i],
                boot_rank[self.boot_id[i] as usize],
                self.seq[i],
            )
        });
        let take_i32 = |col: &[i32]| order.iter().map(|&i| col[i as usize]).collect::<Vec<_>>();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    order.iter().map(|&i| self.ts[i as usize]),
                )
                .with_timezone("UTC"),
            ),
            self.devices.dictionary(take_i32(&self.device)),
            self.sensors.dictionary(take_i32(&self.sensor)),
            Arc::new(Float64Array::from_iter_values(
                order.iter().map(|&i| self.value[i as usize]),
            )),
            Arc::new(Int16Array::from_iter_values(
                order.iter().map(|&i| self.quality[i as usize]),
            )),
            self.boot_ids.dictionary(take_i32(&self.boot_id)),
            Arc::new(Int64Array::from_iter_values(
                order.iter().map(|&i| self.seq[i as usize]),
            )),
        ];
        RecordBatch::try_new(schema(), columns)
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
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int16Type, Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let bad = |message: String| ReadError {
        path: path.to_owned(),
        message,
    };
    let text = path.to_string_lossy();
    let level = |key: &str| {
        text.split('/')
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("no {key} level in the path")))
    };
    let (site, line) = (level("site=")?, level("line=")?);
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str, want: &DataType| {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("no column {name}")))?;
            if column.data_type() != want || column.null_count() > 0 {
                return Err(bad(format!(
                    "column {name} is {} with {} nulls, expected non-null {want}",
                    column.data_type(),
                    column.null_count()
                )));
            }
            Ok(column.clone())
        };
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let ts = column("ts", &ts_type)?;
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
                site: site.clone(),
                line: line.clone(),
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

/// A telemetry file that cannot be read back as this module wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ReadError {
    pub path: std::path::PathBuf,
    pub message: String,
}
