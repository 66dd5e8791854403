//! Windowed inference on the (simulated) NPU: pure, no I/O, time from the samples.
//!
//! Invariants:
//! - Windows are consecutive runs of `window_samples` samples counted from the first sample
//!   the [`Inferencer`] sees, so they do not depend on where batches are cut: the same seed
//!   gives the same windows, scores and NPU latencies.
//! - The model is swapped only between batches ([`Inferencer::swap_model`]); a window in
//!   progress continues under the new model when both read the same channels, so a swap
//!   leaves no gap in the scores.
//! - A sample that is not finite (a dropped-out sensor) enters the features as the channel's
//!   last finite value: the model sees a stuck sensor, not NaN.
//!
//! The NPU is a simulator of a real part ([`loopline_npusim`]): each window costs the model's
//! operations at the part's throughput, with its clock throttled when it runs hot. A failed
//! inference (uncorrectable error, device reset) yields no result for that window; it is
//! counted and shows in the health snapshot.

use std::sync::Arc;

use loopline_linesim::CHANNELS;
use loopline_model::{Artifact, FeatureLayout, QuantizedModel};
use loopline_npusim::{Health, Npu};
use loopline_proto::v1::InferenceResult;

/// A model ready to run: its artifact, and where its input channels sit in a line sample.
#[derive(Debug)]
pub struct LoadedModel {
    version: String,
    layout: FeatureLayout,
    model: QuantizedModel,
    /// For each model channel, its index in [`CHANNELS`].
    channel_index: Vec<usize>,
    ops: u64,
    input_bytes: usize,
}

impl LoadedModel {
    /// Checks that the line produces every channel the model reads.
    pub fn new(artifact: Artifact) -> Result<LoadedModel, String> {
        let version = artifact.metadata.model_version.clone();
        let names: Vec<&str> = artifact
            .metadata
            .channels
            .iter()
            .map(String::as_str)
            .collect();
        let mut channel_index = Vec::with_capacity(names.len());
        for name in &names {
            let index = CHANNELS
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| {
                    format!("model {version} reads channel {name:?}, which this line does not have")
                })?;
            channel_index.push(index);
        }
        let layout = FeatureLayout::new(&names).map_err(|e| format!("model {version}: {e}"))?;
        let model = artifact.model;
        let ops = model.ops();
        let input_bytes = layout.feature_names().len();
        Ok(LoadedModel {
            version,
            layout,
            model,
            channel_index,
            ops,
            input_bytes,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    fn reads_same_channels(&self, other: &LoadedModel) -> bool {
        self.channel_index == other.channel_index
    }
}

/// Inference counters since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferenceCounts {
    pub windows: u64,
    pub anomalies: u64,
    /// Windows the NPU failed to score.
    pub failed: u64,
    /// Partial windows discarded when a model reading other channels replaced the old one.
    pub discarded_windows: u64,
}

/// Cuts a device's samples into windows and scores each on the NPU.
#[derive(Debug)]
pub struct Inferencer {
    model: Arc<LoadedModel>,
    npu: Npu,
    window_samples: usize,
    sample_interval_us: f64,
    /// One buffer per model channel.
    buffers: Vec<Vec<f32>>,
    last_finite: Vec<f32>,
    /// The feature vector, reused window after window.
    features: Vec<f32>,
    window_start_us: i64,
    counts: InferenceCounts,
}

impl Inferencer {
    pub fn new(
        model: Arc<LoadedModel>,
        npu: Npu,
        window_samples: usize,
        sample_interval_us: f64,
    ) -> Inferencer {
        let channels = model.channel_index.len();
        Inferencer {
            buffers: (0..channels)
                .map(|_| Vec::with_capacity(window_samples))
                .collect(),
            last_finite: vec![0.0; channels],
            features: Vec::new(),
            model,
            npu,
            window_samples,
            sample_interval_us,
            window_start_us: 0,
            counts: InferenceCounts::default(),
        }
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    pub fn counts(&self) -> InferenceCounts {
        self.counts
    }

    /// Runs the next model from the next sample on.
    pub fn swap_model(&mut self, model: Arc<LoadedModel>) {
        if !model.reads_same_channels(&self.model) {
            if self.buffers.first().is_some_and(|b| !b.is_empty()) {
                self.counts.discarded_windows += 1;
            }
            let channels = model.channel_index.len();
            self.buffers = (0..channels)
                .map(|_| Vec::with_capacity(self.window_samples))
                .collect();
            self.last_finite = vec![0.0; channels];
        }
        self.model = model;
    }

    /// Takes one line sample; when it completes a window, scores it and appends the result.
    pub fn push(&mut self, ts_us: i64, values: &[f32], results: &mut Vec<InferenceResult>) {
        let Some(first) = self.buffers.first() else {
            return;
        };
        if first.is_empty() {
            self.window_start_us = ts_us;
        }
        for ((buffer, last), &index) in self
            .buffers
            .iter_mut()
            .zip(self.last_finite.iter_mut())
            .zip(&self.model.channel_index)
        {
            let value = values.get(index).copied().unwrap_or(f32::NAN);
            if value.is_finite() {
                *last = value;
            }
            buffer.push(*last);
        }
        if self.buffers[0].len() >= self.window_samples {
            if let Some(result) = self.score(ts_us) {
                results.push(result);
            }
            for buffer in &mut self.buffers {
                buffer.clear();
            }
        }
    }

    fn score(&mut self, window_end_us: i64) -> Option<InferenceResult> {
        self.counts.windows += 1;
        let windows: Vec<&[f32]> = self.buffers.iter().map(Vec::as_slice).collect();
        let extracted =
            self.model
                .layout
                .extract_into(&windows, self.sample_interval_us, &mut self.features);
        match extracted {
            Ok(()) => {}
            Err(e) => {
                self.counts.failed += 1;
                tracing::debug!(error = %e, "window features failed");
                return None;
            }
        };
        let on_npu = match self
            .npu
            .infer(window_end_us, self.model.ops, self.model.input_bytes)
        {
            Ok(done) => done,
            Err(e) => {
                self.counts.failed += 1;
                tracing::debug!(error = %e, "NPU inference failed");
                return None;
            }
        };
        let inference = match self.model.model.infer(&self.features) {
            Ok(inference) => inference,
            Err(e) => {
                self.counts.failed += 1;
                tracing::debug!(error = %e, "model inference failed");
                return None;
            }
        };
        if inference.anomaly {
            self.counts.anomalies += 1;
        }
        Some(InferenceResult {
            window_start_us: self.window_start_us,
            window_end_us,
            score: inference.score,
            anomaly: inference.anomaly,
            model_version: self.model.version.clone(),
            latency_us: on_npu.latency_us,
        })
    }

    /// The NPU's health over the interval since the previous call.
    pub fn npu_health(&mut self, now_us: i64) -> Health {
        self.npu.health(now_us)
    }
}
