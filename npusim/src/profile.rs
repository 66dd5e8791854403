//! The accelerators Loopline simulates, and the numbers that describe them.
//!
//! Every figure carries its provenance in the doc comment of the constant that holds it:
//! "vendor" means a number the vendor publishes (datasheet, product brief, or what its own
//! tools print), "DT" means the Linux device tree Rockchip ships, and "estimate" means a number
//! chosen to be plausible for the part and its usual mounting, with the reasoning next to it.
//! Estimates are tuned so that each part, running Loopline's workload flat out in its usual
//! enclosure, settles below its first throttle step: throttling is something a fault (a
//! blocked fan, a hot cabinet) causes, as on a healthy real installation.
//!
//! Invariants: every spec has `idle_power_w < max_power_w`, positive thermal resistance and
//! capacitance, a throttle ladder with strictly rising thresholds below `shutdown_c` and
//! clock fractions in (0, 1] that fall step by step.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// One of the NPU parts the simulator models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Hailo-8L, 13 TOPS, as on the Raspberry Pi AI Kit / AI HAT+ (13 TOPS).
    Hailo8L,
    /// Hailo-8, 26 TOPS, as on the Raspberry Pi AI HAT+ (26 TOPS).
    Hailo8,
    /// The NPU inside the Rockchip RK3588 SoC: 6 TOPS over 3 cores.
    Rk3588,
    /// DeepX DX-M1 M.2 module, 25 TOPS.
    DxM1,
}

impl Profile {
    /// Every profile, in the order their names are listed in error messages.
    pub const ALL: [Profile; 4] = [
        Profile::Hailo8L,
        Profile::Hailo8,
        Profile::Rk3588,
        Profile::DxM1,
    ];

    /// The name used in configuration and on the wire (`DeviceStatus.npu_profile`).
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Hailo8L => "hailo-8l",
            Profile::Hailo8 => "hailo-8",
            Profile::Rk3588 => "rk3588",
            Profile::DxM1 => "dx-m1",
        }
    }

    /// The numbers that describe this part.
    pub const fn spec(self) -> &'static ProfileSpec {
        match self {
            Profile::Hailo8L => &HAILO_8L,
            Profile::Hailo8 => &HAILO_8,
            Profile::Rk3588 => &RK3588,
            Profile::DxM1 => &DX_M1,
        }
    }

    /// The known names, comma separated, for error messages and `--help` text.
    pub fn known_names() -> String {
        Profile::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = Error;

    /// Accepts the names [`Profile::name`] returns, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Profile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| Error::UnknownProfile {
                name: s.to_owned(),
                known: Profile::known_names(),
            })
    }
}

impl TryFrom<String> for Profile {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl serde::Serialize for Profile {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Profile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// One rung of a throttle ladder: at or above `at_c` the NPU clock runs at `clock_fraction`
/// of nominal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleStep {
    /// Junction temperature that engages this step, °C.
    pub at_c: f64,
    /// Fraction of the nominal NPU clock while this step is engaged, in (0, 1].
    pub clock_fraction: f64,
}

/// The numbers that describe one NPU part as Loopline's edge agent uses it: one small int8
/// model, one inference at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSpec {
    /// Human-readable part name, as the vendor writes it.
    pub display_name: &'static str,
    /// Peak int8 throughput of the whole part, tera-operations per second (vendor).
    pub tops: f64,
    /// NPU cores. A small non-batched model runs on one core (RKNN's default core mask), so
    /// one inference sees `tops / cores`; utilisation and power describe that one busy core.
    pub cores: u32,
    /// Nominal NPU clock, MHz: what the vendor's tools report at throttle level 0.
    pub clock_mhz: u32,
    /// How the part reaches the host, as an operator would describe it.
    pub host_link: &'static str,
    /// Fixed cost of one transfer over the host link (DMA descriptor set-up, doorbell,
    /// completion interrupt), µs.
    pub link_fixed_us: f64,
    /// Effective host-link bandwidth for input tensors, bytes per µs (= MB/s).
    pub link_bytes_per_us: f64,
    /// Fixed per-inference cost of the driver and runtime dispatch, µs. For a tiny model this
    /// dominates the latency, as it does on the real parts.
    pub fixed_overhead_us: f64,
    /// Fraction of the per-inference TOPS that a tiny dense model reaches. Large convolutional
    /// networks reach 30–50 % of peak on these parts; a few-layer dense autoencoder cannot
    /// fill the array and reuses no weights, so it reaches a few per cent.
    pub small_model_efficiency: f64,
    /// σ of the log-normal multiplicative latency jitter (0.03 ≈ ±3 % typical).
    pub jitter_sigma: f64,
    /// Power with the NPU idle but powered and the model loaded, W.
    pub idle_power_w: f64,
    /// Power with the NPU busy all the time at nominal clock, W.
    pub max_power_w: f64,
    /// Thermal resistance from junction to the surrounding air, °C/W.
    pub thermal_resistance_c_per_w: f64,
    /// Thermal capacitance of die, package and heat sink, J/°C.
    pub thermal_capacitance_j_per_c: f64,
    /// Air temperature around the part in its usual enclosure, °C.
    pub ambient_c: f64,
    /// Throttle steps, thresholds strictly rising; level `n` is `throttle[n - 1]`.
    pub throttle: &'static [ThrottleStep],
    /// A level steps down only once the temperature is this far below its threshold, °C.
    pub hysteresis_c: f64,
    /// At or above this junction temperature the part shuts down; it comes back (with a
    /// reset) once it has cooled `hysteresis_c` below.
    pub shutdown_c: f64,
    /// Time a device reset takes before inferences succeed again (firmware reload and model
    /// re-configuration), µs.
    pub reset_us: u64,
}

