//! What connects the parts: each line's triggers on a timer, a succeeded job's candidate
//! through the registry and the promotion rule, and the rollout of a promoted model over MQTT.
//!
//! - **Triggers** (one task): every `evaluate_interval`, for every line, the windows committed
//!   since the last look (with an overlap, so that a file committed late is still seen; the
//!   evaluator takes each window once) go through the line's [`TriggerEvaluator`]. A retrain
//!   decision becomes a job (de-duplicated per line and family); alerts go to the timeline.
//! - **Candidates**: when a job succeeds, its output is registered with its lineage, judged
//!   against the line's champion ([`decide_for`]), and, if better, promoted, signed and handed
//!   to the rollout task. A job is post-processed once: a `processed/<job>` mark in the
//!   database, so a dispatch restarted after a job succeeded handles it on start.
//! - **Rollouts** (one task, which owns the MQTT connection): each line's [`Rollout`] state
//!   machine is fed the agents' retained model reports and the canary's and the baseline's
//!   window statistics from the lake, and its actions are carried out (publish to the canary,
//!   to the line, roll back). Each rollout is saved in the database after every step and
//!   resumed on start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use loopline_proto::Message;
use loopline_proto::topic::{self, Kind};
use loopline_proto::v1::ModelReport;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::lake::{self, TimeRange};
use crate::launcher::TrainerLauncher;
use crate::metrics::Metrics;
use crate::registry::{Lineage, Promotion, Registry, decide_for};
use crate::rollout::{
    Action, DeviceWindowStats, Phase, Rollout, device_topic, line_topic, publish_release,
};
use crate::scheduler::micros;
use crate::service::{Shared, now_us};
use crate::signing::ReleaseKey;
use crate::store::{Job, State};
use crate::triggers::{Decision, Reference, ReferenceSource, Trigger, TriggerEvaluator};
use crate::{Error, Result};

/// How far back each evaluation re-reads, so that files committed late are still seen.
const REREAD: Duration = Duration::from_secs(30);
/// How far back the first evaluation of a line reads.
const FIRST_LOOK: Duration = Duration::from_secs(15 * 60);
/// Key prefix of a job's post-processing mark.
const PROCESSED: &str = "processed/";
/// Key prefix of a saved rollout.
const ROLLOUT: &str = "rollout/";

/// The lines to look after: the configured ones, or every line of the site in the lake.
pub fn lines(shared: &Shared) -> Vec<String> {
    if !shared.config.lines.is_empty() {
        return shared.config.lines.clone();
    }
    let dir = shared
        .config
        .lake
        .join(lake::TELEMETRY)
        .join(format!("site={}", shared.config.site));
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("line=")
                .map(str::to_owned)
        })
        .collect();
    found.sort();
    found
}

/// The trigger reference of a line's champion.
fn reference_of(lake: &Path, line: &str) -> ReferenceSource {
    let champion = Registry::open(lake).and_then(|registry| registry.champion(line));
    match champion {
        Ok(Some(entry)) => match Reference::from_metrics(&entry.version, &entry.metrics.raw) {
            Some(reference) => ReferenceSource::Known(reference),
            None => ReferenceSource::FirstWindows {
                model_version: Some(entry.version),
            },
        },
        _ => ReferenceSource::FirstWindows {
            model_version: None,
        },
    }
}

struct LineWatch {
    evaluator: TriggerEvaluator,
    read_to_us: Option<i64>,
}

