//! The model artifact: a safetensors file holding the int8 model and its metadata.
//!
//! Design invariants:
//!
//! - Layout: tensors `input.scale` (F32 `[1]`), `input.zero_point` (I32 `[1]`) and, for each
//!   layer `k` from 0, `layers.k.weight` (I8 `[out, in]`), `layers.k.weight_scale` (F32
//!   `[out]`), `layers.k.bias` (I32 `[out]`), `layers.k.multiplier` and `layers.k.shift`
//!   (I32 `[out]`, the fixed-point requantisation), `layers.k.output.scale` (F32 `[1]`),
//!   `layers.k.output.zero_point` (I32 `[1]`) and `layers.k.activation_range` (I32 `[2]`,
//!   inclusive int8 clamp; a ReLU clamps at the zero point). Any other tensor is an error.
//! - The header's `__metadata__` map has exactly one key, [`METADATA_KEY`] (`loopline`), whose
//!   value is the JSON of [`Metadata`]. One key keeps the bytes deterministic (safetensors
//!   writes that map in hash order), so the same model always has the same SHA-256, which is
//!   what releases are signed over.
//! - [`Artifact::from_bytes`] trusts nothing: every tensor's dtype and shape, every scale and
//!   zero point, the requantisation parameters against the scales, the shapes against the
//!   feature count and the metadata fields are checked, and a failure names the tensor or key.
//!   Arbitrary bytes give an error, never a panic. Authenticity is not its job: that is the
//!   signature's (see [`crate::release`]).
//! - [`Artifact::to_bytes`] runs the same checks first, so what it writes always loads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::autoencoder::Normalisation;
use crate::features::check_channel_name;
use crate::quant::{QuantParams, QuantizedLayer, QuantizedModel};
use crate::{Error, FeatureLayout, MAX_WIDTH, Result};

/// Version of the artifact layout and metadata schema this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The model family of artifacts this crate produces: the int8 dense autoencoder.
pub const MODEL_FAMILY: &str = "autoencoder-int8";
/// The `__metadata__` key that holds the [`Metadata`] JSON.
pub const METADATA_KEY: &str = "loopline";
/// Most layers an artifact may have.
pub const MAX_LAYERS: usize = 32;

/// The training data behind a model: the span it covers, how many windows it held, and how
/// those windows were cut, which is how the agent must cut them for inference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRange {
    /// First sample's time, microseconds since the Unix epoch.
    pub start_us: i64,
    /// Last sample's time, microseconds since the Unix epoch.
    pub end_us: i64,
    /// Number of training windows.
    pub windows: u64,
    /// Length of one window, microseconds.
    pub window_us: u64,
    /// Sample rate the features assume (their trend is per second, but kurtosis and peak
    /// depend on how many samples a window holds), hertz.
    pub sample_rate_hz: f64,
}

/// What an artifact says about its model, stored as JSON in the safetensors header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// [`FORMAT_VERSION`] of the file.
    pub format_version: u32,
    /// The model's version, as releases and device reports name it.
    pub model_version: String,
    /// [`MODEL_FAMILY`].
    pub model_family: String,
    /// Input channels, in the order their features appear.
    pub channels: Vec<String>,
    /// Feature names, in input order (`<channel>.<kind>`).
    pub feature_names: Vec<String>,
    /// Per-feature normalisation, as in the model.
    pub normalisation: Normalisation,
    /// Anomaly threshold on the int8 score, as in the model.
    pub threshold: f32,
    /// The training data and its windowing.
    pub training: TrainingRange,
    /// Training and evaluation figures (score quantiles, int8 agreement…), by name.
    pub metrics: BTreeMap<String, f64>,
    /// What produced the artifact, e.g. `loopline-model 0.1.0`.
    pub created_by: String,
}