/// Exponent of the clock fraction in the dynamic power term:
/// `P = idle + (max − idle) × utilisation × clock_fraction^ALPHA`.
///
/// Dynamic power is `C·V²·f`. Throttling by clock alone gives an exponent of 1; full DVFS,
/// where voltage follows frequency, approaches 3. These parts throttle by stepping down an
/// operating-point table whose voltage falls less than its frequency, so 2 sits between the
/// two. Because a throttled inference also keeps the core busy `1 / clock_fraction` longer,
/// the energy of one inference then falls linearly with the clock, as on the real parts.
pub const POWER_CLOCK_EXPONENT: i32 = 2;

/// Hailo's dataflow parts share the same estimated ladder: the HailoRT health API exposes
/// temperature throttling zones but the public documentation does not give the default
/// thresholds, so these sit at typical commercial junction limits (estimate).
const HAILO_LADDER: [ThrottleStep; 2] = [
    ThrottleStep {
        at_c: 85.0,
        clock_fraction: 0.75,
    },
    ThrottleStep {
        at_c: 95.0,
        clock_fraction: 0.5,
    },
];

/// Rockchip's RK3588 device tree puts a passive trip at 85 °C, at which the step-wise governor
/// walks the NPU down its operating points (1000 → 800 MHz first) (DT); the second step at
/// 95 °C is an estimate of where it reaches the bottom half of the table.
const RK3588_LADDER: [ThrottleStep; 2] = [
    ThrottleStep {
        at_c: 85.0,
        clock_fraction: 0.8,
    },
    ThrottleStep {
        at_c: 95.0,
        clock_fraction: 0.5,
    },
];

/// DeepX publishes no throttle thresholds; same estimate as the Hailo parts.
const DX_M1_LADDER: [ThrottleStep; 2] = HAILO_LADDER;

/// Hailo-8L on the Raspberry Pi AI HAT+ (13 TOPS).
///
/// - 13 TOPS (vendor). Core clock 400 MHz: what `hailortcli fw-control identify` reports for
///   the Hailo-8 (vendor); assumed the same for the 8L, which has fewer active resources
///   (estimate).
/// - Link: the Pi 5's PCIe lane runs Gen3 x1 with the AI HAT+; 8 GT/s with 128b/130b coding is
///   985 MB/s raw, 800 MB/s after TLP overheads (estimate); 15 µs per transfer (estimate).
/// - 200 µs dispatch: HailoRT's per-inference floor for a tiny model measured from the host,
///   a few hundred µs (estimate).
/// - 3 % of peak for a tiny dense model (estimate; ResNet-50 reaches roughly 40 % of peak on
///   the Hailo-8 in Hailo's model zoo figures, a tiny dense model one to two orders less).
/// - 0.4 W idle, 1.5 W busy (estimate, in line with Hailo's "typical" power class for the
///   part); 25 °C/W bare M.2 module on the HAT, 2 J/°C (τ = 50 s) (estimate); 35 °C air
///   inside an enclosure beside a Pi 5 (estimate). Flat out it settles at 72.5 °C.
pub static HAILO_8L: ProfileSpec = ProfileSpec {
    display_name: "Hailo-8L",
    tops: 13.0,
    cores: 1,
    clock_mhz: 400,
    host_link: "PCIe Gen3 x1",
    link_fixed_us: 15.0,
    link_bytes_per_us: 800.0,
    fixed_overhead_us: 200.0,
    small_model_efficiency: 0.03,
    jitter_sigma: 0.03,
    idle_power_w: 0.4,
    max_power_w: 1.5,
    thermal_resistance_c_per_w: 25.0,
    thermal_capacitance_j_per_c: 2.0,
    ambient_c: 35.0,
    throttle: &HAILO_LADDER,
    hysteresis_c: 5.0,
    shutdown_c: 105.0,
    reset_us: 1_500_000,
};

