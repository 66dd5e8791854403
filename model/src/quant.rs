//! int8 post-training quantisation and integer-only inference, as an NPU runs the model.
//!
//! Design invariants (the TFLite / NPU-compiler scheme):
//!
//! - Weights: int8, symmetric (zero point 0), one scale per output channel
//!   (`s_w[j] = max_k |w[j][k]| / 127`). Biases: int32 in units of `s_in · s_w[j]`.
//! - Activations: int8 with one scale and zero point per tensor (asymmetric), calibrated from
//!   the float model's activation ranges over calibration windows. The input range gets
//!   [`INPUT_HEADROOM`] so that windows somewhat outside the training spread are still
//!   represented rather than clipped; hidden ranges get [`HIDDEN_HEADROOM`].
//! - The output layer is quantised with the **input's** scale and zero point, so the
//!   reconstruction error is a difference of int8 codes: `score = s_in² · Σ (q_in − q_out)² / n`.
//!   Only that final sum is converted to float.
//! - A layer computes `acc = bias + Σ w·(q − zp_in)` in i32 (i8×i8 products; widths are capped
//!   at [`MAX_WIDTH`] and biases at [`BIAS_LIMIT`] so the sum cannot overflow), then requantises
//!   with a fixed-point multiplier `m ∈ [2³⁰, 2³¹)` and a shift: `round(acc · m / 2^(31+shift))`
//!   with a 64-bit product, adds the output zero point and clamps to the activation range
//!   (ReLU is the clamp at the output zero point).
//! - The threshold is set like the float one, but on the **int8** scores of the calibration
//!   windows, so the deployed comparison uses the deployed arithmetic.

use crate::autoencoder::{
    FloatModel, Inference, Normalisation, Scratch, check_features, threshold_from,
};
use crate::{Error, MAX_WIDTH, Result};

/// Factor by which the calibrated input range is widened.
pub const INPUT_HEADROOM: f32 = 1.5;
/// Factor by which calibrated hidden-layer ranges are widened.
pub const HIDDEN_HEADROOM: f32 = 1.25;
/// Largest magnitude of an int32 bias; with at most [`MAX_WIDTH`] inputs of at most 255 × 128
/// each, accumulators stay inside i32.
pub const BIAS_LIMIT: i32 = 1 << 30;
/// Smallest activation range a tensor is quantised over (a dead layer still gets a scale).
const MIN_RANGE: f32 = 1e-6;

/// Scale and zero point of an int8 tensor: `real = scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantParams {
    /// Real value of one int8 step (> 0, finite).
    pub scale: f32,
    /// The int8 code of real 0, in [-128, 127].
    pub zero_point: i32,
}

impl QuantParams {
    /// Parameters covering `[min, max]` (widened to include 0) with all 256 codes.
    fn covering(min: f32, max: f32) -> Self {
        let min = min.min(0.0);
        let mut max = max.max(0.0);
        if max - min < MIN_RANGE {
            max = min + MIN_RANGE;
        }
        let scale = (max - min) / 255.0;
        let zero_point = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i32;
        Self { scale, zero_point }
    }

    #[inline]
    fn quantise(&self, x: f32) -> i8 {
        let q = (x / self.scale).round() + self.zero_point as f32;
        q.clamp(-128.0, 127.0) as i8
    }

    pub(crate) fn validate(&self, tensor: &str) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(Error::Tensor {
                tensor: format!("{tensor}.scale"),
                reason: format!("scale {} is not finite and > 0", self.scale),
            });
        }
        if !(-128..=127).contains(&self.zero_point) {
            return Err(Error::Tensor {
                tensor: format!("{tensor}.zero_point"),
                reason: format!("zero point {} is outside int8", self.zero_point),
            });
        }
        Ok(())
    }
}

