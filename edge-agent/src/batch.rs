//! Sealing samples into a `TelemetryBatch`: pure, no I/O, no clock of its own.
//!
//! A [`Sealer`] owns one device's generator and sequence counter. Each [`Sealer::seal`] takes
//! every sample from where the previous batch ended up to (not including) a sample index, so
//! batch n+1 starts exactly where batch n stopped: no gap, no overlap.

use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{self, DeviceHealth, DeviceId, TelemetryBatch};

use crate::signal::{SENSORS, SignalGenerator};

/// Most samples per sensor in one batch. After a stall (a suspended board, a starved
/// runtime) the agent catches up over several batches instead of sealing one message larger
/// than the broker accepts: 4 sensors x 200 000 samples stay well under 16 MiB.
pub const MAX_SAMPLES_PER_BATCH: u64 = 200_000;

/// Health figures the caller knows and the sealer does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthInputs {
    /// Batches sealed but not yet acknowledged by the broker.
    pub spool_pending: u64,
    /// Samples dropped since boot.
    pub dropped_samples: u64,
}

/// A batch ready to publish, with what the publisher needs to account for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedBatch {
    pub seq: u64,
    /// Samples over all channels (`TelemetryBatch::sample_count`).
    pub samples: u64,
    /// Sample indices `k_start..k_end` it holds (per sensor).
    pub k_start: u64,
    pub k_end: u64,
    pub batch: TelemetryBatch,
}

/// Turns one device's samples into numbered batches.
#[derive(Debug, Clone)]
pub struct Sealer {
    device: DeviceId,
    boot_id: String,
    model_version: String,
    next_seq: u64,
    generator: SignalGenerator,
}

