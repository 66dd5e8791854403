//! Counters shared between the ingest tasks and whoever watches them (`/metrics`, the demo's
//! progress line, the exit report), kept in one Prometheus registry. `rows_committed`,
//! `files_committed` and `bytes_committed` of a snapshot keep meaning the telemetry table, as
//! they did before there were other tables; `tables` counts each table.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::dedup::DedupSize;
use crate::validate::RejectReason;
use crate::writer::TABLES;

/// One label, e.g. `table="telemetry"`.
type Label = [(&'static str, &'static str); 1];
type Counters = Family<Label, Counter>;

/// Metric names without the registry's `loopline_ingest` prefix; `docs/configuration.md`
/// lists them in full.
pub mod name {
    pub const MESSAGES_RECEIVED: &str = "messages_received";
    pub const MESSAGES_ACCEPTED: &str = "messages_accepted";
    pub const SAMPLES_ACCEPTED: &str = "samples_accepted";
    pub const MESSAGES_ACKED: &str = "messages_acked";
    pub const QUARANTINED: &str = "quarantined";
    pub const DUPLICATES: &str = "duplicate_messages";
    pub const DUPLICATE_PARTS: &str = "duplicate_parts";
    pub const ROWS: &str = "rows_committed";
    pub const FILES: &str = "files_committed";
    pub const BYTES: &str = "bytes_committed";
    pub const ROWS_DROPPED: &str = "rows_dropped";
    pub const RECONNECTS: &str = "reconnects";
    pub const ACK_LAG: &str = "ack_lag_seconds";
    pub const COMMIT_LATENCY: &str = "commit_latency_seconds";
    pub const UNACKED: &str = "unacked_messages";
    pub const BUFFERED_ROWS: &str = "buffered_rows";
    pub const BUFFERED_BYTES: &str = "buffered_bytes";
    pub const DEDUP_SOURCES: &str = "dedup_sources";
    pub const SUBSCRIBED: &str = "subscribed";
}

/// Live counters of one ingester, kept in a Prometheus registry: `/metrics` encodes it, and
/// [`IngestStats::snapshot`] reads the same counters for the progress line and the report.
#[derive(Debug)]
pub struct IngestStats {
    registry: Registry,
    messages_received: Counter,
    messages_accepted: Counter,
    samples_accepted: Counter,
    messages_acked: Counter,
    quarantined: Counters,
    duplicates: Counter,
    duplicate_parts: Counter,
    rows: Counters,
    files: Counters,
    bytes: Counters,
    rows_dropped: Counters,
    reconnects: Counter,
    ack_lag: Histogram,
    commit_latency: Histogram,
    unacked: Gauge,
    buffered_rows: Gauge,
    buffered_bytes: Gauge,
    dedup_sources: Gauge,
    subscribed: Gauge,
}

