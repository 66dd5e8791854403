//! The pure-maths pieces of the machine model.
//!
//! Cost is the constraint here: the agent samples 8 channels at 1 kHz on a Raspberry Pi class
//! CPU and the whole path must stay near 2000 instructions per frame. So nothing in this module
//! calls `sin`, `cos` or `exp` per sample:
//! - [`Phasor`] rotates a unit vector by a fixed step (four multiplies) and re-derives it from
//!   the exact phase every [`RESYNC_EVERY`] samples, which bounds rounding growth and is when
//!   a new frequency (the shaft speed moved) takes effect;
//! - [`Resonance`] is a two-pole recursive filter, three multiplies per sample;
//! - [`Noise`] is SplitMix64 with an Irwin–Hall sum of four 16-bit lanes, one 64-bit draw per
//!   noisy channel.
//!
//! Every piece is a state machine advanced exactly once per sample, in order, so the output
//! depends on the sample index alone and never on how the caller batches.

use std::f64::consts::TAU;

use crate::scenario::Bearing;

/// Samples between two exact re-derivations of a [`Phasor`]. 64 ms at 1 kHz: speed moves on a
/// time constant of seconds, so a frequency held for 64 samples is indistinguishable from a
/// continuously updated one, and two `sin_cos` per 64 samples cost about two instructions per
/// sample.
pub const RESYNC_EVERY: u64 = 64;

impl Bearing {
    fn ratio(&self) -> f64 {
        self.ball_diameter_mm / self.pitch_diameter_mm * self.contact_angle_deg.to_radians().cos()
    }

    /// Ball pass frequency, outer race, in multiples of shaft speed:
    /// `n/2 * (1 - d/D * cos φ)`. An outer-race defect is struck by each ball in turn.
    pub fn bpfo_order(&self) -> f64 {
        f64::from(self.balls) / 2.0 * (1.0 - self.ratio())
    }

    /// Ball pass frequency, inner race, in multiples of shaft speed:
    /// `n/2 * (1 + d/D * cos φ)`. The defect rotates with the shaft, so its impacts are
    /// amplitude-modulated at shaft speed as it passes through the load zone.
    pub fn bpfi_order(&self) -> f64 {
        f64::from(self.balls) / 2.0 * (1.0 + self.ratio())
    }

    /// Fundamental train (cage) frequency in multiples of shaft speed: `1/2 * (1 - d/D cos φ)`.
    pub fn ftf_order(&self) -> f64 {
        0.5 * (1.0 - self.ratio())
    }

    /// Ball spin frequency in multiples of shaft speed: `D/(2d) * (1 - (d/D cos φ)^2)`.
    pub fn bsf_order(&self) -> f64 {
        let r = self.ratio();
        self.pitch_diameter_mm / (2.0 * self.ball_diameter_mm) * (1.0 - r * r)
    }
}

/// A unit vector rotating by `step` cycles per sample: `re = cos θ`, `im = sin θ`.
#[derive(Debug, Clone)]
pub struct Phasor {
    /// Exact phase of the current sample, in cycles, kept in `[0, 1)`.
    cycles: f64,
    /// Cycles per sample, constant between two resyncs.
    step: f64,
    re: f64,
    im: f64,
    rot_re: f64,
    rot_im: f64,
}

impl Phasor {
    /// A phasor at `phase_cycles` advancing `step` cycles per sample.
    pub fn new(phase_cycles: f64, step: f64) -> Self {
        let mut phasor = Phasor {
            cycles: phase_cycles - phase_cycles.floor(),
            step: 0.0,
            re: 1.0,
            im: 0.0,
            rot_re: 1.0,
            rot_im: 0.0,
        };
        phasor.resync(step);
        phasor
    }

    /// Re-derives the vector from the exact phase and takes a new step.
    pub fn resync(&mut self, step: f64) {
        self.step = step;
        (self.im, self.re) = (TAU * self.cycles).sin_cos();
        (self.rot_im, self.rot_re) = (TAU * step).sin_cos();
    }

    /// `cos θ` of the current sample.
    #[inline]
    pub fn cos(&self) -> f64 {
        self.re
    }

    /// `sin θ` of the current sample.
    #[inline]
    pub fn sin(&self) -> f64 {
        self.im
    }

    /// Cycles per sample.
    #[inline]
    pub fn step(&self) -> f64 {
        self.step
    }

    /// Moves to the next sample.
    #[inline]
    pub fn advance(&mut self) {
        self.cycles += self.step;
        self.cycles -= self.cycles.floor();
        let re = self.re * self.rot_re - self.im * self.rot_im;
        self.im = self.re * self.rot_im + self.im * self.rot_re;
        self.re = re;
    }
}

