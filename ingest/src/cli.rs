//! The command line of `loopline-ingest`. Every config key has a flag and a `LOOPLINE_INGEST_*`
//! environment variable; precedence is defaults < `--config` file < environment < flags.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
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
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Memory a partition's buffered rows take before its file is committed (e.g. 64MiB).
    #[arg(long, env = "LOOPLINE_INGEST_ROLL_BYTES")]
    pub roll_bytes: Option<ByteSize>,
    /// Rows buffered over all partitions of all tables before the largest commits early.
    #[arg(long, env = "LOOPLINE_INGEST_MAX_BUFFERED_ROWS")]
    pub max_buffered_rows: Option<NonZeroUsize>,
    /// Memory all buffered rows may take before the largest partition commits early.
    #[arg(long, env = "LOOPLINE_INGEST_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<ByteSize>,
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
    /// Payload bytes queued between the MQTT connection and the writer (e.g. 64MiB).
    #[arg(long, env = "LOOPLINE_INGEST_QUEUE_BYTES")]
    pub queue_bytes: Option<ByteSize>,
    /// Messages waiting for their commit before the broker pauses (MQTT 5 Receive Maximum).
    #[arg(long, env = "LOOPLINE_INGEST_MAX_UNACKED")]
    pub max_unacked: Option<NonZeroU16>,
    /// How long the broker keeps the session, and queues messages, while ingest is away.
    #[arg(long, env = "LOOPLINE_INGEST_SESSION_EXPIRY", value_parser = loopline_common::duration::parse)]
    pub session_expiry: Option<Duration>,
    /// How long de-duplication remembers a device boot that committed nothing (e.g. 7days).
    #[arg(long, env = "LOOPLINE_INGEST_DEDUP_WINDOW", value_parser = loopline_common::duration::parse)]
    pub dedup_window: Option<Duration>,
    /// Seq ranges de-duplication keeps per device boot and table.
    #[arg(long, env = "LOOPLINE_INGEST_DEDUP_MAX_RANGES")]
    pub dedup_max_ranges: Option<NonZeroUsize>,
    /// Longest payload kept in a quarantine row (e.g. 1MiB).
    #[arg(long, env = "LOOPLINE_INGEST_QUARANTINE_MAX_PAYLOAD_BYTES")]
    pub quarantine_max_payload_bytes: Option<ByteSize>,
    /// Serve Prometheus /metrics and /healthz here (e.g. 127.0.0.1:9101).
    #[arg(long, env = "LOOPLINE_INGEST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM CA bundle to trust for an mqtts:// broker.
    #[arg(long, env = "LOOPLINE_INGEST_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate by certificate.
    #[arg(long, env = "LOOPLINE_INGEST_TLS_CLIENT_CERT_FILE")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "LOOPLINE_INGEST_TLS_CLIENT_KEY_FILE")]
    pub tls_client_key_file: Option<PathBuf>,
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

/// What else `loopline-ingest` does besides ingesting.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Merge the small files of closed partitions into target-sized ones, swapping each
    /// partition folder atomically; safe beside running ingesters. Prints a JSON report.
    Compact(crate::compact::CompactArgs),
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
            roll_bytes,
            max_buffered_rows,
            max_buffered_bytes,
            max_payload_bytes,
            max_clock_skew,
            zstd_level,
            queue_capacity,
            queue_bytes,
            max_unacked,
            session_expiry,
            dedup_window,
            dedup_max_ranges,
            quarantine_max_payload_bytes,
            keep_alive,
            log_format,
        );
        macro_rules! apply_optional {
            ($($field:ident),* $(,)?) => {
                $(if self.$field.is_some() { config.$field = self.$field.clone(); })*
            };
        }
        apply_optional!(
            client_id,
            share_group,
            report_file,
            metrics_listen,
            tls_ca_file,
            tls_client_cert_file,
            tls_client_key_file,
        );
        config.validate()?;
        Ok(config)
    }
}

/// The configuration as TOML, for `--print-config`.
pub fn to_toml(config: &IngestConfig) -> Result<String> {
    toml::to_string(config).map_err(|e| Error::Internal(e.to_string()))
}
