//! When a line's model is retrained: a per-(line, model family) evaluator that turns the
//! windows the line scored into one [`Decision`] per evaluation.
//!
//! Triggers: new-data volume, drift (PSI of the score, and optionally of key features, against
//! the running model's reference; Page-Hinkley on the score stream), schedule, and manual.
//! Guards: cool-down after a training, debounce, the data-quality gate and the degradation
//! gate. `docs/triggers.md` explains each for operators.
//!
//! Invariants:
//! - A pure state machine: no I/O and no clock. Time comes in as `now` (µs since the Unix
//!   epoch) and with the windows; the same inputs give the same decisions.
//! - A window is taken once: per device, a window ending at or before the last one taken is
//!   ignored, so a caller may re-read an overlapping range of the lake.
//! - A developing machine fault is never retrained away. Drift with the operating context
//!   (recipe, speed setpoint) unchanged and the score rising is a degradation: it raises
//!   [`Alert::Degradation`], and from then on no automatic trigger retrains until
//!   [`TriggerEvaluator::clear_degradation`] or a new reference; a manual retrain trains only
//!   on data before the degradation began.
//! - A faulty sensor is not a reason to retrain: while a sensor fault is active, or lies
//!   within the data a drift was measured on, no drift, volume or schedule retrain happens.
//! - Every decision carries a sentence for dispatch's timeline ([`Decision::sentence`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::drift::{self, PageHinkley, PageHinkleyConfig, PsiBand};

/// Summary of one channel's samples in one window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChannelHealth {
    /// Samples in the window (0: the sensor is silent).
    pub samples: u64,
    /// Mean of the finite values; `None` when there is none.
    pub mean: Option<f64>,
    /// Population standard deviation of the finite values; `None` when there is none.
    pub std: Option<f64>,
    /// Share of samples whose quality is not good (uncertain or bad); 1 with no sample.
    pub non_good_share: f64,
}

/// One window a device scored, with what its telemetry says about it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoredWindow {
    pub device: String,
    pub window_start_us: i64,
    pub window_end_us: i64,
    pub model_version: Option<String>,
    pub score: f64,
    pub anomaly: bool,
    /// Mean recipe number over the window (the operating context); `None` when not reported.
    pub recipe: Option<f64>,
    /// Mean speed setpoint over the window (the operating context); `None` when not reported.
    pub speed_setpoint: Option<f64>,
    /// Per channel, by name.
    pub channels: BTreeMap<String, ChannelHealth>,
}

impl ScoredWindow {
    /// The value of a key feature `<channel>.mean` or `<channel>.std`.
    pub fn feature(&self, name: &str) -> Option<f64> {
        let (channel, kind) = name.rsplit_once('.')?;
        let health = self.channels.get(channel)?;
        match kind {
            "mean" => health.mean,
            "std" => health.std,
            _ => None,
        }
    }
}

/// The windows of one line that arrived since the previous evaluation (any order).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LineWindowData {
    pub windows: Vec<ScoredWindow>,
}

/// The operating context a model was trained in.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct OperatingContext {
    pub recipe: Option<f64>,
    pub speed_setpoint: Option<f64>,
}

/// A distribution held as a sample or as quantiles at `0, 1/n, …, 1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Sample(Vec<f64>),
    Quantiles(Vec<f64>),
}

impl Distribution {
    /// The `q`-quantile.
    fn quantile(&self, q: f64) -> Option<f64> {
        match self {
            Distribution::Sample(values) => {
                let mut sorted: Vec<f64> =
                    values.iter().copied().filter(|v| v.is_finite()).collect();
                sorted.sort_by(f64::total_cmp);
                drift::quantile_sorted(&sorted, q)
            }
            Distribution::Quantiles(qs) => drift::quantile_sorted(qs, q),
        }
    }

    /// Sample size, `None` for quantiles of a (large) training set.
    fn sample_size(&self) -> Option<usize> {
        match self {
            Distribution::Sample(values) => Some(values.len()),
            Distribution::Quantiles(_) => None,
        }
    }
}

/// The running model's reference: what its scores (and key features) looked like on data it
/// knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// The model the reference describes; windows scored by another model are not compared.
    pub model_version: Option<String>,
    pub score: Distribution,
    /// Key features by name (`<channel>.mean`, `<channel>.std`).
    pub features: BTreeMap<String, Distribution>,
    /// The operating context of the reference period; learned from the first windows when
    /// `None`.
    pub context: Option<OperatingContext>,
    /// End of the data the model was trained on (µs), where the next training starts.
    pub trained_to_us: Option<i64>,
}

impl Reference {
    /// The reference a trainer's `metrics.json` carries: `reference.score_quantiles` (required),
    /// `reference.feature_quantiles` (`{name: [q…]}`), `reference.recipe`,
    /// `reference.speed_setpoint` and `training.end_us` (optional). `None` without score
    /// quantiles.
    pub fn from_metrics(model_version: &str, metrics: &serde_json::Value) -> Option<Reference> {
        let reference = metrics.get("reference")?;
        let floats = |v: &serde_json::Value| -> Option<Vec<f64>> {
            v.as_array()?
                .iter()
                .map(serde_json::Value::as_f64)
                .collect()
        };
        let score = floats(reference.get("score_quantiles")?)?;
        let features = reference
            .get("feature_quantiles")
            .and_then(serde_json::Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Distribution::Quantiles(floats(v)?))))
                    .collect()
            })
            .unwrap_or_default();
        let recipe = reference.get("recipe").and_then(serde_json::Value::as_f64);
        let speed_setpoint = reference
            .get("speed_setpoint")
            .and_then(serde_json::Value::as_f64);
        let context = (recipe.is_some() || speed_setpoint.is_some()).then_some(OperatingContext {
            recipe,
            speed_setpoint,
        });
        Some(Reference {
            model_version: Some(model_version.to_owned()),
            score: Distribution::Quantiles(score),
            features,
            context,
            trained_to_us: metrics
                .pointer("/training/end_us")
                .and_then(serde_json::Value::as_i64),
        })
    }
}

