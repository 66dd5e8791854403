//! The thermal RC model and the throttle ladder, as pure functions of temperature and time.
//!
//! The junction follows `dT/dt = (P·R_th − (T − T_amb)) / (R_th·C_th)`. With power and ambient
//! constant over a step this has the closed form
//! `T(t) = T_∞ + (T₀ − T_∞)·e^(−t/τ)`, `T_∞ = T_amb + P·R_th`, `τ = R_th·C_th`,
//! which [`step`] evaluates: it is exact for any step length, so an agent that sleeps for an
//! hour and then calls in gets the same temperature as one that calls every millisecond, and no
//! step is ever unstable. The device splits steps where power or ambient change and where the
//! temperature crosses a throttle threshold ([`time_to_reach`]), so the ladder engages at the
//! moment it would on the part.
//!
//! Invariants: the temperature moves monotonically towards `T_∞` within a step and never
//! overshoots it; the ladder steps up at a threshold and down only `hysteresis_c` below it.

use crate::profile::ProfileSpec;

/// Temperature after `dt_s` seconds heading exponentially from `temp_c` to `target_c` with
/// time constant `tau_s`.
pub fn step(temp_c: f64, target_c: f64, dt_s: f64, tau_s: f64) -> f64 {
    if dt_s <= 0.0 {
        return temp_c;
    }
    target_c + (temp_c - target_c) * decay(dt_s / tau_s)
}

/// `e^(−x)` for `x ≥ 0`. Steps much shorter than the time constant (every step between two
/// inferences, with τ of tens of seconds) take a Taylor polynomial instead of `exp`: below
/// `x = 1e-3` its error, under `x⁴/24 ≈ 4e-14`, is at the level of `f64` rounding.
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x * (1.0 - x * (0.5 - x / 6.0))
    } else {
        (-x).exp()
    }
}

/// Seconds until a temperature heading from `temp_c` to `target_c` reaches `level_c`, or
/// `None` when it never does (the level is not strictly between the two).
pub fn time_to_reach(temp_c: f64, target_c: f64, level_c: f64, tau_s: f64) -> Option<f64> {
    let rising = temp_c < level_c && level_c < target_c;
    let falling = temp_c > level_c && level_c > target_c;
    if !(rising || falling) {
        return None;
    }
    let t = tau_s * ((temp_c - target_c) / (level_c - target_c)).ln();
    (t.is_finite() && t >= 0.0).then_some(t)
}

/// What a temperature update did to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing that needs the device's attention (the throttle level may have changed).
    None,
    /// The junction reached the shutdown temperature.
    Shutdown,
    /// A shut-down junction has cooled enough to restart.
    CooledDown,
}

/// Throttle level and thermal shutdown, with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Throttle {
    /// 0 = full clock; `n` = `spec.throttle[n - 1]` engaged.
    pub level: u32,
    /// The junction passed `shutdown_c` and has not yet cooled `hysteresis_c` below it.
    pub shutdown: bool,
    /// Nothing changes while `band.0 <= T < band.1`: the nearest thresholds below and above,
    /// kept so that the common case (no change) costs two comparisons.
    band: (f64, f64),
}

impl Throttle {
    /// Level 0, running, for a part described by `spec`.
    pub fn new(spec: &ProfileSpec) -> Self {
        Self::with_state(spec, 0, false)
    }

    /// A throttle at `level`, shut down or not.
    pub fn with_state(spec: &ProfileSpec, level: u32, shutdown: bool) -> Self {
        let mut t = Throttle {
            level,
            shutdown,
            band: (f64::NEG_INFINITY, f64::INFINITY),
        };
        t.band = t.compute_band(spec);
        t
    }

    fn compute_band(&self, spec: &ProfileSpec) -> (f64, f64) {
        let step_up = spec.throttle.get(self.level as usize).map(|s| s.at_c);
        let shutdown = (!self.shutdown).then_some(spec.shutdown_c);
        let high = [step_up, shutdown]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        let step_down = self
            .level
            .checked_sub(1)
            .and_then(|i| spec.throttle.get(i as usize))
            .map(|s| s.at_c - spec.hysteresis_c);
        let restart = self.shutdown.then_some(spec.shutdown_c - spec.hysteresis_c);
        let low = [step_down, restart]
            .into_iter()
            .flatten()
            .fold(f64::NEG_INFINITY, f64::max);
        (low, high)
    }

