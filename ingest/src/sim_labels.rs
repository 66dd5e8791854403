//! The `sim_labels` table: the line simulator's ground truth, one row per labelled span.
//!
//! SIMULATION ONLY: a real line has no such thing. It exists so that model evaluation can
//! measure precision and recall; training and the running model must never read it.
//!
//! Columns, in file order: `start_ts timestamp(us, UTC)`, `end_ts timestamp(us, UTC)`
//! (exclusive), `device`, `boot_id`, `seq int64`, `fault`, `severity float32`, `sensor`
//! (null for a machine fault). The wire's `start`/`end` gain a `_ts` suffix because `END` is
//! a reserved word in SQL. Partitioned by the hour of `start_ts` (a span that crosses an hour
//! sits in its start's partition); rows of a file sorted by (device, start_ts), then
//! (boot_id, seq, end_ts, fault, sensor). `docs/lake.md` is the user-facing reference; change
//! both together.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use loopline_proto::v1::TelemetryBatch;

use crate::table::{
    FileBatches, FromBatch, Interner, ReadError, RowBuffer, TsRange, dict_type, distinct_hours,
    hour_of, opt_string, sorted_order, take, timestamps, ts_type,
};

/// Name of the table's folder under the lake root.
pub const TABLE: &str = "sim_labels";

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("start_ts", ts_type(), false),
                Field::new("end_ts", ts_type(), false),
                Field::new("device", dict_type(), false),
                Field::new("boot_id", dict_type(), false),
                Field::new("seq", DataType::Int64, false),
                Field::new("fault", dict_type(), false),
                Field::new("severity", DataType::Float32, false),
                Field::new("sensor", dict_type(), true),
            ]))
        })
        .clone()
}

/// Labels of one partition waiting to become one file.
#[derive(Debug, Default)]
pub struct SimLabelBuffer {
    start: Vec<i64>,
    end: Vec<i64>,
    device: Vec<i32>,
    boot_id: Vec<i32>,
    seq: Vec<i64>,
    fault: Vec<i32>,
    severity: Vec<f32>,
    sensor: Vec<Option<i32>>,
    devices: Interner,
    boot_ids: Interner,
    faults: Interner,
    sensors: Interner,
    range: TsRange,
}

/// Bytes one buffered row costs.
const ROW_BYTES: usize = 8 + 8 + 4 + 4 + 8 + 4 + 4 + 8;