/// Where the evaluator's reference comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ReferenceSource {
    /// Known up front (from the trainer's metrics).
    Known(Reference),
    /// A model without metrics (the agents' bootstrap model): the first
    /// [`TriggerConfig::reference_windows`] windows the line scored with it.
    FirstWindows { model_version: Option<String> },
}

/// The thresholds of every trigger and guard; `docs/triggers.md` explains them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    /// Windows that make the reference when the model has no metrics.
    pub reference_windows: usize,
    /// The latest windows of the line whose distribution is compared with the reference.
    pub drift_windows: usize,
    /// Most bins a PSI is computed over (fewer when the samples are small).
    pub psi_bins: usize,
    /// Fewest windows per bin: the bins are capped at `min(n_ref, n_cur) / psi_min_per_bin`.
    pub psi_min_per_bin: usize,
    /// Excess PSI (over the sampling-noise floor) above which a distribution has drifted.
    pub psi_significant: f64,
    /// Page-Hinkley on the score, standardised by the reference (median, IQR/1.349).
    pub page_hinkley: PageHinkleyConfig,
    /// Consecutive evaluations that must see drift before it triggers.
    pub debounce_evaluations: u32,
    /// No drift trigger for this long after a training was triggered.
    #[serde(with = "loopline_common::duration")]
    pub cooldown: Duration,
    /// Retrain once this many windows arrived since the last training.
    pub volume_windows: u64,
    /// Retrain at least this often; `0s` turns the schedule off.
    #[serde(with = "loopline_common::duration")]
    pub schedule_every: Duration,
    /// How far back a retrain without a context change reaches for its data.
    #[serde(with = "loopline_common::duration")]
    pub training_lookback: Duration,
    /// Features compared with the reference (`<channel>.mean`, `<channel>.std`).
    pub key_features: Vec<String>,
    /// Whether a key feature's drift triggers on its own, the score being stable. Off: a model
    /// that scores the new data as it scored the old needs no retraining.
    pub feature_drift_alone: bool,
    /// Channels that carry the operating context, not measurements (never sensor faults).
    pub context_channels: Vec<String>,
    /// Relative difference of the speed setpoint that counts as a change of context.
    pub setpoint_tolerance: f64,
    /// After a change of context, windows starting within this time of it are the machine
    /// settling at its new operating point: they are not compared with the reference.
    #[serde(with = "loopline_common::duration")]
    pub context_settle: Duration,
    /// After a change of context, drift is measured on the settled windows of the new context
    /// alone, once there are this many.
    pub min_windows_after_change: usize,
    /// A process change is retrained once the new context has this many windows (all the
    /// line's devices together) to train and hold out on; until then the decision waits.
    pub min_training_windows: usize,
    /// A sensor is stuck when its std is at most this times `max(|mean|, 1)`.
    pub stuck_relative_std: f64,
    /// Consecutive windows a sensor must be flat to be called stuck.
    pub stuck_windows: u32,
    /// Share of non-good samples that makes a window bad for a sensor.
    pub bad_quality_share: f64,
    /// Consecutive silent or bad windows that make a sensor dead.
    pub dead_windows: u32,
    /// Windows of the line the score trend is measured over.
    pub trend_windows: usize,
    /// Rank correlation of score with time at or above which the score is rising.
    pub trend_min_rho: f64,
    /// Rise of the flagged share (second half of the trend windows minus first) that also
    /// counts as rising.
    pub trend_min_flagged_rise: f64,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            reference_windows: 60,
            drift_windows: 45,
            psi_bins: drift::DEFAULT_PSI_BINS,
            psi_min_per_bin: 10,
            psi_significant: drift::PSI_MODERATE_UP_TO,
            page_hinkley: PageHinkleyConfig {
                delta: 0.5,
                lambda: 50.0,
                min_samples: 30,
            },
            debounce_evaluations: 3,
            cooldown: Duration::from_secs(30 * 60),
            volume_windows: 100_000,
            schedule_every: Duration::from_secs(7 * 24 * 3600),
            training_lookback: Duration::from_secs(3600),
            key_features: [
                "vibration.std",
                "temperature.mean",
                "current.std",
                "pressure.mean",
                "flow.mean",
            ]
            .map(String::from)
            .to_vec(),
            feature_drift_alone: false,
            context_channels: vec!["recipe".into(), "speed_setpoint".into()],
            setpoint_tolerance: 0.02,
            context_settle: Duration::from_secs(8),
            min_windows_after_change: 9,
            min_training_windows: 90,
            stuck_relative_std: 1e-6,
            stuck_windows: 3,
            bad_quality_share: 0.5,
            dead_windows: 2,
            trend_windows: 180,
            trend_min_rho: 0.3,
            trend_min_flagged_rise: 0.1,
        }
    }
}

/// What made a retrain due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Enough new windows since the last training.
    Volume { windows: u64 },
    /// The score distribution moved: its PSI (raw), the band of the PSI in excess of the
    /// sampling noise, and whether Page-Hinkley fired.
    Drift { psi: f64, band: PsiBand, ph: bool },
    /// The schedule came round.
    Schedule,
    /// An operator asked.
    Manual { reason: String },
}

/// How a sensor fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorFaultKind {
    /// Flat: the same value window after window.
    Stuck,
    /// No samples.
    Silent,
    /// Most samples flagged uncertain or bad.
    BadQuality,
}

impl SensorFaultKind {
    fn describe(self) -> &'static str {
        match self {
            SensorFaultKind::Stuck => "is stuck (flat)",
            SensorFaultKind::Silent => "is silent (no samples)",
            SensorFaultKind::BadQuality => "reports bad quality",
        }
    }
}

/// Something an operator must look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// A stuck or dead sensor; drift retrains over its period are blocked.
    SensorFault {
        device: String,
        sensor: String,
        kind: SensorFaultKind,
        since_us: i64,
    },
    /// Drift with the operating context unchanged and the score rising: a developing machine
    /// fault, which retraining would hide.
    Degradation {
        /// Devices whose score rises.
        devices: Vec<String>,
        /// Estimated start of the rise.
        since_us: i64,
        psi: f64,
        /// Rank correlation of score with time over the trend windows.
        rho: f64,
    },
}

