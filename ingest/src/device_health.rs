//! The `device_health` table: one row per health snapshot, that is at most one per batch.
//!
//! Columns, in file order: `ts timestamp(us, UTC)`, `device`, `boot_id`, `seq int64`,
//! `model_version` (nullable: the batch's running model), then every `DeviceHealth` field as
//! its own column, named with its unit ([`METRICS`]). Floats stay `float32` as sent; every
//! counter is `int64` (wire `uint32`/`uint64`; validation drops a snapshot whose counter
//! exceeds 2^63 - 1, and Spark has no unsigned types). Partitioned by the hour of `ts`; rows of
//! a file sorted by (device, ts), then (boot_id, seq). `docs/lake.md` is the user-facing
//! reference; change both together.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, Float32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use loopline_proto::v1::{DeviceHealth, TelemetryBatch};

use crate::table::{
    FileBatches, FromBatch, Interner, ReadError, RowBuffer, TsRange, dict_type, hour_of,
    opt_string, sorted_order, timestamps, ts_type,
};

/// Name of the table's folder under the lake root.
pub const TABLE: &str = "device_health";

/// How one `DeviceHealth` field becomes a column and back.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    Float(fn(&DeviceHealth) -> f32, fn(&mut DeviceHealth, f32)),
    /// Read as `i64`; validation guarantees the wire value fits.
    Int(fn(&DeviceHealth) -> i64, fn(&mut DeviceHealth, i64)),
}

/// The metric columns, in file order after `model_version`: name, and how it maps to the
/// wire field. The name carries the unit where the field has one.
pub static METRICS: [(&str, Metric); 17] = [
    (
        "npu_utilisation",
        Metric::Float(|h| h.npu_utilisation, |h, v| h.npu_utilisation = v),
    ),
    (
        "npu_temperature_c",
        Metric::Float(|h| h.npu_temperature_c, |h, v| h.npu_temperature_c = v),
    ),
    (
        "npu_power_w",
        Metric::Float(|h| h.npu_power_w, |h, v| h.npu_power_w = v),
    ),
    (
        "npu_clock_mhz",
        Metric::Int(
            |h| i64::from(h.npu_clock_mhz),
            |h, v| h.npu_clock_mhz = v as u32,
        ),
    ),
    (
        "npu_throttle_level",
        Metric::Int(
            |h| i64::from(h.throttle_level),
            |h, v| h.throttle_level = v as u32,
        ),
    ),
    (
        "npu_errors",
        Metric::Int(|h| i64::from(h.npu_errors), |h, v| h.npu_errors = v as u32),
    ),
    (
        "npu_fps",
        Metric::Float(|h| h.npu_fps, |h, v| h.npu_fps = v),
    ),
    (
        "latency_p50_us",
        Metric::Int(
            |h| i64::from(h.latency_p50_us),
            |h, v| h.latency_p50_us = v as u32,
        ),
    ),
    (
        "latency_p95_us",
        Metric::Int(
            |h| i64::from(h.latency_p95_us),
            |h, v| h.latency_p95_us = v as u32,
        ),
    ),
    (
        "latency_p99_us",
        Metric::Int(
            |h| i64::from(h.latency_p99_us),
            |h, v| h.latency_p99_us = v as u32,
        ),
    ),
    (
        "npu_ecc_errors",
        Metric::Int(
            |h| h.npu_ecc_errors as i64,
            |h, v| h.npu_ecc_errors = v as u64,
        ),
    ),
    (
        "npu_resets",
        Metric::Int(|h| i64::from(h.npu_resets), |h, v| h.npu_resets = v as u32),
    ),
    (
        "npu_failed_inferences",
        Metric::Int(
            |h| h.npu_failed_inferences as i64,
            |h, v| h.npu_failed_inferences = v as u64,
        ),
    ),
    (
        "spool_pending_batches",
        Metric::Int(
            |h| h.spool_pending as i64,
            |h, v| h.spool_pending = v as u64,
        ),
    ),
    (
        "spool_bytes",
        Metric::Int(|h| h.spool_bytes as i64, |h, v| h.spool_bytes = v as u64),
    ),
    (
        "spool_quarantined_segments",
        Metric::Int(
            |h| i64::from(h.spool_quarantined_segments),
            |h, v| h.spool_quarantined_segments = v as u32,
        ),
    ),
    (
        "dropped_samples",
        Metric::Int(
            |h| h.dropped_samples as i64,
            |h, v| h.dropped_samples = v as u64,
        ),
    ),
];