/// A structural resonance rung by impacts: a two-pole resonator `y[n] = a1 y[n-1] + a2 y[n-2] +
/// x[n] - x[n-1]`. The differencing zero removes DC, as an accelerometer's coupling does, so a
/// train of one-signed impacts does not shift the signal's mean.
#[derive(Debug, Clone)]
pub struct Resonance {
    a1: f64,
    a2: f64,
    y1: f64,
    y2: f64,
    x1: f64,
}

impl Resonance {
    /// A resonance at `freq_hz` with damping ratio `zeta`, sampled at `rate_hz`. The frequency
    /// is clamped to 0.4 of the sample rate: a real bearing resonance sits at kilohertz, far
    /// above what a 1 kHz transmitter passes, so at low rates the simulator folds it below
    /// Nyquist rather than let it alias.
    pub fn new(freq_hz: f64, zeta: f64, rate_hz: f64) -> Self {
        let freq_hz = freq_hz.min(0.4 * rate_hz);
        let omega = TAU * freq_hz / rate_hz;
        let r = (-zeta * omega).exp();
        let damped = omega * (1.0 - zeta * zeta).max(0.0).sqrt();
        Resonance {
            a1: 2.0 * r * damped.cos(),
            a2: -r * r,
            y1: 0.0,
            y2: 0.0,
            x1: 0.0,
        }
    }

    /// Feeds this sample's excitation and returns this sample's output.
    #[inline]
    pub fn next(&mut self, x: f64) -> f64 {
        let y = self.a1 * self.y1 + self.a2 * self.y2 + x - self.x1;
        self.y2 = self.y1;
        self.y1 = y;
        self.x1 = x;
        y
    }
}

/// The impact train of one bearing defect: a phase accumulator that fires once per defect
/// period. An impact falling between two samples is split between them by linear
/// interpolation (and so delayed by one sample), which keeps the train's fundamental exactly at
/// the defect frequency instead of on the sample grid.
#[derive(Debug, Clone)]
pub struct ImpactTrain {
    /// Cycles of the defect period since the last impact, in `[0, 1)`.
    phase: f64,
    /// The part of the last impact that falls on the next sample.
    pending: f64,
}

impl ImpactTrain {
    /// A train starting at `phase_cycles` of its period.
    pub fn new(phase_cycles: f64) -> Self {
        ImpactTrain {
            phase: phase_cycles - phase_cycles.floor(),
            pending: 0.0,
        }
    }

    /// Advances by `step` cycles (the defect frequency over the sample rate) and returns this
    /// sample's excitation. `amplitude` is only called when an impact falls in this sample, so
    /// a caller can draw its random part then and nowhere else.
    #[inline]
    pub fn next(&mut self, step: f64, amplitude: impl FnOnce() -> f64) -> f64 {
        let mut x = self.pending;
        self.pending = 0.0;
        self.phase += step;
        if self.phase >= 1.0 {
            self.phase -= self.phase.floor();
            // How long ago, in samples, the period boundary was crossed.
            let ago = if step > 0.0 {
                (self.phase / step).min(1.0)
            } else {
                0.0
            };
            let a = amplitude();
            x += a * ago;
            self.pending = a * (1.0 - ago);
        }
        x
    }
}

/// SplitMix64: one add, two multiplies, three xor-shifts per draw; statistically good enough for
/// sensor noise and cheap on any 64-bit core. Its stream is fixed by its seed alone, unlike
/// `rand`'s `SmallRng`, which changes algorithm between platforms.
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
}

/// Standard deviation of the sum of four independent uniform 16-bit lanes: `65536 / sqrt(3)`
/// (each lane has variance `(65536^2 - 1) / 12`; the `-1` is below f64's notice here).
const IRWIN_HALL_4_SD: f64 = 37_837.227_241_611_04;
/// Mean of that sum.
const IRWIN_HALL_4_MEAN: f64 = 2.0 * 65_535.0;

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Roughly normal noise with unit variance: the Irwin–Hall sum of four 16-bit uniforms from
    /// one draw. Bounded at ±3.46 σ, which is what a real sensor's noise floor looks like once
    /// its filter has run; outliers are the spike fault's job.
    #[inline]
    pub fn gauss(&mut self) -> f64 {
        let x = self.next_u64();
        const LANES: u64 = 0x0000_ffff_0000_ffff;
        let pairs = (x & LANES) + ((x >> 16) & LANES);
        let sum = (pairs & 0xffff_ffff) + (pairs >> 32);
        (sum as f64 - IRWIN_HALL_4_MEAN) * (1.0 / IRWIN_HALL_4_SD)
    }

    /// Uniform in `[0, 1)` with 53 bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[-1, 1)`.
    #[inline]
    pub fn signed(&mut self) -> f64 {
        2.0 * self.uniform() - 1.0
    }
}

