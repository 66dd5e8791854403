//! Which publishes the broker has acknowledged: a pure state machine over rumqttc's events.
//!
//! `AsyncClient::publish` returning means only that the request entered rumqttc's channel. A
//! QoS 1 publish is acknowledged when the broker's PUBACK for it arrives, and rumqttc reports
//! that by packet id only. This tracker maps packet ids back to what was published.
//!
//! # How a publish is followed
//!
//! 1. [`AckTracker::requested`] when it is handed to the client, *atomically with the hand-over*
//!    (the caller holds the tracker's lock across `try_publish`). So the tracker's queue is
//!    in the same order as rumqttc's request channel, which is FIFO.
//! 2. rumqttc takes requests from the channel in that order, assigns a packet id and emits
//!    `Event::Outgoing(Outgoing::Publish(pkid))`: the front of the queue gets that pkid. If
//!    the id is still in use (the broker acknowledged out of order), rumqttc parks the publish
//!    and emits `Outgoing::AwaitAck(pkid)` instead, and reads no further request until the
//!    id frees up; the parked publish then goes out with its own `Outgoing::Publish(pkid)`.
//! 3. `Event::Incoming(Packet::PubAck { pkid })` acknowledges it.
//!
//! # Connection loss
//!
//! When `EventLoop::poll` fails, rumqttc has moved every unacknowledged publish (with its
//! pkid) and every request still in its channel (pkid 0) into `EventLoop::pending`, in that
//! order after whatever pending replay was not yet sent; events it had not yet returned stay
//! buffered in `state.events`. On the next CONNACK without a session (always, with a clean
//! session) rumqttc *clears* `pending`: those publishes would be silently lost. And a parked
//! (`collision`) publish stays parked forever, blocking the connection.
//!
//! So [`AckTracker::on_connection_lost`] takes all of that out of the event loop: it first
//! applies the buffered events (they happened before the loss), then matches each pending
//! publish to its entry (pkid ≠ 0 by packet id, pkid 0 from the front of the queue, in order),
//! clears its pkid so that the next connection numbers it afresh, and returns the requests to
//! put back into `pending` right after the next CONNACK. The queue is rebuilt as "the replay,
//! in replay order" followed by what is still in the channel, which is again the exact order
//! in which rumqttc will emit `Outgoing::Publish`.
//!
//! rumqttc also re-emits `Outgoing::Publish(pkid)` for a replay that kept its packet id (its
//! own behaviour with persistent sessions). The tracker treats a pkid that is already in
//! flight as such a replay and changes nothing, so it is idempotent for it even though the
//! scheme above never produces one.

use std::collections::{HashMap, VecDeque};

use rumqttc::{Event, Outgoing, Packet, Publish, QoS, Request};

/// What a tracked publish carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tracked {
    /// A telemetry batch: its spool record id, its sequence number and sample count (over all
    /// channels), and whether an earlier boot of the agent sealed it (a spool replay after a
    /// restart; its `seq` belongs to that boot).
    Batch {
        record: u64,
        seq: u64,
        samples: u64,
        earlier_boot: bool,
    },
    /// A retained device status (online on connect, offline at shutdown).
    Status { online: bool },
    /// A retained model report.
    ModelReport,
}

/// A publish the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub pkid: u16,
    pub tracked: Tracked,
}

/// What [`AckTracker::on_connection_lost`] found.
#[derive(Debug, Default)]
pub struct ConnectionLost {
    /// Requests to put back into `EventLoop::pending` after the next CONNACK, in this order.
    pub replay: VecDeque<Request>,
    /// Acknowledgements that were still buffered in the event loop.
    pub acked: Vec<Acked>,
    /// Tracked publishes that rumqttc no longer held: they cannot be re-sent and are lost.
    /// (Not expected; counted rather than assumed away.)
    pub vanished: Vec<Tracked>,
}

