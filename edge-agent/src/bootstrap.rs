//! The bootstrap model: what a device runs before any release reaches it.
//!
//! It is fitted at start-up on the line simulator's `normal` scenario (recipe changes, no
//! faults) for several simulated machines, so it knows the spread between machines and
//! operating points, and it is deterministic: the same seed, sample rate and window give the
//! same artifact, byte for byte. A real plant replaces it with a model trained on its own
//! lake, signed and rolled out by dispatch.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use loopline_linesim::{CHANNELS, LineSim, Scenario};
use loopline_model::{Artifact, FeatureLayout, FitOptions, TrainingRange};

/// Channels the bootstrap model reads: the line's default model channels, which the trainer
/// also uses, so that a trained model reads what the bootstrap did.
pub const MODEL_CHANNELS: [&str; 7] = loopline_model::DEFAULT_CHANNELS;

/// Simulated machines the bootstrap data comes from.
const MACHINES: usize = 6;
/// Simulated time per machine.
const SIMULATED: Duration = Duration::from_secs(240);
/// Start of the simulated training data (2026-01-01T00:00:00Z); only labels the range.
const T0_US: i64 = 1_767_225_600_000_000;

/// What a bootstrap model depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootstrapKey {
    pub seed: u64,
    pub sample_rate_hz: NonZeroU32,
    pub window_samples: u64,
}

impl BootstrapKey {
    /// The version string of the model for this key.
    pub fn version(&self) -> String {
        format!(
            "bootstrap-s{}-r{}-w{}",
            self.seed, self.sample_rate_hz, self.window_samples
        )
    }
}

/// The bootstrap artifact for `key`, fitted once per process.
pub fn model(key: BootstrapKey) -> Result<Arc<Artifact>, String> {
    type Cache = Mutex<HashMap<BootstrapKey, Arc<Artifact>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    // Fitting under the lock: several devices starting together fit once.
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = cache.get(&key) {
        return Ok(found.clone());
    }
    let artifact = Arc::new(fit(key)?);
    cache.insert(key, Arc::clone(&artifact));
    Ok(artifact)
}

/// Fits the bootstrap model for `key` (no cache).
pub fn fit(key: BootstrapKey) -> Result<Artifact, String> {
    let layout = FeatureLayout::new(&MODEL_CHANNELS).map_err(|e| e.to_string())?;
    let index: Vec<usize> = MODEL_CHANNELS
        .iter()
        .map(|name| {
            CHANNELS
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| format!("the line has no channel {name:?}"))
        })
        .collect::<Result<_, _>>()?;
    let scenario = Scenario::named("normal").map_err(|e| e.to_string())?;
    let window = usize::try_from(key.window_samples).map_err(|e| e.to_string())?;
    let rate = u64::from(key.sample_rate_hz.get());
    let windows_per_machine = (SIMULATED.as_secs() * rate) / key.window_samples.max(1);
    let sample_interval_us = 1e6 / f64::from(key.sample_rate_hz.get());
    let mut features = Vec::new();
    let mut buffers: Vec<Vec<f32>> = vec![Vec::with_capacity(window); index.len()];
    for machine in 0..MACHINES {
        let mut line = LineSim::new(
            &scenario,
            key.seed,
            &format!("bootstrap-{machine}"),
            key.sample_rate_hz,
            T0_US,
        );
        for _ in 0..windows_per_machine {
            for buffer in &mut buffers {
                buffer.clear();
            }
            for _ in 0..window {
                let sample = line.next_sample();
                for (buffer, &i) in buffers.iter_mut().zip(&index) {
                    buffer.push(sample.values[i]);
                }
            }
            let slices: Vec<&[f32]> = buffers.iter().map(Vec::as_slice).collect();
            features.push(
                layout
                    .extract(&slices, sample_interval_us)
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    let end_us = T0_US + i64::try_from(SIMULATED.as_micros()).unwrap_or(i64::MAX);
    let options = FitOptions {
        seed: key.seed,
        ..FitOptions::default()
    };
    loopline_model::train_int8(
        &features,
        layout.feature_names().to_vec(),
        &options,
        &key.version(),
        TrainingRange {
            start_us: T0_US,
            end_us,
            windows: features.len() as u64,
            window_us: key.window_samples * 1_000_000 / rate,
            sample_rate_hz: f64::from(key.sample_rate_hz.get()),
        },
    )
    .map_err(|e| format!("bootstrap model cannot be fitted: {e}"))
}
