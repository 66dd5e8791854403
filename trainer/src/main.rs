//! `loopline-train`: one training job of the dispatch contract (`docs/training.md`).

use clap::Parser;

/// Trains the line's anomaly model on the lake's data and writes `model.safetensors` and
/// `metrics.json`; exit codes: 0 success, 2 bad arguments or input, 3 not enough usable data,
/// 75 a retryable I/O failure.
#[derive(Debug, Parser)]
// No `--version` flag of clap's own: `--version` is the model version to write.
#[command(name = "loopline-train", disable_version_flag = true)]
struct Cli {
    #[command(flatten)]
    command: loopline_trainer::TrainCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = loopline_trainer::main_with(cli.command);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
