//! Command line of `loopline-agent`, in the library so that tests can reach it.
//!
//! Every config key has a flag and a `LOOPLINE_AGENT_<KEY>` environment variable (the broker:
//! `LOOPLINE_BROKER`, shared by every Loopline binary). Clap reads both, flag over variable;
//! [`Cli::apply`] lays whatever was given over the file's values.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use loopline_common::BrokerUrl;
use loopline_common::duration;
use loopline_common::logging::LogFormat;

use loopline_npusim::Profile;
use loopline_spool::{FsyncPolicy, WhenFull};

use crate::Result;
use crate::config::AgentConfig;

/// Loopline edge agent: samples a production line (simulated), scores every window with an
/// int8 anomaly model on the (simulated) NPU, seals samples, results and health into telemetry
/// batches, keeps each batch in an on-disk spool and publishes it to an MQTT broker, releasing
/// it only when the broker acknowledges it (QoS 1 PUBACK). Runs model releases only when they
/// are signed with the configured Ed25519 key.
///
/// Configuration: built-in defaults, then the TOML file given by --config, then
/// LOOPLINE_AGENT_* environment variables (LOOPLINE_BROKER for the broker), then flags.
/// See agent.example.toml for every key. Exit status: 0 done (what is not yet acknowledged
/// stays in the spool for the next start), 1 error, 2 bad configuration, 3 some batches were
/// dropped from a full spool (lost).
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "loopline-agent",
    version,
    about,
    long_about,
    max_term_width = 100
)]
pub struct Cli {
    /// TOML config file; keys it leaves out keep their defaults.
    #[arg(long, short = 'c', env = "LOOPLINE_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long, conflicts_with = "check_config")]
    pub print_config: bool,

    /// Validate the configuration and exit: 0 if valid, 2 with the reason if not.
    #[arg(long)]
    pub check_config: bool,

    /// Write the bootstrap model this configuration would start with (safetensors) to FILE
    /// and exit; `model_file` can then load it without fitting it at every start.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["print_config", "check_config"])]
    pub export_bootstrap_model: Option<PathBuf>,

    /// MQTT broker, mqtt://host:port or mqtts://host:port [default: mqtt://127.0.0.1:1883]
    #[arg(long, env = "LOOPLINE_BROKER", value_name = "URL")]
    pub broker: Option<BrokerUrl>,

    /// Site identity segment [default: site-1]
    #[arg(long, env = "LOOPLINE_AGENT_SITE")]
    pub site: Option<String>,

    /// Production line identity segment [default: line-1]
    #[arg(long, env = "LOOPLINE_AGENT_LINE")]
    pub line: Option<String>,

