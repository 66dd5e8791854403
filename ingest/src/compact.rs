//! Compaction: merges the small files of closed partitions into few large ones and swaps each
//! partition folder in one atomic step, beside live ingesters.
//!
//! Ingest rolls a file every `roll_age`, so an hour partition collects hundreds of small files;
//! readers pay per file. Once a partition's hour is over (plus `lateness`), its small files are
//! read, cast to the table's current schema, sorted and rewritten as files of about
//! `target_file_bytes`.
//!
//! Invariants this module keeps:
//! - **A reader sees the old files or the new ones, never both and never none.** The new
//!   folder is built under `<lake>/_loopline/compact/staging/` (same filesystem, outside every
//!   table folder, so no glob or Hive discovery lists it): the new files, and hard links of the
//!   files kept as they are. It is fsynced, then exchanged with the live folder by
//!   `renameat2(RENAME_EXCHANGE)`. Without that call (some filesystems lack it) compaction
//!   fails naming the path; it never falls back to a swap a reader could see half-done.
//! - **Rows are never lost or duplicated.** Every row of a merged file is in exactly one new
//!   file; a file an ingester commits late into a closed partition is hard-linked into the new
//!   folder under the lake lock ([`crate::lock`]), which ingesters hold shared while they commit
//!   and compaction holds exclusive only to re-list, link and swap.
//! - **A crash leaves each partition fully old or fully new.** Before the swap, the record of
//!   what it will do is fsynced beside the staging folder (`<id>.json`); the next run finds it
//!   and tells which side the swap reached by whether the merged files are still in the live
//!   folder: if not, it completes the record in the compaction log, else it throws the staging
//!   folder away.
//! - **The logs still name exactly the files on disk.** `<lake>/_loopline/compaction.log` says,
//!   per swap, which files left and which arrived; [`live_files`] applies it to the ingesters'
//!   commit logs.
//! - The old folder, after the swap, sits in `<lake>/_loopline/compact/trash/<run>-<k>` for at
//!   least `grace`, so a reader that opened the old folder or its files before the swap reads
//!   them to the end.
//! - One run at a time per lake (`compact.lock`, taken without waiting).
//!
//! Compaction is generic over [`writer::TABLES`]: every table the writer fills is compacted
//! with the writer's own encoding (`writer::table_properties`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_ord::sort::{SortColumn, lexsort_to_indices};
use arrow_schema::{DataType, Field, Schema, SchemaRef, SortOptions};
use bytesize::ByteSize;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::ZstdLevel;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::lock::{COMPACT_LOCK, LockFile};
use crate::table::HOUR_US;
use crate::writer::{self, COMMITS_DIR, create_dir_durable, sync_dir};
use crate::{Error, Result};

/// Staging folders of the run in progress (and of a crashed one), under the lake root.
pub const STAGING_DIR: &str = "_loopline/compact/staging";
/// Old partition folders after their swap, kept for `grace`, under the lake root.
pub const TRASH_DIR: &str = "_loopline/compact/trash";
/// What every compaction swapped, one JSON line per partition, under the lake root.
pub const COMPACTION_LOG: &str = "_loopline/compaction.log";

/// A partition is closed once its hour ended this long ago.
pub const DEFAULT_LATENESS: Duration = Duration::from_secs(3600);
/// Size compaction aims at for each file it writes.
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// How long an old partition folder is kept after its swap.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// zstd level of the files compaction writes (ingest's default).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The prefix of every file compaction writes: `~` is not allowed in an ingest id, so these
/// names never collide with an ingester's `part-<ingest-id>-<n>.parquet`.
const OUTPUT_PREFIX: &str = "part-compact~";

/// What a compaction run does.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Root folder of the lake.
    pub lake: PathBuf,
    /// A partition is closed once its hour ended more than this long ago.
    pub lateness: Duration,
    /// Files are merged into files of at most about this many bytes; files of at least half of
    /// it are kept as they are.
    pub target_file_bytes: u64,
    /// Old partition folders are deleted this long after their swap, at a later run's start.
    pub grace: Duration,
    /// zstd level of the files written, 1..=22.
    pub zstd_level: i32,
    /// Plan and report only: nothing is written, moved or deleted.
    pub dry_run: bool,
}

impl CompactOptions {
    /// The defaults, for the lake at `lake`.
    pub fn new(lake: impl Into<PathBuf>) -> Self {
        CompactOptions {
            lake: lake.into(),
            lateness: DEFAULT_LATENESS,
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            grace: DEFAULT_GRACE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            dry_run: false,
        }
    }

    fn check(&self) -> Result<ZstdLevel> {
        if self.target_file_bytes < 2 {
            return Err(Error::Config {
                key: "target_file_bytes",
                message: format!("{} is too small; write e.g. 128MiB", self.target_file_bytes),
            });
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(Error::Config {
                key: "zstd_level",
                message: format!("{} is not a zstd level; use 1..=22", self.zstd_level),
            });
        }
        ZstdLevel::try_new(self.zstd_level).map_err(|e| Error::Config {
            key: "zstd_level",
            message: e.to_string(),
        })
    }
}

