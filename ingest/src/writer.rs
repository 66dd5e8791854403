//! The lake writer: buffers rows per table and partition and turns each buffer into one
//! Parquet file.
//!
//! Invariants this module keeps, for every table alike:
//! - A file appears under its final name only when it is complete: it is written as
//!   `.part-<ingest-id>-<n>.parquet.tmp` in its partition folder, fsynced, renamed to
//!   `part-<ingest-id>-<n>.parquet`, and the folder is fsynced. Readers that glob `*.parquet`
//!   never see a partial file.
//! - Every committed file is then recorded, one JSON line each with its table, in
//!   `<lake>/_loopline/commits/<ingest-id>.log`, which is fsynced before the commit is
//!   reported. `n` counts files over all tables and is taken from that log at start, so file
//!   names never repeat across restarts.
//! - A commit holds the lake lock ([`crate::lock`]) shared from its `.tmp` to the folder
//!   fsync, so compaction never swaps a partition folder in the middle of one.
//! - Memory is bounded: a partition rolls at `roll_rows`, at `roll_age`, and the largest one
//!   of any table rolls early when all buffers together pass `max_buffered_rows`.
//!
//! Tables differ only in their [`RowBuffer`]: partitioning, rolling and committing are written
//! once, in `TableWriter` and `Files`. Adding a table is a field of [`LakeWriter`] and an
//! entry in `LakeWriter::tables`.
//!
//! No MQTT here: the caller decides when what was committed may be acknowledged.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use loopline_proto::v1::TelemetryBatch;

use crate::device_health::DeviceHealthBuffer;
use crate::inference::InferenceBuffer;
use crate::lock::LockFile;
use crate::sim_labels::SimLabelBuffer;
use crate::table::{FromBatch, RowBuffer};
use crate::telemetry::{self, TelemetryBuffer};
use crate::{Error, Result};

/// Where the commit logs live, under the lake root.
pub const COMMITS_DIR: &str = "_loopline/commits";

/// Every table the writer fills, in the order of `LakeWriter::tables`.
pub const TABLES: [&str; 4] = [
    telemetry::TABLE,
    crate::inference::TABLE,
    crate::device_health::TABLE,
    crate::sim_labels::TABLE,
];

/// How the writer rolls and encodes files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub lake: PathBuf,
    pub ingest_id: String,
    pub roll_rows: NonZeroUsize,
    pub roll_age: Duration,
    pub max_buffered_rows: NonZeroUsize,
    pub zstd_level: i32,
}

/// One line of the commit log: a file that is now part of the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Record format version.
    pub v: u32,
    /// File number, unique per ingester over all tables.
    pub n: u64,
    /// The file's table; a line without one is telemetry's (the only table there was).
    #[serde(default = "telemetry_table")]
    pub table: String,
    /// Path relative to the lake root, with `/` separators.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest partition timestamp in the file (`ts`, or `start_ts` for
    /// `sim_labels`).
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub committed_at_us: i64,
}

fn telemetry_table() -> String {
    telemetry::TABLE.to_owned()
}

/// Partition of a table: site, line, and the UTC hour of the rows' partition timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PartitionKey {
    site: Arc<str>,
    line: Arc<str>,
    /// Hours since the Unix epoch.
    hour: i64,
}

impl PartitionKey {
    fn dir(&self, table: &str) -> Result<String> {
        let start = DateTime::<Utc>::from_timestamp(self.hour * 3600, 0)
            .ok_or(Error::TimestampOutOfRange { hour: self.hour })?;
        Ok(format!(
            "{table}/site={}/line={}/date={}/hour={}",
            self.site,
            self.line,
            start.format("%Y-%m-%d"),
            start.format("%H"),
        ))
    }
}

#[derive(Debug)]
struct Partition<B> {
    rows: B,
    opened: Instant,
}

/// The open partitions of one table, and how its files are encoded.
#[derive(Debug)]
struct TableWriter<B: RowBuffer> {
    partitions: HashMap<PartitionKey, Partition<B>>,
    buffered_rows: usize,
    properties: WriterProperties,
}

impl<B: RowBuffer> TableWriter<B> {
    fn new(zstd: ZstdLevel) -> Self {
        TableWriter {
            partitions: HashMap::new(),
            buffered_rows: 0,
            properties: properties::<B>(zstd),
        }
    }
}