/// `1 - exp(-dt/tau)`: the per-sample gain of a first-order lag with time constant `tau_s`
/// sampled every `dt_s`, exact for a step input (unlike `dt/tau`, which is only right for
/// `dt << tau`).
pub fn lag_gain(dt_s: f64, tau_s: f64) -> f64 {
    if tau_s <= 0.0 {
        1.0
    } else {
        1.0 - (-dt_s / tau_s).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b6205() -> Bearing {
        Bearing {
            balls: 9,
            ball_diameter_mm: 7.94,
            pitch_diameter_mm: 39.04,
            contact_angle_deg: 0.0,
        }
    }

    #[test]
    fn bearing_6205_defect_orders_match_the_published_ones() {
        // The SKF 6205 drive-end bearing of the Case Western Reserve data set:
        // BPFO 3.5848, BPFI 5.4152, FTF 0.39828, BSF 2.3557 times shaft speed.
        let b = b6205();
        assert!((b.bpfo_order() - 3.5848).abs() < 1e-3, "{}", b.bpfo_order());
        assert!((b.bpfi_order() - 5.4152).abs() < 1e-3, "{}", b.bpfi_order());
        assert!((b.ftf_order() - 0.39828).abs() < 1e-4, "{}", b.ftf_order());
        assert!((b.bsf_order() - 2.3557).abs() < 2e-3, "{}", b.bsf_order());
        // The classic identity: BPFO + BPFI = n * shaft.
        assert!((b.bpfo_order() + b.bpfi_order() - 9.0).abs() < 1e-12);
    }

    #[test]
    fn phasor_tracks_sin_and_cos() {
        let step = 24.7 / 1000.0;
        let mut p = Phasor::new(0.3, step);
        let mut worst: f64 = 0.0;
        for k in 0..100_000u64 {
            if k.is_multiple_of(RESYNC_EVERY) {
                p.resync(step);
            }
            let theta = TAU * (0.3 + k as f64 * step);
            worst = worst.max((p.sin() - theta.sin()).abs());
            worst = worst.max((p.cos() - theta.cos()).abs());
            p.advance();
        }
        assert!(worst < 1e-9, "{worst}");
    }

    #[test]
    fn noise_has_zero_mean_and_unit_variance() {
        let mut n = Noise::new(42);
        let count = 200_000;
        let (mut s1, mut s2, mut s4) = (0.0, 0.0, 0.0);
        for _ in 0..count {
            let x = n.gauss();
            s1 += x;
            s2 += x * x;
            s4 += x * x * x * x;
        }
        let mean = s1 / count as f64;
        let var = s2 / count as f64 - mean * mean;
        let kurt = s4 / count as f64 / (var * var);
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        // Irwin–Hall of 4 has kurtosis 3 - 1.2/4 = 2.7.
        assert!((kurt - 2.7).abs() < 0.05, "{kurt}");
    }

    #[test]
    fn impact_train_fires_at_the_defect_rate() {
        let mut train = ImpactTrain::new(0.0);
        let step = 88.5 / 1000.0;
        let mut total = 0.0;
        let mut fired = 0;
        for _ in 0..10_000 {
            let x = train.next(step, || {
                fired += 1;
                1.0
            });
            total += x;
        }
        // 10 s at 88.5 Hz: 885 impacts, each of unit total weight.
        assert_eq!(fired, 885);
        assert!((total - 885.0).abs() <= 1.0, "{total}");
    }

    #[test]
    fn resonance_rings_and_decays_without_dc() {
        let mut r = Resonance::new(320.0, 0.15, 1000.0);
        let burst: Vec<f64> = (0..100)
            .map(|i| r.next(if i == 0 { 1.0 } else { 0.0 }))
            .collect();
        assert_eq!(burst[0], 1.0);
        // It rings: the sign alternates near 320 Hz of a 1 kHz rate.
        assert!(burst[1] < -0.5 && burst[2] > 0.0, "{:?}", &burst[..4]);
        // And dies out within tens of samples (r = exp(-ζω) ≈ 0.74 per sample).
        assert!(
            burst[40..].iter().all(|y| y.abs() < 1e-4),
            "{:?}",
            &burst[40..44]
        );
        // The differencing zero: a constant excitation gives no lasting output.
        let mut r = Resonance::new(320.0, 0.15, 1000.0);
        let last = (0..200).map(|_| r.next(1.0)).last().unwrap();
        assert!(last.abs() < 1e-9, "{last}");
    }
}
