//! Latency percentiles over a bounded ring of recent inferences.
//!
//! Invariants: memory is fixed at construction ([`LATENCY_RING`] samples plus as much scratch
//! space); recording is O(1) and never allocates; a window holding more inferences than the
//! ring reports on the most recent [`LATENCY_RING`] of them.

/// Latencies kept for the percentiles of one health window. 1024 covers a 10 s health interval
/// at 100 inferences per second; beyond that the most recent ones stand for the window.
pub const LATENCY_RING: usize = 1024;

/// The most recent latencies, and how many arrived since the window opened.
#[derive(Debug, Clone)]
pub(crate) struct LatencyRing {
    samples: Box<[u32]>,
    scratch: Box<[u32]>,
    next: usize,
    in_window: usize,
}

/// Latency percentiles of one window, µs; zero when the window saw no inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u32,
    /// 95th percentile.
    pub p95_us: u32,
    /// 99th percentile.
    pub p99_us: u32,
}

impl LatencyRing {
    pub fn new() -> Self {
        Self {
            samples: vec![0; LATENCY_RING].into_boxed_slice(),
            scratch: vec![0; LATENCY_RING].into_boxed_slice(),
            next: 0,
            in_window: 0,
        }
    }

    pub fn record(&mut self, latency_us: u32) {
        self.samples[self.next] = latency_us;
        self.next = (self.next + 1) % LATENCY_RING;
        self.in_window = self.in_window.saturating_add(1);
    }

    /// Percentiles of the window so far (nearest-rank), and opens a new window.
    pub fn take_window(&mut self) -> Percentiles {
        let n = self.in_window.min(LATENCY_RING);
        self.in_window = 0;
        if n == 0 {
            return Percentiles::default();
        }
        // The window's samples are the n before `next`, possibly wrapping.
        let start = (self.next + LATENCY_RING - n) % LATENCY_RING;
        let w = &mut self.scratch[..n];
        if start + n <= LATENCY_RING {
            w.copy_from_slice(&self.samples[start..start + n]);
        } else {
            let first = LATENCY_RING - start;
            w[..first].copy_from_slice(&self.samples[start..]);
            w[first..].copy_from_slice(&self.samples[..n - first]);
        }
        w.sort_unstable();
        Percentiles {
            p50_us: nearest_rank(w, 50),
            p95_us: nearest_rank(w, 95),
            p99_us: nearest_rank(w, 99),
        }
    }
}

/// The smallest sample with at least `pct` % of the samples at or below it.
fn nearest_rank(sorted: &[u32], pct: usize) -> u32 {
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let mut r = LatencyRing::new();
        // Recorded out of order, so sorting is exercised.
        for v in (1..=100).rev() {
            r.record(v);
        }
        let p = r.take_window();
        assert_eq!((p.p50_us, p.p95_us, p.p99_us), (50, 95, 99));
        assert_eq!(r.take_window(), Percentiles::default(), "window reopened");
    }

    #[test]
    fn small_windows_use_nearest_rank() {
        let mut r = LatencyRing::new();
        r.record(7);
        assert_eq!(r.take_window().p99_us, 7);
        for v in [10, 20, 30, 40] {
            r.record(v);
        }
        let p = r.take_window();
        assert_eq!((p.p50_us, p.p95_us, p.p99_us), (20, 40, 40));
    }

    #[test]
    fn overflowing_window_reports_the_most_recent_samples() {
        let mut r = LatencyRing::new();
        for _ in 0..5000 {
            r.record(1_000_000);
        }
        for v in 1..=LATENCY_RING as u32 {
            r.record(v);
        }
        let p = r.take_window();
        assert_eq!(p.p50_us, 512);
        assert_eq!(p.p99_us, 1014);
    }
}
