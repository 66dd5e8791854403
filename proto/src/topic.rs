//! Topic namespace of the wire contract: `loopline/v1/{site}/{line}/{device}/{kind}`.
//!
//! Identity segments (site, line, device) are restricted to `[A-Za-z0-9_.-]`, 1 to 64 bytes,
//! not starting with `.`. That keeps them free of MQTT wildcards and separators, and makes
//! them safe as directory names in the lake, where site and line become Hive partitions.

use std::fmt;

use crate::v1::DeviceId;

/// First two levels of every Loopline topic.
pub const NAMESPACE: &str = "loopline/v1";

/// Subscription filter for every device's telemetry.
pub const TELEMETRY_FILTER: &str = "loopline/v1/+/+/+/telemetry";

/// Subscription filter for every device's status.
pub const STATUS_FILTER: &str = "loopline/v1/+/+/+/status";

/// Subscription filter for every device's model report.
pub const MODEL_REPORT_FILTER: &str = "loopline/v1/+/+/+/model/report";

/// Longest identity segment accepted, in bytes.
pub const MAX_SEGMENT_LEN: usize = 64;

/// The last level of a device topic: what the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `TelemetryBatch`, agent → ingest, QoS 1, not retained.
    Telemetry,
    /// `DeviceStatus`, retained; also the agent's Last Will.
    Status,
    /// `ModelRelease` for this one device (a canary), dispatch → agent, retained.
    Model,
    /// `ModelReport`, agent → dispatch, retained (`.../{device}/model/report`).
    ModelReport,
}

impl Kind {
    /// The topic level that names this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Status => "status",
            Kind::Model => "model",
            Kind::ModelReport => "model/report",
        }
    }

    fn parse(levels: &str) -> Option<Kind> {
        match levels {
            "telemetry" => Some(Kind::Telemetry),
            "status" => Some(Kind::Status),
            "model" => Some(Kind::Model),
            "model/report" => Some(Kind::ModelReport),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a topic or an identity segment is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?} is not under {NAMESPACE}/{{site}}/{{line}}/{{device}}/{{kind}}")]
    NotLoopline { topic: String },
    #[error(
        "topic {topic:?} ends in unknown kind {kind:?} (expected telemetry, status, model or model/report)"
    )]
    UnknownKind { topic: String, kind: String },
    #[error("{what} {value:?} is not a valid identity segment: {reason}")]
    BadSegment {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Checks one identity segment (`what` names it in the error: "site", "line", "device").
pub fn validate_segment(what: &'static str, value: &str) -> Result<(), TopicError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > MAX_SEGMENT_LEN {
        Some("it is longer than 64 bytes")
    } else if value.starts_with('.') {
        Some("it starts with '.'")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only ASCII letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(TopicError::BadSegment {
            what,
            value: value.to_owned(),
            reason,
        }),
    }
}

impl DeviceId {
    /// Builds an identity, checking every segment.
    pub fn checked(site: &str, line: &str, device: &str) -> Result<DeviceId, TopicError> {
        validate_segment("site", site)?;
        validate_segment("line", line)?;
        validate_segment("device", device)?;
        Ok(DeviceId {
            site: site.to_owned(),
            line: line.to_owned(),
            device: device.to_owned(),
        })
    }

    /// Checks every segment of an identity that arrived from elsewhere.
    pub fn validate(&self) -> Result<(), TopicError> {
        validate_segment("site", &self.site)?;
        validate_segment("line", &self.line)?;
        validate_segment("device", &self.device)
    }

    /// The topic this device publishes `kind` on.
    pub fn topic(&self, kind: Kind) -> String {
        format!(
            "{NAMESPACE}/{}/{}/{}/{kind}",
            self.site, self.line, self.device
        )
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.site, self.line, self.device)
    }
}

/// `loopline/v1/{site}/{line}/model`: the retained model release for every device of a line.
pub fn line_model_topic(site: &str, line: &str) -> String {
    format!("{NAMESPACE}/{site}/{line}/model")
}

