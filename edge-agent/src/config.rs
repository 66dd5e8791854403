//! The agent's configuration: one serde struct, its defaults, and the checks run once at
//! start-up.
//!
//! Precedence is defaults < config file < `LOOPLINE_AGENT_*` environment < flags. The file is
//! read here; environment and flags come through [`crate::cli`], which applies them over the
//! file's values. After [`AgentConfig::validate`] no later code re-checks a value.

use std::collections::HashSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;
use loopline_proto::v1::DeviceId;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shortest accepted `batch_interval`: below it the per-message overhead dominates and the
/// broker sees a message storm rather than batches.
pub const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);

const DEFAULT_SAMPLE_RATE_HZ: NonZeroU32 = match NonZeroU32::new(1000) {
    Some(rate) => rate,
    None => panic!("the default sample rate is not zero"),
};

const DEFAULT_BUFFER_BATCHES: NonZeroUsize = match NonZeroUsize::new(300) {
    Some(n) => n,
    None => panic!("the default buffer is not zero"),
};

/// Everything the agent can be told. Every key of `agent.example.toml` maps to one field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// MQTT broker, `mqtt://host:port` (port 1883 when left out).
    pub broker: BrokerUrl,
    /// Site identity segment of every topic and payload (`[A-Za-z0-9_.-]`, 1 to 64 bytes).
    pub site: String,
    /// Production line identity segment, same rules as `site`.
    pub line: String,
    /// Devices this agent simulates and publishes for; each gets its own MQTT connection,
    /// Last Will and `boot_id`. Names follow the `site` rules and must be unique.
    pub devices: Vec<String>,
    /// Samples per second of each sensor (every device has four sensors).
    pub sample_rate_hz: NonZeroU32,
    /// How often a device seals the samples taken so far into one `TelemetryBatch`.
    #[serde(with = "loopline_common::duration")]
    pub batch_interval: Duration,
    /// Seed of the signal generators: the same seed and device name give the same values.
    pub seed: u64,
    /// 0: run until SIGINT/SIGTERM. N > 0: every device seals exactly N batches, waits for
    /// their acknowledgements (at most `drain_timeout`), and the agent exits.
    pub batches: u64,
    /// MQTT keep-alive: how long a silent connection lives before the broker (and the agent)
    /// consider it dead and the broker publishes the device's Last Will.
    #[serde(with = "loopline_common::duration")]
    pub keep_alive: Duration,
    /// MQTT client ids are `{client_id_prefix}-{site}-{line}-{device}`.
    pub client_id_prefix: String,
    /// At shutdown, how long to wait for the broker to acknowledge batches already sealed.
    /// What is still unacknowledged after it is counted as lost.
    #[serde(with = "loopline_common::duration")]
    pub drain_timeout: Duration,
    /// Model version reported in batches and status (no model runs in this version).
    pub model_version: String,
    /// Log lines as `human` text or `json` objects (stderr). `RUST_LOG` sets the filter.
    pub log_format: LogFormat,
    /// Where to write a JSON report of what was sealed, acknowledged and lost, at exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_file: Option<PathBuf>,
    /// Sealed batches a device holds in memory until the broker acknowledges them (handed to
    /// the MQTT client or waiting). When full, the oldest batch not yet handed over is dropped
    /// and counted lost: the sensors do not wait for the network.
    pub buffer_batches: NonZeroUsize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            broker: BrokerUrl::new("127.0.0.1", 1883),
            site: "site-1".to_owned(),
            line: "line-1".to_owned(),
            devices: vec!["dev-1".to_owned()],
            sample_rate_hz: DEFAULT_SAMPLE_RATE_HZ,
            batch_interval: Duration::from_secs(1),
            seed: 1,
            batches: 0,
            keep_alive: Duration::from_secs(15),
            client_id_prefix: "loopline-agent".to_owned(),
            drain_timeout: Duration::from_secs(10),
            model_version: "none".to_owned(),
            log_format: LogFormat::Human,
            report_file: None,
            buffer_batches: DEFAULT_BUFFER_BATCHES,
        }
    }
}

