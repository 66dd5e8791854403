//! The command line of `loopline-ingest`. Every config key has a flag and a `LOOPLINE_INGEST_*`
//! environment variable; precedence is defaults < `--config` file < environment < flags.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;

use crate::config::IngestConfig;
use crate::{Error, Result};

/// Subscribes to Loopline telemetry over MQTT and writes it to a Hive-partitioned Parquet
/// lake that DuckDB, Polars, pyarrow and Spark read directly.
///
/// Files appear under <lake>/telemetry/site=…/line=…/date=…/hour=…/ once complete; each is
/// recorded in <lake>/_loopline/commits/<ingest-id>.log. SIGINT or SIGTERM commits what is
/// buffered and exits.
#[derive(Debug, Parser)]
#[command(name = "loopline-ingest", version)]
// These comments are `--help` text, where <placeholders> read naturally.
#[allow(rustdoc::invalid_html_tags)]
pub struct Cli {
    /// TOML config file (keys as in `--print-config`).
    #[arg(long, env = "LOOPLINE_INGEST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration and exit (status 0 when valid).
    #[arg(long)]
    pub check_config: bool,

    /// MQTT broker, mqtt://host:port.
    #[arg(long, env = "LOOPLINE_BROKER")]
    pub broker: Option<BrokerUrl>,
    /// Root folder of the Parquet lake.
    #[arg(long, env = "LOOPLINE_INGEST_LAKE")]
    pub lake: Option<PathBuf>,
    /// Name of this ingester, unique among those writing to one lake.
    #[arg(long, env = "LOOPLINE_INGEST_ID")]
    pub ingest_id: Option<String>,
    /// MQTT client id (default loopline-ingest-<ingest-id>).
    #[arg(long, env = "LOOPLINE_INGEST_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Subscribe through $share/<group>/… so several ingesters split the load.
    #[arg(long, env = "LOOPLINE_INGEST_SHARE_GROUP")]
    pub share_group: Option<String>,
    /// Rows per partition that trigger a file commit.
    #[arg(long, env = "LOOPLINE_INGEST_ROLL_ROWS")]
    pub roll_rows: Option<NonZeroUsize>,
    /// Longest a row waits before its file is committed (e.g. 15s).
    #[arg(long, env = "LOOPLINE_INGEST_ROLL_AGE", value_parser = loopline_common::duration::parse)]
    pub roll_age: Option<Duration>,
    /// Rows buffered over all partitions of all tables before the largest commits early.
    #[arg(long, env = "LOOPLINE_INGEST_MAX_BUFFERED_ROWS")]
    pub max_buffered_rows: Option<NonZeroUsize>,
    /// Messages larger than this many bytes are rejected.
    #[arg(long, env = "LOOPLINE_INGEST_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Samples further than this in the future are rejected (e.g. 24h).
    #[arg(long, env = "LOOPLINE_INGEST_MAX_CLOCK_SKEW", value_parser = loopline_common::duration::parse)]
    pub max_clock_skew: Option<Duration>,
    /// zstd level of the Parquet files, 1..=22.
    #[arg(long, env = "LOOPLINE_INGEST_ZSTD_LEVEL")]
    pub zstd_level: Option<i32>,
    /// Messages queued between the MQTT connection and the writer.
    #[arg(long, env = "LOOPLINE_INGEST_QUEUE_CAPACITY")]
    pub queue_capacity: Option<NonZeroUsize>,
    /// MQTT keep-alive (e.g. 15s).
    #[arg(long, env = "LOOPLINE_INGEST_KEEP_ALIVE", value_parser = loopline_common::duration::parse)]
    pub keep_alive: Option<Duration>,
    /// Log format: human or json.
    #[arg(long, env = "LOOPLINE_INGEST_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Write a JSON report of this run here at exit.
    #[arg(long, env = "LOOPLINE_INGEST_REPORT_FILE")]
    pub report_file: Option<PathBuf>,
}

impl Cli {
    /// The effective configuration: the file (if any), then environment and flags over it,
    /// checked.
    pub fn config(&self) -> Result<IngestConfig> {
        let mut config: IngestConfig = match &self.config {
            Some(path) => loopline_common::config::load_toml(path)?,
            None => IngestConfig::default(),
        };
        macro_rules! apply {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = &self.$field { config.$field = value.clone(); })*
            };
        }
        apply!(
            broker,
            lake,
            ingest_id,
            roll_rows,
            roll_age,
            max_buffered_rows,
            max_payload_bytes,
            max_clock_skew,
            zstd_level,
            queue_capacity,
            keep_alive,
            log_format,
        );
        if self.client_id.is_some() {
            config.client_id = self.client_id.clone();
        }
        if self.share_group.is_some() {
            config.share_group = self.share_group.clone();
        }
        if self.report_file.is_some() {
            config.report_file = self.report_file.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

/// The configuration as TOML, for `--print-config`.
pub fn to_toml(config: &IngestConfig) -> Result<String> {
    toml::to_string(config).map_err(|e| Error::Internal(e.to_string()))
}