/// Hailo-8 on the Raspberry Pi AI HAT+ (26 TOPS).
///
/// - 26 TOPS, 400 MHz core clock as `hailortcli fw-control identify` reports it (vendor);
///   about 2.5 W typical (vendor's power class for the part), taken as the busy figure.
/// - Same Gen3 x1 link and dispatch cost as the Hailo-8L (estimate).
/// - 2 % of peak: the same tiny model fills an even smaller share of the larger array
///   (estimate).
/// - 0.5 W idle (estimate); 17 °C/W with the small heat sink the 26 TOPS HAT wants, 3 J/°C
///   (τ = 51 s) (estimate). Flat out it settles at 77.5 °C.
pub static HAILO_8: ProfileSpec = ProfileSpec {
    display_name: "Hailo-8",
    tops: 26.0,
    cores: 1,
    clock_mhz: 400,
    host_link: "PCIe Gen3 x1",
    link_fixed_us: 15.0,
    link_bytes_per_us: 800.0,
    fixed_overhead_us: 200.0,
    small_model_efficiency: 0.02,
    jitter_sigma: 0.03,
    idle_power_w: 0.5,
    max_power_w: 2.5,
    thermal_resistance_c_per_w: 17.0,
    thermal_capacitance_j_per_c: 3.0,
    ambient_c: 35.0,
    throttle: &HAILO_LADDER,
    hysteresis_c: 5.0,
    shutdown_c: 105.0,
    reset_us: 1_500_000,
};

/// The RK3588's NPU.
///
/// - 6 TOPS over 3 cores (vendor); top NPU operating point 1000 MHz (DT).
/// - On the SoC: inputs are copied into a DMA buffer in shared LPDDR, about 4 GB/s after cache
///   maintenance, 5 µs fixed (estimate).
/// - 350 µs dispatch: `rknn_run`'s floor for a tiny model is a few hundred µs (estimate).
/// - 8 % of one core's 2 TOPS (estimate: smaller cores fill more easily than a Hailo array).
/// - NPU rail: 0.15 W idle (power domains gated between runs), 1.2 W with one core busy
///   (estimate). The NPU shares the die and heat sink with the CPU cluster, so the "ambient" it
///   sees is the package at 45 °C with the CPUs lightly loaded (estimate); 10 °C/W and
///   15 J/°C for a passive heat sink (τ = 150 s) (estimate). Flat out it settles at 57 °C.
/// - Critical trip 115 °C (DT); trip hysteresis 2 °C (DT).
pub static RK3588: ProfileSpec = ProfileSpec {
    display_name: "Rockchip RK3588 NPU",
    tops: 6.0,
    cores: 3,
    clock_mhz: 1000,
    host_link: "on-SoC",
    link_fixed_us: 5.0,
    link_bytes_per_us: 4000.0,
    fixed_overhead_us: 350.0,
    small_model_efficiency: 0.08,
    jitter_sigma: 0.05,
    idle_power_w: 0.15,
    max_power_w: 1.2,
    thermal_resistance_c_per_w: 10.0,
    thermal_capacitance_j_per_c: 15.0,
    ambient_c: 45.0,
    throttle: &RK3588_LADDER,
    hysteresis_c: 2.0,
    shutdown_c: 115.0,
    reset_us: 300_000,
};

/// DeepX DX-M1 M.2 module.
///
/// - 25 TOPS and a 2–5 W power class (vendor); 5 W taken as busy, 0.6 W idle (estimate).
/// - M.2 M-key, PCIe Gen3 x4: 3.9 GB/s raw, 3.2 GB/s effective (estimate), 15 µs per transfer
///   (estimate). The NPU clock is not published: 1000 MHz (estimate).
/// - 250 µs runtime dispatch, 2 % of peak for a tiny dense model (estimate).
/// - 8.5 °C/W with the module's heat sink, 6 J/°C (τ = 51 s), 35 °C enclosure air (estimate).
///   Flat out it settles at 77.5 °C.
pub static DX_M1: ProfileSpec = ProfileSpec {
    display_name: "DeepX DX-M1",
    tops: 25.0,
    cores: 1,
    clock_mhz: 1000,
    host_link: "PCIe Gen3 x4",
    link_fixed_us: 15.0,
    link_bytes_per_us: 3200.0,
    fixed_overhead_us: 250.0,
    small_model_efficiency: 0.02,
    jitter_sigma: 0.03,
    idle_power_w: 0.6,
    max_power_w: 5.0,
    thermal_resistance_c_per_w: 8.5,
    thermal_capacitance_j_per_c: 6.0,
    ambient_c: 35.0,
    throttle: &DX_M1_LADDER,
    hysteresis_c: 5.0,
    shutdown_c: 105.0,
    reset_us: 2_000_000,
};