impl Alert {
    /// A sentence for the timeline.
    pub fn sentence(&self) -> String {
        match self {
            Alert::SensorFault {
                device,
                sensor,
                kind,
                since_us,
            } => format!(
                "Sensor fault: {sensor} on {device} {} since {}; drift over this period will not trigger a retrain.",
                kind.describe(),
                time(*since_us)
            ),
            Alert::Degradation {
                devices,
                since_us,
                psi,
                rho,
            } => format!(
                "Developing machine fault on {}: the score has risen since about {} (PSI {psi:.2}, rank correlation with time {rho:.2}) with recipe and speed setpoint unchanged; not retraining, inspect the machine.",
                devices.join(", "),
                time(*since_us)
            ),
        }
    }
}

/// What the evaluator decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Train on `[data_from_us, data_to_us)`.
    Retrain {
        trigger: Trigger,
        data_from_us: i64,
        data_to_us: i64,
        explanation: String,
    },
    /// Nothing to do now, and why.
    Hold {
        why: String,
    },
    Alert(Alert),
}

impl Decision {
    /// The sentence dispatch's timeline shows.
    pub fn sentence(&self) -> String {
        match self {
            Decision::Retrain { explanation, .. } => explanation.clone(),
            Decision::Hold { why } => why.clone(),
            Decision::Alert(alert) => alert.sentence(),
        }
    }

    pub fn is_retrain(&self) -> bool {
        matches!(self, Decision::Retrain { .. })
    }
}

/// A UTC time for sentences.
fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
    )
}

/// A window as the evaluator keeps it.
#[derive(Debug, Clone)]
struct Kept {
    device: String,
    start_us: i64,
    end_us: i64,
    score: f64,
    anomaly: bool,
    features: Vec<Option<f64>>,
}

#[derive(Debug, Default, Clone)]
struct SensorTrack {
    stuck_run: u32,
    stuck_since: i64,
    dead_run: u32,
    dead_since: i64,
    dead_kind: Option<SensorFaultKind>,
    /// The fault now active, and since when.
    active: Option<(SensorFaultKind, i64)>,
    /// The last confirmed fault: kind, since, end of the last window it was seen in.
    confirmed: Option<(SensorFaultKind, i64, i64)>,
}

/// The running model's reference, ready to compare against.
#[derive(Debug, Clone)]
struct Ready {
    reference: Reference,
    /// Standardisation of scores for Page-Hinkley.
    median: f64,
    scale: f64,
    /// Distributions of `config.key_features`, in that order (`None`: no reference for it).
    features: Vec<Option<Distribution>>,
}

#[derive(Debug)]
struct Degradation {
    since_us: i64,
}

/// One line's (and model family's) retraining triggers.
#[derive(Debug)]
pub struct TriggerEvaluator {
    config: TriggerConfig,
    source: ReferenceSource,
    ready: Option<Ready>,
    /// Windows collected for a reference from the first windows.
    building: Vec<ScoredWindow>,
    context: Option<OperatingContext>,
    last_end: BTreeMap<String, i64>,
    recent: VecDeque<Kept>,
    ph: PageHinkley,
    sensors: BTreeMap<(String, String), SensorTrack>,
    pending: VecDeque<Alert>,
    drift_streak: u32,
    degradation: Option<Degradation>,
    /// Start of the first window of the current run in a context other than the reference's.
    context_change_us: Option<i64>,
    last_training_us: Option<i64>,
    trained_to_us: Option<i64>,
    windows_since_training: u64,
    first_evaluation_us: Option<i64>,
    latest_end_us: Option<i64>,
    last_context: Option<OperatingContext>,
    /// Per device, the context of its previous window.
    device_context: BTreeMap<String, OperatingContext>,
    /// Start of the latest window whose context differed from its device's previous one.
    last_transition_us: Option<i64>,
    first_start_us: Option<i64>,
    manual: Option<String>,
}

impl TriggerEvaluator {
    pub fn new(config: TriggerConfig, reference: ReferenceSource) -> TriggerEvaluator {
        let ph = PageHinkley::new(config.page_hinkley);
        let mut evaluator = TriggerEvaluator {
            config,
            source: reference.clone(),
            ready: None,
            building: Vec::new(),
            context: None,
            last_end: BTreeMap::new(),
            recent: VecDeque::new(),
            ph,
            sensors: BTreeMap::new(),
            pending: VecDeque::new(),
            drift_streak: 0,
            degradation: None,
            context_change_us: None,
            last_training_us: None,
            trained_to_us: None,
            windows_since_training: 0,
            first_evaluation_us: None,
            latest_end_us: None,
            last_context: None,
            device_context: BTreeMap::new(),
            last_transition_us: None,
            first_start_us: None,
            manual: None,
        };
        evaluator.set_reference(reference);
        evaluator
    }

    /// A new running model (after a rollout): compare against its reference from now on.
    /// Clears the degradation latch and the drift state; keeps sensor faults and the training
    /// clock.
    pub fn set_reference(&mut self, reference: ReferenceSource) {
        self.source = reference.clone();
        self.building.clear();
        self.recent.clear();
        self.ph.reset();
        self.drift_streak = 0;
        self.degradation = None;
        self.context_change_us = None;
        self.ready = None;
        if let ReferenceSource::Known(reference) = reference {
            if let Some(to) = reference.trained_to_us {
                self.trained_to_us = Some(to);
            }
            self.context = reference.context;
            if self.context.is_some() {
                self.ready = Some(self.prepare(reference));
            } else {
                // The context is learned from the first windows; the reference waits for it.
                self.source = ReferenceSource::Known(reference);
            }
        } else {
            self.context = None;
        }
    }

    /// Asks for a retrain at the next evaluation.
    pub fn request_manual(&mut self, reason: impl Into<String>) {
        self.manual = Some(reason.into());
    }

    /// An operator says the degraded machine was repaired: automatic triggers resume.
    pub fn clear_degradation(&mut self) {
        self.degradation = None;
        self.recent.clear();
        self.ph.reset();
        self.drift_streak = 0;
    }

    /// Whether a degradation alert holds automatic retrains back.
    pub fn is_degraded(&self) -> bool {
        self.degradation.is_some()
    }