/// Merges the small Parquet files of closed partitions and swaps each partition folder
/// atomically; safe beside running ingesters.
///
/// A partition is closed once its hour ended more than --lateness ago; only partitions with at
/// least two files under half of --target-file-bytes are rewritten. Old folders are kept under
/// <lake>/_loopline/compact/trash for --grace.
#[derive(clap::Args, Debug)]
// These comments are `--help` text, where <placeholders> read naturally.
#[allow(rustdoc::invalid_html_tags)]
pub struct CompactArgs {
    /// Root folder of the Parquet lake.
    #[arg(long, env = "LOOPLINE_INGEST_LAKE")]
    pub lake: PathBuf,
    /// A partition is closed once its hour ended this long ago (e.g. 1h).
    #[arg(long, default_value = "1h", value_parser = loopline_common::duration::parse)]
    pub lateness: Duration,
    /// Size of the files to write (e.g. 128MiB); files of at least half of it are kept.
    #[arg(long, default_value = "128MiB")]
    pub target_file_bytes: ByteSize,
    /// How long old partition folders are kept after their swap (e.g. 10m).
    #[arg(long, default_value = "10m", value_parser = loopline_common::duration::parse)]
    pub grace: Duration,
    /// zstd level of the files written, 1..=22.
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Report what would be compacted; write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl CompactArgs {
    /// The options the flags say, checked.
    pub fn options(&self) -> Result<CompactOptions> {
        let options = CompactOptions {
            lake: self.lake.clone(),
            lateness: self.lateness,
            target_file_bytes: self.target_file_bytes.as_u64(),
            grace: self.grace,
            zstd_level: self.zstd_level,
            dry_run: self.dry_run,
        };
        options.check()?;
        Ok(options)
    }
}

/// What a run did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub dry_run: bool,
    /// The run's id: the file names and trash folders it made carry it.
    pub run: i64,
    /// Partitions whose folder was swapped (would be, in a dry run).
    pub partitions_compacted: usize,
    /// Files of those partitions before, and after (late files not counted).
    pub files_before: usize,
    pub files_after: usize,
    pub bytes_before: u64,
    /// `None` in a dry run, which writes nothing.
    pub bytes_after: Option<u64>,
    /// Rows rewritten.
    pub rows: u64,
    /// Files an ingester committed into a partition while it was being compacted: kept as
    /// they are.
    pub late_files_kept: usize,
    /// Closed partitions left alone because their folder held a subfolder or changed under
    /// the run.
    pub partitions_skipped: usize,
    /// Staging folders of a crashed run cleaned up at the start.
    pub staging_cleaned: usize,
    /// Old partition folders deleted at the start, their grace over.
    pub trash_removed: usize,
    /// The run was asked to stop ([`compact_until`]) before it reached every closed
    /// partition; those left are as they were.
    pub stopped: bool,
    /// One entry per partition compacted.
    pub partitions: Vec<PartitionReport>,
}

/// One partition of a [`CompactReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReport {
    pub table: String,
    /// The partition folder, relative to the lake root.
    pub dir: String,
    /// Files merged, files kept as they are, files written.
    pub merged: usize,
    pub kept: usize,
    pub written: usize,
    pub rows: u64,
}

/// One line of the compaction log: a partition folder swapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRecord {
    /// Record format version.
    pub v: u32,
    /// The run that swapped it.
    pub run: i64,
    pub table: String,
    /// The partition folder, relative to the lake root, `/` separators.
    pub dir: String,
    /// Files no longer in the lake, relative to the lake root.
    pub removed: Vec<String>,
    /// Files written into the partition.
    pub added: Vec<AddedFile>,
    /// When the run started (its injected clock).
    pub compacted_at_us: i64,
}

/// A file compaction wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedFile {
    /// Relative to the lake root, `/` separators.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A file that is part of the lake, by the logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveFile {
    /// Relative to the lake root, `/` separators.
    pub path: String,
    pub table: String,
    pub rows: u64,
}

/// The files of the lake according to its logs: every commit log's files, minus those a
/// compaction removed, plus those it added; sorted by path. The files on disk (`*.parquet`
/// under the table folders) are exactly these.
pub fn live_files(lake: &Path) -> Result<Vec<LiveFile>> {
    let mut live: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let commits = lake.join(COMMITS_DIR);
    let mut logs = Vec::new();
    match fs::read_dir(&commits) {
        Ok(entries) => {
            for entry in entries {
                let path = entry.map_err(io(&commits))?.path();
                if path.extension().is_some_and(|e| e == "log") {
                    logs.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: commits,
                source,
            });
        }
    }
    logs.sort();
    for log in logs {
        for record in writer::read_commits(&log)? {
            live.insert(record.path, (record.table, record.rows));
        }
    }
    let log = lake.join(COMPACTION_LOG);
    for (line, record) in read_compaction_log(&log)? {
        for path in &record.removed {
            if live.remove(path).is_none() {
                return Err(Error::CommitLog {
                    path: log.clone(),
                    line,
                    message: format!("removes {path}, which no log before it names"),
                });
            }
        }
        for added in record.added {
            live.insert(added.path, (record.table.clone(), added.rows));
        }
    }
    Ok(live
        .into_iter()
        .map(|(path, (table, rows))| LiveFile { path, table, rows })
        .collect())
}

/// The records of a compaction log with their line numbers, in order. A torn last line (a
/// crash mid-append) is ignored; a bad line anywhere else is an error naming it.
pub fn read_compaction_log(path: &Path) -> Result<Vec<(usize, CompactionRecord)>> {
    writer::read_json_lines(path, "compaction log")
}

/// Compacts every closed partition of every table, as `options` say, with `now` as the clock.
pub fn compact(options: &CompactOptions, now: DateTime<Utc>) -> Result<CompactReport> {
    run(options, now, &|| false, &mut |_| Ok(()))
}