    /// Brings level and shutdown in line with `temp_c`.
    #[inline]
    pub fn update(&mut self, spec: &ProfileSpec, temp_c: f64) -> Transition {
        if self.band.0 <= temp_c && temp_c < self.band.1 {
            return Transition::None;
        }
        let ladder = spec.throttle;
        loop {
            let l = self.level as usize;
            if l < ladder.len() && temp_c >= ladder[l].at_c {
                self.level += 1;
            } else if l > 0 && temp_c < ladder[l - 1].at_c - spec.hysteresis_c {
                self.level -= 1;
            } else {
                break;
            }
        }
        let transition = if !self.shutdown && temp_c >= spec.shutdown_c {
            self.shutdown = true;
            Transition::Shutdown
        } else if self.shutdown && temp_c < spec.shutdown_c - spec.hysteresis_c {
            self.shutdown = false;
            Transition::CooledDown
        } else {
            Transition::None
        };
        self.band = self.compute_band(spec);
        transition
    }

    /// `(low, high)`: nothing changes while `low <= T < high`. `low` is the nearest
    /// threshold below (a step down or the restart temperature, or −∞), `high` the nearest
    /// above (the next step or the shutdown temperature, or +∞).
    pub fn band(&self) -> (f64, f64) {
        self.band
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Profile;

    #[test]
    fn one_time_constant_covers_63_percent_of_the_gap() {
        let t = step(40.0, 80.0, 50.0, 50.0);
        let expected = 80.0 - 40.0 * (-1.0f64).exp();
        assert!((t - expected).abs() < 1e-9, "{t}");
        assert!((step(40.0, 80.0, 1e9, 50.0) - 80.0).abs() < 1e-9);
        assert_eq!(step(40.0, 80.0, 0.0, 50.0), 40.0);
    }

    #[test]
    fn short_steps_match_exp_to_rounding() {
        for dt in [1e-9, 1e-6, 1e-4, 0.0099, 0.05] {
            let exact = 80.0 + (40.0 - 80.0) * (-dt / 10.0f64).exp();
            assert!((step(40.0, 80.0, dt, 10.0) - exact).abs() < 1e-10, "{dt}");
        }
    }

    #[test]
    fn many_small_steps_equal_one_large_step() {
        let mut t = 30.0;
        for _ in 0..1000 {
            t = step(t, 90.0, 0.1, 20.0);
        }
        assert!((t - step(30.0, 90.0, 100.0, 20.0)).abs() < 1e-9);
    }

    #[test]
    fn time_to_reach_inverts_step() {
        let dt = time_to_reach(40.0, 100.0, 85.0, 50.0).unwrap();
        assert!((step(40.0, 100.0, dt, 50.0) - 85.0).abs() < 1e-9);
        let dt = time_to_reach(100.0, 40.0, 80.0, 50.0).unwrap();
        assert!((step(100.0, 40.0, dt, 50.0) - 80.0).abs() < 1e-9);
        assert_eq!(time_to_reach(40.0, 80.0, 85.0, 50.0), None);
        assert_eq!(time_to_reach(90.0, 100.0, 85.0, 50.0), None);
    }

    #[test]
    fn ladder_steps_up_at_threshold_and_down_below_hysteresis() {
        let spec = Profile::Hailo8L.spec();
        let mut th = Throttle::new(spec);
        assert_eq!(th.update(spec, 84.9), Transition::None);
        assert_eq!(th.level, 0);
        th.update(spec, 85.0);
        assert_eq!(th.level, 1);
        th.update(spec, 96.0);
        assert_eq!(th.level, 2);
        th.update(spec, 91.0);
        assert_eq!(th.level, 2, "95 − 5 hysteresis not yet reached");
        th.update(spec, 89.9);
        assert_eq!(th.level, 1);
        th.update(spec, 80.5);
        assert_eq!(th.level, 1);
        th.update(spec, 79.0);
        assert_eq!(th.level, 0);
        assert_eq!(th.update(spec, 105.0), Transition::Shutdown);
        assert_eq!(th.update(spec, 101.0), Transition::None);
        assert_eq!(th.update(spec, 99.0), Transition::CooledDown);
    }

    #[test]
    fn band_is_bounded_by_the_nearest_thresholds() {
        let spec = Profile::Hailo8L.spec();
        assert_eq!(Throttle::with_state(spec, 1, false).band(), (80.0, 95.0));
        assert_eq!(Throttle::with_state(spec, 2, false).band(), (90.0, 105.0));
        assert_eq!(
            Throttle::with_state(spec, 2, true).band(),
            (100.0, f64::INFINITY)
        );
        assert_eq!(Throttle::new(spec).band(), (f64::NEG_INFINITY, 85.0));
    }
}
