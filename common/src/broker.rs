//! Where the broker is, and how a Loopline client connects to it.
//!
//! Design invariants: a password never reaches a log line (`Display` and `Debug` redact it, and
//! so do parse errors), and an `mqtts://` address never yields a plain-TCP connection.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tls::TlsConfig;
use crate::{Error, Result};

/// Largest MQTT packet a Loopline client sends or accepts. A telemetry batch of a few seconds
/// at kHz rates is hundreds of KiB; rumqttc's default (10 KiB) would refuse it.
pub const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Whether the connection to the broker is plain TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `mqtt://` (or `tcp://`): plain TCP, port 1883 by default.
    Mqtt,
    /// `mqtts://` (or `ssl://`): TLS, port 8883 by default.
    Mqtts,
}

impl Scheme {
    /// The port used when the address leaves it out.
    pub const fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
        }
    }
}

/// Username and password for the broker. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// May be empty: MQTT allows a username alone.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

/// What `Display` and `Debug` show instead of a password.
const REDACTED: &str = "***";

/// A broker address: `mqtt://host:port` (or `tcp://`, or bare `host:port`), `mqtts://host:port`
/// (or `ssl://`) for TLS, optionally with `user:password@` before the host (percent-encode
/// `@`, `:` and `%` in them). The port defaults to 1883, or 8883 with TLS.
///
/// `Display` (used in every log line) shows the password as `***`; `Serialize` writes it, so
/// that a printed configuration loads back the same.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