/// Evaluates every line's triggers every `evaluate_interval` until `shutdown`.
pub async fn trigger_task(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut watches: BTreeMap<String, LineWatch> = BTreeMap::new();
    let mut interval = tokio::time::interval(shared.config.evaluate_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for line in lines(&shared) {
            let watch = watches.entry(line.clone()).or_insert_with(|| LineWatch {
                evaluator: TriggerEvaluator::new(
                    shared.config.triggers.clone(),
                    reference_of(&shared.config.lake, &line),
                ),
                read_to_us: None,
            });
            // A promotion since the last look changes what "normal" is.
            if shared.take_new_reference(&line) {
                info!(%line, "the line's model changed: the trigger reference follows it");
                watch
                    .evaluator
                    .set_reference(reference_of(&shared.config.lake, &line));
            }
            let now = now_us();
            let from = watch
                .read_to_us
                .map_or(now - micros(FIRST_LOOK), |to| to - micros(REREAD));
            let (lake_dir, site, name) = (
                shared.config.lake.clone(),
                shared.config.site.clone(),
                line.clone(),
            );
            let data = tokio::task::spawn_blocking(move || {
                lake::read_line_windows(&lake_dir, &site, &name, TimeRange::new(from, now))
            })
            .await;
            let data = match data {
                Ok(Ok(data)) => data,
                Ok(Err(e)) => {
                    warn!(%line, error = %e, "reading the line's windows failed; trying again next time");
                    continue;
                }
                Err(e) => {
                    warn!(%line, error = %e, "the lake reader panicked");
                    continue;
                }
            };
            watch.read_to_us = Some(now);
            let decision = watch.evaluator.evaluate(now, &data);
            if let Err(e) = act_on(&shared, &line, &decision, now) {
                warn!(%line, error = %e, "acting on a trigger decision failed");
            }
        }
    }
}

fn act_on(shared: &Shared, line: &str, decision: &Decision, now: i64) -> Result<()> {
    match decision {
        Decision::Hold { why } => {
            Metrics::count(&shared.metrics.decisions, "decision", "hold");
            debug!(%line, %why, "hold");
        }
        Decision::Alert(alert) => {
            Metrics::count(&shared.metrics.decisions, "decision", "alert");
            let text = alert.sentence();
            info!(%line, %text, "alert");
            shared.with_db(|db| db.log_event(now, line, "alert", &text))?;
        }
        Decision::Retrain {
            trigger,
            data_from_us,
            data_to_us,
            explanation,
        } => {
            Metrics::count(&shared.metrics.decisions, "decision", "retrain");
            let kind = match trigger {
                Trigger::Volume { .. } => "volume",
                Trigger::Drift { .. } => "drift",
                Trigger::Schedule => "schedule",
                Trigger::Manual { .. } => "manual",
            };
            info!(%line, %explanation, "retrain");
            shared.with_db(|db| db.log_event(now, line, kind, explanation))?;
            let request =
                shared.request(line, kind, explanation.clone(), *data_from_us, *data_to_us);
            shared.submit(&request)?;
        }
    }
    Ok(())
}

/// What the rollout task is asked to do.
#[derive(Debug, Clone)]
pub enum RolloutCommand {
    /// Roll this promoted version out to the line.
    Start {
        line: String,
        version: String,
        previous: Option<String>,
    },
}

/// Registers a succeeded job's candidate, judges it, and on promotion signs it and asks for
/// its rollout. Runs once per job (see the module doc).
pub fn post_process(
    shared: &Shared,
    key: &ReleaseKey,
    job: &Job,
    rollouts: &mpsc::UnboundedSender<RolloutCommand>,
) -> Result<()> {
    let mark = format!("{PROCESSED}{}", job.id);
    if shared.with_db(|db| db.get_kv(&mark))?.is_some() {
        return Ok(());
    }
    let line = job.request.line.as_str();
    let registry = Registry::open(&shared.config.lake)?;
    let version = TrainerLauncher::version(job);
    let out = TrainerLauncher::out_dir(&shared.config.state_dir(), job);
    let now = now_us();
    let champion = registry.champion_version(line)?;
    let lineage = Lineage {
        data_from_us: job.request.data_from_us,
        data_to_us: job.request.data_to_us,
        trigger: job.request.trigger.clone(),
        job_id: job.name(),
        backend: job.backend.clone().unwrap_or_default(),
        gpus: job.gpu_indices.clone().unwrap_or_default(),
        created_at_us: now,
        parent_champion: champion.clone(),
    };
    let outcome = registry
        .register(line, &version, &out, &lineage)
        .map(|entry| {
            let decision = decide_for(
                &entry.metrics,
                champion.as_deref(),
                &shared.config.promotion,
            );
            (entry, decision)
        });
    let text = match outcome {
        Err(e) => {
            Metrics::count(&shared.metrics.models, "outcome", "invalid");
            format!("job {}: its output is not a usable model: {e}", job.name())
        }
        Ok((_, Promotion::Reject { why })) => {
            Metrics::count(&shared.metrics.models, "outcome", "rejected");
            format!("candidate {version} rejected: {why}")
        }
        Ok((entry, Promotion::Promote { why })) => {
            let artifact = entry.read_artifact()?;
            let release = key.sign(&version, artifact, now);
            registry.store_release(line, &version, &release)?;
            registry.promote(line, &version, &why, now)?;
            Metrics::count(&shared.metrics.models, "outcome", "promoted");
            let _ = rollouts.send(RolloutCommand::Start {
                line: line.to_owned(),
                version: version.clone(),
                previous: champion,
            });
            format!(
                "model {version} promoted: {why}; signed by key {}",
                key.key_id()
            )
        }
    };
    info!(%line, %text, "candidate");
    shared.with_db(|db| -> Result<()> {
        db.log_event(now, line, "model", &text)?;
        db.set_kv(&mark, &text)?;
        Ok(())
    })?;
    Ok(())
}

