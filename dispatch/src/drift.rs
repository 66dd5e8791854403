//! Drift statistics: the population stability index (PSI) between two distributions, and the
//! Page-Hinkley test for an upward shift of a stream's mean.
//!
//! Invariants:
//! - Pure functions and a small state machine: no I/O, no clock; non-finite values are
//!   ignored, never counted into a bin.
//! - PSI is never negative: every term `(a − e)·ln(a/e)` is `≥ 0` for positive shares, and
//!   empty bins are floored at [`PSI_EPSILON`] on both sides so the logarithm stays finite.
//! - Bins come from the reference alone (its quantiles), so the current sample is judged on
//!   the reference's scale, whatever its own spread. Equal quantiles (a reference with a point
//!   mass) are merged into one bin, so no bin is empty by construction.

use serde::{Deserialize, Serialize};

/// Bins the reference is cut into when nothing else is said: deciles.
pub const DEFAULT_PSI_BINS: usize = 10;
/// The share an empty bin counts as, on either side, so that `ln(a/e)` stays finite.
pub const PSI_EPSILON: f64 = 1e-4;
/// Upper bound (exclusive) of the stable band.
pub const PSI_STABLE_BELOW: f64 = 0.1;
/// Upper bound (inclusive) of the moderate band; above it the shift is significant.
pub const PSI_MODERATE_UP_TO: f64 = 0.25;

/// The customary reading of a PSI value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiBand {
    /// `< 0.1`: no meaningful shift.
    Stable,
    /// `0.1` to `0.25`: a shift worth watching.
    Moderate,
    /// `> 0.25`: the population has changed.
    Significant,
}

impl PsiBand {
    /// The band of `psi`; a NaN reads as stable (nothing was measured).
    pub fn of(psi: f64) -> PsiBand {
        if psi > PSI_MODERATE_UP_TO {
            PsiBand::Significant
        } else if psi >= PSI_STABLE_BELOW {
            PsiBand::Moderate
        } else {
            PsiBand::Stable
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PsiBand::Stable => "stable",
            PsiBand::Moderate => "moderate",
            PsiBand::Significant => "significant",
        }
    }
}

impl std::fmt::Display for PsiBand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `q`-quantile of sorted finite values, linearly interpolated; `None` when empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// `n + 1` quantiles of `values` at probabilities `0, 1/n, …, 1` (minimum to maximum): the
/// form [`psi_from_quantiles`] takes, and what a trainer stores as a reference. `None` when
/// `values` has no finite value or `n` is 0.
pub fn quantiles(values: &[f64], n: usize) -> Option<Vec<f64>> {
    if n == 0 {
        return None;
    }
    let sorted = sorted_finite(values);
    (0..=n)
        .map(|i| quantile_sorted(&sorted, i as f64 / n as f64))
        .collect()
}

/// PSI of `current` against `reference`, both samples, over `bins` bins cut at the
/// reference's quantiles. The reference's share of each bin is counted, not assumed, so a
/// sample against itself gives exactly 0. `None` when either side has no finite value or
/// `bins` is 0.
pub fn psi(reference: &[f64], current: &[f64], bins: usize) -> Option<f64> {
    let sorted = sorted_finite(reference);
    if sorted.is_empty() || bins == 0 {
        return None;
    }
    let edges = interior_edges(
        &(0..=bins)
            .filter_map(|i| quantile_sorted(&sorted, i as f64 / bins as f64))
            .collect::<Vec<_>>(),
    );
    let expected = shares(&edges, &sorted)?;
    let actual = shares(&edges, current)?;
    Some(psi_of_shares(&expected, &actual))
}

