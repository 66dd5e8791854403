//! The command line of `loopline-dispatch`: `serve` runs dispatch; the other subcommands are
//! clients of a running dispatch's HTTP API. Every config key of `serve` has a flag and a
//! `LOOPLINE_DISPATCH_*` environment variable; precedence is defaults < `--config` file <
//! environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loopline_common::BrokerUrl;
use loopline_common::logging::LogFormat;

use crate::config::{BackendKind, DispatchConfig};
use crate::{Error, Result};

/// Training dispatch: watches each line's data for drift, retrains its anomaly model on the
/// GPU pool (local processes or Slurm), keeps the better model in the registry under
/// <lake>/_models, signs it, and rolls it out to the line (one canary device first).
///
/// `serve` runs it; `jobs`, `queue`, `pool`, `models`, `rollouts` and `timeline` ask a
/// running dispatch over its HTTP API (--api).
#[derive(Debug, Parser)]
#[command(name = "loopline-dispatch", version)]
#[allow(rustdoc::invalid_html_tags)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Address of a running dispatch's API, for the client subcommands.
    #[arg(
        long,
        global = true,
        env = "LOOPLINE_DISPATCH_API",
        default_value = "127.0.0.1:9300"
    )]
    pub api: SocketAddr,
}

#[derive(Debug, Subcommand)]
// These comments are `--help` text, where <placeholders> read naturally.
#[allow(rustdoc::invalid_html_tags)]
pub enum Command {
    /// Run dispatch: triggers, the job queue, the GPU pool, the registry and rollouts.
    Serve(Box<ServeArgs>),
    /// List, show, submit or cancel training jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Queued jobs in the order the scheduler takes them.
    Queue,
    /// The GPU pool: capacity, which job holds which GPU, each line's recent use.
    Pool,
    /// Each line's champion model and versions.
    Models,
    /// Model rollouts and their phases.
    Rollouts,
    /// What dispatch noticed and did, oldest first.
    Timeline {
        /// Only entries after this id.
        #[arg(long, default_value = "0")]
        after: i64,
    },
    /// Print the release signing public key (hex), generating the key on first use: the
    /// value of the agents' `model_public_key`.
    PublicKey {
        /// Dispatch's state folder (default <lake>/_loopline/dispatch).
        #[arg(long, env = "LOOPLINE_DISPATCH_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Root folder of the lake (for the default state folder).
        #[arg(long, env = "LOOPLINE_DISPATCH_LAKE", default_value = "loopline-lake")]
        lake: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
#[allow(rustdoc::invalid_html_tags)]
pub enum JobsCommand {
    /// Jobs, oldest first.
    List {
        /// Only these states, comma-separated (queued, dispatched, running, succeeded,
        /// failed, timed_out, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this line's jobs.
        #[arg(long)]
        line: Option<String>,
    },
    /// One job with every transition and its reason.
    Show { id: i64 },
    /// Ask for a training job now (a manual trigger).
    Submit {
        #[arg(long)]
        line: String,
        /// Why, for the timeline and the model's lineage.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        priority: Option<i64>,
        #[arg(long)]
        gpus: Option<u32>,
        /// Repeating a submission with the same key returns the first one's job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Cancel a queued or running job.
    Cancel { id: i64 },
}

/// `serve`'s flags: one per config key.
#[derive(Debug, Clone, clap::Args)]
#[allow(rustdoc::invalid_html_tags)]
pub struct ServeArgs {
    /// TOML config file (keys as in `--print-config`).
    #[arg(long, env = "LOOPLINE_DISPATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration and exit (status 0 when valid).
    #[arg(long)]
    pub check_config: bool,
    /// Root folder of the Parquet lake.
    #[arg(long, env = "LOOPLINE_DISPATCH_LAKE")]
    pub lake: Option<PathBuf>,
    /// Dispatch's state folder (default <lake>/_loopline/dispatch).
    #[arg(long, env = "LOOPLINE_DISPATCH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Site whose lines dispatch looks after.
    #[arg(long, env = "LOOPLINE_DISPATCH_SITE")]
    pub site: Option<String>,
    /// Lines to look after, comma-separated (default: every line found in the lake).
    #[arg(long, env = "LOOPLINE_DISPATCH_LINES", value_delimiter = ',')]
    pub lines: Option<Vec<String>>,
    /// Model family trained and rolled out.
    #[arg(long, env = "LOOPLINE_DISPATCH_FAMILY")]
    pub family: Option<String>,
    /// MQTT broker, mqtt://host:port or mqtts://host:port (TLS), with user:password@ to log in.
    #[arg(long, env = "LOOPLINE_BROKER")]
    pub broker: Option<BrokerUrl>,
    /// MQTT client id.
    #[arg(long, env = "LOOPLINE_DISPATCH_CLIENT_ID")]
    pub client_id: Option<String>,
    /// PEM CA bundle to trust for an mqtts:// broker.
    #[arg(long, env = "LOOPLINE_DISPATCH_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate by certificate.
    #[arg(long, env = "LOOPLINE_DISPATCH_TLS_CLIENT_CERT_FILE")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-client-cert-file.
    #[arg(long, env = "LOOPLINE_DISPATCH_TLS_CLIENT_KEY_FILE")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Address of the HTTP API, /metrics and /healthz.
    #[arg(long, env = "LOOPLINE_DISPATCH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where training jobs run: local or slurm.
    #[arg(long, env = "LOOPLINE_DISPATCH_BACKEND")]
    pub backend: Option<BackendKind>,
    /// GPUs in the pool.
    #[arg(long, env = "LOOPLINE_DISPATCH_GPUS")]
    pub gpus: Option<u32>,
    /// GPUs each training job asks for.
    #[arg(long, env = "LOOPLINE_DISPATCH_GPUS_PER_JOB")]
    pub gpus_per_job: Option<u32>,
    /// Slurm partition to submit to.
    #[arg(long, env = "LOOPLINE_DISPATCH_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// The training command before its contract flags, whitespace-separated (default
    /// loopline-train beside this binary).
    #[arg(long, env = "LOOPLINE_DISPATCH_TRAINER_COMMAND")]
    pub trainer_command: Option<String>,
    /// Seed passed to the trainer.
    #[arg(long, env = "LOOPLINE_DISPATCH_SEED")]
    pub seed: Option<u64>,
    /// Priority of triggered jobs.
    #[arg(long, env = "LOOPLINE_DISPATCH_PRIORITY")]
    pub priority: Option<i64>,
    /// Attempts of a job before a retryable failure is final.
    #[arg(long, env = "LOOPLINE_DISPATCH_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// A job queued longer than this times out (e.g. 1h).
    #[arg(long, env = "LOOPLINE_DISPATCH_QUEUE_TIMEOUT", value_parser = loopline_common::duration::parse)]
    pub queue_timeout: Option<Duration>,
    /// A job running longer than this is stopped (e.g. 30m).
    #[arg(long, env = "LOOPLINE_DISPATCH_RUN_TIMEOUT", value_parser = loopline_common::duration::parse)]
    pub run_timeout: Option<Duration>,
    /// How often the scheduler looks at the queue (e.g. 200ms).
    #[arg(long, env = "LOOPLINE_DISPATCH_TICK", value_parser = loopline_common::duration::parse)]
    pub tick: Option<Duration>,
    /// How often each line's triggers are evaluated (e.g. 5s).
    #[arg(long, env = "LOOPLINE_DISPATCH_EVALUATE_INTERVAL", value_parser = loopline_common::duration::parse)]
    pub evaluate_interval: Option<Duration>,
    /// Fair share balances GPU time over this window (e.g. 1h).
    #[arg(long, env = "LOOPLINE_DISPATCH_FAIR_SHARE_WINDOW", value_parser = loopline_common::duration::parse)]
    pub fair_share_window: Option<Duration>,
    /// Log format: human or json.
    #[arg(long, env = "LOOPLINE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl ServeArgs {
    /// The effective configuration.
    pub fn resolve(&self) -> Result<DispatchConfig> {
        let mut config = match &self.config {
            Some(path) => loopline_common::config::load_toml::<DispatchConfig>(path)
                .map_err(|e| Error::Config(e.to_string()))?,
            None => DispatchConfig::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = &self.$field {
                    config.$field = value.clone();
                }
            )*};
        }
        set!(
            lake,
            site,
            lines,
            family,
            broker,
            client_id,
            listen,
            backend,
            gpus,
            gpus_per_job
        );
        set!(
            seed,
            priority,
            max_attempts,
            queue_timeout,
            run_timeout,
            tick,
            evaluate_interval
        );
        set!(fair_share_window, log_format);
        if self.state_dir.is_some() {
            config.state_dir.clone_from(&self.state_dir);
        }
        for (value, field) in [
            (&self.tls_ca_file, &mut config.tls_ca_file),
            (&self.tls_client_cert_file, &mut config.tls_client_cert_file),
            (&self.tls_client_key_file, &mut config.tls_client_key_file),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        if self.slurm_partition.is_some() {
            config.slurm_partition.clone_from(&self.slurm_partition);
        }
        if let Some(command) = &self.trainer_command {
            config.trainer_command = command.split_whitespace().map(str::to_owned).collect();
        }
        config.validate()?;
        Ok(config)
    }
}

/// The effective configuration as TOML.
pub fn print_config(config: &DispatchConfig) -> Result<String> {
    toml::to_string(config).map_err(|e| Error::Config(format!("printing the configuration: {e}")))
}

/// Runs a client subcommand against the API; prints the answer.
pub async fn client(api: SocketAddr, command: &Command) -> Result<()> {
    let (method, path, body) = match command {
        Command::Jobs(JobsCommand::List { state, line }) => {
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(format!("state={state}"));
            }
            if let Some(line) = line {
                query.push(format!("line={line}"));
            }
            ("GET", format!("/api/v1/jobs?{}", query.join("&")), None)
        }
        Command::Jobs(JobsCommand::Show { id }) => ("GET", format!("/api/v1/jobs/{id}"), None),
        Command::Jobs(JobsCommand::Submit {
            line,
            reason,
            priority,
            gpus,
            idempotency_key,
        }) => {
            let body = crate::api::ManualRequest {
                line: line.clone(),
                reason: reason.clone(),
                priority: *priority,
                gpus: *gpus,
                idempotency_key: idempotency_key.clone(),
                from_us: None,
                to_us: None,
            };
            let text = serde_json::to_string(&body).map_err(|e| Error::Config(e.to_string()))?;
            ("POST", "/api/v1/jobs".to_owned(), Some(text))
        }
        Command::Jobs(JobsCommand::Cancel { id }) => {
            ("POST", format!("/api/v1/jobs/{id}/cancel"), None)
        }
        Command::Queue => ("GET", "/api/v1/queue".to_owned(), None),
        Command::Pool => ("GET", "/api/v1/pool".to_owned(), None),
        Command::Models => ("GET", "/api/v1/models".to_owned(), None),
        Command::Rollouts => ("GET", "/api/v1/rollouts".to_owned(), None),
        Command::Timeline { after } => ("GET", format!("/api/v1/timeline?after={after}"), None),
        Command::Serve(_) | Command::PublicKey { .. } => return Ok(()),
    };
    let (status, text) = loopline_common::http::request(api, method, &path, body.as_deref())
        .await
        .map_err(|e| Error::Io(format!("dispatch API at {api}"), e))?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or(text);
    let success =
        loopline_common::http::status_code(&status).is_some_and(|code| (200..300).contains(&code));
    if success {
        println!("{pretty}");
        Ok(())
    } else {
        Err(Error::Config(format!(
            "dispatch API at {api} answered {status}: {pretty}"
        )))
    }
}
