//! The float autoencoder: normalisation, deterministic training, scoring and threshold.
//!
//! Design invariants:
//!
//! - Architecture: `in → h₀ → … → code → … → h₀ → in`, the decoder mirroring the encoder
//!   given by [`FitOptions::hidden`]. Every hidden layer is ReLU except the code (bottleneck)
//!   layer, which is linear so that no code unit can die; the output layer is linear.
//! - Score: the mean squared reconstruction error over **normalised** features,
//!   `mean_i ((x_i − μ_i)/σ_i − x̂_i)²`, so every feature counts in units of its own training
//!   spread, whatever its physical unit.
//! - Determinism: one seed fixes everything. Weights come from a ChaCha8 stream read through
//!   our own fixed conversions (no distribution code from `rand` whose output could change
//!   between versions), the mini-batch order is a Fisher–Yates shuffle driven by the same
//!   stream, and every floating-point reduction runs in a fixed order (eight fixed lanes, then
//!   a fixed tree), so the same inputs and seed give bit-identical weights on any IEEE-754
//!   target, x86 or ARM.
//! - The threshold is `quantile(training scores, threshold_quantile) × threshold_margin`, and
//!   a window is anomalous when its score is strictly above it.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, MAX_WIDTH, Result, stats};

/// Fewest training windows [`fit`] accepts.
pub const MIN_TRAINING_WINDOWS: usize = 2;

/// How [`fit`] trains. `Default` is the configuration the agent's bootstrap model and the
/// trainer use unless told otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitOptions {
    /// Seed of the weight initialisation and the mini-batch order.
    pub seed: u64,
    /// Passes over the training windows (at least; see `min_steps`).
    pub epochs: usize,
    /// Fewest Adam steps: with few windows, the epoch count is raised until the run takes
    /// this many steps, so a small training set still converges. The run length is still a
    /// pure function of the options and the window count.
    pub min_steps: usize,
    /// Encoder widths after the input, the last being the code (bottleneck) width; the
    /// decoder mirrors them. `[16, 4]` gives `in → 16 → 4 → 16 → in`.
    pub hidden: Vec<usize>,
    /// Adam's initial step size; it decays along a half cosine to a tenth of this.
    pub learning_rate: f32,
    /// Windows per Adam step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Quantile of the training scores the threshold starts from, in (0, 1].
    pub threshold_quantile: f64,
    /// Factor (≥ 1) applied to that quantile: headroom so that normal windows not seen in
    /// training do not raise alarms.
    pub threshold_margin: f32,
    /// Smallest standard deviation used to normalise a feature, in the feature's unit, so a
    /// feature that was constant in training does not turn rounding noise into alarms.
    pub min_std: f32,
    /// Smallest standard deviation relative to the feature's mean magnitude, for the same
    /// reason at large offsets (a temperature of 60 °C that varied by 0.001 °C).
    pub min_relative_std: f32,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            seed: 0x100b_1e5e,
            epochs: 40,
            min_steps: 2000,
            hidden: vec![16, 4],
            learning_rate: 1e-2,
            batch_size: 32,
            threshold_quantile: 0.995,
            threshold_margin: 1.5,
            min_std: 1e-4,
            min_relative_std: 1e-3,
        }
    }
}