impl Metadata {
    /// Metadata describing `model`, with no metrics yet. Channels are the part of each
    /// feature name before its first `.`, in order of first appearance.
    pub fn for_model(model: &QuantizedModel, model_version: &str, training: TrainingRange) -> Self {
        let mut channels: Vec<String> = Vec::new();
        for name in model.feature_names() {
            let channel = channel_of(name);
            if !channels.iter().any(|c| c == channel) {
                channels.push(channel.to_owned());
            }
        }
        Self {
            format_version: FORMAT_VERSION,
            model_version: model_version.to_owned(),
            model_family: MODEL_FAMILY.to_owned(),
            channels,
            feature_names: model.feature_names().to_vec(),
            normalisation: model.normalisation().clone(),
            threshold: model.threshold(),
            training,
            metrics: BTreeMap::new(),
            created_by: concat!("loopline-model ", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// The [`FeatureLayout`] that produces this model's input, when its features are exactly
    /// the standard per-channel ones; an error naming `feature_names` otherwise.
    pub fn feature_layout(&self) -> Result<FeatureLayout> {
        let channels: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        let layout = FeatureLayout::new(&channels)?;
        if layout.feature_names() != self.feature_names.as_slice() {
            return Err(Error::BadMetadata {
                key: "feature_names".into(),
                reason: "not the standard features of the listed channels".into(),
            });
        }
        Ok(layout)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| {
            Err(Error::BadMetadata {
                key: key.into(),
                reason,
            })
        };
        if self.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                version: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if self.model_family != MODEL_FAMILY {
            return bad(
                "model_family",
                format!("`{}`; this build runs `{MODEL_FAMILY}`", self.model_family),
            );
        }
        if self.model_version.is_empty() || self.model_version.len() > 128 {
            return bad("model_version", "must be 1 to 128 bytes".into());
        }
        if self.model_version.chars().any(char::is_control) {
            return bad("model_version", "contains control characters".into());
        }
        if self.channels.is_empty() {
            return bad("channels", "empty".into());
        }
        for (i, channel) in self.channels.iter().enumerate() {
            check_channel_name(channel).or_else(|e| bad("channels", e.to_string()))?;
            if self.channels[..i].contains(channel) {
                return bad("channels", format!("`{channel}` is listed twice"));
            }
        }
        for name in &self.feature_names {
            if !self.channels.iter().any(|c| c == channel_of(name)) {
                return bad(
                    "feature_names",
                    format!("`{name}` belongs to no listed channel"),
                );
            }
        }
        let t = &self.training;
        if t.start_us > t.end_us {
            return bad(
                "training",
                format!("start_us {} is after end_us {}", t.start_us, t.end_us),
            );
        }
        if t.window_us == 0 {
            return bad("training.window_us", "must be > 0".into());
        }
        if !(t.sample_rate_hz.is_finite() && t.sample_rate_hz > 0.0) {
            return bad(
                "training.sample_rate_hz",
                format!("{} is not > 0", t.sample_rate_hz),
            );
        }
        if let Some((name, value)) = self.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return bad(&format!("metrics.{name}"), format!("{value} is not finite"));
        }
        Ok(())
    }
}

fn channel_of(feature: &str) -> &str {
    feature.split('.').next().unwrap_or(feature)
}

/// A model and its metadata, as shipped to agents.
///
/// ```
/// use loopline_model::{Artifact, FitOptions, TrainingRange, train_int8};
///
/// let windows: Vec<Vec<f32>> = (0..200)
///     .map(|i| {
///         let load = (i as f32 * 0.37).sin();
///         vec![load, 2.0 * load + 1.0, load * load]
///     })
///     .collect();
/// let names = vec!["motor.rms".into(), "motor.mean".into(), "pump.rms".into()];
/// let range = TrainingRange {
///     start_us: 0,
///     end_us: 200_000_000,
///     windows: 200,
///     window_us: 1_000_000,
///     sample_rate_hz: 1000.0,
/// };
/// let options = FitOptions { hidden: vec![8, 2], ..FitOptions::default() };
/// let artifact = train_int8(&windows, names, &options, "v1", range).unwrap();
/// assert_eq!(artifact.metadata.channels, ["motor", "pump"]);
///
/// let bytes = artifact.to_bytes().unwrap();
/// let loaded = Artifact::from_bytes(&bytes).unwrap();
/// assert_eq!(loaded, artifact);
/// assert_eq!(loaded.to_bytes().unwrap(), bytes); // same model, same bytes, same hash
///
/// let err = Artifact::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
/// assert!(err.to_string().starts_with("not a safetensors model artifact"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// What the artifact says about the model.
    pub metadata: Metadata,
    /// The int8 model.
    pub model: QuantizedModel,
}

impl Artifact {
    /// Pairs a model with its metadata, checking that they agree.
    pub fn new(metadata: Metadata, model: QuantizedModel) -> Result<Self> {
        let artifact = Self { metadata, model };
        artifact.validate()?;
        Ok(artifact)
    }