impl AgentConfig {
    /// Reads a TOML file; keys it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        Ok(loopline_common::config::load_toml(path)?)
    }

    /// Parses TOML text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig> {
        Ok(loopline_common::config::parse_toml(path, text)?)
    }

    /// The effective configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config {
            key: "(all)",
            reason: format!("cannot be written as TOML: {e}"),
        })
    }

    /// Checks every value once, at start-up, and returns the device identities in the order
    /// given. Each error names the key that is wrong.
    pub fn validate(&self) -> Result<Vec<DeviceId>> {
        let bad = |key: &'static str, reason: String| Error::Config { key, reason };
        loopline_proto::topic::validate_segment("site", &self.site)
            .map_err(|e| bad("site", e.to_string()))?;
        loopline_proto::topic::validate_segment("line", &self.line)
            .map_err(|e| bad("line", e.to_string()))?;
        if self.devices.is_empty() {
            return Err(bad("devices", "at least one device is needed".to_owned()));
        }
        let mut seen = HashSet::new();
        let mut ids = Vec::with_capacity(self.devices.len());
        for device in &self.devices {
            if !seen.insert(device.as_str()) {
                return Err(bad("devices", format!("{device:?} is listed twice")));
            }
            let id = DeviceId::checked(&self.site, &self.line, device)
                .map_err(|e| bad("devices", e.to_string()))?;
            ids.push(id);
        }
        if self.batch_interval < MIN_BATCH_INTERVAL {
            return Err(bad(
                "batch_interval",
                format!(
                    "{} is shorter than the minimum of {}",
                    loopline_common::duration::format(self.batch_interval),
                    loopline_common::duration::format(MIN_BATCH_INTERVAL)
                ),
            ));
        }
        if self.samples_per_interval() < 1 {
            return Err(bad(
                "sample_rate_hz",
                format!(
                    "{} Hz gives no sample in a batch_interval of {}; raise the rate or the interval",
                    self.sample_rate_hz,
                    loopline_common::duration::format(self.batch_interval)
                ),
            ));
        }
        if self.keep_alive < Duration::from_secs(1) || self.keep_alive.as_secs() > 65_535 {
            return Err(bad(
                "keep_alive",
                "must be from 1s to 65535s (MQTT counts it in whole seconds, in 16 bits)"
                    .to_owned(),
            ));
        }
        // Client ids follow the identity rules too: every broker accepts them.
        loopline_proto::topic::validate_segment("client_id_prefix", &self.client_id_prefix)
            .map_err(|e| bad("client_id_prefix", e.to_string()))?;
        if self.model_version.is_empty() {
            return Err(bad(
                "model_version",
                "must not be empty (\"none\" when no model runs)".to_owned(),
            ));
        }
        Ok(ids)
    }

    /// Whole samples per sensor in one `batch_interval` (rounded down).
    pub fn samples_per_interval(&self) -> u128 {
        u128::from(self.sample_rate_hz.get()) * self.batch_interval.as_micros() / 1_000_000
    }

    /// MQTT client id of one device's connection.
    pub fn client_id(&self, device: &DeviceId) -> String {
        format!(
            "{}-{}-{}-{}",
            self.client_id_prefix, device.site, device.line, device.device
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml")
    }

    #[test]
    fn shipped_example_loads_and_validates() {
        let config = AgentConfig::load(&example_path()).unwrap();
        config.validate().unwrap();
        // The example documents the defaults; keep the two in step.
        let expected = AgentConfig {
            report_file: config.report_file.clone(),
            ..AgentConfig::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn example_names_every_key() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let config = AgentConfig {
            report_file: Some(PathBuf::from("x")),
            ..AgentConfig::default()
        };
        let value = toml::Value::try_from(&config).unwrap();
        let table = value.as_table().unwrap();
        for key in table.keys() {
            let commented = format!("# {key} =");
            let set = format!("\n{key} =");
            assert!(
                text.contains(&commented) || text.contains(&set),
                "agent.example.toml does not document {key}"
            );
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = AgentConfig::parse(Path::new("agent.toml"), "site = \"a\"\nsamplerate = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent.toml"), "{err}");
        assert!(err.contains("samplerate"), "{err}");
    }

    #[test]
    fn partial_file_keeps_defaults() {
        let config = AgentConfig::parse(
            Path::new("agent.toml"),
            "devices = [\"a\", \"b\"]\nbatch_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(config.devices, ["a", "b"]);
        assert_eq!(config.batch_interval, Duration::from_millis(250));
        assert_eq!(config.site, "site-1");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Breaks = fn(&mut AgentConfig);
        let cases: [(&str, Breaks); 10] = [
            ("site", |c| c.site = "a/b".into()),
            ("line", |c| c.line = String::new()),
            ("devices", |c| c.devices.clear()),
            ("devices", |c| c.devices = vec!["a".into(), "a".into()]),
            ("devices", |c| c.devices = vec!["#".into()]),
            ("batch_interval", |c| {
                c.batch_interval = Duration::from_millis(5)
            }),
            ("sample_rate_hz", |c| {
                c.sample_rate_hz = NonZeroU32::MIN;
                c.batch_interval = Duration::from_millis(500);
            }),
            ("keep_alive", |c| c.keep_alive = Duration::from_millis(10)),
            ("keep_alive", |c| c.keep_alive = Duration::from_secs(70_000)),
            ("client_id_prefix", |c| c.client_id_prefix = " agent".into()),
        ];
        for (key, breaks) in cases {
            let mut config = AgentConfig::default();
            breaks(&mut config);
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config key {key}:")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn toml_round_trips() {
        let mut config = AgentConfig {
            devices: vec!["x".into(), "y".into()],
            batch_interval: Duration::from_millis(250),
            ..AgentConfig::default()
        };
        config.report_file = Some(PathBuf::from("/tmp/report.json"));
        let text = config.to_toml().unwrap();
        assert_eq!(AgentConfig::parse(Path::new("t"), &text).unwrap(), config);
    }
}
