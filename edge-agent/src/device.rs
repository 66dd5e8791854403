//! One device: its own MQTT connection, its sealing loop, its shutdown.
//!
//! Two tasks per device (STYLE 12: the event loop is never blocked):
//!
//! - the **connection task** owns the `rumqttc::EventLoop` and does nothing but poll it: it
//!   applies every event to the [`AckTracker`], counts acknowledgements, reconnects with
//!   back-off, re-queues what a lost connection left unacknowledged, and announces the device
//!   online after every CONNACK;
//! - the **device task** seals a batch every `batch_interval`, keeps sealed batches in a
//!   bounded buffer, hands them to the client as the in-flight window allows, and at the end
//!   drains, says offline and disconnects.
//!
//! They share a [`Link`]: the client handle and the tracker behind a mutex that is held only
//! for the non-blocking "record, then `try_publish`" step and for applying one event, never
//! across an `.await`. Recording and handing over under one lock is what keeps the tracker's
//! queue in the order of rumqttc's request channel (see [`crate::acks`]), whichever task
//! publishes. The in-flight window (at most [`MAX_IN_FLIGHT_BATCHES`] batches and two status
//! messages) is smaller than rumqttc's request channel and its `inflight`, so `try_publish`
//! never meets a full channel and rumqttc's packet ids never wrap onto an unacknowledged one
//! while the broker acknowledges in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use loopline_common::CancellationToken;
use loopline_proto::Message;
use loopline_proto::topic::Kind;
use loopline_proto::v1::{self, DeviceId, DeviceStatus, device_status::State};
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS,
    Request,
};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::acks::{AckTracker, Acked, Tracked};
use crate::batch::{HealthInputs, Sealer, new_boot_id};
use crate::clock::AgentClock;
use crate::config::AgentConfig;
use crate::report::DeviceReport;
use crate::signal::{SignalGenerator, samples_before};
use crate::stats::AgentStats;
use crate::{Error, Result};

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
#[derive(Debug, Clone)]
struct StatusFactory {
    device: DeviceId,
    boot_id: String,
    model_version: String,
    clock: AgentClock,
}

impl StatusFactory {
    fn encode(&self, online: bool) -> Vec<u8> {
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
            model_version: self.model_version.clone(),
            npu_profile: String::new(),
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
}

impl Link {
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

/// A sealed, encoded batch waiting to be handed over.
#[derive(Debug)]
struct Waiting {
    seq: u64,
    samples: u64,
    payload: Vec<u8>,
}

/// Runs one device until shutdown (or until it sealed `batches` batches) and its drain.
pub(crate) async fn run_device(spec: DeviceSpec) -> Result<DeviceReport> {
    let DeviceSpec {
        id,
        config,
        clock,
        shutdown,
        stats,
    } = spec;
    let boot_id = new_boot_id();
    let client_id = config.client_id(&id);
    let status = StatusFactory {
        device: id.clone(),
        boot_id: boot_id.clone(),
        model_version: config.model_version.clone(),
        clock,
    };
    let status_topic = id.topic(Kind::Status);
    let telemetry_topic = id.topic(Kind::Telemetry);

    let mut options = config.broker.mqtt_options(&client_id, config.keep_alive);
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

    let generator = SignalGenerator::new(
        config.seed,
        &id.device,
        config.sample_rate_hz,
        clock.t0_us(),
    );
    let mut sealer = Sealer::new(
        id.clone(),
        boot_id.clone(),
        config.model_version.clone(),
        generator,
    );
    let in_flight_limit = MAX_IN_FLIGHT_BATCHES.min(config.buffer_batches.get());
    let mut buffer: VecDeque<Waiting> = VecDeque::new();
    let mut dropped = Dropped::default();

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
                let now_us = clock.now_us();
                let k_end = samples_before(clock.t0_us(), config.sample_rate_hz, now_us);
                let health = HealthInputs {
                    spool_pending: (link.tracker().outstanding_batches() + buffer.len()) as u64,
                    dropped_samples: dropped.samples,
                };
                if let Some(sealed) = sealer.seal(k_end, now_us, health) {
                    stats.sealed(sealed.samples);
                    buffer.push_back(Waiting {
                        seq: sealed.seq,
                        samples: sealed.samples,
                        payload: sealed.batch.encode_to_vec(),
                    });
                    // Bounded buffer: drop the oldest batch not yet handed over.
                    let in_flight = link.tracker().outstanding_batches();
                    while buffer.len() + in_flight > config.buffer_batches.get() {
                        let Some(oldest) = buffer.pop_front() else { break };
                        dropped.record(&id, &oldest, &stats);
                    }
                    if config.batches > 0 && sealer.next_seq() >= config.batches {
                        sealing = false;
                        deadline = Instant::now() + config.drain_timeout;
                        debug!(device = %id, batches = config.batches, "all batches sealed, draining");
                    }
                }
            }
            _ = link.progress.notified() => {}
            _ = tokio::time::sleep_until(deadline), if !sealing => break,
        }

