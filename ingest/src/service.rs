//! The running ingester: one task owns the MQTT event loop, one owns the lake writer, and a
//! bounded queue joins them.
//!
//! ```text
//!  broker ──► [mqtt task: EventLoop::poll] ──queue (bounded)──► [writer task: check, buffer, commit]
//! ```
//!
//! The MQTT task never waits on the disk: when the queue is full it stops reading, and the
//! broker holds what follows. Shutdown runs in this order: stop intake (disconnect), let the
//! writer drain the queue, commit every buffered row, write the report.
//!
//! This version acknowledges a message when it is received (rumqttc's automatic PUBACK), so a
//! crash of this process can lose what was buffered; acknowledging only after the commit
//! needs the writer's commit records, which `LakeWriter` already returns for that purpose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loopline_common::CancellationToken;
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeReasonCode};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::IngestConfig;
use crate::stats::{IngestStats, StatsSnapshot};
use crate::validate::{self, Limits, RejectReason};
use crate::writer::LakeWriter;
use crate::{Error, Result};

/// One message handed from the MQTT task to the writer.
#[derive(Debug)]
struct Received {
    topic: String,
    payload: Bytes,
}

/// What one run of the ingester did, written to `report_file` at exit.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub ingest_id: String,
    pub lake: std::path::PathBuf,
    pub commit_log: std::path::PathBuf,
    #[serde(flatten)]
    pub stats: StatsSnapshot,
}

/// Runs the ingester until `shutdown` is cancelled, then flushes and returns its report.
///
/// Needs a multi-threaded tokio runtime: file commits run in `block_in_place`, so the MQTT
/// connection keeps being served while a file is written. When the writer fails (a full disk,
/// say), intake stops at once and the error is returned.
pub async fn run(
    config: IngestConfig,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
) -> Result<IngestReport> {
    config.validate()?;
    let options = config.writer_options();
    let writer = tokio::task::spawn_blocking(move || LakeWriter::open(options))
        .await
        .map_err(|e| Error::Internal(format!("lake writer start panicked: {e}")))??;
    let commit_log = writer.commit_log_path().to_owned();
    let (tx, rx) = mpsc::channel(config.queue_capacity.get());
    // Intake stops on shutdown, and also as soon as the writer fails: waiting for the next
    // message to find the queue closed would leave ingest running, and acknowledging, while
    // nothing arrives.
    let intake = shutdown.child_token();
    let mqtt = tokio::spawn(mqtt_task(config.clone(), tx, intake.clone(), stats.clone()));
    let written = tokio::spawn(writer_task(
        config.clone(),
        writer,
        rx,
        stats.clone(),
        intake,
    ));

    let mqtt_result = mqtt.await;
    // The writer ends once the MQTT task has dropped its end of the queue.
    let writer_result = written
        .await
        .map_err(|e| Error::Internal(format!("writer task panicked: {e}")))?;
    match mqtt_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            writer_result?;
            return Err(e);
        }
        Err(e) => return Err(Error::Internal(format!("MQTT task panicked: {e}"))),
    }
    writer_result?;

    let report = IngestReport {
        ingest_id: config.ingest_id.clone(),
        lake: config.lake.clone(),
        commit_log,
        stats: stats.snapshot(),
    };
    if let Some(path) = &config.report_file {
        write_report(path, &report)?;
    }
    let stats = &report.stats;
    tracing::info!(
        messages = stats.messages_received,
        rejected = stats.rejected_total(),
        rows = stats.rows_committed,
        files = stats.files_committed,
        inference_rows = stats.table(crate::inference::TABLE).rows_committed,
        device_health_rows = stats.table(crate::device_health::TABLE).rows_committed,
        sim_label_rows = stats.table(crate::sim_labels::TABLE).rows_committed,
        parts_dropped = stats.rows_dropped_total(),
        "ingest stopped; every accepted sample is committed"
    );
    Ok(report)
}