/// [`compact`], asking `stop` before each partition: once it says yes, the run ends there
/// with [`CompactReport::stopped`] set. Every partition is then either swapped whole or not
/// touched, and the next run takes up the rest. How `loopline-ingest compact` honours SIGTERM.
pub fn compact_until(
    options: &CompactOptions,
    now: DateTime<Utc>,
    stop: &dyn Fn() -> bool,
) -> Result<CompactReport> {
    run(options, now, stop, &mut |_| Ok(()))
}

/// [`compact_until`], calling `before_swap` with each live partition folder once its new
/// files are staged, before the lake lock is taken for the swap: a test commits late files
/// there.
pub(crate) fn run(
    options: &CompactOptions,
    now: DateTime<Utc>,
    stop: &dyn Fn() -> bool,
    before_swap: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<CompactReport> {
    let zstd = options.check()?;
    let lake = &options.lake;
    if !lake.join(COMMITS_DIR).is_dir() {
        return Err(Error::Compact {
            path: lake.clone(),
            message: format!("not a lake: it has no {COMMITS_DIR} folder"),
        });
    }
    let now_us = now.timestamp_micros();
    let mut report = CompactReport {
        dry_run: options.dry_run,
        ..CompactReport::default()
    };
    // Held to the end of the run when not a dry run.
    let run_lock;
    let _run_guard;
    if !options.dry_run {
        create_dir_durable(&lake.join(STAGING_DIR))?;
        create_dir_durable(&lake.join(TRASH_DIR))?;
        run_lock = LockFile::open(&lake.join(COMPACT_LOCK))?;
        _run_guard = run_lock.try_exclusive()?.ok_or_else(|| Error::Compact {
            path: run_lock.path().to_owned(),
            message: "another compaction of this lake is running".into(),
        })?;
        report.staging_cleaned = recover_staging(lake)?;
        report.trash_removed = empty_trash(lake, now_us, options.grace)?;
    }
    let log_path = lake.join(COMPACTION_LOG);
    let last_run = read_compaction_log(&log_path)?
        .iter()
        .map(|(_, r)| r.run)
        .max();
    // Unique and rising even when the clock is not, so names and trash folders never repeat.
    report.run = last_run.map_or(now_us, |last| now_us.max(last + 1));
    let lake_lock = if options.dry_run {
        None
    } else {
        Some(LockFile::lake(lake)?)
    };
    let closed_before_us = now_us.saturating_sub(micros(options.lateness));
    let mut k = 0;
    'tables: for table in writer::TABLES {
        let root = lake.join(table);
        if !root.is_dir() {
            continue;
        }
        let (schema, properties, sorted_by) =
            writer::table_properties(table, zstd).ok_or_else(|| Error::Compact {
                path: root.clone(),
                message: format!("no file encoding is known for table {table}"),
            })?;
        let table = Table {
            name: table,
            schema: file_schema(&schema),
            properties,
            sorted_by,
        };
        for dir in closed_partitions(lake, table.name, closed_before_us)? {
            if stop() {
                report.stopped = true;
                break 'tables;
            }
            let live = lake.join(&dir);
            let Some(listing) = list_partition(&live)? else {
                tracing::warn!(dir = %live.display(), "partition holds a folder; left as it is");
                report.partitions_skipped += 1;
                continue;
            };
            let Some(plan) = plan(&listing.parquet, options.target_file_bytes) else {
                continue;
            };
            let job = Job {
                lake,
                table: &table,
                dir: &dir,
                listing: &listing,
                plan: &plan,
                run: report.run,
                k,
                now_us,
            };
            k += 1;
            let outcome = match &lake_lock {
                None => job.dry_run()?,
                Some(lake_lock) => match job.execute(lake_lock, before_swap)? {
                    Some(outcome) => outcome,
                    None => {
                        report.partitions_skipped += 1;
                        continue;
                    }
                },
            };
            let written = if options.dry_run {
                plan.groups.len()
            } else {
                outcome.written.len()
            };
            report.partitions_compacted += 1;
            report.files_before += plan.merged().count() + plan.kept.len();
            report.files_after += written + plan.kept.len();
            report.bytes_before += plan
                .merged()
                .chain(&plan.kept)
                .map(|f| f.bytes)
                .sum::<u64>();
            if !options.dry_run {
                let kept: u64 = plan.kept.iter().map(|f| f.bytes).sum();
                let written: u64 = outcome.written.iter().map(|f| f.bytes).sum();
                *report.bytes_after.get_or_insert(0) += kept + written;
            }
            report.rows += outcome.rows;
            report.late_files_kept += outcome.late;
            report.partitions.push(PartitionReport {
                table: table.name.to_owned(),
                dir,
                merged: plan.merged().count(),
                kept: plan.kept.len(),
                written,
                rows: outcome.rows,
            });
        }
    }
    tracing::info!(
        run = report.run,
        partitions = report.partitions_compacted,
        files_before = report.files_before,
        files_after = report.files_after,
        dry_run = report.dry_run,
        stopped = report.stopped,
        "{}",
        if report.stopped {
            "compaction stopped early; the next run takes up the partitions left"
        } else {
            "compaction done"
        }
    );
    Ok(report)
}

/// A table as compaction rewrites it.
struct Table {
    name: &'static str,
    /// The table's schema as a reader of its files sees it (strings plain, not dictionaries).
    schema: SchemaRef,
    properties: WriterProperties,
    sorted_by: &'static [&'static str],
}

