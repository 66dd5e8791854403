//! What the retraining triggers read from the lake: one line's scored windows and, for each,
//! the operating context and sensor health from its telemetry.
//!
//! Invariants:
//! - Only committed files are read. Every `*.parquet` in a partition folder is committed
//!   (ingest renames a file into its folder only once it is complete; temporary files live
//!   under `_loopline/tmp`), so listing the partition folders is enough and the commit logs
//!   need not be read.
//! - Reads are pruned three ways: by partition (only the `site=`/`line=` folders asked for, and
//!   only the `date=`/`hour=` folders that overlap the range), by row group (the `ts`
//!   statistics ingest writes), and by column (only the columns used are decoded).
//! - A nullable column a file lacks reads as nulls (the lake's compatibility rules); a
//!   required column that is missing or of another type is an error naming the file.
//! - Times are microseconds since the Unix epoch, UTC; ranges are half-open `[from, to)`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::statistics::Statistics;

use crate::triggers::{ChannelHealth, LineWindowData, ScoredWindow};

/// The table of sensor samples.
pub const TELEMETRY: &str = "telemetry";
/// The table of windows the devices scored.
pub const INFERENCE: &str = "inference";
/// The channel that carries the MES's recipe number.
pub const RECIPE_CHANNEL: &str = "recipe";
/// The channel that carries the PLC's speed setpoint.
pub const SPEED_SETPOINT_CHANNEL: &str = "speed_setpoint";

/// Why the lake could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// A folder could not be listed or a file opened.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not readable Parquet.
    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A file lacks a column the triggers need, or holds it with another type.
    #[error("{}: {message}", path.display())]
    Schema { path: PathBuf, message: String },
}

/// The result type of lake reads.
pub type Result<T, E = LakeError> = std::result::Result<T, E>;

/// A half-open time range `[from_us, to_us)`, microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeRange {
    pub from_us: i64,
    pub to_us: i64,
}

impl TimeRange {
    pub fn new(from_us: i64, to_us: i64) -> TimeRange {
        TimeRange { from_us, to_us }
    }

    fn overlaps(&self, lo: i64, hi_inclusive: i64) -> bool {
        lo < self.to_us && hi_inclusive >= self.from_us
    }

    fn contains(&self, ts: i64) -> bool {
        ts >= self.from_us && ts < self.to_us
    }
}

/// One row of the `inference` table.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRow {
    /// The window's last sample.
    pub ts_us: i64,
    /// The window's first sample.
    pub window_start_us: i64,
    pub device: String,
    pub model_version: Option<String>,
    pub score: f32,
    pub anomaly: bool,
    pub latency_us: i64,
}

/// The Parquet files of `table` for one (site, line) whose `date=`/`hour=` partition overlaps
/// `range`, in path order. A line with no folder yet has no files.
fn partition_files(
    lake: &Path,
    table: &str,
    site: &str,
    line: &str,
    range: TimeRange,
) -> Result<Vec<PathBuf>> {
    loopline_common::lake::partition_files(lake, table, site, line, range.from_us, range.to_us)
        .map_err(|e| LakeError::Io {
            path: e.path,
            source: e.source,
        })
}

/// A column a reader wants: its name and whether a file may lack it.
struct Wanted {
    name: &'static str,
    nullable: bool,
}