fn write_report(path: &std::path::Path, report: &IngestReport) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(report).map_err(|e| Error::Internal(e.to_string()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

async fn mqtt_task(
    config: IngestConfig,
    tx: mpsc::Sender<Received>,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
) -> Result<()> {
    let mut options = config
        .broker
        .mqtt_options(&config.client_id(), config.keep_alive);
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let filter = config.filter();
    let mut outage: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(since) = outage.take() {
                    tracing::info!(broker = %config.broker, down_for = ?since.elapsed(), "reconnected to the broker");
                } else {
                    tracing::info!(broker = %config.broker, %filter, "connected; subscribing");
                }
                backoff = Duration::from_millis(100);
                // try_subscribe: awaiting the request queue from the task that drains it
                // could deadlock.
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .map_err(|e| Error::Mqtt(format!("subscribe to {filter}: {e}")))?;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(Error::Mqtt(format!(
                        "broker {} refused the subscription to {filter}",
                        config.broker
                    )));
                }
                tracing::info!(%filter, "subscribed");
                stats.set_subscribed(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Received {
                    topic: publish.topic,
                    payload: publish.payload,
                };
                // Waiting here is the back-pressure: the broker keeps what we do not read.
                if tx.send(message).await.is_err() {
                    return Err(Error::Internal("writer task ended early".into()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.set_subscribed(false);
                if outage.is_none() {
                    tracing::warn!(broker = %config.broker, error = %e, "broker connection lost; retrying");
                    outage = Some(Instant::now());
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // Stop intake: say goodbye to the broker, bounded in time.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        // Already acknowledged by the client: it must reach the lake.
                        let _ = tx
                            .send(Received {
                                topic: publish.topic,
                                payload: publish.payload,
                            })
                            .await;
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    Ok(())
}

async fn writer_task(
    config: IngestConfig,
    mut writer: LakeWriter,
    mut rx: mpsc::Receiver<Received>,
    stats: Arc<IngestStats>,
    intake: CancellationToken,
) -> Result<()> {
    let mut logged = Logged::default();
    let result = async {
        loop {
            let next_roll = writer.next_roll();
            tokio::select! {
                message = rx.recv() => {
                    let Some(message) = message else { break };
                    handle(&config, &mut writer, &stats, &mut logged, message)?;
                }
                () = sleep_until(next_roll) => {
                    let committed = tokio::task::block_in_place(|| writer.roll_due(Instant::now()))?;
                    record(&stats, &committed);
                }
            }
        }
        let committed = tokio::task::block_in_place(|| writer.flush())?;
        record(&stats, &committed);
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(
            error = %e,
            buffered_rows = writer.buffered_rows(),
            "the lake writer failed; buffered rows are lost and ingest stops"
        );
        intake.cancel();
    }
    result
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Causes already logged at WARN: each is logged once, then counted and logged at DEBUG.
#[derive(Debug, Default)]
struct Logged {
    reasons: HashSet<RejectReason>,
    dropped_tables: HashSet<&'static str>,
}

fn handle(
    config: &IngestConfig,
    writer: &mut LakeWriter,
    stats: &IngestStats,
    logged: &mut Logged,
    message: Received,
) -> Result<()> {
    stats.received();
    let limits = Limits {
        max_payload_bytes: config.max_payload_bytes,
        max_ts_us: chrono::Utc::now()
            .timestamp_micros()
            .saturating_add(i64::try_from(config.max_clock_skew.as_micros()).unwrap_or(i64::MAX)),
    };
    match validate::check(&message.topic, &message.payload, limits) {
        Ok(accepted) => {
            stats.accepted(accepted.samples);
            for part in &accepted.dropped {
                stats.dropped(part.table, part.rows as u64);
                if logged.dropped_tables.insert(part.table) {
                    tracing::warn!(
                        table = part.table,
                        rows = part.rows,
                        detail = %part.detail,
                        "left out-of-range rows out of an accepted message; its samples are kept (logged once per table; all are counted)"
                    );
                } else {
                    tracing::debug!(table = part.table, rows = part.rows, detail = %part.detail, "left out-of-range rows out");
                }
            }
            let committed =
                tokio::task::block_in_place(|| writer.append(&accepted.batch, Instant::now()))?;
            record(stats, &committed);
        }
        Err(rejection) => {
            stats.rejected(rejection.reason);
            if logged.reasons.insert(rejection.reason) {
                tracing::warn!(
                    reason = %rejection.reason,
                    detail = %rejection.detail,
                    "rejected a message (logged once per reason; all are counted)"
                );
            } else {
                tracing::debug!(reason = %rejection.reason, detail = %rejection.detail, "rejected a message");
            }
        }
    }
    Ok(())
}

fn record(stats: &IngestStats, committed: &[crate::writer::CommitRecord]) {
    for file in committed {
        stats.committed(&file.table, file.rows, file.bytes);
    }
}
