//! Loopline's anomaly model: window features, int8 quantisation, integer-only inference and the
//! signed safetensors artifact. It is shared by the edge agent (integer inference, as an NPU
//! runs it) and the trainer (float training), and knows nothing of MQTT or files: artifacts are
//! bytes in, bytes out.
//!
//! # How this crate is laid out
//!
//! - [`features`]: per-channel window features (RMS, peak, excess kurtosis, mean, trend) and
//!   the [`FeatureLayout`] that names them and builds a window's feature vector.
//! - [`autoencoder`]: the float model: normalisation, deterministic training ([`fit`]),
//!   scoring and the threshold.
//! - [`quant`]: int8 post-training quantisation ([`FloatModel::quantize`]) and the
//!   integer-only [`QuantizedModel::infer`].
//! - [`artifact`]: the safetensors [`Artifact`] with its JSON [`Metadata`].
//! - [`release`]: SHA-256 and Ed25519 signing and verification of artifact bytes.
//! - [`stats`]: quantiles and rank correlation for thresholds and metrics.
//! - [`train_int8`] (here): fit → quantise → artifact with metrics, in one call.
//!
//! # The model, and why
//!
//! A small dense **autoencoder** over normalised window features, `in → 16 → 4 → 16 → in` by
//! default (ReLU on the 16-wide layers, a linear 4-wide code, a linear output), whose anomaly
//! score is the mean squared reconstruction error of the normalised features.
//!
//! - It learns the *relations* between features (vibration RMS rises with motor current;
//!   temperature follows load), so a window is anomalous when the relation breaks even if
//!   every feature is individually within its normal range, which per-feature limits miss.
//!   It needs only normal data to train, which is what a line produces; fault labels are rare.
//! - Unlike a per-operating-point linear model, it needs no operating-point segmentation: the
//!   non-linear layers cover several operating points with one model.
//! - It is exactly what NPUs run well: a chain of int8 fully connected layers with per-channel
//!   weight scales and fused ReLU. At 25 features it is about 2 000 operations per window:
//!   microseconds on a Hailo or RK3588 NPU, and small enough for a Pi's CPU as a fallback.
//! - Training is cheap and deterministic on a CPU (well under a second for thousands of
//!   windows), so the agent can fit a bootstrap model on start-up, and the GPU trainer can
//!   produce the same kind of model with the same [`FloatModel::quantize`] step.
//!
//! The threshold is the 99.5 % quantile of the training scores times a margin of 1.5
//! ([`FitOptions`]). The quantised model recomputes it on its own int8 scores of the
//! calibration windows so that the deployed comparison matches the deployed arithmetic.
//!
//! ```
//! use loopline_model::{Artifact, FeatureLayout, FitOptions, TrainingRange, train_int8};
//!
//! // Two channels whose levels move together with the load.
//! let layout = FeatureLayout::new(&["vibration", "current"]).unwrap();
//! let window = |load: f32, skew: f32| -> Vec<f32> {
//!     let vib: Vec<f32> = (0..200).map(|i| load * ((i as f32) * 0.3).sin()).collect();
//!     let cur: Vec<f32> = (0..200).map(|i| 5.0 * load + skew + 0.1 * ((i as f32) * 0.7).cos()).collect();
//!     layout.extract(&[&vib, &cur], 1000.0).unwrap()
//! };
//! let training: Vec<Vec<f32>> = (0..300).map(|i| window(1.0 + (i as f32 * 0.1).sin() * 0.5, 0.0)).collect();
//! let range = TrainingRange { start_us: 0, end_us: 60_000_000, windows: 300, window_us: 200_000, sample_rate_hz: 1000.0 };
//! let artifact = train_int8(&training, layout.feature_names().to_vec(), &FitOptions::default(), "demo-1", range).unwrap();
//!
//! let model = Artifact::from_bytes(&artifact.to_bytes().unwrap()).unwrap().model;
//! assert!(!model.infer(&window(1.2, 0.0)).unwrap().anomaly);
//! // Current far above what this vibration level goes with.
//! assert!(model.infer(&window(1.2, 4.0)).unwrap().anomaly);
//! ```