/// The `u64` wire fields, which must fit in `i64` to be stored: name and value.
pub fn u64_fields(h: &DeviceHealth) -> [(&'static str, u64); 5] {
    [
        ("npu_ecc_errors", h.npu_ecc_errors),
        ("npu_failed_inferences", h.npu_failed_inferences),
        ("spool_pending", h.spool_pending),
        ("spool_bytes", h.spool_bytes),
        ("dropped_samples", h.dropped_samples),
    ]
}

/// The Arrow schema of the table as Loopline writes it.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                Field::new("ts", ts_type(), false),
                Field::new("device", dict_type(), false),
                Field::new("boot_id", dict_type(), false),
                Field::new("seq", DataType::Int64, false),
                Field::new("model_version", dict_type(), true),
            ];
            fields.extend(METRICS.iter().map(|(name, metric)| {
                let ty = match metric {
                    Metric::Float(..) => DataType::Float32,
                    Metric::Int(..) => DataType::Int64,
                };
                Field::new(*name, ty, false)
            }));
            Arc::new(Schema::new(fields))
        })
        .clone()
}

#[derive(Debug)]
struct Snapshot {
    ts: i64,
    device: i32,
    boot_id: i32,
    seq: i64,
    model_version: Option<i32>,
    health: DeviceHealth,
}

/// Health snapshots of one partition waiting to become one file.
#[derive(Debug, Default)]
pub struct DeviceHealthBuffer {
    rows: Vec<Snapshot>,
    devices: Interner,
    boot_ids: Interner,
    versions: Interner,
    range: TsRange,
}

impl RowBuffer for DeviceHealthBuffer {
    const TABLE: &'static str = TABLE;
    const PARTITION_TS: &'static str = "ts";
    const SORTED_BY: &'static [&'static str] = &["device", "ts"];
    const DELTA_COLUMNS: &'static [&'static str] = &["ts", "seq"];
    const PLAIN_COLUMNS: &'static [&'static str] = &[
        "npu_utilisation",
        "npu_temperature_c",
        "npu_power_w",
        "npu_fps",
    ];

    fn schema() -> SchemaRef {
        schema()
    }

    fn rows(&self) -> usize {
        self.rows.len()
    }

    fn ts_range(&self) -> (i64, i64) {
        self.range.get()
    }

    fn heap_size(&self) -> usize {
        self.rows.capacity() * std::mem::size_of::<Snapshot>()
            + self.devices.heap_size()
            + self.boot_ids.heap_size()
            + self.versions.heap_size()
    }

    /// Sorted by (device, ts, boot_id, seq).
    fn to_record_batch(&self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let device_rank = self.devices.ranks();
        let boot_rank = self.boot_ids.ranks();
        let order = sorted_order(self.rows.len(), |i| {
            let r = &self.rows[i];
            (
                device_rank[r.device as usize],
                r.ts,
                boot_rank[r.boot_id as usize],
                r.seq,
            )
        });
        let rows: Vec<&Snapshot> = order.iter().map(|&i| &self.rows[i as usize]).collect();
        let mut columns: Vec<ArrayRef> = vec![
            timestamps(rows.iter().map(|r| r.ts).collect()),
            self.devices
                .dictionary(rows.iter().map(|r| r.device).collect()),
            self.boot_ids
                .dictionary(rows.iter().map(|r| r.boot_id).collect()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq))),
            self.versions
                .dictionary_nullable(rows.iter().map(|r| r.model_version).collect()),
        ];
        for (_, metric) in &METRICS {
            columns.push(match metric {
                Metric::Float(get, _) => Arc::new(Float32Array::from_iter_values(
                    rows.iter().map(|r| get(&r.health)),
                )),
                Metric::Int(get, _) => Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| get(&r.health)),
                )),
            });
        }
        RecordBatch::try_new(schema(), columns)
    }
}

impl FromBatch for DeviceHealthBuffer {
    fn hours(batch: &TelemetryBatch) -> Vec<i64> {
        batch
            .health
            .as_ref()
            .map(|h| vec![hour_of(h.ts_us)])
            .unwrap_or_default()
    }