impl FitOptions {
    fn validate(&self) -> Result<()> {
        let bad = |option: &'static str, reason: String| Err(Error::BadOption { option, reason });
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.hidden.is_empty() {
            return bad("hidden", "needs at least the code width".into());
        }
        if let Some(w) = self.hidden.iter().find(|&&w| w == 0 || w > MAX_WIDTH) {
            return bad("hidden", format!("width {w} is outside 1..={MAX_WIDTH}"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(
                "learning_rate",
                format!("{} is not > 0", self.learning_rate),
            );
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if !(self.threshold_quantile > 0.0 && self.threshold_quantile <= 1.0) {
            return bad(
                "threshold_quantile",
                format!("{} is outside (0, 1]", self.threshold_quantile),
            );
        }
        if !(self.threshold_margin.is_finite() && self.threshold_margin >= 1.0) {
            return bad(
                "threshold_margin",
                format!("{} is not a finite factor ≥ 1", self.threshold_margin),
            );
        }
        if !(self.min_std.is_finite() && self.min_std > 0.0) {
            return bad("min_std", format!("{} is not > 0", self.min_std));
        }
        if !(self.min_relative_std.is_finite() && self.min_relative_std >= 0.0) {
            return bad(
                "min_relative_std",
                format!("{} is not ≥ 0", self.min_relative_std),
            );
        }
        Ok(())
    }
}

/// Per-feature normalisation: `z = (x − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisation {
    /// Training mean of each feature.
    pub mean: Vec<f32>,
    /// Training standard deviation of each feature, floored (always > 0).
    pub std: Vec<f32>,
}

impl Normalisation {
    /// Normalises feature `i`.
    #[inline]
    pub(crate) fn apply(&self, i: usize, x: f32) -> f32 {
        (x - self.mean[i]) / self.std[i]
    }
}

/// One fully connected layer in float: `y = act(W x + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLayer {
    inputs: usize,
    outputs: usize,
    /// Row-major `[outputs][inputs]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
}

impl DenseLayer {
    /// A layer from its weights (row-major, `outputs × inputs`), biases and activation, as a
    /// trainer other than [`fit`] (the GPU one) produces them.
    pub fn new(
        inputs: usize,
        outputs: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        relu: bool,
    ) -> Result<Self> {
        let what = || format!("dense layer {inputs}→{outputs}");
        if inputs == 0 || outputs == 0 || inputs > MAX_WIDTH || outputs > MAX_WIDTH {
            return Err(Error::BadLayer {
                layer: what(),
                reason: format!("widths must be within 1..={MAX_WIDTH}"),
            });
        }
        if weights.len() != inputs * outputs || bias.len() != outputs {
            return Err(Error::BadLayer {
                layer: what(),
                reason: format!(
                    "{} weights and {} biases; expected {} and {outputs}",
                    weights.len(),
                    bias.len(),
                    inputs * outputs
                ),
            });
        }
        if weights.iter().chain(&bias).any(|v| !v.is_finite()) {
            return Err(Error::BadLayer {
                layer: what(),
                reason: "a weight or bias is not finite".into(),
            });
        }
        Ok(Self {
            inputs,
            outputs,
            weights,
            bias,
            relu,
        })
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Row-major `[outputs][inputs]` weights.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// Biases, one per output.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Whether a ReLU follows the affine map.
    pub fn relu(&self) -> bool {
        self.relu
    }

    pub(crate) fn forward(&self, input: &[f32], output: &mut [f32]) {
        for (j, out) in output.iter_mut().enumerate() {
            let row = &self.weights[j * self.inputs..(j + 1) * self.inputs];
            let v = dot(row, input) + self.bias[j];
            *out = if self.relu { v.max(0.0) } else { v };
        }
    }
}

/// A trained float autoencoder with its normalisation and threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatModel {
    feature_names: Vec<String>,
    normalisation: Normalisation,
    layers: Vec<DenseLayer>,
    threshold: f32,
    threshold_quantile: f64,
    threshold_margin: f32,
    training_loss: f32,
}

/// The result of scoring one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inference {
    /// Mean squared reconstruction error over the normalised features.
    pub score: f32,
    /// `score > threshold`.
    pub anomaly: bool,
}

