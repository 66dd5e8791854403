//! Decoding and checking one MQTT message before anything of it reaches the lake.
//!
//! Every message either becomes an [`Accepted`] batch whose columns were all checked, or a
//! [`Rejection`] with a [`RejectReason`] and a detail naming what was wrong. Nothing here does
//! I/O or keeps state, so the rules are tested without a broker.
//!
//! The samples decide a message's fate; the parts bound for the other tables do not. An
//! inference result, health snapshot or simulation label that is out of range (a NaN score, a
//! negative power, a label that ends before it starts) is removed from the accepted batch and
//! reported as a [`DroppedPart`], so one bad float from the NPU never costs the batch's
//! telemetry. A structural fault (columns that do not fit, a bad identity) still rejects the
//! whole message: then nothing in it can be trusted.

use std::fmt;

use loopline_proto::Message;
use loopline_proto::pack::PackError;
use loopline_proto::topic::{self, Kind};
use loopline_proto::v1::{DeviceHealth, InferenceResult, SCHEMA_VERSION, SimLabel, TelemetryBatch};

/// Earliest sample timestamp accepted: 2000-01-01T00:00:00Z. Earlier ones are a device
/// whose clock was never set.
pub const MIN_TS_US: i64 = 946_684_800_000_000;

/// Longest `boot_id` accepted, in bytes.
pub const MAX_BOOT_ID_LEN: usize = 64;

/// Why a message was turned away. Each reason is counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Larger than the configured `max_payload_bytes`.
    Oversized,
    /// Not a Loopline telemetry topic.
    Topic,
    /// Not a protobuf `TelemetryBatch`.
    Undecodable,
    /// The payload's device identity differs from its topic's.
    IdentityMismatch,
    /// A `schema_version` this ingest does not speak.
    SchemaVersion,
    /// Columns that do not fit together (lengths, overflow, unknown codes, bad ids).
    Malformed,
    /// Values outside what the lake accepts (non-finite values, timestamps out of range).
    OutOfRange,
}

impl RejectReason {
    /// Every reason, in a fixed order (for counters and reports).
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Oversized,
        RejectReason::Topic,
        RejectReason::Undecodable,
        RejectReason::IdentityMismatch,
        RejectReason::SchemaVersion,
        RejectReason::Malformed,
        RejectReason::OutOfRange,
    ];

    /// Stable snake_case name, used in logs, reports and (later) the quarantine table.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Topic => "topic",
            RejectReason::Undecodable => "undecodable",
            RejectReason::IdentityMismatch => "identity_mismatch",
            RejectReason::SchemaVersion => "schema_version",
            RejectReason::Malformed => "malformed",
            RejectReason::OutOfRange => "out_of_range",
        }
    }

    /// Position in [`RejectReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message turned away, with what a person needs to find the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A batch whose every column was checked; safe to convert without further checks.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The batch, less the parts in `dropped`, with a health snapshot's missing timestamp
    /// filled in from `sealed_ts_us`.
    pub batch: TelemetryBatch,
    /// Samples over all channels.
    pub samples: usize,
    /// What was left out of the other tables, at most one entry per table.
    pub dropped: Vec<DroppedPart>,
}

/// Rows of one table left out of an accepted batch because they were out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPart {
    /// The table the rows were bound for (`inference`, `device_health`, `sim_labels`).
    pub table: &'static str,
    /// How many rows were left out.
    pub rows: usize,
    /// What was wrong with the first of them, naming the topic.
    pub detail: String,
}

/// Limits a message is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    /// Latest timestamp accepted, microseconds since the epoch (now plus the allowed skew).
    pub max_ts_us: i64,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Decodes and checks a message received on `topic`.
