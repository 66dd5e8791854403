//! Where the broker is, and how a Loopline client connects to it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Largest MQTT packet a Loopline client sends or accepts. A telemetry batch of a few seconds
/// at kHz rates is hundreds of KiB; rumqttc's default (10 KiB) would refuse it.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// A broker address: `mqtt://host:port` (or `tcp://`, or bare `host:port`). The port defaults
/// to 1883.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerUrl {
            host: host.into(),
            port,
        }
    }

    /// MQTT 3.1.1 options for a client of this broker with the settings every Loopline
    /// client shares (packet size, keep-alive).
    pub fn mqtt_options(&self, client_id: &str, keep_alive: Duration) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(keep_alive);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        options
    }
}

impl FromStr for BrokerUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BrokerUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some(("mqtts" | "ssl", _)) => {
                return Err(bad(
                    "TLS brokers are not supported by this build; use mqtt://",
                ));
            }
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "unknown scheme {scheme:?} (expected mqtt://host:port)"
                )));
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("a broker address has no path"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            // [::1]:1883
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after ']'")),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("port {port:?} is not a number from 1 to 65535")))?,
            None => 1883,
        };
        Ok(BrokerUrl::new(host, port))
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for BrokerUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let cases = [
            ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884),
            ("tcp://broker.local", "broker.local", 1883),
            ("localhost:2000", "localhost", 2000),
            ("mqtt://[::1]:1999/", "::1", 1999),
            ("[::1]", "::1", 1883),
        ];
        for (text, host, port) in cases {
            let url: BrokerUrl = text.parse().unwrap();
            assert_eq!((url.host.as_str(), url.port), (host, port), "{text}");
        }
        assert_eq!(
            "[::1]:7".parse::<BrokerUrl>().unwrap().to_string(),
            "mqtt://[::1]:7"
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        for (text, needle) in [
            ("http://x:1", "unknown scheme \"http\""),
            ("mqtt://x:0", "port \"0\""),
            ("mqtt://x:99999", "port \"99999\""),
            ("mqtt://:1883", "host is empty"),
            ("mqtt://x:1/topic", "no path"),
            ("mqtts://x:8883", "TLS"),
        ] {
            let err = text.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }
}