/// Follows every QoS 1 publish from hand-over to PUBACK. See the module documentation.
#[derive(Debug, Default)]
pub struct AckTracker {
    /// Handed to the client, no packet id yet; in request-channel order.
    queued: VecDeque<Tracked>,
    /// Parked by rumqttc after a packet-id collision.
    collided: Option<(u16, Tracked)>,
    /// Written with a packet id, awaiting PUBACK.
    inflight: HashMap<u16, Tracked>,
    /// Lost inside the client (see [`ConnectionLost::vanished`]).
    vanished: Vec<Tracked>,
    counts: AckCounts,
}

/// Running totals of a tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckCounts {
    pub batches_acked: u64,
    pub samples_acked: u64,
    pub statuses_acked: u64,
    pub model_reports_acked: u64,
    /// Batches sealed by an earlier boot and acknowledged now (spool replay after a restart),
    /// and their samples. Not in `batches_acked`.
    pub earlier_boot_batches_acked: u64,
    pub earlier_boot_samples_acked: u64,
    /// Lowest and highest acknowledged batch `seq` of this boot.
    pub first_acked_seq: Option<u64>,
    pub last_acked_seq: Option<u64>,
    /// Publishes put back for a re-send after a connection loss.
    pub replayed: u64,
    /// PUBACKs or `Outgoing::Publish` events that matched nothing tracked.
    pub unmatched_events: u64,
}

impl AckTracker {
    pub fn new() -> Self {
        AckTracker::default()
    }

    /// Records a publish being handed to the client. Call it under the same lock as the
    /// hand-over, so that the tracker's order is the channel's order.
    pub fn requested(&mut self, tracked: Tracked) {
        self.queued.push_back(tracked);
    }

    /// Takes back the most recent [`Self::requested`] after the client refused the request.
    pub fn withdraw_last(&mut self) -> Option<Tracked> {
        self.queued.pop_back()
    }