/// One int8 fully connected layer.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLayer {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    /// Row-major `[outputs][inputs]`.
    pub(crate) weights: Vec<i8>,
    pub(crate) weight_scales: Vec<f32>,
    pub(crate) bias: Vec<i32>,
    pub(crate) multiplier: Vec<i32>,
    pub(crate) shift: Vec<i32>,
    pub(crate) output: QuantParams,
    /// Inclusive int8 output range: `[zero_point, 127]` after a ReLU, `[-128, 127]` otherwise.
    pub(crate) activation_min: i32,
    pub(crate) activation_max: i32,
}

impl QuantizedLayer {
    /// Input width.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Output width.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// Row-major `[outputs][inputs]` int8 weights.
    pub fn weights(&self) -> &[i8] {
        &self.weights
    }
    /// Per-output-channel weight scales.
    pub fn weight_scales(&self) -> &[f32] {
        &self.weight_scales
    }
    /// int32 biases, in units of input scale × weight scale.
    pub fn bias(&self) -> &[i32] {
        &self.bias
    }
    /// Output tensor's scale and zero point.
    pub fn output(&self) -> QuantParams {
        self.output
    }
    /// Per-channel requantisation: fixed-point multiplier and right shift.
    pub fn requantisation(&self) -> (&[i32], &[i32]) {
        (&self.multiplier, &self.shift)
    }
    /// Inclusive int8 output range; a ReLU clamps at the output zero point.
    pub fn activation_range(&self) -> (i32, i32) {
        (self.activation_min, self.activation_max)
    }

    /// Runs the layer on int8 `input` whose zero point is `input_zp`.
    fn forward(&self, input: &[i8], input_zp: i32, centred: &mut Vec<i32>, output: &mut Vec<i8>) {
        centred.clear();
        centred.extend(input.iter().map(|&q| i32::from(q) - input_zp));
        output.clear();
        for j in 0..self.outputs {
            let row = &self.weights[j * self.inputs..(j + 1) * self.inputs];
            let mut acc = self.bias[j];
            for (&w, &x) in row.iter().zip(centred.iter()) {
                acc += i32::from(w) * x;
            }
            let scaled = requantise(acc, self.multiplier[j], self.shift[j]);
            let q = (scaled + i64::from(self.output.zero_point)).clamp(
                i64::from(self.activation_min),
                i64::from(self.activation_max),
            );
            output.push(q as i8);
        }
    }

    /// Checks everything inference relies on; `input` is the previous tensor's parameters.
    pub(crate) fn validate(&self, name: &str, input: QuantParams) -> Result<()> {
        let tensor = |suffix: &str| format!("{name}.{suffix}");
        let bad = |suffix: &str, reason: String| {
            Err(Error::Tensor {
                tensor: tensor(suffix),
                reason,
            })
        };
        if self.inputs == 0
            || self.outputs == 0
            || self.inputs > MAX_WIDTH
            || self.outputs > MAX_WIDTH
        {
            return bad(
                "weight",
                format!(
                    "shape [{}, {}] is outside 1..={MAX_WIDTH}",
                    self.outputs, self.inputs
                ),
            );
        }
        if self.weights.len() != self.inputs * self.outputs {
            return bad("weight", "length does not match its shape".into());
        }
        for (suffix, len) in [
            ("weight_scale", self.weight_scales.len()),
            ("bias", self.bias.len()),
            ("multiplier", self.multiplier.len()),
            ("shift", self.shift.len()),
        ] {
            if len != self.outputs {
                return bad(
                    suffix,
                    format!("{len} entries for {} outputs", self.outputs),
                );
            }
        }
        if let Some(s) = self
            .weight_scales
            .iter()
            .find(|s| !(s.is_finite() && **s > 0.0))
        {
            return bad("weight_scale", format!("scale {s} is not finite and > 0"));
        }
        if let Some(b) = self
            .bias
            .iter()
            .find(|b| b.unsigned_abs() > BIAS_LIMIT as u32)
        {
            return bad("bias", format!("{b} exceeds ±{BIAS_LIMIT}"));
        }
        self.output.validate(&tensor("output"))?;
        if !(-128 <= self.activation_min
            && self.activation_min <= self.activation_max
            && self.activation_max <= 127)
        {
            return bad(
                "activation_range",
                format!(
                    "[{}, {}] is not an int8 range",
                    self.activation_min, self.activation_max
                ),
            );
        }
        for j in 0..self.outputs {
            let expected = quantize_multiplier(
                f64::from(input.scale) * f64::from(self.weight_scales[j])
                    / f64::from(self.output.scale),
            )
            .ok_or_else(|| Error::Tensor {
                tensor: tensor("multiplier"),
                reason: format!("channel {j}: the scales give a rescale factor ≥ 2³⁰"),
            })?;
            if (self.multiplier[j], self.shift[j]) != expected {
                return bad(
                    "multiplier",
                    format!(
                        "channel {j}: multiplier {} shift {} do not match the scales ({} {})",
                        self.multiplier[j], self.shift[j], expected.0, expected.1
                    ),
                );
            }
        }
        Ok(())
    }
}

