//! One device: its own MQTT connection, its sealing loop, its spool, its model, its shutdown.
//!
//! Two tasks per device (STYLE 12: the event loop is never blocked):
//!
//! - the **connection task** owns the `rumqttc::EventLoop` and does nothing but poll it: it
//!   applies every event to the [`AckTracker`], passes acknowledged spool records and model
//!   releases to the device task, reconnects with back-off, re-queues what a lost connection
//!   left unacknowledged, and after every CONNACK announces the device online and subscribes
//!   to the model topics;
//! - the **device task** owns the spool and the sealer. Every `batch_interval` it seals a
//!   batch (samples, inference results, health, simulation labels) and appends it to the
//!   spool; it hands spooled batches to the client, oldest first, as the in-flight window
//!   allows; it releases a record from the spool only when the broker's PUBACK for it
//!   arrived; it verifies model releases and swaps an accepted one in between batches. At the
//!   end it drains, says offline, disconnects and closes the spool: what the broker has not
//!   acknowledged stays there for the next start.
//!
//! They share a [`Link`]: the client handle and the tracker behind a mutex that is held only
//! for the non-blocking "record, then `try_publish`" step and for applying one event, never
//! across an `.await`. Recording and handing over under one lock is what keeps the tracker's
//! queue in the order of rumqttc's request channel (see [`crate::acks`]), whichever task
//! publishes. The in-flight window (at most [`MAX_IN_FLIGHT_BATCHES`] batches, two status
//! messages and a model report) is smaller than rumqttc's request channel and its `inflight`,
//! so `try_publish` never meets a full channel and rumqttc's packet ids never wrap onto an
//! unacknowledged one while the broker acknowledges in order.
//!
//! The spool is written by the device task itself: appends are buffered writes, and an
//! fsync (policy `always`, or at segment roll) takes milliseconds on an SD card, during which
//! only this device's sealing waits; the event loop runs in its own task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use loopline_common::CancellationToken;
use loopline_linesim::LineSim;
use loopline_npusim::Npu;
use loopline_proto::Message;
use loopline_proto::topic::Kind;
use loopline_proto::v1::{self, DeviceId, DeviceStatus, TelemetryBatch, device_status::State};
use loopline_spool::{Appended, Record, RecordId, Spool};
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS,
    Request,
};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::acks::{AckTracker, Acked, Tracked};
use crate::batch::{HealthInputs, Sealer, new_boot_id};
use crate::bootstrap;
use crate::clock::AgentClock;
use crate::config::{AgentConfig, Validated as Setup};
use crate::inference::{InferenceCounts, Inferencer, LoadedModel};
use crate::report::DeviceReport;
use crate::stats::AgentStats;
use crate::update::{self, Decision, ModelSlot};
use crate::{Error, Result, fnv1a64, samples_before};

/// Batches handed to the MQTT client and not yet acknowledged, at most. Enough to keep a
/// high-latency link busy; the rest wait in the device's buffer.
pub const MAX_IN_FLIGHT_BATCHES: usize = 32;
/// rumqttc's `inflight` and request-channel capacity: the batch window plus room for the
/// status messages (one online, one offline) and a disconnect.
const MQTT_INFLIGHT: u16 = MAX_IN_FLIGHT_BATCHES as u16 + 8;
const REQUEST_CHANNEL_CAPACITY: usize = MQTT_INFLIGHT as usize;
/// Reconnect back-off.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the offline status and the disconnect may take at the very end.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything one device task needs.
#[derive(Debug, Clone)]
pub(crate) struct DeviceSpec {
    pub id: DeviceId,
    pub config: Arc<AgentConfig>,
    pub setup: Arc<Setup>,
    pub clock: AgentClock,
    pub shutdown: CancellationToken,
    pub stats: Arc<AgentStats>,
}

/// Reconnect delays: doubling from `min` to `max`, back to `min` after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The `DeviceStatus` messages of one device task.
#[derive(Debug)]
struct StatusFactory {
    device: DeviceId,
    boot_id: String,
    /// The running model; it changes when a release is swapped in.
    model_version: Mutex<String>,
    npu_profile: String,
    clock: AgentClock,
}

impl StatusFactory {
    fn set_model_version(&self, version: &str) {
        let mut current = self
            .model_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        version.clone_into(&mut current);
    }

