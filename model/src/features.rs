//! Per-window features: what the model sees of a channel's raw samples.
//!
//! Design invariants:
//!
//! - Each channel contributes [`FEATURES_PER_CHANNEL`] features, always in the order of
//!   [`FEATURE_KINDS`] (`rms`, `peak`, `kurtosis`, `mean`, `trend`), named
//!   `<channel>.<kind>`. The model artifact stores these names, so the order is part of the
//!   contract between the agent that extracts features and the model that scores them.
//! - Feature extraction runs on the agent for every sample (1 kHz × 8 channels on a Pi class
//!   CPU): two passes over the window, no allocation beyond the output vector, about a dozen
//!   floating-point operations per sample. The accumulators are `f64` so that a 10 000-sample
//!   window of a large-offset signal (a pressure in pascals) keeps its small variations.
//! - The statistics are centred (second pass around the mean), so a large DC offset does not
//!   destroy the variance, kurtosis or trend by cancellation.
//! - Nothing here produces NaN from finite input: a constant window has kurtosis 0 and trend 0,
//!   a one-sample window has trend 0. Non-finite samples are reported as an error by
//!   [`FeatureLayout::extract`], naming the channel.

use crate::{Error, Result};

/// Features computed per channel, in this order.
pub const FEATURE_KINDS: [&str; 5] = ["rms", "peak", "kurtosis", "mean", "trend"];

/// Number of features per channel.
pub const FEATURES_PER_CHANNEL: usize = FEATURE_KINDS.len();

/// The features of one channel's samples in one window, in [`FEATURE_KINDS`] order:
///
/// - `rms`: root mean square, `sqrt(mean(x²))` (includes the DC part).
/// - `peak`: `max |x|`.
/// - `kurtosis`: **excess** (Fisher) kurtosis, `m4 / m2² − 3` with population central moments,
///   so Gaussian noise scores about 0, a pure sine −1.5, and impulsive signals (bearing defects)
///   score high. A window whose variance is zero (or at the rounding level of its magnitude) has
///   kurtosis 0: no evidence of heavy tails, and never NaN.
/// - `mean`.
/// - `trend`: least-squares slope of the samples against time, in units per **second**, with
///   samples `sample_interval_us` microseconds apart. 0 for a window of fewer than two samples
///   or a non-positive or non-finite interval.
///
/// An empty window gives all zeros; [`FeatureLayout::extract`] rejects empty windows before
/// they get here.
///
/// ```
/// use loopline_model::window_features;
///
/// // A ramp 0, 1, 2, 3 sampled every millisecond rises at 1000 units per second.
/// let [rms, peak, kurtosis, mean, trend] = window_features(&[0.0, 1.0, 2.0, 3.0], 1000.0);
/// assert_eq!(peak, 3.0);
/// assert_eq!(mean, 1.5);
/// assert!((rms - 3.5f32.sqrt()).abs() < 1e-6);
/// assert!((trend - 1000.0).abs() < 1e-3);
/// assert!(kurtosis < 0.0); // flatter than a Gaussian
/// ```
pub fn window_features(samples: &[f32], sample_interval_us: f64) -> [f32; FEATURES_PER_CHANNEL] {
    let n = samples.len();
    if n == 0 {
        return [0.0; FEATURES_PER_CHANNEL];
    }
    let count = n as f64;

    // Pass 1: sum, sum of squares, peak.
    let mut sum = 0.0f64;
    let mut sum_sq = 0.0f64;
    let mut peak = 0.0f32;
    for &x in samples {
        let x64 = f64::from(x);
        sum += x64;
        sum_sq += x64 * x64;
        peak = peak.max(x.abs());
    }
    let mean = sum / count;
    let rms = (sum_sq / count).sqrt();

    // Pass 2: centred moments and the time covariance for the slope. The sample index is
    // centred too, so `sum_td` is Σ (i − ī)(x − x̄) without cancellation.
    let centre = (count - 1.0) / 2.0;
    let mut m2 = 0.0f64;
    let mut m4 = 0.0f64;
    let mut sum_td = 0.0f64;
    let mut t = -centre;
    for &x in samples {
        let d = f64::from(x) - mean;
        let d2 = d * d;
        m2 += d2;
        m4 += d2 * d2;
        sum_td += t * d;
        t += 1.0;
    }
    m2 /= count;
    m4 /= count;

    // Variance at or below the rounding noise of the signal's magnitude counts as constant.
    let noise_floor = f64::from(peak) * f64::from(f32::EPSILON);
    let kurtosis = if m2 > noise_floor * noise_floor && m2 > f64::MIN_POSITIVE {
        m4 / (m2 * m2) - 3.0
    } else {
        0.0
    };

    // Σ (i − ī)² = n (n² − 1) / 12.
    let sum_tt = count * (count * count - 1.0) / 12.0;
    let trend = if n >= 2 && sample_interval_us.is_finite() && sample_interval_us > 0.0 {
        sum_td / sum_tt / (sample_interval_us * 1e-6)
    } else {
        0.0
    };

    [rms as f32, peak, kurtosis as f32, mean as f32, trend as f32]
}