    /// Applies one event from `EventLoop::poll`. Returns what it acknowledged, if anything.
    pub fn on_event(&mut self, event: &Event) -> Option<Acked> {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.on_outgoing_publish(*pkid);
                None
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                match self.queued.pop_front() {
                    Some(tracked) => {
                        if let Some((_, overwritten)) = self.collided.replace((*pkid, tracked)) {
                            // rumqttc keeps one parked publish; a second one replaces it.
                            self.vanished.push(overwritten);
                        }
                    }
                    None => self.counts.unmatched_events += 1,
                }
                None
            }
            Event::Incoming(Packet::PubAck(puback)) => self.on_puback(puback.pkid),
            _ => None,
        }
    }

    fn on_outgoing_publish(&mut self, pkid: u16) {
        if pkid == 0 || self.inflight.contains_key(&pkid) {
            // QoS 0 (not ours), or rumqttc re-sending an in-flight publish under its id.
            return;
        }
        let tracked = match self.collided {
            Some((parked, _)) if parked == pkid => self.collided.take().map(|(_, t)| t),
            _ => self.queued.pop_front(),
        };
        match tracked {
            Some(tracked) => {
                self.inflight.insert(pkid, tracked);
            }
            None => self.counts.unmatched_events += 1,
        }
    }

    fn on_puback(&mut self, pkid: u16) -> Option<Acked> {
        let Some(tracked) = self.inflight.remove(&pkid) else {
            self.counts.unmatched_events += 1;
            return None;
        };
        let counts = &mut self.counts;
        match tracked {
            Tracked::Batch {
                samples,
                earlier_boot: true,
                ..
            } => {
                counts.earlier_boot_batches_acked += 1;
                counts.earlier_boot_samples_acked += samples;
            }
            Tracked::Batch { seq, samples, .. } => {
                counts.batches_acked += 1;
                counts.samples_acked += samples;
                counts.first_acked_seq = Some(counts.first_acked_seq.map_or(seq, |s| s.min(seq)));
                counts.last_acked_seq = Some(counts.last_acked_seq.map_or(seq, |s| s.max(seq)));
            }
            Tracked::Status { .. } => counts.statuses_acked += 1,
            Tracked::ModelReport => counts.model_reports_acked += 1,
        }
        Some(Acked { pkid, tracked })
    }

    /// Call after `EventLoop::poll` returned an error, with the events still buffered in
    /// `eventloop.state.events`, what rumqttc moved into `eventloop.pending`, and its parked
    /// `eventloop.state.collision`. Put [`ConnectionLost::replay`] back into `pending`, ahead
    /// of anything there, after the next CONNACK.
    pub fn on_connection_lost(
        &mut self,
        buffered: impl IntoIterator<Item = Event>,
        pending: VecDeque<Request>,
        collision: Option<Publish>,
    ) -> ConnectionLost {
        let mut lost = ConnectionLost::default();
        for event in buffered {
            lost.acked.extend(self.on_event(&event));
        }

        let mut replay_order = VecDeque::with_capacity(pending.len() + 1);
        let requests = pending
            .into_iter()
            .map(|request| (request, false))
            .chain(collision.map(|parked| (Request::Publish(parked), true)));
        for (request, parked) in requests {
            let Request::Publish(mut publish) = request else {
                // A disconnect or ping: not tracked, keep its place.
                lost.replay.push_back(request);
                continue;
            };
            if publish.qos == QoS::AtMostOnce {
                lost.replay.push_back(Request::Publish(publish));
                continue;
            }
            // The parked publish shares its pkid with the in-flight one it collided with.
            let tracked = if parked {
                self.collided.take().map(|(_, t)| t)
            } else if publish.pkid == 0 {
                self.queued.pop_front()
            } else {
                self.inflight.remove(&publish.pkid)
            };
            match tracked {
                Some(tracked) => {
                    publish.pkid = 0;
                    publish.dup = false;
                    replay_order.push_back(tracked);
                    lost.replay.push_back(Request::Publish(publish));
                    self.counts.replayed += 1;
                }
                None => {
                    // Not ours: re-sending it would shift every later match by one.
                    self.counts.unmatched_events += 1;
                }
            }
        }
        // Whatever is still in flight here, rumqttc no longer holds.
        lost.vanished.extend(self.inflight.drain().map(|(_, t)| t));
        lost.vanished.extend(self.collided.take().map(|(_, t)| t));
        self.vanished.extend(lost.vanished.iter().copied());

        // The replay goes out first, then whatever is still waiting in the channel.
        replay_order.extend(self.queued.drain(..));
        self.queued = replay_order;
        lost
    }

    /// Publishes handed over and not yet acknowledged (including any that vanished).
    pub fn outstanding(&self) -> usize {
        self.queued.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    /// Batches handed over and not yet acknowledged; what vanished is not counted here.
    pub fn outstanding_batches(&self) -> usize {
        self.pending_iter()
            .filter(|t| matches!(t, Tracked::Batch { .. }))
            .count()
    }

    /// Whether a model report is still awaiting its PUBACK.
    pub fn model_report_outstanding(&self) -> bool {
        self.pending_iter().any(|t| *t == Tracked::ModelReport)
    }

    /// Whether a status publish of this kind is still awaiting its PUBACK.
    pub fn status_outstanding(&self, online: bool) -> bool {
        self.pending_iter()
            .any(|t| *t == Tracked::Status { online })
    }

    /// Every tracked publish not acknowledged: still pending, or vanished.
    pub fn unacked(&self) -> Vec<Tracked> {
        self.pending_iter().chain(&self.vanished).copied().collect()
    }

    /// Publishes that vanished inside the client so far.
    pub fn vanished(&self) -> &[Tracked] {
        &self.vanished
    }

    pub fn counts(&self) -> AckCounts {
        self.counts
    }

    fn pending_iter(&self) -> impl Iterator<Item = &Tracked> {
        self.queued
            .iter()
            .chain(self.inflight.values())
            .chain(self.collided.as_ref().map(|(_, t)| t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{MqttState, PubAck};

    fn batch(seq: u64) -> Tracked {
        Tracked::Batch {
            record: seq,
            seq,
            samples: 10,
            earlier_boot: false,
        }
    }

    fn out(pkid: u16) -> Event {
        Event::Outgoing(Outgoing::Publish(pkid))
    }

    fn ack(pkid: u16) -> Event {
        Event::Incoming(Packet::PubAck(PubAck::new(pkid)))
    }

    fn acked(tracker: &mut AckTracker, pkid: u16) -> Option<Tracked> {
        tracker.on_event(&ack(pkid)).map(|a| a.tracked)
    }

    #[test]
    fn in_order_acks() {
        let mut t = AckTracker::new();
        for seq in 0..3 {
            t.requested(batch(seq));
        }
        assert_eq!(t.outstanding(), 3);
        for pkid in 1..=3 {
            t.on_event(&out(pkid));
        }
        for (pkid, seq) in [(1, 0), (2, 1), (3, 2)] {
            assert_eq!(acked(&mut t, pkid), Some(batch(seq)));
        }
        assert_eq!(t.outstanding(), 0);
        let c = t.counts();
        assert_eq!((c.batches_acked, c.samples_acked), (3, 30));
        assert_eq!((c.first_acked_seq, c.last_acked_seq), (Some(0), Some(2)));
    }

    #[test]
    fn out_of_order_acks() {
        let mut t = AckTracker::new();
        for seq in 0..4 {
            t.requested(batch(seq));
            t.on_event(&out(seq as u16 + 1));
        }
        assert_eq!(acked(&mut t, 3), Some(batch(2)));
        assert_eq!(acked(&mut t, 1), Some(batch(0)));
        assert_eq!(acked(&mut t, 4), Some(batch(3)));
        assert_eq!(t.outstanding_batches(), 1);
        assert_eq!(t.unacked(), vec![batch(1)]);
        assert_eq!(acked(&mut t, 2), Some(batch(1)));
        // A second PUBACK for the same id matches nothing.
        assert_eq!(acked(&mut t, 2), None);
        assert_eq!(t.counts().unmatched_events, 1);
    }

    #[test]
    fn status_interleaved_with_batches() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.requested(Tracked::Status { online: true });
        t.requested(batch(1));
        assert!(t.status_outstanding(true));
        assert!(!t.status_outstanding(false));
        for pkid in [7, 8, 9] {
            t.on_event(&out(pkid));
        }
        assert_eq!(acked(&mut t, 8), Some(Tracked::Status { online: true }));
        assert_eq!(acked(&mut t, 9), Some(batch(1)));
        assert_eq!(acked(&mut t, 7), Some(batch(0)));
        assert_eq!(t.counts().statuses_acked, 1);
        assert_eq!(t.counts().batches_acked, 2);
    }

    #[test]
    fn pkids_are_reused_after_their_ack() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.on_event(&out(1));
        assert_eq!(acked(&mut t, 1), Some(batch(0)));
        t.requested(batch(1));
        t.on_event(&out(1));
        assert_eq!(acked(&mut t, 1), Some(batch(1)));
    }

    #[test]
    fn replay_of_an_inflight_pkid_is_idempotent() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.on_event(&out(5));
        t.requested(batch(1));
        // rumqttc re-sends pkid 5 (persistent-session replay): nothing moves.
        t.on_event(&out(5));
        t.on_event(&out(5));
        assert_eq!(t.outstanding(), 2);
        t.on_event(&out(6));
        assert_eq!(acked(&mut t, 6), Some(batch(1)));
        assert_eq!(acked(&mut t, 5), Some(batch(0)));
    }

    #[test]
    fn withdrawn_request_is_forgotten() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.requested(batch(1));
        assert_eq!(t.withdraw_last(), Some(batch(1)));
        t.on_event(&out(1));
        assert_eq!(acked(&mut t, 1), Some(batch(0)));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn collision_parks_the_front_publish() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.requested(batch(1));
        t.on_event(&out(1));
        // pkid 1 is taken: batch 1 is parked on it.
        t.on_event(&Event::Outgoing(Outgoing::AwaitAck(1)));
        t.requested(batch(2));
        assert_eq!(acked(&mut t, 1), Some(batch(0)));
        // rumqttc now sends the parked publish under pkid 1.
        t.on_event(&out(1));
        t.on_event(&out(2));
        assert_eq!(acked(&mut t, 2), Some(batch(2)));
        assert_eq!(acked(&mut t, 1), Some(batch(1)));
    }

    fn publish(pkid: u16, seq: u64) -> Request {
        let mut p = Publish::new("t", QoS::AtLeastOnce, seq.to_be_bytes().to_vec());
        p.pkid = pkid;
        Request::Publish(p)
    }

    fn replay_seqs(replay: &VecDeque<Request>) -> Vec<(u16, u64)> {
        replay
            .iter()
            .map(|r| match r {
                Request::Publish(p) => (
                    p.pkid,
                    u64::from_be_bytes(p.payload.as_ref().try_into().unwrap()),
                ),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn connection_loss_replays_everything_unacked_in_a_consistent_order() {
        let mut t = AckTracker::new();
        for seq in 0..6 {
            t.requested(batch(seq));
        }
        // Seqs 0..3 went out as pkids 1..3; seq 0 was acked (event still buffered); seq 3
        // and 4 were still in the channel when rumqttc drained it; seq 5 was handed over
        // after the drain and is still in the channel.
        for pkid in 1..=3 {
            t.on_event(&out(pkid));
        }
        let buffered = vec![ack(1)];
        // rumqttc's order: in-flight by pkid from the last ack, then the drained channel.
        let pending: VecDeque<_> = [publish(3, 2), publish(2, 1), publish(0, 3), publish(0, 4)]
            .into_iter()
            .collect();
        let lost = t.on_connection_lost(buffered, pending, None);
        assert_eq!(lost.acked.len(), 1);
        assert_eq!(lost.acked[0].tracked, batch(0));
        assert!(lost.vanished.is_empty());
        assert_eq!(
            replay_seqs(&lost.replay),
            vec![(0, 2), (0, 1), (0, 3), (0, 4)]
        );
        assert_eq!(t.counts().replayed, 4);
        // After reconnecting, rumqttc sends the replay first, then the channel's seq 5.
        for pkid in 10..=14 {
            t.on_event(&out(pkid));
        }
        let got: Vec<_> = (10..=14).map(|pkid| acked(&mut t, pkid).unwrap()).collect();
        assert_eq!(got, [2, 1, 3, 4, 5].map(batch));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn repeated_losses_before_reconnecting_keep_the_replay() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.on_event(&out(1));
        let first = t.on_connection_lost(vec![], [publish(1, 0)].into_iter().collect(), None);
        // Connecting fails twice more: nothing new in pending.
        let second = t.on_connection_lost(vec![], VecDeque::new(), None);
        let third = t.on_connection_lost(vec![], VecDeque::new(), None);
        assert_eq!(first.replay.len(), 1);
        assert!(second.replay.is_empty() && third.replay.is_empty());
        assert_eq!(t.outstanding(), 1);
        t.on_event(&out(4));
        assert_eq!(acked(&mut t, 4), Some(batch(0)));
    }

    #[test]
    fn a_parked_publish_is_replayed_too() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.requested(batch(1));
        t.on_event(&out(1));
        t.on_event(&Event::Outgoing(Outgoing::AwaitAck(1)));
        let lost = t.on_connection_lost(
            vec![],
            [publish(1, 0)].into_iter().collect(),
            match publish(1, 1) {
                Request::Publish(p) => Some(p),
                _ => None,
            },
        );
        assert_eq!(replay_seqs(&lost.replay), vec![(0, 0), (0, 1)]);
        t.on_event(&out(2));
        t.on_event(&out(3));
        assert_eq!(acked(&mut t, 3), Some(batch(1)));
        assert_eq!(acked(&mut t, 2), Some(batch(0)));
    }

    #[test]
    fn an_inflight_publish_rumqttc_forgot_is_reported_lost() {
        let mut t = AckTracker::new();
        t.requested(batch(0));
        t.on_event(&out(1));
        let lost = t.on_connection_lost(vec![], VecDeque::new(), None);
        assert_eq!(lost.vanished, vec![batch(0)]);
        assert_eq!(t.outstanding(), 0);
        assert_eq!(t.unacked(), vec![batch(0)]);
    }

    // Model check against rumqttc's own state machine: the real `MqttState` assigns packet
    // ids, detects collisions and cleans up on loss; a simulated request channel, pending
    // queue and broker (which acknowledges in any order) drive it, exactly as `EventLoop`
    // does. Every acknowledgement the tracker reports must be for the publish the broker
    // actually acknowledged, and in the end every request is acknowledged exactly once.
    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Submit,
            SubmitStatus,
            Step,
            BrokerAck(usize),
            DrainEvents(usize),
            Lose,
            Reconnect,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Submit),
                1 => Just(Op::SubmitStatus),
                6 => Just(Op::Step),
                5 => any::<usize>().prop_map(Op::BrokerAck),
                // Acknowledging the newest first makes packet ids wrap onto unacknowledged
                // ones: rumqttc's collision path.
                2 => Just(Op::BrokerAck(usize::MAX)),
                3 => (0usize..4).prop_map(Op::DrainEvents),
                1 => Just(Op::Lose),
                2 => Just(Op::Reconnect),
            ]
        }

        fn identity(publish: &Publish) -> u64 {
            u64::from_be_bytes(publish.payload.as_ref().try_into().unwrap())
        }

        fn tracked_identity(t: Tracked) -> u64 {
            match t {
                Tracked::Batch { seq, .. } => seq,
                Tracked::Status { .. } | Tracked::ModelReport => u64::MAX,
            }
        }

        struct Sim {
            max_inflight: u16,
            state: MqttState,
            channel: VecDeque<Request>,
            pending: VecDeque<Request>,
            stash: VecDeque<Request>,
            connected: bool,
            /// Publishes the broker received on this connection and has not acknowledged.
            broker: Vec<Publish>,
            tracker: AckTracker,
            next_seq: u64,
            acked: Vec<u64>,
            /// What the broker acknowledged, in order, not yet reported by the tracker.
            expected: VecDeque<u64>,
        }

        impl Sim {
            fn new(max_inflight: u16) -> Sim {
                Sim {
                    max_inflight,
                    state: MqttState::new(max_inflight, false),
                    channel: VecDeque::new(),
                    pending: VecDeque::new(),
                    stash: VecDeque::new(),
                    connected: true,
                    broker: Vec::new(),
                    tracker: AckTracker::new(),
                    next_seq: 0,
                    acked: Vec::new(),
                    expected: VecDeque::new(),
                }
            }

            fn submit(&mut self, tracked: Tracked, payload: u64) {
                self.tracker.requested(tracked);
                self.channel.push_back(Request::Publish(Publish::new(
                    "t",
                    QoS::AtLeastOnce,
                    payload.to_be_bytes().to_vec(),
                )));
            }

            fn apply(&mut self, event: Event) {
                if let Some(acked) = self.tracker.on_event(&event) {
                    self.record(acked);
                }
            }

            fn record(&mut self, acked: Acked) {
                // PUBACK events come out in the order the broker sent them.
                let expected = self.expected.pop_front();
                assert_eq!(
                    Some(tracked_identity(acked.tracked)),
                    expected,
                    "ack attributed to the wrong publish"
                );
                self.acked.push(tracked_identity(acked.tracked));
            }

            fn drain_events(&mut self, n: usize) {
                for _ in 0..n {
                    let Some(event) = self.state.events.pop_front() else {
                        break;
                    };
                    self.apply(event);
                }
            }

            fn step(&mut self) {
                if !self.connected {
                    return;
                }
                let inflight_full = self.state.inflight() >= self.max_inflight;
                let request = if let Some(r) = self.pending.pop_front() {
                    r
                } else if !inflight_full && self.state.collision.is_none() {
                    match self.channel.pop_front() {
                        Some(r) => r,
                        None => return,
                    }
                } else {
                    return;
                };
                if let Some(Packet::Publish(p)) =
                    self.state.handle_outgoing_packet(request).unwrap()
                {
                    self.broker.push(p);
                }
            }

            fn broker_ack(&mut self, pick: usize) {
                if self.broker.is_empty() || !self.connected {
                    return;
                }
                let pick = if pick == usize::MAX {
                    self.broker.len() - 1
                } else {
                    pick % self.broker.len()
                };
                let publish = self.broker.remove(pick);
                self.expected.push_back(identity(&publish));
                if let Some(Packet::Publish(p)) = self
                    .state
                    .handle_incoming_packet(Packet::PubAck(PubAck::new(publish.pkid)))
                    .unwrap()
                {
                    // A parked publish released by this ack.
                    self.broker.push(p);
                }
            }

            fn lose(&mut self) {
                if !self.connected {
                    return;
                }
                // `EventLoop::clean`, then our handler.
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend(self.state.clean());
                pending.extend(self.channel.drain(..));
                let buffered: Vec<_> = self.state.events.drain(..).collect();
                let collision = self.state.collision.take();
                let lost = self
                    .tracker
                    .on_connection_lost(buffered, pending, collision);
                assert!(lost.vanished.is_empty(), "{:?}", lost.vanished);
                for acked in lost.acked {
                    self.record(acked);
                }
                self.stash.extend(lost.replay);
                self.broker.clear();
                self.connected = false;
            }

            fn reconnect(&mut self) {
                if self.connected {
                    return;
                }
                // Clean session: rumqttc clears `pending`; we put our replay back.
                self.pending.clear();
                self.pending.extend(self.stash.drain(..));
                self.connected = true;
            }
        }

        /// Runs `ops` with rumqttc's `inflight` at `max_inflight` and the agent's window of
        /// one status plus `max_inflight - 1` batches, as in `device`.
        fn check(ops: Vec<Op>, max_inflight: u16) -> Result<(), TestCaseError> {
            let limit = usize::from(max_inflight) - 1;
            let mut sim = Sim::new(max_inflight);
            let mut statuses = 0;
            for op in ops {
                match op {
                    Op::Submit => {
                        if sim.tracker.outstanding_batches() < limit {
                            let seq = sim.next_seq;
                            sim.next_seq += 1;
                            let tracked = Tracked::Batch {
                                record: seq,
                                seq,
                                samples: 1,
                                earlier_boot: false,
                            };
                            sim.submit(tracked, seq);
                        }
                    }
                    Op::SubmitStatus => {
                        if !sim.tracker.status_outstanding(true) {
                            statuses += 1;
                            sim.submit(Tracked::Status { online: true }, u64::MAX);
                        }
                    }
                    Op::Step => sim.step(),
                    Op::BrokerAck(i) => sim.broker_ack(i),
                    Op::DrainEvents(n) => sim.drain_events(n),
                    Op::Lose => sim.lose(),
                    Op::Reconnect => sim.reconnect(),
                }
            }
            // Let everything through.
            sim.reconnect();
            for _ in 0..10_000 {
                if sim.tracker.outstanding() == 0 {
                    break;
                }
                sim.step();
                sim.broker_ack(0);
                sim.drain_events(usize::MAX);
            }
            prop_assert!(sim.expected.is_empty());
            prop_assert_eq!(sim.tracker.outstanding(), 0);
            let mut batches: Vec<u64> = sim
                .acked
                .iter()
                .copied()
                .filter(|i| *i != u64::MAX)
                .collect();
            batches.sort_unstable();
            prop_assert_eq!(batches, (0..sim.next_seq).collect::<Vec<_>>());
            prop_assert_eq!(sim.acked.len() as u64 - sim.next_seq, statuses);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn tracker_follows_rumqttc(ops in proptest::collection::vec(op(), 0..300)) {
                check(ops, 6)?;
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            #[test]
            fn tracker_follows_rumqttc_through_collisions(ops in proptest::collection::vec(op(), 0..300)) {
                // A small window wraps packet ids quickly.
                check(ops, 3)?;
            }
        }
    }
}