    /// Sensor faults active now: (device, sensor, kind, since).
    pub fn sensor_faults(&self) -> Vec<(String, String, SensorFaultKind, i64)> {
        self.sensors
            .iter()
            .filter_map(|((d, s), t)| t.active.map(|(k, since)| (d.clone(), s.clone(), k, since)))
            .collect()
    }

    pub fn config(&self) -> &TriggerConfig {
        &self.config
    }

    fn prepare(&self, reference: Reference) -> Ready {
        let median = reference.score.quantile(0.5).unwrap_or(0.0);
        let iqr = match (
            reference.score.quantile(0.75),
            reference.score.quantile(0.25),
        ) {
            (Some(hi), Some(lo)) => hi - lo,
            _ => 0.0,
        };
        let scale = (iqr / 1.349).max(1e-9 * median.abs().max(1.0));
        let features = self
            .config
            .key_features
            .iter()
            .map(|f| reference.features.get(f).cloned())
            .collect();
        Ready {
            reference,
            median,
            scale,
            features,
        }
    }

    /// Takes the windows that arrived and decides, at `now` (µs since the Unix epoch).
    pub fn evaluate(&mut self, now_us: i64, data: &LineWindowData) -> Decision {
        self.first_evaluation_us.get_or_insert(now_us);
        let mut windows: Vec<&ScoredWindow> = data.windows.iter().collect();
        windows.sort_by(|a, b| (a.window_end_us, &a.device).cmp(&(b.window_end_us, &b.device)));
        for window in windows {
            self.take(window);
        }
        if let Some(alert) = self.pending.pop_front() {
            return Decision::Alert(alert);
        }
        if let Some(reason) = self.manual.take() {
            return self.manual_retrain(now_us, reason);
        }
        let Some(ready) = &self.ready else {
            return Decision::Hold {
                why: format!(
                    "Building the reference of the running model: {} of {} windows.",
                    self.building.len(),
                    self.config.reference_windows
                ),
            };
        };
        let drift = self.measure(ready);
        let fault = self.sensor_fault_within(self.drift_span_start());
        if drift.drifted {
            self.drift_streak += 1;
        } else {
            self.drift_streak = 0;
        }
        if drift.drifted {
            if self.drift_streak < self.config.debounce_evaluations {
                return Decision::Hold {
                    why: format!(
                        "Drift seen ({}), {} of {} consecutive evaluations needed.",
                        drift.summary, self.drift_streak, self.config.debounce_evaluations
                    ),
                };
            }
            if let Some((device, sensor, kind, since)) = fault {
                return Decision::Hold {
                    why: format!(
                        "Drift ({}), but {sensor} on {device} {} since {}: a sensor fault is no reason to retrain.",
                        drift.summary,
                        kind.describe(),
                        time(since)
                    ),
                };
            }
            if let Some(change_us) = self.context_change_us {
                return self.drift_retrain(now_us, &drift, Some(change_us));
            }
            let (rho, rising_devices) = self.trend();
            if let Some(rho) = rho
                && !rising_devices.is_empty()
            {
                if self.degradation.is_none() {
                    let since_us = self.onset();
                    self.degradation = Some(Degradation { since_us });
                    return Decision::Alert(Alert::Degradation {
                        devices: rising_devices,
                        since_us,
                        psi: drift.psi,
                        rho,
                    });
                }
            } else if self.degradation.is_none() {
                return self.drift_retrain(now_us, &drift, None);
            }
        }
        if let Some(degradation) = &self.degradation {
            return Decision::Hold {
                why: format!(
                    "Developing machine fault since {} ({}): automatic retraining is held until the machine is repaired.",
                    time(degradation.since_us),
                    drift.summary
                ),
            };
        }
        if self.windows_since_training >= self.config.volume_windows || self.schedule_due(now_us) {
            let trigger = if self.windows_since_training >= self.config.volume_windows {
                Trigger::Volume {
                    windows: self.windows_since_training,
                }
            } else {
                Trigger::Schedule
            };
            if let Some((device, sensor, kind, since)) = self.sensor_fault_within(None) {
                return Decision::Hold {
                    why: format!(
                        "Retrain due ({}), held while {sensor} on {device} {} (since {}).",
                        trigger_name(&trigger),
                        kind.describe(),
                        time(since)
                    ),
                };
            }
            let (from, to) = self.range_without_change();
            let explanation = match &trigger {
                Trigger::Volume { windows } => format!(
                    "Retrain: {windows} new windows since the last training (threshold {}); training on {} to {}.",
                    self.config.volume_windows,
                    time(from),
                    time(to)
                ),
                _ => format!(
                    "Retrain: the schedule (every {}) came round; training on {} to {}.",
                    loopline_common::duration::format(self.config.schedule_every),
                    time(from),
                    time(to)
                ),
            };
            return self.retrain(now_us, trigger, from, to, explanation);
        }
        Decision::Hold {
            why: format!(
                "No trigger: {}; {} windows since the last training.",
                drift.summary, self.windows_since_training
            ),
        }
    }

    fn schedule_due(&self, now_us: i64) -> bool {
        let every = i64::try_from(self.config.schedule_every.as_micros()).unwrap_or(i64::MAX);
        let since = self.last_training_us.or(self.first_evaluation_us);
        every > 0 && since.is_some_and(|s| now_us.saturating_sub(s) >= every)
    }

    fn in_cooldown(&self, now_us: i64) -> bool {
        let cooldown = i64::try_from(self.config.cooldown.as_micros()).unwrap_or(i64::MAX);
        self.last_training_us
            .is_some_and(|t| now_us.saturating_sub(t) < cooldown)
    }

    fn latest(&self) -> i64 {
        self.latest_end_us.unwrap_or_default()
    }

    /// The data range of a retrain without a context change: the lookback, not before what
    /// the running model was trained on.
    fn range_without_change(&self) -> (i64, i64) {
        let to = self.latest().saturating_add(1);
        let lookback = i64::try_from(self.config.training_lookback.as_micros()).unwrap_or(i64::MAX);
        let mut from = to.saturating_sub(lookback);
        if let Some(first) = self.first_start_us {
            from = from.max(first.min(to));
        }
        (from, to)
    }

