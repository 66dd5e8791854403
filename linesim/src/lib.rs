//! Loopline's physical production-line simulator: machines, sensors, faults and ground-truth
//! labels, deterministic per seed.
//!
//! Each simulated device is a motor-driven centrifugal pump on a variable-speed drive. Its shaft
//! speed follows the recipe's setpoint through a first-order lag, and speed and load drive what
//! the sensors see: vibration (1x imbalance, 2x misalignment, bearing defect impulse trains at
//! BPFO/BPFI ringing a structural resonance, broadband noise), a first-order thermal model,
//! motor current on the supply sine, and pump pressure and flow by the affinity laws. Sensor
//! faults and process changes come from a scenario's schedule, and every sample carries the
//! ground-truth [`Label`] of what the simulator did.
//!
//! Invariants the edge agent relies on:
//! - Sample `k` is stamped `t0_us + k * 1_000_000 / rate`, computed from `k` in integer maths
//!   and never accumulated, so consecutive batches join without gap or overlap and a long run
//!   does not drift ([`sample_ts_us`], [`samples_before`]).
//! - Values depend only on the scenario, the seed, the device name and `k`. The simulator is a
//!   state machine consumed strictly in order; how a caller groups the calls into batches does
//!   not change a single bit.
//! - Labels are simulation-only ground truth. A real line has no such thing: nothing but model
//!   evaluation may read them, and the agent's model must never see them.
//!
//! How this crate is laid out:
//! - [`scenario`]: the scenario file (TOML, `deny_unknown_fields`, humantime durations), its
//!   validation into typed values, and the built-in named scenarios shipped in
//!   `linesim/scenarios/*.toml`.
//! - [`physics`]: the pieces of the machine model that are pure maths: bearing defect
//!   frequencies, the rotating phasor that replaces per-sample `sin`/`cos`, the resonance that
//!   bearing impacts ring, and the cheap noise generator.
//! - [`label`]: [`FaultKind`], the per-sample [`Label`] and [`LabelSpans`], which run-length
//!   codes labels into the spans a telemetry batch carries.
//! - [`sim`]: [`LineSim`], the per-device state machine that ties them together.
//!
//! Nothing here does I/O except [`Scenario::load`]; time is the sample index.
//!
//! ```
//! use std::num::NonZeroU32;
//! use loopline_linesim::{LabelSpans, LineSim, Scenario, samples_before};
//!
//! let scenario = Scenario::named("default")?;
//! let rate = NonZeroU32::new(1_000).unwrap();
//! let t0_us = 1_700_000_000_000_000;
//! let mut sim = LineSim::new(&scenario, 42, "pump-1", rate, t0_us);
//!
//! // Catch up to "now" (here 21 s in), as the agent does on each tick.
//! let now_us = t0_us + 21_000_000;
//! let mut batch = Vec::new();
//! sim.fill(samples_before(t0_us, rate, now_us), &mut batch);
//! assert_eq!(batch.len(), 21_000);
//!
//! // Ground truth for evaluation only: run-length spans over the batch.
//! let mut spans = LabelSpans::new();
//! for sample in &batch {
//!     spans.push(sample.ts_us, &sample.label);
//! }
//! let spans = spans.take(sim.ts_us(sim.next_k()));
//! assert_eq!(spans[0].fault, "normal");
//! assert_eq!(spans[1].fault, "recipe_change"); // 101 -> 102 at 20 s: not a fault
//! assert_eq!(spans[1].start_us, t0_us + 20_000_000);
//! assert_eq!(spans[1].end_us, t0_us + 21_000_000);
//! # Ok::<(), loopline_linesim::Error>(())
//! ```

pub mod label;
pub mod physics;
pub mod scenario;
pub mod sim;

use std::num::NonZeroU32;
use std::path::PathBuf;

pub use label::{FaultKind, Label, LabelSpan, LabelSpans};
pub use scenario::{Bearing, Event, EventKind, Machine, Recipe, Scenario};
pub use sim::{LineSim, MachineState, Sample};