    /// Sets the anomaly threshold of the model and its metadata together (a trainer tuning
    /// it on held-out data).
    pub fn set_threshold(&mut self, threshold: f32) -> Result<()> {
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(Error::BadMetadata {
                key: "threshold".into(),
                reason: format!("{threshold} is not a finite value ≥ 0"),
            });
        }
        self.model.set_threshold(threshold);
        self.metadata.threshold = threshold;
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.metadata.validate()?;
        let m = &self.metadata;
        let mismatch = |key: &str| {
            Err(Error::BadMetadata {
                key: key.into(),
                reason: "differs from the model's".into(),
            })
        };
        if m.feature_names != self.model.feature_names() {
            return mismatch("feature_names");
        }
        if m.normalisation != *self.model.normalisation() {
            return mismatch("normalisation");
        }
        if m.threshold.to_bits() != self.model.threshold().to_bits() {
            return mismatch("threshold");
        }
        Ok(())
    }

    /// The artifact as safetensors bytes (deterministic for a given artifact).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let json = serde_json::to_string(&self.metadata).map_err(|e| Error::BadMetadata {
            key: METADATA_KEY.into(),
            reason: e.to_string(),
        })?;
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            f32_tensor("input.scale", &[self.model.input.scale]),
            i32_tensor("input.zero_point", &[self.model.input.zero_point]),
        ];
        for (k, layer) in self.model.layers.iter().enumerate() {
            let p = format!("layers.{k}");
            tensors.push((
                format!("{p}.weight"),
                Dtype::I8,
                vec![layer.outputs, layer.inputs],
                layer.weights.iter().map(|&w| w.to_le_bytes()[0]).collect(),
            ));
            tensors.push(f32_tensor(
                &format!("{p}.weight_scale"),
                &layer.weight_scales,
            ));
            tensors.push(i32_tensor(&format!("{p}.bias"), &layer.bias));
            tensors.push(i32_tensor(&format!("{p}.multiplier"), &layer.multiplier));
            tensors.push(i32_tensor(&format!("{p}.shift"), &layer.shift));
            tensors.push(f32_tensor(
                &format!("{p}.output.scale"),
                &[layer.output.scale],
            ));
            tensors.push(i32_tensor(
                &format!("{p}.output.zero_point"),
                &[layer.output.zero_point],
            ));
            tensors.push(i32_tensor(
                &format!("{p}.activation_range"),
                &[layer.activation_min, layer.activation_max],
            ));
        }
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Tensor {
                        tensor: name.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let header = HashMap::from([(METADATA_KEY.to_owned(), json)]);
        safetensors::serialize(views, Some(header)).map_err(|e| Error::NotSafetensors {
            reason: e.to_string(),
        })
    }

    /// Reads and fully validates an artifact.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let not_safetensors = |e: safetensors::SafeTensorError| Error::NotSafetensors {
            reason: e.to_string(),
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
        let file = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| Error::BadMetadata {
                key: METADATA_KEY.into(),
                reason: "missing from the safetensors __metadata__".into(),
            })?;
        let metadata: Metadata = serde_json::from_str(json).map_err(|e| Error::BadMetadata {
            key: METADATA_KEY.into(),
            reason: e.to_string(),
        })?;
        if metadata.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                version: metadata.format_version,
                supported: FORMAT_VERSION,
            });
        }

        let mut reader = Reader {
            file,
            used: BTreeSet::new(),
        };
        let input = reader.params("input")?;
        let mut layers = Vec::new();
        while reader.has(&format!("layers.{}.weight", layers.len())) {
            if layers.len() == MAX_LAYERS {
                return Err(Error::Tensor {
                    tensor: format!("layers.{}.weight", layers.len()),
                    reason: format!("more than {MAX_LAYERS} layers"),
                });
            }
            layers.push(reader.layer(layers.len())?);
        }
        if let Some(extra) = reader.unused() {
            return Err(Error::Tensor {
                tensor: extra,
                reason: "not part of the format".into(),
            });
        }
        let model = QuantizedModel {
            feature_names: metadata.feature_names.clone(),
            normalisation: metadata.normalisation.clone(),
            input,
            layers,
            threshold: metadata.threshold,
        };
        Self::new(metadata, model)
    }
}