/// PSI of `current` against a reference stored as its quantiles at evenly spaced
/// probabilities `0, 1/n, …, 1` (`n + 1` values, minimum first, as [`quantiles`] returns and
/// the trainer's `metrics.json` carries in `reference.score_quantiles`). Each of the `n` bins
/// holds `1/n` of the reference; bins between equal quantiles are folded into the bin that
/// holds that value. `None` with fewer than two quantiles, unsorted or non-finite ones, or
/// no finite current value.
pub fn psi_from_quantiles(reference_quantiles: &[f64], current: &[f64]) -> Option<f64> {
    let n = reference_quantiles
        .len()
        .checked_sub(1)
        .filter(|n| *n > 0)?;
    if reference_quantiles.iter().any(|q| !q.is_finite())
        || reference_quantiles.windows(2).any(|w| w[0] > w[1])
    {
        return None;
    }
    // Bin j holds (q_j, q_{j+1}]; the first is open below and the last open above.
    let raw = &reference_quantiles[1..n];
    let mut edges: Vec<f64> = Vec::with_capacity(raw.len());
    let mut expected: Vec<f64> = vec![1.0 / n as f64];
    for &edge in raw {
        if edges.last() == Some(&edge) {
            // The bin before this edge is the empty interval (q, q]: its reference mass sits
            // on q, in the bin that ends at q.
            let degenerate = expected.pop().unwrap_or_default();
            if let Some(last) = expected.last_mut() {
                *last += degenerate;
            }
        } else {
            edges.push(edge);
        }
        expected.push(1.0 / n as f64);
    }
    let actual = shares(&edges, current)?;
    Some(psi_of_shares(&expected, &actual))
}

/// The PSI two samples of `n_reference` and `n_current` values drawn from one distribution
/// show on average over `bins` bins, from sampling noise alone: `(bins − 1)·(1/n_ref + 1/n_cur)`
/// (PSI is close to a χ² statistic over the sample size). Small samples make PSI noisy; a
/// decision compares the PSI in excess of this floor with the bands. A reference given as
/// quantiles of a large training set counts as `n_reference = ∞` (pass `None`).
pub fn psi_noise_floor(bins: usize, n_reference: Option<usize>, n_current: usize) -> f64 {
    let inv = |n: usize| if n == 0 { 0.0 } else { 1.0 / n as f64 };
    bins.saturating_sub(1) as f64 * (n_reference.map_or(0.0, inv) + inv(n_current))
}

fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// The distinct inner cut points of quantiles `q_0..=q_n`.
fn interior_edges(quantiles: &[f64]) -> Vec<f64> {
    let mut edges: Vec<f64> = quantiles
        .get(1..quantiles.len().saturating_sub(1))
        .unwrap_or_default()
        .to_vec();
    edges.dedup();
    edges
}

/// The share of the finite `values` in each of the `edges.len() + 1` bins `(e_{i-1}, e_i]`;
/// `None` when there is no finite value.
fn shares(edges: &[f64], values: &[f64]) -> Option<Vec<f64>> {
    let mut counts = vec![0u64; edges.len() + 1];
    let mut total = 0u64;
    for &v in values.iter().filter(|v| v.is_finite()) {
        counts[edges.partition_point(|&e| e < v)] += 1;
        total += 1;
    }
    (total > 0).then(|| counts.iter().map(|&c| c as f64 / total as f64).collect())
}

fn psi_of_shares(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(PSI_EPSILON), a.max(PSI_EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum::<f64>()
        .max(0.0)
}

/// Settings of a [`PageHinkley`] detector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageHinkleyConfig {
    /// The shift of the mean, in the stream's units, tolerated as noise: each value adds
    /// `x − mean − delta` to the cumulative sum, so a stationary stream drifts down.
    pub delta: f64,
    /// The detection threshold: an alarm when the cumulative sum rises this far above its
    /// minimum. Larger is fewer false alarms and a later detection.
    pub lambda: f64,
    /// No alarm before this many values: the running mean needs a few to mean anything.
    pub min_samples: u64,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        PageHinkleyConfig {
            delta: 0.25,
            lambda: 25.0,
            min_samples: 30,
        }
    }
}