    fn drift_retrain(&mut self, now_us: i64, drift: &Measured, change: Option<i64>) -> Decision {
        if self.in_cooldown(now_us) {
            return Decision::Hold {
                why: format!(
                    "Drift ({}), but a training was triggered at {}: cool-down of {}.",
                    drift.summary,
                    time(self.last_training_us.unwrap_or_default()),
                    loopline_common::duration::format(self.config.cooldown)
                ),
            };
        }
        if let Some(change_us) = change {
            let since_change = self
                .recent
                .iter()
                .filter(|k| k.start_us >= change_us)
                .count();
            if since_change < self.config.min_training_windows {
                return Decision::Hold {
                    why: format!(
                        "Process change at {} ({}): waiting for data of the new operating point to train on, {since_change} of {} windows.",
                        time(change_us),
                        drift.summary,
                        self.config.min_training_windows
                    ),
                };
            }
        }
        let trigger = Trigger::Drift {
            psi: drift.psi,
            band: drift.band,
            ph: drift.ph,
        };
        let to = self.latest().saturating_add(1);
        let (from, explanation) = match change {
            Some(change_us) => (
                change_us,
                format!(
                    "Retrain: the operating context changed at {} ({}) and the score drifted ({}); a process change, training on the data since the change.",
                    time(change_us),
                    self.context_summary(),
                    drift.summary
                ),
            ),
            None => {
                let (from, _) = self.range_without_change();
                (
                    from,
                    format!(
                        "Retrain: the score drifted ({}) without a change of context and without a rising trend; training on {} to {}.",
                        drift.summary,
                        time(from),
                        time(to)
                    ),
                )
            }
        };
        self.retrain(now_us, trigger, from, to, explanation)
    }

    fn manual_retrain(&mut self, now_us: i64, reason: String) -> Decision {
        let (mut from, mut to) = self.range_without_change();
        if let Some(change) = self.context_change_us {
            from = change;
        }
        let mut explanation = format!("Retrain requested: {reason}.");
        if let Some(degradation) = &self.degradation {
            to = to.min(degradation.since_us);
            from = from.min(to);
            let _ = write!(
                explanation,
                " The machine is degrading since {}: training only on the data before it.",
                time(degradation.since_us)
            );
        }
        let _ = write!(explanation, " Training on {} to {}.", time(from), time(to));
        self.retrain(now_us, Trigger::Manual { reason }, from, to, explanation)
    }

    fn retrain(
        &mut self,
        now_us: i64,
        trigger: Trigger,
        data_from_us: i64,
        data_to_us: i64,
        explanation: String,
    ) -> Decision {
        self.last_training_us = Some(now_us);
        self.trained_to_us = Some(data_to_us);
        self.windows_since_training = 0;
        self.drift_streak = 0;
        self.ph.reset();
        Decision::Retrain {
            trigger,
            data_from_us,
            data_to_us,
            explanation,
        }
    }

    fn context_summary(&self) -> String {
        let fmt = |c: Option<OperatingContext>| {
            c.map_or_else(
                || "unknown".to_owned(),
                |c| {
                    let v = |v: Option<f64>| v.map_or_else(|| "?".into(), |v| format!("{v:.0}"));
                    format!("recipe {} at {} rpm", v(c.recipe), v(c.speed_setpoint))
                },
            )
        };
        format!(
            "reference {}, now {}",
            fmt(self.context),
            fmt(self.last_context)
        )
    }

    /// Whether `window`'s context differs from the reference's.
    fn context_differs(&self, window: &ScoredWindow) -> bool {
        self.context.is_some_and(|reference| {
            self.contexts_differ(
                reference,
                OperatingContext {
                    recipe: window.recipe,
                    speed_setpoint: window.speed_setpoint,
                },
            )
        })
    }

    fn contexts_differ(&self, a: OperatingContext, b: OperatingContext) -> bool {
        let recipe_differs =
            matches!((a.recipe, b.recipe), (Some(x), Some(y)) if (x - y).abs() > 0.5);
        let setpoint_differs = matches!((a.speed_setpoint, b.speed_setpoint),
            (Some(x), Some(y)) if (x - y).abs() > self.config.setpoint_tolerance * x.abs().max(1.0));
        recipe_differs || setpoint_differs
    }

