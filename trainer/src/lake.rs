//! Reading the line's rows from the lake: partition pruning, then Arrow columns.
//!
//! Invariants:
//! - Only `<table>/site=S/line=L/date=…/hour=…` folders whose hour overlaps the range (widened
//!   by the caller's reach) are listed; `_loopline` is never read, and neither is a name that
//!   starts with `.` or `_` or does not end in `.parquet` (what a writer has not finished).
//! - Files are read in path order and rows kept in file order before the caller sorts them,
//!   so the result is a function of the lake's content, not of the directory's listing order.
//! - A nullable column that a file lacks reads as nulls (a file written before the column was
//!   added, `docs/lake.md`); a missing non-null column or a column of another type is bad
//!   input naming the file and the column.
//! - A file that vanishes between listing and opening (compaction swapped its folder) is an
//!   I/O error, which the job contract makes retryable: the next run lists again.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, TimestampMicrosecondType,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Result, TrainError};

pub use loopline_common::lake::{HOUR_US, parquet_files, partition_files};

/// Every record batch of `path`, reading only `columns` that the file has.
pub(crate) fn read_batches(path: &Path, columns: &[&str]) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(TrainError::io(path))?;
    let bad = |e: parquet::errors::ParquetError| TrainError::bad_input(path, e.to_string());
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
    let schema = builder.parquet_schema();
    let wanted: Vec<usize> = schema
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| columns.contains(&c.name()))
        .map(|(i, _)| i)
        .collect();
    let mask = parquet::arrow::ProjectionMask::leaves(schema, wanted);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(bad)?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| TrainError::bad_input(path, e.to_string()))
}

/// A string column, plain or dictionary-encoded (as readers that keep dictionaries see it),
/// or absent (all null).
pub(crate) enum StrCol<'a> {
    Plain(&'a StringArray),
    Dict(arrow_array::TypedDictionaryArray<'a, Int32Type, StringArray>),
    Null,
}

impl StrCol<'_> {
    /// Row `i`, `None` when null.
    pub fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrCol::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            StrCol::Dict(a) => {
                let keys = a.keys();
                keys.is_valid(i)
                    .then(|| a.values().value(keys.value(i) as usize))
            }
            StrCol::Null => None,
        }
    }
}

/// Checked access to the columns of one file's batches.
pub(crate) struct Columns<'a> {
    pub(crate) path: &'a Path,
    pub(crate) batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    fn get(&self, name: &str, nullable: bool) -> Result<Option<&'a ArrayRef>> {
        match self.batch.column_by_name(name) {
            Some(c) => {
                if !nullable && c.null_count() > 0 {
                    return Err(TrainError::bad_input(
                        self.path,
                        format!(
                            "column {name} holds {} nulls; it may hold none",
                            c.null_count()
                        ),
                    ));
                }
                Ok(Some(c))
            }
            None if nullable => Ok(None),
            None => Err(TrainError::bad_input(
                self.path,
                format!("no column {name}"),
            )),
        }
    }

    fn wrong(&self, name: &str, c: &ArrayRef, want: &str) -> TrainError {
        TrainError::bad_input(
            self.path,
            format!("column {name} is {}, expected {want}", c.data_type()),
        )
    }

    /// A microsecond timestamp column (any time zone), as integers.
    pub fn timestamps(
        &self,
        name: &str,
    ) -> Result<&'a arrow_array::PrimitiveArray<TimestampMicrosecondType>> {
        let Some(c) = self.get(name, false)? else {
            return Err(TrainError::bad_input(
                self.path,
                format!("no column {name}"),
            ));
        };
        match c.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Ok(c.as_primitive::<TimestampMicrosecondType>())
            }
            _ => Err(self.wrong(name, c, "timestamp(us)")),
        }
    }

    /// A string column; a nullable one may be absent.
    pub fn strings(&self, name: &str, nullable: bool) -> Result<StrCol<'a>> {
        let Some(c) = self.get(name, nullable)? else {
            return Ok(StrCol::Null);
        };
        if let Some(a) = c.as_string_opt::<i32>() {
            return Ok(StrCol::Plain(a));
        }
        if let Some(d) = c.as_dictionary_opt::<Int32Type>()
            && let Some(typed) = d.downcast_dict::<StringArray>()
        {
            return Ok(StrCol::Dict(typed));
        }
        Err(self.wrong(name, c, "string"))
    }

    /// A float column (double or float), as `f32` or `f64` read through a closure.
    pub fn floats(&self, name: &str) -> Result<Floats<'a>> {
        let Some(c) = self.get(name, false)? else {
            return Err(TrainError::bad_input(
                self.path,
                format!("no column {name}"),
            ));
        };
        match c.data_type() {
            DataType::Float64 => Ok(Floats::F64(c.as_primitive::<Float64Type>())),
            DataType::Float32 => Ok(Floats::F32(c.as_primitive::<Float32Type>())),
            _ => Err(self.wrong(name, c, "double or float")),
        }
    }

    /// The `quality` column (int16).
    pub fn int16(&self, name: &str) -> Result<&'a arrow_array::Int16Array> {
        let Some(c) = self.get(name, false)? else {
            return Err(TrainError::bad_input(
                self.path,
                format!("no column {name}"),
            ));
        };
        c.as_primitive_opt::<Int16Type>()
            .ok_or_else(|| self.wrong(name, c, "int16"))
    }

    /// A boolean column.
    pub fn booleans(&self, name: &str) -> Result<&'a arrow_array::BooleanArray> {
        let Some(c) = self.get(name, false)? else {
            return Err(TrainError::bad_input(
                self.path,
                format!("no column {name}"),
            ));
        };
        c.as_boolean_opt()
            .ok_or_else(|| self.wrong(name, c, "boolean"))
    }
}