/// `round(acc · multiplier / 2^(31 + shift))`, rounding half up, in 64-bit. `shift` is in
/// [-30, 31], so the total shift is in [1, 62] and `|acc · multiplier| < 2⁶²` cannot overflow.
#[inline]
fn requantise(acc: i32, multiplier: i32, shift: i32) -> i64 {
    let total = (31 + shift).clamp(1, 62) as u32;
    let product = i64::from(acc) * i64::from(multiplier);
    (product + (1i64 << (total - 1))) >> total
}

/// The fixed-point form `(m, shift)` of a positive real rescale factor `factor`, with
/// `factor ≈ m · 2^-(31 + shift)` and `m ∈ [2³⁰, 2³¹)`; `(0, 0)` for a factor too small to
/// move any i32 accumulator. `None` for a factor ≥ 2³⁰ (or not finite), which no sane set of
/// scales produces.
pub(crate) fn quantize_multiplier(factor: f64) -> Option<(i32, i32)> {
    if !factor.is_finite() || factor < 0.0 {
        return None;
    }
    if factor == 0.0 {
        return Some((0, 0));
    }
    // factor = fraction · 2^exponent with fraction in [0.5, 1).
    let mut exponent = factor.log2().floor() as i32 + 1;
    let mut fraction = factor / 2f64.powi(exponent);
    while fraction >= 1.0 {
        fraction /= 2.0;
        exponent += 1;
    }
    while fraction < 0.5 {
        fraction *= 2.0;
        exponent -= 1;
    }
    let mut m = (fraction * 2f64.powi(31)).round() as i64;
    if m == 1i64 << 31 {
        m /= 2;
        exponent += 1;
    }
    let shift = -exponent;
    if shift > 31 {
        return Some((0, 0));
    }
    if shift < -30 {
        return None;
    }
    Some((m as i32, shift))
}

/// The int8 model: normalisation, input quantisation, integer layers, threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedModel {
    pub(crate) feature_names: Vec<String>,
    pub(crate) normalisation: Normalisation,
    pub(crate) input: QuantParams,
    pub(crate) layers: Vec<QuantizedLayer>,
    pub(crate) threshold: f32,
}