    fn encode(&self, online: bool) -> Vec<u8> {
        let model_version = self
            .model_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        DeviceStatus {
            schema_version: v1::SCHEMA_VERSION,
            device: Some(self.device.clone()),
            state: if online {
                State::Online
            } else {
                State::Offline
            } as i32,
            boot_id: self.boot_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            model_version,
            npu_profile: self.npu_profile.clone(),
            ts_us: self.clock.now_us(),
        }
        .encode_to_vec()
    }
}

/// What the device task and its connection task share.
#[derive(Debug)]
struct Link {
    client: AsyncClient,
    tracker: Mutex<AckTracker>,
    /// Signalled on every acknowledgement and (re)connection.
    progress: Notify,
    connected: AtomicBool,
    status_topic: String,
    status: StatusFactory,
    /// The line's and this device's model topics, subscribed after every CONNACK.
    model_topics: [String; 2],
    /// The newest release payload from a model topic, not yet looked at (newest wins).
    release: Mutex<Option<Vec<u8>>>,
    /// Spool record ids the broker acknowledged, for the device task to release.
    acked_records: Mutex<Vec<u64>>,
}

impl Link {
    fn release(&self) -> MutexGuard<'_, Option<Vec<u8>>> {
        self.release.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acked_records(&self) -> MutexGuard<'_, Vec<u64>> {
        self.acked_records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn tracker(&self) -> MutexGuard<'_, AckTracker> {
        // The tracker is plain data; a panic elsewhere cannot leave it half-updated in a way
        // that matters more than losing the counts.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records and hands over one QoS 1 publish, atomically. Gives the payload back when the
    /// client refuses it (its channel is closed, or unexpectedly full).
    fn try_submit(
        &self,
        tracked: Tracked,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        let mut tracker = self.tracker();
        tracker.requested(tracked);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => Ok(()),
            Err(e) => {
                tracker.withdraw_last();
                Err(match e {
                    ClientError::Request(Request::Publish(p))
                    | ClientError::TryRequest(Request::Publish(p)) => p.payload.to_vec(),
                    _ => Vec::new(),
                })
            }
        }
    }

    /// Publishes the retained status, unless one of the same kind is still on its way.
    fn announce(&self, online: bool) -> bool {
        if self.tracker().status_outstanding(online) {
            return true;
        }
        let payload = self.status.encode(online);
        self.try_submit(
            Tracked::Status { online },
            &self.status_topic,
            true,
            payload,
        )
        .is_ok()
    }
}