impl FloatModel {
    /// A model from parts trained elsewhere. The threshold is set from `calibration` windows
    /// (normally the training windows) exactly as [`fit`] sets it.
    pub fn from_parts(
        feature_names: Vec<String>,
        normalisation: Normalisation,
        layers: Vec<DenseLayer>,
        calibration: &[Vec<f32>],
        threshold_quantile: f64,
        threshold_margin: f32,
    ) -> Result<Self> {
        let options = FitOptions {
            threshold_quantile,
            threshold_margin,
            ..FitOptions::default()
        };
        options.validate()?;
        check_names(&feature_names)?;
        check_normalisation(&normalisation, feature_names.len())?;
        check_chain(&layers, feature_names.len())?;
        let mut model = Self {
            feature_names,
            normalisation,
            layers,
            threshold: 0.0,
            threshold_quantile,
            threshold_margin,
            training_loss: f32::NAN,
        };
        check_windows(calibration, &model.feature_names)?;
        let scores = model.scores(calibration)?;
        model.training_loss = mean(&scores);
        model.threshold = threshold_from(&scores, threshold_quantile, threshold_margin)?;
        Ok(model)
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The normalisation fitted on the training windows.
    pub fn normalisation(&self) -> &Normalisation {
        &self.normalisation
    }

    /// The layers, input to output.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    /// Widths from input to output, e.g. `[25, 16, 4, 16, 25]`.
    pub fn layer_sizes(&self) -> Vec<usize> {
        std::iter::once(self.feature_names.len())
            .chain(self.layers.iter().map(|l| l.outputs))
            .collect()
    }

    /// Anomaly threshold on [`score`](Self::score).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Quantile of the training scores the threshold was set from.
    pub fn threshold_quantile(&self) -> f64 {
        self.threshold_quantile
    }

    /// Factor applied to that quantile.
    pub fn threshold_margin(&self) -> f32 {
        self.threshold_margin
    }

    /// Mean score over the training windows at the end of training.
    pub fn training_loss(&self) -> f32 {
        self.training_loss
    }

    /// The anomaly score of one window's features (raw, not normalised): the mean squared
    /// reconstruction error over the normalised features.
    pub fn score(&self, features: &[f32]) -> Result<f32> {
        let mut scratch = Scratch::new(&self.layers);
        self.score_with(features, &mut scratch)
    }

    /// Score and anomaly flag of one window.
    pub fn infer(&self, features: &[f32]) -> Result<Inference> {
        let score = self.score(features)?;
        Ok(Inference {
            score,
            anomaly: score > self.threshold,
        })
    }

    /// Scores of many windows.
    pub fn scores(&self, windows: &[Vec<f32>]) -> Result<Vec<f32>> {
        let mut scratch = Scratch::new(&self.layers);
        windows
            .iter()
            .map(|w| self.score_with(w, &mut scratch))
            .collect()
    }

    fn score_with(&self, features: &[f32], scratch: &mut Scratch) -> Result<f32> {
        check_features(features, &self.feature_names)?;
        for (i, (z, &x)) in scratch.input.iter_mut().zip(features).enumerate() {
            *z = self.normalisation.apply(i, x);
        }
        Ok(self.forward_normalised(scratch))
    }

    /// Runs the network on `scratch.input` (normalised) and returns the score; every layer's
    /// output is left in `scratch.activations`.
    fn forward_normalised(&self, scratch: &mut Scratch) -> f32 {
        forward(&self.layers, scratch);
        let output = scratch.activations.last().map_or(&[][..], |a| &a[..]);
        reconstruction_error(&scratch.input, output)
    }

    /// The normalised input and every layer's output for one window, for int8 calibration.
    pub(crate) fn trace(&self, features: &[f32], scratch: &mut Scratch) -> Result<()> {
        check_features(features, &self.feature_names)?;
        for (i, (z, &x)) in scratch.input.iter_mut().zip(features).enumerate() {
            *z = self.normalisation.apply(i, x);
        }
        forward(&self.layers, scratch);
        Ok(())
    }
}

/// Per-call buffers for a forward pass.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) input: Vec<f32>,
    pub(crate) activations: Vec<Vec<f32>>,
}

impl Scratch {
    pub(crate) fn new(layers: &[DenseLayer]) -> Self {
        Self {
            input: vec![0.0; layers.first().map_or(0, |l| l.inputs)],
            activations: layers.iter().map(|l| vec![0.0; l.outputs]).collect(),
        }
    }
}