/// Post-processes every succeeded job not yet handled (after a restart).
pub fn catch_up(
    shared: &Shared,
    key: &ReleaseKey,
    rollouts: &mpsc::UnboundedSender<RolloutCommand>,
) -> Result<()> {
    let succeeded = shared.with_db(|db| db.jobs(&[State::Succeeded], None, usize::MAX))?;
    for job in succeeded {
        post_process(shared, key, &job, rollouts)?;
    }
    Ok(())
}

/// Per-device window statistics from the lake's inference table since `since_us`: the canary's
/// windows scored by `version`, and every other device's (the baseline).
fn window_stats(
    shared: &Shared,
    line: &str,
    canary: &str,
    version: &str,
    since_us: i64,
) -> Result<(DeviceWindowStats, Vec<DeviceWindowStats>)> {
    let rows = lake::read_inference(
        &shared.config.lake,
        &shared.config.site,
        line,
        TimeRange::new(since_us, now_us() + 1),
    )?;
    let mut per_device: BTreeMap<&str, (u64, u64, Vec<u64>)> = BTreeMap::new();
    for row in &rows {
        if row.window_start_us < since_us {
            continue;
        }
        let is_canary = row.device == canary;
        if is_canary && row.model_version.as_deref() != Some(version) {
            continue;
        }
        let entry = per_device.entry(row.device.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(row.anomaly);
        entry.2.push(u64::try_from(row.latency_us).unwrap_or(0));
    }
    let stats = |(windows, anomalies, mut latencies): (u64, u64, Vec<u64>)| {
        latencies.sort_unstable();
        let p95 = latencies
            .get((latencies.len() * 95 / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        DeviceWindowStats {
            windows,
            anomalies,
            latency_p95_us: p95,
        }
    };
    let canary_stats = per_device.remove(canary).map(stats).unwrap_or_default();
    let baseline = per_device.into_values().map(stats).collect();
    Ok((canary_stats, baseline))
}

/// The devices of a line seen in the lake over the last minutes, sorted.
fn devices_of(shared: &Shared, line: &str) -> Result<Vec<String>> {
    let now = now_us();
    let rows = lake::read_inference(
        &shared.config.lake,
        &shared.config.site,
        line,
        TimeRange::new(now - micros(FIRST_LOOK), now + 1),
    )?;
    let devices: BTreeSet<String> = rows.into_iter().map(|row| row.device).collect();
    Ok(devices.into_iter().collect())
}

/// Runs rollouts until `shutdown`: owns the MQTT connection.
pub async fn rollout_task(
    shared: Arc<Shared>,
    options: rumqttc::MqttOptions,
    mut commands: mpsc::UnboundedReceiver<RolloutCommand>,
    shutdown: CancellationToken,
) {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut active: BTreeMap<String, Rollout> = load_rollouts(&shared);
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<(String, String, ModelReport)>();
    let connection = {
        let client = client.clone();
        let shutdown = shutdown.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut connected = false;
            loop {
                tokio::select! {
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            if !connected {
                                info!(broker = %shared.config.broker, "connected to the broker");
                            }
                            connected = true;
                            shared.metrics.broker_connected.set(1);
                            if let Err(e) = client.subscribe(topic::MODEL_REPORT_FILTER, QoS::AtLeastOnce).await {
                                warn!(error = %e, "subscribing to model reports failed");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            let Ok(parsed) = topic::parse(&publish.topic) else { continue };
                            if parsed.kind != Kind::ModelReport {
                                continue;
                            }
                            shared.metrics.model_reports.inc();
                            match ModelReport::decode(publish.payload.as_ref()) {
                                Ok(report) => {
                                    let _ = reports_tx.send((parsed.device.line.clone(), parsed.device.device.clone(), report));
                                }
                                Err(e) => warn!(topic = %publish.topic, error = %e, "undecodable model report"),
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            shared.metrics.broker_connected.set(0);
                            if connected {
                                warn!(broker = %shared.config.broker, error = %e, "lost the broker; reconnecting");
                            } else {
                                debug!(error = %e, "MQTT connection to the broker failed; retrying");
                            }
                            connected = false;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut actions: Vec<(String, Action)> = Vec::new();
        tokio::select! {
            () = shutdown.cancelled() => break,
            command = commands.recv() => {
                let Some(RolloutCommand::Start { line, version, previous }) = command else { break };
                let devices = {
                    let shared = shared.clone();
                    let line = line.clone();
                    tokio::task::spawn_blocking(move || devices_of(&shared, &line)).await
                };
                let devices = match devices {
                    Ok(Ok(devices)) if !devices.is_empty() => devices,
                    Ok(Ok(_)) => {
                        log(&shared, &line, "rollout", &format!("{version} not rolled out: no device of {line} seen in the lake"));
                        continue;
                    }
                    Ok(Err(e)) => {
                        log(&shared, &line, "rollout", &format!("{version} not rolled out: {e}"));
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "device lookup panicked");
                        continue;
                    }
                };
                let canary = devices[0].clone();
                let (rollout, first) = Rollout::start(&line, &version, &canary, devices[1..].to_vec(), previous, now_us(), shared.config.rollout);
                log(&shared, &line, "canary", &format!("release {version} sent to canary {canary}"));
                actions.extend(first.into_iter().map(|a| (line.clone(), a)));
                active.insert(line, rollout);
            }
            report = reports.recv() => {
                let Some((line, device, report)) = report else { break };
                if let Some(rollout) = active.get_mut(&line) {
                    let before = rollout.transitions().len();
                    let out = rollout.observe_report(&device, &report, now_us());
                    record_transitions(&shared, rollout, before);
                    actions.extend(out.into_iter().map(|a| (line.clone(), a)));
                }
            }
            _ = ticker.tick() => {
                for (line, rollout) in active.iter_mut() {
                    let now = now_us();
                    let before = rollout.transitions().len();
                    if let Some(since) = rollout.stats_since_us()
                        && matches!(rollout.phase(), Phase::Probation)
                    {
                        let stats = {
                            let shared = shared.clone();
                            let (line, canary, version) = (line.clone(), rollout.canary().to_owned(), rollout.version().to_owned());
                            tokio::task::spawn_blocking(move || window_stats(&shared, &line, &canary, &version, since)).await
                        };
                        match stats {
                            Ok(Ok((canary, baseline))) => {
                                let out = rollout.observe_stats(canary, &baseline, now);
                                actions.extend(out.into_iter().map(|a| (line.clone(), a)));
                            }
                            Ok(Err(e)) => warn!(%line, error = %e, "reading the canary's windows failed"),
                            Err(e) => warn!(%line, error = %e, "the lake reader panicked"),
                        }
                    }
                    let out = rollout.tick(now);
                    actions.extend(out.into_iter().map(|a| (line.clone(), a)));
                    record_transitions(&shared, rollout, before);
                }
            }
        }
        for (line, action) in actions {
            if let Some(rollout) = active.get(&line)
                && let Err(e) = carry_out(&shared, &client, rollout, &action).await
            {
                warn!(%line, error = %e, "a rollout step failed");
                log(
                    &shared,
                    &line,
                    "rollout",
                    &format!("{action:?} failed: {e}"),
                );
            }
        }
        active.retain(|line, rollout| {
            save_rollout(&shared, line, rollout);
            if rollout.is_finished() {
                shared.rollouts_done(line, rollout);
            }
            !rollout.is_finished()
        });
    }
    let _ = client.disconnect().await;
    let _ = connection.await;
}

fn record_transitions(shared: &Shared, rollout: &Rollout, before: usize) {
    for transition in &rollout.transitions()[before..] {
        let kind = match transition.phase {
            Phase::Canary => "canary",
            Phase::Probation => "canary",
            Phase::Line => "rollout",
            Phase::Done => "rollout",
            Phase::RolledBack { .. } => "rollback",
        };
        log(
            shared,
            rollout.line(),
            kind,
            &format!(
                "{} {}: {}",
                rollout.version(),
                transition.phase.name(),
                transition.reason
            ),
        );
    }
}

async fn carry_out(
    shared: &Shared,
    client: &AsyncClient,
    rollout: &Rollout,
    action: &Action,
) -> Result<()> {
    let site = &shared.config.site;
    let line = rollout.line();
    let registry = Registry::open(&shared.config.lake)?;
    let release_of = |version: &str| -> Result<loopline_proto::v1::ModelRelease> {
        registry.release(line, version)?.ok_or_else(|| {
            Error::Config(format!(
                "{line}/{version} has no signed release in the registry"
            ))
        })
    };
    let topic_error = |e: loopline_proto::topic::TopicError| Error::Config(e.to_string());
    match action {
        Action::PublishToDevice { device, version } => {
            let topic = device_topic(site, line, device).map_err(topic_error)?;
            publish_release(client, &topic, &release_of(version)?)
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        Action::PublishToLine { version } => {
            let topic = line_topic(site, line).map_err(topic_error)?;
            publish_release(client, &topic, &release_of(version)?)
                .await
                .map_err(|e| Error::Config(e.to_string()))?;
            log(
                shared,
                line,
                "rollout",
                &format!("release {version} published to every device of {line}"),
            );
        }
        Action::RollBack { device, to_version } => {
            let topic = device_topic(site, line, device).map_err(topic_error)?;
            match to_version {
                Some(version) => {
                    publish_release(client, &topic, &release_of(version)?)
                        .await
                        .map_err(|e| Error::Config(e.to_string()))?;
                    registry.demote_to(
                        line,
                        version,
                        &format!("rollout of {} rolled back", rollout.version()),
                        now_us(),
                    )?;
                    Metrics::count(&shared.metrics.models, "outcome", "rolled_back");
                }
                None => log(
                    shared,
                    line,
                    "alert",
                    &format!(
                        "{} rolled back on {device}, but there is no earlier signed release: an operator must act",
                        rollout.version()
                    ),
                ),
            }
        }
        Action::Done => {
            Metrics::count(&shared.metrics.models, "outcome", "rolled_out");
        }
    }
    Ok(())
}

fn log(shared: &Shared, line: &str, kind: &str, text: &str) {
    info!(%line, kind, %text, "timeline");
    if let Err(e) = shared.with_db(|db| db.log_event(now_us(), line, kind, text)) {
        warn!(error = %e, "recording a timeline entry failed");
    }
}

fn save_rollout(shared: &Shared, line: &str, rollout: &Rollout) {
    let saved = serde_json::to_string(rollout)
        .map_err(|e| Error::Config(e.to_string()))
        .and_then(|text| Ok(shared.with_db(|db| db.set_kv(&format!("{ROLLOUT}{line}"), &text))?));
    if let Err(e) = saved {
        warn!(%line, error = %e, "saving the rollout failed");
    }
}

/// Every saved rollout (finished ones too), by line.
pub fn saved_rollouts(shared: &Shared) -> BTreeMap<String, Rollout> {
    let mut rollouts = BTreeMap::new();
    for line in lines(shared) {
        if let Ok(Some(text)) = shared.with_db(|db| db.get_kv(&format!("{ROLLOUT}{line}")))
            && let Ok(rollout) = serde_json::from_str::<Rollout>(&text)
        {
            rollouts.insert(line, rollout);
        }
    }
    rollouts
}

fn load_rollouts(shared: &Shared) -> BTreeMap<String, Rollout> {
    saved_rollouts(shared)
        .into_iter()
        .filter(|(_, rollout)| !rollout.is_finished())
        .collect()
}