/// The record batches of `path` holding `columns` (in that order, a missing nullable column
/// as nulls), only from row groups whose `ts` statistics overlap `range`.
fn read_file(path: &Path, columns: &[Wanted], range: TimeRange) -> Result<Vec<Vec<ArrayRef>>> {
    let parquet_error = |source| LakeError::Parquet {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|source| LakeError::Io {
        path: path.to_owned(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let schema = builder.parquet_schema();
    let leaf = |name: &str| schema.columns().iter().position(|c| c.name() == name);
    let mut leaves = Vec::new();
    for column in columns {
        match leaf(column.name) {
            Some(i) => leaves.push(i),
            None if column.nullable => {}
            None => {
                return Err(LakeError::Schema {
                    path: path.to_owned(),
                    message: format!("no column {}", column.name),
                });
            }
        }
    }
    let row_groups: Vec<usize> = match leaf("ts") {
        Some(ts) => builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(ts).statistics() {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(&lo), Some(&hi)) => range.overlaps(lo, hi),
                    _ => true,
                },
                _ => true,
            })
            .map(|(i, _)| i)
            .collect(),
        None => Vec::new(),
    };
    if row_groups.is_empty() {
        return Ok(Vec::new());
    }
    let mask = ProjectionMask::leaves(schema, leaves);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(row_groups)
        .build()
        .map_err(parquet_error)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| LakeError::Parquet {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let arrays = columns
            .iter()
            .map(|c| match batch.column_by_name(c.name) {
                Some(array) => Ok(array.clone()),
                None => Ok(arrow_array::new_null_array(
                    &DataType::Null,
                    batch.num_rows(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(arrays);
    }
    Ok(out)
}

/// A timestamp (or plain int64) column's values; `None` for another type.
fn i64_values(array: &ArrayRef) -> Option<Vec<i64>> {
    match array.data_type() {
        DataType::Timestamp(_, _) => array
            .as_primitive_opt::<TimestampMicrosecondType>()
            .map(|a| a.values().to_vec()),
        DataType::Int64 => array
            .as_primitive_opt::<arrow_array::types::Int64Type>()
            .map(|a| a.values().to_vec()),
        _ => None,
    }
}

/// A string column as read back: plain, large, or dictionary-encoded.
enum Strings<'a> {
    Plain(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    Dictionary(
        &'a arrow_array::DictionaryArray<Int32Type>,
        &'a arrow_array::StringArray,
    ),
    Null,
}

impl<'a> Strings<'a> {
    fn of(array: &'a ArrayRef) -> Option<Strings<'a>> {
        match array.data_type() {
            DataType::Utf8 => array.as_string_opt::<i32>().map(Strings::Plain),
            DataType::LargeUtf8 => array.as_string_opt::<i64>().map(Strings::Large),
            DataType::Dictionary(_, _) => {
                let dict = array.as_dictionary_opt::<Int32Type>()?;
                let values = dict.values().as_string_opt::<i32>()?;
                Some(Strings::Dictionary(dict, values))
            }
            DataType::Null => Some(Strings::Null),
            _ => None,
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::Dictionary(d, values) => {
                let key = d.key(i)?;
                values.is_valid(key).then(|| values.value(key))
            }
            Strings::Null => None,
        }
    }
}

fn bad_column(path: &Path, name: &str, array: &ArrayRef) -> LakeError {
    LakeError::Schema {
        path: path.to_owned(),
        message: format!("column {name} is {}", array.data_type()),
    }
}

/// The `inference` rows of one (site, line) whose window ended in `range`, sorted by
/// `(ts, device)`.
pub fn read_inference(
    lake: &Path,
    site: &str,
    line: &str,
    range: TimeRange,
) -> Result<Vec<InferenceRow>> {
    let columns = [
        ("ts", false),
        ("window_start", false),
        ("device", false),
        ("model_version", true),
        ("score", false),
        ("anomaly", false),
        ("latency_us", false),
    ]
    .map(|(name, nullable)| Wanted { name, nullable });
    let mut rows = Vec::new();
    for path in partition_files(lake, INFERENCE, site, line, range)? {
        for arrays in read_file(&path, &columns, range)? {
            let [ts, start, device, version, score, anomaly, latency] = &arrays[..] else {
                continue;
            };
            let ts_v = i64_values(ts).ok_or_else(|| bad_column(&path, "ts", ts))?;
            let start_v =
                i64_values(start).ok_or_else(|| bad_column(&path, "window_start", start))?;
            let latency_v =
                i64_values(latency).ok_or_else(|| bad_column(&path, "latency_us", latency))?;
            let device_s =
                Strings::of(device).ok_or_else(|| bad_column(&path, "device", device))?;
            let version_s =
                Strings::of(version).ok_or_else(|| bad_column(&path, "model_version", version))?;
            let score_v = score
                .as_primitive_opt::<arrow_array::types::Float32Type>()
                .ok_or_else(|| bad_column(&path, "score", score))?;
            let anomaly_v = anomaly
                .as_boolean_opt()
                .ok_or_else(|| bad_column(&path, "anomaly", anomaly))?;
            for i in 0..ts_v.len() {
                if !range.contains(ts_v[i]) {
                    continue;
                }
                rows.push(InferenceRow {
                    ts_us: ts_v[i],
                    window_start_us: start_v[i],
                    device: device_s.get(i).unwrap_or_default().to_owned(),
                    model_version: version_s.get(i).map(str::to_owned),
                    score: score_v.value(i),
                    anomaly: anomaly_v.value(i),
                    latency_us: latency_v[i],
                });
            }
        }
    }
    rows.sort_by(|a, b| (a.ts_us, &a.device).cmp(&(b.ts_us, &b.device)));
    Ok(rows)
}

/// One sample of one channel: time, value, quality code.
type Point = (i64, f64, i16);

/// The samples of one (site, line) in `range`, per (device, channel), each sorted by time.
fn read_samples(
    lake: &Path,
    site: &str,
    line: &str,
    range: TimeRange,
    devices: &BTreeSet<&str>,
) -> Result<HashMap<(String, String), Vec<Point>>> {
    let columns = [
        ("ts", false),
        ("device", false),
        ("sensor", false),
        ("value", false),
        ("quality", false),
    ]
    .map(|(name, nullable)| Wanted { name, nullable });
    let mut out: HashMap<(String, String), Vec<Point>> = HashMap::new();
    for path in partition_files(lake, TELEMETRY, site, line, range)? {
        for arrays in read_file(&path, &columns, range)? {
            let [ts, device, sensor, value, quality] = &arrays[..] else {
                continue;
            };
            let ts_v = i64_values(ts).ok_or_else(|| bad_column(&path, "ts", ts))?;
            let device_s =
                Strings::of(device).ok_or_else(|| bad_column(&path, "device", device))?;
            let sensor_s =
                Strings::of(sensor).ok_or_else(|| bad_column(&path, "sensor", sensor))?;
            let value_v = value
                .as_primitive_opt::<arrow_array::types::Float64Type>()
                .ok_or_else(|| bad_column(&path, "value", value))?;
            let quality_v = quality
                .as_primitive_opt::<arrow_array::types::Int16Type>()
                .ok_or_else(|| bad_column(&path, "quality", quality))?;
            // Rows come sorted by (device, sensor, ts): the map is looked up once per run.
            let mut run: Option<(&str, &str)> = None;
            let mut points: Vec<Point> = Vec::new();
            for (i, &ts) in ts_v.iter().enumerate() {
                if !range.contains(ts) {
                    continue;
                }
                let (Some(d), Some(s)) = (device_s.get(i), sensor_s.get(i)) else {
                    continue;
                };
                if !devices.contains(d) {
                    continue;
                }
                if run != Some((d, s)) {
                    if let Some((rd, rs)) = run {
                        out.entry((rd.to_owned(), rs.to_owned()))
                            .or_default()
                            .append(&mut points);
                    }
                    run = Some((d, s));
                }
                points.push((ts, value_v.value(i), quality_v.value(i)));
            }
            if let Some((rd, rs)) = run {
                out.entry((rd.to_owned(), rs.to_owned()))
                    .or_default()
                    .append(&mut points);
            }
        }
    }
    for points in out.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    Ok(out)
}

/// Summary of `points` (sorted by time) within `[from, to]`.
fn channel_health(points: &[Point], from: i64, to: i64) -> ChannelHealth {
    let lo = points.partition_point(|p| p.0 < from);
    let hi = points.partition_point(|p| p.0 <= to);
    let window = &points[lo..hi];
    let samples = window.len() as u64;
    let non_good = window.iter().filter(|p| p.2 != 0).count() as f64;
    let finite: Vec<f64> = window
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .collect();
    let (mean, std) = if finite.is_empty() {
        (None, None)
    } else {
        let n = finite.len() as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (Some(mean), Some(var.sqrt()))
    };
    ChannelHealth {
        samples,
        mean,
        std,
        non_good_share: if samples == 0 {
            1.0
        } else {
            non_good / samples as f64
        },
    }
}

/// The windows of one (site, line) that ended in `range`, each with its operating context and
/// per-channel health from the telemetry samples of its device in `[window_start, ts]`: what
/// [`crate::triggers::TriggerEvaluator::evaluate`] takes. A channel a device reported anywhere
/// in the range but not in a window shows there with no samples (a dead sensor).
pub fn read_line_windows(
    lake: &Path,
    site: &str,
    line: &str,
    range: TimeRange,
) -> Result<LineWindowData> {
    let rows = read_inference(lake, site, line, range)?;
    let Some(from) = rows.iter().map(|r| r.window_start_us).min() else {
        return Ok(LineWindowData::default());
    };
    let to = rows.iter().map(|r| r.ts_us).max().unwrap_or(from);
    let devices: BTreeSet<&str> = rows.iter().map(|r| r.device.as_str()).collect();
    let samples = read_samples(
        lake,
        site,
        line,
        TimeRange::new(from, to.saturating_add(1)),
        &devices,
    )?;
    let mut channels_of: BTreeMap<&str, Vec<(&str, &[Point])>> = BTreeMap::new();
    for ((device, channel), points) in &samples {
        channels_of
            .entry(device.as_str())
            .or_default()
            .push((channel.as_str(), points.as_slice()));
    }
    let windows = rows
        .iter()
        .map(|row| {
            let channels: BTreeMap<String, ChannelHealth> = channels_of
                .get(row.device.as_str())
                .map(|list| {
                    list.iter()
                        .map(|(name, points)| {
                            (
                                (*name).to_owned(),
                                channel_health(points, row.window_start_us, row.ts_us),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mean_of = |name: &str| channels.get(name).and_then(|c| c.mean);
            ScoredWindow {
                device: row.device.clone(),
                window_start_us: row.window_start_us,
                window_end_us: row.ts_us,
                model_version: row.model_version.clone(),
                score: f64::from(row.score),
                anomaly: row.anomaly,
                recipe: mean_of(RECIPE_CHANNEL),
                speed_setpoint: mean_of(SPEED_SETPOINT_CHANNEL),
                channels,
            }
        })
        .collect();
    Ok(LineWindowData { windows })
}
