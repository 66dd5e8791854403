//! The lake writer: buffers rows per partition and turns each buffer into one Parquet file.
//!
//! Invariants this module keeps:
//! - A file appears under its final name only when it is complete: it is written as
//!   `.part-<ingest-id>-<n>.parquet.tmp` in its partition folder, fsynced, renamed to
//!   `part-<ingest-id>-<n>.parquet`, and the folder is fsynced. Readers that glob `*.parquet`
//!   never see a partial file.
//! - Every committed file is then recorded, one JSON line each, in
//!   `<lake>/_loopline/commits/<ingest-id>.log`, which is fsynced before the commit is
//!   reported. `n` is taken from that log at start, so file names never repeat across restarts.
//! - Memory is bounded: a partition rolls at `roll_rows`, at `roll_age`, and the largest one
//!   rolls early when all buffers together pass `max_buffered_rows`.
//!
//! No MQTT here: the caller decides when what was committed may be acknowledged.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

use crate::telemetry::{self, TelemetryBuffer, col};
use crate::{Error, Result};

const HOUR_US: i64 = 3_600_000_000;

/// Where the commit logs live, under the lake root.
pub const COMMITS_DIR: &str = "_loopline/commits";

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
    /// File number, unique per ingester.
    pub n: u64,
    pub table: String,
    /// Path relative to the lake root, with `/` separators.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub committed_at_us: i64,
}

/// Partition of the telemetry table: site, line, and the UTC hour of the samples.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartitionKey {
    site: Arc<str>,
    line: Arc<str>,
    /// Hours since the Unix epoch.
    hour: i64,
}

impl PartitionKey {
    fn dir(&self) -> Result<String> {
        let start = DateTime::<Utc>::from_timestamp(self.hour * 3600, 0)
            .ok_or(Error::TimestampOutOfRange { hour: self.hour })?;
        Ok(format!(
            "{}/site={}/line={}/date={}/hour={}",
            telemetry::TABLE,
            self.site,
            self.line,
            start.format("%Y-%m-%d"),
            start.format("%H"),
        ))
    }
}

#[derive(Debug)]
struct Partition {
    rows: TelemetryBuffer,
    opened: Instant,
}

/// Buffers telemetry per partition and commits files to the lake.
#[derive(Debug)]
pub struct LakeWriter {
    options: WriterOptions,
    properties: WriterProperties,
    partitions: HashMap<PartitionKey, Partition>,
    buffered_rows: usize,
    next_n: u64,
    commit_log: File,
    commit_log_path: PathBuf,
    known_dirs: std::collections::HashSet<PathBuf>,
}

