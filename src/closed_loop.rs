//! The demo's closed loop: dispatch in-process beside the factory, and the figures that say
//! whether the loop worked, measured from the lake rather than asserted.
//!
//! Before the devices start, each line's registry gets the model the devices start with (the
//! bootstrap model), signed with dispatch's key, as its champion: it is what a candidate must
//! beat and what a rollback returns to. Dispatch then runs with the local GPU pool, its jobs
//! running `loopline train` (this very binary) as child processes.
//!
//! At the end, every scored window of this run is judged against the simulator's labels
//! (which nothing in the loop reads before this point) in three phases per line:
//! **before the change** (the scenario's process change or developing fault), **after the
//! change** (until the line-wide rollout, if any), and **after the rollout** (windows scored
//! by the rolled-out model after the line got it; for a line without a rollout of its own,
//! the windows after the first line-wide rollout of the demo).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use loopline_dispatch::config::{BackendKind, DispatchConfig};
use loopline_dispatch::registry::{Lineage, Registry};
use loopline_dispatch::rollout::{Phase, RolloutPolicy};
use loopline_dispatch::service::{RunningDispatch, Shared};
use loopline_dispatch::signing::ReleaseKey;
use loopline_dispatch::store::{Event, Job, State};
use loopline_dispatch::triggers::TriggerConfig;
use loopline_linesim::{EventKind, Scenario};
use loopline_model::Artifact;
use serde::Serialize;

use crate::report::{
    DeviceSeries, LineReport, Marker, PhaseScore, PoolJob, PoolReport, ReportData, TimelineEntry,
};

/// One scored window of the run, judged against the labels.
#[derive(Debug, Clone)]
pub struct Window {
    pub line: String,
    pub device: String,
    pub boot_id: String,
    pub start_us: i64,
    pub end_us: i64,
    pub version: Option<String>,
    pub score: f32,
    pub anomaly: bool,
    pub faulty: bool,
}

/// Precision, recall and F1 of a set of windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub windows: u64,
    pub faulty: u64,
    pub flagged: u64,
    pub true_positives: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

impl Score {
    pub fn of<'a>(windows: impl IntoIterator<Item = &'a Window>) -> Score {
        let mut s = Score::default();
        for w in windows {
            s.windows += 1;
            s.faulty += u64::from(w.faulty);
            s.flagged += u64::from(w.anomaly);
            s.true_positives += u64::from(w.faulty && w.anomaly);
        }
        let share = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        s.precision = share(s.true_positives, s.flagged);
        s.recall = share(s.true_positives, s.faulty);
        s.f1 = match (s.precision, s.recall) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            (Some(_), Some(_)) => Some(0.0),
            // Faults present and none flagged: F1 is 0, not undefined.
            (None, Some(_)) => Some(0.0),
            _ => None,
        };
        s
    }
}

/// One line's loop, as the summary reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LineLoop {
    pub line: String,
    pub scenario: String,
    /// The scenario's process change or developing fault, seconds after the run started.
    pub change_s: Option<f64>,
    pub change: Option<String>,
    /// Training jobs dispatch ran for this line.
    pub jobs: Vec<String>,
    /// Whether a retrain was triggered (a job was queued) for this line.
    pub retrained: bool,
    pub alerts: Vec<String>,
    /// The version rolled out to the whole line, and when (seconds after start).
    pub rolled_out: Option<String>,
    pub rollout_s: Option<f64>,
    pub before_change: Score,
    pub after_change: Score,
    pub after_rollout: Score,
}

/// What the loop did, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoopSummary {
    pub public_key: String,
    pub key_id: String,
    pub gpus: u32,
    pub lines: Vec<LineLoop>,
    pub timeline: Vec<TimelineItem>,
    pub report: Option<PathBuf>,
}

/// One timeline entry, seconds after the run started.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineItem {
    pub t_s: f64,
    pub line: String,
    pub kind: String,
    pub text: String,
}

/// The scenario of each line: `names` in turn.
pub fn line_scenarios(names: &str, lines: u32) -> Vec<String> {
    let names: Vec<&str> = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    (0..lines as usize)
        .map(|i| {
            names
                .get(i % names.len().max(1))
                .copied()
                .unwrap_or("default")
                .to_owned()
        })
        .collect()
}