impl FloatModel {
    /// Quantises the model to int8, calibrating activation ranges on `calibration` windows
    /// (raw features; normally the training windows), and sets the int8 threshold from the
    /// int8 scores of those windows with this model's quantile and margin.
    ///
    /// ```
    /// use loopline_model::{FitOptions, fit};
    ///
    /// let windows: Vec<Vec<f32>> = (0..300)
    ///     .map(|i| {
    ///         let load = (i as f32 * 0.37).sin();
    ///         vec![load, 2.0 * load + 1.0, load * load]
    ///     })
    ///     .collect();
    /// let names = vec!["a.rms".into(), "b.rms".into(), "c.rms".into()];
    /// let float = fit(&windows, names, &FitOptions { hidden: vec![8, 2], ..Default::default() }).unwrap();
    /// let int8 = float.quantize(&windows).unwrap();
    ///
    /// assert!(!int8.infer(&windows[5]).unwrap().anomaly);
    /// assert!(int8.infer(&[1.0, -1.0, 0.0]).unwrap().anomaly);
    /// assert_eq!(int8.ops(), 2 * (3 * 8 + 8 * 2 + 2 * 8 + 8 * 3 + 3));
    /// ```
    pub fn quantize(&self, calibration: &[Vec<f32>]) -> Result<QuantizedModel> {
        if calibration.is_empty() {
            return Err(Error::Calibration {
                reason: "no calibration windows".into(),
            });
        }
        let layers = self.layers();
        // Calibrated ranges: index 0 is the input, k+1 the output of layer k.
        let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); layers.len() + 1];
        let mut scratch = Scratch::new(layers);
        for window in calibration {
            self.trace(window, &mut scratch)?;
            let tensors = std::iter::once(&scratch.input).chain(&scratch.activations);
            for (range, values) in ranges.iter_mut().zip(tensors) {
                for &v in values {
                    range.0 = range.0.min(v);
                    range.1 = range.1.max(v);
                }
            }
        }
        // The output is scored against the input on one scale, so the input range covers both.
        let (in_min, in_max) = ranges[0];
        let (out_min, out_max) = ranges[layers.len()];
        let input = QuantParams::covering(
            INPUT_HEADROOM * in_min.min(out_min),
            INPUT_HEADROOM * in_max.max(out_max),
        );

        let mut quantized = Vec::with_capacity(layers.len());
        let mut previous = input;
        for (k, layer) in layers.iter().enumerate() {
            let output = if k + 1 == layers.len() {
                input
            } else {
                let (lo, hi) = ranges[k + 1];
                QuantParams::covering(HIDDEN_HEADROOM * lo, HIDDEN_HEADROOM * hi)
            };
            let q = quantize_layer(
                layer.inputs(),
                layer.outputs(),
                layer.weights(),
                layer.bias(),
                layer.relu(),
                previous,
                output,
            )
            .map_err(|reason| Error::Calibration {
                reason: format!("layer {k}: {reason}"),
            })?;
            quantized.push(q);
            previous = output;
        }

        let mut model = QuantizedModel {
            feature_names: self.feature_names().to_vec(),
            normalisation: self.normalisation().clone(),
            input,
            layers: quantized,
            threshold: 0.0,
        };
        let scores = calibration
            .iter()
            .map(|w| model.infer(w).map(|i| i.score))
            .collect::<Result<Vec<_>>>()?;
        model.threshold =
            threshold_from(&scores, self.threshold_quantile(), self.threshold_margin())?;
        Ok(model)
    }
}

fn quantize_layer(
    inputs: usize,
    outputs: usize,
    weights: &[f32],
    bias: &[f32],
    relu: bool,
    input: QuantParams,
    output: QuantParams,
) -> std::result::Result<QuantizedLayer, String> {
    let mut q_weights = Vec::with_capacity(weights.len());
    let mut weight_scales = Vec::with_capacity(outputs);
    let mut q_bias = Vec::with_capacity(outputs);
    let mut multiplier = Vec::with_capacity(outputs);
    let mut shift = Vec::with_capacity(outputs);
    for j in 0..outputs {
        let row = &weights[j * inputs..(j + 1) * inputs];
        let max_abs = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        // An all-zero row quantises to zeros under any scale; 1 keeps the scale valid.
        let scale = if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 };
        q_weights.extend(
            row.iter()
                .map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8),
        );
        weight_scales.push(scale);
        let bias_scale = f64::from(input.scale) * f64::from(scale);
        let b = (f64::from(bias[j]) / bias_scale).round();
        q_bias.push(b.clamp(-f64::from(BIAS_LIMIT), f64::from(BIAS_LIMIT)) as i32);
        let (m, s) = quantize_multiplier(bias_scale / f64::from(output.scale))
            .ok_or_else(|| format!("channel {j}: rescale factor out of range"))?;
        multiplier.push(m);
        shift.push(s);
    }
    Ok(QuantizedLayer {
        inputs,
        outputs,
        weights: q_weights,
        weight_scales,
        bias: q_bias,
        multiplier,
        shift,
        output,
        activation_min: if relu { output.zero_point } else { -128 },
        activation_max: 127,
    })
}