impl LakeWriter {
    /// Opens the lake (creating it if needed) and this ingester's commit log.
    pub fn open(options: WriterOptions) -> Result<Self> {
        let commits = options.lake.join(COMMITS_DIR);
        create_dir_durable(&commits)?;
        let commit_log_path = commits.join(format!("{}.log", options.ingest_id));
        let next_n = read_commit_log(&commit_log_path)?
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
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(zstd))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(1 << 20))
            .set_created_by(format!("loopline-ingest {}", env!("CARGO_PKG_VERSION")))
            .set_sorting_columns(Some(
                [col::DEVICE, col::SENSOR, col::TS]
                    .into_iter()
                    .map(|c| SortingColumn {
                        column_idx: c as i32,
                        descending: false,
                        nulls_first: false,
                    })
                    .collect(),
            ))
            // Sorted integer columns compress best delta-coded; floats gain nothing from a
            // dictionary.
            .set_column_dictionary_enabled(ColumnPath::from("ts"), false)
            .set_column_encoding(ColumnPath::from("ts"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(ColumnPath::from("seq"), false)
            .set_column_encoding(ColumnPath::from("seq"), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(ColumnPath::from("value"), false)
            .build();
        Ok(LakeWriter {
            options,
            properties,
            partitions: HashMap::new(),
            buffered_rows: 0,
            next_n,
            commit_log,
            commit_log_path,
            known_dirs: Default::default(),
        })
    }

    /// Path of this ingester's commit log.
    pub fn commit_log_path(&self) -> &Path {
        &self.commit_log_path
    }

    /// Rows buffered and not yet in any file.
    pub fn buffered_rows(&self) -> usize {
        self.buffered_rows
    }

    /// Buffers a validated batch, and commits whatever that makes due by size. Returns the
    /// files committed.
    pub fn append(&mut self, batch: &TelemetryBatch, now: Instant) -> Result<Vec<CommitRecord>> {
        let Some(device) = batch.device.as_ref() else {
            return Ok(Vec::new());
        };
        let site: Arc<str> = device.site.as_str().into();
        let line: Arc<str> = device.line.as_str().into();
        let hour_of = |s: loopline_proto::pack::Sample| s.ts_us.div_euclid(HOUR_US);
        let samples = || {
            batch
                .channels
                .iter()
                .filter_map(|c| c.samples(batch.base_ts_us).ok())
                .flatten()
        };
        let (first, last) = samples()
            .map(hour_of)
            .fold((i64::MAX, i64::MIN), |(lo, hi), h| (lo.min(h), hi.max(h)));
        // Nearly every batch sits in one hour; only a batch that straddles hours pays for
        // finding which ones it touches.
        let hours: Vec<i64> = if first == last {
            vec![first]
        } else {
            let mut hours: Vec<i64> = samples().map(hour_of).collect();
            hours.sort_unstable();
            hours.dedup();
            hours
        };
        let mut committed = Vec::new();
        for hour in hours {
            let key = PartitionKey {
                site: site.clone(),
                line: line.clone(),
                hour,
            };
            let partition = self
                .partitions
                .entry(key.clone())
                .or_insert_with(|| Partition {
                    rows: TelemetryBuffer::default(),
                    opened: now,
                });
            let added = partition
                .rows
                .append(batch, |ts| ts.div_euclid(HOUR_US) == hour);
            self.buffered_rows += added;
            if partition.rows.rows() >= self.options.roll_rows.get() {
                committed.push(self.commit(&key)?);
            }
        }
        while self.buffered_rows > self.options.max_buffered_rows.get() {
            let Some(largest) = self
                .partitions
                .iter()
                .max_by_key(|(_, p)| p.rows.rows())
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            committed.push(self.commit(&largest)?);
        }
        Ok(committed)
    }

    /// Commits every partition opened at least `roll_age` before `now`.
    pub fn roll_due(&mut self, now: Instant) -> Result<Vec<CommitRecord>> {
        let due: Vec<PartitionKey> = self
            .partitions
            .iter()
            .filter(|(_, p)| now.duration_since(p.opened) >= self.options.roll_age)
            .map(|(k, _)| k.clone())
            .collect();
        due.iter().map(|key| self.commit(key)).collect()
    }

    /// Commits every buffered row.
    pub fn flush(&mut self) -> Result<Vec<CommitRecord>> {
        let all: Vec<PartitionKey> = self.partitions.keys().cloned().collect();
        all.iter().map(|key| self.commit(key)).collect()
    }

    /// When the oldest open partition is due to roll.
    pub fn next_roll(&self) -> Option<Instant> {
        self.partitions
            .values()
            .map(|p| p.opened + self.options.roll_age)
            .min()
    }

    fn commit(&mut self, key: &PartitionKey) -> Result<CommitRecord> {
        let Some(partition) = self.partitions.remove(key) else {
            return Err(Error::Internal(
                "commit of a partition that is not buffered".into(),
            ));
        };
        self.buffered_rows -= partition.rows.rows();
        let n = self.next_n;
        let dir_rel = key.dir()?;
        let dir = self.options.lake.join(&dir_rel);
        if !self.known_dirs.contains(&dir) {
            create_dir_durable(&dir)?;
            self.known_dirs.insert(dir.clone());
        }
        let name = format!("part-{}-{n:08}.parquet", self.options.ingest_id);
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(&name);
        let batch = partition
            .rows
            .to_record_batch()
            .map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })?;
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
            .with_properties(self.properties.clone())
            .with_skip_arrow_metadata(true);
        let mut writer = ArrowWriter::try_new_with_options(file, telemetry::schema(), options)
            .map_err(parquet_err)?;
        writer.write(&batch).map_err(parquet_err)?;
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(io(&tmp))?;
        let bytes = file.metadata().map_err(io(&tmp))?.len();
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)?;
        self.next_n += 1;
        let (min_ts_us, max_ts_us) = partition.rows.ts_range();
        let record = CommitRecord {
            v: 1,
            n,
            table: telemetry::TABLE.to_owned(),
            path: format!("{dir_rel}/{name}"),
            rows: partition.rows.rows() as u64,
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
        tracing::debug!(path = %record.path, rows = record.rows, bytes, "committed file");
        Ok(record)
    }
}

/// Reads a commit log. A torn last line (a crash mid-append) is ignored with a warning; a
/// bad line anywhere else is an error naming it.
pub fn read_commit_log(path: &Path) -> Result<Vec<CommitRecord>> {
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
fn create_dir_durable(dir: &Path) -> Result<()> {
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

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })
}