/// The Page-Hinkley test for an upward shift of a stream's mean.
///
/// With `m_t` the running mean, it keeps `U_t = Σ (x_i − m_i − delta)` and its minimum; it
/// fires when `U_t − min U > lambda`. A step of size `h > 2·delta` after a long stable run is
/// detected within about `lambda / (h/2 − delta)` values; a constant stream never fires.
#[derive(Debug, Clone, PartialEq)]
pub struct PageHinkley {
    config: PageHinkleyConfig,
    n: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
}

impl PageHinkley {
    pub fn new(config: PageHinkleyConfig) -> PageHinkley {
        PageHinkley {
            config,
            n: 0,
            mean: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
        }
    }

    /// Takes the next value; returns whether the test fires (it keeps firing until
    /// [`PageHinkley::reset`]). A non-finite value is ignored.
    pub fn update(&mut self, x: f64) -> bool {
        if x.is_finite() {
            self.n += 1;
            self.mean += (x - self.mean) / self.n as f64;
            self.cumulative += x - self.mean - self.config.delta;
            self.minimum = self.minimum.min(self.cumulative);
        }
        self.detected()
    }

    /// Whether the statistic is past `lambda` (and enough values were seen).
    pub fn detected(&self) -> bool {
        self.n >= self.config.min_samples && self.statistic() > self.config.lambda
    }

    /// `U_t − min U`: how far the cumulative sum rose above its lowest point.
    pub fn statistic(&self) -> f64 {
        self.cumulative - self.minimum
    }