impl Sealer {
    pub fn new(
        device: DeviceId,
        boot_id: String,
        model_version: String,
        generator: SignalGenerator,
    ) -> Self {
        Sealer {
            device,
            boot_id,
            model_version,
            next_seq: 0,
            generator,
        }
    }

    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Sequence number the next batch will carry (= batches sealed so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Index of the first sample not yet sealed.
    pub fn next_k(&self) -> u64 {
        self.generator.next_k()
    }

    /// Seals samples `next_k()..k_end` (at most [`MAX_SAMPLES_PER_BATCH`] of them) into the
    /// next batch. Returns `None`, and consumes no sequence number, when there is nothing to
    /// seal.
    pub fn seal(
        &mut self,
        k_end: u64,
        sealed_ts_us: i64,
        health: HealthInputs,
    ) -> Option<SealedBatch> {
        let k_start = self.generator.next_k();
        let k_end = k_end.min(k_start.saturating_add(MAX_SAMPLES_PER_BATCH));
        if k_end <= k_start {
            return None;
        }
        let n = usize::try_from(k_end - k_start).ok()?;
        let base_ts_us = self.generator.ts_us(k_start);
        let mut channels = SENSORS
            .map(|sensor| ChannelBuilder::with_capacity(sensor.name, sensor.unit, base_ts_us, n));
        for _ in k_start..k_end {
            let (ts, values) = self.generator.next_sample();
            for (channel, (value, quality)) in channels.iter_mut().zip(values) {
                channel.push(ts, value, quality);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = TelemetryBatch {
            schema_version: v1::SCHEMA_VERSION,
            device: Some(self.device.clone()),
            boot_id: self.boot_id.clone(),
            seq,
            model_version: self.model_version.clone(),
            base_ts_us,
            channels: channels.into_iter().map(ChannelBuilder::finish).collect(),
            inferences: Vec::new(),
            health: Some(DeviceHealth {
                ts_us: sealed_ts_us,
                spool_pending: health.spool_pending,
                dropped_samples: health.dropped_samples,
                ..DeviceHealth::default()
            }),
            sealed_ts_us,
            sim_labels: Vec::new(),
        };
        Some(SealedBatch {
            seq,
            samples: batch.sample_count() as u64,
            k_start,
            k_end,
            batch,
        })
    }
}

/// A fresh `boot_id`: a random UUID as 32 lower-case hex digits.
pub fn new_boot_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use loopline_proto::Message;
    use loopline_proto::v1::Quality;

    use super::*;

    const T0: i64 = 1_700_000_000_000_000;

    fn sealer(rate: u32) -> Sealer {
        let rate = NonZeroU32::new(rate).unwrap();
        Sealer::new(
            DeviceId::checked("s", "l", "d").unwrap(),
            "0123456789abcdef0123456789abcdef".into(),
            "none".into(),
            SignalGenerator::new(1, "d", rate, T0),
        )
    }

    fn timestamps(batch: &TelemetryBatch) -> Vec<Vec<i64>> {
        batch
            .channels
            .iter()
            .map(|c| {
                c.samples(batch.base_ts_us)
                    .unwrap()
                    .map(|s| s.ts_us)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn batch_carries_identity_and_all_sensors() {
        let mut s = sealer(1000);
        let sealed = s
            .seal(
                250,
                T0 + 250_000,
                HealthInputs {
                    spool_pending: 3,
                    dropped_samples: 0,
                },
            )
            .unwrap();
        let b = &sealed.batch;
        assert_eq!(b.schema_version, v1::SCHEMA_VERSION);
        assert_eq!(b.device.as_ref().unwrap().device, "d");
        assert_eq!(b.seq, 0);
        assert_eq!(b.base_ts_us, T0);
        assert_eq!(b.sealed_ts_us, T0 + 250_000);
        assert_eq!(b.health.as_ref().unwrap().spool_pending, 3);
        let names: Vec<_> = b.channels.iter().map(|c| c.sensor.as_str()).collect();
        assert_eq!(names, ["vibration", "temperature", "current", "pressure"]);
        assert_eq!(sealed.samples, 1000);
        assert_eq!(b.sample_count(), 1000);
        // Every channel has the same timestamps: one per millisecond from T0.
        let ts = timestamps(b);
        for channel in &ts {
            assert_eq!(channel, &ts[0]);
        }
        assert_eq!(ts[0], (0..250).map(|k| T0 + k * 1000).collect::<Vec<_>>());
        // It survives the wire.
        let decoded = TelemetryBatch::decode(b.encode_to_vec().as_slice()).unwrap();
        assert_eq!(&decoded, b);
    }

    #[test]
    fn consecutive_batches_are_contiguous() {
        let mut s = sealer(3);
        let mut all = Vec::new();
        let mut expected_seq = 0;
        for k_end in [1u64, 1, 5, 6, 20, 21, 21, 40] {
            let before = s.next_k();
            match s.seal(k_end, 0, HealthInputs::default()) {
                None => assert_eq!(before, k_end),
                Some(sealed) => {
                    assert_eq!(sealed.seq, expected_seq);
                    expected_seq += 1;
                    assert_eq!((sealed.k_start, sealed.k_end), (before, k_end));
                    all.extend(timestamps(&sealed.batch)[0].clone());
                }
            }
        }
        let expected: Vec<i64> = (0..40).map(|k| T0 + k * 1_000_000 / 3).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn a_stall_is_caught_up_in_bounded_batches() {
        let mut s = sealer(1000);
        let first = s.seal(u64::MAX, 0, HealthInputs::default()).unwrap();
        assert_eq!(first.k_end, MAX_SAMPLES_PER_BATCH);
        let second = s
            .seal(MAX_SAMPLES_PER_BATCH + 10, 0, HealthInputs::default())
            .unwrap();
        assert_eq!(
            (second.k_start, second.k_end),
            (MAX_SAMPLES_PER_BATCH, MAX_SAMPLES_PER_BATCH + 10)
        );
    }

    #[test]
    fn quality_column_appears_only_when_needed() {
        let mut s = sealer(1000);
        let sealed = s.seal(100_000, 0, HealthInputs::default()).unwrap();
        let uncertain: usize = sealed
            .batch
            .channels
            .iter()
            .map(|c| {
                c.samples(sealed.batch.base_ts_us)
                    .unwrap()
                    .filter(|s| s.quality == Quality::Uncertain)
                    .count()
            })
            .sum();
        assert!(uncertain > 0);
    }

    #[test]
    fn boot_ids_are_32_lower_hex() {
        let id = new_boot_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(id, new_boot_id());
    }
}
