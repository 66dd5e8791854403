//! What every lake table shares: the row buffer contract the writer rolls and commits, the
//! string interner behind dictionary columns, and checked reading of a file back.
//!
//! A table is a [`RowBuffer`] type: its name (the folder under the lake root and the `table`
//! of its commit records), its Arrow schema, its sort and encoding choices, and the rows of one
//! partition. [`FromBatch`] adds how a telemetry batch becomes rows of it. The writer owns
//! partitioning, rolling and durable commits for every table alike, so a new table is a new
//! module implementing these two traits plus one field in the writer, not a new writer.
//!
//! Invariants every table keeps:
//! - Rows are partitioned by the UTC hour of one timestamp column, [`RowBuffer::PARTITION_TS`],
//!   and `site`/`line` live in the path only.
//! - Timestamps are `timestamp(us, UTC)`, integers signed (Spark reads no unsigned type),
//!   strings dictionary-encoded; no Arrow schema is embedded, so readers see plain strings.
//! - Rows of a file are sorted by `(device, <partition timestamp>)`, then by enough further
//!   columns to make the order total, so a file's bytes depend only on its rows.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, SchemaRef, TimeUnit};
use loopline_proto::v1::TelemetryBatch;

/// Microseconds in an hour: the partition grain.
pub const HOUR_US: i64 = 3_600_000_000;

/// Rows of one table and one partition, waiting to become one Parquet file.
pub trait RowBuffer: Default + fmt::Debug + Send + 'static {
    /// The table's folder under the lake root, and its `table` in the commit log.
    const TABLE: &'static str;
    /// The timestamp column whose UTC hour names a row's partition; also the column the
    /// commit record's `min_ts_us`/`max_ts_us` describe.
    const PARTITION_TS: &'static str;
    /// Columns the rows of a file are sorted by, declared in the file's metadata.
    const SORTED_BY: &'static [&'static str];
    /// Sorted integer columns (timestamps, `seq`): delta-coded, which beats a dictionary.
    const DELTA_COLUMNS: &'static [&'static str];
    /// Float columns: a dictionary only costs time on them.
    const PLAIN_COLUMNS: &'static [&'static str];

    /// The Arrow schema of a file (partition keys excluded).
    fn schema() -> SchemaRef;
    fn rows(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.rows() == 0
    }
    /// Smallest and largest [`Self::PARTITION_TS`] buffered; `(0, 0)` when empty.
    fn ts_range(&self) -> (i64, i64);
    /// Approximate heap bytes held.
    fn heap_size(&self) -> usize;
    /// The buffered rows as one record batch in the table's sort order.
    fn to_record_batch(&self) -> Result<RecordBatch, ArrowError>;
}

/// A table whose rows come from telemetry batches.
pub trait FromBatch: RowBuffer {
    /// The distinct hours (since the epoch) in which `batch` has rows of this table, in
    /// ascending order; empty when it has none.
    fn hours(batch: &TelemetryBatch) -> Vec<i64>;
    /// Appends the rows of `batch` whose partition timestamp falls in `hour`; returns how many.
    /// `batch` must have passed [`crate::validate::check`].
    fn append_hour(&mut self, batch: &TelemetryBatch, hour: i64) -> usize;
}

/// The hour since the epoch of a timestamp in microseconds.
pub const fn hour_of(ts_us: i64) -> i64 {
    ts_us.div_euclid(HOUR_US)
}

/// The distinct hours of some timestamps, ascending. Nearly every batch sits in one hour, so
/// only timestamps that straddle hours pay for a sort.
pub fn distinct_hours<I>(ts: impl Fn() -> I) -> Vec<i64>
where
    I: Iterator<Item = i64>,
{
    let (first, last) = ts()
        .map(hour_of)
        .fold((i64::MAX, i64::MIN), |(lo, hi), h| (lo.min(h), hi.max(h)));
    if first > last {
        return Vec::new();
    }
    if first == last {
        return vec![first];
    }
    let mut hours: Vec<i64> = ts().map(hour_of).collect();
    hours.sort_unstable();
    hours.dedup();
    hours
}

/// Tracks the smallest and largest of the timestamps pushed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TsRange {
    range: Option<(i64, i64)>,
}

impl TsRange {
    pub(crate) fn add(&mut self, ts: i64) {
        self.range = Some(match self.range {
            None => (ts, ts),
            Some((lo, hi)) => (lo.min(ts), hi.max(ts)),
        });
    }

    pub(crate) fn get(&self) -> (i64, i64) {
        self.range.unwrap_or((0, 0))
    }
}

/// Strings of one column, each stored once.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: HashMap<Box<str>, i32>,
    values: Vec<Box<str>>,
}

impl Interner {
    pub(crate) fn intern(&mut self, value: &str) -> i32 {
        if let Some(id) = self.ids.get(value) {
            return *id;
        }
        let id = self.values.len() as i32;
        self.values.push(value.into());
        self.ids.insert(value.into(), id);
        id
    }

    /// `None` for the empty string: proto3's "absent".
    pub(crate) fn intern_non_empty(&mut self, value: &str) -> Option<i32> {
        (!value.is_empty()).then(|| self.intern(value))
    }

