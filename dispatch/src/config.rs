//! Dispatch configuration: defaults, then the TOML file, then `LOOPLINE_DISPATCH_*`
//! environment variables, then flags. Parsed into typed values once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;
use loopline_common::tls::TlsConfig;
use serde::{Deserialize, Serialize};

use crate::registry::PromotionRules;
use crate::rollout::RolloutPolicy;
use crate::scheduler::RetryPolicy;
use crate::triggers::TriggerConfig;
use crate::{Error, Result};

/// Keep-alive of dispatch's MQTT connection.
const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Where training jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Child processes on this machine, each given its GPUs by `CUDA_VISIBLE_DEVICES`.
    Local,
    /// A Slurm cluster: `sbatch --gres=gpu:N`.
    Slurm,
}

/// Everything `loopline-dispatch serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Root folder of the Parquet lake: read for triggers and training, and home of the model
    /// registry (`<lake>/_models`).
    pub lake: PathBuf,
    /// Dispatch's own state: the job database, job folders and the release signing key.
    /// Defaults to `<lake>/_loopline/dispatch`.
    pub state_dir: Option<PathBuf>,
    /// Site whose lines dispatch looks after.
    pub site: String,
    /// Lines to look after; empty means every line of the site found in the lake.
    pub lines: Vec<String>,
    /// Model family trained and rolled out.
    pub family: String,
    /// MQTT broker that carries model releases to the agents and their reports back.
    pub broker: BrokerUrl,
    /// MQTT client id.
    pub client_id: String,
    /// PEM CA bundle to trust for an `mqtts://` broker (required for one).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate by certificate (needs
    /// `tls_client_key_file`).
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: Option<PathBuf>,
    /// Address of the HTTP API, `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Where training jobs run: `local` or `slurm`.
    pub backend: BackendKind,
    /// GPUs in the pool.
    pub gpus: u32,
    /// GPUs each training job asks for.
    pub gpus_per_job: u32,
    /// Slurm partition to submit to (the cluster's default when unset).
    pub slurm_partition: Option<String>,
    /// The training command, before its contract flags (`--lake`, `--line`, …). Empty means
    /// `loopline-train` beside this binary.
    pub trainer_command: Vec<String>,
    /// Seed passed to the trainer.
    pub seed: u64,
    /// Priority of triggered jobs (manual ones may ask for another).
    pub priority: i64,
    /// Attempts of a job before a retryable failure is final.
    pub max_attempts: u32,
    /// A job queued longer than this times out.
    #[serde(with = "loopline_common::duration")]
    pub queue_timeout: Duration,
    /// A job running longer than this is stopped and times out.
    #[serde(with = "loopline_common::duration")]
    pub run_timeout: Duration,
    /// How often the scheduler looks at the queue and the jobs in flight (it also wakes at
    /// once on a submission).
    #[serde(with = "loopline_common::duration")]
    pub tick: Duration,
    /// How often each line's triggers are evaluated.
    #[serde(with = "loopline_common::duration")]
    pub evaluate_interval: Duration,
    /// Fair share balances the GPU time lines used over this window.
    #[serde(with = "loopline_common::duration")]
    pub fair_share_window: Duration,
    /// Retry back-off and which exit codes are retryable (`[retry]`).
    pub retry: RetryPolicy,
    /// When to retrain, and the guards (`[triggers]`, see `docs/triggers.md`).
    pub triggers: TriggerConfig,
    /// What a candidate must beat to become champion (`[promotion]`).
    pub promotion: PromotionRules,
    /// Canary, probation and rollback (`[rollout]`, see `docs/models.md`).
    pub rollout: RolloutPolicy,
    /// Log format: `human` or `json`.
    pub log_format: LogFormat,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            lake: PathBuf::from("loopline-lake"),
            state_dir: None,
            site: "plant-1".into(),
            lines: Vec::new(),
            family: "anomaly-ae".into(),
            broker: BrokerUrl::new("127.0.0.1", 1883),
            client_id: "loopline-dispatch".into(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 9300)),
            backend: BackendKind::Local,
            gpus: 4,
            gpus_per_job: 1,
            slurm_partition: None,
            trainer_command: Vec::new(),
            seed: 1,
            priority: 0,
            max_attempts: 3,
            queue_timeout: Duration::from_secs(3600),
            run_timeout: Duration::from_secs(1800),
            tick: Duration::from_millis(200),
            evaluate_interval: Duration::from_secs(5),
            fair_share_window: Duration::from_secs(3600),
            retry: RetryPolicy::default(),
            triggers: TriggerConfig::default(),
            promotion: PromotionRules::default(),
            rollout: RolloutPolicy::default(),
            log_format: LogFormat::default(),
        }
    }
}