/// Registers the devices' start-up model as each line's signed champion.
pub fn register_bootstrap(
    lake: &Path,
    key: &ReleaseKey,
    lines: &[String],
    artifact: &Artifact,
    now_us: i64,
) -> anyhow::Result<()> {
    let registry = Registry::open(lake)?;
    let version = artifact.metadata.model_version.clone();
    let bytes = artifact
        .to_bytes()
        .context("encoding the bootstrap model")?;
    let staging = lake.join("_loopline").join("bootstrap-model");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    std::fs::write(staging.join("model.safetensors"), &bytes)?;
    let training = &artifact.metadata.training;
    for line in lines {
        let metrics = serde_json::json!({
            "contract": 1,
            "version": version,
            "line": line,
            "candidate": { "f1": null, "precision": null, "recall": null, "anomaly_rate": null },
            "champion": null,
            "data": { "from_us": training.start_us, "to_us": training.end_us },
            "note": "the devices' start-up model, fitted on simulated normal running of known recipes",
        });
        std::fs::write(
            staging.join("metrics.json"),
            serde_json::to_vec_pretty(&metrics)?,
        )?;
        let lineage = Lineage {
            data_from_us: training.start_us,
            data_to_us: training.end_us,
            trigger: "the model the devices start with".to_owned(),
            job_id: "-".to_owned(),
            backend: "-".to_owned(),
            gpus: Vec::new(),
            created_at_us: now_us,
            parent_champion: None,
        };
        registry.register(line, &version, &staging, &lineage)?;
        let release = key.sign(&version, bytes.clone(), now_us);
        registry.store_release(line, &version, &release)?;
        if registry.champion_version(line)?.as_deref() != Some(version.as_str()) {
            registry.promote(line, &version, "the devices' start-up model", now_us)?;
        }
    }
    std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok(())
}

/// Dispatch's settings in the demo: the local pool, jobs running this binary's `train`, and
/// the demo's short time scales (a probation of seconds, not half an hour).
pub fn dispatch_config(
    lake: &Path,
    broker: &loopline_common::BrokerUrl,
    lines: &[String],
    gpus: u32,
    seed: u64,
) -> anyhow::Result<DispatchConfig> {
    let exe = std::env::current_exe().context("this program's path")?;
    Ok(DispatchConfig {
        lake: lake.to_owned(),
        site: crate::demo::SITE.to_owned(),
        lines: lines.to_vec(),
        broker: broker.clone(),
        client_id: "loopline-demo-dispatch".to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        backend: BackendKind::Local,
        gpus,
        gpus_per_job: 1,
        // A held-out share large enough to set the threshold on a few dozen normal windows.
        trainer_command: vec![
            exe.display().to_string(),
            "train".to_owned(),
            "--holdout-fraction".to_owned(),
            "0.4".to_owned(),
        ],
        seed,
        max_attempts: 2,
        queue_timeout: Duration::from_secs(300),
        run_timeout: Duration::from_secs(300),
        tick: Duration::from_millis(100),
        evaluate_interval: Duration::from_secs(2),
        triggers: TriggerConfig {
            // One retrain per change in a demo of minutes.
            cooldown: Duration::from_secs(600),
            // 50 s of the new recipe from 3 devices: enough to train on and to hold out.
            min_training_windows: 150,
            ..TriggerConfig::default()
        },
        rollout: RolloutPolicy {
            canary_deadline: Duration::from_secs(30),
            // The canary's windows reach the lake a roll_age after they are scored.
            probation: Duration::from_secs(20),
            min_windows: 8,
            // A loaded machine can hold the windows back a while longer.
            evidence_wait: Duration::from_secs(20),
            line_deadline: Duration::from_secs(30),
            ..RolloutPolicy::defaults()
        },
        ..DispatchConfig::default()
    })
}

/// When the line's scenario changes the process or starts a developing fault, from its start.
fn change_of(scenario: &Scenario) -> Option<(Duration, String)> {
    scenario
        .events()
        .iter()
        .filter(|event| {
            matches!(event.kind, EventKind::RecipeChange { .. })
                || (matches!(
                    event.kind,
                    EventKind::BearingOuterRace | EventKind::BearingInnerRace
                ) && event.duration.is_none())
        })
        .min_by_key(|event| event.at)
        .map(|event| (event.at, event.kind.name().to_owned()))
}

fn seconds(us: i64, t0_us: i64) -> f64 {
    (us - t0_us) as f64 / 1e6
}

