//! The lake writer: buffers rows per table and partition and turns each buffer into one
//! Parquet file.
//!
//! Invariants this module keeps, for every table alike:
//! - A file appears under its final name only when it is complete: it is written as
//!   `<lake>/_loopline/tmp/<ingest-id>/part-<ingest-id>-<n>.parquet.tmp`, fsynced, renamed
//!   into its partition folder as `part-<ingest-id>-<n>.parquet` (same file system, so the
//!   rename is atomic), and the folder is fsynced. Readers never see a partial file, not even
//!   one a crash left behind: those stay in the ingester's temporary folder, which it empties
//!   when it starts.
//! - Every committed file is then recorded, one JSON line each with its table, in
//!   `<lake>/_loopline/commits/<ingest-id>.log`, which is fsynced before the commit is
//!   reported. `n` counts files over all tables and is taken from that log at start, so file
//!   names never repeat across restarts.
//! - Memory is bounded: a partition rolls at `roll_rows`, at `roll_bytes` of buffered rows,
//!   at `roll_age`, and the largest one of any table rolls early when all buffers together
//!   pass `max_buffered_rows` or `max_buffered_bytes`.
//! - Every partition buffer has an id, unique in this process. [`LakeWriter::append`] says
//!   which buffers a message's rows went to (or, for a duplicate, which buffer already holds
//!   them), and every commit says which buffer it emptied: that is all the caller needs to
//!   acknowledge a message only once it is durable ([`crate::acks`]).
//! - De-duplication ([`crate::dedup`]) happens here, per table and hour partition, because
//!   only the writer knows which rows are buffered and which are committed. Its state is
//!   rebuilt at open from every commit log in the lake (each record names the
//!   `(device, boot_id, seq)` it holds), so a redelivery after a crash adds no row.
//! - A commit holds the lake lock ([`crate::lock`]) shared from creating the partition folder
//!   and renaming the file into it to the folder fsync, so compaction never swaps a partition
//!   folder in the middle of one.
//!
//! Tables differ only in their [`RowBuffer`]: partitioning, rolling and committing are written
//! once, in `TableWriter` and `Files`. Adding a table is a field of [`LakeWriter`] and an
//! entry in `LakeWriter::tables`.
//!
//! No MQTT here: the caller decides when what was committed may be acknowledged.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
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

use crate::dedup::{Dedup, DedupLimits, DedupSize, PartRef, PartState, Source, SourceSeqs};
use crate::device_health::DeviceHealthBuffer;
use crate::inference::InferenceBuffer;
use crate::lock::LockFile;
use crate::quarantine::{QuarantineBuffer, QuarantineRow};
use crate::sim_labels::SimLabelBuffer;
use crate::table::{FromBatch, RowBuffer};
use crate::telemetry::{self, TelemetryBuffer};
use crate::{Error, Result};

/// Where the commit logs live, under the lake root.
pub const COMMITS_DIR: &str = "_loopline/commits";

/// Where each ingester writes files before renaming them into place, under the lake root.
pub const TMP_DIR: &str = "_loopline/tmp";

/// Every table the writer fills, in the order of `LakeWriter::tables`.
pub const TABLES: [&str; 5] = [
    telemetry::TABLE,
    crate::inference::TABLE,
    crate::device_health::TABLE,
    crate::sim_labels::TABLE,
    crate::quarantine::TABLE,
];

/// Index of the quarantine table in [`TABLES`].
const QUARANTINE: usize = 4;

/// How the writer rolls and encodes files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub lake: PathBuf,
    pub ingest_id: String,
    pub roll_rows: NonZeroUsize,
    pub roll_age: Duration,
    pub max_buffered_rows: NonZeroUsize,
    /// A partition rolls once its buffered rows take this many bytes of memory.
    pub roll_bytes: usize,
    /// Bytes of buffered rows over all partitions before the largest rolls early.
    pub max_buffered_bytes: usize,
    pub zstd_level: i32,
    /// How much de-duplication state to keep.
    pub dedup: DedupLimits,
    /// Longest payload kept in a quarantine row.
    pub quarantine_max_payload_bytes: usize,
}