    /// Devices to simulate, comma-separated; one MQTT connection each [default: dev-1]
    #[arg(
        long,
        env = "LOOPLINE_AGENT_DEVICES",
        value_delimiter = ',',
        value_name = "NAME,..."
    )]
    pub devices: Option<Vec<String>>,

    /// Samples per second of each sensor [default: 1000]
    #[arg(long, env = "LOOPLINE_AGENT_SAMPLE_RATE_HZ", value_name = "HZ")]
    pub sample_rate_hz: Option<NonZeroU32>,

    /// How often samples are sealed into a batch, e.g. 1s, 250ms [default: 1s]
    #[arg(long, env = "LOOPLINE_AGENT_BATCH_INTERVAL", value_parser = duration::parse, value_name = "DURATION")]
    pub batch_interval: Option<Duration>,

    /// Seed of the signal generators [default: 1]
    #[arg(long, env = "LOOPLINE_AGENT_SEED")]
    pub seed: Option<u64>,

    /// Seal exactly N batches per device, wait for their acknowledgements, exit; 0 runs until
    /// SIGINT/SIGTERM [default: 0]
    #[arg(long, env = "LOOPLINE_AGENT_BATCHES", value_name = "N")]
    pub batches: Option<u64>,

    /// MQTT keep-alive [default: 15s]
    #[arg(long, env = "LOOPLINE_AGENT_KEEP_ALIVE", value_parser = duration::parse, value_name = "DURATION")]
    pub keep_alive: Option<Duration>,

    /// Client ids are PREFIX-SITE-LINE-DEVICE [default: loopline-agent]
    #[arg(long, env = "LOOPLINE_AGENT_CLIENT_ID_PREFIX", value_name = "PREFIX")]
    pub client_id_prefix: Option<String>,

    /// How long shutdown waits for outstanding acknowledgements [default: 10s]
    #[arg(long, env = "LOOPLINE_AGENT_DRAIN_TIMEOUT", value_parser = duration::parse, value_name = "DURATION")]
    pub drain_timeout: Option<Duration>,

    /// Log format: human or json [default: human]
    #[arg(long, env = "LOOPLINE_AGENT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Write a JSON report of what was acknowledged and lost here at exit
    #[arg(long, env = "LOOPLINE_AGENT_REPORT_FILE", value_name = "FILE")]
    pub report_file: Option<PathBuf>,

    /// Line scenario: default, normal, bearing-wear, sensor-faults, recipe-change, or a TOML
    /// file [default: default]
    #[arg(long, env = "LOOPLINE_AGENT_SCENARIO", value_name = "NAME|FILE")]
    pub scenario: Option<String>,

    /// Simulated NPU: hailo-8l, hailo-8, rk3588, dx-m1 [default: hailo-8l]
    #[arg(long, env = "LOOPLINE_AGENT_NPU_PROFILE", value_name = "PROFILE")]
    pub npu_profile: Option<Profile>,

    /// NPU faults to inject, comma-separated kind@time, e.g. overheat@40s,reset@50s
    #[arg(
        long,
        env = "LOOPLINE_AGENT_NPU_FAULTS",
        value_delimiter = ',',
        value_name = "KIND@TIME,..."
    )]
    pub npu_faults: Option<Vec<String>>,

    /// Inference window length [default: 1s]
    #[arg(long, env = "LOOPLINE_AGENT_WINDOW", value_parser = duration::parse, value_name = "DURATION")]
    pub window: Option<Duration>,

    /// Folder of the spool and accepted models [default: loopline-agent-state]
    #[arg(long, env = "LOOPLINE_AGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Spool cap per device, e.g. 64MiB [default: 64 MiB]
    #[arg(long, env = "LOOPLINE_AGENT_SPOOL_MAX_BYTES", value_name = "SIZE")]
    pub spool_max_bytes: Option<ByteSize>,

    /// Spool segment size [default: 4 MiB]
    #[arg(long, env = "LOOPLINE_AGENT_SPOOL_SEGMENT_BYTES", value_name = "SIZE")]
    pub spool_segment_bytes: Option<ByteSize>,

    /// Spool fsync policy: always, interval:DURATION, never [default: interval:200ms]
    #[arg(long, env = "LOOPLINE_AGENT_SPOOL_FSYNC", value_name = "POLICY")]
    pub spool_fsync: Option<FsyncPolicy>,

    /// When the spool is full: block or drop_oldest [default: block]
    #[arg(long, env = "LOOPLINE_AGENT_SPOOL_WHEN_FULL", value_name = "POLICY")]
    pub spool_when_full: Option<WhenFull>,

    /// Model artifact (safetensors) to start with instead of the bootstrap model
    #[arg(long, env = "LOOPLINE_AGENT_MODEL_FILE", value_name = "FILE")]
    pub model_file: Option<PathBuf>,

    /// Ed25519 public key (hex) that model releases must be signed with
    #[arg(long, env = "LOOPLINE_AGENT_MODEL_PUBLIC_KEY", value_name = "HEX")]
    pub model_public_key: Option<String>,

    /// File holding that key (64 hex digits), e.g. dispatch's release.pub
    #[arg(
        long,
        env = "LOOPLINE_AGENT_MODEL_PUBLIC_KEY_FILE",
        value_name = "FILE"
    )]
    pub model_public_key_file: Option<PathBuf>,

    /// CA certificates (PEM) to trust for an mqtts:// broker
    #[arg(long, env = "LOOPLINE_AGENT_TLS_CA_FILE", value_name = "FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for brokers that authenticate by certificate
    #[arg(long, env = "LOOPLINE_AGENT_TLS_CLIENT_CERT_FILE", value_name = "FILE")]
    pub tls_client_cert_file: Option<PathBuf>,

    /// Private key (PEM) of the client certificate
    #[arg(long, env = "LOOPLINE_AGENT_TLS_CLIENT_KEY_FILE", value_name = "FILE")]
    pub tls_client_key_file: Option<PathBuf>,

    /// Serve Prometheus /metrics and /healthz on this address, e.g. 127.0.0.1:9465
    #[arg(long, env = "LOOPLINE_AGENT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Cli {
    /// The effective configuration: defaults, then the file, then environment and flags.
    /// Not yet validated (see [`AgentConfig::validate`]).
    pub fn load_config(&self) -> Result<AgentConfig> {
        let base = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::default(),
        };
        Ok(self.apply(base))
    }

    /// Lays the values given by environment or flags over `config`.
    pub fn apply(&self, mut config: AgentConfig) -> AgentConfig {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut config.broker, &self.broker);
        set(&mut config.site, &self.site);
        set(&mut config.line, &self.line);
        set(&mut config.devices, &self.devices);
        set(&mut config.sample_rate_hz, &self.sample_rate_hz);
        set(&mut config.batch_interval, &self.batch_interval);
        set(&mut config.seed, &self.seed);
        set(&mut config.batches, &self.batches);
        set(&mut config.keep_alive, &self.keep_alive);
        set(&mut config.client_id_prefix, &self.client_id_prefix);
        set(&mut config.drain_timeout, &self.drain_timeout);
        set(&mut config.log_format, &self.log_format);
        set(&mut config.scenario, &self.scenario);
        set(&mut config.npu_profile, &self.npu_profile);
        set(&mut config.npu_faults, &self.npu_faults);
        set(&mut config.window, &self.window);
        set(&mut config.state_dir, &self.state_dir);
        set(&mut config.spool_max_bytes, &self.spool_max_bytes);
        set(&mut config.spool_segment_bytes, &self.spool_segment_bytes);
        set(&mut config.spool_fsync, &self.spool_fsync);
        set(&mut config.spool_when_full, &self.spool_when_full);
        let optional = [
            (&mut config.report_file, &self.report_file),
            (&mut config.model_file, &self.model_file),
            (&mut config.tls_ca_file, &self.tls_ca_file),
            (&mut config.tls_client_cert_file, &self.tls_client_cert_file),
            (&mut config.tls_client_key_file, &self.tls_client_key_file),
            (
                &mut config.model_public_key_file,
                &self.model_public_key_file,
            ),
        ];
        for (target, value) in optional {
            if value.is_some() {
                target.clone_from(value);
            }
        }
        if self.model_public_key.is_some() {
            config.model_public_key.clone_from(&self.model_public_key);
        }
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::CommandFactory;

    use super::*;

    // Environment variables cannot be set safely from a multi-threaded test; the integration
    // tests run the binary with its environment to check those.
    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["loopline-agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "site = \"from-file\"\nline = \"l-file\"\nbatch_interval = \"2s\"\nseed = 9"
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let cli = parse(&[
            "--config",
            path,
            "--site",
            "from-flag",
            "--devices",
            "a,b,c",
            "--batch-interval",
            "250ms",
            "--broker",
            "mqtt://127.0.0.1:2883",
            "--report-file",
            "/tmp/r.json",
        ]);
        let config = cli.load_config().unwrap();
        assert_eq!(config.site, "from-flag");
        assert_eq!(config.line, "l-file");
        assert_eq!(config.seed, 9);
        assert_eq!(config.devices, ["a", "b", "c"]);
        assert_eq!(config.batch_interval, Duration::from_millis(250));
        assert_eq!(config.broker, BrokerUrl::new("127.0.0.1", 2883));
        assert_eq!(config.report_file, Some(PathBuf::from("/tmp/r.json")));
        // Keys given nowhere keep their defaults.
        assert_eq!(config.drain_timeout, AgentConfig::default().drain_timeout);
    }

    #[test]
    fn no_file_means_defaults() {
        let config = parse(&[]).load_config().unwrap();
        assert_eq!(config, AgentConfig::default());
    }

    #[test]
    fn bad_flag_values_are_refused_by_clap() {
        let argv = ["loopline-agent", "--batch-interval", "soon"];
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains("soon"), "{err}");
        let argv = ["loopline-agent", "--sample-rate-hz", "0"];
        assert!(Cli::try_parse_from(argv).is_err());
        let argv = ["loopline-agent", "--broker", "http://x"];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn help_mentions_every_key() {
        let help = Cli::command().render_long_help().to_string();
        let config = toml::Value::try_from(AgentConfig {
            report_file: Some(PathBuf::from("x")),
            ..AgentConfig::default()
        })
        .unwrap();
        for key in config.as_table().unwrap().keys() {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(help.contains(&flag), "no {flag} in --help");
        }
        assert!(help.contains("LOOPLINE_BROKER"));
        assert!(help.contains("LOOPLINE_AGENT_SAMPLE_RATE_HZ"));
    }
}