/// The named input channels of a model and the feature vector they produce, in channel order.
///
/// ```
/// use loopline_model::FeatureLayout;
///
/// let layout = FeatureLayout::new(&["vibration", "temperature"]).unwrap();
/// assert_eq!(layout.feature_names()[0], "vibration.rms");
/// assert_eq!(layout.feature_names()[9], "temperature.trend");
///
/// let vibration = [0.5f32, -0.5, 0.5, -0.5];
/// let temperature = [40.0f32, 40.0, 40.0, 40.0];
/// let features = layout.extract(&[&vibration, &temperature], 1000.0).unwrap();
/// assert_eq!(features.len(), 10);
/// assert_eq!(features[0], 0.5); // vibration.rms
/// assert_eq!(features[8], 40.0); // temperature.mean
///
/// let err = layout.extract(&[&vibration, &[]], 1000.0).unwrap_err();
/// assert_eq!(err.to_string(), "channel `temperature` has no samples in this window");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayout {
    channels: Vec<String>,
    feature_names: Vec<String>,
}

impl FeatureLayout {
    /// A layout over `channels`, in this order. Channel names must be non-empty, unique, and
    /// free of `.` and whitespace (a `.` would make `<channel>.<kind>` ambiguous).
    pub fn new(channels: &[&str]) -> Result<Self> {
        if channels.is_empty() {
            return Err(Error::BadChannelName {
                name: String::new(),
                reason: "a layout needs at least one channel".into(),
            });
        }
        let mut seen: Vec<&str> = Vec::with_capacity(channels.len());
        for &name in channels {
            check_channel_name(name)?;
            if seen.contains(&name) {
                return Err(Error::BadChannelName {
                    name: name.to_owned(),
                    reason: "listed twice".into(),
                });
            }
            seen.push(name);
        }
        let feature_names = channels
            .iter()
            .flat_map(|c| FEATURE_KINDS.iter().map(move |k| format!("{c}.{k}")))
            .collect();
        Ok(Self {
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            feature_names,
        })
    }

    /// The channels, in the order [`extract`](Self::extract) expects their windows.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// `<channel>.<kind>` for every channel and [`FEATURE_KINDS`] entry, in vector order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Length of the feature vector.
    pub fn feature_count(&self) -> usize {
        self.feature_names.len()
    }

    /// The feature vector of one window: `windows[i]` holds the samples of `channels()[i]`,
    /// sampled every `sample_interval_us` microseconds.
    pub fn extract(&self, windows: &[&[f32]], sample_interval_us: f64) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.feature_count());
        self.extract_into(windows, sample_interval_us, &mut out)?;
        Ok(out)
    }

    /// Like [`extract`](Self::extract), writing into `out` (cleared first) so that a caller
    /// extracting window after window reuses one buffer. On error `out` is left empty.
    pub fn extract_into(
        &self,
        windows: &[&[f32]],
        sample_interval_us: f64,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.clear();
        if windows.len() != self.channels.len() {
            return Err(Error::ChannelCount {
                expected: self.channels.len(),
                got: windows.len(),
            });
        }
        if !(sample_interval_us.is_finite() && sample_interval_us > 0.0) {
            return Err(Error::BadSampleInterval {
                value: sample_interval_us,
            });
        }
        for (channel, samples) in self.channels.iter().zip(windows) {
            if samples.is_empty() {
                return Err(Error::EmptyChannel {
                    channel: channel.clone(),
                });
            }
            let features = window_features(samples, sample_interval_us);
            // Finite samples give finite features; the check here catches NaN/inf samples
            // (and overflow of huge ones) at the cost of five comparisons, not one per sample.
            if let Some(k) = features.iter().position(|f| !f.is_finite()) {
                out.clear();
                return Err(Error::NonFiniteFeature {
                    feature: format!("{channel}.{}", FEATURE_KINDS[k]),
                });
            }
            out.extend_from_slice(&features);
        }
        Ok(())
    }
}