/// Judges the loop and builds the report's data.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    windows: &[Window],
    scenarios: &BTreeMap<String, String>,
    dispatch: &Shared,
    events: &[Event],
    jobs: &[Job],
    t0_us: i64,
    end_us: i64,
    summary_rows: Vec<(String, String)>,
) -> anyhow::Result<(LoopSummary, ReportData)> {
    let rollouts = loopline_dispatch::pipeline::saved_rollouts(dispatch);
    let line_published: BTreeMap<String, (String, i64)> = rollouts
        .iter()
        .filter_map(|(line, rollout)| {
            let at = rollout
                .transitions()
                .iter()
                .find(|t| matches!(t.phase, Phase::Line))?
                .at_us;
            Some((line.clone(), (rollout.version().to_owned(), at)))
        })
        .collect();
    let first_rollout_us = line_published.values().map(|(_, at)| *at).min();
    let registry = Registry::open(&dispatch.config.lake)?;
    let mut thresholds: BTreeMap<String, f32> = BTreeMap::new();
    for line in registry.lines()? {
        for entry in registry.list(&line)? {
            if let Ok(bytes) = entry.read_artifact()
                && let Ok(artifact) = Artifact::from_bytes(&bytes)
            {
                thresholds.insert(entry.version.clone(), artifact.model.threshold());
            }
        }
    }

    let mut lines_out = Vec::new();
    let mut line_reports = Vec::new();
    for (line, scenario_name) in scenarios {
        let mine: Vec<&Window> = windows.iter().filter(|w| &w.line == line).collect();
        let scenario = Scenario::named(scenario_name)
            .or_else(|_| Scenario::load(scenario_name))
            .ok();
        let change = scenario.as_ref().and_then(change_of);
        // Each device's simulation starts at its first window.
        let mut device_t0: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for w in &mine {
            let slot = device_t0
                .entry((w.device.as_str(), w.boot_id.as_str()))
                .or_insert(w.start_us);
            *slot = (*slot).min(w.start_us);
        }
        let change_us = |w: &Window| {
            change.as_ref().map(|(at, _)| {
                device_t0
                    .get(&(w.device.as_str(), w.boot_id.as_str()))
                    .copied()
                    .unwrap_or(t0_us)
                    + i64::try_from(at.as_micros()).unwrap_or(i64::MAX)
            })
        };
        let own = line_published.get(line);
        let rollout_us = own.map(|(_, at)| *at).or(first_rollout_us);
        let before = Score::of(
            mine.iter()
                .copied()
                .filter(|w| change_us(w).is_none_or(|c| w.end_us < c)),
        );
        let after_change = Score::of(mine.iter().copied().filter(|w| {
            change_us(w).is_some_and(|c| w.start_us >= c) && rollout_us.is_none_or(|r| w.end_us < r)
        }));
        let after_rollout = Score::of(mine.iter().copied().filter(|w| match (own, rollout_us) {
            (Some((version, at)), _) => {
                w.start_us >= *at && w.version.as_deref() == Some(version.as_str())
            }
            (None, Some(at)) => w.start_us >= at,
            (None, None) => false,
        }));
        let line_jobs: Vec<&Job> = jobs.iter().filter(|j| &j.request.line == line).collect();
        let alerts: Vec<String> = events
            .iter()
            .filter(|e| &e.line == line && e.kind == "alert")
            .map(|e| e.text.clone())
            .collect();
        let change_s = change.as_ref().map(|(at, _)| at.as_secs_f64());
        lines_out.push(LineLoop {
            line: line.clone(),
            scenario: scenario_name.clone(),
            change_s,
            change: change.as_ref().map(|(_, kind)| kind.clone()),
            jobs: line_jobs
                .iter()
                .map(|j| format!("{} ({}, {})", j.name(), j.state, j.request.trigger_kind))
                .collect(),
            retrained: !line_jobs.is_empty(),
            alerts,
            rolled_out: own.map(|(v, _)| v.clone()),
            rollout_s: own.map(|(_, at)| seconds(*at, t0_us)),
            before_change: before.clone(),
            after_change: after_change.clone(),
            after_rollout: after_rollout.clone(),
        });

        // The report's view of the line.
        let mut devices: BTreeMap<&str, Vec<&Window>> = BTreeMap::new();
        for w in &mine {
            devices.entry(w.device.as_str()).or_default().push(w);
        }
        let mut series = Vec::new();
        for (device, mut ws) in devices {
            ws.sort_by_key(|w| w.start_us);
            let mut versions: Vec<(f64, f64, String)> = Vec::new();
            let mut faulty: Vec<(f64, f64)> = Vec::new();
            for w in &ws {
                let (from, to) = (seconds(w.start_us, t0_us), seconds(w.end_us, t0_us));
                let version = w.version.clone().unwrap_or_else(|| "unknown".to_owned());
                match versions.last_mut() {
                    Some(last) if last.2 == version => last.1 = to,
                    _ => versions.push((from, to, version)),
                }
                if w.faulty {
                    match faulty.last_mut() {
                        Some(last) if from - last.1 < 0.01 => last.1 = to,
                        _ => faulty.push((from, to)),
                    }
                }
            }
            let used: BTreeSet<&String> = versions.iter().map(|v| &v.2).collect();
            series.push(DeviceSeries {
                device: device.to_owned(),
                scores: ws
                    .iter()
                    .map(|w| (seconds(w.end_us, t0_us), w.score, w.anomaly))
                    .collect(),
                thresholds: used
                    .into_iter()
                    .filter_map(|v| thresholds.get(v).map(|t| (v.clone(), *t)))
                    .collect(),
                versions,
                faulty,
            });
        }
        let bucket = 5.0;
        let span = seconds(end_us, t0_us).max(bucket);
        let f1: Vec<(f64, Option<f64>)> = (0..(span / bucket).ceil() as usize)
            .map(|i| {
                let (from, to) = (i as f64 * bucket, (i + 1) as f64 * bucket);
                let score = Score::of(mine.iter().copied().filter(|w| {
                    let t = seconds(w.end_us, t0_us);
                    t >= from && t < to
                }));
                (to - bucket / 2.0, score.f1)
            })
            .collect();
        let phase = |name: &str, from: f64, to: f64, s: &Score| PhaseScore {
            name: name.to_owned(),
            from_s: from,
            to_s: to,
            windows: s.windows,
            precision: s.precision,
            recall: s.recall,
            f1: s.f1,
        };
        let end_s = seconds(end_us, t0_us);
        let change_at = change_s.unwrap_or(end_s);
        let rollout_at = rollout_us.map_or(end_s, |r| seconds(r, t0_us));
        let mut phases = vec![phase("before the change", 0.0, change_at, &before)];
        if change_s.is_some() {
            phases.push(phase(
                "after the change",
                change_at,
                rollout_at.max(change_at),
                &after_change,
            ));
        }
        if rollout_us.is_some() {
            phases.push(phase(
                "after the rollout",
                rollout_at,
                end_s,
                &after_rollout,
            ));
        }
        let mut markers: Vec<Marker> = events
            .iter()
            .filter(|e| &e.line == line)
            .filter_map(|e| marker_of(e, t0_us))
            .collect();
        if let Some((at, kind)) = &change {
            markers.push(Marker {
                t_s: at.as_secs_f64(),
                label: kind.replace('_', " "),
                kind: "change".to_owned(),
            });
        }
        markers.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        line_reports.push(LineReport {
            line: line.clone(),
            scenario: scenario_name.clone(),
            devices: series,
            f1,
            phases,
            markers,
        });
    }

    let timeline: Vec<TimelineItem> = events
        .iter()
        .map(|e| TimelineItem {
            t_s: seconds(e.at_us, t0_us),
            line: e.line.clone(),
            kind: e.kind.clone(),
            text: e.text.clone(),
        })
        .collect();
    let pool = PoolReport {
        capacity: dispatch.config.gpus,
        backend: dispatch.backend_name().to_owned(),
        jobs: jobs
            .iter()
            .map(|j| PoolJob {
                job: j.name(),
                line: j.request.line.clone(),
                gpus: j.gpu_indices.clone().unwrap_or_default(),
                queued_s: seconds(j.created_us, t0_us),
                start_s: j.started_us.map(|t| seconds(t, t0_us)),
                end_s: j.finished_us.map(|t| seconds(t, t0_us)),
                outcome: j.state.to_string(),
            })
            .collect(),
    };
    let report = ReportData {
        title: "Loopline demo: the loop between the line's NPUs and the GPU pool".to_owned(),
        generated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_s: seconds(end_us, t0_us),
        lines: line_reports,
        pool,
        timeline: timeline
            .iter()
            .map(|t| TimelineEntry {
                t_s: t.t_s,
                line: t.line.clone(),
                kind: t.kind.clone(),
                text: t.text.clone(),
            })
            .collect(),
        summary_rows,
    };
    let summary = LoopSummary {
        public_key: dispatch.key.public_key_hex(),
        key_id: dispatch.key.key_id().to_owned(),
        gpus: dispatch.config.gpus,
        lines: lines_out,
        timeline,
        report: None,
    };
    Ok((summary, report))
}

