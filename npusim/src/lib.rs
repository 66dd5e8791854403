//! Loopline's NPU device simulator: latency, power, thermal throttling and faults of real edge
//! accelerators (Hailo-8L, Hailo-8, Rockchip RK3588, DeepX DX-M1).
//!
//! The edge agent runs its int8 anomaly model "on" an [`Npu`]: each [`Npu::infer`] returns the
//! latency the part would have taken, or the error it would have raised, and
//! [`Npu::health`] reports what the vendors' runtimes report (utilisation, fps, latency
//! percentiles, temperature, power, clock, throttle level, ECC errors, resets).
//!
//! ```
//! use loopline_npusim::{Npu, Profile};
//!
//! let mut npu = Npu::new("hailo-8l".parse()?, 7, 0);
//! let inf = npu.infer(1_000, 2_000_000, 256)?;
//! assert!(inf.latency_us > 200 && inf.latency_us < 300);
//! let h = npu.health(1_000_000);
//! assert_eq!(h.inferences, 1);
//! assert!(h.temperature_c > 35.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How this crate is laid out
//!
//! - [`profile`]: the parts, their numbers and where each number comes from.
//! - [`thermal`]: the exact RC thermal step and the throttle ladder with hysteresis.
//! - [`fault`]: injectable faults and schedules of them, from strings or TOML.
//! - `stats`: the bounded latency ring behind the percentiles.
//! - [`device`]: [`Npu`], the state machine that ties them together.
//!
//! # Design invariants
//!
//! - Pure and deterministic: no clock, no I/O. Time comes in as µs arguments; the same seed
//!   and the same calls give the same results, bit for bit.
//! - Time going backwards is clamped to the latest time seen, never a panic.
//! - Per inference: no allocation and under 1000 instructions (about 780 on x86-64 counted
//!   with callgrind over `benches/infer.rs`, a health report every 100 calls included), so the
//!   simulator costs nothing next to the agent on a Pi.
//! - Memory is fixed at construction, apart from the fault schedule the caller hands over.

pub mod device;
pub mod fault;
pub mod profile;
mod stats;
pub mod thermal;

pub use device::{Health, Inference, Npu, NpuError, NpuState};
pub use fault::{Fault, FaultSchedule, ScheduledFault};
pub use profile::{POWER_CLOCK_EXPONENT, Profile, ProfileSpec, ThrottleStep};
pub use stats::{LATENCY_RING, Percentiles};

/// Errors in configuring the simulator: a profile or fault that does not parse. What goes wrong
/// on the simulated device at run time is an [`NpuError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The profile name is none of [`Profile::ALL`].
    #[error("unknown NPU profile {name:?}; known profiles: {known}")]
    UnknownProfile {
        /// The name given.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A fault schedule entry does not parse.
    #[error("bad NPU fault {input:?}: {reason}")]
    BadFault {
        /// The entry as written.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Result of configuring the simulator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
