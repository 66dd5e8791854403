//! Counters shared between the ingest tasks and whoever watches them (the demo's progress
//! line, the exit report). Plain atomics: cheap to bump, cheap to read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::validate::RejectReason;

/// Live counters of one ingester.
#[derive(Debug, Default)]
pub struct IngestStats {
    messages_received: AtomicU64,
    messages_accepted: AtomicU64,
    samples_accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    rows_committed: AtomicU64,
    files_committed: AtomicU64,
    bytes_committed: AtomicU64,
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
    pub rows_committed: u64,
    pub files_committed: u64,
    pub bytes_committed: u64,
}

impl StatsSnapshot {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
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

    pub(crate) fn committed(&self, rows: u64, bytes: u64) {
        self.rows_committed.fetch_add(rows, Ordering::Relaxed);
        self.files_committed.fetch_add(1, Ordering::Relaxed);
        self.bytes_committed.fetch_add(bytes, Ordering::Relaxed);
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
            rows_committed: self.rows_committed.load(Ordering::Relaxed),
            files_committed: self.files_committed.load(Ordering::Relaxed),
            bytes_committed: self.bytes_committed.load(Ordering::Relaxed),
        }
    }
}
