//! Rolling a promoted model out to one line: a canary first, then everyone, back on trouble.
//!
//! ```text
//!  start ──► Canary ──(canary reports it runs the version)──► Probation ──(not worse)──► Line ──► Done
//!              │ refused, or no report by the deadline           │ worse than the baseline,
//!              ▼                                                 ▼ or too little evidence
//!          RolledBack ◄──────────────────────────────────────────┘
//! ```
//!
//! Design invariants:
//!
//! - [`Rollout`] is a pure state machine: it does no I/O and reads no clock. The caller feeds
//!   it what it observes (the devices' retained `ModelReport`s, window statistics) and the
//!   time, and carries out the [`Action`]s it returns, in order; [`publish_release`] is the
//!   one I/O helper.
//! - The canary's verdict compares it with the line's *other* devices over the *same* period
//!   (the probation, while they still run the previous model). A line-wide change (a recipe
//!   change, a fault upstream) raises everyone's anomaly rate together and so does not count
//!   against the canary; only a difference between the canary and its neighbours does.
//! - No verdict without evidence: the canary and the baseline each need
//!   [`RolloutPolicy::min_windows`] windows. A probation that ends without that evidence rolls
//!   back, because "not shown worse" is not "shown fine" when nothing was measured.
//! - Rolling back republishes the previous release on the canary's own topic, so the canary's
//!   device topic and the line topic hold the same release after every rollout, finished or
//!   rolled back (a device receives both retained messages at every reconnection, in no
//!   particular order).
//! - Every phase change is recorded with its time and reason ([`Rollout::transitions`]): that
//!   is dispatch's timeline of the rollout.
//! - A [`Rollout`] serialises (serde), so dispatch can keep it with the job and resume it
//!   after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use loopline_proto::Message;
use loopline_proto::topic::{self, Kind, TopicError};
use loopline_proto::v1::{DeviceId, ModelRelease, ModelReport};
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};

/// How a rollout judges and how long it waits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutPolicy {
    /// How long the canary has to report that it runs the new version.
    #[serde(with = "loopline_common::duration")]
    pub canary_deadline: Duration,
    /// How long the canary runs the new version beside the baseline before the line gets it.
    #[serde(with = "loopline_common::duration")]
    pub probation: Duration,
    /// Fewest windows the canary, and the baseline devices together, must have scored before
    /// they are compared.
    pub min_windows: u64,
    /// How long past the probation's end a rollout still waits for the windows it lacks
    /// before rolling back: window statistics come from the lake, which lags the devices by
    /// up to ingest's `roll_age` (more on a loaded ingest). A verdict of "worse" still rolls
    /// back at once.
    #[serde(with = "loopline_common::duration")]
    pub evidence_wait: Duration,
    /// The canary is worse when its anomaly rate exceeds the baseline's by more than this
    /// (an absolute difference of rates, e.g. 0.02 = two points).
    pub anomaly_rate_margin: f64,
    /// The canary is worse when its p95 inference latency exceeds the baseline's by more
    /// than this factor.
    pub latency_factor: f64,
    /// How long the line's devices have to report that they run the new version before the
    /// rollout is declared done anyway (naming the devices that did not).
    #[serde(with = "loopline_common::duration")]
    pub line_deadline: Duration,
}