/// One line of the commit log: a file that is now part of the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Record format version: 1 before records named their partition and sources, 2 since.
    pub v: u32,
    /// File number, unique per ingester over all tables.
    pub n: u64,
    /// The file's table; a line without one is telemetry's (the only table there was).
    #[serde(default = "telemetry_table")]
    pub table: String,
    /// Path relative to the lake root, with `/` separators.
    pub path: String,
    /// The partition's site and line (empty in version 1 records).
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub line: String,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest partition timestamp in the file (`ts`, or `start_ts` for
    /// `sim_labels`).
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub committed_at_us: i64,
    /// The messages whose rows the file holds, per source: what de-duplication is rebuilt
    /// from. Empty for quarantine files and version 1 records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceSeqs>,
}

/// A file committed, and the partition buffer it emptied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub record: CommitRecord,
    /// The buffer's id, as [`Appended::buffers`] named it.
    pub buffer: u64,
    /// How long writing, syncing, renaming and logging the file took.
    pub took: Duration,
}

/// What appending one message did.
#[derive(Debug, Default)]
pub struct Appended {
    /// The buffers holding the message's rows; it is durable once all of them commit.
    pub buffers: Vec<u64>,
    /// Parts (a table's rows in one hour partition) written.
    pub new_parts: usize,
    /// Parts skipped because the lake already holds or buffers them.
    pub duplicate_parts: usize,
    /// Files committed by this append (a partition reached its size).
    pub commits: Vec<Committed>,
}

impl Appended {
    /// True when every part of the message was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        self.new_parts == 0 && self.duplicate_parts > 0
    }
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
    /// Unique in this process; what acknowledgements wait on.
    id: u64,
    /// The messages whose rows are here.
    parts: Vec<PartRef>,
    /// `rows.heap_size()` when last measured.
    bytes: usize,
}

/// The open partitions of one table, and how its files are encoded.
#[derive(Debug)]
struct TableWriter<B: RowBuffer> {
    partitions: HashMap<PartitionKey, Partition<B>>,
    buffered_rows: usize,
    buffered_bytes: usize,
    properties: WriterProperties,
}

impl<B: RowBuffer> TableWriter<B> {
    fn new(zstd: ZstdLevel) -> Self {
        TableWriter {
            partitions: HashMap::new(),
            buffered_rows: 0,
            buffered_bytes: 0,
            properties: properties::<B>(zstd),
        }
    }

    /// The buffer of partition `key`, opened (with the next id) if need be.
    fn partition(&mut self, key: &PartitionKey, now: Instant, ids: &mut u64) -> &mut Partition<B> {
        self.partitions.entry(key.clone()).or_insert_with(|| {
            *ids += 1;
            Partition {
                rows: B::default(),
                opened: now,
                id: *ids,
                parts: Vec::new(),
                bytes: 0,
            }
        })
    }

    /// Re-measures a partition after rows went in; true when it is due to roll by size.
    fn measure(&mut self, key: &PartitionKey, limits: &Limits) -> bool {
        let Some(partition) = self.partitions.get_mut(key) else {
            return false;
        };
        let bytes = partition.rows.heap_size();
        self.buffered_bytes = self.buffered_bytes.saturating_sub(partition.bytes) + bytes;
        partition.bytes = bytes;
        partition.rows.rows() >= limits.roll_rows || bytes >= limits.roll_bytes
    }
}

/// The size limits a partition rolls at.
#[derive(Debug, Clone, Copy)]
struct Limits {
    roll_rows: usize,
    roll_bytes: usize,
}

/// One message as the tables see it.
struct Message<'a> {
    batch: &'a TelemetryBatch,
    source: Source,
    seq: u64,
    site: &'a Arc<str>,
    line: &'a Arc<str>,
}