impl<B: FromBatch> TableWriter<B> {
    /// Buffers the rows `batch` has for this table; returns the partitions that reached
    /// `roll_rows`.
    fn append(
        &mut self,
        batch: &TelemetryBatch,
        site: &Arc<str>,
        line: &Arc<str>,
        now: Instant,
        roll_rows: usize,
    ) -> Vec<PartitionKey> {
        let mut full = Vec::new();
        for hour in B::hours(batch) {
            let key = PartitionKey {
                site: site.clone(),
                line: line.clone(),
                hour,
            };
            let partition = self
                .partitions
                .entry(key.clone())
                .or_insert_with(|| Partition {
                    rows: B::default(),
                    opened: now,
                });
            self.buffered_rows += partition.rows.append_hour(batch, hour);
            if partition.rows.is_empty() {
                // Never commit an empty file, whatever a table's `hours` promised.
                self.partitions.remove(&key);
            } else if partition.rows.rows() >= roll_rows {
                full.push(key);
            }
        }
        full
    }
}

/// What the writer needs of a table without knowing its row type.
trait Pending: Send {
    /// The partition holding the most rows, and how many.
    fn largest(&self) -> Option<(usize, PartitionKey)>;
    /// Every open partition and when its first row was buffered, in key order.
    fn opened(&self) -> Vec<(PartitionKey, Instant)>;
    /// Writes the partition's rows as one file and records it.
    fn commit(&mut self, key: &PartitionKey, files: &mut Files) -> Result<CommitRecord>;
}

impl<B: RowBuffer> Pending for TableWriter<B> {
    fn largest(&self) -> Option<(usize, PartitionKey)> {
        self.partitions
            .iter()
            .map(|(k, p)| (p.rows.rows(), k))
            .max()
            .map(|(rows, k)| (rows, k.clone()))
    }

    fn opened(&self) -> Vec<(PartitionKey, Instant)> {
        let mut opened: Vec<_> = self
            .partitions
            .iter()
            .map(|(k, p)| (k.clone(), p.opened))
            .collect();
        opened.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        opened
    }

    fn commit(&mut self, key: &PartitionKey, files: &mut Files) -> Result<CommitRecord> {
        let Some(partition) = self.partitions.remove(key) else {
            return Err(Error::Internal(format!(
                "commit of a {} partition that is not buffered",
                B::TABLE
            )));
        };
        self.buffered_rows -= partition.rows.rows();
        let dir_rel = key.dir(B::TABLE)?;
        let name = files.next_name();
        let batch = partition
            .rows
            .to_record_batch()
            .map_err(|source| Error::Arrow {
                path: files.lake.join(&dir_rel).join(&name),
                source,
            })?;
        files.commit(
            B::TABLE,
            &dir_rel,
            &name,
            &self.properties,
            &batch,
            partition.rows.ts_range(),
        )
    }
}

/// How every file of table `B` is encoded: zstd, page statistics, the table's sort order
/// declared, sorted integers delta-coded, floats without a dictionary.
fn properties<B: RowBuffer>(zstd: ZstdLevel) -> WriterProperties {
    let schema = B::schema();
    let sorting = B::SORTED_BY
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .map(|c| SortingColumn {
            column_idx: c as i32,
            descending: false,
            nulls_first: false,
        })
        .collect();
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("loopline-ingest {}", env!("CARGO_PKG_VERSION")))
        .set_sorting_columns(Some(sorting));
    for name in B::DELTA_COLUMNS {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(*name), false)
            .set_column_encoding(ColumnPath::from(*name), Encoding::DELTA_BINARY_PACKED);
    }
    for name in B::PLAIN_COLUMNS {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*name), false);
    }
    builder.build()
}

/// How `table`'s files are encoded: its schema, writer properties and sort columns, for
/// rewriting its files (compaction) exactly as ingest writes them. `None` for a table the
/// writer does not fill.
pub(crate) fn table_properties(
    table: &str,
    zstd: ZstdLevel,
) -> Option<(SchemaRef, WriterProperties, &'static [&'static str])> {
    fn of<B: RowBuffer>(zstd: ZstdLevel) -> (SchemaRef, WriterProperties, &'static [&'static str]) {
        (B::schema(), properties::<B>(zstd), B::SORTED_BY)
    }
    match table {
        TelemetryBuffer::TABLE => Some(of::<TelemetryBuffer>(zstd)),
        InferenceBuffer::TABLE => Some(of::<InferenceBuffer>(zstd)),
        DeviceHealthBuffer::TABLE => Some(of::<DeviceHealthBuffer>(zstd)),
        SimLabelBuffer::TABLE => Some(of::<SimLabelBuffer>(zstd)),
        _ => None,
    }
}

