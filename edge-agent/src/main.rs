//! `loopline-agent`: parse the command line, load the configuration, start logging and signal
//! handling, and hand over to [`loopline_agent::run`].

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use loopline_agent::cli::Cli;
use loopline_agent::{AgentStats, run};
use loopline_common::{CancellationToken, logging, shutdown};

/// Some batches were lost: dropped from a full spool, or never into it.
const EXIT_LOST: u8 = 3;
/// The configuration is invalid (clap uses the same status for bad flags).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = loopline_common::env::check(&Cli::command(), &["LOOPLINE_AGENT_"]) {
        eprintln!("loopline-agent: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loopline-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        return match config.to_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopline-agent: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Err(e) = config.validate() {
        eprintln!("loopline-agent: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.export_bootstrap_model {
        return match export_bootstrap_model(&config, path) {
            Ok(version) => {
                println!("wrote {version} to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopline-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match agent(config) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(lost) => {
            eprintln!(
                "loopline-agent: {lost} batches were dropped or could not be spooled, and are lost"
            );
            ExitCode::from(EXIT_LOST)
        }
        Err(e) => {
            eprintln!("loopline-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fits the bootstrap model for `config` and writes it to `path`; returns its version.
fn export_bootstrap_model(
    config: &loopline_agent::AgentConfig,
    path: &std::path::Path,
) -> anyhow::Result<String> {
    let key = loopline_agent::bootstrap::BootstrapKey {
        seed: config.seed,
        sample_rate_hz: config.sample_rate_hz,
        window_samples: config.window_samples(),
    };
    let artifact = loopline_agent::bootstrap::fit(key).map_err(anyhow::Error::msg)?;
    let bytes = artifact.to_bytes().context("serialising the model")?;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(artifact.metadata.model_version)
}

/// Runs the agent; returns the number of lost batches.
fn agent(config: loopline_agent::AgentConfig) -> anyhow::Result<u64> {
    logging::init(config.log_format, "info").context("cannot start logging")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let token = CancellationToken::new();
        shutdown::cancel_on_signal(token.clone());
        let report = run(config, None, token, Arc::new(AgentStats::new()))
            .await
            .context("agent failed")?;
        Ok(report.lost_batches())
    })
}