/// Errors of this crate; every variant names the scenario or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario text is not valid TOML for the schema; the message names the line and key.
    #[error("scenario {origin}: {source}")]
    Parse {
        /// The file path, or which built-in scenario.
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The scenario parsed but a value is out of range or refers to something that is not there.
    #[error("scenario {origin}: `{key}` {reason}")]
    Invalid {
        /// The file path, or which built-in scenario.
        origin: String,
        /// The offending key, e.g. `event[2].sensor`.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// The scenario file could not be read.
    #[error("reading scenario file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`Scenario::named`] was asked for a name it does not ship.
    #[error("unknown scenario `{name}`; known scenarios: {known}")]
    UnknownScenario { name: String, known: String },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A channel's name (the `Channel.sensor` on the wire) and its UCUM-style unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelSpec {
    pub name: &'static str,
    pub unit: &'static str,
}

/// Number of channels every device reports.
pub const CHANNEL_COUNT: usize = 8;

/// The channels of every device, in the order of [`Sample::values`]. The order is part of the
/// contract: indices are also available as the constants in [`channel`].
///
/// Vibration is the velocity an accelerometer's integrating transmitter reports (mm/s,
/// instantaneous, as ISO 10816 evaluates it); current is the instantaneous phase current on the
/// supply sine; `speed_setpoint` and `recipe` are the operating context a PLC/MES publishes as
/// ordinary tags, exact values without noise.
pub const CHANNELS: [ChannelSpec; CHANNEL_COUNT] = [
    ChannelSpec {
        name: "vibration",
        unit: "mm/s",
    },
    ChannelSpec {
        name: "temperature",
        unit: "Cel",
    },
    ChannelSpec {
        name: "current",
        unit: "A",
    },
    ChannelSpec {
        name: "pressure",
        unit: "bar",
    },
    ChannelSpec {
        name: "flow",
        unit: "L/min",
    },
    ChannelSpec {
        name: "speed",
        unit: "rpm",
    },
    ChannelSpec {
        name: "speed_setpoint",
        unit: "rpm",
    },
    ChannelSpec {
        name: "recipe",
        unit: "1",
    },
];

/// Indices into [`CHANNELS`] and [`Sample::values`].
pub mod channel {
    pub const VIBRATION: usize = 0;
    pub const TEMPERATURE: usize = 1;
    pub const CURRENT: usize = 2;
    pub const PRESSURE: usize = 3;
    pub const FLOW: usize = 4;
    pub const SPEED: usize = 5;
    pub const SPEED_SETPOINT: usize = 6;
    pub const RECIPE: usize = 7;
    /// Channels that are physical sensors and can therefore have sensor faults; the last two
    /// are PLC/MES tags.
    pub const SENSORS: std::ops::Range<usize> = 0..6;
}

/// Index of the channel called `name`, if there is one.
pub fn channel_index(name: &str) -> Option<usize> {
    CHANNELS.iter().position(|c| c.name == name)
}

/// Timestamp of sample `k` at `rate_hz`, counted from `t0_us`: integer maths from `k`, so it
/// never drifts however long the run.
#[inline]
pub fn sample_ts_us(t0_us: i64, rate_hz: NonZeroU32, k: u64) -> i64 {
    // The u64 path covers 570 years at 1 kHz and is one division; i128 only past that.
    let offset = match k.checked_mul(1_000_000) {
        Some(scaled) => i128::from(scaled / u64::from(rate_hz.get())),
        None => i128::from(k) * 1_000_000 / i128::from(rate_hz.get()),
    };
    // Saturate rather than wrap: 2^63 µs is 292 000 years of samples.
    i64::try_from(i128::from(t0_us) + offset).unwrap_or(i64::MAX)
}

/// Number of samples stamped strictly before `now_us`: the index of the first sample that is
/// still in the future.
pub fn samples_before(t0_us: i64, rate_hz: NonZeroU32, now_us: i64) -> u64 {
    let elapsed = i128::from(now_us) - i128::from(t0_us);
    if elapsed <= 0 {
        return 0;
    }
    // floor(k * 1e6 / rate) < elapsed  <=>  k * 1e6 < elapsed * rate  (elapsed is an integer).
    let scaled = elapsed * i128::from(rate_hz.get());
    let count = (scaled + 999_999) / 1_000_000;
    u64::try_from(count).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_exact_from_the_index() {
        let rate = NonZeroU32::new(3).unwrap();
        assert_eq!(sample_ts_us(10, rate, 0), 10);
        assert_eq!(sample_ts_us(10, rate, 1), 10 + 333_333);
        assert_eq!(sample_ts_us(10, rate, 2), 10 + 666_666);
        assert_eq!(sample_ts_us(10, rate, 3), 10 + 1_000_000);
        let rate = NonZeroU32::new(48_000).unwrap();
        let k = 48_000u64 * 86_400 * 365;
        assert_eq!(sample_ts_us(0, rate, k), 86_400 * 365 * 1_000_000);
        // Past the u64 fast path the i128 path gives the same formula.
        let rate = NonZeroU32::new(1_000).unwrap();
        let k = u64::MAX / 100_000;
        assert!(k.checked_mul(1_000_000).is_none());
        assert_eq!(sample_ts_us(0, rate, k), i64::try_from(k * 1_000).unwrap());
        assert_eq!(sample_ts_us(0, rate, u64::MAX), i64::MAX);
    }

    #[test]
    fn samples_before_counts_strictly_earlier_samples() {
        let rate = NonZeroU32::new(3).unwrap();
        assert_eq!(samples_before(100, rate, 99), 0);
        assert_eq!(samples_before(100, rate, 100), 0);
        assert_eq!(samples_before(100, rate, 101), 1);
        assert_eq!(samples_before(100, rate, 100 + 333_333), 1);
        assert_eq!(samples_before(100, rate, 100 + 333_334), 2);
        for now in (0..3_000_000i64).step_by(9_973) {
            let n = samples_before(0, rate, now);
            if n > 0 {
                assert!(sample_ts_us(0, rate, n - 1) < now);
            }
            assert!(sample_ts_us(0, rate, n) >= now);
        }
    }

    #[test]
    fn channel_names_are_unique_and_indexed() {
        for (i, spec) in CHANNELS.iter().enumerate() {
            assert_eq!(channel_index(spec.name), Some(i));
        }
        assert_eq!(
            channel_index("speed_setpoint"),
            Some(channel::SPEED_SETPOINT)
        );
        assert_eq!(channel_index("nope"), None);
    }
}