    /// Takes one window: sensor health, context, and the reference or the drift state.
    fn take(&mut self, window: &ScoredWindow) {
        if self
            .last_end
            .get(&window.device)
            .is_some_and(|&end| window.window_end_us <= end)
        {
            return;
        }
        self.last_end
            .insert(window.device.clone(), window.window_end_us);
        self.latest_end_us = Some(self.latest().max(window.window_end_us));
        self.first_start_us.get_or_insert(window.window_start_us);
        self.windows_since_training += 1;
        let faulty = self.track_sensors(window);
        let context = OperatingContext {
            recipe: window.recipe,
            speed_setpoint: window.speed_setpoint,
        };
        if window.recipe.is_some() || window.speed_setpoint.is_some() {
            self.last_context = Some(context);
        }
        if let Some(previous) = self.device_context.insert(window.device.clone(), context)
            && self.contexts_differ(previous, context)
        {
            self.last_transition_us = Some(
                self.last_transition_us
                    .unwrap_or(i64::MIN)
                    .max(window.window_start_us),
            );
        }
        let settle = i64::try_from(self.config.context_settle.as_micros()).unwrap_or(i64::MAX);
        let settling = self
            .last_transition_us
            .is_some_and(|t| window.window_start_us < t.saturating_add(settle));
        let same_model = match (&self.reference_version(), &window.model_version) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        if self.ready.is_none() {
            if !faulty && same_model {
                self.building.push(window.clone());
            }
            if self.building.len() >= self.config.reference_windows.max(1) {
                self.finish_reference();
            }
            return;
        }
        if self.context_differs(window) {
            self.context_change_us.get_or_insert(window.window_start_us);
        } else if self.context.is_some() {
            self.context_change_us = None;
        }
        if !same_model || settling {
            return;
        }
        let Some(ready) = &self.ready else { return };
        let z = (window.score - ready.median) / ready.scale;
        self.ph.update(z);
        let kept = Kept {
            device: window.device.clone(),
            start_us: window.window_start_us,
            end_us: window.window_end_us,
            score: window.score,
            anomaly: window.anomaly,
            features: self
                .config
                .key_features
                .iter()
                .map(|f| window.feature(f))
                .collect(),
        };
        self.recent.push_back(kept);
        let keep = self.config.drift_windows.max(self.config.trend_windows);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    fn reference_version(&self) -> Option<String> {
        match &self.source {
            ReferenceSource::Known(r) => r.model_version.clone(),
            ReferenceSource::FirstWindows { model_version } => model_version.clone(),
        }
    }

    /// Turns the collected first windows into the reference (or, for a known reference
    /// without a context, into its context).
    fn finish_reference(&mut self) {
        let windows = std::mem::take(&mut self.building);
        let median = |values: Vec<f64>| {
            let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
            v.sort_by(f64::total_cmp);
            drift::quantile_sorted(&v, 0.5)
        };
        let context = OperatingContext {
            recipe: median(windows.iter().filter_map(|w| w.recipe).collect()),
            speed_setpoint: median(windows.iter().filter_map(|w| w.speed_setpoint).collect()),
        };
        self.context = Some(context);
        let reference = match &self.source {
            ReferenceSource::Known(reference) => Reference {
                context: Some(context),
                ..reference.clone()
            },
            ReferenceSource::FirstWindows { model_version } => Reference {
                model_version: model_version.clone(),
                score: Distribution::Sample(windows.iter().map(|w| w.score).collect()),
                features: self
                    .config
                    .key_features
                    .iter()
                    .map(|f| {
                        (
                            f.clone(),
                            Distribution::Sample(
                                windows.iter().filter_map(|w| w.feature(f)).collect(),
                            ),
                        )
                    })
                    .collect(),
                context: Some(context),
                trained_to_us: None,
            },
        };
        self.ready = Some(self.prepare(reference));
    }

    /// Updates the per-sensor fault state with `window`; returns whether any of its sensors
    /// is faulty in it. A newly confirmed fault queues an alert.
    fn track_sensors(&mut self, window: &ScoredWindow) -> bool {
        let mut faulty = false;
        // A channel the device reported before but not in this window is silent.
        let known: BTreeSet<String> = self
            .sensors
            .keys()
            .filter(|(d, _)| *d == window.device)
            .map(|(_, s)| s.clone())
            .collect();
        let silent = ChannelHealth {
            samples: 0,
            mean: None,
            std: None,
            non_good_share: 1.0,
        };
        let mut names: BTreeSet<String> = window.channels.keys().cloned().collect();
        names.extend(known);
        for name in names {
            if self.config.context_channels.contains(&name) {
                continue;
            }
            let health = window.channels.get(&name).unwrap_or(&silent);
            let track = self
                .sensors
                .entry((window.device.clone(), name.clone()))
                .or_default();
            let flat = match (health.mean, health.std) {
                (Some(mean), Some(std)) if health.samples > 1 => {
                    std <= self.config.stuck_relative_std * mean.abs().max(1.0)
                }
                _ => false,
            };
            if flat {
                if track.stuck_run == 0 {
                    track.stuck_since = window.window_start_us;
                }
                track.stuck_run += 1;
            } else {
                track.stuck_run = 0;
            }
            let dead = if health.samples == 0 {
                Some(SensorFaultKind::Silent)
            } else if health.non_good_share >= self.config.bad_quality_share {
                Some(SensorFaultKind::BadQuality)
            } else {
                None
            };
            match dead {
                Some(kind) => {
                    if track.dead_run == 0 {
                        track.dead_since = window.window_start_us;
                        track.dead_kind = Some(kind);
                    }
                    track.dead_run += 1;
                }
                None => track.dead_run = 0,
            }
            let now_fault = if track.dead_run >= self.config.dead_windows.max(1) {
                Some((
                    track.dead_kind.unwrap_or(SensorFaultKind::Silent),
                    track.dead_since,
                ))
            } else if track.stuck_run >= self.config.stuck_windows.max(1) {
                Some((SensorFaultKind::Stuck, track.stuck_since))
            } else {
                None
            };
            match (now_fault, track.active) {
                (Some((kind, since)), None) => {
                    track.active = Some((kind, since));
                    self.pending.push_back(Alert::SensorFault {
                        device: window.device.clone(),
                        sensor: name.clone(),
                        kind,
                        since_us: since,
                    });
                }
                (None, Some(_)) if !flat && dead.is_none() => track.active = None,
                _ => {}
            }
            if let Some((kind, since)) = track.active {
                track.confirmed = Some((kind, since, window.window_end_us));
            }
            // A window is faulty for a sensor while the fault runs, confirmed or not yet.
            faulty |= flat || dead.is_some() || track.active.is_some();
        }
        faulty
    }

    /// The windows drift is measured on: the latest `drift_windows`, and after a change of
    /// context only those of the new context (settled).
    fn drift_sample(&self) -> Vec<&Kept> {
        let since = self
            .context_change_us
            .and(self.last_transition_us)
            .unwrap_or(i64::MIN);
        let mut sample: Vec<&Kept> = self
            .recent
            .iter()
            .rev()
            .filter(|k| k.start_us >= since)
            .take(self.config.drift_windows)
            .collect();
        sample.reverse();
        sample
    }

    /// Start of the data the drift is measured on.
    fn drift_span_start(&self) -> Option<i64> {
        self.drift_sample().iter().map(|k| k.start_us).min()
    }

    /// A confirmed sensor fault active now, or seen at or after `from` (if given).
    fn sensor_fault_within(
        &self,
        from: Option<i64>,
    ) -> Option<(String, String, SensorFaultKind, i64)> {
        self.sensors.iter().find_map(|((device, sensor), t)| {
            let (kind, since, last_end) = t.confirmed?;
            (t.active.is_some() || from.is_some_and(|from| last_end >= from))
                .then(|| (device.clone(), sensor.clone(), kind, since))
        })
    }

    fn measure(&self, ready: &Ready) -> Measured {
        let current = self.drift_sample();
        let n = current.len();
        let scores: Vec<f64> = current.iter().map(|k| k.score).collect();
        let ph = self.ph.detected();
        let (psi, excess) = self.psi_of(&ready.reference.score, &scores);
        let band = PsiBand::of(excess);
        let mut feature_text = String::new();
        let mut feature_drift = false;
        for (i, (name, reference)) in self
            .config
            .key_features
            .iter()
            .zip(&ready.features)
            .enumerate()
        {
            let Some(reference) = reference else { continue };
            let values: Vec<f64> = current.iter().filter_map(|k| k.features[i]).collect();
            let (p, e) = self.psi_of(reference, &values);
            if e > self.config.psi_significant {
                feature_drift = true;
                let _ = write!(feature_text, ", {name} PSI {p:.2}");
            }
        }
        let enough = if self.context_change_us.is_some() {
            n >= self.config.min_windows_after_change.max(1)
        } else {
            n >= self.config.drift_windows.max(1)
        };
        // Scores that moved down mean the model fits the new data at least as well as the old:
        // no reason to retrain.
        let upward = median_of(&scores).is_some_and(|m| m > ready.median);
        let score_drift = enough && upward && excess > self.config.psi_significant;
        let drifted =
            score_drift || ph || (enough && self.config.feature_drift_alone && feature_drift);
        Measured {
            drifted,
            psi,
            band,
            ph,
            summary: format!(
                "score PSI {psi:.2} ({} beyond sampling noise) over {n} windows, Page-Hinkley {:.1}/{:.0}{}{feature_text}",
                band,
                self.ph.statistic(),
                self.config.page_hinkley.lambda,
                if ph { " fired" } else { "" },
            ),
        }
    }

    /// Raw PSI and PSI in excess of the sampling-noise floor; 0 without data.
    fn psi_of(&self, reference: &Distribution, current: &[f64]) -> (f64, f64) {
        let n_ref = reference.sample_size();
        let smallest = n_ref.map_or(current.len(), |r| r.min(current.len()));
        let mut bins =
            (smallest / self.config.psi_min_per_bin.max(1)).clamp(2, self.config.psi_bins.max(2));
        let psi = match reference {
            Distribution::Sample(values) => drift::psi(values, current, bins),
            Distribution::Quantiles(qs) => {
                bins = qs.len().saturating_sub(1);
                drift::psi_from_quantiles(qs, current)
            }
        };
        match psi {
            Some(p) => (p, p - drift::psi_noise_floor(bins, n_ref, current.len())),
            None => (0.0, 0.0),
        }
    }

    /// Rank correlation of score with time over the trend windows (line-wide), and the
    /// devices whose own score rises, when the line's score rises.
    fn trend(&self) -> (Option<f64>, Vec<String>) {
        let n = self.recent.len().min(self.config.trend_windows);
        let windows: Vec<&Kept> = self.recent.iter().skip(self.recent.len() - n).collect();
        let rising = |ws: &[&Kept]| -> Option<f64> {
            if ws.len() < 8 {
                return None;
            }
            let t: Vec<f64> = ws.iter().map(|k| k.end_us as f64).collect();
            let s: Vec<f64> = ws.iter().map(|k| k.score).collect();
            let rho = spearman(&t, &s)?;
            let half = ws.len() / 2;
            let share = |part: &[&Kept]| {
                part.iter().filter(|k| k.anomaly).count() as f64 / part.len().max(1) as f64
            };
            let flagged_rise = share(&ws[half..]) - share(&ws[..half]);
            (rho >= self.config.trend_min_rho || flagged_rise >= self.config.trend_min_flagged_rise)
                .then_some(rho)
        };
        let Some(rho) = rising(&windows) else {
            return (None, Vec::new());
        };
        let devices: BTreeSet<&str> = windows.iter().map(|k| k.device.as_str()).collect();
        let rising_devices = devices
            .into_iter()
            .filter(|d| {
                let own: Vec<&Kept> = windows.iter().copied().filter(|k| k.device == *d).collect();
                rising(&own).is_some()
            })
            .map(str::to_owned)
            .collect::<Vec<_>>();
        (Some(rho), rising_devices)
    }

    /// Where the score's level changed within the trend windows: the split that maximises
    /// the CUSUM of scores about their mean.
    fn onset(&self) -> i64 {
        let n = self.recent.len().min(self.config.trend_windows);
        let windows: Vec<&Kept> = self.recent.iter().skip(self.recent.len() - n).collect();
        let mean = windows.iter().map(|k| k.score).sum::<f64>() / n.max(1) as f64;
        let mut cusum = 0.0;
        let mut best = (0.0, windows.first().map_or(0, |k| k.start_us));
        for k in &windows {
            cusum += mean - k.score;
            if cusum > best.0 {
                best = (cusum, k.end_us);
            }
        }
        best.1
    }
}

fn median_of(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    drift::quantile_sorted(&sorted, 0.5)
}

/// What one evaluation measured.
#[derive(Debug)]
struct Measured {
    drifted: bool,
    psi: f64,
    band: PsiBand,
    ph: bool,
    summary: String,
}

fn trigger_name(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Volume { .. } => "new-data volume",
        Trigger::Drift { .. } => "drift",
        Trigger::Schedule => "schedule",
        Trigger::Manual { .. } => "manual",
    }
}