/// `$share/{group}/loopline/v1/+/+/+/telemetry`: one MQTT shared subscription that several
/// ingest processes split between them.
pub fn shared_telemetry_filter(group: &str) -> String {
    format!("$share/{group}/{TELEMETRY_FILTER}")
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopic {
    pub device: DeviceId,
    pub kind: Kind,
}

/// Parses `loopline/v1/{site}/{line}/{device}/{kind}`, checking every identity segment.
///
/// ```
/// use loopline_proto::topic::{self, Kind};
/// use loopline_proto::v1::DeviceId;
///
/// let id = DeviceId::checked("plant-1", "line-1", "press-7")?;
/// let text = id.topic(Kind::Telemetry);
/// assert_eq!(text, "loopline/v1/plant-1/line-1/press-7/telemetry");
/// assert_eq!(topic::parse(&text)?.device, id);
/// assert!(topic::parse("loopline/v1/plant-1/../press-7/telemetry").is_err());
/// # Ok::<(), loopline_proto::topic::TopicError>(())
/// ```
pub fn parse(topic: &str) -> Result<DeviceTopic, TopicError> {
    let not_ours = || TopicError::NotLoopline {
        topic: topic.to_owned(),
    };
    let rest = topic
        .strip_prefix(NAMESPACE)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(not_ours)?;
    let mut levels = rest.splitn(4, '/');
    let (Some(site), Some(line), Some(device), Some(kind)) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return Err(not_ours());
    };
    if kind.is_empty() || (kind.contains('/') && Kind::parse(kind).is_none()) {
        return Err(not_ours());
    }
    let device = DeviceId::checked(site, line, device)?;
    let kind = Kind::parse(kind).ok_or_else(|| TopicError::UnknownKind {
        topic: topic.to_owned(),
        kind: kind.to_owned(),
    })?;
    Ok(DeviceTopic { device, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses_back() {
        let id = DeviceId::checked("plant-1", "line_a", "press.07").unwrap();
        let topic = id.topic(Kind::Telemetry);
        assert_eq!(topic, "loopline/v1/plant-1/line_a/press.07/telemetry");
        let parsed = parse(&topic).unwrap();
        assert_eq!(parsed.device, id);
        assert_eq!(parsed.kind, Kind::Telemetry);
        assert_eq!(parse(&id.topic(Kind::Status)).unwrap().kind, Kind::Status);
        let report = id.topic(Kind::ModelReport);
        assert_eq!(report, "loopline/v1/plant-1/line_a/press.07/model/report");
        assert_eq!(parse(&report).unwrap().kind, Kind::ModelReport);
        assert_eq!(parse(&id.topic(Kind::Model)).unwrap().kind, Kind::Model);
        assert_eq!(
            line_model_topic("plant-1", "line_a"),
            "loopline/v1/plant-1/line_a/model"
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        for topic in [
            "loopline/v2/s/l/d/telemetry",
            "loopline/v1/s/l/telemetry",
            "loopline/v1/s/l/d/telemetry/extra",
            "spBv1.0/g/DDATA/n/d",
            "loopline/v1",
        ] {
            assert!(
                matches!(parse(topic), Err(TopicError::NotLoopline { .. })),
                "{topic}"
            );
        }
        assert!(matches!(
            parse("loopline/v1/s/l/d/nonsense"),
            Err(TopicError::UnknownKind { .. })
        ));
        let err = parse("loopline/v1/s/../d/telemetry").unwrap_err();
        assert!(err.to_string().contains("line \"..\""), "{err}");
    }

    #[test]
    fn segment_rules() {
        for bad in ["", ".hidden", "a b", "a+b", "a#", "ü", &"x".repeat(65)] {
            assert!(validate_segment("device", bad).is_err(), "{bad:?}");
        }
        for good in ["a", "A-1", "x_y.z", &"x".repeat(64)] {
            validate_segment("device", good).unwrap();
        }
    }

    #[test]
    fn shared_filter() {
        assert_eq!(
            shared_telemetry_filter("loopline-ingest"),
            "$share/loopline-ingest/loopline/v1/+/+/+/telemetry"
        );
    }

    proptest! {
        #[test]
        fn any_valid_identity_round_trips(
            site in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
            line in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
            device in "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}",
        ) {
            let id = DeviceId::checked(&site, &line, &device).unwrap();
            let parsed = parse(&id.topic(Kind::Telemetry)).unwrap();
            prop_assert_eq!(parsed.device, id);
        }
    }
}