fn forward(layers: &[DenseLayer], scratch: &mut Scratch) {
    for (k, layer) in layers.iter().enumerate() {
        let (before, rest) = scratch.activations.split_at_mut(k);
        let input = before.last().map_or(&scratch.input[..], |a| &a[..]);
        if let Some(output) = rest.first_mut() {
            layer.forward(input, output);
        }
    }
}

fn reconstruction_error(target: &[f32], output: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in target.iter().zip(output) {
        let d = y - x;
        sum += d * d;
    }
    sum / target.len().max(1) as f32
}

/// Trains the autoencoder on `features` (one vector per window, raw feature values named by
/// `names`) and sets its threshold. Deterministic for a given `options.seed`.
///
/// ```
/// use loopline_model::{FitOptions, fit};
///
/// // Two features that move together; the model learns the relation.
/// let windows: Vec<Vec<f32>> = (0..200)
///     .map(|i| {
///         let load = (i as f32 * 0.37).sin();
///         vec![load, 2.0 * load + 1.0, 0.5 * (i as f32 * 1.3).cos()]
///     })
///     .collect();
/// let names = vec!["a.rms".into(), "b.rms".into(), "c.rms".into()];
/// let options = FitOptions { hidden: vec![8, 2], ..FitOptions::default() };
/// let model = fit(&windows, names, &options).unwrap();
/// assert_eq!(model.layer_sizes(), [3, 8, 2, 8, 3]);
///
/// // Breaking the relation between a and b scores far above normal.
/// let normal = model.score(&windows[10]).unwrap();
/// let broken = model.score(&[1.0, -1.0, 0.0]).unwrap();
/// assert!(broken > model.threshold() && normal < model.threshold());
/// ```
pub fn fit(features: &[Vec<f32>], names: Vec<String>, options: &FitOptions) -> Result<FloatModel> {
    options.validate()?;
    check_names(&names)?;
    if features.len() < MIN_TRAINING_WINDOWS {
        return Err(Error::NotEnoughWindows {
            got: features.len(),
            min: MIN_TRAINING_WINDOWS,
        });
    }
    check_windows(features, &names)?;
    let d = names.len();
    let normalisation = normalisation_of(features, options);

    // Normalised training matrix, row per window.
    let mut data = Vec::with_capacity(features.len() * d);
    for w in features {
        data.extend(
            w.iter()
                .enumerate()
                .map(|(i, &x)| normalisation.apply(i, x)),
        );
    }

    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut layers = init_layers(d, &options.hidden, &mut rng);
    train(&mut layers, &data, d, options, &mut rng)?;

    let mut model = FloatModel {
        feature_names: names,
        normalisation,
        layers,
        threshold: 0.0,
        threshold_quantile: options.threshold_quantile,
        threshold_margin: options.threshold_margin,
        training_loss: 0.0,
    };
    let scores = model.scores(features)?;
    model.training_loss = mean(&scores);
    model.threshold = threshold_from(
        &scores,
        options.threshold_quantile,
        options.threshold_margin,
    )?;
    Ok(model)
}

fn mean(values: &[f32]) -> f32 {
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    (sum / values.len().max(1) as f64) as f32
}

pub(crate) fn threshold_from(scores: &[f32], quantile: f64, margin: f32) -> Result<f32> {
    let q = stats::quantile(scores, quantile).ok_or(Error::Diverged {
        what: "training scores (empty or NaN)".into(),
    })?;
    let threshold = q * margin;
    if threshold.is_finite() {
        Ok(threshold)
    } else {
        Err(Error::Diverged {
            what: format!("threshold {threshold}"),
        })
    }
}

fn normalisation_of(features: &[Vec<f32>], options: &FitOptions) -> Normalisation {
    let d = features.first().map_or(0, Vec::len);
    let n = features.len() as f64;
    let mut mean = vec![0.0f64; d];
    for w in features {
        for (m, &x) in mean.iter_mut().zip(w) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; d];
    for w in features {
        for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(w) {
            let dx = f64::from(x) - m;
            *v += dx * dx;
        }
    }
    let std = var
        .iter()
        .zip(&mean)
        .map(|(&v, &m)| {
            let floor =
                f64::from(options.min_std).max(f64::from(options.min_relative_std) * m.abs());
            (v / n).sqrt().max(floor) as f32
        })
        .collect();
    Normalisation {
        mean: mean.iter().map(|&m| m as f32).collect(),
        std,
    }
}

