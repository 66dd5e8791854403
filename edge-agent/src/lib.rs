//! The Loopline edge agent: a production line's sensors (simulated), windowed int8 inference
//! on a (simulated) NPU, a durable spool, QoS 1 publishing acknowledged end to end, signed
//! model updates, clean shutdown.
//!
//! How this crate is laid out:
//! - [`config`]: [`AgentConfig`], its defaults and its start-up checks; [`cli`]: the flags and
//!   environment variables laid over it.
//! - [`batch`]: sealing a run of samples from the line simulator ([`loopline_linesim`]) into
//!   a `TelemetryBatch`, with inference results, health and labels (pure, no I/O).
//! - [`inference`]: cutting samples into windows and scoring them with the int8 model
//!   ([`loopline_model`]) on the NPU simulator ([`loopline_npusim`]); [`bootstrap`]: the
//!   model a device runs before any release reaches it.
//! - [`update`]: verifying signed model releases and the model state a device reports.
//! - [`acks`]: the pure state machine that follows each QoS 1 publish through rumqttc to its
//!   PUBACK, across reconnections. Its module documentation explains why
//!   `AsyncClient::publish` returning is not an acknowledgement.
//! - `device`: per device, a task that owns the MQTT event loop and one that owns the spool
//!   ([`loopline_spool`]) and the sealer; the only module doing network I/O.
//! - [`metrics`]: the optional Prometheus endpoint; [`stats`]: shared counters; [`report`]:
//!   what a run did, per device; [`clock`]: the injected start time.
//!
//! [`run`] ties them together: one device task per configured device, all watching one
//! cancellation token. The `loopline-agent` binary is a thin wrapper around it, and the
//! in-process demo calls it directly with several configurations sharing one [`AgentStats`].

use std::path::PathBuf;
use std::sync::Arc;

use loopline_common::CancellationToken;
use tokio::task::JoinSet;
use tracing::info;

pub mod acks;
pub mod batch;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
mod device;
pub mod inference;
pub mod metrics;
pub mod report;
pub mod stats;
pub mod update;

pub use loopline_linesim::samples_before;

pub use config::AgentConfig;
pub use device::MAX_IN_FLIGHT_BATCHES;
pub use report::{AgentReport, DeviceReport};
pub use stats::{AgentStats, StatsSnapshot};

/// Errors of the agent; each names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong; `key` is its name in the config file.
    #[error("config key {key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// The config file cannot be read or parsed.
    #[error(transparent)]
    ConfigFile(#[from] loopline_common::Error),
    #[error("report file {path}: {source}")]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A device task failed; the other devices were still drained.
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// FNV-1a, 64 bit: a stable hash of a device name (std's hasher is randomised per process),
/// to derive per-device seeds.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Runs the agent until `shutdown` is cancelled (or, with `config.batches` > 0, until every
/// device has sealed that many batches), then drains and reports.
///
/// `clock_start_us` is the timestamp of sample 0 in µs since the Unix epoch; `None` takes the
/// wall clock now. Tests pass a fixed value (with `tokio::time::pause`) for reproducible
/// output. `stats` may be shared with other agents in the same process.
///
/// Returns the per-device report (also written to `config.report_file` when set). Batches
/// the broker never acknowledged are counted in it as lost; that is not an error here, the
/// binary turns it into exit status 3.
pub async fn run(
    config: AgentConfig,
    clock_start_us: Option<i64>,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<AgentReport> {
    let setup = Arc::new(config.validate()?);
    let devices = setup.devices.clone();
    if config.model_file.is_none() {
        // Fit the bootstrap model (cached for every device) before the clock starts, so that
        // the first batch does not carry the fitting time's samples.
        let key = bootstrap::BootstrapKey {
            seed: config.seed,
            sample_rate_hz: config.sample_rate_hz,
            window_samples: config.window_samples(),
        };
        let fitted = tokio::task::spawn_blocking(move || bootstrap::model(key).map(|_| ()))
            .await
            .map_err(|e| Error::Device {
                device: "(all)".to_owned(),
                reason: format!("bootstrap model: {e}"),
            })?;
        fitted.map_err(|reason| Error::Device {
            device: "(all)".to_owned(),
            reason,
        })?;
    }
    let clock = clock::AgentClock::starting_at(clock_start_us.unwrap_or_else(clock::wall_clock_us));
    let config = Arc::new(config);
    info!(
        devices = devices.len(),
        site = %config.site,
        line = %config.line,
        broker = %config.broker,
        sample_rate_hz = config.sample_rate_hz.get(),
        scenario = %config.scenario,
        npu = %config.npu_profile,
        batch_interval = %loopline_common::duration::format(config.batch_interval),
        batches = config.batches,
        "agent starting"
    );

    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            metrics::serve(addr, Arc::clone(&stats), shutdown.clone())
                .await
                .map_err(|e| Error::Config {
                    key: "metrics_listen",
                    reason: format!("cannot listen on {addr}: {e}"),
                })?,
        ),
        None => None,
    };

    let mut tasks = JoinSet::new();
    for (index, id) in devices.iter().enumerate() {
        let spec = device::DeviceSpec {
            id: id.clone(),
            config: Arc::clone(&config),
            setup: Arc::clone(&setup),
            clock,
            shutdown: shutdown.clone(),
            stats: Arc::clone(&stats),
        };
        tasks.spawn(async move { (index, device::run_device(spec).await) });
    }

    let mut reports: Vec<Option<DeviceReport>> = vec![None; devices.len()];
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(report))) => reports[index] = Some(report),
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::Device {
                    device: "(unknown)".to_owned(),
                    reason: format!("device task failed: {e}"),
                });
            }
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let report = AgentReport {
        devices: reports.into_iter().flatten().collect(),
    };
    if let Some(path) = &config.report_file {
        report.write_json(path)?;
    }
    let snapshot = stats.snapshot();
    info!(
        batches_acked = report.batches_acked(),
        pending_batches = report.pending_batches(),
        lost_batches = report.lost_batches(),
        connection_errors = snapshot.connection_errors,
        "agent stopped"
    );
    Ok(report)
}