pub mod artifact;
pub mod autoencoder;
pub mod features;
pub mod quant;
pub mod release;
pub mod stats;

pub use artifact::{Artifact, FORMAT_VERSION, MODEL_FAMILY, Metadata, TrainingRange};
pub use autoencoder::{DenseLayer, FitOptions, FloatModel, Inference, Normalisation, fit};
pub use features::{FEATURE_KINDS, FEATURES_PER_CHANNEL, FeatureLayout, window_features};
pub use quant::{QuantParams, QuantizedLayer, QuantizedModel};
pub use release::ReleaseError;

/// Channels the line's models read by default, in feature order: the physical measurements
/// and the operating context (so that a recipe change is not an anomaly), not the recipe
/// number itself. The agent's bootstrap model and the trainer both use them.
pub const DEFAULT_CHANNELS: [&str; 7] = [
    "vibration",
    "temperature",
    "current",
    "pressure",
    "flow",
    "speed",
    "speed_setpoint",
];

/// Widest layer (and most features) a model may have; bounds int32 accumulators and
/// allocations made while reading untrusted artifacts.
pub const MAX_WIDTH: usize = 4096;

/// Everything that can go wrong in this crate, naming the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A channel name that cannot be part of a layout.
    #[error("bad channel name `{name}`: {reason}")]
    BadChannelName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `extract` got a different number of windows than the layout has channels.
    #[error("expected windows for {expected} channels in layout order, got {got}")]
    ChannelCount {
        /// Channels in the layout.
        expected: usize,
        /// Windows given.
        got: usize,
    },
    /// A channel's window holds no samples.
    #[error("channel `{channel}` has no samples in this window")]
    EmptyChannel {
        /// The channel.
        channel: String,
    },
    /// The sample interval is not a positive finite number of microseconds.
    #[error("sample interval {value} µs is not a positive finite number")]
    BadSampleInterval {
        /// The interval given.
        value: f64,
    },
    /// A feature came out NaN or infinite because of the samples it was computed from.
    #[error("feature `{feature}` is not finite (a NaN or infinite sample in the window)")]
    NonFiniteFeature {
        /// `<channel>.<kind>`.
        feature: String,
    },
    /// A feature vector of the wrong length.
    #[error("expected {expected} features, got {got}")]
    FeatureCount {
        /// The model's feature count.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A training or calibration window of the wrong length.
    #[error("window {window} has {got} features, expected {expected}")]
    WindowLength {
        /// Index of the window.
        window: usize,
        /// The feature count.
        expected: usize,
        /// Its length.
        got: usize,
    },
    /// A NaN or infinite feature value given to a model.
    #[error("feature `{feature}`{} is not finite", window.map(|w| format!(" of window {w}")).unwrap_or_default())]
    NonFiniteInput {
        /// The feature's name.
        feature: String,
        /// The window's index, when scoring or training on many.
        window: Option<usize>,
    },
    /// Feature names that cannot describe a model's input.
    #[error("bad feature names: {reason}")]
    BadFeatureNames {
        /// What is wrong.
        reason: String,
    },
    /// Too few windows to train on.
    #[error("need at least {min} training windows, got {got}")]
    NotEnoughWindows {
        /// Windows given.
        got: usize,
        /// Fewest accepted.
        min: usize,
    },
    /// A [`FitOptions`] field out of range.
    #[error("bad fit option `{option}`: {reason}")]
    BadOption {
        /// The field.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A float layer given to [`DenseLayer::new`] or [`FloatModel::from_parts`] is unusable.
    #[error("bad {layer}: {reason}")]
    BadLayer {
        /// Which layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// A normalisation that does not fit the features or divides by zero.
    #[error("bad normalisation: {reason}")]
    BadNormalisation {
        /// What is wrong.
        reason: String,
    },
    /// Training or thresholding produced a non-finite value.
    #[error("training diverged: {what} is not finite")]
    Diverged {
        /// What went non-finite.
        what: String,
    },
    /// int8 calibration failed.
    #[error("int8 calibration failed: {reason}")]
    Calibration {
        /// What went wrong.
        reason: String,
    },
    /// The bytes are not a safetensors file (truncated, corrupted header…).
    #[error("not a safetensors model artifact: {reason}")]
    NotSafetensors {
        /// The safetensors parser's complaint.
        reason: String,
    },
    /// An artifact tensor is missing, unexpected, or holds unusable values.
    #[error("tensor `{tensor}`: {reason}")]
    Tensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An artifact metadata key is missing or holds an unusable value.
    #[error("metadata `{key}`: {reason}")]
    BadMetadata {
        /// The key (`loopline` for the whole document, else a field).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The artifact was written in a format version this build does not read.
    #[error("unsupported artifact format version {version} (this build reads version {supported})")]
    UnsupportedFormat {
        /// The artifact's version.
        version: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A release failed verification.
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fits the float model, quantises it (calibrating on the same windows) and wraps it in an
/// [`Artifact`] whose metrics describe the training scores and how closely the int8 model
/// follows the float one:
///
/// - `train.windows`, `train.loss` (mean float score),
/// - `train.score.p50`, `.p95`, `.p99`, `.p995`, `.max` (float scores),
/// - `threshold.float`, `threshold.int8`,
/// - `int8.score.p50`, `int8.spearman` (rank correlation of int8 and float scores),
/// - `int8.rel_err.p50`, `int8.rel_err.p95` (|int8 − float| / float score),
/// - `int8.anomaly_agreement` (fraction of windows both models flag alike),
/// - `model.ops`, `model.parameter_bytes`.
pub fn train_int8(
    features: &[Vec<f32>],
    names: Vec<String>,
    options: &FitOptions,
    version: &str,
    training_range: TrainingRange,
) -> Result<Artifact> {
    let float = fit(features, names, options)?;
    let model = float.quantize(features)?;
    let mut metadata = Metadata::for_model(&model, version, training_range);

    let float_scores = float.scores(features)?;
    let int8_scores = features
        .iter()
        .map(|w| model.infer(w).map(|i| i.score))
        .collect::<Result<Vec<f32>>>()?;
    let quantile = |q: f64| stats::quantile(&float_scores, q).map_or(f64::NAN, f64::from);
    let relative_errors: Vec<f32> = float_scores
        .iter()
        .zip(&int8_scores)
        .map(|(&f, &q)| (q - f).abs() / f.max(f32::MIN_POSITIVE))
        .collect();
    let agree = float_scores
        .iter()
        .zip(&int8_scores)
        .filter(|&(&f, &q)| (f > float.threshold()) == (q > model.threshold()))
        .count();
    let n = features.len() as f64;
    let metrics = [
        ("train.windows", n),
        ("train.loss", f64::from(float.training_loss())),
        ("train.score.p50", quantile(0.5)),
        ("train.score.p95", quantile(0.95)),
        ("train.score.p99", quantile(0.99)),
        ("train.score.p995", quantile(0.995)),
        ("train.score.max", quantile(1.0)),
        ("threshold.float", f64::from(float.threshold())),
        ("threshold.int8", f64::from(model.threshold())),
        (
            "int8.score.p50",
            stats::quantile(&int8_scores, 0.5).map_or(f64::NAN, f64::from),
        ),
        (
            "int8.spearman",
            stats::spearman(&float_scores, &int8_scores).unwrap_or(f64::NAN),
        ),
        (
            "int8.rel_err.p50",
            stats::quantile(&relative_errors, 0.5).map_or(f64::NAN, f64::from),
        ),
        (
            "int8.rel_err.p95",
            stats::quantile(&relative_errors, 0.95).map_or(f64::NAN, f64::from),
        ),
        ("int8.anomaly_agreement", agree as f64 / n),
        ("model.ops", model.ops() as f64),
        ("model.parameter_bytes", model.parameter_bytes() as f64),
    ];
    // A metric that is undefined for this data (e.g. rank correlation of constant scores) is
    // left out rather than written as a non-finite number JSON cannot hold.
    metadata.metrics = metrics
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Artifact::new(metadata, model)
}
