//! `metrics.json`: what a training run reports, as dispatch reads it.
//!
//! The struct is the contract (`contract` = [`CONTRACT_VERSION`]): dispatch deserialises this
//! same type, and a trainer written in another language writes the same keys
//! (`docs/training.md`). Fields are only ever added.

use serde::{Deserialize, Serialize};

pub use crate::eval::Eval;

/// Version of the job contract (flags, outputs, exit codes, this file).
pub const CONTRACT_VERSION: u32 = 1;

/// The whole of `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// [`CONTRACT_VERSION`].
    pub contract: u32,
    /// The model version written.
    pub version: String,
    pub site: String,
    pub line: String,
    pub seed: u64,
    /// The GPUs the job was given (`CUDA_VISIBLE_DEVICES`), empty when none.
    pub gpus: Vec<String>,
    /// Wall time of the run, milliseconds.
    pub duration_ms: u64,
    pub data: DataSummary,
    /// Anomaly threshold set in the artifact, on the int8 score.
    pub threshold: f32,
    /// Mean float score of the final training windows.
    pub training_loss: f32,
    /// The candidate on the held-out windows.
    pub candidate: Eval,
    /// The running model (`--champion`) on the same windows; null when not given.
    pub champion: Option<Eval>,
    /// What drift detection compares live data with.
    pub reference: Reference,
    /// How training windows were chosen.
    pub selection: Selection,
}

/// The data the run read, and what it left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// The range asked for, µs since the epoch: `[from_us, to_us)`.
    pub from_us: i64,
    pub to_us: i64,
    /// Devices with samples in the range.
    pub devices: u64,
    /// Sample rate found in the data, Hz, and the window it was cut into.
    pub sample_rate_hz: u32,
    pub window_us: u64,
    /// Complete windows in the range (before any exclusion, bad quality and gaps included).
    pub windows_total: u64,
    /// Windows the final model was trained on.
    pub windows_train: u64,
    /// Held-out windows evaluated (the most recent part of the range).
    pub windows_holdout: u64,
    /// Held-out windows not marked suspect: the threshold's ground.
    pub windows_holdout_normal: u64,
    /// Where the start of the held-out part is, µs since the epoch.
    pub holdout_from_us: i64,
    pub excluded: Excluded,
}

/// Windows left out, by reason. Training exclusions (`annotated`, `flagged_by_running_model`,
/// `trimmed`) count windows of the training part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    /// An uncertain or bad sample in the window.
    pub bad_quality: u64,
    /// Samples missing inside the window.
    pub gaps: u64,
    /// Overlapping an operator's `fault` or `exclude` annotation.
    pub annotated: u64,
    /// Flagged by the running model when its flags were trusted.
    pub flagged_by_running_model: u64,
    /// Above the robust limit of the training scores.
    pub trimmed: u64,
}

/// The candidate's behaviour on the line as it runs now, for drift detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Quantiles 0, 0.05, …, 1 of the candidate's int8 scores on all the held-out windows
    /// (PSI bins): the recent data as the line produced it, its usual faults included, so
    /// that the line running as it did is not drift.
    pub score_quantiles: Vec<f32>,
    /// Share of all held-out windows the candidate flags.
    pub anomaly_rate: f64,
}

/// How the training windows were chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Share of the (not annotated) training windows the running model flagged; null when
    /// the lake holds no inference results for them.
    pub running_model_flag_share: Option<f64>,
    /// Whether those flags were trusted (flagged windows left out) rather than robust trimming.
    pub flags_trusted: bool,
    /// The robust limit on the final model's float scores (median + k·MAD).
    pub trim_limit: f32,
}