impl QuantizedModel {
    /// Scores one window of raw features: normalise and quantise the input (the only float
    /// steps before the score), run the layers in integer arithmetic, and dequantise the
    /// summed squared error of the int8 codes.
    pub fn infer(&self, features: &[f32]) -> Result<Inference> {
        check_features(features, &self.feature_names)?;
        let input: Vec<i8> = features
            .iter()
            .enumerate()
            .map(|(i, &x)| self.input.quantise(self.normalisation.apply(i, x)))
            .collect();
        let width = self.layers.iter().map(|l| l.outputs).max().unwrap_or(0);
        let mut current = input.clone();
        let mut next = Vec::with_capacity(width);
        let mut centred = Vec::with_capacity(width.max(input.len()));
        let mut zero_point = self.input.zero_point;
        for layer in &self.layers {
            layer.forward(&current, zero_point, &mut centred, &mut next);
            std::mem::swap(&mut current, &mut next);
            zero_point = layer.output.zero_point;
        }
        // Output and input share scale and zero point: compare codes directly.
        let sum_sq: i64 = input
            .iter()
            .zip(&current)
            .map(|(&a, &b)| {
                let d = i64::from(a) - i64::from(b);
                d * d
            })
            .sum();
        let scale = f64::from(self.input.scale);
        let score = (scale * scale * sum_sq as f64 / input.len() as f64) as f32;
        Ok(Inference {
            score,
            anomaly: score > self.threshold,
        })
    }