impl BrokerUrl {
    /// A plain `mqtt://` broker without credentials.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerUrl {
            scheme: Scheme::Mqtt,
            host: host.into(),
            port,
            credentials: None,
        }
    }

    /// An `mqtts://` broker without credentials.
    pub fn new_tls(host: impl Into<String>, port: u16) -> Self {
        BrokerUrl {
            scheme: Scheme::Mqtts,
            ..BrokerUrl::new(host, port)
        }
    }

    /// The same broker, logging in with these credentials.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// True for `mqtts://`.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Mqtts
    }

    /// MQTT 3.1.1 options for a client of this broker with the settings every Loopline
    /// client shares (packet size, keep-alive, credentials).
    ///
    /// Meant for `mqtt://`. For `mqtts://` it cannot read CA files, so it sets up TLS that
    /// trusts no certificate and every connection is refused: use [`Self::mqtt_options_tls`],
    /// which never downgrades to plain TCP either.
    pub fn mqtt_options(&self, client_id: &str, keep_alive: Duration) -> rumqttc::MqttOptions {
        let mut options = rumqttc::MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(keep_alive);
        options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(credentials) = &self.credentials {
            options.set_credentials(credentials.username.clone(), credentials.password.clone());
        }
        if self.is_tls() {
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
            match config {
                Ok(config) => {
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
                    ));
                }
                // The ring provider supports the default versions; should that ever change,
                // an unresolvable host (RFC 6761 `.invalid`) still keeps the client off plain
                // TCP.
                Err(e) => {
                    tracing::error!(broker = %self, error = %e, "no TLS client configuration; this client cannot connect");
                    let mut refused =
                        rumqttc::MqttOptions::new(client_id, "tls-unavailable.invalid", self.port);
                    refused.set_keep_alive(keep_alive);
                    options = refused;
                }
            }
        }
        options
    }

    /// MQTT 3.1.1 options like [`Self::mqtt_options`], with TLS set up from `tls` for
    /// `mqtts://`: the CA bundle to trust and, optionally, a client certificate and key.
    ///
    /// For `mqtt://` with an empty `tls` the options equal [`Self::mqtt_options`]'s; `mqtt://`
    /// with any TLS file set is an error (the files would be silently unused). Errors name the
    /// config key and the file, or the broker.
    pub fn mqtt_options_tls(
        &self,
        client_id: &str,
        keep_alive: Duration,
        tls: &TlsConfig,
    ) -> Result<rumqttc::MqttOptions> {
        match self.scheme {
            Scheme::Mqtt if tls.is_empty() => Ok(self.mqtt_options(client_id, keep_alive)),
            Scheme::Mqtt => Err(Error::Tls {
                broker: self.to_string(),
                reason: format!(
                    "{} set, but the broker address is plain MQTT; use mqtts:// to connect with TLS",
                    tls.keys_set().join(" and ")
                ),
            }),
            Scheme::Mqtts => {
                let config = tls.client_config(&self.to_string())?;
                let mut options =
                    rumqttc::MqttOptions::new(client_id, self.host.clone(), self.port);
                options.set_keep_alive(keep_alive);
                options.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
                if let Some(credentials) = &self.credentials {
                    options.set_credentials(
                        credentials.username.clone(),
                        credentials.password.clone(),
                    );
                }
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(config),
                ));
                Ok(options)
            }
        }
    }

    /// MQTT 5 options for a client of this broker, with TLS from `tls` exactly as
    /// [`Self::mqtt_options_tls`] sets it up (the same checks, the same errors). Ingest needs
    /// MQTT 5 for its session expiry, receive maximum and shared subscriptions.
    pub fn mqtt5_options_tls(
        &self,
        client_id: &str,
        keep_alive: Duration,
        tls: &TlsConfig,
    ) -> Result<rumqttc::v5::MqttOptions> {
        let transport = match self.scheme {
            Scheme::Mqtt if tls.is_empty() => None,
            Scheme::Mqtt => {
                return Err(Error::Tls {
                    broker: self.to_string(),
                    reason: format!(
                        "{} set, but the broker address is plain MQTT; use mqtts:// to connect with TLS",
                        tls.keys_set().join(" and ")
                    ),
                });
            }
            Scheme::Mqtts => Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.client_config(&self.to_string())?),
            )),
        };
        let mut options = rumqttc::v5::MqttOptions::new(client_id, self.host.clone(), self.port);
        options.set_keep_alive(keep_alive);
        let max = u32::try_from(MAX_PACKET_BYTES).unwrap_or(u32::MAX);
        options.set_max_packet_size(Some(max));
        if let Some(credentials) = &self.credentials {
            options.set_credentials(credentials.username.clone(), credentials.password.clone());
        }
        if let Some(transport) = transport {
            options.set_transport(transport);
        }
        Ok(options)
    }

    /// Writes the address, the password either as is or as `***`.
    fn write(&self, f: &mut fmt::Formatter<'_>, redact: bool) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(credentials) = &self.credentials {
            f.write_str(&percent_encode(&credentials.username))?;
            if redact {
                write!(f, ":{REDACTED}")?;
            } else if !credentials.password.is_empty() {
                write!(f, ":{}", percent_encode(&credentials.password))?;
            }
            f.write_str("@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<Self> {
        // Errors quote the address without its password.
        let shown = redact_password(url);
        let bad = |reason: &str| Error::BrokerUrl {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (Scheme::Mqtt, rest),
            Some(("mqtts" | "ssl", rest)) => (Scheme::Mqtts, rest),
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "unknown scheme {scheme:?} (expected mqtt://host:port or mqtts://host:port)"
                )));
            }
            None => (Scheme::Mqtt, url),
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let username =
                    percent_decode(user).ok_or_else(|| bad("the username has a bad %-escape"))?;
                if username.is_empty() {
                    return Err(bad("the username before '@' is empty"));
                }
                let password = percent_decode(password)
                    .ok_or_else(|| bad("the password has a bad %-escape"))?;
                (Some(Credentials { username, password }), host)
            }
            None => (None, rest),
        };
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
            None => scheme.default_port(),
        };
        Ok(BrokerUrl {
            scheme,
            host: host.to_owned(),
            port,
            credentials,
        })
    }
}

/// Shows the password as `***`.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

/// Same as `Display`: debug output ends up in logs too.
impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

/// The address as given, password included (see [`BrokerUrl`]).
struct Unredacted<'a>(&'a BrokerUrl);

impl fmt::Display for Unredacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f, false)
    }
}

