//! Ingest configuration: defaults, then the TOML file, then `LOOPLINE_INGEST_*` environment
//! variables, then flags. Parsed into typed values once; nothing later re-checks them.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;
use serde::{Deserialize, Serialize};

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
    /// Rows buffered over all partitions of all tables before the largest is committed early:
    /// the memory budget (about 38 bytes a telemetry row; a health row, at most one per batch,
    /// takes about 140).
    pub max_buffered_rows: NonZeroUsize,
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
    /// MQTT keep-alive.
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
            max_buffered_rows: NonZeroUsize::new(4_000_000).unwrap_or(NonZeroUsize::MIN),
            max_payload_bytes: 8 * 1024 * 1024,
            max_clock_skew: Duration::from_secs(24 * 3600),
            zstd_level: 3,
            queue_capacity: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            keep_alive: Duration::from_secs(15),
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
        if self.keep_alive < Duration::from_secs(1) || self.keep_alive > Duration::from_secs(65_535)
        {
            return bad(
                "keep_alive",
                "must be from 1s to 65535s (MQTT counts it in whole seconds, 16 bits)".into(),
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

    pub(crate) fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            lake: self.lake.clone(),
            ingest_id: self.ingest_id.clone(),
            roll_rows: self.roll_rows,
            roll_age: self.roll_age,
            max_buffered_rows: self.max_buffered_rows,
            zstd_level: self.zstd_level,
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
        let cases: [(&str, IngestConfig); 4] = [
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