pub(crate) fn check_names(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::BadFeatureNames {
            reason: "no features".into(),
        });
    }
    if names.len() > MAX_WIDTH {
        return Err(Error::BadFeatureNames {
            reason: format!("{} features; at most {MAX_WIDTH}", names.len()),
        });
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            return Err(Error::BadFeatureNames {
                reason: format!("feature {i} has an empty name"),
            });
        }
        if names[..i].contains(name) {
            return Err(Error::BadFeatureNames {
                reason: format!("`{name}` is listed twice"),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_normalisation(norm: &Normalisation, d: usize) -> Result<()> {
    let bad = |reason: String| Err(Error::BadNormalisation { reason });
    if norm.mean.len() != d || norm.std.len() != d {
        return bad(format!(
            "{} means and {} stds for {d} features",
            norm.mean.len(),
            norm.std.len()
        ));
    }
    if let Some(i) = norm.mean.iter().position(|m| !m.is_finite()) {
        return bad(format!("mean of feature {i} is not finite"));
    }
    if let Some(i) = norm.std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        return bad(format!("std of feature {i} is {}, not > 0", norm.std[i]));
    }
    Ok(())
}

fn check_chain(layers: &[DenseLayer], d: usize) -> Result<()> {
    let mut width = d;
    for (k, layer) in layers.iter().enumerate() {
        if layer.inputs != width {
            return Err(Error::BadLayer {
                layer: format!("layer {k}"),
                reason: format!(
                    "takes {} inputs; the previous width is {width}",
                    layer.inputs
                ),
            });
        }
        width = layer.outputs;
    }
    if layers.is_empty() || width != d {
        return Err(Error::BadLayer {
            layer: format!("layer {}", layers.len().saturating_sub(1)),
            reason: format!("the network must map {d} features back to {d}; it ends at {width}"),
        });
    }
    Ok(())
}

fn check_windows(windows: &[Vec<f32>], names: &[String]) -> Result<()> {
    for (index, w) in windows.iter().enumerate() {
        if w.len() != names.len() {
            return Err(Error::WindowLength {
                window: index,
                expected: names.len(),
                got: w.len(),
            });
        }
        if let Some(i) = w.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFiniteInput {
                feature: names[i].clone(),
                window: Some(index),
            });
        }
    }
    Ok(())
}

pub(crate) fn check_features(features: &[f32], names: &[String]) -> Result<()> {
    if features.len() != names.len() {
        return Err(Error::FeatureCount {
            expected: names.len(),
            got: features.len(),
        });
    }
    if let Some(i) = features.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFiniteInput {
            feature: names[i].clone(),
            window: None,
        });
    }
    Ok(())
}

/// A uniform f32 in [-1, 1) from the top 24 bits of one 32-bit draw: a fixed conversion, so
/// initial weights depend on the ChaCha stream only.
fn uniform_pm1(rng: &mut ChaCha8Rng) -> f32 {
    let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
    2.0 * unit - 1.0
}

fn init_layers(d: usize, hidden: &[usize], rng: &mut ChaCha8Rng) -> Vec<DenseLayer> {
    // Widths d, h0, …, code, …, h0, d.
    let mut widths = vec![d];
    widths.extend_from_slice(hidden);
    widths.extend(hidden.iter().rev().skip(1));
    widths.push(d);
    let code = hidden.len(); // index in `widths` of the code layer's output
    let last = widths.len() - 1;
    (1..widths.len())
        .map(|k| {
            let (inputs, outputs) = (widths[k - 1], widths[k]);
            let relu = k != code && k != last;
            // He-uniform for ReLU layers, Glorot-uniform for linear ones.
            let limit = if relu {
                (6.0 / inputs as f32).sqrt()
            } else {
                (6.0 / (inputs + outputs) as f32).sqrt()
            };
            let weights = (0..inputs * outputs)
                .map(|_| limit * uniform_pm1(rng))
                .collect();
            DenseLayer {
                inputs,
                outputs,
                weights,
                bias: vec![0.0; outputs],
                relu,
            }
        })
        .collect()
}