pub fn check(topic: &str, payload: &[u8], limits: Limits) -> Result<Accepted, Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(reject(
            RejectReason::Oversized,
            format!(
                "{} bytes on {topic} exceeds max_payload_bytes = {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let parsed = topic::parse(topic).map_err(|e| reject(RejectReason::Topic, e.to_string()))?;
    if parsed.kind != Kind::Telemetry {
        return Err(reject(
            RejectReason::Topic,
            format!("{topic} is not a telemetry topic"),
        ));
    }
    let batch = TelemetryBatch::decode(payload).map_err(|e| {
        reject(
            RejectReason::Undecodable,
            format!("{} bytes on {topic}: {e}", payload.len()),
        )
    })?;
    if batch.schema_version != SCHEMA_VERSION {
        return Err(reject(
            RejectReason::SchemaVersion,
            format!(
                "{topic}: schema_version {} (this ingest speaks {SCHEMA_VERSION})",
                batch.schema_version
            ),
        ));
    }
    let Some(device) = batch.device.as_ref() else {
        return Err(reject(
            RejectReason::Malformed,
            format!("{topic}: the batch carries no device identity"),
        ));
    };
    if *device != parsed.device {
        return Err(reject(
            RejectReason::IdentityMismatch,
            format!(
                "payload says {device}, topic {topic} says {}",
                parsed.device
            ),
        ));
    }
    let malformed = |what: String| reject(RejectReason::Malformed, format!("{topic}: {what}"));
    if batch.boot_id.is_empty() || batch.boot_id.len() > MAX_BOOT_ID_LEN {
        return Err(malformed(format!(
            "boot_id must be 1 to {MAX_BOOT_ID_LEN} bytes, got {}",
            batch.boot_id.len()
        )));
    }
    if i64::try_from(batch.seq).is_err() {
        return Err(malformed(format!("seq {} exceeds 2^63 - 1", batch.seq)));
    }
    let mut samples = 0;
    for (i, channel) in batch.channels.iter().enumerate() {
        if channel.sensor.is_empty() {
            return Err(malformed(format!("channel {i} has no sensor name")));
        }
        if batch.channels[..i]
            .iter()
            .any(|c| c.sensor == channel.sensor)
        {
            return Err(malformed(format!(
                "sensor {:?} appears in two channels",
                channel.sensor
            )));
        }
        let unpacked = channel
            .samples(batch.base_ts_us)
            .map_err(|e: PackError| malformed(e.to_string()))?;
        for (index, sample) in unpacked.enumerate() {
            if !sample.value.is_finite() {
                return Err(reject(
                    RejectReason::OutOfRange,
                    format!(
                        "{topic}: sensor {:?} sample {index} is {} (values must be finite)",
                        channel.sensor, sample.value
                    ),
                ));
            }
            if sample.ts_us < MIN_TS_US || sample.ts_us > limits.max_ts_us {
                return Err(reject(
                    RejectReason::OutOfRange,
                    format!(
                        "{topic}: sensor {:?} sample {index} has timestamp {} µs, outside {MIN_TS_US}..={}",
                        channel.sensor, sample.ts_us, limits.max_ts_us
                    ),
                ));
            }
        }
        samples += channel.values.len();
    }
    let mut batch = batch;
    let dropped = check_parts(topic, &mut batch, limits);
    Ok(Accepted {
        batch,
        samples,
        dropped,
    })
}

/// Removes the inference results, health snapshot and labels that the lake cannot take, and
/// says what went.
fn check_parts(topic: &str, batch: &mut TelemetryBatch, limits: Limits) -> Vec<DroppedPart> {
    let mut dropped = Vec::new();
    let window = MIN_TS_US..=limits.max_ts_us;

    let mut first = None;
    let mut index = 0;
    batch.inferences.retain(|r| {
        let problem = inference_problem(r, &window);
        if let Some(problem) = &problem {
            first.get_or_insert_with(|| format!("{topic}: inference {index}: {problem}"));
        }
        index += 1;
        problem.is_none()
    });
    if let Some(detail) = first {
        dropped.push(DroppedPart {
            table: crate::inference::TABLE,
            rows: index - batch.inferences.len(),
            detail,
        });
    }

    if let Some(health) = batch.health.as_mut() {
        // proto3 has no "unset" for an integer: 0 means the agent did not stamp the snapshot,
        // which it takes when it seals the batch.
        if health.ts_us == 0 {
            health.ts_us = batch.sealed_ts_us;
        }
        if let Some(problem) = health_problem(health, &window) {
            batch.health = None;
            dropped.push(DroppedPart {
                table: crate::device_health::TABLE,
                rows: 1,
                detail: format!("{topic}: health: {problem}"),
            });
        }
    }

    let mut first = None;
    let mut index = 0;
    batch.sim_labels.retain(|l| {
        let problem = label_problem(l, &window);
        if let Some(problem) = &problem {
            first.get_or_insert_with(|| format!("{topic}: sim label {index}: {problem}"));
        }
        index += 1;
        problem.is_none()
    });
    if let Some(detail) = first {
        dropped.push(DroppedPart {
            table: crate::sim_labels::TABLE,
            rows: index - batch.sim_labels.len(),
            detail,
        });
    }
    dropped
}

fn ts_problem(what: &str, ts: i64, window: &std::ops::RangeInclusive<i64>) -> Option<String> {
    (!window.contains(&ts)).then(|| {
        format!(
            "{what} {ts} µs is outside {}..={}",
            window.start(),
            window.end()
        )
    })
}

fn inference_problem(
    r: &InferenceResult,
    window: &std::ops::RangeInclusive<i64>,
) -> Option<String> {
    if let Some(p) = ts_problem("window_end_us", r.window_end_us, window) {
        return Some(p);
    }
    if r.window_start_us < *window.start() || r.window_start_us > r.window_end_us {
        return Some(format!(
            "window_start_us {} is not in {}..=window_end_us ({})",
            r.window_start_us,
            window.start(),
            r.window_end_us
        ));
    }
    (!r.score.is_finite()).then(|| format!("score is {} (must be finite)", r.score))
}

fn health_problem(h: &DeviceHealth, window: &std::ops::RangeInclusive<i64>) -> Option<String> {
    if let Some(p) = ts_problem("ts_us", h.ts_us, window) {
        return Some(p);
    }
    for (name, value) in [
        ("npu_utilisation", h.npu_utilisation),
        ("npu_temperature_c", h.npu_temperature_c),
        ("npu_power_w", h.npu_power_w),
        ("npu_fps", h.npu_fps),
    ] {
        if !value.is_finite() {
            return Some(format!("{name} is {value} (must be finite)"));
        }
    }
    if !(0.0..=1.0).contains(&h.npu_utilisation) {
        return Some(format!(
            "npu_utilisation {} is outside 0..=1",
            h.npu_utilisation
        ));
    }
    if h.npu_power_w < 0.0 || h.npu_fps < 0.0 {
        return Some(format!(
            "npu_power_w {} and npu_fps {} must not be negative",
            h.npu_power_w, h.npu_fps
        ));
    }
    crate::device_health::u64_fields(h)
        .into_iter()
        .find(|(_, v)| i64::try_from(*v).is_err())
        .map(|(name, v)| format!("{name} {v} exceeds 2^63 - 1"))
}

fn label_problem(l: &SimLabel, window: &std::ops::RangeInclusive<i64>) -> Option<String> {
    if let Some(p) = ts_problem("start_us", l.start_us, window) {
        return Some(p);
    }
    if l.end_us <= l.start_us || l.end_us > *window.end() {
        return Some(format!(
            "end_us {} must be after start_us {} and at most {}",
            l.end_us,
            l.start_us,
            window.end()
        ));
    }
    if l.fault.is_empty() {
        return Some("no fault kind".into());
    }
    (!(0.0..=1.0).contains(&l.severity))
        .then(|| format!("severity {} is outside 0..=1", l.severity))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopline_proto::pack::ChannelBuilder;
    use loopline_proto::v1::{DeviceId, Quality};

    const NOW_US: i64 = 1_800_000_000_000_000;

    fn limits() -> Limits {
        Limits {
            max_payload_bytes: 1 << 20,
            max_ts_us: NOW_US + 86_400_000_000,
        }
    }

    fn good_batch() -> TelemetryBatch {
        let mut channel = ChannelBuilder::new("temperature", "Cel", NOW_US);
        for i in 0..10 {
            channel.push(NOW_US + i * 1000, 20.0 + i as f32, Quality::Good);
        }
        TelemetryBatch {
            schema_version: SCHEMA_VERSION,
            device: Some(DeviceId::checked("s", "l", "d").unwrap()),
            boot_id: "00112233445566778899aabbccddeeff".into(),
            seq: 3,
            base_ts_us: NOW_US,
            channels: vec![channel.finish()],
            ..Default::default()
        }
    }

    const TOPIC: &str = "loopline/v1/s/l/d/telemetry";

    fn reason(topic: &str, batch: &TelemetryBatch) -> RejectReason {
        check(topic, &batch.encode_to_vec(), limits())
            .unwrap_err()
            .reason
    }

    #[test]
    fn accepts_a_good_batch() {
        let accepted = check(TOPIC, &good_batch().encode_to_vec(), limits()).unwrap();
        assert_eq!(accepted.samples, 10);
        assert_eq!(accepted.batch.seq, 3);
    }

    #[test]
    fn names_each_cause() {
        let good = good_batch();
        assert_eq!(
            check(TOPIC, b"\xff\xff\xff garbage", limits())
                .unwrap_err()
                .reason,
            RejectReason::Undecodable
        );
        let bytes = good.encode_to_vec();
        assert_eq!(
            check(TOPIC, &bytes[..bytes.len() - 3], limits())
                .unwrap_err()
                .reason,
            RejectReason::Undecodable
        );
        let tight = Limits {
            max_payload_bytes: 8,
            ..limits()
        };
        let oversized = check(TOPIC, &bytes, tight).unwrap_err();
        assert_eq!(oversized.reason, RejectReason::Oversized);
        assert!(oversized.detail.contains(TOPIC), "{oversized}");

        let spoofed = reason("loopline/v1/s/l/other/telemetry", &good);
        assert_eq!(spoofed, RejectReason::IdentityMismatch);
        assert_eq!(
            reason("loopline/v1/s/l/d/status", &good),
            RejectReason::Topic
        );
        assert_eq!(reason("elsewhere/x", &good), RejectReason::Topic);

        let mut b = good.clone();
        b.schema_version = 2;
        assert_eq!(reason(TOPIC, &b), RejectReason::SchemaVersion);

        let mut b = good.clone();
        b.device = None;
        assert_eq!(reason(TOPIC, &b), RejectReason::Malformed);

        let mut b = good.clone();
        b.boot_id.clear();
        assert_eq!(reason(TOPIC, &b), RejectReason::Malformed);

        let mut b = good.clone();
        b.seq = u64::MAX;
        assert_eq!(reason(TOPIC, &b), RejectReason::Malformed);

        let mut b = good.clone();
        b.channels[0].values.pop();
        assert_eq!(reason(TOPIC, &b), RejectReason::Malformed);

        let mut b = good.clone();
        b.channels.push(b.channels[0].clone());
        assert_eq!(reason(TOPIC, &b), RejectReason::Malformed);

        let mut b = good.clone();
        b.channels[0].values[4] = f32::NAN;
        let nan = check(TOPIC, &b.encode_to_vec(), limits()).unwrap_err();
        assert_eq!(nan.reason, RejectReason::OutOfRange);
        assert!(nan.detail.contains("sample 4"), "{nan}");

        let mut b = good.clone();
        b.base_ts_us = NOW_US + 2 * 86_400_000_000;
        assert_eq!(reason(TOPIC, &b), RejectReason::OutOfRange);

        let mut b = good;
        b.base_ts_us = 0;
        assert_eq!(reason(TOPIC, &b), RejectReason::OutOfRange);
    }

    fn with_parts() -> TelemetryBatch {
        let mut b = good_batch();
        b.sealed_ts_us = NOW_US + 20_000;
        b.inferences = (0..3)
            .map(|i| InferenceResult {
                window_start_us: NOW_US + i * 1000,
                window_end_us: NOW_US + i * 1000 + 999,
                score: 0.25 * i as f32,
                anomaly: i == 2,
                model_version: "m1".into(),
                latency_us: 700,
            })
            .collect();
        b.health = Some(DeviceHealth {
            ts_us: NOW_US + 10_000,
            npu_utilisation: 0.5,
            npu_temperature_c: 61.0,
            npu_power_w: 2.5,
            spool_pending: 4,
            ..Default::default()
        });
        b.sim_labels = vec![SimLabel {
            start_us: NOW_US,
            end_us: NOW_US + 10_000,
            fault: "imbalance".into(),
            severity: 0.3,
            sensor: String::new(),
        }];
        b
    }

    fn accept(b: &TelemetryBatch) -> Accepted {
        check(TOPIC, &b.encode_to_vec(), limits()).unwrap()
    }

    #[test]
    fn good_parts_pass_untouched() {
        let b = with_parts();
        let accepted = accept(&b);
        assert!(accepted.dropped.is_empty(), "{:?}", accepted.dropped);
        assert_eq!(accepted.batch, b);
    }

    #[test]
    fn a_bad_part_is_dropped_and_the_samples_kept() {
        let mut b = with_parts();
        b.inferences[1].score = f32::NAN;
        b.health.as_mut().unwrap().npu_temperature_c = f32::INFINITY;
        b.sim_labels[0].end_us = b.sim_labels[0].start_us;
        let accepted = accept(&b);
        assert_eq!(accepted.samples, 10);
        assert_eq!(accepted.batch.channels, b.channels);
        assert_eq!(
            accepted
                .batch
                .inferences
                .iter()
                .map(|r| r.window_start_us)
                .collect::<Vec<_>>(),
            vec![NOW_US, NOW_US + 2000]
        );
        assert_eq!(accepted.batch.health, None);
        assert!(accepted.batch.sim_labels.is_empty());
        let summary: Vec<(&str, usize)> =
            accepted.dropped.iter().map(|d| (d.table, d.rows)).collect();
        assert_eq!(
            summary,
            vec![("inference", 1), ("device_health", 1), ("sim_labels", 1)]
        );
        assert!(
            accepted.dropped[0]
                .detail
                .contains("inference 1: score is NaN"),
            "{:?}",
            accepted.dropped[0]
        );
        assert!(
            accepted.dropped[1]
                .detail
                .contains("npu_temperature_c is inf"),
            "{:?}",
            accepted.dropped[1]
        );
        assert!(
            accepted.dropped[2].detail.starts_with(TOPIC),
            "{:?}",
            accepted.dropped[2]
        );
    }

    #[test]
    fn each_part_rule() {
        let dropped_tables = |b: &TelemetryBatch| -> Vec<&'static str> {
            accept(b).dropped.iter().map(|d| d.table).collect()
        };
        let mut b = with_parts();
        b.inferences[0].window_start_us = b.inferences[0].window_end_us + 1;
        assert_eq!(dropped_tables(&b), vec!["inference"]);
        let mut b = with_parts();
        b.inferences[2].window_end_us = NOW_US + 3 * 86_400_000_000;
        assert_eq!(dropped_tables(&b), vec!["inference"]);

        let mut b = with_parts();
        b.health.as_mut().unwrap().npu_utilisation = 1.5;
        assert_eq!(dropped_tables(&b), vec!["device_health"]);
        let mut b = with_parts();
        b.health.as_mut().unwrap().npu_power_w = -1.0;
        assert_eq!(dropped_tables(&b), vec!["device_health"]);
        let mut b = with_parts();
        b.health.as_mut().unwrap().spool_bytes = u64::MAX;
        let accepted = accept(&b);
        assert!(
            accepted.dropped[0].detail.contains("spool_bytes"),
            "{:?}",
            accepted.dropped
        );

        let mut b = with_parts();
        b.sim_labels[0].severity = 2.0;
        assert_eq!(dropped_tables(&b), vec!["sim_labels"]);
        let mut b = with_parts();
        b.sim_labels[0].fault.clear();
        assert_eq!(dropped_tables(&b), vec!["sim_labels"]);
        let mut b = with_parts();
        b.sim_labels[0].start_us = 0;
        assert_eq!(dropped_tables(&b), vec!["sim_labels"]);
    }

    #[test]
    fn an_unstamped_health_snapshot_takes_the_seal_time() {
        let mut b = with_parts();
        b.health.as_mut().unwrap().ts_us = 0;
        let accepted = accept(&b);
        assert!(accepted.dropped.is_empty());
        assert_eq!(accepted.batch.health.unwrap().ts_us, NOW_US + 20_000);

        b.sealed_ts_us = 0;
        b.health.as_mut().unwrap().ts_us = 0;
        assert_eq!(accept(&b).dropped[0].table, "device_health");
    }

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
