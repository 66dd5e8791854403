use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use loopline_common::{CancellationToken, logging, shutdown};
use loopline_dispatch::cli::{self, Cli, Command, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = loopline_common::env::check(&Cli::command(), &["LOOPLINE_DISPATCH_"]) {
        eprintln!("loopline-dispatch: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match &cli.command {
        Command::Serve(args) => serve(args),
        Command::PublicKey { state_dir, lake } => {
            let dir = state_dir
                .clone()
                .unwrap_or_else(|| lake.join("_loopline").join("dispatch"));
            match loopline_dispatch::signing::ReleaseKey::load_or_generate(&dir) {
                Ok(key) => {
                    println!("{}", key.public_key_hex());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loopline-dispatch: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("loopline-dispatch: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(cli::client(cli.api, command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loopline-dispatch: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loopline-dispatch: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        return match cli::print_config(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loopline-dispatch: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.check_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init(config.log_format, "info") {
        eprintln!("loopline-dispatch: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loopline-dispatch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let stop = CancellationToken::new();
        shutdown::cancel_on_signal(stop.clone());
        let running = loopline_dispatch::service::start(config, stop.clone()).await?;
        stop.cancelled().await;
        running.stop().await;
        Ok::<(), loopline_dispatch::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopline-dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}