/// The schema a reader sees in a file written with `schema`: Parquet stores dictionary
/// columns as plain strings with a dictionary encoding, and a file without an embedded Arrow
/// schema reads back as the value type.
fn file_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => f.as_ref().clone().with_data_type((**value).clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Partition folders (relative to the lake root) of `table` whose hour ended before
/// `closed_before_us`, in path order. Folders that do not look like partitions are skipped.
fn closed_partitions(lake: &Path, table: &str, closed_before_us: i64) -> Result<Vec<String>> {
    let mut dirs = vec![table.to_owned()];
    for key in ["site=", "line=", "date="] {
        let mut next = Vec::new();
        for dir in &dirs {
            for name in subdirs(&lake.join(dir))? {
                if name.starts_with(key) {
                    next.push(format!("{dir}/{name}"));
                }
            }
        }
        dirs = next;
    }
    let mut closed = Vec::new();
    for dir in dirs {
        let Some(date) = dir
            .rsplit_once("/date=")
            .and_then(|(_, d)| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        for name in subdirs(&lake.join(&dir))? {
            let Some(hour) = name
                .strip_prefix("hour=")
                .and_then(|h| h.parse::<u32>().ok())
                .filter(|h| *h < 24)
            else {
                continue;
            };
            let Some(start) = date.and_hms_opt(hour, 0, 0) else {
                continue;
            };
            let end_us = start.and_utc().timestamp_micros() + HOUR_US;
            if end_us < closed_before_us {
                closed.push(format!("{dir}/{name}"));
            }
        }
    }
    closed.sort();
    Ok(closed)
}

/// Names of the folders in `dir` that readers see (not starting with `.` or `_`), sorted.
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(['.', '_']) || !entry.file_type().map_err(io(dir))?.is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// A file of a partition folder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileEntry {
    name: String,
    bytes: u64,
}

/// What a partition folder holds.
#[derive(Debug, Default)]
struct Listing {
    /// The data files: `*.parquet` not starting with `.` or `_`, as readers match them.
    parquet: Vec<FileEntry>,
    /// Anything else but temporary files: kept as it is.
    other: Vec<String>,
}

/// Lists a partition folder; `None` when it holds a subfolder (which compaction does not
/// know how to carry over). Hidden `.….tmp` files are left out: under the lake lock they are
/// debris of a crashed ingester, which never returns to them.
fn list_partition(dir: &Path) -> Result<Option<Listing>> {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata().map_err(io(&entry.path()))?;
        if meta.is_dir() {
            return Ok(None);
        }
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        if name.ends_with(".parquet") && !name.starts_with(['.', '_']) {
            listing.parquet.push(FileEntry {
                name,
                bytes: meta.len(),
            });
        } else {
            listing.other.push(name);
        }
    }
    listing.parquet.sort_by(|a, b| a.name.cmp(&b.name));
    listing.other.sort();
    Ok(Some(listing))
}

/// Which files of a partition are merged together, and which are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Each group becomes one file; every group has at least two files.
    groups: Vec<Vec<FileEntry>>,
    kept: Vec<FileEntry>,
}

impl Plan {
    fn merged(&self) -> impl Iterator<Item = &FileEntry> {
        self.groups.iter().flatten()
    }
}