impl DispatchConfig {
    /// The state folder (the configured one or `<lake>/_loopline/dispatch`).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.lake.join("_loopline").join("dispatch"))
    }

    /// The job database.
    pub fn database(&self) -> PathBuf {
        self.state_dir().join("dispatch.db")
    }

    /// Checks what types cannot, the TLS files included: names an offending key and why.
    pub fn validate(&self) -> Result<()> {
        self.check_values()?;
        self.mqtt_options().map(drop)
    }

    /// [`DispatchConfig::validate`] and the MQTT options it builds, for start-up: the TLS
    /// files are read once.
    pub fn validated_mqtt_options(&self) -> Result<rumqttc::MqttOptions> {
        self.check_values()?;
        self.mqtt_options()
    }

    /// The checks of [`DispatchConfig::validate`] that read no file.
    fn check_values(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::Config(format!("{key}: {why}")));
        if self.site.is_empty() {
            return bad("site", "must not be empty".into());
        }
        if self.gpus == 0 {
            return bad("gpus", "the pool needs at least one GPU".into());
        }
        if self.gpus_per_job > self.gpus {
            return bad(
                "gpus_per_job",
                format!(
                    "{} is more than the pool's {} GPUs",
                    self.gpus_per_job, self.gpus
                ),
            );
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1".into());
        }
        if self.tick.is_zero() || self.evaluate_interval.is_zero() {
            return bad("tick/evaluate_interval", "must be longer than zero".into());
        }
        Ok(())
    }

    /// The TLS files in effect.
    pub fn tls(&self) -> TlsConfig {
        TlsConfig {
            ca_file: self.tls_ca_file.clone(),
            client_cert_file: self.tls_client_cert_file.clone(),
            client_key_file: self.tls_client_key_file.clone(),
        }
    }

    /// The MQTT connection's options: the broker, its credentials and, for `mqtts://`, the
    /// TLS files (read here, so a missing or bad file is an error at start-up).
    pub fn mqtt_options(&self) -> Result<rumqttc::MqttOptions> {
        self.broker
            .mqtt_options_tls(&self.client_id, MQTT_KEEP_ALIVE, &self.tls())
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// The trainer command: the configured one, or `loopline-train` beside `exe`.
    pub fn trainer_command(&self, exe: &Path) -> Vec<String> {
        if !self.trainer_command.is_empty() {
            return self.trainer_command.clone();
        }
        let beside = exe
            .parent()
            .map(|dir| dir.join("loopline-train"))
            .filter(|path| path.exists())
            .unwrap_or_else(|| PathBuf::from("loopline-train"));
        vec![beside.display().to_string()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_toml_file_overrides_defaults_and_unknown_keys_are_refused() {
        let config: DispatchConfig = toml::from_str(
            "lake = \"/data/lake\"\nbackend = \"slurm\"\ngpus = 8\nrun_timeout = \"10m\"\n[retry]\nbackoff_base = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(config.backend, BackendKind::Slurm);
        assert_eq!(config.gpus, 8);
        assert_eq!(config.run_timeout, Duration::from_secs(600));
        assert_eq!(config.retry.backoff_base, Duration::from_secs(1));
        assert_eq!(
            config.state_dir(),
            PathBuf::from("/data/lake/_loopline/dispatch")
        );
        let err = toml::from_str::<DispatchConfig>("gpu = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `gpu`"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let config = DispatchConfig {
            gpus: 2,
            gpus_per_job: 3,
            ..DispatchConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert_eq!(err, "gpus_per_job: 3 is more than the pool's 2 GPUs");
    }

    #[test]
    fn tls_files_need_an_mqtts_broker_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let plain = DispatchConfig {
            tls_ca_file: Some(ca.clone()),
            ..DispatchConfig::default()
        };
        let err = plain.validate().unwrap_err().to_string();
        assert!(
            err.contains("ca_file set, but the broker address is plain MQTT"),
            "{err}"
        );
        let missing = DispatchConfig {
            broker: "mqtts://127.0.0.1:8883".parse().unwrap(),
            ..plain
        };
        let err = missing.validate().unwrap_err().to_string();
        assert!(err.contains(&ca.display().to_string()), "{err}");
        let without_ca = DispatchConfig {
            broker: "mqtts://127.0.0.1:8883".parse().unwrap(),
            ..DispatchConfig::default()
        };
        let err = without_ca.validate().unwrap_err().to_string();
        assert!(err.contains("ca_file"), "{err}");
    }
}