/// Runs one device until shutdown (or until it sealed `batches` batches) and its drain.
pub(crate) async fn run_device(spec: DeviceSpec) -> Result<DeviceReport> {
    let DeviceSpec {
        id,
        config,
        setup,
        clock,
        shutdown,
        stats,
    } = spec;
    let boot_id = new_boot_id();
    let client_id = config.client_id(&id);
    let device_error = |reason: String| Error::Device {
        device: id.to_string(),
        reason,
    };

    // The spool first: what an earlier boot left in it goes out before anything new.
    let spool_dir = config.spool_dir(&id);
    let (mut spool, recovery) = Spool::open(&spool_dir, config.spool_config())
        .map_err(|e| device_error(format!("spool {}: {e}", spool_dir.display())))?;
    let recovered = spool.stats();
    if recovered.pending_records > 0 || !recovery.quarantined.is_empty() {
        info!(
            device = %id,
            spool = %spool_dir.display(),
            pending_batches = recovered.pending_records,
            pending_bytes = recovered.pending_bytes,
            quarantined_segments = recovery.quarantined.len(),
            torn_tails = recovery.torn_tails,
            "spool recovered; its batches are sent first"
        );
    }

    let (model, model_source) = initial_model(&config, &setup, &id)?;
    let mut slot = ModelSlot::new(setup.model_public_key, model.version());
    info!(device = %id, model = model.version(), source = model_source, npu = %config.npu_profile, "model loaded");

    let status = StatusFactory {
        device: id.clone(),
        boot_id: boot_id.clone(),
        model_version: Mutex::new(model.version().to_owned()),
        npu_profile: config.npu_profile.name().to_owned(),
        clock,
    };
    let status_topic = id.topic(Kind::Status);
    let telemetry_topic = id.topic(Kind::Telemetry);
    let report_topic = id.topic(Kind::ModelReport);

    let mut options = config
        .broker
        .mqtt_options_tls(&client_id, config.keep_alive, &setup.tls)
        .map_err(|e| device_error(e.to_string()))?;
    options
        .set_clean_session(true)
        .set_inflight(MQTT_INFLIGHT)
        .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY)
        .set_last_will(LastWill::new(
            status_topic.clone(),
            status.encode(false),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    let link = Arc::new(Link {
        client,
        tracker: Mutex::new(AckTracker::new()),
        progress: Notify::new(),
        connected: AtomicBool::new(false),
        status_topic,
        status,
        model_topics: [
            loopline_proto::topic::line_model_topic(&id.site, &id.line),
            id.topic(Kind::Model),
        ],
        release: Mutex::new(None),
        acked_records: Mutex::new(Vec::new()),
    });
    info!(device = %id, %boot_id, client_id, broker = %config.broker, "device starting");

    let stop = CancellationToken::new();
    let mut connection = tokio::spawn(drive_connection(
        eventloop,
        Arc::clone(&link),
        id.clone(),
        Arc::clone(&stats),
        stop.clone(),
    ));
    let mut connection_done = false;

    let line = LineSim::new(
        &setup.scenario,
        config.seed,
        &id.device,
        config.sample_rate_hz,
        clock.t0_us(),
    );
    let mut npu = Npu::new(
        config.npu_profile,
        config.seed ^ fnv1a64(id.device.as_bytes()),
        clock.t0_us(),
    );
    npu.set_schedule(setup.npu_faults.clone());
    let window_samples = usize::try_from(config.window_samples()).unwrap_or(usize::MAX);
    let sample_interval_us = 1e6 / f64::from(config.sample_rate_hz.get());
    let inferencer = Inferencer::new(model, npu, window_samples, sample_interval_us);
    let mut sealer = Sealer::new(id.clone(), boot_id.clone(), line, inferencer);

    // Records this boot appended: record id → (seq, samples). Earlier boots' records are
    // decoded when they are handed over.
    let mut ours: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut unsent: Option<Record> = None;
    let mut blocked: Option<Blocked> = None;
    let mut dropped = Dropped::default();
    let mut report_due = true;
    let mut scored = InferenceCounts::default();
    let mut sync_error_logged = false;

    let mut ticker =
        tokio::time::interval_at(clock.start() + config.batch_interval, config.batch_interval);
    // Content depends on the sample index, not on the tick, so catching up is harmless.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sealing = true;
    let mut deadline = Instant::now();
    let mut drained = false;

    loop {
        tokio::select! {
            biased;
            joined = &mut connection, if !connection_done => {
                connection_done = true;
                error!(device = %id, outcome = ?joined.map(|_| ()), "MQTT connection task ended unexpectedly");
                break;
            }
            _ = shutdown.cancelled(), if sealing => {
                sealing = false;
                deadline = Instant::now() + config.drain_timeout;
                debug!(device = %id, "shutdown: sealing stopped, draining");
            }
            _ = ticker.tick(), if sealing => {
                // A staged model runs from this batch on.
                if let Some(model) = slot.promote() {
                    info!(device = %id, model = model.version(), "model swapped in");
                    link.status.set_model_version(model.version());
                    sealer.inferencer_mut().swap_model(model);
                    report_due = true;
                }
                if blocked.is_none() {
                    let now_us = clock.now_us();
                    let k_end = samples_before(clock.t0_us(), config.sample_rate_hz, now_us);
                    let spool_stats = spool.stats();
                    let health = HealthInputs {
                        spool_pending: spool_stats.pending_records,
                        spool_bytes: spool_stats.pending_bytes,
                        spool_quarantined_segments: u32::try_from(
                            spool_stats.quarantined_segments,
                        )
                        .unwrap_or(u32::MAX),
                        dropped_samples: dropped.samples,
                    };
                    if let Some(sealed) = sealer.seal(k_end, now_us, health) {
                        stats.sealed(sealed.samples);
                        let counts = sealer.inferencer().counts();
                        stats.scored(
                            counts.windows - scored.windows,
                            counts.anomalies - scored.anomalies,
                        );
                        scored = counts;
                        blocked = Some(Blocked {
                            seq: sealed.seq,
                            samples: sealed.samples,
                            payload: sealed.batch.encode_to_vec(),
                            logged: false,
                        });
                        if config.batches > 0 && sealer.next_seq() >= config.batches {
                            sealing = false;
                            deadline = Instant::now() + config.drain_timeout;
                            debug!(device = %id, batches = config.batches, "all batches sealed, draining");
                        }
                    }
                }
            }
            _ = link.progress.notified() => {}
            _ = tokio::time::sleep_until(deadline), if !sealing => break,
        }

        // Acknowledged batches leave the spool.
        let acked = std::mem::take(&mut *link.acked_records());
        for record in acked {
            ours.remove(&record);
            if let Err(e) = spool.ack(RecordId(record)) {
                error!(device = %id, record, error = %e, "spool: cannot record an acknowledgement");
            }
        }

        // A sealed batch enters the spool before anything is published.
        if let Some(waiting) = blocked.take() {
            match spool.append(waiting.payload) {
                Ok(Appended::Stored {
                    id: record,
                    dropped: lost,
                }) => {
                    ours.insert(record.0, (waiting.seq, waiting.samples));
                    if lost.records > 0 {
                        dropped.record(&id, &lost, &mut ours, &stats);
                    }
                    if waiting.logged {
                        info!(device = %id, seq = waiting.seq, "spool has room again; sealing resumes");
                    }
                }
                Ok(Appended::Full { payload }) => {
                    if !waiting.logged {
                        warn!(
                            device = %id,
                            seq = waiting.seq,
                            spool_max_bytes = %config.spool_max_bytes,
                            "spool full (broker unreachable or too slow): sealing waits for \
                             acknowledgements; samples are kept, nothing is dropped"
                        );
                    }
                    blocked = Some(Blocked {
                        payload,
                        logged: true,
                        ..waiting
                    });
                }
                Err(e) => {
                    error!(device = %id, seq = waiting.seq, samples = waiting.samples, error = %e, "spool append failed: the batch is lost");
                    stats.lost(1, waiting.samples);
                    dropped.batches += 1;
                    dropped.samples += waiting.samples;
                    dropped.seqs.push(waiting.seq);
                }
            }
        }
        if let Err(e) = spool.maybe_sync(std::time::Instant::now())
            && !sync_error_logged
        {
            sync_error_logged = true;
            error!(device = %id, error = %e, "spool fsync failed: batches may not survive a power cut");
        }

        // A release that arrived on a model topic.
        let release = link.release().take();
        if let Some(payload) = release {
            match slot.consider(&payload) {
                Decision::Ignore => {}
                Decision::Stage { model } => {
                    info!(device = %id, model = model.version(), running = slot.running_version(), "model release verified; it runs from the next batch");
                    let path = update::release_path(&config.model_dir(), &id);
                    if let Err(e) = update::persist(&path, &payload) {
                        warn!(device = %id, path = %path.display(), error = %e, "cannot keep the accepted release; it runs until the agent restarts");
                    }
                    report_due = true;
                }
                Decision::Refuse { version, reason } => {
                    warn!(device = %id, release = version, running = slot.running_version(), %reason, "model release refused; the running model stays");
                    report_due = true;
                }
            }
        }
        if report_due
            && link.connected.load(Ordering::Acquire)
            && !link.tracker().model_report_outstanding()
        {
            let report = slot.report(&id, &boot_id, clock.now_us()).encode_to_vec();
            if link
                .try_submit(Tracked::ModelReport, &report_topic, true, report)
                .is_ok()
            {
                report_due = false;
            }
        }

        // Hand over what the in-flight window allows, oldest first.
        while link.tracker().outstanding_batches() < MAX_IN_FLIGHT_BATCHES {
            let record = match unsent.take() {
                Some(record) => record,
                None => match spool.next_unsent() {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(e) => {
                        error!(device = %id, error = %e, "spool read failed");
                        break;
                    }
                },
            };
            let tracked = match ours.get(&record.id.0) {
                Some(&(seq, samples)) => Tracked::Batch {
                    record: record.id.0,
                    seq,
                    samples,
                    earlier_boot: false,
                },
                None => earlier_boot_batch(&id, &record),
            };
            if let Err(payload) = link.try_submit(tracked, &telemetry_topic, false, record.payload)
            {
                // Only a closed client refuses; keep the record, the connection task's end
                // is noticed above.
                unsent = Some(Record { payload, ..record });
                break;
            }
        }

        let pending = spool.stats().pending_records;
        if !sealing
            && blocked.is_none()
            && pending == 0
            && link.tracker().outstanding_batches() == 0
        {
            drained = true;
            break;
        }
    }
    if dropped.batches > 0 {
        dropped.log_end(&id);
    }

    // Say goodbye: a retained offline status (a clean DISCONNECT does not fire the Last
    // Will), then disconnect. Both bounded. Without a connection there is no one to tell:
    // the broker already published the Last Will when the connection dropped.
    if !connection_done {
        if link.connected.load(Ordering::Acquire) {
            if link.announce(false) {
                let goodbye = Instant::now() + GOODBYE_TIMEOUT;
                while link.tracker().status_outstanding(false) {
                    tokio::select! {
                        _ = link.progress.notified() => {}
                        _ = tokio::time::sleep_until(goodbye) => {
                            warn!(device = %id, "offline status not acknowledged in time");
                            break;
                        }
                    }
                }
            }
            let _ = link.client.try_disconnect();
            if tokio::time::timeout(GOODBYE_TIMEOUT, &mut connection)
                .await
                .is_err()
            {
                warn!(device = %id, "clean disconnect timed out");
            }
        }
        stop.cancel();
        if !connection.is_finished() {
            let _ = (&mut connection).await;
        }
    }

    // Late acknowledgements still leave the spool; everything else stays in it for the next
    // start. A batch that could not enter the spool was counted lost above.
    let acked = std::mem::take(&mut *link.acked_records());
    for record in acked {
        ours.remove(&record);
        let _ = spool.ack(RecordId(record));
    }
    let mut kept_seqs: Vec<u64> = ours.values().map(|&(seq, _)| seq).collect();
    let kept_samples: u64 = ours.values().map(|&(_, samples)| samples).sum();
    if let Some(waiting) = blocked.take() {
        // Sealed but never into the (full) spool: lost.
        error!(device = %id, seq = waiting.seq, "a sealed batch never fitted into the full spool and is lost");
        stats.lost(1, waiting.samples);
        dropped.batches += 1;
        dropped.samples += waiting.samples;
        dropped.seqs.push(waiting.seq);
    }
    let spool_left = spool.stats();
    if let Err(e) = spool.close() {
        error!(device = %id, error = %e, "spool close failed");
    }
    let tracker = link.tracker();
    let counts = tracker.counts();
    if spool_left.pending_records > 0 {
        kept_seqs.sort_unstable();
        warn!(
            device = %id,
            %boot_id,
            pending_batches = spool_left.pending_records,
            seqs = %seq_ranges(&kept_seqs),
            spool = %spool_dir.display(),
            drained,
            "batches not yet acknowledged stay in the spool and are sent at the next start"
        );
    }
    if dropped.batches > 0 {
        dropped.seqs.sort_unstable();
        error!(
            device = %id,
            %boot_id,
            lost_batches = dropped.batches,
            lost_samples = dropped.samples,
            seqs = %seq_ranges(&dropped.seqs),
            "batches were dropped and are lost"
        );
    }
    let inference = sealer.inferencer().counts();
    info!(
        device = %id,
        batches_sealed = sealer.next_seq(),
        batches_acked = counts.batches_acked,
        earlier_boot_batches_acked = counts.earlier_boot_batches_acked,
        pending_batches = spool_left.pending_records,
        lost_batches = dropped.batches,
        replayed = counts.replayed,
        windows = inference.windows,
        anomalies = inference.anomalies,
        model = slot.running_version(),
        "device stopped"
    );
    if connection_done {
        return Err(device_error(
            "the MQTT connection task ended unexpectedly".to_owned(),
        ));
    }
    Ok(DeviceReport {
        site: id.site.clone(),
        line: id.line.clone(),
        device: id.device.clone(),
        boot_id,
        batches_sealed: sealer.next_seq(),
        batches_acked: counts.batches_acked,
        samples_acked: counts.samples_acked,
        first_seq: counts.first_acked_seq,
        last_seq: counts.last_acked_seq,
        earlier_boot_batches_acked: counts.earlier_boot_batches_acked,
        earlier_boot_samples_acked: counts.earlier_boot_samples_acked,
        pending_batches: spool_left.pending_records,
        pending_samples: kept_samples,
        lost_batches: dropped.batches,
        lost_samples: dropped.samples,
        windows_scored: inference.windows,
        anomalies: inference.anomalies,
        failed_inferences: inference.failed,
        model_version: slot.running_version().to_owned(),
    })
}

/// A sealed batch not yet in the spool (the spool was full, policy `block`).
#[derive(Debug)]
struct Blocked {
    seq: u64,
    samples: u64,
    payload: Vec<u8>,
    /// Whether this stall was logged.
    logged: bool,
}

/// Tracks a record an earlier boot left in the spool. Its payload is the batch as published,
/// so its own `seq` and sample count are read from it; a record that does not decode is
/// still sent (ingest counts and quarantines what it cannot read).
fn earlier_boot_batch(id: &DeviceId, record: &Record) -> Tracked {
    let (seq, samples) = match TelemetryBatch::decode(record.payload.as_slice()) {
        Ok(batch) => (batch.seq, batch.sample_count() as u64),
        Err(e) => {
            warn!(device = %id, record = record.id.0, error = %e, "a spooled record is not a telemetry batch; sending it as it is");
            (0, 0)
        }
    };
    Tracked::Batch {
        record: record.id.0,
        seq,
        samples,
        earlier_boot: true,
    }
}

/// The model a device starts with: the configured file, else the release it accepted last
/// (verified again), else the bootstrap model.
fn initial_model(
    config: &AgentConfig,
    setup: &Setup,
    id: &DeviceId,
) -> Result<(Arc<LoadedModel>, &'static str)> {
    let error = |reason: String| Error::Device {
        device: id.to_string(),
        reason,
    };
    if let Some(path) = &config.model_file {
        let bytes = std::fs::read(path)
            .map_err(|e| error(format!("model_file {}: {e}", path.display())))?;
        let artifact = loopline_model::Artifact::from_bytes(&bytes)
            .map_err(|e| error(format!("model_file {}: {e}", path.display())))?;
        let model = LoadedModel::new(artifact)
            .map_err(|e| error(format!("model_file {}: {e}", path.display())))?;
        return Ok((Arc::new(model), "model_file"));
    }
    let kept = update::release_path(&config.model_dir(), id);
    match std::fs::read(&kept) {
        Ok(payload) => {
            match update::check(&payload, setup.model_public_key.as_ref())
                .map_err(|(_, reason)| reason)
                .and_then(update::load)
            {
                Ok(model) => return Ok((model, "accepted release")),
                Err(reason) => warn!(
                    device = %id,
                    path = %kept.display(),
                    %reason,
                    "the kept model release no longer verifies; starting with the bootstrap model"
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(device = %id, path = %kept.display(), error = %e, "cannot read the kept model release")
        }
    }
    let key = bootstrap::BootstrapKey {
        seed: config.seed,
        sample_rate_hz: config.sample_rate_hz,
        window_samples: config.window_samples(),
    };
    let artifact = bootstrap::model(key).map_err(error)?;
    let model = LoadedModel::new((*artifact).clone()).map_err(error)?;
    Ok((Arc::new(model), "bootstrap"))
}

/// Batches dropped from a full spool (policy `drop_oldest`).
#[derive(Debug, Default)]
struct Dropped {
    batches: u64,
    samples: u64,
    seqs: Vec<u64>,
}

impl Dropped {
    fn record(
        &mut self,
        id: &DeviceId,
        lost: &loopline_spool::Dropped,
        ours: &mut HashMap<u64, (u64, u64)>,
        stats: &AgentStats,
    ) {
        let first = self.batches == 0;
        let mut samples = 0;
        for record in lost.iter_ids() {
            if let Some((seq, n)) = ours.remove(&record.0) {
                self.seqs.push(seq);
                samples += n;
            }
        }
        self.batches += lost.records;
        self.samples += samples;
        stats.lost(lost.records, samples);
        if first {
            error!(
                device = %id,
                dropped_batches = lost.records,
                "spool full (broker unreachable or too slow): dropping the oldest batches \
                 (spool_when_full = drop_oldest); raise spool_max_bytes to hold a longer outage"
            );
        }
    }

    fn log_end(&self, id: &DeviceId) {
        error!(
            device = %id,
            dropped_batches = self.batches,
            dropped_samples = self.samples,
            "batches dropped from a full spool during this run"
        );
    }
}

/// Compact "0..=3, 7, 9..=10" for a sorted list of sequence numbers.
pub(crate) fn seq_ranges(seqs: &[u64]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        let mut end = start;
        while i + 1 < seqs.len() && seqs[i + 1] == end + 1 {
            i += 1;
            end = seqs[i];
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}..={end}"));
        }
        i += 1;
    }
    out
}

/// The connection task: polls the event loop until stopped or disconnected.
async fn drive_connection(
    mut eventloop: EventLoop,
    link: Arc<Link>,
    id: DeviceId,
    stats: Arc<AgentStats>,
    stop: CancellationToken,
) {
    // Requests to replay after the next CONNACK (see `AckTracker::on_connection_lost`).
    let mut replay: VecDeque<Request> = VecDeque::new();
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut outage: Option<(Instant, u64)> = None;
    let count_ack = |acked: Acked| {
        if let Tracked::Batch {
            record, samples, ..
        } = acked.tracked
        {
            stats.acked(samples);
            link.acked_records().push(record);
        }
    };
    loop {
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // rumqttc dropped its pending requests (no session); ours go first.
                let mut pending = std::mem::take(&mut replay);
                let replayed = pending.len();
                pending.append(&mut eventloop.pending);
                eventloop.pending = pending;
                backoff.reset();
                match outage.take() {
                    Some((since, failures)) => info!(
                        device = %id,
                        outage = ?since.elapsed(),
                        failures,
                        replayed,
                        "reconnected to the broker"
                    ),
                    None => debug!(device = %id, "connected to the broker"),
                }
                link.connected.store(true, Ordering::Release);
                if !link.announce(true) {
                    warn!(device = %id, "could not queue the online status");
                }
                // No session survives (clean start): subscribe again every time.
                for topic in &link.model_topics {
                    if let Err(e) = link.client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                        warn!(device = %id, topic, error = %e, "could not subscribe to model releases");
                    }
                }
                link.progress.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if link.model_topics.contains(&publish.topic) {
                    *link.release() = Some(publish.payload.to_vec());
                    link.progress.notify_one();
                } else {
                    debug!(device = %id, topic = %publish.topic, "ignoring a message on an unexpected topic");
                }
            }
            Ok(event) => {
                let disconnected = matches!(event, Event::Outgoing(Outgoing::Disconnect));
                let acked = link.tracker().on_event(&event);
                if let Some(acked) = acked {
                    count_ack(acked);
                    link.progress.notify_one();
                }
                if disconnected {
                    break;
                }
            }
            Err(e) => {
                link.connected.store(false, Ordering::Release);
                let lost = {
                    let buffered: Vec<Event> = eventloop.state.events.drain(..).collect();
                    let pending = std::mem::take(&mut eventloop.pending);
                    let collision = eventloop.state.collision.take();
                    link.tracker()
                        .on_connection_lost(buffered, pending, collision)
                };
                let acked = !lost.acked.is_empty();
                lost.acked.into_iter().for_each(count_ack);
                if acked {
                    link.progress.notify_one();
                }
                if !lost.vanished.is_empty() {
                    error!(device = %id, vanished = ?lost.vanished, "publishes vanished inside the MQTT client");
                }
                replay.extend(lost.replay);
                if matches!(e, ConnectionError::RequestsDone) {
                    break;
                }
                stats.connection_error();
                match &mut outage {
                    None => {
                        warn!(
                            device = %id,
                            error = %e,
                            unacked = link.tracker().outstanding(),
                            "broker connection failed; retrying with back-off"
                        );
                        outage = Some((Instant::now(), 1));
                    }
                    Some((_, failures)) => {
                        *failures += 1;
                        debug!(device = %id, error = %e, "still no broker connection");
                    }
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    link.connected.store(false, Ordering::Release);
    link.progress.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<_> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn seq_ranges_are_compact() {
        assert_eq!(seq_ranges(&[]), "");
        assert_eq!(seq_ranges(&[4]), "4");
        assert_eq!(seq_ranges(&[0, 1, 2, 3, 7, 9, 10]), "0..=3, 7, 9..=10");
    }
}