pub(crate) fn check_channel_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.contains('.') {
        "contains `.`, which separates channel and feature kind"
    } else if name.chars().any(char::is_whitespace) {
        "contains whitespace"
    } else {
        return Ok(());
    };
    Err(Error::BadChannelName {
        name: name.to_owned(),
        reason: reason.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn sine_has_known_rms_peak_and_kurtosis() {
        // 10 full periods of a sine of amplitude 2 at 1 kHz sampling, 100 samples per period.
        let samples: Vec<f32> = (0..1000)
            .map(|i| 2.0 * (std::f32::consts::TAU * i as f32 / 100.0).sin())
            .collect();
        let [rms, peak, kurtosis, mean, trend] = window_features(&samples, 1000.0);
        assert!(close(rms, 2.0 / 2f32.sqrt(), 1e-4), "{rms}");
        assert!(close(peak, 2.0, 1e-4), "{peak}");
        assert!(close(kurtosis, -1.5, 1e-3), "{kurtosis}");
        assert!(mean.abs() < 1e-5, "{mean}");
        // Whole periods of a sine starting at 0 still have a small negative least-squares
        // slope: −3A/(πK) per window for K periods, here −0.19 × 2.
        assert!((trend + 0.382).abs() < 0.01, "{trend}");
    }

    #[test]
    fn constant_window_has_zero_kurtosis_and_trend_not_nan() {
        for value in [0.0f32, 0.1, -3.7, 101_325.0] {
            let samples = vec![value; 1000];
            let f = window_features(&samples, 1000.0);
            assert_eq!(f, [value.abs(), value.abs(), 0.0, value, 0.0], "{value}");
        }
        let one = window_features(&[5.0], 1000.0);
        assert_eq!(one, [5.0, 5.0, 0.0, 5.0, 0.0]);
        assert_eq!(window_features(&[], 1000.0), [0.0; 5]);
    }

    #[test]
    fn large_offset_does_not_destroy_variance_or_trend() {
        // A pressure around 100 kPa with a ±1 Pa square wave and a 1 Pa/s ramp.
        let samples: Vec<f32> = (0..1000)
            .map(|i| 100_000.0 + if i % 2 == 0 { 1.0 } else { -1.0 } + 0.001 * i as f32)
            .collect();
        let [_, _, kurtosis, mean, trend] = window_features(&samples, 1000.0);
        assert!(close(mean, 100_000.5, 1e-6), "{mean}");
        assert!(close(trend, 1.0, 2e-2), "{trend}");
        // Square wave plus a small ramp: close to the square wave's −2.
        assert!(kurtosis < -1.5 && kurtosis > -2.01, "{kurtosis}");
    }

    #[test]
    fn trend_scales_with_the_sample_interval() {
        let ramp: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert!(close(window_features(&ramp, 1000.0)[4], 1000.0, 1e-5));
        assert!(close(window_features(&ramp, 500.0)[4], 2000.0, 1e-5));
        assert_eq!(window_features(&ramp, 0.0)[4], 0.0);
        assert_eq!(window_features(&ramp, f64::NAN)[4], 0.0);
    }

    #[test]
    fn spikes_raise_kurtosis() {
        let mut samples: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let base = window_features(&samples, 1000.0)[2];
        samples[500] = 200.0;
        let spiky = window_features(&samples, 1000.0)[2];
        assert!(spiky > base + 50.0, "{base} -> {spiky}");
    }

    #[test]
    fn layout_names_features_in_channel_then_kind_order() {
        let layout = FeatureLayout::new(&["a", "b"]).unwrap();
        assert_eq!(
            layout.feature_names(),
            [
                "a.rms",
                "a.peak",
                "a.kurtosis",
                "a.mean",
                "a.trend",
                "b.rms",
                "b.peak",
                "b.kurtosis",
                "b.mean",
                "b.trend"
            ]
        );
        assert_eq!(layout.channels(), ["a", "b"]);
        assert_eq!(layout.feature_count(), 10);
    }

    #[test]
    fn bad_layouts_are_rejected_with_the_name() {
        let err = FeatureLayout::new(&["a", "a"]).unwrap_err();
        assert_eq!(err.to_string(), "bad channel name `a`: listed twice");
        let err = FeatureLayout::new(&["motor.current"]).unwrap_err();
        assert!(err.to_string().contains("`motor.current`"), "{err}");
        assert!(FeatureLayout::new(&[""]).is_err());
        assert!(FeatureLayout::new(&["a b"]).is_err());
        assert!(FeatureLayout::new(&[]).is_err());
    }

    #[test]
    fn extract_checks_its_input() {
        let layout = FeatureLayout::new(&["vib", "temp"]).unwrap();
        let ok = [1.0f32, 2.0];
        let err = layout.extract(&[&ok], 1000.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected windows for 2 channels in layout order, got 1"
        );
        let err = layout.extract(&[&[], &ok], 1000.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "channel `vib` has no samples in this window"
        );
        let err = layout
            .extract(&[&ok, &[1.0, f32::NAN]], 1000.0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "feature `temp.rms` is not finite (a NaN or infinite sample in the window)"
        );
        let err = layout.extract(&[&ok, &ok], -1.0).unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");

        let mut out = vec![9.0; 3];
        layout.extract_into(&[&ok, &ok], 1000.0, &mut out).unwrap();
        assert_eq!(out.len(), 10);
        assert_eq!(out[..5], window_features(&ok, 1000.0));
    }
}
