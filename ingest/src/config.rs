//! Ingest configuration: defaults, then the TOML file, then `LOOPLINE_INGEST_*` environment
//! variables, then flags. Parsed into typed values once; nothing later re-checks them.

use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;
use loopline_common::tls::TlsConfig;
use serde::{Deserialize, Serialize};

use crate::dedup::DedupLimits;
use crate::writer::WriterOptions;
use crate::{Error, Result};

/// Everything `loopline-ingest` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// MQTT broker to subscribe to, `mqtt://host:port`.
    pub broker: BrokerUrl,
    /// Root folder of the Parquet lake. Created if missing.
    pub lake: PathBuf,
    /// Names this ingester in file names and its commit log; unique per process writing to
    /// the same lake. ASCII letters, digits, `_`, `.`, `-`.
    pub ingest_id: String,
    /// MQTT client id; defaults to `loopline-ingest-<ingest_id>`.
    pub client_id: Option<String>,
    /// When set, subscribe through the MQTT shared subscription
    /// `$share/<share_group>/loopline/v1/+/+/+/telemetry`, so several ingesters split the load.
    pub share_group: Option<String>,
    /// A file is committed once its partition (of any table) buffers this many rows.
    pub roll_rows: NonZeroUsize,
    /// A file is committed at the latest this long after its first row was buffered: the
    /// bound on how stale the lake is.
    #[serde(with = "loopline_common::duration")]
    pub roll_age: Duration,
    /// A file is committed once its partition's buffered rows take this much memory (about
    /// 38 bytes a telemetry row).
    pub roll_bytes: ByteSize,
    /// Rows buffered over all partitions of all tables before the largest is committed early.
    pub max_buffered_rows: NonZeroUsize,
    /// Memory the buffered rows of all partitions may take before the largest is committed
    /// early: with `queue_bytes`, the ingester's memory budget.
    pub max_buffered_bytes: ByteSize,
    /// Messages larger than this are rejected as oversized.
    pub max_payload_bytes: usize,
    /// Samples stamped further than this in the future (by this host's clock) are rejected.
    #[serde(with = "loopline_common::duration")]
    pub max_clock_skew: Duration,
    /// zstd level of the Parquet files (1 fastest .. 22 smallest).
    pub zstd_level: i32,
    /// Messages held between the MQTT connection and the writer; when full, the connection
    /// stops reading and the broker holds the rest.
    pub queue_capacity: NonZeroUsize,
    /// Payload bytes held between the MQTT connection and the writer, the other bound on that
    /// queue.
    pub queue_bytes: ByteSize,
    /// Messages received and not yet acknowledged (they wait for their file's commit): sent
    /// to the broker as MQTT 5 Receive Maximum. When three quarters are waiting, the files
    /// they wait on are committed early. Also what can sit ahead of a PINGRESP on the
    /// connection: ingest must get through it within a keep-alive.
    pub max_unacked: NonZeroU16,
    /// How long the broker keeps this ingester's session, and queues its messages, while it
    /// is disconnected (MQTT 5 session expiry). `0s` ends the session at disconnect.
    #[serde(with = "loopline_common::duration")]
    pub session_expiry: Duration,
    /// A device boot that committed nothing for this long (before the newest commit) is
    /// forgotten by de-duplication.
    #[serde(with = "loopline_common::duration")]
    pub dedup_window: Duration,
    /// Seq ranges kept per device boot and table for de-duplication; the oldest beyond it are
    /// forgotten (only a very late duplicate can then get through, never a row be lost).
    pub dedup_max_ranges: NonZeroUsize,
    /// Longest payload kept in a quarantine row; longer ones are cut (the row keeps the full
    /// size).
    pub quarantine_max_payload_bytes: ByteSize,
    /// Serve Prometheus `/metrics` and `/healthz` on this address (e.g. `127.0.0.1:9101`);
    /// unset serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// PEM CA bundle to trust for an `mqtts://` broker.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for brokers that authenticate by certificate (needs
    /// `tls_client_key_file`).
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<PathBuf>,
    /// MQTT keep-alive. The broker's answer to a ping queues behind the messages already on
    /// their way, so under a backlog it must leave time to take them in.
    #[serde(with = "loopline_common::duration")]
    pub keep_alive: Duration,
    /// Log format on stderr: `human` or `json`.
    pub log_format: LogFormat,
    /// Where to write a JSON report of what this run received and committed, at exit.
    pub report_file: Option<PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            broker: BrokerUrl::new("127.0.0.1", 1883),
            lake: PathBuf::from("loopline-lake"),
            ingest_id: "ingest-1".to_owned(),
            client_id: None,
            share_group: None,
            roll_rows: NonZeroUsize::new(1_000_000).unwrap_or(NonZeroUsize::MIN),
            roll_age: Duration::from_secs(15),
            roll_bytes: ByteSize::mib(64),
            max_buffered_rows: NonZeroUsize::new(4_000_000).unwrap_or(NonZeroUsize::MIN),
            max_buffered_bytes: ByteSize::mib(256),
            max_payload_bytes: 8 * 1024 * 1024,
            max_clock_skew: Duration::from_secs(24 * 3600),
            zstd_level: 3,
            queue_capacity: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            queue_bytes: ByteSize::mib(64),
            max_unacked: NonZeroU16::new(2048).unwrap_or(NonZeroU16::MIN),
            session_expiry: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(7 * 24 * 3600),
            dedup_max_ranges: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            quarantine_max_payload_bytes: ByteSize::mib(1),
            metrics_listen: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            keep_alive: Duration::from_secs(60),
            log_format: LogFormat::Human,
            report_file: None,
        }
    }
}