impl LoopSummary {
    /// The loop's part of the demo's summary: per line what happened and F1 in each phase,
    /// then the timeline.
    pub fn render(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let mut s = format!(
            "loop:    dispatch on a local pool of {} GPUs; releases signed by key {}\n",
            self.gpus, self.key_id
        );
        for l in &self.lines {
            let change = match (&l.change, l.change_s) {
                (Some(kind), Some(at)) => format!("{} at {at:.0}s", kind.replace('_', " ")),
                _ => "no change".to_owned(),
            };
            let jobs = if l.jobs.is_empty() {
                "no retraining".to_owned()
            } else {
                format!("jobs {}", l.jobs.join(", "))
            };
            let rollout = match (&l.rolled_out, l.rollout_s) {
                (Some(v), Some(at)) => format!("; {v} rolled out to the line at {at:.0}s"),
                _ => String::new(),
            };
            s.push_str(&format!(
                "  {} ({}): {change}; {jobs}{rollout}\n",
                l.line, l.scenario
            ));
            for alert in &l.alerts {
                s.push_str(&format!("      alert: {alert}\n"));
            }
            s.push_str(&format!(
                "      F1 before the change {} ({} windows) · after the change {} ({}) · after the rollout {} ({}); recall after the rollout {}\n",
                f(l.before_change.f1),
                l.before_change.windows,
                f(l.after_change.f1),
                l.after_change.windows,
                f(l.after_rollout.f1),
                l.after_rollout.windows,
                f(l.after_rollout.recall),
            ));
        }
        if !self.timeline.is_empty() {
            s.push_str("timeline:\n");
            for t in &self.timeline {
                let secs = t.t_s.max(0.0) as u64;
                s.push_str(&format!(
                    "  {:>2}:{:02}  {:<7} {:<8} {}\n",
                    secs / 60,
                    secs % 60,
                    t.line,
                    t.kind,
                    t.text
                ));
            }
        }
        if let Some(report) = &self.report {
            s.push_str(&format!("report:  {}\n", report.display()));
        }
        s
    }
}

