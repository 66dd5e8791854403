//! Sealing samples into a `TelemetryBatch`: pure, no I/O, no clock of its own.
//!
//! A [`Sealer`] owns one device's line simulator, its inference windows and its sequence
//! counter. Each [`Sealer::seal`] takes every sample from where the previous batch ended up to
//! (not including) a sample index, so batch n+1 starts exactly where batch n stopped: no gap,
//! no overlap. The batch carries the samples, the inference results of the windows that ended
//! inside it, a health snapshot and (simulation only) the ground-truth labels of its span.

use loopline_linesim::{CHANNELS, LabelSpans, LineSim};
use loopline_proto::pack::ChannelBuilder;
use loopline_proto::v1::{self, DeviceHealth, DeviceId, SimLabel, TelemetryBatch};

use crate::inference::Inferencer;

/// Most samples per sensor in one batch. After a stall (a suspended board, a starved
/// runtime, a spool that was full) the agent catches up over several batches instead of
/// sealing one message larger than the broker accepts: 8 sensors x 100 000 samples stay well
/// under 16 MiB.
pub const MAX_SAMPLES_PER_BATCH: u64 = 100_000;

/// Health figures the caller knows and the sealer does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthInputs {
    /// Batches in the spool not yet acknowledged by the broker.
    pub spool_pending: u64,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Spool segments quarantined as corrupt since boot.
    pub spool_quarantined_segments: u32,
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
#[derive(Debug)]
pub struct Sealer {
    device: DeviceId,
    boot_id: String,
    next_seq: u64,
    line: LineSim,
    inferencer: Inferencer,
    labels: LabelSpans,
}

