//! The agent's configuration: one serde struct, its defaults, and the checks run once at
//! start-up.
//!
//! Precedence is defaults < config file < `LOOPLINE_AGENT_*` environment < flags. The file is
//! read here; environment and flags come through [`crate::cli`], which applies them over the
//! file's values. After [`AgentConfig::validate`] no later code re-checks a value.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;
use loopline_common::tls::TlsConfig;
use loopline_linesim::Scenario;
use loopline_model::release::VerifyingKey;
use loopline_npusim::{FaultSchedule, Profile};
use loopline_proto::v1::DeviceId;
use loopline_spool::{FsyncPolicy, SpoolConfig, WhenFull};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shortest accepted `batch_interval`: below it the per-message overhead dominates and the
/// broker sees a message storm rather than batches.
pub const MIN_BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Longest accepted `window`: the bootstrap model needs many windows of simulated data, and a
/// window's samples are held in memory per model channel.
pub const MAX_WINDOW: Duration = Duration::from_secs(10);
/// Most samples per channel in one window (10 s at 100 kHz): a few MB of buffers.
pub const MAX_WINDOW_SAMPLES: u128 = 1_000_000;

const DEFAULT_SAMPLE_RATE_HZ: NonZeroU32 = match NonZeroU32::new(1000) {
    Some(rate) => rate,
    None => panic!("the default sample rate is not zero"),
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
    /// Log lines as `human` text or `json` objects (stderr). `RUST_LOG` sets the filter.
    pub log_format: LogFormat,
    /// Where to write a JSON report of what was sealed, acknowledged and lost, at exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_file: Option<PathBuf>,
    /// The line scenario each device's simulator plays: a built-in name (`default`, `normal`,
    /// `bearing-wear`, `sensor-faults`, `recipe-change`) or the path of a scenario TOML file.
    pub scenario: String,
    /// The NPU the model runs on (simulated): `hailo-8l`, `hailo-8`, `rk3588` or `dx-m1`.
    #[serde(with = "loopline_common::config::as_text")]
    pub npu_profile: Profile,
    /// NPU faults to inject, as `kind@time-from-start`: `overheat@40s`, `ecc@10s`,
    /// `uncorrectable@20s`, `reset@50s`.
    pub npu_faults: Vec<String>,
    /// The model scores every window of this length, per device.
    #[serde(with = "loopline_common::duration")]
    pub window: Duration,
    /// Folder of the agent's durable state: `spool/<device>/` (batches not yet acknowledged by
    /// the broker) and `model/` (the last accepted model release). Keep it on persistent
    /// storage; systemd's unit points it at /var/lib/loopline-agent.
    pub state_dir: PathBuf,
    /// Most bytes one device's spool holds, e.g. "64 MiB". What happens then is
    /// `spool_when_full`.
    pub spool_max_bytes: ByteSize,
    /// Size at which a spool segment file is closed (fsynced) and a new one started.
    pub spool_segment_bytes: ByteSize,
    /// When spooled batches are fsynced: `always` (before publishing; survives power loss),
    /// `interval:<duration>` (survives a crash or kill of the agent; a power cut may lose that
    /// interval), or `never` (leave it to the OS).
    #[serde(with = "loopline_common::config::as_text")]
    pub spool_fsync: FsyncPolicy,
    /// When the spool is full: `block` (stop sealing until the broker acknowledges; the
    /// sensors' samples wait, nothing is dropped) or `drop_oldest` (drop the oldest batches,
    /// counted and logged as lost).
    #[serde(with = "loopline_common::config::as_text")]
    pub spool_when_full: WhenFull,
    /// A model artifact (safetensors) to start with. Without it the agent starts with the
    /// last release it accepted (in `state_dir`), else with its bootstrap model, fitted at
    /// start-up on simulated normal data (deterministic per `seed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_file: Option<PathBuf>,
    /// Ed25519 public key (64 hex digits) that model releases must be signed with. Without it
    /// every release is refused (and reported as such).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_public_key: Option<String>,
    /// A file holding that key (64 hex digits, surrounding whitespace ignored), such as the
    /// `release.pub` dispatch writes; instead of `model_public_key`, so that a deployment can
    /// mount dispatch's public key rather than copy it into every agent's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_public_key_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for an `mqtts://` broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate (with
    /// `tls_client_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_client_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Serve Prometheus `/metrics` and `/healthz` on this address (e.g. 127.0.0.1:9465); off
    /// when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
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
            log_format: LogFormat::Human,
            report_file: None,
            scenario: "default".to_owned(),
            npu_profile: Profile::Hailo8L,
            npu_faults: Vec::new(),
            window: Duration::from_secs(1),
            state_dir: PathBuf::from("loopline-agent-state"),
            spool_max_bytes: ByteSize::mib(64),
            spool_segment_bytes: ByteSize::mib(4),
            spool_fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
            spool_when_full: WhenFull::Block,
            model_file: None,
            model_public_key: None,
            model_public_key_file: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            metrics_listen: None,
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

    /// Checks every value once, at start-up, and returns them parsed. Each error names the
    /// key that is wrong.
    pub fn validate(&self) -> Result<Validated> {
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
        let scenario = load_scenario(&self.scenario).map_err(|reason| bad("scenario", reason))?;
        let npu_faults = self
            .npu_faults
            .iter()
            .map(|entry| entry.parse())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(FaultSchedule::new)
            .map_err(|e| bad("npu_faults", e.to_string()))?;
        if self.window < Duration::from_millis(100) || self.window > MAX_WINDOW {
            return Err(bad(
                "window",
                format!(
                    "{} is out of range: from 100ms to 10s",
                    loopline_common::duration::format(self.window)
                ),
            ));
        }
        let window_samples =
            u128::from(self.sample_rate_hz.get()) * self.window.as_micros() / 1_000_000;
        if window_samples > MAX_WINDOW_SAMPLES {
            return Err(bad(
                "window",
                format!(
                    "{} holds {window_samples} samples at {} Hz; at most {MAX_WINDOW_SAMPLES}",
                    loopline_common::duration::format(self.window),
                    self.sample_rate_hz
                ),
            ));
        }
        if window_samples < 8 {
            return Err(bad(
                "window",
                format!(
                    "{} holds {window_samples} samples at {} Hz; the features need at least 8",
                    loopline_common::duration::format(self.window),
                    self.sample_rate_hz
                ),
            ));
        }
        if self.spool_segment_bytes.as_u64() < 64 * 1024 {
            return Err(bad(
                "spool_segment_bytes",
                "must be at least 64 KiB".to_owned(),
            ));
        }
        if self.spool_max_bytes < self.spool_segment_bytes {
            return Err(bad(
                "spool_max_bytes",
                format!(
                    "{} is smaller than spool_segment_bytes ({})",
                    self.spool_max_bytes, self.spool_segment_bytes
                ),
            ));
        }
        let model_public_key = match (&self.model_public_key, &self.model_public_key_file) {
            (None, None) => None,
            (Some(hex), None) => Some(
                loopline_model::release::verifying_key_from_hex(hex)
                    .map_err(|e| bad("model_public_key", e.to_string()))?,
            ),
            (None, Some(path)) => {
                let hex = std::fs::read_to_string(path).map_err(|e| {
                    bad("model_public_key_file", format!("{}: {e}", path.display()))
                })?;
                Some(
                    loopline_model::release::verifying_key_from_hex(hex.trim()).map_err(|e| {
                        bad("model_public_key_file", format!("{}: {e}", path.display()))
                    })?,
                )
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "model_public_key_file",
                    "set either model_public_key or model_public_key_file, not both".to_owned(),
                ));
            }
        };
        let tls = self.tls();
        self.broker
            .mqtt_options_tls("check", self.keep_alive, &tls)
            .map_err(|e| bad("broker", e.to_string()))?;
        Ok(Validated {
            devices: ids,
            scenario,
            npu_faults,
            model_public_key,
            tls,
        })
    }

    /// The TLS settings as one value.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.tls_ca_file.clone(),
            client_cert_file: self.tls_client_cert_file.clone(),
            client_key_file: self.tls_client_key_file.clone(),
        }
    }

    /// The spool settings of one device.
    pub fn spool_config(&self) -> SpoolConfig {
        SpoolConfig {
            max_bytes: self.spool_max_bytes.as_u64(),
            segment_bytes: self.spool_segment_bytes.as_u64(),
            fsync: self.spool_fsync,
            when_full: self.spool_when_full,
            cache_bytes: SpoolConfig::default_cache_bytes(),
        }
    }

    /// Where one device's spool lives.
    pub fn spool_dir(&self, device: &DeviceId) -> PathBuf {
        self.state_dir
            .join("spool")
            .join(&device.site)
            .join(&device.line)
            .join(&device.device)
    }

    /// Where accepted model releases are kept.
    pub fn model_dir(&self) -> PathBuf {
        self.state_dir.join("model")
    }

    /// Samples per sensor in one inference window (at least 8 after `validate`).
    pub fn window_samples(&self) -> u64 {
        u64::try_from(u128::from(self.sample_rate_hz.get()) * self.window.as_micros() / 1_000_000)
            .unwrap_or(u64::MAX)
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

/// What [`AgentConfig::validate`] parsed: the values no later code re-checks.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Device identities, in the order configured.
    pub devices: Vec<DeviceId>,
    pub scenario: Scenario,
    pub npu_faults: FaultSchedule,
    pub model_public_key: Option<VerifyingKey>,
    pub tls: TlsConfig,
}

/// A built-in scenario by name, else a scenario file by path.
fn load_scenario(name_or_path: &str) -> std::result::Result<Scenario, String> {
    let path = Path::new(name_or_path);
    if name_or_path.ends_with(".toml") || path.exists() {
        Scenario::load(path).map_err(|e| e.to_string())
    } else {
        Scenario::named(name_or_path).map_err(|e| e.to_string())
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
        let cases: [(&str, Breaks); 15] = [
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
            ("model_public_key_file", |c| {
                c.model_public_key_file = Some("/nonexistent/release.pub".into())
            }),
            ("model_public_key_file", |c| {
                c.model_public_key = Some("00".repeat(32));
                c.model_public_key_file = Some("/nonexistent/release.pub".into());
            }),
            ("window", |c| c.window = Duration::from_millis(50)),
            ("window", |c| c.window = Duration::from_secs(60)),
            ("window", |c| {
                c.sample_rate_hz = NonZeroU32::new(200_000).unwrap();
                c.window = Duration::from_secs(10);
            }),
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