impl RolloutPolicy {
    /// Five minutes for the canary to switch, a 30-minute probation judged on at least 300
    /// windows (waiting up to five more minutes for them), a margin of 2 points of anomaly
    /// rate, 1.5 × the p95 latency, ten minutes for the line.
    pub const fn defaults() -> RolloutPolicy {
        RolloutPolicy {
            canary_deadline: Duration::from_secs(5 * 60),
            probation: Duration::from_secs(30 * 60),
            min_windows: 300,
            evidence_wait: Duration::from_secs(5 * 60),
            anomaly_rate_margin: 0.02,
            latency_factor: 1.5,
            line_deadline: Duration::from_secs(10 * 60),
        }
    }
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self::defaults()
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// The release went to the canary's own topic; waiting for it to run it.
    Canary,
    /// The canary runs it; watching it against the baseline.
    Probation,
    /// The release went to the line topic; waiting for the other devices to run it.
    Line,
    /// Finished: the line has the release.
    Done,
    /// The canary went back to the previous release.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// A short name, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Canary => "canary",
            Phase::Probation => "probation",
            Phase::Line => "line",
            Phase::Done => "done",
            Phase::RolledBack { .. } => "rolled_back",
        }
    }
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Publish the release of `version` (retained) on `device`'s own model topic.
    PublishToDevice {
        /// The device.
        device: String,
        /// The version.
        version: String,
    },
    /// Publish the release of `version` (retained) on the line's model topic.
    PublishToLine {
        /// The version.
        version: String,
    },
    /// Publish the release of `to_version` (retained) on `device`'s own model topic. `None`
    /// when the line had no earlier release: there is nothing signed to go back to, and the
    /// device keeps the model it verified until an operator acts (the caller should clear
    /// the device topic's retained release and raise the alarm).
    RollBack {
        /// The canary.
        device: String,
        /// The release it goes back to.
        to_version: Option<String>,
    },
    /// The rollout is finished; record it.
    Done,
}

/// One phase change, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The phase entered.
    pub phase: Phase,
    /// When, microseconds since the Unix epoch.
    pub at_us: i64,
    /// Why, in words.
    pub reason: String,
}

/// What one device scored over a period: windows, how many it flagged, and its p95
/// inference latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceWindowStats {
    /// Windows scored.
    pub windows: u64,
    /// Windows flagged as anomalous.
    pub anomalies: u64,
    /// 95th percentile of the inference latency, microseconds.
    pub latency_p95_us: u64,
}

impl DeviceWindowStats {
    /// Flagged windows over scored ones; 0 without windows.
    pub fn anomaly_rate(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.anomalies as f64 / self.windows as f64
        }
    }
}

/// The canary against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Verdict {
    Worse(String),
    NotWorse(String),
    TooFew(String),
}