/// The durable side of the lake, shared by every table: file numbers, partition folders and
/// the commit log.
#[derive(Debug)]
struct Files {
    lake: PathBuf,
    ingest_id: String,
    next_n: u64,
    commit_log: File,
    commit_log_path: PathBuf,
    known_dirs: HashSet<PathBuf>,
    /// Held shared for each commit, so compaction never swaps a folder mid-commit.
    lake_lock: LockFile,
}

impl Files {
    fn next_name(&self) -> String {
        format!("part-{}-{:08}.parquet", self.ingest_id, self.next_n)
    }

    /// Writes `batch` as `<dir_rel>/<name>` (temporary name, fsync, rename, folder fsync),
    /// then appends its record to the commit log and fsyncs that.
    fn commit(
        &mut self,
        table: &str,
        dir_rel: &str,
        name: &str,
        properties: &WriterProperties,
        batch: &RecordBatch,
        (min_ts_us, max_ts_us): (i64, i64),
    ) -> Result<CommitRecord> {
        let shared = self.lake_lock.shared()?;
        let n = self.next_n;
        let dir = self.lake.join(dir_rel);
        if !self.known_dirs.contains(&dir) {
            create_dir_durable(&dir)?;
            self.known_dirs.insert(dir.clone());
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(name);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let parquet_err = |source| Error::Parquet {
            path: tmp.clone(),
            source,
        };
        let options = ArrowWriterOptions::new()
            .with_properties(properties.clone())
            .with_skip_arrow_metadata(true);
        let mut writer = ArrowWriter::try_new_with_options(file, batch.schema(), options)
            .map_err(parquet_err)?;
        writer.write(batch).map_err(parquet_err)?;
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(io(&tmp))?;
        let bytes = file.metadata().map_err(io(&tmp))?.len();
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        drop(shared);
        self.next_n += 1;
        let record = CommitRecord {
            v: 1,
            n,
            table: table.to_owned(),
            path: format!("{dir_rel}/{name}"),
            rows: batch.num_rows() as u64,
            bytes,
            min_ts_us,
            max_ts_us,
            committed_at_us: Utc::now().timestamp_micros(),
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
        line.push(b'\n');
        self.commit_log
            .write_all(&line)
            .and_then(|()| self.commit_log.sync_data())
            .map_err(io(&self.commit_log_path))?;
        tracing::debug!(table, path = %record.path, rows = record.rows, bytes, "committed file");
        Ok(record)
    }
}

/// Buffers every table per partition and commits files to the lake.
#[derive(Debug)]
pub struct LakeWriter {
    options: WriterOptions,
    telemetry: TableWriter<TelemetryBuffer>,
    inference: TableWriter<InferenceBuffer>,
    device_health: TableWriter<DeviceHealthBuffer>,
    sim_labels: TableWriter<SimLabelBuffer>,
    files: Files,
}

impl LakeWriter {
    /// Opens the lake (creating it if needed) and this ingester's commit log.
    pub fn open(options: WriterOptions) -> Result<Self> {
        let commits = options.lake.join(COMMITS_DIR);
        create_dir_durable(&commits)?;
        let commit_log_path = commits.join(format!("{}.log", options.ingest_id));
        let next_n = read_commits(&commit_log_path)?
            .iter()
            .map(|r| r.n + 1)
            .max()
            .unwrap_or(0);
        let commit_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&commit_log_path)
            .map_err(|source| Error::Io {
                path: commit_log_path.clone(),
                source,
            })?;
        let zstd = ZstdLevel::try_new(options.zstd_level).map_err(|e| Error::Config {
            key: "zstd_level",
            message: e.to_string(),
        })?;
        Ok(LakeWriter {
            telemetry: TableWriter::new(zstd),
            inference: TableWriter::new(zstd),
            device_health: TableWriter::new(zstd),
            sim_labels: TableWriter::new(zstd),
            files: Files {
                lake: options.lake.clone(),
                ingest_id: options.ingest_id.clone(),
                next_n,
                commit_log,
                commit_log_path,
                known_dirs: HashSet::new(),
                lake_lock: LockFile::lake(&options.lake)?,
            },
            options,
        })
    }

    /// Every table, in the order of [`TABLES`], and the files they commit through.
    fn tables(&mut self) -> ([&mut dyn Pending; TABLES.len()], &mut Files) {
        (
            [
                &mut self.telemetry,
                &mut self.inference,
                &mut self.device_health,
                &mut self.sim_labels,
            ],
            &mut self.files,
        )
    }

    /// Path of this ingester's commit log.
    pub fn commit_log_path(&self) -> &Path {
        &self.files.commit_log_path
    }

    /// Rows buffered over all tables and not yet in any file.
    pub fn buffered_rows(&self) -> usize {
        self.telemetry.buffered_rows
            + self.inference.buffered_rows
            + self.device_health.buffered_rows
            + self.sim_labels.buffered_rows
    }

    /// Buffers a validated batch's rows of every table, and commits whatever that makes due
    /// by size. Returns the files committed.
    pub fn append(&mut self, batch: &TelemetryBatch, now: Instant) -> Result<Vec<CommitRecord>> {
        let Some(device) = batch.device.as_ref() else {
            return Ok(Vec::new());
        };
        let site: Arc<str> = device.site.as_str().into();
        let line: Arc<str> = device.line.as_str().into();
        let roll = self.options.roll_rows.get();
        let full: [Vec<PartitionKey>; TABLES.len()] = [
            self.telemetry.append(batch, &site, &line, now, roll),
            self.inference.append(batch, &site, &line, now, roll),
            self.device_health.append(batch, &site, &line, now, roll),
            self.sim_labels.append(batch, &site, &line, now, roll),
        ];
        let mut committed = Vec::new();
        let (mut tables, files) = self.tables();
        for (table, keys) in tables.iter_mut().zip(full) {
            for key in keys {
                committed.push(table.commit(&key, files)?);
            }
        }
        while self.buffered_rows() > self.options.max_buffered_rows.get() {
            let (tables, files) = self.tables();
            let Some((table, key)) = tables
                .iter()
                .enumerate()
                .filter_map(|(t, table)| table.largest().map(|(rows, key)| (rows, t, key)))
                .max_by_key(|(rows, _, _)| *rows)
                .map(|(_, t, key)| (t, key))
            else {
                break;
            };
            committed.push(tables[table].commit(&key, files)?);
        }
        Ok(committed)
    }

    /// Commits every partition, of any table, opened at least `roll_age` before `now`.
    pub fn roll_due(&mut self, now: Instant) -> Result<Vec<CommitRecord>> {
        let age = self.options.roll_age;
        self.commit_where(|opened| now.duration_since(opened) >= age)
    }

    /// Commits every buffered row.
    pub fn flush(&mut self) -> Result<Vec<CommitRecord>> {
        self.commit_where(|_| true)
    }

    fn commit_where(&mut self, due: impl Fn(Instant) -> bool) -> Result<Vec<CommitRecord>> {
        let (tables, files) = self.tables();
        let mut committed = Vec::new();
        for table in tables {
            for (key, opened) in table.opened() {
                if due(opened) {
                    committed.push(table.commit(&key, files)?);
                }
            }
        }
        Ok(committed)
    }

    /// When the oldest open partition of any table is due to roll.
    pub fn next_roll(&self) -> Option<Instant> {
        let opened = |t: &dyn Pending| t.opened().into_iter().map(|(_, at)| at).min();
        [
            opened(&self.telemetry),
            opened(&self.inference),
            opened(&self.device_health),
            opened(&self.sim_labels),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at + self.options.roll_age)
    }
}

/// The telemetry records of a commit log: the files that hold samples, which is what this
/// function returned before the log held other tables. [`read_commits`] returns every table's.
pub fn read_commit_log(path: &Path) -> Result<Vec<CommitRecord>> {
    read_table_commits(path, telemetry::TABLE)
}

/// The records of one table in a commit log, in commit order.
pub fn read_table_commits(path: &Path, table: &str) -> Result<Vec<CommitRecord>> {
    let mut records = read_commits(path)?;
    records.retain(|r| r.table == table);
    Ok(records)
}

/// Reads every record of a commit log, of every table, in commit order. A torn last line (a
/// crash mid-append) is ignored with a warning; a bad line anywhere else is an error naming it.
pub fn read_commits(path: &Path) -> Result<Vec<CommitRecord>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CommitRecord>(line) {
            Ok(record) => records.push(record),
            Err(e) if i + 1 == lines.len() => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring torn last line of the commit log");
            }
            Err(e) => {
                return Err(Error::CommitLog {
                    path: path.to_owned(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(records)
}

/// Creates `dir` and its missing parents, fsyncing each parent so the new entries survive a
/// power cut.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_owned());
        cursor = d.parent();
    }
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_owned(),
        source,
    })?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })
}