impl RowBuffer for SimLabelBuffer {
    const TABLE: &'static str = TABLE;
    const PARTITION_TS: &'static str = "start_ts";
    const SORTED_BY: &'static [&'static str] = &["device", "start_ts"];
    const DELTA_COLUMNS: &'static [&'static str] = &["start_ts", "end_ts", "seq"];
    const PLAIN_COLUMNS: &'static [&'static str] = &["severity"];

    fn schema() -> SchemaRef {
        schema()
    }

    fn rows(&self) -> usize {
        self.start.len()
    }

    fn ts_range(&self) -> (i64, i64) {
        self.range.get()
    }

    fn heap_size(&self) -> usize {
        self.start.capacity() * ROW_BYTES
            + self.devices.heap_size()
            + self.boot_ids.heap_size()
            + self.faults.heap_size()
            + self.sensors.heap_size()
    }

    /// Sorted by (device, start_ts, boot_id, seq, end_ts, fault, sensor).
    fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let device_rank = self.devices.ranks();
        let boot_rank = self.boot_ids.ranks();
        let fault_rank = self.faults.ranks();
        let sensor_rank = self.sensors.ranks();
        let order = sorted_order(self.start.len(), |i| {
            (
                device_rank[self.device[i] as usize],
                self.start[i],
                boot_rank[self.boot_id[i] as usize],
                self.seq[i],
                self.end[i],
                fault_rank[self.fault[i] as usize],
                Interner::rank_opt(&sensor_rank, self.sensor[i]),
            )
        });
        let columns: Vec<ArrayRef> = vec![
            timestamps(take(&order, &self.start)),
            timestamps(take(&order, &self.end)),
            self.devices.dictionary(take(&order, &self.device)),
            self.boot_ids.dictionary(take(&order, &self.boot_id)),
            Arc::new(Int64Array::from(take(&order, &self.seq))),
            self.faults.dictionary(take(&order, &self.fault)),
            Arc::new(Float32Array::from(take(&order, &self.severity))),
            self.sensors.dictionary_nullable(take(&order, &self.sensor)),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

impl FromBatch for SimLabelBuffer {
    fn hours(batch: &TelemetryBatch) -> Vec<i64> {
        distinct_hours(|| batch.sim_labels.iter().map(|l| l.start_us))
    }

    fn append_hour(&mut self, batch: &TelemetryBatch, hour: i64) -> usize {
        let Some(device) = batch.device.as_ref() else {
            return 0;
        };
        let before = self.start.len();
        let mut ids = None;
        for label in batch
            .sim_labels
            .iter()
            .filter(|l| hour_of(l.start_us) == hour)
        {
            let (device, boot_id) = *ids.get_or_insert_with(|| {
                (
                    self.devices.intern(&device.device),
                    self.boot_ids.intern(&batch.boot_id),
                )
            });
            self.range.add(label.start_us);
            self.start.push(label.start_us);
            self.end.push(label.end_us);
            self.device.push(device);
            self.boot_id.push(boot_id);
            // Validated: seq fits in i64.
            self.seq.push(batch.seq as i64);
            self.fault.push(self.faults.intern(&label.fault));
            self.severity.push(label.severity);
            self.sensor
                .push(self.sensors.intern_non_empty(&label.sensor));
        }
        self.start.len() - before
    }
}

/// One row of the table as a reader sees it, with `site` and `line` taken from the path.
#[derive(Debug, Clone, PartialEq)]
pub struct SimLabelRow {
    pub start_us: i64,
    pub end_us: i64,
    pub site: String,
    pub line: String,
    pub device: String,
    pub boot_id: String,
    pub seq: i64,
    pub fault: String,
    pub severity: f32,
    pub sensor: Option<String>,
}

/// Reads every row of one sim_labels file, checking that its columns have the types this
/// module writes. `site` and `line` come from the file's `site=`/`line=` path levels.
pub fn read_file(path: &std::path::Path) -> Result<Vec<SimLabelRow>, ReadError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int64Type, TimestampMicrosecondType};

    let file = FileBatches::read(path)?;
    let mut rows = Vec::new();
    for batch in &file.batches {
        let column = |name: &str, want: &DataType| file.column(batch, name, want, false);
        let start = column("start_ts", &ts_type())?;
        let end = column("end_ts", &ts_type())?;
        let device = column("device", &DataType::Utf8)?;
        let boot_id = column("boot_id", &DataType::Utf8)?;
        let seq = column("seq", &DataType::Int64)?;
        let fault = column("fault", &DataType::Utf8)?;
        let severity = column("severity", &DataType::Float32)?;
        let sensor = file.column(batch, "sensor", &DataType::Utf8, true)?;
        let (start, end) = (
            start.as_primitive::<TimestampMicrosecondType>(),
            end.as_primitive::<TimestampMicrosecondType>(),
        );
        let (device, boot_id, fault, sensor) = (
            device.as_string::<i32>(),
            boot_id.as_string::<i32>(),
            fault.as_string::<i32>(),
            sensor.as_string::<i32>(),
        );
        let (seq, severity) = (
            seq.as_primitive::<Int64Type>(),
            severity.as_primitive::<Float32Type>(),
        );
        for i in 0..batch.num_rows() {
            rows.push(SimLabelRow {
                start_us: start.value(i),
                end_us: end.value(i),
                site: file.site.clone(),
                line: file.line.clone(),
                device: device.value(i).to_owned(),
                boot_id: boot_id.value(i).to_owned(),
                seq: seq.value(i),
                fault: fault.value(i).to_owned(),
                severity: severity.value(i),
                sensor: opt_string(sensor, i),
            });
        }
    }
    Ok(rows)
}
