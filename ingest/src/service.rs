//! The running ingester: one task owns the MQTT event loop, one owns the lake writer, and a
//! bounded queue joins them.
//!
//! ```text
//!  broker ──► [mqtt task: EventLoop::poll] ──queue (messages and bytes bounded)──► [writer task]
//!     ▲                                                                               │
//!     └────────────── PUBACK, once the message's files are committed ◄────────────────┘
//! ```
//!
//! Design invariants:
//! - MQTT 5, manual acknowledgements, persistent session (clean start off, a session expiry),
//!   so the broker keeps what arrives while ingest is down, and redelivers what it did not
//!   acknowledge. A message is acknowledged only once every row it produced is in a committed
//!   file ([`crate::acks`]); quarantined messages too, so bad input is never redelivered
//!   forever. Redeliveries are de-duplicated by the writer ([`crate::dedup`]).
//! - Acknowledgements are tied to the connection a message came on: after a reconnect the
//!   broker redelivers what was not acknowledged, and only the redelivered copy is
//!   acknowledged (its packet id is the one the broker now waits on).
//! - The MQTT task never waits on the disk: when the queue is full it stops reading, and the
//!   broker holds what follows. The broker sends at most `max_unacked` messages ahead of the
//!   acknowledgements (MQTT 5 Receive Maximum); when three quarters of that window wait on
//!   files, the writer commits those files early rather than stall the stream.
//! - Shutdown: stop intake (messages arriving from then on are left unacknowledged, for
//!   redelivery), let the writer drain the queue, commit every buffered row, acknowledge what
//!   is durable, then disconnect, keeping the session. Bounded by a deadline; whatever it cuts
//!   short stays unacknowledged and is redelivered at the next start.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use loopline_common::CancellationToken;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::acks::AckQueue;
use crate::config::IngestConfig;
use crate::quarantine::{self, QuarantineRow};
use crate::stats::{IngestStats, StatsSnapshot};
use crate::validate::{self, Limits, RejectReason};
use crate::writer::{Appended, Committed, LakeWriter};
use crate::{Error, Result};

/// How long shutdown may take to commit and acknowledge before it disconnects anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

/// What the broker needs to acknowledge one message, and on which connection it came.
#[derive(Debug)]
struct AckToken {
    /// The PUBLISH less its topic and payload: the packet id and QoS are what a PUBACK needs.
    publish: Publish,
    connection: u64,
}

/// One message handed from the MQTT task to the writer.
#[derive(Debug)]
struct Received {
    topic: String,
    payload: Bytes,
    ack: AckToken,
    at: Instant,
    /// Its share of `queue_bytes`, given back once the writer has taken it in.
    _permit: OwnedSemaphorePermit,
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

/// Runs the ingester until `shutdown` is cancelled, then commits, acknowledges and returns
/// its report.
///
/// The lake writer runs on a thread of its own, so the MQTT connection keeps being served on
/// the caller's runtime while a file is written. When the writer fails (a full disk,
/// say), intake stops at once and the error is returned; nothing unwritten was acknowledged.
pub async fn run(
    config: IngestConfig,
    shutdown: CancellationToken,
    stats: Arc<IngestStats>,
) -> Result<IngestReport> {
    config.validate()?;
    let mut options =
        config
            .broker
            .mqtt5_options_tls(&config.client_id(), config.keep_alive, &config.tls())?;
    let window = config.max_unacked.get();
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(config.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_receive_maximum(Some(window))
        .set_manual_acks(true);
    let writer_options = config.writer_options();
    let writer = tokio::task::spawn_blocking(move || LakeWriter::open(writer_options))
        .await
        .map_err(|e| Error::Internal(format!("lake writer start panicked: {e}")))??;
    let commit_log = writer.commit_log_path().to_owned();
    tracing::info!(dedup = ?writer.dedup_size(), "de-duplication state rebuilt from the commit logs");

    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            crate::metrics::serve(addr, stats.clone(), shutdown.clone())
                .await
                .map_err(|source| Error::Io {
                    path: std::path::PathBuf::from(format!("metrics_listen = {addr}")),
                    source,
                })?,
        ),
        None => None,
    };