/// Adam state and gradient buffers for one layer.
struct LayerState {
    grad_w: Vec<f32>,
    grad_b: Vec<f32>,
    m_w: Vec<f32>,
    v_w: Vec<f32>,
    m_b: Vec<f32>,
    v_b: Vec<f32>,
}

impl LayerState {
    fn new(layer: &DenseLayer) -> Self {
        let (nw, nb) = (layer.weights.len(), layer.bias.len());
        Self {
            grad_w: vec![0.0; nw],
            grad_b: vec![0.0; nb],
            m_w: vec![0.0; nw],
            v_w: vec![0.0; nw],
            m_b: vec![0.0; nb],
            v_b: vec![0.0; nb],
        }
    }
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;

fn train(
    layers: &mut [DenseLayer],
    data: &[f32],
    d: usize,
    options: &FitOptions,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let n = data.len() / d;
    let mut order: Vec<usize> = (0..n).collect();
    let mut states: Vec<LayerState> = layers.iter().map(LayerState::new).collect();
    let mut scratch = Scratch::new(layers);
    // Gradient w.r.t. each layer's output, and w.r.t. the input of the current layer.
    let mut grads: Vec<Vec<f32>> = layers.iter().map(|l| vec![0.0; l.outputs]).collect();
    let batches_per_epoch = n.div_ceil(options.batch_size);
    let epochs = options
        .epochs
        .max(options.min_steps.div_ceil(batches_per_epoch));
    let total_steps = (epochs * batches_per_epoch) as f32;
    let mut step = 0u32;
    let (mut beta1_t, mut beta2_t) = (1.0f32, 1.0f32);

    for epoch in 0..epochs {
        shuffle(&mut order, rng);
        let mut epoch_loss = 0.0f64;
        for batch in order.chunks(options.batch_size) {
            for state in &mut states {
                state.grad_w.fill(0.0);
                state.grad_b.fill(0.0);
            }
            let scale = 2.0 / (d * batch.len()) as f32;
            for &row in batch {
                scratch.input.copy_from_slice(&data[row * d..(row + 1) * d]);
                forward(layers, &mut scratch);
                epoch_loss += f64::from(backward(layers, &mut states, &scratch, &mut grads, scale));
            }
            // Half-cosine decay from lr to lr/10 over the whole run.
            let progress = step as f32 / total_steps;
            let lr = options.learning_rate
                * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()));
            step += 1;
            beta1_t *= BETA1;
            beta2_t *= BETA2;
            let lr_t = lr * (1.0 - beta2_t).sqrt() / (1.0 - beta1_t);
            for (layer, state) in layers.iter_mut().zip(&mut states) {
                adam(
                    &mut layer.weights,
                    &state.grad_w,
                    &mut state.m_w,
                    &mut state.v_w,
                    lr_t,
                );
                adam(
                    &mut layer.bias,
                    &state.grad_b,
                    &mut state.m_b,
                    &mut state.v_b,
                    lr_t,
                );
            }
        }
        if !epoch_loss.is_finite() {
            return Err(Error::Diverged {
                what: format!("training loss at epoch {epoch} (try a smaller learning_rate)"),
            });
        }
    }
    Ok(())
}