impl Default for IngestStats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("loopline_ingest");
        macro_rules! register {
            ($metric:expr, $name:expr, $help:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        // 1 ms .. ~65 s: a commit is milliseconds, an acknowledgement waits up to roll_age.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let stats = IngestStats {
            messages_received: register!(
                Counter::default(),
                name::MESSAGES_RECEIVED,
                "MQTT messages received on the telemetry subscription."
            ),
            messages_accepted: register!(
                Counter::default(),
                name::MESSAGES_ACCEPTED,
                "Messages that passed every check."
            ),
            samples_accepted: register!(
                Counter::default(),
                name::SAMPLES_ACCEPTED,
                "Samples of accepted messages."
            ),
            messages_acked: register!(
                Counter::default(),
                name::MESSAGES_ACKED,
                "Messages acknowledged to the broker, each after its rows were committed."
            ),
            quarantined: register!(
                Counters::default(),
                name::QUARANTINED,
                "Messages put in the quarantine table, by reason."
            ),
            duplicates: register!(
                Counter::default(),
                name::DUPLICATES,
                "Messages whose every row the lake already held or buffered (redeliveries)."
            ),
            duplicate_parts: register!(
                Counter::default(),
                name::DUPLICATE_PARTS,
                "Parts (a message's rows of one table and hour) skipped as duplicates."
            ),
            rows: register!(
                Counters::default(),
                name::ROWS,
                "Rows committed to the lake, by table."
            ),
            files: register!(
                Counters::default(),
                name::FILES,
                "Parquet files committed, by table."
            ),
            bytes: register!(
                Counters::default(),
                name::BYTES,
                "Bytes of Parquet files committed, by table."
            ),
            rows_dropped: register!(
                Counters::default(),
                name::ROWS_DROPPED,
                "Out-of-range rows left out of accepted messages, by table (the message is in quarantine)."
            ),
            reconnects: register!(
                Counter::default(),
                name::RECONNECTS,
                "Broker connections lost."
            ),
            ack_lag: register!(
                seconds(),
                name::ACK_LAG,
                "Time from receiving a message to acknowledging it."
            ),
            commit_latency: register!(
                seconds(),
                name::COMMIT_LATENCY,
                "Time to write, fsync, rename and log one file."
            ),
            unacked: register!(
                Gauge::default(),
                name::UNACKED,
                "Messages received and waiting for their files' commit."
            ),
            buffered_rows: register!(
                Gauge::default(),
                name::BUFFERED_ROWS,
                "Rows buffered, not yet in any file."
            ),
            buffered_bytes: register!(
                Gauge::default(),
                name::BUFFERED_BYTES,
                "Memory taken by buffered rows."
            ),
            dedup_sources: register!(
                Gauge::default(),
                name::DEDUP_SOURCES,
                "Device boots and tables the de-duplication state tracks."
            ),
            subscribed: register!(
                Gauge::default(),
                name::SUBSCRIBED,
                "1 while the broker has granted the telemetry subscription."
            ),
            registry,
        };
        // Every label from the start, so a scrape shows 0 rather than nothing.
        for table in TABLES {
            for family in [&stats.rows, &stats.files, &stats.bytes, &stats.rows_dropped] {
                drop(family.get_or_create(&[("table", table)]));
            }
        }
        for reason in quarantine_reasons() {
            drop(stats.quarantined.get_or_create(&[("reason", reason)]));
        }
        stats
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub messages_received: u64,
    pub messages_accepted: u64,
    /// Samples of accepted messages (committed or still buffered).
    pub samples_accepted: u64,
    /// Messages acknowledged to the broker, each after its rows were committed.
    pub messages_acked: u64,
    /// Quarantined messages by reason (`undecodable`, `identity_mismatch`, ...,
    /// `partial_out_of_range`).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Messages whose every row was already in the lake or buffered.
    pub duplicate_messages: u64,
    /// Rows, files and bytes committed to the `telemetry` table; `tables` has every table's.
    pub rows_committed: u64,
    pub files_committed: u64,
    pub bytes_committed: u64,
    /// Per table (`telemetry`, `inference`, `device_health`, `sim_labels`, `quarantine`).
    pub tables: BTreeMap<&'static str, TableSnapshot>,
}

/// What one table received, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TableSnapshot {
    pub rows_committed: u64,
    pub files_committed: u64,
    pub bytes_committed: u64,
    /// Rows of accepted messages left out as out of range (see
    /// [`crate::validate::DroppedPart`]); always 0 for `telemetry`, whose bad samples reject
    /// the whole message.
    pub rows_dropped: u64,
}

impl StatsSnapshot {
    /// Messages quarantined as a whole (rejected), over all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .filter(|(reason, _)| **reason != crate::quarantine::PARTIAL_OUT_OF_RANGE)
            .map(|(_, n)| n)
            .sum()
    }

    /// Rows left out of accepted messages, over all tables.
    pub fn rows_dropped_total(&self) -> u64 {
        self.tables.values().map(|t| t.rows_dropped).sum()
    }

    /// One table's counters; zero for a table never written.
    pub fn table(&self, table: &str) -> TableSnapshot {
        self.tables.get(table).copied().unwrap_or_default()
    }
}

/// Every reason a message can be quarantined for, as the counters name them.
fn quarantine_reasons() -> impl Iterator<Item = &'static str> {
    RejectReason::ALL
        .iter()
        .map(|r| r.as_str())
        .chain([crate::quarantine::PARTIAL_OUT_OF_RANGE])
}