impl<B: FromBatch> TableWriter<B> {
    /// Buffers the rows `message` has for this table (table `index`), skipping the parts
    /// de-duplication already knows. Returns the partitions now due to roll by size.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        index: usize,
        message: &Message<'_>,
        now: Instant,
        limits: &Limits,
        ids: &mut u64,
        dedup: &mut Dedup,
        appended: &mut Appended,
    ) -> Vec<PartitionKey> {
        let mut full = Vec::new();
        let hours = B::hours(message.batch);
        let span = u32::try_from(hours.len()).unwrap_or(u32::MAX);
        for hour in hours {
            match dedup.part(index, &message.source, message.seq, hour) {
                PartState::Committed => {
                    appended.duplicate_parts += 1;
                    continue;
                }
                PartState::Buffered(buffer) => {
                    appended.duplicate_parts += 1;
                    appended.buffers.push(buffer);
                    continue;
                }
                PartState::New => {}
            }
            let key = PartitionKey {
                site: message.site.clone(),
                line: message.line.clone(),
                hour,
            };
            let partition = self.partition(&key, now, ids);
            let rows = partition.rows.append_hour(message.batch, hour);
            if partition.rows.is_empty() {
                // Never commit an empty file, whatever a table's `hours` promised.
                self.partitions.remove(&key);
                continue;
            }
            if rows == 0 {
                continue;
            }
            let part = PartRef {
                source: message.source.clone(),
                seq: message.seq,
                hours: span,
            };
            dedup.buffered(index, &part, hour, partition.id);
            appended.buffers.push(partition.id);
            partition.parts.push(part);
            appended.new_parts += 1;
            self.buffered_rows += rows;
            if self.measure(&key, limits) {
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
    /// Every open partition's buffer id.
    fn buffer_ids(&self) -> Vec<(u64, PartitionKey)>;
    /// Writes the partition's rows as one file and records it; returns the record, the
    /// emptied buffer's id and the parts it held.
    fn commit(
        &mut self,
        key: &PartitionKey,
        files: &mut Files,
    ) -> Result<(CommitRecord, u64, Vec<PartRef>)>;
    fn buffered_rows(&self) -> usize;
    fn buffered_bytes(&self) -> usize;
}

impl<B: RowBuffer> Pending for TableWriter<B> {
    fn largest(&self) -> Option<(usize, PartitionKey)> {
        self.partitions
            .iter()
            .map(|(k, p)| (p.bytes.max(p.rows.rows()), k))
            .max()
            .map(|(size, k)| (size, k.clone()))
    }

    fn buffer_ids(&self) -> Vec<(u64, PartitionKey)> {
        self.partitions
            .iter()
            .map(|(k, p)| (p.id, k.clone()))
            .collect()
    }

    fn buffered_rows(&self) -> usize {
        self.buffered_rows
    }

    fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
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

    fn commit(
        &mut self,
        key: &PartitionKey,
        files: &mut Files,
    ) -> Result<(CommitRecord, u64, Vec<PartRef>)> {
        let Some(partition) = self.partitions.remove(key) else {
            return Err(Error::Internal(format!(
                "commit of a {} partition that is not buffered",
                B::TABLE
            )));
        };
        self.buffered_rows -= partition.rows.rows();
        self.buffered_bytes = self.buffered_bytes.saturating_sub(partition.bytes);
        let dir_rel = key.dir(B::TABLE)?;
        let name = files.next_name();
        let Partition {
            rows, id, parts, ..
        } = partition;
        let batch = rows.to_record_batch().map_err(|source| Error::Arrow {
            path: files.lake.join(&dir_rel).join(&name),
            source,
        })?;
        let ts_range = rows.ts_range();
        // The sorted batch holds the rows now: give the buffer's memory back before encoding.
        drop(rows);
        let record = files.commit(
            B::TABLE,
            key,
            &dir_rel,
            &name,
            &self.properties,
            &batch,
            ts_range,
            &parts,
        )?;
        Ok((record, id, parts))
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
pub fn table_properties(
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
        QuarantineBuffer::TABLE => Some(of::<QuarantineBuffer>(zstd)),
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
    /// Where files are written before they are renamed into their partition.
    tmp_dir: PathBuf,
    /// Held shared for each commit, so compaction never swaps a folder mid-commit.
    lake_lock: LockFile,
}

impl Files {
    fn next_name(&self) -> String {
        format!("part-{}-{:08}.parquet", self.ingest_id, self.next_n)
    }

    /// Writes `batch` as `<dir_rel>/<name>` (temporary name, fsync, rename, folder fsync),
    /// then appends its record to the commit log and fsyncs that.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        table: &str,
        key: &PartitionKey,
        dir_rel: &str,
        name: &str,
        properties: &WriterProperties,
        batch: &RecordBatch,
        (min_ts_us, max_ts_us): (i64, i64),
        parts: &[PartRef],
    ) -> Result<CommitRecord> {
        let n = self.next_n;
        let dir = self.lake.join(dir_rel);
        let tmp = self.tmp_dir.join(format!("{name}.tmp"));
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
        // Only the rename into the partition folder needs compaction kept out.
        let shared = self.lake_lock.shared()?;
        if !self.known_dirs.contains(&dir) {
            create_dir_durable(&dir)?;
            self.known_dirs.insert(dir.clone());
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        drop(shared);
        self.next_n += 1;
        let record = CommitRecord {
            v: 2,
            n,
            table: table.to_owned(),
            path: format!("{dir_rel}/{name}"),
            site: key.site.to_string(),
            line: key.line.to_string(),
            rows: batch.num_rows() as u64,
            bytes,
            min_ts_us,
            max_ts_us,
            committed_at_us: Utc::now().timestamp_micros(),
            sources: crate::dedup::record_sources(parts),
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
    quarantine: TableWriter<QuarantineBuffer>,
    files: Files,
    dedup: Dedup,
    /// The last partition buffer id handed out.
    ids: u64,
}

impl LakeWriter {
    /// Opens the lake (creating it if needed) and this ingester's commit log, and rebuilds
    /// de-duplication from every ingester's commit log in the lake.
    pub fn open(options: WriterOptions) -> Result<Self> {
        let commits = options.lake.join(COMMITS_DIR);
        create_dir_durable(&commits)?;
        let commit_log_path = commits.join(format!("{}.log", options.ingest_id));
        let next_n = read_commits(&commit_log_path)?
            .iter()
            .map(|r| r.n + 1)
            .max()
            .unwrap_or(0);
        let tmp_dir = options.lake.join(TMP_DIR).join(&options.ingest_id);
        clear_tmp_dir(&tmp_dir)?;
        let mut dedup = Dedup::new(options.dedup);
        for log in commit_logs(&options.lake)? {
            for record in read_commits(&log)? {
                if let Some(table) = TABLES.iter().position(|t| *t == record.table) {
                    dedup.replay(table, &record);
                }
            }
        }
        dedup.prune();
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
            quarantine: TableWriter::new(zstd),
            files: Files {
                lake: options.lake.clone(),
                ingest_id: options.ingest_id.clone(),
                next_n,
                commit_log,
                commit_log_path,
                known_dirs: HashSet::new(),
                tmp_dir,
                lake_lock: LockFile::lake(&options.lake)?,
            },
            options,
            dedup,
            ids: 0,
        })
    }

    /// Every table, in the order of [`TABLES`], and the files they commit through.
    fn tables(&mut self) -> ([&mut dyn Pending; TABLES.len()], &mut Files, &mut Dedup) {
        (
            [
                &mut self.telemetry,
                &mut self.inference,
                &mut self.device_health,
                &mut self.sim_labels,
                &mut self.quarantine,
            ],
            &mut self.files,
            &mut self.dedup,
        )
    }

    fn tables_ref(&self) -> [&dyn Pending; TABLES.len()] {
        [
            &self.telemetry,
            &self.inference,
            &self.device_health,
            &self.sim_labels,
            &self.quarantine,
        ]
    }

    /// Path of this ingester's commit log.
    pub fn commit_log_path(&self) -> &Path {
        &self.files.commit_log_path
    }

    /// Rows buffered over all tables and not yet in any file.
    pub fn buffered_rows(&self) -> usize {
        self.tables_ref().iter().map(|t| t.buffered_rows()).sum()
    }

    /// Bytes of memory the buffered rows take, over all tables.
    pub fn buffered_bytes(&self) -> usize {
        self.tables_ref().iter().map(|t| t.buffered_bytes()).sum()
    }

    /// How much de-duplication state is held.
    pub fn dedup_size(&self) -> DedupSize {
        self.dedup.size()
    }

    fn limits(&self) -> Limits {
        Limits {
            roll_rows: self.options.roll_rows.get(),
            roll_bytes: self.options.roll_bytes,
        }
    }

    /// Buffers a validated batch's rows of every table, less the parts the lake already holds
    /// or buffers, and commits whatever that makes due by size.
    pub fn append(&mut self, batch: &TelemetryBatch, now: Instant) -> Result<Appended> {
        let mut appended = Appended::default();
        let Some(device) = batch.device.as_ref() else {
            return Ok(appended);
        };
        let site: Arc<str> = device.site.as_str().into();
        let line: Arc<str> = device.line.as_str().into();
        let message = Message {
            batch,
            source: Source::new(&device.site, &device.line, &device.device, &batch.boot_id),
            seq: batch.seq,
            site: &site,
            line: &line,
        };
        let limits = self.limits();
        let (ids, dedup) = (&mut self.ids, &mut self.dedup);
        let full: [Vec<PartitionKey>; 4] = [
            self.telemetry
                .append(0, &message, now, &limits, ids, dedup, &mut appended),
            self.inference
                .append(1, &message, now, &limits, ids, dedup, &mut appended),
            self.device_health
                .append(2, &message, now, &limits, ids, dedup, &mut appended),
            self.sim_labels
                .append(3, &message, now, &limits, ids, dedup, &mut appended),
        ];
        for (table, keys) in full.into_iter().enumerate() {
            for key in keys {
                let committed = self.commit(table, &key)?;
                appended.commits.push(committed);
            }
        }
        self.enforce_budget(&mut appended.commits)?;
        Ok(appended)
    }

    /// Buffers one message for the quarantine table, and commits what that makes due.
    pub fn quarantine(&mut self, row: &QuarantineRow<'_>, now: Instant) -> Result<Appended> {
        let (site, line) = crate::quarantine::partition_of(row.topic);
        let key = PartitionKey {
            site: site.into(),
            line: line.into(),
            hour: crate::table::hour_of(row.received_at_us),
        };
        let limits = self.limits();
        let max_payload = self.options.quarantine_max_payload_bytes;
        let table = &mut self.quarantine;
        let partition = table.partition(&key, now, &mut self.ids);
        partition
            .rows
            .push(&self.options.ingest_id, row, max_payload);
        let mut appended = Appended {
            buffers: vec![partition.id],
            new_parts: 1,
            ..Appended::default()
        };
        table.buffered_rows += 1;
        if table.measure(&key, &limits) {
            let committed = self.commit(QUARANTINE, &key)?;
            appended.commits.push(committed);
        }
        self.enforce_budget(&mut appended.commits)?;
        Ok(appended)
    }

    /// Commits the largest partitions while the buffers exceed either memory budget.
    fn enforce_budget(&mut self, commits: &mut Vec<Committed>) -> Result<()> {
        while self.buffered_rows() > self.options.max_buffered_rows.get()
            || self.buffered_bytes() > self.options.max_buffered_bytes
        {
            let Some((table, key)) = self
                .tables_ref()
                .iter()
                .enumerate()
                .filter_map(|(t, table)| table.largest().map(|(size, key)| (size, t, key)))
                .max_by_key(|(size, _, _)| *size)
                .map(|(_, t, key)| (t, key))
            else {
                break;
            };
            commits.push(self.commit(table, &key)?);
        }
        Ok(())
    }

    /// Commits one partition of table `table` and updates de-duplication.
    fn commit(&mut self, table: usize, key: &PartitionKey) -> Result<Committed> {
        let started = std::time::Instant::now();
        let (tables, files, dedup) = self.tables();
        let (record, buffer, parts) = tables[table].commit(key, files)?;
        dedup.committed(table, key.hour, &parts, record.committed_at_us);
        Ok(Committed {
            record,
            buffer,
            took: started.elapsed(),
        })
    }

    /// Commits every partition, of any table, opened at least `roll_age` before `now`.
    pub fn roll_due(&mut self, now: Instant) -> Result<Vec<Committed>> {
        let age = self.options.roll_age;
        let due = self.select(|_, opened| now.duration_since(opened) >= age);
        let committed = self.commit_all(due)?;
        if !committed.is_empty() {
            self.dedup.prune();
        }
        Ok(committed)
    }

    /// Commits the partitions whose buffers are among `buffers` (those still open).
    pub fn commit_buffers(&mut self, buffers: &[u64]) -> Result<Vec<Committed>> {
        let wanted: HashSet<u64> = buffers.iter().copied().collect();
        let mut due = Vec::new();
        for (t, table) in self.tables_ref().iter().enumerate() {
            for (id, key) in table.buffer_ids() {
                if wanted.contains(&id) {
                    due.push((t, key));
                }
            }
        }
        self.commit_all(due)
    }

    /// Commits every buffered row.
    pub fn flush(&mut self) -> Result<Vec<Committed>> {
        let due = self.select(|_, _| true);
        self.commit_all(due)
    }

    fn select(&self, due: impl Fn(&PartitionKey, Instant) -> bool) -> Vec<(usize, PartitionKey)> {
        let mut selected = Vec::new();
        for (t, table) in self.tables_ref().iter().enumerate() {
            for (key, opened) in table.opened() {
                if due(&key, opened) {
                    selected.push((t, key));
                }
            }
        }
        selected
    }

    fn commit_all(&mut self, due: Vec<(usize, PartitionKey)>) -> Result<Vec<Committed>> {
        due.into_iter()
            .map(|(table, key)| self.commit(table, &key))
            .collect()
    }

    /// When the oldest open partition of any table is due to roll.
    pub fn next_roll(&self) -> Option<Instant> {
        self.tables_ref()
            .iter()
            .flat_map(|t| t.opened().into_iter().map(|(_, at)| at))
            .min()
            .map(|at| at + self.options.roll_age)
    }
}

/// Creates the ingester's temporary folder, or empties it of what a crash left there (files
/// never renamed into the lake, so never part of it).
fn clear_tmp_dir(dir: &Path) -> Result<()> {
    create_dir_durable(dir)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        fs::remove_file(&path).map_err(io(&path))?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), files = removed, "removed unfinished files an earlier run left behind");
        sync_dir(dir)?;
    }
    Ok(())
}

/// Every commit log in the lake (one per ingester that ever wrote to it), sorted by path.
pub fn commit_logs(lake: &Path) -> Result<Vec<PathBuf>> {
    let dir = lake.join(COMMITS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    let mut logs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push(path);
        }
    }
    logs.sort();
    Ok(logs)
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
    Ok(read_json_lines(path, "commit log")?
        .into_iter()
        .map(|(_, record)| record)
        .collect())
}

/// The records of a JSON-lines log (`what` names it in warnings) with their line numbers; a
/// missing file has none. A torn last line (a crash mid-append) is ignored with a warning; a
/// bad line anywhere else is an error naming it.
pub(crate) fn read_json_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<Vec<(usize, T)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push((i + 1, record)),
            Err(e) if i + 1 == lines.len() => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring torn last line of the {what}");
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
