use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loopline::demo::{self, DemoArgs};
use loopline_common::{CancellationToken, logging, shutdown};

/// Loopline: the loop between the line's NPUs and the data centre's GPUs.
///
/// `loopline demo` runs a whole factory in one process: simulated lines of edge devices
/// publishing telemetry over MQTT, ingest writing a Parquet lake, and a verified summary.
#[derive(Debug, Parser)]
#[command(name = "loopline", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated factory end to end and summarise what reached the lake.
    Demo(Box<DemoArgs>),
    /// One training job of the dispatch contract, as `loopline-train` (the demo's GPU pool
    /// runs this); see docs/training.md.
    #[command(disable_version_flag = true)]
    Train(Box<loopline_trainer::TrainCommand>),
    /// Run the embedded MQTT broker (for machines without Mosquitto).
    Broker {
        /// Address to listen on (MQTT 3.1.1, what agents speak).
        #[arg(long, default_value = "127.0.0.1:1883")]
        listen: SocketAddr,
        /// Also listen for MQTT 5 (what ingest speaks) on this address; rumqttd serves each
        /// protocol on its own port.
        #[arg(long)]
        listen_v5: Option<SocketAddr>,
    },
    /// Exit 0 when a Loopline `/healthz` (or other) endpoint answers 200 OK, 1 otherwise: the
    /// container image's health check, which has no curl.
    Healthcheck {
        /// The endpoint's address, e.g. 127.0.0.1:9464 (ingest's `metrics_listen`).
        address: SocketAddr,
        /// The path to fetch.
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = loopline_common::duration::parse)]
        timeout: std::time::Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => run_demo(*args),
        Command::Broker { listen, listen_v5 } => run_broker(listen, listen_v5),
        Command::Healthcheck {
            address,
            path,
            timeout,
        } => healthcheck(address, &path, timeout),
        Command::Train(command) => {
            let code = loopline_trainer::main_with(*command);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loopline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // The demo's own progress line speaks; the libraries only warn.
    logging::init(Default::default(), "warn,rumqttd=off")?;
    runtime()?.block_on(async {
        let token = CancellationToken::new();
        shutdown::cancel_on_signal(token.clone());
        let summary = demo::run(args, token).await?;
        print!("{}", summary.render());
        Ok(if summary.verified {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    })
}

fn healthcheck(
    address: SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let answer = runtime.block_on(async {
        tokio::time::timeout(timeout, loopline_common::http::get(address, path)).await
    });
    Ok(match answer {
        Ok(Ok((status, _))) if loopline_common::http::status_code(&status) == Some(200) => {
            println!("http://{address}{path}: {status}");
            ExitCode::SUCCESS
        }
        Ok(Ok((status, body))) => {
            eprintln!("http://{address}{path}: {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("http://{address}{path}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("http://{address}{path}: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    })
}

fn run_broker(listen: SocketAddr, listen_v5: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    logging::init(Default::default(), "info,rumqttd=warn")?;
    runtime()?.block_on(async {
        let token = CancellationToken::new();
        shutdown::cancel_on_signal(token.clone());
        let url = match listen_v5 {
            Some(v5) => {
                let listeners = loopline_common::embedded_broker::start_with_v5(listen, v5)?;
                tracing::info!(v5 = %listeners.v5, "embedded broker listening for MQTT 5");
                listeners.v4
            }
            None => loopline_common::embedded_broker::start(listen)?,
        };
        tracing::info!(%url, "embedded broker listening");
        // Tests and scripts wait for this line.
        println!("listening on {url}");
        token.cancelled().await;
        Ok(ExitCode::SUCCESS)
    })
}