/// The rollout of one version to one line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    line: String,
    version: String,
    canary: String,
    others: Vec<String>,
    previous: Option<String>,
    policy: RolloutPolicy,
    phase: Phase,
    phase_since_us: i64,
    transitions: Vec<Transition>,
    /// The verdict on the last statistics observed during the probation.
    last_verdict: Option<Verdict>,
    /// Line phase: devices that run the version, and those that refused it (with why).
    confirmed: BTreeSet<String>,
    refused: BTreeMap<String, String>,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Rollout {
    /// Starts rolling `version` out to `line`: `canary` first, then `others`. `previous` is
    /// the release the line runs now, the one a rollback goes back to. Returns the rollout and
    /// the first actions.
    pub fn start(
        line: &str,
        version: &str,
        canary: &str,
        others: Vec<String>,
        previous: Option<String>,
        now_us: i64,
        policy: RolloutPolicy,
    ) -> (Rollout, Vec<Action>) {
        let mut others = others;
        others.retain(|d| d != canary);
        others.sort();
        others.dedup();
        let rollout = Rollout {
            line: line.to_owned(),
            version: version.to_owned(),
            canary: canary.to_owned(),
            others,
            previous,
            policy,
            phase: Phase::Canary,
            phase_since_us: now_us,
            transitions: vec![Transition {
                phase: Phase::Canary,
                at_us: now_us,
                reason: format!("release {version} sent to canary {canary}"),
            }],
            last_verdict: None,
            confirmed: BTreeSet::new(),
            refused: BTreeMap::new(),
        };
        let actions = vec![Action::PublishToDevice {
            device: canary.to_owned(),
            version: version.to_owned(),
        }];
        (rollout, actions)
    }

    /// The line.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The version being rolled out.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The canary device.
    pub fn canary(&self) -> &str {
        &self.canary
    }

    /// The version a rollback goes back to.
    pub fn previous(&self) -> Option<&str> {
        self.previous.as_deref()
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Every phase entered, with when and why, first to last.
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// Whether the rollout has ended (done or rolled back).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::RolledBack { .. })
    }

    /// During the probation, when it began: the statistics given to
    /// [`Rollout::observe_stats`] must cover the windows scored since then, by the canary on
    /// the new model and by the baseline on the old one.
    pub fn stats_since_us(&self) -> Option<i64> {
        (self.phase == Phase::Probation).then_some(self.phase_since_us)
    }

    /// When [`Rollout::tick`] will next change something if nothing is observed before
    /// (the current phase's deadline); `None` once finished.
    pub fn deadline_us(&self) -> Option<i64> {
        let limit = match self.phase {
            Phase::Canary => self.policy.canary_deadline,
            // A verdict of "not worse" ends the probation on time; without one, the rollout
            // waits for the evidence a little longer.
            Phase::Probation => match self.last_verdict {
                Some(Verdict::NotWorse(_)) => self.policy.probation,
                _ => self
                    .policy
                    .probation
                    .saturating_add(self.policy.evidence_wait),
            },
            Phase::Line => self.policy.line_deadline,
            Phase::Done | Phase::RolledBack { .. } => return None,
        };
        Some(self.phase_since_us.saturating_add(micros(limit)))
    }

    fn enter(&mut self, phase: Phase, now_us: i64, reason: String) {
        tracing::info!(line = %self.line, version = %self.version, phase = phase.name(), %reason, "rollout phase");
        self.phase = phase.clone();
        self.phase_since_us = now_us;
        self.transitions.push(Transition {
            phase,
            at_us: now_us,
            reason,
        });
    }

    fn roll_back(&mut self, now_us: i64, reason: String) -> Vec<Action> {
        self.enter(
            Phase::RolledBack {
                reason: reason.clone(),
            },
            now_us,
            reason,
        );
        vec![Action::RollBack {
            device: self.canary.clone(),
            to_version: self.previous.clone(),
        }]
    }

    fn enter_line(&mut self, now_us: i64, reason: String) -> Vec<Action> {
        self.enter(Phase::Line, now_us, reason);
        let mut actions = vec![Action::PublishToLine {
            version: self.version.clone(),
        }];
        actions.extend(self.finish_line_if_all_answered(now_us));
        actions
    }

    fn finish_line_if_all_answered(&mut self, now_us: i64) -> Vec<Action> {
        let answered = self.confirmed.len() + self.refused.len();
        if answered < self.others.len() {
            return Vec::new();
        }
        let reason = if self.refused.is_empty() {
            format!(
                "the canary and all {} other devices run {}",
                self.others.len(),
                self.version
            )
        } else {
            format!(
                "{} of {} other devices run {}; refused by {}",
                self.confirmed.len(),
                self.others.len(),
                self.version,
                describe_refusals(&self.refused)
            )
        };
        self.enter(Phase::Done, now_us, reason);
        vec![Action::Done]
    }

    /// A device's retained model report (`device` as named in its topic).
    pub fn observe_report(
        &mut self,
        device: &str,
        report: &ModelReport,
        now_us: i64,
    ) -> Vec<Action> {
        let runs_it = report.running_version == self.version;
        let refused_it = report.rejected_version == self.version && !report.last_error.is_empty();
        match self.phase {
            Phase::Canary if device == self.canary => {
                if runs_it {
                    self.enter(
                        Phase::Probation,
                        now_us,
                        format!("canary {device} runs {}", self.version),
                    );
                    Vec::new()
                } else if refused_it {
                    self.roll_back(
                        now_us,
                        format!(
                            "canary {device} refused {}: {}",
                            self.version, report.last_error
                        ),
                    )
                } else {
                    Vec::new()
                }
            }
            Phase::Probation if device == self.canary && !runs_it => self.roll_back(
                now_us,
                format!(
                    "canary {device} stopped running {} (it runs {:?})",
                    self.version, report.running_version
                ),
            ),
            Phase::Line if self.others.iter().any(|d| d == device) => {
                if runs_it {
                    self.refused.remove(device);
                    self.confirmed.insert(device.to_owned());
                } else if refused_it && !self.confirmed.contains(device) {
                    self.refused
                        .insert(device.to_owned(), report.last_error.clone());
                } else {
                    return Vec::new();
                }
                self.finish_line_if_all_answered(now_us)
            }
            _ => Vec::new(),
        }
    }

    /// Window statistics since [`Rollout::stats_since_us`]: the canary's, and each baseline
    /// device's (the line's other devices, on the previous model). Only the probation uses
    /// them; a canary shown worse rolls back at once.
    pub fn observe_stats(
        &mut self,
        canary: DeviceWindowStats,
        baseline: &[DeviceWindowStats],
        now_us: i64,
    ) -> Vec<Action> {
        if self.phase != Phase::Probation {
            return Vec::new();
        }
        let verdict = self.judge(&canary, baseline);
        if let Verdict::Worse(why) = &verdict {
            let reason = format!("canary {} is worse than the baseline: {why}", self.canary);
            return self.roll_back(now_us, reason);
        }
        self.last_verdict = Some(verdict);
        self.tick(now_us)
    }

    /// The passage of time: deadlines and the end of the probation.
    pub fn tick(&mut self, now_us: i64) -> Vec<Action> {
        let Some(deadline) = self.deadline_us() else {
            return Vec::new();
        };
        if now_us < deadline {
            return Vec::new();
        }
        match self.phase {
            Phase::Canary => {
                let reason = format!(
                    "canary {} did not report running {} within {:?}",
                    self.canary, self.version, self.policy.canary_deadline
                );
                self.roll_back(now_us, reason)
            }
            Phase::Probation => match self.last_verdict.take() {
                Some(Verdict::NotWorse(why)) => self.enter_line(
                    now_us,
                    format!(
                        "canary {} not worse than the baseline after {:?}: {why}",
                        self.canary, self.policy.probation
                    ),
                ),
                Some(Verdict::TooFew(why)) => self.roll_back(
                    now_us,
                    format!(
                        "probation ended without enough evidence after {:?} and {:?} more: {why}",
                        self.policy.probation, self.policy.evidence_wait
                    ),
                ),
                Some(Verdict::Worse(why)) => self.roll_back(now_us, why),
                None => self.roll_back(
                    now_us,
                    format!(
                        "probation ended without window statistics after {:?} and {:?} more",
                        self.policy.probation, self.policy.evidence_wait
                    ),
                ),
            },
            Phase::Line => {
                let silent: Vec<&str> = self
                    .others
                    .iter()
                    .filter(|d| !self.confirmed.contains(*d) && !self.refused.contains_key(*d))
                    .map(String::as_str)
                    .collect();
                let mut reason = format!(
                    "{} of {} other devices confirmed {} within {:?}; no report from {}",
                    self.confirmed.len(),
                    self.others.len(),
                    self.version,
                    self.policy.line_deadline,
                    silent.join(", ")
                );
                if !self.refused.is_empty() {
                    reason.push_str(&format!(
                        "; refused by {}",
                        describe_refusals(&self.refused)
                    ));
                }
                self.enter(Phase::Done, now_us, reason);
                vec![Action::Done]
            }
            Phase::Done | Phase::RolledBack { .. } => Vec::new(),
        }
    }

    fn judge(&self, canary: &DeviceWindowStats, baseline: &[DeviceWindowStats]) -> Verdict {
        let p = &self.policy;
        if canary.windows < p.min_windows {
            return Verdict::TooFew(format!(
                "the canary scored {} windows, {} needed",
                canary.windows, p.min_windows
            ));
        }
        if self.others.is_empty() {
            return Verdict::NotWorse(format!(
                "no other device on the line to compare with; the canary scored {} windows, anomaly rate {:.4}",
                canary.windows,
                canary.anomaly_rate()
            ));
        }
        let windows: u64 = baseline.iter().map(|s| s.windows).sum();
        if windows < p.min_windows {
            return Verdict::TooFew(format!(
                "the baseline devices scored {windows} windows, {} needed",
                p.min_windows
            ));
        }
        let anomalies: u64 = baseline.iter().map(|s| s.anomalies).sum();
        let base_rate = anomalies as f64 / windows as f64;
        let rate = canary.anomaly_rate();
        if rate > base_rate + p.anomaly_rate_margin {
            return Verdict::Worse(format!(
                "anomaly rate {rate:.4} over {} windows against the baseline's {base_rate:.4} over {windows} (margin {:.4})",
                canary.windows, p.anomaly_rate_margin
            ));
        }
        let base_p95 = median_p95(baseline);
        if base_p95 > 0 && canary.latency_p95_us as f64 > base_p95 as f64 * p.latency_factor {
            return Verdict::Worse(format!(
                "p95 latency {} µs against the baseline's {base_p95} µs (factor {})",
                canary.latency_p95_us, p.latency_factor
            ));
        }
        Verdict::NotWorse(format!(
            "anomaly rate {rate:.4} against {base_rate:.4}, p95 latency {} µs against {base_p95} µs",
            canary.latency_p95_us
        ))
    }
}