    // Requests are acknowledgements (at most one per message in the window) and a subscribe.
    let (client, eventloop) = AsyncClient::new(options, usize::from(window) + 64);
    let (tx, rx) = mpsc::channel(config.queue_capacity.get());
    let queue_bytes = usize::try_from(config.queue_bytes.as_u64()).unwrap_or(usize::MAX);
    let connection = Arc::new(AtomicU64::new(0));
    // Intake stops on shutdown, and also as soon as the writer fails.
    let intake = shutdown.child_token();
    let acked_all = CancellationToken::new();
    let mqtt = tokio::spawn(mqtt_task(MqttTask {
        config: config.clone(),
        client: client.clone(),
        eventloop,
        tx,
        bytes: Arc::new(Semaphore::new(queue_bytes)),
        queue_bytes,
        connection: connection.clone(),
        intake: intake.clone(),
        acked_all: acked_all.clone(),
        stats: stats.clone(),
    }));
    let task = WriterTask {
        config: config.clone(),
        writer,
        rx,
        stats: stats.clone(),
        intake,
        acker: Acker {
            client,
            connection,
            queue: AckQueue::default(),
            unsent: VecDeque::new(),
            window: usize::from(window),
        },
        acked_all,
    };
    // The writer gets a thread of its own: a commit blocks it for as long as the file takes,
    // and the MQTT connection keeps being served on the runtime meanwhile. One thread also
    // keeps the allocator's memory in one place: commits hopping between runtime threads left
    // freed buffers in each thread's arena.
    let (done_tx, written) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lake-writer".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Internal(format!("starting the writer's runtime: {e}")))
                .and_then(|runtime| runtime.block_on(writer_task(task)));
            let _ = done_tx.send(result);
        })
        .map_err(|e| Error::Internal(format!("starting the writer thread: {e}")))?;

    let mqtt_result = mqtt.await;
    // The writer ends once the MQTT task has dropped its end of the queue.
    let writer_result = written
        .await
        .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
    match mqtt_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            writer_result?;
            return Err(e);
        }
        Err(e) => return Err(Error::Internal(format!("MQTT task panicked: {e}"))),
    }
    writer_result?;
    if let Some(server) = metrics {
        shutdown.cancel();
        let _ = server.await;
    }

    let report = IngestReport {
        ingest_id: config.ingest_id.clone(),
        lake: config.lake.clone(),
        commit_log,
        stats: stats.snapshot(),
    };
    if let Some(path) = &config.report_file {
        write_report(path, &report)?;
    }
    let s = &report.stats;
    tracing::info!(
        messages = s.messages_received,
        acked = s.messages_acked,
        quarantined = s.rejected_total(),
        duplicates = s.duplicate_messages,
        rows = s.rows_committed,
        files = s.files_committed,
        inference_rows = s.table(crate::inference::TABLE).rows_committed,
        device_health_rows = s.table(crate::device_health::TABLE).rows_committed,
        sim_label_rows = s.table(crate::sim_labels::TABLE).rows_committed,
        "ingest stopped; every acknowledged message is committed"
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

struct MqttTask {
    config: IngestConfig,
    client: AsyncClient,
    eventloop: rumqttc::v5::EventLoop,
    tx: mpsc::Sender<Received>,
    bytes: Arc<Semaphore>,
    queue_bytes: usize,
    /// Bumped at every connection: acknowledgements of an earlier one are void.
    connection: Arc<AtomicU64>,
    intake: CancellationToken,
    /// Cancelled by the writer once it has committed and acknowledged everything.
    acked_all: CancellationToken,
    stats: Arc<IngestStats>,
}

async fn mqtt_task(task: MqttTask) -> Result<()> {
    let MqttTask {
        config,
        client,
        mut eventloop,
        tx,
        bytes,
        queue_bytes,
        connection,
        intake,
        acked_all,
        stats,
    } = task;
    let filter = config.filter();
    let mut outage: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    let mut tx = Some(tx);
    let mut left_for_redelivery = 0u64;
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    let mut deadline_set = false;
    let mut subscribe_due = false;
    loop {
        if subscribe_due {
            // try_subscribe: awaiting the request queue from the task that drains it could
            // deadlock. When it is full, the next turn of the loop tries again.
            match client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                Ok(()) => subscribe_due = false,
                Err(e) => {
                    tracing::debug!(error = %e, "subscribe request queued behind acknowledgements; retrying")
                }
            }
        }
        let event = tokio::select! {
            biased;
            () = acked_all.cancelled() => break,
            () = &mut deadline, if deadline_set => {
                tracing::warn!(deadline = ?SHUTDOWN_DEADLINE, "shutdown deadline passed; what is not acknowledged will be redelivered");
                break;
            }
            () = intake.cancelled(), if tx.is_some() => {
                // Stop intake: the writer drains what it has, commits and acknowledges; the
                // connection stays up to carry those acknowledgements.
                tx = None;
                deadline.as_mut().reset(Instant::now() + SHUTDOWN_DEADLINE);
                deadline_set = true;
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connection.fetch_add(1, Ordering::SeqCst);
                if let Some(since) = outage.take() {
                    tracing::info!(broker = %config.broker, down_for = ?since.elapsed(), session_present = ack.session_present, "reconnected to the broker");
                } else {
                    tracing::info!(broker = %config.broker, %filter, session_present = ack.session_present, "connected; subscribing");
                }
                backoff = Duration::from_millis(100);
                if let Some(granted) = ack.properties.as_ref().and_then(|p| p.receive_max) {
                    tracing::debug!(granted, "broker receive maximum");
                }
                // Subscribed at the top of the loop: the request queue may still be full of
                // acknowledgements for the connection that was lost.
                subscribe_due = true;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(code) = ack
                    .return_codes
                    .iter()
                    .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                {
                    return Err(Error::Mqtt(format!(
                        "broker {} refused the subscription to {filter}: {code:?}",
                        config.broker
                    )));
                }
                tracing::info!(%filter, "subscribed");
                stats.set_subscribed(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Some(sender) = tx.as_ref() else {
                    // Intake is closed: leave it unacknowledged; the broker keeps it.
                    left_for_redelivery += 1;
                    continue;
                };
                let size = publish.payload.len().clamp(1, queue_bytes);
                let permit = bytes
                    .clone()
                    .acquire_many_owned(u32::try_from(size).unwrap_or(u32::MAX))
                    .await
                    .map_err(|_| Error::Internal("queue byte budget closed".into()))?;
                let Publish {
                    dup,
                    qos,
                    retain,
                    topic,
                    pkid,
                    payload,
                    properties: _,
                } = publish;
                let message = Received {
                    topic: String::from_utf8_lossy(&topic).into_owned(),
                    payload,
                    ack: AckToken {
                        publish: Publish {
                            dup,
                            qos,
                            retain,
                            topic: Bytes::new(),
                            pkid,
                            payload: Bytes::new(),
                            properties: None,
                        },
                        connection: connection.load(Ordering::SeqCst),
                    },
                    at: Instant::now(),
                    _permit: permit,
                };
                // Waiting here is the back-pressure: the broker keeps what we do not read.
                if sender.send(message).await.is_err() {
                    return Err(Error::Internal("writer task ended early".into()));
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.set_subscribed(false);
                if outage.is_none() {
                    stats.reconnect();
                    tracing::warn!(broker = %config.broker, error = %e, "broker connection lost; retrying (unacknowledged messages will be redelivered)");
                    outage = Some(Instant::now());
                }
                // Acknowledgements of the lost connection must not reach the next one.
                connection.fetch_add(1, Ordering::SeqCst);
                if tx.is_none() {
                    // Shutting down: nothing more can be acknowledged on this connection.
                    break;
                }
                tokio::select! {
                    () = intake.cancelled(), if tx.is_some() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    drop(tx);
    if left_for_redelivery > 0 {
        tracing::info!(
            messages = left_for_redelivery,
            "messages that arrived during shutdown were left unacknowledged; the broker redelivers them"
        );
    }
    // Disconnect (normal disconnection keeps the session for `session_expiry`), bounded.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    stats.set_subscribed(false);
    Ok(())
}

/// Sends acknowledgements in order, for the current connection only.
struct Acker {
    client: AsyncClient,
    connection: Arc<AtomicU64>,
    queue: AckQueue<AckToken>,
    /// Acknowledgements due but not yet taken by the client's request queue.
    unsent: VecDeque<(AckToken, Duration)>,
    window: usize,
}

impl Acker {
    /// Records which buffers these commits emptied; `send_ready` then sends what is due.
    fn commits(&mut self, committed: &[Committed]) {
        for c in committed {
            self.queue.committed(c.buffer);
        }
    }

    fn send_ready(&mut self, stats: &IngestStats) {
        self.unsent.extend(self.queue.ready(Instant::now()));
        let current = self.connection.load(Ordering::SeqCst);
        let mut sent = Vec::new();
        while let Some((token, lag)) = self.unsent.pop_front() {
            if token.connection != current {
                // Came on a lost connection: the broker redelivers it, and the copy is
                // acknowledged instead.
                continue;
            }
            match self.client.try_ack(&token.publish) {
                Ok(()) => sent.push(lag),
                Err(_) => {
                    // The request queue is full; the MQTT task drains it. Try again soon.
                    self.unsent.push_front((token, lag));
                    break;
                }
            }
        }
        if !sent.is_empty() {
            stats.acked(sent.len(), sent.into_iter());
        }
    }

    /// The buffers to commit early because the window of unacknowledged messages fills.
    fn pressure(&self) -> Option<Vec<u64>> {
        let waiting = self.queue.len();
        (waiting * 4 >= self.window * 3).then(|| self.queue.blocking(waiting / 2 + 1))
    }
}

struct WriterTask {
    config: IngestConfig,
    writer: LakeWriter,
    rx: mpsc::Receiver<Received>,
    stats: Arc<IngestStats>,
    intake: CancellationToken,
    acker: Acker,
    acked_all: CancellationToken,
}

async fn writer_task(task: WriterTask) -> Result<()> {
    let WriterTask {
        config,
        mut writer,
        mut rx,
        stats,
        intake,
        mut acker,
        acked_all,
    } = task;
    let mut logged = Logged::default();
    let result = async {
        loop {
            let next_roll = writer.next_roll();
            let retry =
                (!acker.unsent.is_empty()).then(|| Instant::now() + Duration::from_millis(5));
            tokio::select! {
                message = rx.recv() => {
                    let Some(message) = message else { break };
                    let appended = handle(&config, &mut writer, &stats, &mut logged, &message)?;
                    acker.queue.push(message.ack, appended.buffers, message.at);
                    record(&stats, &appended.commits);
                    acker.commits(&appended.commits);
                }
                () = sleep_until(next_roll) => {
                    let committed = writer.roll_due(Instant::now())?;
                    record(&stats, &committed);
                    acker.commits(&committed);
                }
                () = sleep_until(retry) => {}
            }
            if let Some(buffers) = acker.pressure() {
                let committed = writer.commit_buffers(&buffers)?;
                record(&stats, &committed);
                acker.commits(&committed);
            }
            acker.send_ready(&stats);
            stats.held(
                acker.queue.len(),
                writer.buffered_rows(),
                writer.buffered_bytes(),
                writer.dedup_size(),
            );
        }
        let committed = writer.flush()?;
        record(&stats, &committed);
        acker.commits(&committed);
        // Every message is durable now; hand the acknowledgements to the connection (for a
        // bounded time: with the connection gone, the broker redelivers them instead).
        let deadline = Instant::now() + Duration::from_secs(5);
        while {
            acker.send_ready(&stats);
            !acker.unsent.is_empty() && Instant::now() < deadline
        } {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stats.held(0, 0, 0, writer.dedup_size());
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(
            error = %e,
            buffered_rows = writer.buffered_rows(),
            unacknowledged = acker.queue.len(),
            "the lake writer failed; nothing unwritten was acknowledged (the broker redelivers it) and ingest stops"
        );
        intake.cancel();
    }
    // Give the MQTT task a moment to put the last acknowledgements on the wire.
    tokio::time::sleep(Duration::from_millis(50)).await;
    acked_all.cancel();
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

/// Checks one message and hands it to the writer: its rows, or a quarantine row.
fn handle(
    config: &IngestConfig,
    writer: &mut LakeWriter,
    stats: &IngestStats,
    logged: &mut Logged,
    message: &Received,
) -> Result<Appended> {
    stats.received();
    let received_at_us = chrono::Utc::now().timestamp_micros();
    let limits = Limits {
        max_payload_bytes: config.max_payload_bytes,
        max_ts_us: received_at_us
            .saturating_add(i64::try_from(config.max_clock_skew.as_micros()).unwrap_or(i64::MAX)),
    };
    let now = Instant::now();
    match validate::check(&message.topic, &message.payload, limits) {
        Ok(accepted) => {
            let mut appended = writer.append(&accepted.batch, now)?;
            stats.duplicates(appended.is_duplicate(), appended.duplicate_parts);
            if appended.is_duplicate() {
                tracing::debug!(topic = %message.topic, "duplicate message: its rows are already in the lake or buffered");
                return Ok(appended);
            }
            stats.accepted(accepted.samples);
            if accepted.dropped.is_empty() {
                return Ok(appended);
            }
            let mut detail = String::new();
            for part in &accepted.dropped {
                stats.dropped(part.table, part.rows as u64);
                if logged.dropped_tables.insert(part.table) {
                    tracing::warn!(
                        table = part.table,
                        rows = part.rows,
                        detail = %part.detail,
                        "left out-of-range rows out of an accepted message; its samples are kept and the whole message is quarantined (logged once per table; all are counted)"
                    );
                }
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&format!(
                    "{} {} rows: {}",
                    part.rows, part.table, part.detail
                ));
            }
            let row = QuarantineRow {
                received_at_us,
                topic: &message.topic,
                reason: quarantine::PARTIAL_OUT_OF_RANGE,
                detail: &detail,
                payload: &message.payload,
            };
            let more = writer.quarantine(&row, now)?;
            stats.quarantined(quarantine::PARTIAL_OUT_OF_RANGE);
            appended.buffers.extend(more.buffers);
            appended.commits.extend(more.commits);
            Ok(appended)
        }
        Err(rejection) => {
            stats.quarantined(rejection.reason.as_str());
            if logged.reasons.insert(rejection.reason) {
                tracing::warn!(
                    reason = %rejection.reason,
                    detail = %rejection.detail,
                    "quarantined a message (logged once per reason; all are counted)"
                );
            } else {
                tracing::debug!(reason = %rejection.reason, detail = %rejection.detail, "quarantined a message");
            }
            let row = QuarantineRow {
                received_at_us,
                topic: &message.topic,
                reason: rejection.reason.as_str(),
                detail: &rejection.detail,
                payload: &message.payload,
            };
            writer.quarantine(&row, now)
        }
    }
}

fn record(stats: &IngestStats, committed: &[Committed]) {
    for c in committed {
        stats.committed(&c.record.table, c.record.rows, c.record.bytes, c.took);
    }
}