impl IngestConfig {
    /// Checks what types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Config { key, message });
        if let Err(e) = loopline_proto::topic::validate_segment("ingest_id", &self.ingest_id) {
            return bad("ingest_id", e.to_string());
        }
        if let Some(group) = &self.share_group
            && (group.is_empty() || group.contains(['/', '+', '#']))
        {
            return bad(
                "share_group",
                format!("{group:?} must be non-empty and free of '/', '+' and '#'"),
            );
        }
        if self.roll_age < Duration::from_millis(10) {
            return bad("roll_age", "must be at least 10ms".into());
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad(
                "zstd_level",
                format!("{} is not in 1..=22", self.zstd_level),
            );
        }
        if self.max_payload_bytes == 0
            || self.max_payload_bytes > loopline_common::broker::MAX_PACKET_BYTES
        {
            return bad(
                "max_payload_bytes",
                format!(
                    "{} is not in 1..={}",
                    self.max_payload_bytes,
                    loopline_common::broker::MAX_PACKET_BYTES
                ),
            );
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive > Duration::from_secs(65_535)
        {
            return bad(
                "keep_alive",
                "must be from 5s (the MQTT 5 client's floor) to 65535s (MQTT counts it in whole seconds, 16 bits)".into(),
            );
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 256 || id.contains(char::is_whitespace))
        {
            return bad(
                "client_id",
                format!("{id:?} must be 1 to 256 characters without whitespace"),
            );
        }
        if self.session_expiry > Duration::from_secs(u64::from(u32::MAX)) {
            return bad(
                "session_expiry",
                "must be at most 4294967295s (MQTT counts it in seconds, 32 bits)".into(),
            );
        }
        if self.max_buffered_bytes < self.roll_bytes {
            return bad(
                "max_buffered_bytes",
                format!(
                    "{} is below roll_bytes = {}: files would never reach roll_bytes",
                    self.max_buffered_bytes, self.roll_bytes
                ),
            );
        }
        if self.queue_bytes.as_u64() < self.max_payload_bytes as u64 {
            return bad(
                "queue_bytes",
                format!(
                    "{} is below max_payload_bytes = {}: the largest message could never be queued",
                    self.queue_bytes, self.max_payload_bytes
                ),
            );
        }
        if self.roll_bytes.as_u64() == 0 {
            return bad("roll_bytes", "must be above 0".into());
        }
        if self.max_buffered_rows < self.roll_rows {
            return bad(
                "max_buffered_rows",
                format!(
                    "{} is below roll_rows = {}: files would never reach roll_rows",
                    self.max_buffered_rows, self.roll_rows
                ),
            );
        }
        Ok(())
    }

    /// The MQTT client id in effect.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("loopline-ingest-{}", self.ingest_id))
    }

    /// The subscription filter in effect.
    pub fn filter(&self) -> String {
        match &self.share_group {
            Some(group) => loopline_proto::topic::shared_telemetry_filter(group),
            None => loopline_proto::topic::TELEMETRY_FILTER.to_owned(),
        }
    }

    /// The TLS files in effect.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.tls_ca_file.clone(),
            client_cert_file: self.tls_client_cert_file.clone(),
            client_key_file: self.tls_client_key_file.clone(),
        }
    }

    pub(crate) fn writer_options(&self) -> WriterOptions {
        let bytes = |b: ByteSize| usize::try_from(b.as_u64()).unwrap_or(usize::MAX);
        WriterOptions {
            lake: self.lake.clone(),
            ingest_id: self.ingest_id.clone(),
            roll_rows: self.roll_rows,
            roll_age: self.roll_age,
            max_buffered_rows: self.max_buffered_rows,
            roll_bytes: bytes(self.roll_bytes),
            max_buffered_bytes: bytes(self.max_buffered_bytes),
            zstd_level: self.zstd_level,
            dedup: DedupLimits {
                window_us: i64::try_from(self.dedup_window.as_micros()).unwrap_or(i64::MAX),
                max_ranges: self.dedup_max_ranges.get(),
            },
            quarantine_max_payload_bytes: bytes(self.quarantine_max_payload_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_loads_and_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ingest.example.toml");
        let config: IngestConfig = loopline_common::config::load_toml(&path).unwrap();
        config.validate().unwrap();
        assert_eq!(config.share_group.as_deref(), Some("loopline-ingest"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&str, IngestConfig); 5] = [
            (
                "keep_alive",
                IngestConfig {
                    keep_alive: Duration::from_secs(3),
                    ..Default::default()
                },
            ),
            (
                "keep_alive",
                IngestConfig {
                    keep_alive: Duration::from_secs(100_000),
                    ..Default::default()
                },
            ),
            (
                "client_id",
                IngestConfig {
                    client_id: Some(String::new()),
                    ..Default::default()
                },
            ),
            (
                "ingest_id",
                IngestConfig {
                    ingest_id: "a/b".into(),
                    ..Default::default()
                },
            ),
            (
                "zstd_level",
                IngestConfig {
                    zstd_level: 0,
                    ..Default::default()
                },
            ),
        ];
        for (key, config) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("config key {key}:")), "{err}");
        }
        let small = IngestConfig {
            max_buffered_rows: NonZeroUsize::new(10).unwrap(),
            ..Default::default()
        };
        assert!(
            small
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_buffered_rows")
        );
    }
}