impl Sealer {
    pub fn new(device: DeviceId, boot_id: String, line: LineSim, inferencer: Inferencer) -> Self {
        Sealer {
            device,
            boot_id,
            next_seq: 0,
            line,
            inferencer,
            labels: LabelSpans::new(),
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
        self.line.next_k()
    }

    pub fn inferencer(&self) -> &Inferencer {
        &self.inferencer
    }

    pub fn inferencer_mut(&mut self) -> &mut Inferencer {
        &mut self.inferencer
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
        let k_start = self.line.next_k();
        let k_end = k_end.min(k_start.saturating_add(MAX_SAMPLES_PER_BATCH));
        if k_end <= k_start {
            return None;
        }
        let n = usize::try_from(k_end - k_start).ok()?;
        let base_ts_us = self.line.ts_us(k_start);
        let mut channels = CHANNELS.map(|channel| {
            ChannelBuilder::with_capacity(channel.name, channel.unit, base_ts_us, n)
        });
        let mut inferences = Vec::new();
        for _ in k_start..k_end {
            let sample = self.line.next_sample();
            for ((channel, value), quality) in
                channels.iter_mut().zip(sample.values).zip(sample.quality)
            {
                channel.push(sample.ts_us, value, quality);
            }
            self.inferencer
                .push(sample.ts_us, &sample.values, &mut inferences);
            self.labels.push(sample.ts_us, &sample.label);
        }
        let end_us = self.line.ts_us(k_end);
        let sim_labels = self
            .labels
            .take(end_us)
            .into_iter()
            .map(|span| SimLabel {
                start_us: span.start_us,
                end_us: span.end_us,
                fault: span.fault.to_string(),
                severity: span.severity,
                sensor: span.sensor.map(str::to_owned).unwrap_or_default(),
            })
            .collect();
        let npu = self.inferencer.npu_health(sealed_ts_us);
        let counts = self.inferencer.counts();
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = TelemetryBatch {
            schema_version: v1::SCHEMA_VERSION,
            device: Some(self.device.clone()),
            boot_id: self.boot_id.clone(),
            seq,
            model_version: self.inferencer.model().version().to_owned(),
            base_ts_us,
            channels: channels.into_iter().map(ChannelBuilder::finish).collect(),
            inferences,
            health: Some(DeviceHealth {
                ts_us: sealed_ts_us,
                npu_utilisation: npu.utilisation,
                npu_temperature_c: npu.temperature_c,
                npu_power_w: npu.power_w,
                npu_clock_mhz: npu.clock_mhz,
                throttle_level: npu.throttle_level,
                npu_errors: u32::try_from(counts.failed).unwrap_or(u32::MAX),
                spool_pending: health.spool_pending,
                dropped_samples: health.dropped_samples,
                npu_fps: npu.fps,
                latency_p50_us: npu.latency_p50_us,
                latency_p95_us: npu.latency_p95_us,
                latency_p99_us: npu.latency_p99_us,
                npu_ecc_errors: npu.ecc_errors,
                npu_resets: npu.resets,
                npu_failed_inferences: npu.failed_inferences,
                spool_bytes: health.spool_bytes,
                spool_quarantined_segments: health.spool_quarantined_segments,
            }),
            sealed_ts_us,
            sim_labels,
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
    use std::sync::Arc;

    use loopline_linesim::Scenario;
    use loopline_npusim::{Npu, Profile};
    use loopline_proto::Message;

    use super::*;
    use crate::bootstrap::{self, BootstrapKey};
    use crate::inference::LoadedModel;

    const T0: i64 = 1_700_000_000_000_000;

    /// A sealer on the `default` scenario with the bootstrap model and windows of `window`
    /// samples.
    fn sealer(rate: u32, window: u64) -> Sealer {
        let rate = NonZeroU32::new(rate).unwrap();
        let key = BootstrapKey {
            seed: 1,
            sample_rate_hz: rate,
            window_samples: window,
        };
        let artifact = bootstrap::model(key).unwrap();
        let model = Arc::new(LoadedModel::new((*artifact).clone()).unwrap());
        let npu = Npu::new(Profile::Hailo8L, 1, T0);
        let inferencer = Inferencer::new(model, npu, window as usize, 1e6 / f64::from(rate.get()));
        let line = LineSim::new(&Scenario::named("default").unwrap(), 1, "d", rate, T0);
        Sealer::new(
            DeviceId::checked("s", "l", "d").unwrap(),
            "0123456789abcdef0123456789abcdef".into(),
            line,
            inferencer,
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
    fn batch_carries_identity_samples_inferences_and_health() {
        let mut s = sealer(1000, 100);
        let health = HealthInputs {
            spool_pending: 3,
            spool_bytes: 4096,
            ..HealthInputs::default()
        };
        let sealed = s.seal(250, T0 + 250_000, health).unwrap();
        let b = &sealed.batch;
        assert_eq!(b.schema_version, v1::SCHEMA_VERSION);
        assert_eq!(b.device.as_ref().unwrap().device, "d");
        assert_eq!(b.seq, 0);
        assert_eq!(b.base_ts_us, T0);
        assert_eq!(b.sealed_ts_us, T0 + 250_000);
        let names: Vec<_> = b.channels.iter().map(|c| c.sensor.as_str()).collect();
        let expected: Vec<_> = CHANNELS.iter().map(|c| c.name).collect();
        assert_eq!(names, expected);
        assert_eq!(sealed.samples, 250 * 8);
        assert_eq!(b.sample_count(), 250 * 8);
        // Every channel has the same timestamps: one per millisecond from T0.
        let ts = timestamps(b);
        for channel in &ts {
            assert_eq!(channel, &ts[0]);
        }
        assert_eq!(ts[0], (0..250).map(|k| T0 + k * 1000).collect::<Vec<_>>());
        // Two whole windows of 100 samples ended inside the batch.
        assert_eq!(b.inferences.len(), 2);
        assert_eq!(b.inferences[0].window_start_us, T0);
        assert_eq!(b.inferences[0].window_end_us, T0 + 99_000);
        assert_eq!(b.inferences[1].window_start_us, T0 + 100_000);
        assert!(
            b.inferences
                .iter()
                .all(|i| i.latency_us > 0 && i.score.is_finite())
        );
        assert!(b.model_version.starts_with("bootstrap-"));
        let h = b.health.as_ref().unwrap();
        assert_eq!((h.spool_pending, h.spool_bytes), (3, 4096));
        assert!(h.npu_clock_mhz > 0 && h.npu_temperature_c > 20.0);
        // The scenario's ground truth covers the batch's span.
        assert_eq!(b.sim_labels.first().map(|l| l.start_us), Some(T0));
        assert_eq!(b.sim_labels.last().map(|l| l.end_us), Some(T0 + 250_000));
        // It survives the wire.
        let decoded = TelemetryBatch::decode(b.encode_to_vec().as_slice()).unwrap();
        assert_eq!(&decoded, b);
    }

    #[test]
    fn consecutive_batches_are_contiguous_and_windows_ignore_batch_cuts() {
        let mut cut = sealer(1000, 100);
        let mut whole = sealer(1000, 100);
        let mut all = Vec::new();
        let mut scores = Vec::new();
        let mut expected_seq = 0;
        for k_end in [1u64, 1, 50, 60, 170, 171, 171, 400] {
            let before = cut.next_k();
            match cut.seal(k_end, 0, HealthInputs::default()) {
                None => assert_eq!(before, k_end),
                Some(sealed) => {
                    assert_eq!(sealed.seq, expected_seq);
                    expected_seq += 1;
                    assert_eq!((sealed.k_start, sealed.k_end), (before, k_end));
                    all.extend(timestamps(&sealed.batch)[0].clone());
                    scores.extend(sealed.batch.inferences.iter().map(|i| i.score));
                }
            }
        }
        let expected: Vec<i64> = (0..400).map(|k| T0 + k * 1000).collect();
        assert_eq!(all, expected);
        let one = whole.seal(400, 0, HealthInputs::default()).unwrap();
        let whole_scores: Vec<f32> = one.batch.inferences.iter().map(|i| i.score).collect();
        assert_eq!(scores, whole_scores);
        assert_eq!(scores.len(), 4);
    }

    #[test]
    fn a_stall_is_caught_up_in_bounded_batches() {
        let mut s = sealer(1000, 1000);
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