impl ProfileSpec {
    /// Throughput one inference sees at nominal clock, operations per µs.
    pub fn effective_ops_per_us(&self) -> f64 {
        // TOPS = 1e12 ops/s = 1e6 ops/µs.
        self.tops * 1e6 * self.small_model_efficiency / f64::from(self.cores.max(1))
    }

    /// Time one inference occupies the host link and runtime, before the NPU computes, µs.
    pub fn setup_us(&self, input_bytes: usize) -> f64 {
        // usize → f64 loses precision only above 2^53 bytes, far beyond any tensor.
        self.fixed_overhead_us + self.link_fixed_us + input_bytes as f64 / self.link_bytes_per_us
    }

    /// Time the NPU computes `ops` operations at `clock_fraction` of its nominal clock, µs.
    pub fn compute_us(&self, ops: u64, clock_fraction: f64) -> f64 {
        ops as f64 / (self.effective_ops_per_us() * clock_fraction)
    }

    /// Latency of one inference without jitter: runtime dispatch + link + compute, µs.
    pub fn nominal_latency_us(&self, ops: u64, input_bytes: usize, clock_fraction: f64) -> f64 {
        self.setup_us(input_bytes) + self.compute_us(ops, clock_fraction)
    }

    /// Time constant of the thermal RC model, seconds.
    pub fn thermal_tau_s(&self) -> f64 {
        self.thermal_resistance_c_per_w * self.thermal_capacitance_j_per_c
    }

    /// Junction temperature the part settles at when it dissipates `power_w` in its usual
    /// ambient, °C.
    pub fn steady_state_c(&self, power_w: f64) -> f64 {
        self.ambient_c + power_w * self.thermal_resistance_c_per_w
    }

    /// Power at `utilisation` (0..1) and `clock_fraction`, W.
    pub fn power_w(&self, utilisation: f64, clock_fraction: f64) -> f64 {
        self.idle_power_w
            + (self.max_power_w - self.idle_power_w)
                * utilisation.clamp(0.0, 1.0)
                * clock_fraction.powi(POWER_CLOCK_EXPONENT)
    }

    /// Clock fraction at throttle `level` (0 = none).
    pub fn clock_fraction(&self, level: u32) -> f64 {
        match level.checked_sub(1) {
            None => 1.0,
            Some(i) => self
                .throttle
                .get(i as usize)
                .or(self.throttle.last())
                .map_or(1.0, |s| s.clock_fraction),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_name_lists_the_known_ones() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!("HAILO-8L".parse::<Profile>().unwrap(), Profile::Hailo8L);
        let err = "jetson".parse::<Profile>().unwrap_err().to_string();
        assert!(err.contains("\"jetson\""), "{err}");
        assert!(err.contains("hailo-8l, hailo-8, rk3588, dx-m1"), "{err}");
    }

    #[test]
    fn every_spec_keeps_the_module_invariants() {
        for p in Profile::ALL {
            let s = p.spec();
            assert!(s.idle_power_w < s.max_power_w, "{p}");
            assert!(s.thermal_resistance_c_per_w > 0.0 && s.thermal_capacitance_j_per_c > 0.0);
            let mut prev_at = f64::NEG_INFINITY;
            let mut prev_frac = 1.0;
            for step in s.throttle {
                assert!(step.at_c > prev_at && step.at_c < s.shutdown_c, "{p}");
                assert!(
                    step.clock_fraction > 0.0 && step.clock_fraction <= prev_frac,
                    "{p}"
                );
                prev_at = step.at_c;
                prev_frac = step.clock_fraction;
            }
            // A healthy part running flat out stays below its first throttle step.
            let first = s.throttle.first().map_or(s.shutdown_c, |t| t.at_c);
            assert!(
                s.steady_state_c(s.max_power_w) < first - s.hysteresis_c,
                "{p}"
            );
        }
    }

    #[test]
    fn clock_fraction_follows_the_ladder() {
        let s = Profile::Hailo8.spec();
        assert_eq!(s.clock_fraction(0), 1.0);
        assert_eq!(s.clock_fraction(1), 0.75);
        assert_eq!(s.clock_fraction(2), 0.5);
        assert_eq!(s.clock_fraction(9), 0.5);
    }
}