/// A float column of either width.
pub(crate) enum Floats<'a> {
    F64(&'a arrow_array::Float64Array),
    F32(&'a arrow_array::Float32Array),
}

impl Floats<'_> {
    pub fn get(&self, i: usize) -> f64 {
        match self {
            Floats::F64(a) => a.value(i),
            Floats::F32(a) => f64::from(a.value(i)),
        }
    }
}

/// One sensor's samples of one device boot, sorted by time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelSamples {
    pub ts: Vec<i64>,
    pub value: Vec<f32>,
    pub quality: Vec<i16>,
}

/// The samples of one device boot: per requested channel, in the caller's channel order.
#[derive(Debug, Clone, PartialEq)]
pub struct BootSeries {
    pub device: String,
    pub boot_id: String,
    pub channels: Vec<ChannelSamples>,
}

/// Reads the `telemetry` rows of `site`/`line` with `from_us <= ts < to_us` for `channels`,
/// grouped per (device, boot) and sorted by (device, boot, ts). A sample repeated at the
/// same timestamp (a duplicate the lake should not hold) is kept once.
pub fn read_telemetry(
    lake: &Path,
    site: &str,
    line: &str,
    from_us: i64,
    to_us: i64,
    channels: &[String],
) -> Result<Vec<BootSeries>> {
    type Key = (String, String);
    let mut series: HashMap<Key, Vec<ChannelSamples>> = HashMap::new();
    for path in partition_files(lake, "telemetry", site, line, from_us, to_us)? {
        let batches = read_batches(
            &path,
            &["ts", "device", "sensor", "value", "quality", "boot_id"],
        )?;
        for batch in &batches {
            let cols = Columns { path: &path, batch };
            let ts = cols.timestamps("ts")?;
            let device = cols.strings("device", false)?;
            let sensor = cols.strings("sensor", false)?;
            let value = cols.floats("value")?;
            let quality = cols.int16("quality")?;
            let boot = cols.strings("boot_id", false)?;
            // Rows come sorted by (device, sensor, ts): look the key up only when it changes.
            let mut last: Option<(&str, &str, &str)> = None;
            let mut target: Option<&mut ChannelSamples> = None;
            for i in 0..batch.num_rows() {
                let t = ts.value(i);
                if t < from_us || t >= to_us {
                    continue;
                }
                let (Some(d), Some(s), Some(b)) = (device.get(i), sensor.get(i), boot.get(i))
                else {
                    continue;
                };
                if last != Some((d, s, b)) {
                    last = Some((d, s, b));
                    target = match channels.iter().position(|c| c == s) {
                        None => None,
                        Some(ch) => {
                            let entry = series
                                .entry((d.to_owned(), b.to_owned()))
                                .or_insert_with(|| vec![ChannelSamples::default(); channels.len()]);
                            Some(&mut entry[ch])
                        }
                    };
                }
                if let Some(samples) = target.as_deref_mut() {
                    samples.ts.push(t);
                    samples.value.push(value.get(i) as f32);
                    samples.quality.push(quality.value(i));
                }
            }
        }
    }
    let mut out: Vec<BootSeries> = series
        .into_iter()
        .map(|((device, boot_id), mut channels)| {
            for c in &mut channels {
                sort_dedup(c);
            }
            BootSeries {
                device,
                boot_id,
                channels,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.device, &a.boot_id).cmp(&(&b.device, &b.boot_id)));
    Ok(out)
}

fn sort_dedup(c: &mut ChannelSamples) {
    if c.ts.windows(2).all(|w| w[0] < w[1]) {
        return;
    }
    let mut order: Vec<usize> = (0..c.ts.len()).collect();
    order.sort_by_key(|&i| c.ts[i]);
    order.dedup_by_key(|i| c.ts[*i]);
    *c = ChannelSamples {
        ts: order.iter().map(|&i| c.ts[i]).collect(),
        value: order.iter().map(|&i| c.value[i]).collect(),
        quality: order.iter().map(|&i| c.quality[i]).collect(),
    };
}

/// A window a device's running model scored (`inference` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub device: String,
    pub boot_id: String,
    pub start_us: i64,
    pub end_us: i64,
    pub anomaly: bool,
}

