//! Counters shared by every device task of one or more agents.
//!
//! Atomics behind an `Arc`, so that the in-process demo can hand one [`AgentStats`] to several
//! agents and read totals while they run. Names make durability visible: `*_sealed` is what
//! the sensors produced, `*_acked` what the broker acknowledged, `lost_*` what neither made it
//! nor can still make it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters; cheap to update, cheap to read with [`AgentStats::snapshot`].
#[derive(Debug, Default)]
pub struct AgentStats {
    batches_sealed: AtomicU64,
    samples_sealed: AtomicU64,
    batches_acked: AtomicU64,
    samples_acked: AtomicU64,
    connection_errors: AtomicU64,
    lost_batches: AtomicU64,
    lost_samples: AtomicU64,
    windows_scored: AtomicU64,
    anomalies: AtomicU64,
}

/// A point-in-time copy of [`AgentStats`]. Samples count every value of every channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Batches sealed from the sensors' samples.
    pub batches_sealed: u64,
    pub samples_sealed: u64,
    /// Batches whose PUBACK arrived: the broker has them.
    pub batches_acked: u64,
    pub samples_acked: u64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: u64,
    /// Batches given up on: dropped from a full buffer, or unacknowledged at shutdown.
    pub lost_batches: u64,
    pub lost_samples: u64,
    /// Inference windows the model scored, and those it flagged as anomalous.
    pub windows_scored: u64,
    pub anomalies: u64,
}

impl AgentStats {
    pub fn new() -> Self {
        AgentStats::default()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            batches_sealed: get(&self.batches_sealed),
            samples_sealed: get(&self.samples_sealed),
            batches_acked: get(&self.batches_acked),
            samples_acked: get(&self.samples_acked),
            connection_errors: get(&self.connection_errors),
            lost_batches: get(&self.lost_batches),
            lost_samples: get(&self.lost_samples),
            windows_scored: get(&self.windows_scored),
            anomalies: get(&self.anomalies),
        }
    }

    pub(crate) fn sealed(&self, samples: u64) {
        self.batches_sealed.fetch_add(1, Ordering::Relaxed);
        self.samples_sealed.fetch_add(samples, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, samples: u64) {
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.samples_acked.fetch_add(samples, Ordering::Relaxed);
    }

    pub(crate) fn scored(&self, windows: u64, anomalies: u64) {
        self.windows_scored.fetch_add(windows, Ordering::Relaxed);
        self.anomalies.fetch_add(anomalies, Ordering::Relaxed);
    }

    pub(crate) fn connection_error(&self) {
        self.connection_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn lost(&self, batches: u64, samples: u64) {
        self.lost_batches.fetch_add(batches, Ordering::Relaxed);
        self.lost_samples.fetch_add(samples, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_what_was_counted() {
        let stats = AgentStats::new();
        stats.sealed(40);
        stats.sealed(40);
        stats.acked(40);
        stats.connection_error();
        stats.lost(1, 40);
        assert_eq!(
            stats.snapshot(),
            StatsSnapshot {
                batches_sealed: 2,
                samples_sealed: 80,
                batches_acked: 1,
                samples_acked: 40,
                connection_errors: 1,
                lost_batches: 1,
                lost_samples: 40,
                windows_scored: 0,
                anomalies: 0,
            }
        );
    }
}