/// The median of the baseline devices' p95 latencies (those that scored windows): one slow
/// baseline device does not excuse a slow canary.
fn median_p95(baseline: &[DeviceWindowStats]) -> u64 {
    let mut p95s: Vec<u64> = baseline
        .iter()
        .filter(|s| s.windows > 0)
        .map(|s| s.latency_p95_us)
        .collect();
    p95s.sort_unstable();
    p95s.get(p95s.len() / 2).copied().unwrap_or(0)
}

fn describe_refusals(refused: &BTreeMap<String, String>) -> String {
    refused
        .iter()
        .map(|(device, why)| format!("{device} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `loopline/v1/{site}/{line}/model`: where every device of the line gets its release.
pub fn line_topic(site: &str, line: &str) -> Result<String, TopicError> {
    topic::validate_segment("site", site)?;
    topic::validate_segment("line", line)?;
    Ok(topic::line_model_topic(site, line))
}

/// `loopline/v1/{site}/{line}/{device}/model`: one device's own release (the canary's).
pub fn device_topic(site: &str, line: &str, device: &str) -> Result<String, TopicError> {
    Ok(DeviceId::checked(site, line, device)?.topic(Kind::Model))
}

/// A release that could not be handed to the MQTT client.
#[derive(Debug, thiserror::Error)]
#[error("publishing release {version} on {topic}: {source}")]
pub struct PublishError {
    /// The topic.
    pub topic: String,
    /// The release's version.
    pub version: String,
    /// The client's error; it holds the request that was not sent.
    #[source]
    pub source: rumqttc::ClientError,
}

/// Publishes `release` on `topic`, QoS 1 and retained, so that a device that connects later
/// (or reconnects) still gets it. Returns once the client's event loop has the message; the
/// broker's acknowledgement arrives through that loop. The client must allow packets as large
/// as a release ([`loopline_common::broker::MAX_PACKET_BYTES`], as
/// [`loopline_common::BrokerUrl::mqtt_options`] sets), or the event loop refuses it.
pub async fn publish_release(
    client: &AsyncClient,
    topic: &str,
    release: &ModelRelease,
) -> Result<(), PublishError> {
    client
        .publish(topic, QoS::AtLeastOnce, true, release.encode_to_vec())
        .await
        .map_err(|source| PublishError {
            topic: topic.to_owned(),
            version: release.version.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopline_proto::v1::model_report::State;

    const MIN: i64 = 60_000_000;

    fn policy() -> RolloutPolicy {
        RolloutPolicy {
            canary_deadline: Duration::from_secs(60),
            probation: Duration::from_secs(600),
            min_windows: 100,
            evidence_wait: Duration::from_secs(120),
            anomaly_rate_margin: 0.02,
            latency_factor: 1.5,
            line_deadline: Duration::from_secs(300),
        }
    }

    fn start() -> Rollout {
        let (rollout, actions) = Rollout::start(
            "l1",
            "v2",
            "d1",
            vec!["d2".into(), "d3".into(), "d1".into()],
            Some("v1".into()),
            0,
            policy(),
        );
        assert_eq!(
            actions,
            [Action::PublishToDevice {
                device: "d1".into(),
                version: "v2".into()
            }]
        );
        assert_eq!(rollout.phase(), &Phase::Canary);
        assert_eq!(rollout.deadline_us(), Some(MIN));
        rollout
    }

    fn running(version: &str) -> ModelReport {
        ModelReport {
            state: State::Running as i32,
            running_version: version.into(),
            ..ModelReport::default()
        }
    }

    fn refused(version: &str, running: &str, why: &str) -> ModelReport {
        ModelReport {
            state: State::Rejected as i32,
            running_version: running.into(),
            rejected_version: version.into(),
            last_error: why.into(),
            ..ModelReport::default()
        }
    }

    fn stats(windows: u64, anomalies: u64, latency_p95_us: u64) -> DeviceWindowStats {
        DeviceWindowStats {
            windows,
            anomalies,
            latency_p95_us,
        }
    }

    fn rollback() -> Vec<Action> {
        vec![Action::RollBack {
            device: "d1".into(),
            to_version: Some("v1".into()),
        }]
    }

    /// A rollout whose canary runs v2 since `at`.
    fn on_probation(at: i64) -> Rollout {
        let mut r = start();
        // Reports that are not news change nothing.
        assert!(r.observe_report("d1", &running("v1"), 1).is_empty());
        assert!(r.observe_report("d2", &running("v2"), 1).is_empty());
        assert!(r.observe_report("d1", &running("v2"), at).is_empty());
        assert_eq!(r.phase(), &Phase::Probation);
        assert_eq!(r.stats_since_us(), Some(at));
        r
    }

    #[test]
    fn accepted_canary_goes_through_probation_to_the_line() {
        let mut r = on_probation(5_000_000);
        let baseline = [stats(200, 4, 1_000), stats(180, 3, 1_100)];
        // Before judging, enough windows are needed; too few is no verdict yet.
        assert!(
            r.observe_stats(stats(50, 20, 900), &baseline, MIN)
                .is_empty()
        );
        assert!(
            r.observe_stats(stats(210, 5, 1_050), &baseline, 5 * MIN)
                .is_empty()
        );
        assert_eq!(r.phase(), &Phase::Probation);
        assert!(r.tick(5_000_000 + 10 * MIN - 1).is_empty());
        let actions = r.tick(5_000_000 + 10 * MIN);
        assert_eq!(
            actions,
            [Action::PublishToLine {
                version: "v2".into()
            }]
        );
        assert_eq!(r.phase(), &Phase::Line);

        // The others confirm; the rollout is done when the last does.
        assert!(r.observe_report("d2", &running("v2"), 11 * MIN).is_empty());
        assert!(r.observe_report("d9", &running("v2"), 11 * MIN).is_empty());
        assert_eq!(
            r.observe_report("d3", &running("v2"), 12 * MIN),
            [Action::Done]
        );
        assert!(r.is_finished());
        let phases: Vec<(&str, i64)> = r
            .transitions()
            .iter()
            .map(|t| (t.phase.name(), t.at_us))
            .collect();
        assert_eq!(
            phases,
            [
                ("canary", 0),
                ("probation", 5_000_000),
                ("line", 5_000_000 + 10 * MIN),
                ("done", 12 * MIN)
            ]
        );
        assert_eq!(r.transitions()[1].reason, "canary d1 runs v2");
        assert!(
            r.transitions()[2]
                .reason
                .contains("anomaly rate 0.0238 against 0.0184"),
            "{:?}",
            r.transitions()[2]
        );
        assert_eq!(
            r.transitions()[3].reason,
            "the canary and all 2 other devices run v2"
        );
        // Finished: nothing more happens.
        assert!(r.tick(100 * MIN).is_empty());
        assert!(r.observe_report("d1", &running("v1"), 100 * MIN).is_empty());
    }

    #[test]
    fn refusing_canary_rolls_back() {
        let mut r = start();
        let actions = r.observe_report(
            "d1",
            &refused(
                "v2",
                "v1",
                "release refused: the release signature is not valid",
            ),
            2_000_000,
        );
        assert_eq!(actions, rollback());
        assert_eq!(
            r.phase(),
            &Phase::RolledBack {
                reason: "canary d1 refused v2: release refused: the release signature is not valid"
                    .into()
            }
        );
        assert_eq!(r.transitions().last().unwrap().at_us, 2_000_000);
        // A refusal of another version is not about this rollout.
        let mut r = start();
        assert!(
            r.observe_report("d1", &refused("v0", "v1", "old"), 1)
                .is_empty()
        );
        assert_eq!(r.phase(), &Phase::Canary);
    }

    #[test]
    fn silent_canary_rolls_back_at_the_deadline() {
        let mut r = start();
        assert!(r.tick(MIN - 1).is_empty());
        assert_eq!(r.tick(MIN), rollback());
        assert_eq!(
            r.phase(),
            &Phase::RolledBack {
                reason: "canary d1 did not report running v2 within 60s".into()
            }
        );
    }

    #[test]
    fn canary_worse_than_the_baseline_rolls_back_at_once() {
        let mut r = on_probation(0);
        let baseline = [stats(200, 4, 1_000), stats(200, 6, 1_000)];
        let actions = r.observe_stats(stats(150, 12, 1_000), &baseline, 3 * MIN);
        assert_eq!(actions, rollback());
        let Phase::RolledBack { reason } = r.phase() else {
            panic!("{:?}", r.phase());
        };
        assert_eq!(
            reason,
            "canary d1 is worse than the baseline: anomaly rate 0.0800 over 150 windows against the baseline's 0.0250 over 400 (margin 0.0200)"
        );

        // Slower than the baseline's median p95 by more than the factor.
        let mut r = on_probation(0);
        let baseline = [
            stats(200, 0, 1_000),
            stats(200, 0, 1_200),
            stats(5, 0, 9_000),
        ];
        let actions = r.observe_stats(stats(150, 0, 1_900), &baseline, 3 * MIN);
        assert_eq!(actions, rollback());
        assert!(
            r.transitions()
                .last()
                .unwrap()
                .reason
                .contains("p95 latency 1900 µs against the baseline's 1200 µs")
        );
    }

    #[test]
    fn a_line_wide_change_does_not_roll_back() {
        // A recipe change at minute 3: every device's anomaly rate jumps, the canary's too.
        let mut r = on_probation(0);
        let baseline = [stats(200, 40, 1_000), stats(200, 44, 1_000)];
        assert!(
            r.observe_stats(stats(200, 45, 1_000), &baseline, 3 * MIN)
                .is_empty()
        );
        assert_eq!(r.phase(), &Phase::Probation);
        assert_eq!(
            r.tick(10 * MIN),
            [Action::PublishToLine {
                version: "v2".into()
            }]
        );
    }

    #[test]
    fn a_probation_without_evidence_rolls_back_after_the_evidence_wait() {
        let mut r = on_probation(0);
        assert!(
            r.observe_stats(stats(500, 0, 1_000), &[stats(40, 0, 1_000)], MIN)
                .is_empty()
        );
        assert_eq!(r.deadline_us(), Some(12 * MIN));
        assert!(r.tick(10 * MIN).is_empty());
        assert!(r.tick(12 * MIN - 1).is_empty());
        assert_eq!(r.phase(), &Phase::Probation);
        assert_eq!(r.tick(12 * MIN), rollback());
        assert_eq!(
            r.transitions().last().unwrap().reason,
            "probation ended without enough evidence after 600s and 120s more: the baseline devices scored 40 windows, 100 needed"
        );
        let mut r = on_probation(0);
        assert!(r.tick(10 * MIN).is_empty());
        assert_eq!(r.tick(12 * MIN), rollback());
        assert_eq!(
            r.transitions().last().unwrap().reason,
            "probation ended without window statistics after 600s and 120s more"
        );
    }

    #[test]
    fn evidence_that_arrives_late_still_decides_the_probation() {
        // The lake lags: at the probation's end the baseline's windows are not all there.
        let mut r = on_probation(0);
        let canary = stats(500, 5, 1_000);
        assert!(
            r.observe_stats(canary, &[stats(40, 0, 1_000)], 9 * MIN)
                .is_empty()
        );
        assert!(r.tick(10 * MIN).is_empty());
        // They land during the wait: not worse, so the line gets it then.
        let actions = r.observe_stats(canary, &[stats(400, 4, 1_000)], 11 * MIN);
        assert_eq!(
            actions,
            [Action::PublishToLine {
                version: "v2".into()
            }]
        );
        assert_eq!(r.phase(), &Phase::Line);
        // And late evidence of a worse canary rolls back as soon as it lands.
        let mut r = on_probation(0);
        assert!(r.tick(10 * MIN).is_empty());
        assert_eq!(
            r.observe_stats(stats(500, 100, 1_000), &[stats(400, 4, 1_000)], 11 * MIN),
            rollback()
        );
    }

    #[test]
    fn canary_that_stops_running_the_version_rolls_back() {
        let mut r = on_probation(0);
        assert_eq!(
            r.observe_report("d1", &running("bootstrap-1"), MIN),
            rollback()
        );
    }

    #[test]
    fn a_single_device_line_and_a_first_release() {
        let (mut r, _) = Rollout::start("l1", "v1", "d1", Vec::new(), None, 0, policy());
        r.observe_report("d1", &running("v1"), 0);
        assert!(r.observe_stats(stats(100, 1, 900), &[], MIN).is_empty());
        assert_eq!(
            r.tick(10 * MIN),
            [
                Action::PublishToLine {
                    version: "v1".into()
                },
                Action::Done
            ]
        );
        // Without a previous release, a rollback has nothing to go back to.
        let (mut r, _) = Rollout::start("l1", "v1", "d1", Vec::new(), None, 0, policy());
        assert_eq!(
            r.tick(MIN),
            [Action::RollBack {
                device: "d1".into(),
                to_version: None
            }]
        );
    }

    #[test]
    fn the_line_phase_ends_at_its_deadline_naming_the_silent() {
        let mut r = on_probation(0);
        r.observe_stats(stats(200, 2, 1_000), &[stats(300, 3, 1_000)], MIN);
        r.tick(10 * MIN);
        assert!(
            r.observe_report("d2", &refused("v2", "v1", "no key"), 11 * MIN)
                .is_empty()
        );
        assert_eq!(r.deadline_us(), Some(15 * MIN));
        assert_eq!(r.tick(15 * MIN), [Action::Done]);
        assert_eq!(
            r.transitions().last().unwrap().reason,
            "0 of 2 other devices confirmed v2 within 300s; no report from d3; refused by d2 (no key)"
        );
    }

    #[test]
    fn a_rollout_resumes_from_its_saved_state() {
        let mut r = on_probation(0);
        r.observe_stats(stats(200, 2, 1_000), &[stats(300, 3, 1_000)], MIN);
        let saved = serde_json::to_string(&r).unwrap();
        let mut resumed: Rollout = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed.transitions(), r.transitions());
        assert_eq!(resumed.deadline_us(), Some(10 * MIN));
        assert_eq!(
            resumed.tick(10 * MIN),
            [Action::PublishToLine {
                version: "v2".into()
            }]
        );
    }

    #[test]
    fn topics() {
        assert_eq!(
            line_topic("plant", "l1").unwrap(),
            "loopline/v1/plant/l1/model"
        );
        assert_eq!(
            device_topic("plant", "l1", "d1").unwrap(),
            "loopline/v1/plant/l1/d1/model"
        );
        assert!(device_topic("plant", "l1", "a/b").is_err());
        assert!(line_topic("plant", "+").is_err());
    }
}