/// Spearman's rank correlation (ties get their average rank); `None` when either side is
/// constant or the lengths differ.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let ranks = |v: &[f64]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0;
            for &k in &order[i..=j] {
                r[k] = avg;
            }
            i = j + 1;
        }
        r
    };
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn window(device: &str, second: i64, score: f64, recipe: f64) -> ScoredWindow {
        let health = |mean: f64, std: f64| ChannelHealth {
            samples: 1000,
            mean: Some(mean),
            std: Some(std),
            non_good_share: 0.0,
        };
        ScoredWindow {
            device: device.into(),
            window_start_us: second * S,
            window_end_us: (second + 1) * S - 1,
            model_version: Some("m1".into()),
            score,
            anomaly: false,
            recipe: Some(recipe),
            speed_setpoint: Some(1480.0),
            channels: [
                ("vibration".to_owned(), health(0.0, 1.0 + score)),
                ("temperature".to_owned(), health(50.0, 0.05)),
            ]
            .into(),
        }
    }

    /// Scores cycling through a fixed spread, so the reference and a stable stream match.
    fn score(i: i64) -> f64 {
        0.2 + 0.01 * (i % 10) as f64
    }

    fn evaluator(config: TriggerConfig) -> TriggerEvaluator {
        TriggerEvaluator::new(
            config,
            ReferenceSource::FirstWindows {
                model_version: Some("m1".into()),
            },
        )
    }

    fn feed(
        e: &mut TriggerEvaluator,
        seconds: std::ops::Range<i64>,
        f: impl Fn(i64) -> f64,
    ) -> Vec<Decision> {
        seconds
            .map(|s| {
                let data = LineWindowData {
                    windows: vec![window("d1", s, f(s), 101.0)],
                };
                e.evaluate((s + 1) * S, &data)
            })
            .collect()
    }

    #[test]
    fn holds_while_the_reference_builds_then_on_a_stable_stream() {
        let mut e = evaluator(TriggerConfig::default());
        let decisions = feed(&mut e, 0..200, score);
        assert!(decisions[0].sentence().contains("1 of 60 windows"));
        assert!(decisions.iter().all(|d| matches!(d, Decision::Hold { .. })));
        assert!(decisions[199].sentence().starts_with("No trigger"));
    }

    #[test]
    fn manual_retrains_at_once_and_volume_after_enough_windows() {
        let config = TriggerConfig {
            volume_windows: 100,
            ..TriggerConfig::default()
        };
        let mut e = evaluator(config);
        feed(&mut e, 0..70, score);
        e.request_manual("operator asked");
        let d = e.evaluate(71 * S, &LineWindowData::default());
        let Decision::Retrain {
            trigger: Trigger::Manual { reason },
            data_from_us,
            data_to_us,
            ..
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(reason, "operator asked");
        assert_eq!(data_from_us, 0);
        assert_eq!(data_to_us, 70 * S);
        let decisions = feed(&mut e, 70..170, score);
        let volume: Vec<_> = decisions.iter().filter(|d| d.is_retrain()).collect();
        assert_eq!(volume.len(), 1);
        assert!(matches!(
            volume[0],
            Decision::Retrain {
                trigger: Trigger::Volume { windows: 100 },
                ..
            }
        ));
    }

    #[test]
    fn windows_taken_once_and_other_models_ignored() {
        let mut e = evaluator(TriggerConfig::default());
        feed(&mut e, 0..60, score);
        // The same windows again change nothing.
        let before = e.windows_since_training;
        feed(&mut e, 0..60, score);
        assert_eq!(e.windows_since_training, before);
        // Windows of another model are not compared with this reference.
        let mut other = window("d1", 100, 50.0, 101.0);
        other.model_version = Some("m2".into());
        e.evaluate(
            101 * S,
            &LineWindowData {
                windows: vec![other],
            },
        );
        assert!(e.recent.is_empty());
    }

    #[test]
    fn a_step_without_a_context_change_is_a_degradation_then_holds() {
        let mut e = evaluator(TriggerConfig::default());
        feed(&mut e, 0..100, score);
        let decisions = feed(&mut e, 100..160, |s| 1.0 + score(s));
        let alerts: Vec<_> = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Alert(Alert::Degradation { .. })))
            .collect();
        assert_eq!(alerts.len(), 1, "{decisions:?}");
        assert!(!decisions.iter().any(Decision::is_retrain));
        assert!(e.is_degraded());
        // A manual retrain trains only on data before the onset.
        e.request_manual("retrain anyway");
        let Decision::Retrain { data_to_us, .. } = e.evaluate(161 * S, &LineWindowData::default())
        else {
            panic!("no retrain");
        };
        assert!(data_to_us <= 101 * S, "{data_to_us}");
    }

    #[test]
    fn drift_with_a_new_recipe_retrains_once_then_cools_down() {
        let mut e = evaluator(TriggerConfig {
            min_training_windows: 20,
            ..TriggerConfig::default()
        });
        feed(&mut e, 0..100, score);
        let decisions: Vec<Decision> = (100..200)
            .map(|s| {
                let data = LineWindowData {
                    windows: vec![window("d1", s, 1.0 + score(s), 102.0)],
                };
                e.evaluate((s + 1) * S, &data)
            })
            .collect();
        let retrains: Vec<_> = decisions.iter().filter(|d| d.is_retrain()).collect();
        assert_eq!(retrains.len(), 1, "{decisions:?}");
        let Decision::Retrain { data_from_us, .. } = retrains[0] else {
            unreachable!()
        };
        assert_eq!(*data_from_us, 100 * S);
        assert!(decisions.last().unwrap().sentence().contains("cool-down"));
        // Before the retrain, the decision waited for enough of the new recipe's windows.
        let first = decisions.iter().position(Decision::is_retrain).unwrap();
        assert!(
            decisions[first - 1]
                .sentence()
                .contains("waiting for data of the new operating point"),
            "{:?}",
            decisions[first - 1]
        );
        assert!(
            first >= 19,
            "retrained after {first} windows of the new recipe"
        );
    }

    #[test]
    fn a_flat_sensor_is_reported_once() {
        let mut e = evaluator(TriggerConfig::default());
        feed(&mut e, 0..70, score);
        let mut alerts = Vec::new();
        for s in 70..80 {
            let mut w = window("d1", s, score(s), 101.0);
            if let Some(t) = w.channels.get_mut("temperature") {
                t.std = Some(0.0);
            }
            if let Decision::Alert(a) =
                e.evaluate((s + 1) * S, &LineWindowData { windows: vec![w] })
            {
                alerts.push(a);
            }
        }
        assert_eq!(
            alerts,
            vec![Alert::SensorFault {
                device: "d1".into(),
                sensor: "temperature".into(),
                kind: SensorFaultKind::Stuck,
                since_us: 70 * S,
            }]
        );
        assert_eq!(e.sensor_faults().len(), 1);
    }

    #[test]
    fn spearman_of_monotone_and_constant_series() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 5.0, 9.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]), None);
    }

    #[test]
    fn the_config_round_trips_through_toml_defaults_filling_gaps() {
        let config: TriggerConfig = toml::from_str("cooldown = \"10m\"\n").unwrap();
        assert_eq!(config.cooldown, Duration::from_secs(600));
        assert_eq!(config.drift_windows, TriggerConfig::default().drift_windows);
        assert!(toml::from_str::<TriggerConfig>("nonsense = 1\n").is_err());
    }
}
