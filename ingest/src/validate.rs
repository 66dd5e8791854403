//! Decoding and checking one MQTT message before anything of it reaches the lake.
//!
//! Every message either becomes an [`Accepted`] batch whose columns were all checked, or a
//! [`Rejection`] with a [`RejectReason`] and a detail naming what was wrong. Nothing here does
//! I/O or keeps state, so the rules are tested without a broker.

use std::fmt;

use loopline_proto::Message;
use loopline_proto::pack::PackError;
use loopline_proto::topic::{self, Kind};
use loopline_proto::v1::{SCHEMA_VERSION, TelemetryBatch};

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
    pub batch: TelemetryBatch,
    /// Samples over all channels.
    pub samples: usize,
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
    Ok(Accepted { batch, samples })
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

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