fn marker_of(event: &Event, t0_us: i64) -> Option<Marker> {
    let kind = match event.kind.as_str() {
        "drift" | "volume" | "schedule" | "manual" => "drift",
        "alert" => "alert",
        "model" if event.text.contains("promoted") => "promoted",
        "canary" => "canary",
        "rollout" if event.text.contains("published to every device") => "rollout",
        "rollback" => "rollback",
        "job" if event.text.contains("→ running") => "job",
        _ => return None,
    };
    let label = match kind {
        "drift" => "retrain triggered".to_owned(),
        "alert" => {
            if event.text.to_lowercase().contains("sensor") {
                "sensor fault".to_owned()
            } else {
                "machine fault".to_owned()
            }
        }
        "promoted" => "promoted".to_owned(),
        "canary" => {
            if event.text.contains("probation") {
                "canary on probation".to_owned()
            } else {
                "canary".to_owned()
            }
        }
        "rollout" => "line rollout".to_owned(),
        "rollback" => "rolled back".to_owned(),
        _ => "training".to_owned(),
    };
    Some(Marker {
        t_s: seconds(event.at_us, t0_us),
        label,
        kind: kind.to_owned(),
    })
}

/// Stops dispatch and returns what it recorded: the timeline and the jobs.
pub async fn finish(
    dispatch: RunningDispatch,
) -> anyhow::Result<(Arc<Shared>, Vec<Event>, Vec<Job>)> {
    let shared = dispatch.shared.clone();
    dispatch.stop().await;
    let events = shared.with_db(|db| db.events(0, usize::MAX))?;
    let jobs = shared.with_db(|db| db.jobs(&State::ALL, None, usize::MAX))?;
    Ok((shared, events, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(anomaly: bool, faulty: bool) -> Window {
        Window {
            line: "l".into(),
            device: "d".into(),
            boot_id: "b".into(),
            start_us: 0,
            end_us: 1,
            version: None,
            score: 0.0,
            anomaly,
            faulty,
        }
    }

    #[test]
    fn scores_follow_their_definitions() {
        let ws = [
            window(true, true),
            window(true, false),
            window(false, true),
            window(false, false),
        ];
        let s = Score::of(&ws);
        assert_eq!(
            (s.windows, s.faulty, s.flagged, s.true_positives),
            (4, 2, 2, 1)
        );
        assert_eq!(
            (s.precision, s.recall, s.f1),
            (Some(0.5), Some(0.5), Some(0.5))
        );
        let none_flagged = Score::of(&[window(false, true)]);
        assert_eq!(none_flagged.f1, Some(0.0));
        let no_faults = Score::of(&[window(true, false)]);
        assert_eq!((no_faults.recall, no_faults.f1), (None, None));
    }

    #[test]
    fn scenarios_are_assigned_to_lines_in_turn() {
        assert_eq!(line_scenarios("a,b", 3), vec!["a", "b", "a"]);
        assert_eq!(line_scenarios("default", 2), vec!["default", "default"]);
    }
}