    /// Arithmetic operations per inference, counting a multiply-accumulate as two: every
    /// layer's `2 · inputs · outputs` plus `2 · features` for the squared error. The NPU
    /// simulator's latency model divides this by the part's throughput.
    pub fn ops(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| 2 * l.inputs as u64 * l.outputs as u64)
            .sum();
        layers + 2 * self.feature_names.len() as u64
    }

    /// Bytes of weights and biases (int8 weights, int32 biases): what the NPU holds.
    pub fn parameter_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| l.weights.len() as u64 + 4 * l.bias.len() as u64)
            .sum()
    }

    /// Anomaly threshold on the int8 score.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Per-feature normalisation applied before quantising the input.
    pub fn normalisation(&self) -> &Normalisation {
        &self.normalisation
    }

    /// Scale and zero point of the input (and reconstruction) tensor.
    pub fn input_params(&self) -> QuantParams {
        self.input
    }

    /// The layers, input to output.
    pub fn layers(&self) -> &[QuantizedLayer] {
        &self.layers
    }

    /// Widths from input to output, e.g. `[25, 16, 4, 16, 25]`.
    pub fn layer_sizes(&self) -> Vec<usize> {
        std::iter::once(self.feature_names.len())
            .chain(self.layers.iter().map(|l| l.outputs))
            .collect()
    }

    /// Checks the whole model: shapes chain from the feature count back to it, every scale,
    /// zero point, bias and requantisation parameter is in range and consistent.
    pub(crate) fn validate(&self) -> Result<()> {
        let d = self.feature_names.len();
        crate::autoencoder::check_names(&self.feature_names)?;
        crate::autoencoder::check_normalisation(&self.normalisation, d)?;
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(Error::BadMetadata {
                key: "threshold".into(),
                reason: format!("{} is not a finite value ≥ 0", self.threshold),
            });
        }
        self.input.validate("input")?;
        if self.layers.is_empty() {
            return Err(Error::Tensor {
                tensor: "layers.0.weight".into(),
                reason: "the model has no layers".into(),
            });
        }
        let mut width = d;
        let mut previous = self.input;
        for (k, layer) in self.layers.iter().enumerate() {
            let name = format!("layers.{k}");
            if layer.inputs != width {
                return Err(Error::Tensor {
                    tensor: format!("{name}.weight"),
                    reason: format!(
                        "takes {} inputs; the previous width is {width}",
                        layer.inputs
                    ),
                });
            }
            layer.validate(&name, previous)?;
            width = layer.outputs;
            previous = layer.output;
        }
        let last = self.layers.len() - 1;
        if width != d {
            return Err(Error::Tensor {
                tensor: format!("layers.{last}.weight"),
                reason: format!("the model ends at width {width}, not the {d} features"),
            });
        }
        if previous != self.input {
            return Err(Error::Tensor {
                tensor: format!("layers.{last}.output.scale"),
                reason: "the reconstruction must share the input's scale and zero point".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn set_threshold(&mut self, threshold: f32) {
        self.threshold = threshold;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FitOptions, fit, stats};

    #[test]
    fn multiplier_represents_the_factor() {
        for factor in [
            1e-9,
            3.3e-5,
            0.0123,
            0.5,
            0.75,
            0.999_999_9,
            1.0,
            3.7,
            1000.0,
        ] {
            let (m, shift) = quantize_multiplier(factor).unwrap();
            assert!((1 << 30..=i32::MAX).contains(&m), "{factor}: {m}");
            let back = f64::from(m) * 2f64.powi(-(31 + shift));
            assert!((back / factor - 1.0).abs() < 1e-9, "{factor}: {back}");
        }
        assert_eq!(quantize_multiplier(0.0), Some((0, 0)));
        assert_eq!(quantize_multiplier(1e-12), Some((0, 0)));
        assert_eq!(quantize_multiplier(2f64.powi(31)), None);
        assert_eq!(quantize_multiplier(f64::NAN), None);
    }

    #[test]
    fn requantise_rounds_like_the_real_product() {
        let (m, s) = quantize_multiplier(0.0123).unwrap();
        for acc in [-100_000, -4065, -1, 0, 1, 40, 4065, 123_456] {
            let expected = (f64::from(acc) * 0.0123).round();
            assert_eq!(requantise(acc, m, s) as f64, expected, "{acc}");
        }
        let (m, s) = quantize_multiplier(3.5).unwrap();
        assert_eq!(requantise(10, m, s), 35);
        assert_eq!(
            requantise(i32::MAX, m, s),
            (f64::from(i32::MAX) * 3.5).round() as i64
        );
    }

    #[test]
    fn params_cover_the_range_and_zero_exactly() {
        let p = QuantParams::covering(0.0, 6.0);
        assert_eq!(p.zero_point, -128);
        assert_eq!(p.quantise(0.0), -128);
        assert_eq!(p.quantise(6.0), 127);
        assert_eq!(p.quantise(100.0), 127);
        let p = QuantParams::covering(-2.0, 2.0);
        assert_eq!(p.quantise(0.0) as i32, p.zero_point);
        let dead = QuantParams::covering(0.0, 0.0);
        assert!(dead.scale > 0.0);
    }

    #[test]
    fn int8_tracks_float_on_held_out_windows() {
        let train = crate::autoencoder::tests_support::latent_windows(800, 20, 11);
        let held_out = crate::autoencoder::tests_support::latent_windows(300, 20, 12);
        let names: Vec<String> = (0..20).map(|i| format!("c{i}.rms")).collect();
        let float = fit(&train, names, &FitOptions::default()).unwrap();
        let int8 = float.quantize(&train).unwrap();
        int8.validate().unwrap();
        let fs = float.scores(&held_out).unwrap();
        let qs: Vec<f32> = held_out
            .iter()
            .map(|w| int8.infer(w).unwrap().score)
            .collect();
        let rho = stats::spearman(&fs, &qs).unwrap();
        assert!(rho > 0.95, "rank correlation {rho}");
        let median_f = stats::quantile(&fs, 0.5).unwrap();
        let median_q = stats::quantile(&qs, 0.5).unwrap();
        assert!(
            (median_q / median_f - 1.0).abs() < 0.15,
            "{median_f} vs {median_q}"
        );
        assert!((int8.threshold() / float.threshold() - 1.0).abs() < 0.25);
    }
}
