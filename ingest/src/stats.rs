//! Counters shared between the ingest tasks and whoever watches them (the demo's progress
//! line, the exit report). Plain atomics: cheap to bump, cheap to read. `rows_committed`,
//! `files_committed` and `bytes_committed` keep meaning the telemetry table, as they did
//! before there were other tables; `tables` counts each table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::validate::RejectReason;
use crate::writer::TABLES;

/// Counters of one table.
#[derive(Debug, Default)]
struct TableCounters {
    rows: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

/// Live counters of one ingester.
#[derive(Debug, Default)]
pub struct IngestStats {
    messages_received: AtomicU64,
    messages_accepted: AtomicU64,
    samples_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    tables: [TableCounters; TABLES.len()],
    subscribed: AtomicBool,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub messages_received: u64,
    pub messages_accepted: u64,
    /// Samples of accepted messages (committed or still buffered).
    pub samples_accepted: u64,
    /// Rejected messages by reason (`undecodable`, `identity_mismatch`, ...).
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Rows, files and bytes committed to the `telemetry` table; `tables` has every table's.
    pub rows_committed: u64,
    pub files_committed: u64,
    pub bytes_committed: u64,
    /// Per table (`telemetry`, `inference`, `device_health`, `sim_labels`).
    pub tables: std::collections::BTreeMap<&'static str, TableSnapshot>,
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
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
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

impl IngestStats {
    pub(crate) fn received(&self) {
        self.messages_received.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn accepted(&self, samples: usize) {
        self.messages_accepted.fetch_add(1, Ordering::Relaxed);
        self.samples_accepted
            .fetch_add(samples as u64, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn counters(&self, table: &str) -> Option<&TableCounters> {
        let index = TABLES.iter().position(|t| *t == table)?;
        self.tables.get(index)
    }

    pub(crate) fn committed(&self, table: &str, rows: u64, bytes: u64) {
        if let Some(c) = self.counters(table) {
            c.rows.fetch_add(rows, Ordering::Relaxed);
            c.files.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self, table: &str, rows: u64) {
        if let Some(c) = self.counters(table) {
            c.dropped.fetch_add(rows, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Relaxed);
    }

    /// Whether the broker has granted the telemetry subscription on the current connection.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            messages_received: self.messages_received.load(Ordering::Relaxed),
            messages_accepted: self.messages_accepted.load(Ordering::Relaxed),
            samples_accepted: self.samples_accepted.load(Ordering::Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.rejected[r.index()].load(Ordering::Relaxed)))
                .collect(),
            rows_committed: self.tables[0].rows.load(Ordering::Relaxed),
            files_committed: self.tables[0].files.load(Ordering::Relaxed),
            bytes_committed: self.tables[0].bytes.load(Ordering::Relaxed),
            tables: TABLES
                .iter()
                .zip(&self.tables)
                .map(|(name, c)| {
                    (
                        *name,
                        TableSnapshot {
                            rows_committed: c.rows.load(Ordering::Relaxed),
                            files_committed: c.files.load(Ordering::Relaxed),
                            bytes_committed: c.bytes.load(Ordering::Relaxed),
                            rows_dropped: c.dropped.load(Ordering::Relaxed),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_table_and_keeps_telemetry_at_the_top() {
        let stats = IngestStats::default();
        stats.committed("telemetry", 100, 2000);
        stats.committed("inference", 3, 300);
        stats.committed("inference", 2, 200);
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
    }
}
