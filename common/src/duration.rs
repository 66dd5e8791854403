//! Durations as people write them (`"30s"`, `"1m 30s"`, `"250ms"`), for serde and clap.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a human-readable duration; for clap's `value_parser`.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 30s, 250ms, 2m"))
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// `#[serde(with = "loopline_common::duration")]`
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// `#[serde(with = "loopline_common::duration")]`
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["30s", "250ms", "1m 30s"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&format(d)).unwrap(), d);
        }
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse("soon").unwrap_err().contains("\"soon\""));
    }
}