/// Accumulates one window's gradients into `states` (already scaled by `scale` = 2/(d·batch))
/// and returns the window's loss.
fn backward(
    layers: &[DenseLayer],
    states: &mut [LayerState],
    scratch: &Scratch,
    grads: &mut [Vec<f32>],
    scale: f32,
) -> f32 {
    let last = layers.len() - 1;
    let output = &scratch.activations[last];
    let mut loss = 0.0f32;
    for ((g, &y), &x) in grads[last].iter_mut().zip(output).zip(&scratch.input) {
        let diff = y - x;
        loss += diff * diff;
        *g = scale * diff;
    }
    for k in (0..layers.len()).rev() {
        let layer = &layers[k];
        let (lower, upper) = grads.split_at_mut(k);
        let g_out = &upper[0];
        let input = if k == 0 {
            &scratch.input[..]
        } else {
            &scratch.activations[k - 1][..]
        };
        let state = &mut states[k];
        for (j, &g) in g_out.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            state.grad_b[j] += g;
            axpy(
                &mut state.grad_w[j * layer.inputs..(j + 1) * layer.inputs],
                g,
                input,
            );
        }
        if let Some(g_in) = lower.last_mut() {
            g_in.fill(0.0);
            for (j, &g) in g_out.iter().enumerate() {
                if g != 0.0 {
                    axpy(
                        g_in,
                        g,
                        &layer.weights[j * layer.inputs..(j + 1) * layer.inputs],
                    );
                }
            }
            // The previous layer's activation: zero gradient where its ReLU was off.
            if layers[k - 1].relu {
                for (g, &a) in g_in.iter_mut().zip(input) {
                    if a <= 0.0 {
                        *g = 0.0;
                    }
                }
            }
        }
    }
    loss / output.len() as f32
}

fn adam(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], lr_t: f32) {
    for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
        *m = BETA1 * *m + (1.0 - BETA1) * g;
        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
        *p -= lr_t * *m / (v.sqrt() + ADAM_EPS);
    }
}

