//! The simple signal generator: four plausible sensors per device, deterministic per
//! (seed, device name).
//!
//! Invariants the rest of the agent relies on:
//! - Sample `k` of every sensor is stamped `t0_us + k * 1_000_000 / rate` (integer maths from
//!   `k`, never accumulated), so consecutive batches join without a gap or an overlap and a
//!   long run does not drift.
//! - Values depend only on the seed, the device name and `k`: the generator is consumed in
//!   order, each sample draws the same number of random numbers, and batch boundaries do not
//!   change what is drawn.
//!
//! The physical line simulator (shaft speed, load, wear, faults, labels) replaces this in a
//! later version; the sensor names and units stay.

use std::f64::consts::TAU;
use std::num::NonZeroU32;

use loopline_proto::v1::Quality;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A sensor's name (the `Channel.sensor` on the wire) and engineering unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorSpec {
    pub name: &'static str,
    pub unit: &'static str,
}

/// The sensors of every device, in the order of [`SignalGenerator::next_sample`]'s values.
pub const SENSORS: [SensorSpec; 4] = [
    SensorSpec {
        name: "vibration",
        unit: "mm/s",
    },
    SensorSpec {
        name: "temperature",
        unit: "Cel",
    },
    SensorSpec {
        name: "current",
        unit: "A",
    },
    SensorSpec {
        name: "pressure",
        unit: "bar",
    },
];

/// One in this many samples (per sensor) is flagged `Uncertain`, so that the quality column is
/// exercised end to end.
pub const UNCERTAIN_ONE_IN: u32 = 10_000;

/// Shaft rotation frequency around which the vibration's 1x component sits, Hz.
const SHAFT_HZ: f64 = 24.5;
/// Mains frequency of the motor current, Hz.
const MAINS_HZ: f64 = 50.0;
/// Thermal time constant of the temperature drift, seconds.
const THERMAL_TAU_S: f64 = 600.0;
/// Ambient temperature the machine starts at, Celsius.
const AMBIENT_C: f64 = 22.0;

/// FNV-1a, 64 bit: a stable hash of the device name (std's hasher is randomised per process).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The random stream of one device: the seed, the device name's hash and a domain tag laid out
/// explicitly, so the stream does not depend on a library's seed expansion.
pub fn device_rng(seed: u64, device: &str) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a64(device.as_bytes()).to_le_bytes());
    key[16..].copy_from_slice(b"loopline-signal1");
    ChaCha8Rng::from_seed(key)
}