    fn append_hour(&mut self, batch: &TelemetryBatch, hour: i64) -> usize {
        let (Some(device), Some(health)) = (batch.device.as_ref(), batch.health.as_ref()) else {
            return 0;
        };
        if hour_of(health.ts_us) != hour {
            return 0;
        }
        self.range.add(health.ts_us);
        self.rows.push(Snapshot {
            ts: health.ts_us,
            device: self.devices.intern(&device.device),
            boot_id: self.boot_ids.intern(&batch.boot_id),
            // Validated: seq fits in i64.
            seq: batch.seq as i64,
            model_version: self.versions.intern_non_empty(&batch.model_version),
            health: *health,
        });
        1
    }
}

/// One row of the table as a reader sees it, with `site` and `line` taken from the path.
/// `health` holds the metric columns as the wire message they came from, `ts_us` included.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceHealthRow {
    pub site: String,
    pub line: String,
    pub device: String,
    pub boot_id: String,
    pub seq: i64,
    pub model_version: Option<String>,
    pub health: DeviceHealth,
}

/// Reads every row of one device_health file, checking that its columns have the types this
/// module writes. `site` and `line` come from the file's `site=`/`line=` path levels.
pub fn read_file(path: &std::path::Path) -> Result<Vec<DeviceHealthRow>, ReadError> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Int64Type, TimestampMicrosecondType};

    let file = FileBatches::read(path)?;
    let mut rows = Vec::new();
    for batch in &file.batches {
        let column = |name: &str, want: &DataType| file.column(batch, name, want, false);
        let ts = column("ts", &ts_type())?;
        let device = column("device", &DataType::Utf8)?;
        let boot_id = column("boot_id", &DataType::Utf8)?;
        let seq = column("seq", &DataType::Int64)?;
        let model_version = file.column(batch, "model_version", &DataType::Utf8, true)?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let (device, boot_id, model_version) = (
            device.as_string::<i32>(),
            boot_id.as_string::<i32>(),
            model_version.as_string::<i32>(),
        );
        let seq = seq.as_primitive::<Int64Type>();
        let first = rows.len();
        for i in 0..batch.num_rows() {
            rows.push(DeviceHealthRow {
                site: file.site.clone(),
                line: file.line.clone(),
                device: device.value(i).to_owned(),
                boot_id: boot_id.value(i).to_owned(),
                seq: seq.value(i),
                model_version: opt_string(model_version, i),
                health: DeviceHealth {
                    ts_us: ts.value(i),
                    ..DeviceHealth::default()
                },
            });
        }
        for (name, metric) in &METRICS {
            match metric {
                Metric::Float(_, set) => {
                    let values = column(name, &DataType::Float32)?;
                    let values = values.as_primitive::<Float32Type>();
                    for (i, row) in rows[first..].iter_mut().enumerate() {
                        set(&mut row.health, values.value(i));
                    }
                }
                Metric::Int(_, set) => {
                    let values = column(name, &DataType::Int64)?;
                    let values = values.as_primitive::<Int64Type>();
                    for (i, row) in rows[first..].iter_mut().enumerate() {
                        set(&mut row.health, values.value(i));
                    }
                }
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric's setter writes the field its getter reads, so a snapshot survives the
    /// trip through the columns.
    #[test]
    fn metrics_map_each_field_both_ways() {
        let mut from = DeviceHealth::default();
        for (i, (_, metric)) in METRICS.iter().enumerate() {
            match metric {
                Metric::Float(_, set) => set(&mut from, i as f32 + 0.5),
                Metric::Int(_, set) => set(&mut from, i as i64 + 1),
            }
        }
        let mut back = DeviceHealth::default();
        for (_, metric) in &METRICS {
            match metric {
                Metric::Float(get, set) => set(&mut back, get(&from)),
                Metric::Int(get, set) => set(&mut back, get(&from)),
            }
        }
        assert_eq!(back, from);
        // Each metric reads back its own value: no two share a field.
        for (i, (name, metric)) in METRICS.iter().enumerate() {
            match metric {
                Metric::Float(get, _) => assert_eq!(get(&from), i as f32 + 0.5, "{name}"),
                Metric::Int(get, _) => assert_eq!(get(&from), i as i64 + 1, "{name}"),
            }
        }
        let names: std::collections::HashSet<_> = METRICS.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), METRICS.len());
    }
}