/// Groups the files under half of `target` (in name order, so rows of nearby commits stay
/// together) into runs of at most `target` bytes; `None` when no run has two files, as
/// rewriting would then gain nothing. Files of at least half of `target`, and a run of one,
/// are kept as they are.
fn plan(files: &[FileEntry], target: u64) -> Option<Plan> {
    let (mut small, mut kept): (Vec<FileEntry>, Vec<FileEntry>) = files
        .iter()
        .cloned()
        .partition(|f| f.bytes.saturating_mul(2) < target);
    small.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: Vec<Vec<FileEntry>> = Vec::new();
    let mut current: Vec<FileEntry> = Vec::new();
    let mut current_bytes = 0u64;
    for file in small {
        if !current.is_empty() && current_bytes + file.bytes > target {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += file.bytes;
        current.push(file);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let (groups, singles): (Vec<_>, Vec<_>) = groups.into_iter().partition(|g| g.len() >= 2);
    if groups.is_empty() {
        return None;
    }
    kept.extend(singles.into_iter().flatten());
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    Some(Plan { groups, kept })
}

/// One partition of one run.
struct Job<'a> {
    lake: &'a Path,
    table: &'a Table,
    /// The partition folder, relative to the lake root.
    dir: &'a str,
    listing: &'a Listing,
    plan: &'a Plan,
    run: i64,
    /// The partition's number within the run.
    k: usize,
    now_us: i64,
}

/// What a partition's compaction did.
struct Outcome {
    written: Vec<AddedFile>,
    rows: u64,
    late: usize,
}

impl Job<'_> {
    fn live(&self) -> PathBuf {
        self.lake.join(self.dir)
    }

    fn staging(&self) -> PathBuf {
        self.lake
            .join(STAGING_DIR)
            .join(format!("{}-{}", self.run, self.k))
    }

    /// What [`Self::execute`] would write, from the files' footers.
    fn dry_run(&self) -> Result<Outcome> {
        let mut rows = 0;
        for file in self.plan.merged() {
            let path = self.live().join(&file.name);
            let handle = File::open(&path).map_err(io(&path))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(handle)
                .map_err(|source| Error::Parquet { path, source })?;
            rows += reader.metadata().file_metadata().num_rows() as u64;
        }
        Ok(Outcome {
            written: Vec::new(),
            rows,
            late: 0,
        })
    }

    /// Writes the merged files into `staging` and hard-links the files kept as they are;
    /// returns the files written and their rows.
    fn stage(&self, live: &Path, staging: &Path) -> Result<(Vec<AddedFile>, u64)> {
        let mut written = Vec::new();
        let mut rows = 0;
        for (i, group) in self.plan.groups.iter().enumerate() {
            let name = format!("{OUTPUT_PREFIX}{}-{i:08}.parquet", self.run);
            if let Some(file) = self.merge(group, &staging.join(&name))? {
                rows += file.rows;
                written.push(AddedFile {
                    path: format!("{}/{name}", self.dir),
                    ..file
                });
            }
        }
        let carried = self
            .plan
            .kept
            .iter()
            .map(|f| &f.name)
            .chain(&self.listing.other);
        for name in carried {
            link(&live.join(name), &staging.join(name))?;
        }
        sync_dir(staging)?;
        Ok((written, rows))
    }

    /// Stages the partition's new folder, swaps it in under the lake lock and records it.
    /// `None` when the folder changed under the run in a way other than a late commit (the
    /// partition is then left as it was).
    fn execute(
        &self,
        lake_lock: &LockFile,
        before_swap: &mut dyn FnMut(&Path) -> Result<()>,
    ) -> Result<Option<Outcome>> {
        let live = self.live();
        let staging = self.staging();
        let staging_root = self.lake.join(STAGING_DIR);
        fs::create_dir(&staging).map_err(io(&staging))?;
        let (written, rows) = match self.stage(&live, &staging) {
            Ok(staged) => staged,
            Err(e) => {
                // Nothing refers to the staging folder yet; a failed removal is left to the
                // next run's start.
                if let Err(rm) = fs::remove_dir_all(&staging) {
                    tracing::warn!(staging = %staging.display(), error = %rm, "could not remove a staging folder");
                }
                return Err(e);
            }
        };
        let record = CompactionRecord {
            v: 1,
            run: self.run,
            table: self.table.name.to_owned(),
            dir: self.dir.to_owned(),
            removed: self
                .plan
                .merged()
                .map(|f| format!("{}/{}", self.dir, f.name))
                .collect(),
            added: written.clone(),
            compacted_at_us: self.now_us,
        };
        let intent = staging_root.join(format!("{}-{}.json", self.run, self.k));
        write_durable(&intent, &json_line(&record)?)?;
        sync_dir(&staging_root)?;

        before_swap(&live)?;
        let late = {
            let exclusive = lake_lock.exclusive()?;
            let Some(late) = self.late_files(&live)? else {
                tracing::warn!(dir = %live.display(), "partition changed during compaction; left as it is");
                drop(exclusive);
                remove_staged(&staging, &intent)?;
                return Ok(None);
            };
            for name in &late {
                link(&live.join(name), &staging.join(name))?;
            }
            if !late.is_empty() {
                sync_dir(&staging)?;
            }
            exchange(&staging, &live)?;
            if let Some(parent) = live.parent() {
                sync_dir(parent)?;
            }
            sync_dir(&staging_root)?;
            late.len()
        };
        append_log(&self.lake.join(COMPACTION_LOG), &record)?;
        let trash = self
            .lake
            .join(TRASH_DIR)
            .join(format!("{}-{}", self.run, self.k));
        fs::rename(&staging, &trash).map_err(io(&trash))?;
        sync_dir(&self.lake.join(TRASH_DIR))?;
        fs::remove_file(&intent).map_err(io(&intent))?;
        sync_dir(&staging_root)?;
        tracing::info!(
            dir = self.dir,
            merged = record.removed.len(),
            written = written.len(),
            kept = self.plan.kept.len(),
            late,
            rows,
            "partition compacted"
        );
        Ok(Some(Outcome {
            written,
            rows,
            late,
        }))
    }

    /// Re-lists the live folder (under the lake lock): the files that appeared since the plan,
    /// or `None` when a planned file is gone or a subfolder appeared.
    fn late_files(&self, live: &Path) -> Result<Option<Vec<String>>> {
        let Some(now) = list_partition(live)? else {
            return Ok(None);
        };
        let present: BTreeSet<&str> = now
            .parquet
            .iter()
            .map(|f| f.name.as_str())
            .chain(now.other.iter().map(String::as_str))
            .collect();
        let planned: BTreeSet<&str> = self
            .plan
            .merged()
            .chain(&self.plan.kept)
            .map(|f| f.name.as_str())
            .chain(self.listing.other.iter().map(String::as_str))
            .collect();
        if !planned.is_subset(&present) {
            return Ok(None);
        }
        Ok(Some(
            present
                .difference(&planned)
                .map(|n| (*n).to_owned())
                .collect(),
        ))
    }

    /// Reads `group`, casts it to the table's schema, sorts it and writes it to `out`
    /// (fsynced). `None` when the group has no rows (no file is then written).
    fn merge(&self, group: &[FileEntry], out: &Path) -> Result<Option<AddedFile>> {
        let schema = &self.table.schema;
        let mut batches = Vec::new();
        for file in group {
            batches.extend(read_conformed(&self.live().join(&file.name), schema)?);
        }
        let arrow_err = |source| Error::Arrow {
            path: out.to_owned(),
            source,
        };
        let all = arrow_select::concat::concat_batches(schema, &batches).map_err(arrow_err)?;
        drop(batches);
        if all.num_rows() == 0 {
            return Ok(None);
        }
        let sorted = sort(&all, self.table.sorted_by).map_err(arrow_err)?;
        drop(all);
        let handle = File::create(out).map_err(io(out))?;
        let parquet_err = |source| Error::Parquet {
            path: out.to_owned(),
            source,
        };
        let options = ArrowWriterOptions::new()
            .with_properties(self.table.properties.clone())
            .with_skip_arrow_metadata(true);
        let mut writer = ArrowWriter::try_new_with_options(handle, schema.clone(), options)
            .map_err(parquet_err)?;
        writer.write(&sorted).map_err(parquet_err)?;
        let handle = writer.into_inner().map_err(parquet_err)?;
        handle.sync_all().map_err(io(out))?;
        let bytes = handle.metadata().map_err(io(out))?.len();
        Ok(Some(AddedFile {
            path: String::new(),
            rows: sorted.num_rows() as u64,
            bytes,
        }))
    }
}