        // Hand over what the in-flight window allows.
        while let Some(next) = buffer.pop_front() {
            if link.tracker().outstanding_batches() >= in_flight_limit {
                // The window is full; the next acknowledgement wakes this loop.
                buffer.push_front(next);
                break;
            }
            let tracked = Tracked::Batch {
                seq: next.seq,
                samples: next.samples,
            };
            if let Err(payload) = link.try_submit(tracked, &telemetry_topic, false, next.payload) {
                // Only a closed client refuses; keep the batch, the connection task's end
                // is noticed above.
                buffer.push_front(Waiting { payload, ..next });
                break;
            }
        }

        if buffer.is_empty() {
            // Caught up: a later overflow is a new episode, worth its own log line.
            dropped.logged = false;
        }
        if !sealing && buffer.is_empty() && link.tracker().outstanding_batches() == 0 {
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

    // What the broker never acknowledged is lost: this version has no disk spool.
    let tracker = link.tracker();
    let mut lost_seqs: Vec<u64> = dropped.seqs.clone();
    let mut lost_samples_now = 0;
    let mut lost_batches_now = 0;
    for tracked in tracker.unacked() {
        if let Tracked::Batch { seq, samples } = tracked {
            lost_seqs.push(seq);
            lost_batches_now += 1;
            lost_samples_now += samples;
        }
    }
    for waiting in &buffer {
        lost_seqs.push(waiting.seq);
        lost_batches_now += 1;
        lost_samples_now += waiting.samples;
    }
    stats.lost(lost_batches_now, lost_samples_now);
    let counts = tracker.counts();
    let lost_batches = lost_batches_now + dropped.batches;
    if lost_batches > 0 {
        lost_seqs.sort_unstable();
        error!(
            device = %id,
            %boot_id,
            lost_batches,
            lost_samples = lost_samples_now + dropped.samples,
            seqs = %seq_ranges(&lost_seqs),
            drained,
            "batches were never acknowledged by the broker and are lost"
        );
    }
    info!(
        device = %id,
        batches_sealed = sealer.next_seq(),
        batches_acked = counts.batches_acked,
        lost_batches,
        replayed = counts.replayed,
        "device stopped"
    );
    if connection_done {
        return Err(Error::Device {
            device: id.to_string(),
            reason: "the MQTT connection task ended unexpectedly".to_owned(),
        });
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
        lost_batches,
        lost_samples: lost_samples_now + dropped.samples,
    })
}

/// Batches dropped from a full buffer.
#[derive(Debug, Default)]
struct Dropped {
    batches: u64,
    samples: u64,
    seqs: Vec<u64>,
    /// Whether the current overflow was already logged.
    logged: bool,
}

impl Dropped {
    fn record(&mut self, id: &DeviceId, waiting: &Waiting, stats: &AgentStats) {
        self.batches += 1;
        self.samples += waiting.samples;
        self.seqs.push(waiting.seq);
        stats.lost(1, waiting.samples);
        if !self.logged {
            self.logged = true;
            error!(
                device = %id,
                seq = waiting.seq,
                "buffer full (broker unreachable or too slow): dropping the oldest batches; \
                 raise buffer_batches to hold a longer outage"
            );
        }
    }

    fn log_end(&self, id: &DeviceId) {
        error!(
            device = %id,
            dropped_batches = self.batches,
            dropped_samples = self.samples,
            "batches dropped from a full buffer during this run"
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
        if let Tracked::Batch { samples, .. } = acked.tracked {
            stats.acked(samples);
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
                link.progress.notify_one();
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