    /// Values seen since the last reset.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Forgets everything seen: the next value starts a new stream.
    pub fn reset(&mut self) {
        *self = PageHinkley::new(self.config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ramp(n: usize, offset: f64) -> Vec<f64> {
        (0..n).map(|i| i as f64 + offset).collect()
    }

    #[test]
    fn bands_follow_the_usual_cut_points() {
        assert_eq!(PsiBand::of(0.0), PsiBand::Stable);
        assert_eq!(PsiBand::of(0.099), PsiBand::Stable);
        assert_eq!(PsiBand::of(0.1), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.25), PsiBand::Moderate);
        assert_eq!(PsiBand::of(0.26), PsiBand::Significant);
        assert_eq!(PsiBand::of(f64::NAN), PsiBand::Stable);
    }

    #[test]
    fn psi_of_a_shifted_sample_is_significant_and_of_a_similar_one_small() {
        let reference = ramp(1000, 0.0);
        assert_eq!(psi(&reference, &reference, 10), Some(0.0));
        let similar = ramp(1000, 5.0);
        let p = psi(&reference, &similar, 10).unwrap();
        assert!(p < 0.01, "{p}");
        let shifted = ramp(1000, 500.0);
        let p = psi(&reference, &shifted, 10).unwrap();
        assert_eq!(PsiBand::of(p), PsiBand::Significant, "{p}");
        // All of the current sample in the top decile: (1 − 0.1)·ln(10) plus the nine bins
        // it left, each (ε − 0.1)·ln(ε/0.1).
        let above = vec![5000.0; 10];
        let want = 0.9 * 10f64.ln() + 9.0 * (PSI_EPSILON - 0.1) * (PSI_EPSILON / 0.1).ln();
        let p = psi(&reference, &above, 10).unwrap();
        assert!((p - want).abs() < 1e-9, "{p} vs {want}");
    }

    #[test]
    fn psi_needs_values_on_both_sides() {
        assert_eq!(psi(&[], &[1.0], 10), None);
        assert_eq!(psi(&[1.0], &[f64::NAN], 10), None);
        assert_eq!(psi(&[1.0], &[1.0], 0), None);
    }

    #[test]
    fn a_point_mass_reference_does_not_make_empty_bins() {
        // Half the reference is exactly 0: the quantiles repeat, and the bins merge.
        let mut reference = vec![0.0; 450];
        reference.extend(ramp(550, 1.0));
        assert_eq!(psi(&reference, &reference, 10), Some(0.0));
        let q = quantiles(&reference, 10).unwrap();
        assert_eq!(&q[..5], &[0.0; 5]);
        let p = psi_from_quantiles(&q, &reference).unwrap();
        assert_eq!(PsiBand::of(p), PsiBand::Stable, "{p}");
    }

    #[test]
    fn psi_from_quantiles_matches_psi_from_the_sample() {
        let reference = ramp(10_000, 0.0);
        let q = quantiles(&reference, 10).unwrap();
        assert_eq!(q.len(), 11);
        assert_eq!(q[0], 0.0);
        assert_eq!(q[10], 9999.0);
        let current = ramp(2000, 7000.0);
        let from_sample = psi(&reference, &current, 10).unwrap();
        let from_quantiles = psi_from_quantiles(&q, &current).unwrap();
        assert!((from_sample - from_quantiles).abs() < 1e-3);
        assert_eq!(psi_from_quantiles(&[1.0], &current), None);
        assert_eq!(psi_from_quantiles(&[2.0, 1.0], &current), None);
    }

    #[test]
    fn the_noise_floor_shrinks_with_the_samples() {
        assert!((psi_noise_floor(10, Some(90), 90) - 0.2).abs() < 1e-12);
        assert!((psi_noise_floor(10, None, 90) - 0.1).abs() < 1e-12);
        assert_eq!(psi_noise_floor(1, Some(5), 5), 0.0);
    }

    #[test]
    fn page_hinkley_fires_on_a_step_and_resets() {
        let mut ph = PageHinkley::new(PageHinkleyConfig {
            delta: 0.05,
            lambda: 5.0,
            min_samples: 10,
        });
        for _ in 0..200 {
            assert!(!ph.update(1.0));
        }
        let fired_after = (1..=100).find(|_| ph.update(2.0)).unwrap();
        assert!(fired_after <= 12, "{fired_after}");
        assert!(ph.detected());
        ph.reset();
        assert_eq!(ph.samples(), 0);
        assert!(!ph.detected());
    }

    #[test]
    fn page_hinkley_waits_for_min_samples() {
        let mut ph = PageHinkley::new(PageHinkleyConfig {
            delta: 0.0,
            lambda: 1.0,
            min_samples: 5,
        });
        assert!(!ph.update(0.0));
        assert!(!ph.update(100.0));
        assert!(ph.statistic() > 1.0);
        assert!(!ph.update(100.0));
        assert!(!ph.update(100.0));
        assert!(ph.update(100.0));
    }

    proptest! {
        #[test]
        fn psi_is_never_negative_and_zero_against_itself(
            reference in prop::collection::vec(-1e3f64..1e3, 1..300),
            current in prop::collection::vec(-1e3f64..1e3, 1..300),
            bins in 1usize..20,
        ) {
            let p = psi(&reference, &current, bins).unwrap();
            prop_assert!(p >= 0.0 && p.is_finite());
            prop_assert!(psi(&reference, &reference, bins).unwrap() < 1e-12);
            let q = quantiles(&reference, bins).unwrap();
            let p = psi_from_quantiles(&q, &current).unwrap();
            prop_assert!(p >= 0.0 && p.is_finite());
        }

        #[test]
        fn page_hinkley_detects_a_step_within_its_bound(
            level in -100.0f64..100.0,
            step in 0.5f64..10.0,
            prefix in 100usize..500,
        ) {
            let config = PageHinkleyConfig { delta: 0.05, lambda: 5.0, min_samples: 10 };
            let mut ph = PageHinkley::new(config);
            for _ in 0..prefix {
                prop_assert!(!ph.update(level), "fired on a constant stream");
            }
            // Within the bound the running mean is at most halfway up the step, so each value
            // adds at least step/2 − delta.
            let bound = (config.lambda / (step / 2.0 - config.delta)).ceil() as usize + 1;
            let fired = (1..=bound).any(|_| ph.update(level + step));
            prop_assert!(fired, "no alarm within {} values", bound);
        }
    }
}