/// `url` with whatever sits between the first ':' after the scheme and the last '@' replaced
/// by `***`, for error messages about an address that did not parse.
fn redact_password(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{prefix}{user}:{REDACTED}@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Serialize for BrokerUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Unredacted(self))
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
            ("mqtts://:8883", "host is empty"),
            ("mqtt://@x:1", "username before '@' is empty"),
            ("mqtt://u%4@x:1", "bad %-escape"),
        ] {
            let err = text.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn tls_scheme_and_default_ports() {
        let url: BrokerUrl = "mqtts://broker.local".parse().unwrap();
        assert_eq!(url, BrokerUrl::new_tls("broker.local", 8883));
        assert!(url.is_tls());
        assert_eq!(url.to_string(), "mqtts://broker.local:8883");
        let url: BrokerUrl = "ssl://[::1]:9".parse().unwrap();
        assert_eq!((url.scheme, url.port), (Scheme::Mqtts, 9));
        assert_eq!("broker".parse::<BrokerUrl>().unwrap().port, 1883);
    }

    #[test]
    fn credentials_parse_and_never_show_the_password() {
        let url: BrokerUrl = "mqtts://agent-7:s%40cr%3At@broker:8884".parse().unwrap();
        assert_eq!(
            url,
            BrokerUrl::new_tls("broker", 8884).with_credentials("agent-7", "s@cr:t")
        );
        assert_eq!(url.to_string(), "mqtts://agent-7:***@broker:8884");
        assert_eq!(format!("{url:?}"), "mqtts://agent-7:***@broker:8884");
        let creds = format!("{:?}", url.credentials.as_ref().unwrap());
        assert!(!creds.contains("s@cr"), "{creds}");

        // An unencoded '@' in the password still parses: the host follows the last '@'.
        let url: BrokerUrl = "mqtt://u:a@b@h".parse().unwrap();
        assert_eq!(url.credentials.unwrap().password, "a@b");
        let url: BrokerUrl = "mqtt://only-user@h:1".parse().unwrap();
        assert_eq!(url.to_string(), "mqtt://only-user:***@h:1");
        assert_eq!(url.credentials.as_ref().unwrap().password, "");

        let err = "mqtt://u:hunter2@h:99999"
            .parse::<BrokerUrl>()
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("mqtt://u:***@h:99999"), "{err}");
    }

    #[test]
    fn serializes_with_the_password_so_a_printed_config_loads_back() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder {
            broker: BrokerUrl,
        }
        for text in [
            "mqtts://u:p%20w%2Fd@h:1",
            "mqtt://h:1883",
            "mqtt://u@[::1]:2",
        ] {
            let holder = Holder {
                broker: text.parse().unwrap(),
            };
            let toml = toml::to_string(&holder).unwrap();
            assert_eq!(toml, format!("broker = \"{text}\"\n"));
            assert_eq!(toml::from_str::<Holder>(&toml).unwrap(), holder);
        }
    }

    #[test]
    fn plain_options_carry_credentials_and_keep_alive() {
        let url: BrokerUrl = "mqtt://u:p@h:1884".parse().unwrap();
        let options = url.mqtt_options("c", Duration::from_secs(7));
        assert_eq!(options.broker_address(), ("h".to_owned(), 1884));
        assert_eq!(options.keep_alive(), Duration::from_secs(7));
        let login = options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
        assert!(matches!(options.transport(), rumqttc::Transport::Tcp));
        let tls = BrokerUrl::new_tls("h", 8883).mqtt_options("c", Duration::from_secs(7));
        assert!(matches!(tls.transport(), rumqttc::Transport::Tls(_)));
    }

    #[test]
    fn tls_options_refuse_mixed_or_incomplete_settings() {
        let keep_alive = Duration::from_secs(5);
        let plain = BrokerUrl::new("h", 1883);
        let options = plain
            .mqtt_options_tls("c", keep_alive, &TlsConfig::default())
            .unwrap();
        assert!(matches!(options.transport(), rumqttc::Transport::Tcp));
        assert_eq!(options.broker_address(), ("h".to_owned(), 1883));

        let with_ca = TlsConfig {
            ca_file: Some("/etc/loopline/ca.pem".into()),
            ..TlsConfig::default()
        };
        let err = plain
            .mqtt_options_tls("c", keep_alive, &with_ca)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca_file set"), "{err}");
        assert!(err.contains("use mqtts://"), "{err}");

        let secure = BrokerUrl::new_tls("h", 8883);
        let err = secure
            .mqtt_options_tls("c", keep_alive, &TlsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs ca_file"), "{err}");
        assert!(err.contains("mqtts://h:8883"), "{err}");

        let err = secure
            .mqtt_options_tls("c", keep_alive, &with_ca)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ca_file /etc/loopline/ca.pem: "), "{err}");
    }
}