fn shuffle(order: &mut [usize], rng: &mut ChaCha8Rng) {
    for i in (1..order.len()).rev() {
        // Lemire-free modulo reduction: the bias (< 2⁻³² · n) is irrelevant here, and the
        // formula is fixed forever, unlike library sampling code.
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// `y += a · x`, element-wise; vectorises without changing results.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Dot product in eight fixed lanes summed by a fixed tree: vectorisable, yet the same
/// rounding on every target.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for k in 0..8 {
            lanes[k] += ca[k] * cb[k];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in rest_a.iter().zip(rest_b) {
        tail += x * y;
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        + tail
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Windows of `d` features driven by two latent factors plus a little noise.
    pub(crate) fn latent_windows(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let a = uniform_pm1(&mut rng);
                let b = uniform_pm1(&mut rng);
                (0..d)
                    .map(|i| {
                        let i = i as f32;
                        10.0 + i
                            + (1.0 + 0.1 * i) * a
                            + (0.5 - 0.05 * i) * b * a
                            + 0.3 * uniform_pm1(&mut rng)
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::latent_windows;
    use super::*;

    fn names(d: usize) -> Vec<String> {
        (0..d).map(|i| format!("c{i}.rms")).collect()
    }

    #[test]
    fn dot_matches_naive_sum_closely() {
        let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..21).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn training_reduces_the_loss_and_is_deterministic() {
        let windows = latent_windows(300, 10, 1);
        let short = FitOptions {
            epochs: 1,
            min_steps: 0,
            ..FitOptions::default()
        };
        let long = FitOptions::default();
        let m1 = fit(&windows, names(10), &short).unwrap();
        let m2 = fit(&windows, names(10), &long).unwrap();
        assert!(
            m2.training_loss() < 0.5 * m1.training_loss(),
            "{} vs {}",
            m2.training_loss(),
            m1.training_loss()
        );
        assert_eq!(fit(&windows, names(10), &long).unwrap(), m2);
        let other = FitOptions {
            seed: 99,
            ..FitOptions::default()
        };
        assert_ne!(fit(&windows, names(10), &other).unwrap().layers, m2.layers);
    }

    #[test]
    fn architecture_mirrors_the_encoder_with_a_linear_code() {
        let windows = latent_windows(50, 6, 2);
        let options = FitOptions {
            epochs: 2,
            hidden: vec![12, 8, 3],
            ..FitOptions::default()
        };
        let model = fit(&windows, names(6), &options).unwrap();
        assert_eq!(model.layer_sizes(), [6, 12, 8, 3, 8, 12, 6]);
        let relus: Vec<bool> = model.layers().iter().map(DenseLayer::relu).collect();
        assert_eq!(relus, [true, true, false, true, true, false]);
    }

    #[test]
    fn threshold_is_the_quantile_times_the_margin() {
        let windows = latent_windows(400, 8, 3);
        let model = fit(&windows, names(8), &FitOptions::default()).unwrap();
        let scores = model.scores(&windows).unwrap();
        let q = stats::quantile(&scores, 0.995).unwrap();
        assert_eq!(model.threshold(), q * 1.5);
        // At most the top 0.5 % of the training windows can be above it.
        let above = scores.iter().filter(|&&s| s > model.threshold()).count();
        assert!(above <= 2, "{above}");
    }

    #[test]
    fn normalisation_floors_constant_features() {
        let windows: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, 5.0, 0.0]).collect();
        let norm = normalisation_of(&windows, &FitOptions::default());
        assert_eq!(norm.mean, [4.5, 5.0, 0.0]);
        assert!((norm.std[0] - 8.25f32.sqrt()).abs() < 1e-6);
        assert!((norm.std[1] - 5e-3).abs() < 1e-9); // relative floor: 1e-3 × |5|
        assert_eq!(norm.std[2], 1e-4); // absolute floor
    }

    #[test]
    fn bad_input_is_named() {
        let windows = latent_windows(20, 3, 4);
        let err = fit(&windows[..1], names(3), &FitOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "need at least 2 training windows, got 1");
        let mut broken = windows.clone();
        broken[7][2] = f32::INFINITY;
        let err = fit(&broken, names(3), &FitOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "feature `c2.rms` of window 7 is not finite"
        );
        broken[7].pop();
        let err = fit(&broken, names(3), &FitOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "window 7 has 2 features, expected 3");
        let err = fit(&windows, names(2), &FitOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "window 0 has 3 features, expected 2");
        let dup = vec!["a".into(), "b".into(), "a".into()];
        let err = fit(&windows, dup, &FitOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "bad feature names: `a` is listed twice");
        let bad = FitOptions {
            hidden: vec![],
            ..FitOptions::default()
        };
        let err = fit(&windows, names(3), &bad).unwrap_err();
        assert!(
            err.to_string().starts_with("bad fit option `hidden`"),
            "{err}"
        );

        let model = fit(&windows, names(3), &FitOptions::default()).unwrap();
        let err = model.score(&[1.0]).unwrap_err();
        assert_eq!(err.to_string(), "expected 3 features, got 1");
        let err = model.score(&[1.0, f32::NAN, 0.0]).unwrap_err();
        assert_eq!(err.to_string(), "feature `c1.rms` is not finite");
    }

    #[test]
    fn from_parts_rebuilds_the_same_model() {
        let windows = latent_windows(100, 5, 5);
        let model = fit(&windows, names(5), &FitOptions::default()).unwrap();
        let rebuilt = FloatModel::from_parts(
            model.feature_names().to_vec(),
            model.normalisation().clone(),
            model
                .layers()
                .iter()
                .map(|l| {
                    DenseLayer::new(
                        l.inputs(),
                        l.outputs(),
                        l.weights().to_vec(),
                        l.bias().to_vec(),
                        l.relu(),
                    )
                    .unwrap()
                })
                .collect(),
            &windows,
            model.threshold_quantile(),
            model.threshold_margin(),
        )
        .unwrap();
        assert_eq!(rebuilt.threshold(), model.threshold());
        assert_eq!(
            rebuilt.score(&windows[3]).unwrap(),
            model.score(&windows[3]).unwrap()
        );
        let err = DenseLayer::new(2, 2, vec![0.0; 3], vec![0.0; 2], false).unwrap_err();
        assert!(err.to_string().contains("3 weights"), "{err}");
    }
}