/// Every batch of the file at `path`, cast to `schema`: a nullable column the file lacks (it
/// was written before the column was added) is all nulls; a column `schema` lacks, a type
/// that differs, or a null where `schema` allows none is an error naming the file and column.
fn read_conformed(path: &Path, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let bad = |message: String| Error::Compact {
        path: path.to_owned(),
        message,
    };
    let parquet_err = |source| Error::Parquet {
        path: path.to_owned(),
        source,
    };
    let handle = File::open(path).map_err(io(path))?;
    // Ingest embeds no Arrow schema; skipping one another writer embedded reads every file
    // with the same types.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(handle, options)
        .map_err(parquet_err)?;
    let found = builder.schema().clone();
    for field in found.fields() {
        match schema.field_with_name(field.name()) {
            Err(_) => {
                return Err(bad(format!(
                    "column {} is not in the table's schema",
                    field.name()
                )));
            }
            Ok(want) if want.data_type() != field.data_type() => {
                return Err(bad(format!(
                    "column {} is {}, the table's schema has {}",
                    field.name(),
                    field.data_type(),
                    want.data_type()
                )));
            }
            Ok(_) => {}
        }
    }
    for want in schema.fields() {
        if !want.is_nullable() && found.field_with_name(want.name()).is_err() {
            return Err(bad(format!(
                "column {} is missing, and the table's schema does not allow nulls in it",
                want.name()
            )));
        }
    }
    let reader = builder.build().map_err(parquet_err)?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            path: path.to_owned(),
            source,
        })?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for want in schema.fields() {
            let column = match batch.column_by_name(want.name()) {
                Some(column) => column.clone(),
                None => new_null_array(want.data_type(), batch.num_rows()),
            };
            if !want.is_nullable() && column.null_count() > 0 {
                return Err(bad(format!(
                    "column {} holds {} nulls, the table's schema allows none",
                    want.name(),
                    column.null_count()
                )));
            }
            columns.push(column);
        }
        let batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|source| Error::Arrow {
                path: path.to_owned(),
                source,
            })?;
        batches.push(batch);
    }
    Ok(batches)
}

/// `batch` sorted by `sorted_by`, then by every other column in schema order, so the order is
/// total and a file's bytes depend only on its rows.
fn sort(batch: &RecordBatch, sorted_by: &[&str]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = batch.schema();
    let mut order: Vec<usize> = sorted_by
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect();
    for i in 0..schema.fields().len() {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    let columns: Vec<SortColumn> = order
        .into_iter()
        .map(|i| SortColumn {
            values: batch.column(i).clone(),
            options: Some(SortOptions {
                descending: false,
                nulls_first: true,
            }),
        })
        .collect();
    let indices = lexsort_to_indices(&columns, None)?;
    arrow_select::take::take_record_batch(batch, &indices)
}

/// Exchanges the folders at `a` and `b` in one step. A filesystem without
/// `renameat2(RENAME_EXCHANGE)` is an error: a swap in two renames would let a reader see
/// the partition empty.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;

    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::INVAL || e == Errno::NOSYS || e == Errno::NOTSUP => {
            Err(Error::Compact {
                path: b.to_owned(),
                message: format!(
                    "the filesystem cannot exchange two folders atomically \
                     (renameat2 RENAME_EXCHANGE: {e}); compaction never swaps without it"
                ),
            })
        }
        Err(e) => Err(Error::Io {
            path: b.to_owned(),
            source: e.into(),
        }),
    }
}

/// Finishes or undoes what a crashed run left in the staging folder. A staging folder with
/// an intent record whose merged files are gone from the live folder was swapped in: its
/// record is appended to the compaction log if missing, and the old files go to the trash.
/// Anything else in the staging folder was never swapped and is deleted. Returns how many
/// staging folders there were.
fn recover_staging(lake: &Path) -> Result<usize> {
    let root = lake.join(STAGING_DIR);
    let log_path = lake.join(COMPACTION_LOG);
    let mut cleaned = 0;
    let mut entries: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(&root).map_err(io(&root))? {
        entries.push(entry.map_err(io(&root))?.path());
    }
    entries.sort();
    // Intent records first, so each decides for its staging folder.
    for intent in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let staging = intent.with_extension("");
        let record = fs::read_to_string(intent)
            .ok()
            .and_then(|text| serde_json::from_str::<CompactionRecord>(&text).ok());
        let swapped = record.as_ref().is_some_and(|r| {
            r.removed
                .first()
                .is_some_and(|first| !lake.join(first).exists())
        });
        match record {
            Some(record) if swapped => {
                let logged = read_compaction_log(&log_path)?
                    .iter()
                    .any(|(_, r)| r.run == record.run && r.dir == record.dir);
                if !logged {
                    append_log(&log_path, &record)?;
                }
                if staging.is_dir()
                    && let Some(name) = staging.file_name()
                {
                    let trash = lake.join(TRASH_DIR).join(name);
                    fs::rename(&staging, &trash).map_err(io(&trash))?;
                    sync_dir(&lake.join(TRASH_DIR))?;
                }
                tracing::warn!(
                    dir = record.dir,
                    "finished the swap of a crashed compaction"
                );
            }
            _ => {
                if staging.is_dir() {
                    fs::remove_dir_all(&staging).map_err(io(&staging))?;
                }
                tracing::warn!(staging = %staging.display(), "removed the staging folder of a crashed compaction");
            }
        }
        fs::remove_file(intent).map_err(io(intent))?;
        cleaned += 1;
    }
    for path in &entries {
        if path.extension().is_some_and(|e| e == "json") || !path.exists() {
            continue;
        }
        if path.is_dir() {
            fs::remove_dir_all(path).map_err(io(path))?;
            cleaned += 1;
            tracing::warn!(staging = %path.display(), "removed the staging folder of a crashed compaction");
        } else {
            fs::remove_file(path).map_err(io(path))?;
        }
    }
    if !entries.is_empty() {
        sync_dir(&root)?;
    }
    Ok(cleaned)
}