fn table_label(table: &str) -> Option<Label> {
    TABLES
        .iter()
        .find(|t| **t == table)
        .map(|t| [("table", *t)])
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl IngestStats {
    pub(crate) fn received(&self) {
        self.messages_received.inc();
    }

    pub(crate) fn accepted(&self, samples: usize) {
        self.messages_accepted.inc();
        self.samples_accepted.inc_by(samples as u64);
    }

    pub(crate) fn quarantined(&self, reason: &'static str) {
        self.quarantined.get_or_create(&[("reason", reason)]).inc();
    }

    pub(crate) fn duplicates(&self, whole_message: bool, parts: usize) {
        if whole_message {
            self.duplicates.inc();
        }
        self.duplicate_parts.inc_by(parts as u64);
    }

    pub(crate) fn acked(&self, messages: usize, lags: impl Iterator<Item = Duration>) {
        self.messages_acked.inc_by(messages as u64);
        for lag in lags {
            self.ack_lag.observe(lag.as_secs_f64());
        }
    }

    pub(crate) fn committed(&self, table: &str, rows: u64, bytes: u64, took: Duration) {
        if let Some(label) = table_label(table) {
            self.rows.get_or_create(&label).inc_by(rows);
            self.files.get_or_create(&label).inc();
            self.bytes.get_or_create(&label).inc_by(bytes);
        }
        self.commit_latency.observe(took.as_secs_f64());
    }

    pub(crate) fn dropped(&self, table: &str, rows: u64) {
        if let Some(label) = table_label(table) {
            self.rows_dropped.get_or_create(&label).inc_by(rows);
        }
    }

    pub(crate) fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// Sets the gauges of what is held in memory.
    pub(crate) fn held(&self, unacked: usize, rows: usize, bytes: usize, dedup: DedupSize) {
        self.unacked.set(gauge_value(unacked));
        self.buffered_rows.set(gauge_value(rows));
        self.buffered_bytes.set(gauge_value(bytes));
        self.dedup_sources.set(gauge_value(dedup.sources));
    }

    pub(crate) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.set(i64::from(subscribed));
    }

    /// Whether the broker has granted the telemetry subscription on the current connection.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.get() == 1
    }

    /// Messages received and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        u64::try_from(self.unacked.get()).unwrap_or(0)
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let table = |t: &'static str| {
            let label = [("table", t)];
            TableSnapshot {
                rows_committed: self.rows.get_or_create(&label).get(),
                files_committed: self.files.get_or_create(&label).get(),
                bytes_committed: self.bytes.get_or_create(&label).get(),
                rows_dropped: self.rows_dropped.get_or_create(&label).get(),
            }
        };
        let tables: BTreeMap<&'static str, TableSnapshot> =
            TABLES.iter().map(|t| (*t, table(t))).collect();
        let telemetry = tables
            .get(crate::telemetry::TABLE)
            .copied()
            .unwrap_or_default();
        StatsSnapshot {
            messages_received: self.messages_received.get(),
            messages_accepted: self.messages_accepted.get(),
            samples_accepted: self.samples_accepted.get(),
            messages_acked: self.messages_acked.get(),
            rejected: quarantine_reasons()
                .map(|r| (r, self.quarantined.get_or_create(&[("reason", r)]).get()))
                .collect(),
            duplicate_messages: self.duplicates.get(),
            rows_committed: telemetry.rows_committed,
            files_committed: telemetry.files_committed,
            bytes_committed: telemetry.bytes_committed,
            tables,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_table_and_keeps_telemetry_at_the_top() {
        let stats = IngestStats::default();
        let ms = Duration::from_millis(3);
        stats.committed("telemetry", 100, 2000, ms);
        stats.committed("inference", 3, 300, ms);
        stats.committed("inference", 2, 200, ms);
        stats.quarantined("undecodable");
        stats.quarantined(crate::quarantine::PARTIAL_OUT_OF_RANGE);
        stats.dropped("device_health", 1);
        let s = stats.snapshot();
        assert_eq!(
            (s.rows_committed, s.files_committed, s.bytes_committed),
            (100, 1, 2000)
        );
        assert_eq!(
            s.table("inference"),
            TableSnapshot {
                rows_committed: 5,
                files_committed: 2,
                bytes_committed: 500,
                rows_dropped: 0
            }
        );
        assert_eq!(s.table("device_health").rows_dropped, 1);
        assert_eq!(s.rows_dropped_total(), 1);
        assert_eq!(s.tables.len(), TABLES.len());
        assert_eq!(s.rejected["undecodable"], 1);
        assert_eq!(s.rejected_total(), 1, "a partial drop is not a rejection");
        let text = stats.encode();
        for line in [
            "loopline_ingest_rows_committed_total{table=\"telemetry\"} 100",
            "loopline_ingest_files_committed_total{table=\"inference\"} 2",
            "loopline_ingest_quarantined_total{reason=\"undecodable\"} 1",
            "loopline_ingest_commit_latency_seconds_count 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
