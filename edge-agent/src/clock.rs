//! The agent's clock: wall-clock time at start-up plus the monotonic time elapsed since.
//!
//! Sample timestamps, `sealed_ts_us` and status times all come from here. Anchoring to a
//! monotonic clock means a wall-clock step (NTP, an RTC set late on a board without battery)
//! never makes timestamps jump or repeat within a run; injecting the start time and using
//! tokio's clock makes runs reproducible in tests (`tokio::time::pause`).

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Microseconds since the Unix epoch, from the system clock (0 if it is set before 1970).
pub fn wall_clock_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Start time of a run and the monotonic instant it corresponds to.
#[derive(Debug, Clone, Copy)]
pub struct AgentClock {
    t0_us: i64,
    start: Instant,
}

impl AgentClock {
    /// A clock that reads `t0_us` now.
    pub fn starting_at(t0_us: i64) -> Self {
        AgentClock {
            t0_us,
            start: Instant::now(),
        }
    }

    /// Wall-clock time at start, µs since the epoch: the timestamp of sample 0.
    pub fn t0_us(&self) -> i64 {
        self.t0_us
    }

    /// The monotonic instant of start.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Microseconds since the epoch, now.
    pub fn now_us(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.t0_us.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn advances_with_tokio_time() {
        let clock = AgentClock::starting_at(1_000);
        assert_eq!(clock.now_us(), 1_000);
        tokio::time::advance(Duration::from_millis(3)).await;
        assert_eq!(clock.now_us(), 4_000);
    }
}