/// Timestamp of sample `k` at `rate_hz`, counted from `t0_us`.
pub fn sample_ts_us(t0_us: i64, rate_hz: NonZeroU32, k: u64) -> i64 {
    let offset = i128::from(k) * 1_000_000 / i128::from(rate_hz.get());
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

/// One value of every sensor, in [`SENSORS`] order.
pub type SampleValues = [(f32, Quality); 4];

/// Per-device constants drawn once from the device's stream, so that devices differ.
#[derive(Debug, Clone)]
struct Profile {
    shaft_hz: f64,
    phase: [f64; 3],
    vib_amplitude: f64,
    operating_c: f64,
    load_a: f64,
    pressure_bar: f64,
}

/// Generates the samples of one device, in order.
#[derive(Debug, Clone)]
pub struct SignalGenerator {
    rng: ChaCha8Rng,
    rate_hz: NonZeroU32,
    t0_us: i64,
    next_k: u64,
    profile: Profile,
    temperature_c: f64,
    thermal_alpha: f64,
}

impl SignalGenerator {
    /// A generator whose sample 0 is stamped `t0_us`.
    pub fn new(seed: u64, device: &str, rate_hz: NonZeroU32, t0_us: i64) -> Self {
        let mut rng = device_rng(seed, device);
        let profile = Profile {
            shaft_hz: SHAFT_HZ * (1.0 + rng.random_range(-0.02..0.02)),
            phase: [
                rng.random_range(0.0..TAU),
                rng.random_range(0.0..TAU),
                rng.random_range(0.0..TAU),
            ],
            vib_amplitude: rng.random_range(1.5..2.5),
            operating_c: rng.random_range(55.0..70.0),
            load_a: rng.random_range(3.0..6.0),
            pressure_bar: rng.random_range(5.5..6.5),
        };
        let dt = 1.0 / f64::from(rate_hz.get());
        SignalGenerator {
            rng,
            rate_hz,
            t0_us,
            next_k: 0,
            profile,
            temperature_c: AMBIENT_C,
            thermal_alpha: 1.0 - (-dt / THERMAL_TAU_S).exp(),
        }
    }

    /// Samples per second of each sensor.
    pub fn rate_hz(&self) -> NonZeroU32 {
        self.rate_hz
    }

    /// Timestamp of sample 0.
    pub fn t0_us(&self) -> i64 {
        self.t0_us
    }

    /// Index of the sample [`Self::next_sample`] returns next.
    pub fn next_k(&self) -> u64 {
        self.next_k
    }

    /// Timestamp of sample `k`.
    pub fn ts_us(&self, k: u64) -> i64 {
        sample_ts_us(self.t0_us, self.rate_hz, k)
    }

    /// Produces sample `next_k` of every sensor and advances.
    pub fn next_sample(&mut self) -> (i64, SampleValues) {
        let k = self.next_k;
        self.next_k += 1;
        let ts = self.ts_us(k);
        // Seconds since t0, from `k` (not accumulated) so that phase never drifts.
        let t = k as f64 / f64::from(self.rate_hz.get());
        let p = &self.profile;

        let w = TAU * p.shaft_hz * t;
        let vibration = p.vib_amplitude * (w + p.phase[0]).sin()
            + 0.3 * p.vib_amplitude * (2.0 * w + p.phase[1]).sin()
            + 0.12 * p.vib_amplitude * (3.0 * w + p.phase[2]).sin()
            + 0.15 * noise(&mut self.rng);

        self.temperature_c += (p.operating_c - self.temperature_c) * self.thermal_alpha;
        let temperature = self.temperature_c + 0.05 * noise(&mut self.rng);

        let load = p.load_a * (1.0 + 0.2 * (TAU * t / 60.0).sin());
        let current = 6.0 * (TAU * MAINS_HZ * t).sin().abs() + load + 0.08 * noise(&mut self.rng);

        let pressure = p.pressure_bar + 0.3 * (TAU * t / 30.0).sin() + 0.02 * noise(&mut self.rng);

        let values = [vibration, temperature, current, pressure].map(|v| {
            let quality = if self.rng.random_range(0..UNCERTAIN_ONE_IN) == 0 {
                Quality::Uncertain
            } else {
                Quality::Good
            };
            (v as f32, quality)
        });
        (ts, values)
    }
}

/// Roughly normal noise with unit variance (the sum of four uniforms, rescaled): cheap,
/// bounded, and the same number of draws every time.
fn noise(rng: &mut ChaCha8Rng) -> f64 {
    let sum: f64 = (0..4).map(|_| rng.random::<f64>()).sum();
    // Four U(0,1) have mean 2 and variance 1/3.
    (sum - 2.0) * 3f64.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: NonZeroU32 = match NonZeroU32::new(1000) {
        Some(r) => r,
        None => panic!(),
    };

    /// The first samples of seed 1, "dev-1".
    const PINNED: [[f32; 4]; 3] = [
        [0.791737, 21.950989, 4.6568923, 6.37363],
        [1.1028409, 21.991852, 6.584696, 6.343015],
        [1.1159167, 21.994173, 8.218408, 6.319542],
    ];

    fn take(generator: &mut SignalGenerator, n: usize) -> Vec<(i64, [(u32, Quality); 4])> {
        (0..n)
            .map(|_| {
                let (ts, values) = generator.next_sample();
                (ts, values.map(|(v, q)| (v.to_bits(), q)))
            })
            .collect()
    }

    #[test]
    fn same_seed_and_device_give_the_same_values() {
        let a = take(&mut SignalGenerator::new(7, "press-1", RATE, 1_000), 2_000);
        let b = take(&mut SignalGenerator::new(7, "press-1", RATE, 1_000), 2_000);
        assert_eq!(a, b);
    }

    #[test]
    fn different_device_or_seed_gives_different_values() {
        let a = take(&mut SignalGenerator::new(7, "press-1", RATE, 0), 100);
        let b = take(&mut SignalGenerator::new(7, "press-2", RATE, 0), 100);
        let c = take(&mut SignalGenerator::new(8, "press-1", RATE, 0), 100);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn values_are_pinned() {
        // Guards against an accidental change of the stream (a rand upgrade, reordered
        // draws): the same seed must give the same data across versions.
        assert_eq!(fnv1a64(b"dev-1"), 9_626_158_837_441_113_750);
        let mut generator = SignalGenerator::new(1, "dev-1", RATE, 0);
        let samples: Vec<[f32; 4]> = (0..3)
            .map(|_| generator.next_sample().1.map(|(v, _)| v))
            .collect();
        // `sin` and `exp` may differ in the last bit between platforms' maths libraries.
        for (got, pinned) in samples.iter().flatten().zip(PINNED.iter().flatten()) {
            assert!((got - pinned).abs() < 1e-4, "{samples:?}");
        }
    }

    #[test]
    fn timestamps_are_exact_from_the_index() {
        let rate = NonZeroU32::new(3).unwrap();
        assert_eq!(sample_ts_us(10, rate, 0), 10);
        assert_eq!(sample_ts_us(10, rate, 1), 10 + 333_333);
        assert_eq!(sample_ts_us(10, rate, 2), 10 + 666_666);
        assert_eq!(sample_ts_us(10, rate, 3), 10 + 1_000_000);
        // A year at 48 kHz, without accumulated rounding.
        let rate = NonZeroU32::new(48_000).unwrap();
        let k = 48_000u64 * 86_400 * 365;
        assert_eq!(sample_ts_us(0, rate, k), 86_400 * 365 * 1_000_000);
    }

    #[test]
    fn samples_before_counts_strictly_earlier_samples() {
        let rate = NonZeroU32::new(3).unwrap();
        assert_eq!(samples_before(100, rate, 99), 0);
        assert_eq!(samples_before(100, rate, 100), 0);
        assert_eq!(samples_before(100, rate, 101), 1);
        assert_eq!(samples_before(100, rate, 100 + 333_333), 1);
        assert_eq!(samples_before(100, rate, 100 + 333_334), 2);
        for now in 0..3_000_000i64 {
            if now % 9_973 != 0 {
                continue;
            }
            let n = samples_before(0, rate, now);
            if n > 0 {
                assert!(sample_ts_us(0, rate, n - 1) < now);
            }
            assert!(sample_ts_us(0, rate, n) >= now);
        }
    }

    #[test]
    fn batch_boundaries_do_not_change_the_stream() {
        let whole = take(&mut SignalGenerator::new(3, "d", RATE, 5), 1_000);
        let mut generator = SignalGenerator::new(3, "d", RATE, 5);
        let mut parts = take(&mut generator, 333);
        parts.extend(take(&mut generator, 667));
        assert_eq!(whole, parts);
    }

    #[test]
    fn values_are_plausible_and_some_are_uncertain() {
        let mut generator = SignalGenerator::new(1, "dev-1", RATE, 0);
        let mut uncertain = 0;
        let mut max = [f32::MIN; 4];
        let mut min = [f32::MAX; 4];
        for _ in 0..200_000 {
            let (_, values) = generator.next_sample();
            for (i, (v, q)) in values.iter().enumerate() {
                assert!(v.is_finite());
                max[i] = max[i].max(*v);
                min[i] = min[i].min(*v);
                if *q == Quality::Uncertain {
                    uncertain += 1;
                }
            }
        }
        // 800 000 samples at 1 in 10 000: about 80.
        assert!((30..200).contains(&uncertain), "{uncertain}");
        assert!(max[0] > 1.0 && min[0] < -1.0, "vibration {min:?} {max:?}");
        // 200 s of a 600 s time constant: well on the way from 22 °C to 55..70 °C.
        assert!(
            min[1] > 20.0 && max[1] > 30.0 && max[1] < 71.0,
            "temperature"
        );
        assert!(min[2] > 0.0 && max[2] < 20.0, "current");
        assert!(min[3] > 4.0 && max[3] < 8.0, "pressure");
    }
}