/// The `inference` rows of `site`/`line` whose window overlaps `[from_us, to_us)`, sorted by
/// (device, boot, start).
pub fn read_inference(
    lake: &Path,
    site: &str,
    line: &str,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<Scored>> {
    let mut out = Vec::new();
    // `ts` is the window's end, so a window overlapping the range ends in it or just after.
    for path in partition_files(lake, "inference", site, line, from_us, to_us + HOUR_US)? {
        for batch in &read_batches(
            &path,
            &["ts", "window_start", "device", "boot_id", "anomaly"],
        )? {
            let cols = Columns { path: &path, batch };
            let end = cols.timestamps("ts")?;
            let start = cols.timestamps("window_start")?;
            let device = cols.strings("device", false)?;
            let boot = cols.strings("boot_id", false)?;
            let anomaly = cols.booleans("anomaly")?;
            for i in 0..batch.num_rows() {
                let (s, e) = (start.value(i), end.value(i));
                if e < from_us || s >= to_us {
                    continue;
                }
                let (Some(d), Some(b)) = (device.get(i), boot.get(i)) else {
                    continue;
                };
                out.push(Scored {
                    device: d.to_owned(),
                    boot_id: b.to_owned(),
                    start_us: s,
                    end_us: e,
                    anomaly: anomaly.value(i),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.device, &a.boot_id, a.start_us).cmp(&(&b.device, &b.boot_id, b.start_us))
    });
    Ok(out)
}

/// A simulated ground-truth span (`sim_labels` table). Evaluation only.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSpan {
    pub device: String,
    pub boot_id: String,
    pub start_us: i64,
    pub end_us: i64,
    pub fault: String,
}

/// How far before a range `sim_labels` partitions are read: a span sits in its start's
/// partition, and the agent's spans are at most a batch long.
const LABEL_REACH_US: i64 = HOUR_US;

/// The `sim_labels` spans of `site`/`line` overlapping `[from_us, to_us)`. Only evaluation
/// calls this: training and threshold selection never see labels.
pub fn read_sim_labels(
    lake: &Path,
    site: &str,
    line: &str,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<LabelSpan>> {
    let mut out = Vec::new();
    for path in partition_files(
        lake,
        "sim_labels",
        site,
        line,
        from_us - LABEL_REACH_US,
        to_us,
    )? {
        for batch in &read_batches(&path, &["start_ts", "end_ts", "device", "boot_id", "fault"])? {
            let cols = Columns { path: &path, batch };
            let start = cols.timestamps("start_ts")?;
            let end = cols.timestamps("end_ts")?;
            let device = cols.strings("device", false)?;
            let boot = cols.strings("boot_id", false)?;
            let fault = cols.strings("fault", false)?;
            for i in 0..batch.num_rows() {
                let (s, e) = (start.value(i), end.value(i));
                if e <= from_us || s >= to_us {
                    continue;
                }
                let (Some(d), Some(b), Some(f)) = (device.get(i), boot.get(i), fault.get(i)) else {
                    continue;
                };
                out.push(LabelSpan {
                    device: d.to_owned(),
                    boot_id: b.to_owned(),
                    start_us: s,
                    end_us: e,
                    fault: f.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_bad_input_and_a_missing_one_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"not parquet").unwrap();
        let err = read_batches(&path, &["ts"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with(&path.display().to_string()));
        let err = read_batches(&dir.path().join("gone.parquet"), &["ts"]).unwrap_err();
        assert_eq!(err.exit_code(), 75);
    }
}