fn f32_tensor(name: &str, values: &[f32]) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (name.to_owned(), Dtype::F32, vec![values.len()], data)
}

fn i32_tensor(name: &str, values: &[i32]) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    (name.to_owned(), Dtype::I32, vec![values.len()], data)
}

/// Typed, shape-checked access to the tensors of a file, remembering which were read.
struct Reader<'a> {
    file: SafeTensors<'a>,
    used: BTreeSet<String>,
}

impl<'a> Reader<'a> {
    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_ok()
    }

    fn unused(&self) -> Option<String> {
        let mut names = self.file.names();
        names.sort_unstable();
        names
            .into_iter()
            .find(|n| !self.used.contains(*n))
            .map(str::to_owned)
    }

    fn view(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: Option<&[usize]>,
    ) -> Result<TensorView<'a>> {
        let view = self.file.tensor(name).map_err(|_| Error::Tensor {
            tensor: name.into(),
            reason: "missing".into(),
        })?;
        if view.dtype() != dtype {
            return Err(Error::Tensor {
                tensor: name.into(),
                reason: format!("dtype {:?}, expected {dtype:?}", view.dtype()),
            });
        }
        if let Some(shape) = shape
            && view.shape() != shape
        {
            return Err(Error::Tensor {
                tensor: name.into(),
                reason: format!("shape {:?}, expected {shape:?}", view.shape()),
            });
        }
        self.used.insert(name.to_owned());
        Ok(view)
    }

    fn f32s(&mut self, name: &str, len: usize) -> Result<Vec<f32>> {
        let view = self.view(name, Dtype::F32, Some(&[len]))?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn i32s(&mut self, name: &str, len: usize) -> Result<Vec<i32>> {
        let view = self.view(name, Dtype::I32, Some(&[len]))?;
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn scalar_f32(&mut self, name: &str) -> Result<f32> {
        Ok(self.f32s(name, 1)?.first().copied().unwrap_or(f32::NAN))
    }

    fn scalar_i32(&mut self, name: &str) -> Result<i32> {
        Ok(self.i32s(name, 1)?.first().copied().unwrap_or(i32::MIN))
    }

    fn params(&mut self, prefix: &str) -> Result<QuantParams> {
        let params = QuantParams {
            scale: self.scalar_f32(&format!("{prefix}.scale"))?,
            zero_point: self.scalar_i32(&format!("{prefix}.zero_point"))?,
        };
        params.validate(prefix)?;
        Ok(params)
    }

    fn layer(&mut self, k: usize) -> Result<QuantizedLayer> {
        let p = format!("layers.{k}");
        let weight_name = format!("{p}.weight");
        let view = self.view(&weight_name, Dtype::I8, None)?;
        let &[outputs, inputs] = view.shape() else {
            return Err(Error::Tensor {
                tensor: weight_name,
                reason: format!("shape {:?} is not [outputs, inputs]", view.shape()),
            });
        };
        if outputs == 0 || inputs == 0 || outputs > MAX_WIDTH || inputs > MAX_WIDTH {
            return Err(Error::Tensor {
                tensor: weight_name,
                reason: format!("shape [{outputs}, {inputs}] is outside 1..={MAX_WIDTH}"),
            });
        }
        let weights = view
            .data()
            .iter()
            .map(|&b| i8::from_le_bytes([b]))
            .collect();
        let range = self.i32s(&format!("{p}.activation_range"), 2)?;
        Ok(QuantizedLayer {
            inputs,
            outputs,
            weights,
            weight_scales: self.f32s(&format!("{p}.weight_scale"), outputs)?,
            bias: self.i32s(&format!("{p}.bias"), outputs)?,
            multiplier: self.i32s(&format!("{p}.multiplier"), outputs)?,
            shift: self.i32s(&format!("{p}.shift"), outputs)?,
            output: self.params(&format!("{p}.output"))?,
            activation_min: range.first().copied().unwrap_or(i32::MIN),
            activation_max: range.get(1).copied().unwrap_or(i32::MIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoencoder::tests_support::latent_windows;
    use crate::{FitOptions, train_int8};

    fn artifact() -> Artifact {
        let windows = latent_windows(120, 6, 7);
        let names: Vec<String> = ["vib", "temp"]
            .iter()
            .flat_map(|c| ["rms", "peak", "mean"].map(|k| format!("{c}.{k}")))
            .collect();
        let options = FitOptions {
            epochs: 5,
            hidden: vec![8, 3],
            ..FitOptions::default()
        };
        let range = TrainingRange {
            start_us: 1_700_000_000_000_000,
            end_us: 1_700_000_120_000_000,
            windows: 120,
            window_us: 1_000_000,
            sample_rate_hz: 1000.0,
        };
        train_int8(&windows, names, &options, "line-a-7", range).unwrap()
    }

    /// Rewrites the artifact with `edit` applied to its tensor list and JSON metadata.
    fn rewrite(
        artifact: &Artifact,
        edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, &mut serde_json::Value),
    ) -> Vec<u8> {
        let bytes = artifact.to_bytes().unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        let mut json = serde_json::to_value(&artifact.metadata).unwrap();
        edit(&mut tensors, &mut json);
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let header = HashMap::from([(METADATA_KEY.to_owned(), json.to_string())]);
        safetensors::serialize(views, Some(header)).unwrap()
    }

    fn load_err(bytes: &[u8]) -> String {
        Artifact::from_bytes(bytes).unwrap_err().to_string()
    }

    #[test]
    fn round_trip_keeps_everything() {
        let a = artifact();
        let bytes = a.to_bytes().unwrap();
        let b = Artifact::from_bytes(&bytes).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.metadata.channels, ["vib", "temp"]);
        assert_eq!(b.metadata.model_version, "line-a-7");
        assert_eq!(b.metadata.model_family, MODEL_FAMILY);
        assert_eq!(b.metadata.training.windows, 120);
        assert!(b.metadata.metrics.contains_key("int8.spearman"));
        let w = latent_windows(1, 6, 99).remove(0);
        assert_eq!(a.model.infer(&w).unwrap(), b.model.infer(&w).unwrap());
        // Deterministic bytes.
        assert_eq!(b.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn header_has_one_metadata_key() {
        let bytes = artifact().to_bytes().unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let map = header.metadata().as_ref().unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), [METADATA_KEY]);
        let json: serde_json::Value = serde_json::from_str(&map[METADATA_KEY]).unwrap();
        assert_eq!(json["format_version"], 1);
        assert_eq!(json["feature_names"][0], "vib.rms");
    }

    #[test]
    fn bad_tensors_are_named() {
        let a = artifact();
        let err = load_err(&rewrite(&a, |t, _| t.retain(|x| x.0 != "layers.1.bias")));
        assert_eq!(err, "tensor `layers.1.bias`: missing");

        let err = load_err(&rewrite(&a, |t, _| {
            t.push(("extra".into(), Dtype::I32, vec![1], vec![0; 4]))
        }));
        assert_eq!(err, "tensor `extra`: not part of the format");

        let err = load_err(&rewrite(&a, |t, _| {
            let s = t
                .iter_mut()
                .find(|x| x.0 == "layers.0.weight_scale")
                .unwrap();
            s.3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }));
        assert!(
            err.starts_with("tensor `layers.0.weight_scale`: scale NaN"),
            "{err}"
        );

        let err = load_err(&rewrite(&a, |t, _| {
            let s = t.iter_mut().find(|x| x.0 == "layers.2.multiplier").unwrap();
            s.3[0] ^= 0x10;
        }));
        assert!(
            err.starts_with("tensor `layers.2.multiplier`: channel 0"),
            "{err}"
        );

        let err = load_err(&rewrite(&a, |t, _| {
            let s = t.iter_mut().find(|x| x.0 == "input.zero_point").unwrap();
            s.3.copy_from_slice(&300i32.to_le_bytes());
        }));
        assert_eq!(
            err,
            "tensor `input.zero_point`: zero point 300 is outside int8"
        );

        // Dropping the last layer breaks the shape chain back to the features.
        let err = load_err(&rewrite(&a, |t, _| {
            t.retain(|x| !x.0.starts_with("layers.3."))
        }));
        assert!(err.starts_with("tensor `layers.2."), "{err}");

        let err = load_err(&rewrite(&a, |t, _| {
            let s = t.iter_mut().find(|x| x.0 == "layers.0.bias").unwrap();
            s.1 = Dtype::F32;
        }));
        assert_eq!(err, "tensor `layers.0.bias`: dtype F32, expected I32");
    }

    #[test]
    fn bad_metadata_is_named() {
        let a = artifact();
        let err = load_err(&rewrite(&a, |_, j| j["format_version"] = 2.into()));
        assert_eq!(
            err,
            "unsupported artifact format version 2 (this build reads version 1)"
        );
        let err = load_err(&rewrite(&a, |_, j| j["model_family"] = "forest".into()));
        assert!(err.starts_with("metadata `model_family`"), "{err}");
        let err = load_err(&rewrite(&a, |_, j| {
            j["normalisation"]["std"][2] = 0.0.into()
        }));
        assert!(err.contains("std of feature 2"), "{err}");
        let err = load_err(&rewrite(&a, |_, j| {
            j["feature_names"].as_array_mut().unwrap().pop();
        }));
        assert_eq!(err, "bad normalisation: 6 means and 6 stds for 5 features");
        let err = load_err(&rewrite(&a, |_, j| j["training"]["window_us"] = 0.into()));
        assert_eq!(err, "metadata `training.window_us`: must be > 0");
        let err = load_err(&rewrite(&a, |_, j| j["surprise"] = 1.into()));
        assert!(err.contains("unknown field `surprise`"), "{err}");
        let err = load_err(&rewrite(&a, |_, j| {
            j["channels"] = serde_json::json!(["vib"])
        }));
        assert!(
            err.contains("`temp.rms` belongs to no listed channel"),
            "{err}"
        );
    }

    #[test]
    fn to_bytes_rejects_disagreeing_metadata() {
        let mut a = artifact();
        a.metadata.threshold += 1.0;
        assert_eq!(
            a.to_bytes().unwrap_err().to_string(),
            "metadata `threshold`: differs from the model's"
        );
        a.set_threshold(0.25).unwrap();
        let b = Artifact::from_bytes(&a.to_bytes().unwrap()).unwrap();
        assert_eq!(b.model.threshold(), 0.25);
        assert!(a.set_threshold(f32::NAN).is_err());
        a.metadata.metrics.insert("bad".into(), f64::NAN);
        assert_eq!(
            a.to_bytes().unwrap_err().to_string(),
            "metadata `metrics.bad`: NaN is not finite"
        );
    }

    #[test]
    fn feature_layout_comes_back_for_standard_features() {
        let a = artifact();
        // Three kinds per channel is not the standard layout.
        assert!(a.metadata.feature_layout().is_err());
        let mut m = a.metadata.clone();
        m.channels = vec!["vib".into()];
        m.feature_names = FeatureLayout::new(&["vib"])
            .unwrap()
            .feature_names()
            .to_vec();
        assert_eq!(m.feature_layout().unwrap().channels(), ["vib"]);
    }
}