    /// Rank of each id in the strings' lexicographic order.
    pub(crate) fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<usize> = (0..self.values.len()).collect();
        order.sort_unstable_by(|a, b| self.values[*a].cmp(&self.values[*b]));
        let mut ranks = vec![0; order.len()];
        for (rank, id) in order.into_iter().enumerate() {
            ranks[id] = rank as u32;
        }
        ranks
    }

    /// Rank of an optional id, nulls first.
    pub(crate) fn rank_opt(ranks: &[u32], id: Option<i32>) -> u32 {
        id.map_or(0, |id| ranks[id as usize] + 1)
    }

    pub(crate) fn dictionary(&self, keys: Vec<i32>) -> ArrayRef {
        self.dictionary_opt(Int32Array::from(keys))
    }

    pub(crate) fn dictionary_nullable(&self, keys: Vec<Option<i32>>) -> ArrayRef {
        self.dictionary_opt(Int32Array::from(keys))
    }

    fn dictionary_opt(&self, keys: Int32Array) -> ArrayRef {
        let values = StringArray::from_iter_values(self.values.iter().map(|v| &**v));
        // Keys come from `intern`, so every key is in range of `values`.
        Arc::new(DictionaryArray::<Int32Type>::new(keys, Arc::new(values)))
    }

    pub(crate) fn heap_size(&self) -> usize {
        self.values.iter().map(|v| 2 * v.len() + 48).sum()
    }
}

/// The order that sorts `n` rows by `key`, ties kept in arrival order.
///
/// Each row's key is computed once, not at every comparison (a key is several indirect loads),
/// and the sort is the standard library's stable one, which finds the runs rows arrive in:
/// one channel of one batch is already sorted by time.
pub(crate) fn sorted_order<K: Ord>(n: usize, key: impl Fn(usize) -> K) -> Vec<u32> {
    let mut keyed: Vec<(K, u32)> = (0..n).map(|i| (key(i), i as u32)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// `column` taken in `order`.
pub(crate) fn take<T: Copy>(order: &[u32], column: &[T]) -> Vec<T> {
    order.iter().map(|&i| column[i as usize]).collect()
}

/// A UTC microsecond timestamp column.
pub(crate) fn timestamps(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// The Arrow type of every timestamp column.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The in-memory type of every string column.
pub(crate) fn dict_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// A lake file that cannot be read back as Loopline wrote it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ReadError {
    pub path: PathBuf,
    pub message: String,
}

/// One file's record batches, with `site` and `line` taken from its path.
pub(crate) struct FileBatches<'p> {
    pub(crate) path: &'p Path,
    pub(crate) site: String,
    pub(crate) line: String,
    pub(crate) batches: Vec<RecordBatch>,
}

impl<'p> FileBatches<'p> {
    /// Reads every record batch of the file at `path`; its `site=`/`line=` path levels
    /// must be present.
    pub(crate) fn read(path: &'p Path) -> Result<Self, ReadError> {
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
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(FileBatches {
            path,
            site,
            line,
            batches,
        })
    }

    /// Column `name` of `batch`, checked to be of type `want` and, unless `nullable`, free
    /// of nulls. A nullable column the file lacks reads as all nulls: the file was written
    /// before the column was added (the lake's compatibility rules, `docs/lake.md`).
    pub(crate) fn column(
        &self,
        batch: &RecordBatch,
        name: &str,
        want: &DataType,
        nullable: bool,
    ) -> Result<ArrayRef, ReadError> {
        let bad = |message: String| ReadError {
            path: self.path.to_owned(),
            message,
        };
        let Some(column) = batch.column_by_name(name) else {
            if nullable {
                return Ok(arrow_array::new_null_array(want, batch.num_rows()));
            }
            return Err(bad(format!("no column {name}")));
        };
        if column.data_type() != want || (!nullable && column.null_count() > 0) {
            return Err(bad(format!(
                "column {name} is {} with {} nulls, expected {} {want}",
                column.data_type(),
                column.null_count(),
                if nullable { "nullable" } else { "non-null" },
            )));
        }
        Ok(column.clone())
    }
}

/// The value of row `i` of a nullable string column.
pub(crate) fn opt_string(column: &arrow_array::StringArray, i: usize) -> Option<String> {
    column.is_valid(i).then(|| column.value(i).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_hours_of_one_hour_and_of_several() {
        let one = [10 * HOUR_US + 5, 10 * HOUR_US + 7];
        assert_eq!(distinct_hours(|| one.iter().copied()), vec![10]);
        let several = [12 * HOUR_US, 10 * HOUR_US + 1, 12 * HOUR_US + 9, -1];
        assert_eq!(distinct_hours(|| several.iter().copied()), vec![-1, 10, 12]);
        assert!(distinct_hours(std::iter::empty::<i64>).is_empty());
    }

    #[test]
    fn ranks_order_strings_and_put_null_first() {
        let mut i = Interner::default();
        let (b, a) = (i.intern("b"), i.intern("a"));
        assert_eq!(i.intern("b"), b);
        assert_eq!(i.intern_non_empty(""), None);
        let ranks = i.ranks();
        assert!(ranks[a as usize] < ranks[b as usize]);
        assert_eq!(Interner::rank_opt(&ranks, None), 0);
        assert!(Interner::rank_opt(&ranks, Some(a)) > 0);
    }
}