/// Deletes the trash folders (`<run>-<k>`, the run in microseconds) older than `grace` at
/// `now_us`; returns how many.
fn empty_trash(lake: &Path, now_us: i64, grace: Duration) -> Result<usize> {
    let root = lake.join(TRASH_DIR);
    let mut removed = 0;
    for entry in fs::read_dir(&root).map_err(io(&root))? {
        let path = entry.map_err(io(&root))?.path();
        let at = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split_once('-'))
            .and_then(|(us, _)| us.parse::<i64>().ok());
        let Some(at) = at else {
            tracing::warn!(path = %path.display(), "not a compaction trash folder; left as it is");
            continue;
        };
        if now_us.saturating_sub(at) > micros(grace) {
            if path.is_dir() {
                fs::remove_dir_all(&path).map_err(io(&path))?;
            } else {
                fs::remove_file(&path).map_err(io(&path))?;
            }
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(&root)?;
    }
    Ok(removed)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn json_line(record: &CompactionRecord) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(record).map_err(|e| Error::Internal(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Appends `record` to the compaction log and fsyncs it. A torn last line (a crash
/// mid-append) is cut off first, so it never ends up in the middle of the log.
fn append_log(path: &Path, record: &CompactionRecord) -> Result<()> {
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io(path))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(io(path))?;
    if !text.is_empty() && !text.ends_with(b"\n") {
        let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64).map_err(io(path))?;
        tracing::warn!(path = %path.display(), "cut the torn last line of the compaction log");
    }
    file.write_all(&json_line(record)?)
        .and_then(|()| file.sync_data())
        .map_err(io(path))?;
    if created && let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes `bytes` as the file at `path`, fsynced.
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

/// Hard-links `from` as `to`: the file is kept as it is, in both folders until the swap.
fn link(from: &Path, to: &Path) -> Result<()> {
    fs::hard_link(from, to).map_err(io(to))
}

/// Removes a staging folder that was never swapped, and its intent record.
fn remove_staged(staging: &Path, intent: &Path) -> Result<()> {
    fs::remove_file(intent).map_err(io(intent))?;
    fs::remove_dir_all(staging).map_err(io(staging))?;
    if let Some(parent) = staging.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { path, source }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use loopline_proto::pack::ChannelBuilder;
    use loopline_proto::v1::{DeviceId, Quality, SCHEMA_VERSION, TelemetryBatch};

    use super::*;
    use crate::writer::{LakeWriter, WriterOptions};

    /// 2026-11-29T10:00:00Z
    const T0: i64 = 1_795_946_400_000_000;

    fn file(name: &str, bytes: u64) -> FileEntry {
        FileEntry {
            name: name.into(),
            bytes,
        }
    }

    #[test]
    fn plan_groups_small_files_up_to_the_target_and_keeps_the_rest() {
        let files = [
            file("a", 30),
            file("b", 30),
            file("big", 50),
            file("c", 30),
            file("d", 45),
            file("e", 10),
        ];
        let grouped = plan(&files, 100).unwrap();
        assert_eq!(
            grouped.groups,
            vec![
                vec![file("a", 30), file("b", 30), file("c", 30)],
                vec![file("d", 45), file("e", 10)],
            ]
        );
        assert_eq!(grouped.kept, vec![file("big", 50)]);
        // A lone small file beside a large one is not worth a rewrite.
        assert_eq!(plan(&[file("a", 10), file("big", 60)], 100), None);
        assert_eq!(
            plan(&[file("a", 49), file("b", 49)], 100).unwrap().kept,
            vec![]
        );
        // A group that would pass the target starts a new one; a group of one is kept.
        let grouped = plan(&[file("a", 40), file("b", 40), file("c", 40)], 100).unwrap();
        assert_eq!(grouped.groups, vec![vec![file("a", 40), file("b", 40)]]);
        assert_eq!(grouped.kept, vec![file("c", 40)]);
    }

    #[test]
    fn every_table_has_an_encoding_to_rewrite_it_with() {
        let zstd = ZstdLevel::try_new(3).unwrap();
        for table in writer::TABLES {
            let (schema, _, sorted_by) = writer::table_properties(table, zstd).unwrap();
            for name in sorted_by {
                assert!(schema.index_of(name).is_ok(), "{table}.{name}");
            }
        }
    }

    #[test]
    fn exchange_swaps_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), b"").unwrap();
        exchange(&a, &b).unwrap();
        assert!(b.join("x").exists() && !a.join("x").exists());
        let err = exchange(&a, &dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    fn batch(seq: u64, base: i64) -> TelemetryBatch {
        let mut channel = ChannelBuilder::new("vibration", "x", base);
        for i in 0..10 {
            channel.push(base + i * 1000, seq as f32 + i as f32, Quality::Good);
        }
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            device: Some(DeviceId::checked("plant", "l1", "d1").unwrap()),
            boot_id: "b1".into(),
            seq,
            base_ts_us: base,
            channels: vec![channel.finish()],
            ..Default::default()
        }
    }

    fn writer(lake: &Path) -> LakeWriter {
        LakeWriter::open(WriterOptions {
            lake: lake.to_owned(),
            ingest_id: "ing-1".into(),
            roll_rows: NonZeroUsize::new(1_000_000).unwrap(),
            roll_age: Duration::from_secs(3600),
            max_buffered_rows: NonZeroUsize::new(1_000_000).unwrap(),
            zstd_level: 3,
            roll_bytes: usize::MAX,
            max_buffered_bytes: usize::MAX,
            dedup: crate::dedup::DedupLimits {
                window_us: i64::MAX,
                max_ranges: 4096,
            },
            quarantine_max_payload_bytes: 1 << 20,
        })
        .unwrap()
    }

    fn commit(w: &mut LakeWriter, seq: u64) {
        w.append(
            &batch(seq, T0 + seq as i64 * 1000),
            tokio::time::Instant::now(),
        )
        .unwrap();
        w.flush().unwrap();
    }

    const PARTITION: &str = "telemetry/site=plant/line=l1/date=2026-11-29/hour=10";

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn rows(dir: &Path) -> Vec<(i64, i64)> {
        let mut rows: Vec<(i64, i64)> = names(dir)
            .iter()
            .flat_map(|n| crate::telemetry::read_file(&dir.join(n)).unwrap())
            .map(|r| (r.seq, r.ts_us))
            .collect();
        rows.sort_unstable();
        rows
    }

    fn on_disk(lake: &Path) -> Vec<(String, u64)> {
        let dir = lake.join(PARTITION);
        names(&dir)
            .into_iter()
            .map(|n| {
                let rows = crate::telemetry::read_file(&dir.join(&n)).unwrap().len();
                (format!("{PARTITION}/{n}"), rows as u64)
            })
            .collect()
    }

    fn logged(lake: &Path) -> Vec<(String, u64)> {
        live_files(lake)
            .unwrap()
            .into_iter()
            .filter(|f| f.table == "telemetry")
            .map(|f| (f.path, f.rows))
            .collect()
    }

    #[test]
    fn a_file_committed_during_compaction_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path();
        let mut w = writer(lake);
        for seq in 0..3 {
            commit(&mut w, seq);
        }
        let live = lake.join(PARTITION);
        let before = rows(&live);
        let now = DateTime::from_timestamp_micros(T0 + 3 * HOUR_US).unwrap();
        let mut late = Vec::new();
        let report = run(&CompactOptions::new(lake), now, &|| false, &mut |dir| {
            assert_eq!(dir, live);
            // The ingester commits between the read and the swap.
            commit(&mut w, 3);
            late = names(dir);
            Ok(())
        })
        .unwrap();
        assert_eq!(report.late_files_kept, 1);
        assert_eq!(report.files_before, 3);
        assert_eq!(report.files_after, 1);
        let after = names(&live);
        assert_eq!(after.len(), 2, "{after:?}");
        let late_name = late
            .iter()
            .find(|n| n.ends_with("00000003.parquet"))
            .unwrap();
        assert!(after.contains(late_name), "{after:?}");
        let mut expected = before;
        expected.extend((0..10).map(|i| (3, T0 + 3000 + i * 1000)));
        expected.sort_unstable();
        assert_eq!(rows(&live), expected);
        assert_eq!(logged(lake), on_disk(lake));
    }

    #[test]
    fn a_run_that_dies_before_the_swap_leaves_the_partition_whole() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path();
        let mut w = writer(lake);
        for seq in 0..3 {
            commit(&mut w, seq);
        }
        let live = lake.join(PARTITION);
        let before = names(&live);
        let now = DateTime::from_timestamp_micros(T0 + 3 * HOUR_US).unwrap();
        let err = run(&CompactOptions::new(lake), now, &|| false, &mut |_| {
            Err(Error::Internal("killed".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("killed"));
        // Staged and recorded, never swapped: the partition is as it was.
        assert_eq!(names(&live), before);
        assert_eq!(names(&lake.join(STAGING_DIR)).len(), 2);
        assert_eq!(logged(lake), on_disk(lake));

        let report = compact(&CompactOptions::new(lake), now).unwrap();
        assert_eq!(report.staging_cleaned, 1);
        assert_eq!(report.partitions_compacted, 1);
        assert!(names(&lake.join(STAGING_DIR)).is_empty());
        assert_eq!(names(&live).len(), 1);
        assert_eq!(logged(lake), on_disk(lake));
    }

    #[test]
    fn a_torn_log_line_is_cut_before_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compaction.log");
        let record = CompactionRecord {
            v: 1,
            run: 7,
            table: "telemetry".into(),
            dir: "telemetry/x".into(),
            removed: vec!["telemetry/x/a.parquet".into()],
            added: vec![],
            compacted_at_us: 7,
        };
        append_log(&path, &record).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"v\":1,\"ru").unwrap();
        assert_eq!(read_compaction_log(&path).unwrap().len(), 1);
        append_log(&path, &CompactionRecord { run: 8, ..record }).unwrap();
        let runs: Vec<(usize, i64)> = read_compaction_log(&path)
            .unwrap()
            .iter()
            .map(|(line, r)| (*line, r.run))
            .collect();
        assert_eq!(runs, vec![(1, 7), (2, 8)]);
    }
}
