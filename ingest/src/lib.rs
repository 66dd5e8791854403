//! `loopline-ingest`: MQTT telemetry in, a Hive-partitioned Parquet lake out.
//!
//! How this crate is laid out:
//! - [`config`]: what the ingester can be told, with defaults and checks.
//! - [`cli`]: the command line, merged over the config file and the environment.
//! - [`validate`]: decoding and checking one message; every rejection has a reason, and an
//!   out-of-range inference, health snapshot or label is left out without losing the samples.
//! - [`table`]: what every table shares: the row buffer contract, dictionary strings, reading
//!   a file back.
//! - [`telemetry`], [`inference`], [`device_health`], [`sim_labels`]: one module per table:
//!   its schema, the row buffer of one file, and `read_file` to read one back.
//! - [`quarantine`]: the table of messages the lake could not take as they were.
//! - [`writer`]: partitions, rolling, durable file commits and the commit log, once for every
//!   table; it also de-duplicates, with the state in [`dedup`].
//! - [`acks`]: which received messages are durable and may be acknowledged, in order.
//! - [`service`]: the running process: MQTT 5 task with manual acknowledgements, bounded
//!   queue, writer task, shutdown.
//! - [`metrics`]: Prometheus `/metrics` and `/healthz`.
//! - [`compact`]: merges the small files of closed partitions and swaps each folder atomically,
//!   beside live ingesters; [`lock`] is how the two stay out of each other's way.
//! - [`stats`]: counters shared with whoever watches (progress line, exit report).

pub mod acks;
pub mod cli;
pub mod compact;
pub mod config;
pub mod dedup;
pub mod device_health;
pub mod inference;
pub mod lock;
pub mod metrics;
pub mod quarantine;
pub mod service;
pub mod sim_labels;
pub mod stats;
pub mod table;
pub mod telemetry;
pub mod validate;
pub mod writer;

use std::path::PathBuf;

pub use config::IngestConfig;
pub use service::{IngestReport, run};
pub use stats::{IngestStats, StatsSnapshot};

/// Errors of the ingest library; each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config key {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing Parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("building the rows of {path}: {source}")]
    Arrow {
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("commit log {path}, line {line}: {message}")]
    CommitLog {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("compacting {path}: {message}")]
    Compact { path: PathBuf, message: String },
    #[error("hour {hour} since the epoch cannot be a partition")]
    TimestampOutOfRange { hour: i64 },
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error(transparent)]
    Common(#[from] loopline_common::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
