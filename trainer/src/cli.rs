//! The command line: training flags (the job contract, `docs/training.md`) and the `annotate`
//! subcommand. Values are parsed into typed ones here, once; nothing later re-checks them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use crate::error::{Result, TrainError};

/// `loopline-train`: train with the flags below, or `annotate`. The umbrella binary embeds
/// this as `loopline train`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrainCommand {
    #[command(subcommand)]
    pub command: Option<TrainSubcommand>,
    #[command(flatten)]
    pub train: Option<TrainArgs>,
}

/// What `loopline-train` can do besides training.
#[derive(Debug, Clone, Subcommand)]
pub enum TrainSubcommand {
    /// Append an operator annotation (a fault, a span to exclude, or a span known normal) to
    /// the lake's `annotations` table.
    Annotate(AnnotateArgs),
}

/// One training job: where its data is, what to write, how to train.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// The lake's root folder.
    #[arg(long)]
    pub lake: PathBuf,
    /// Site whose line to train for.
    #[arg(long)]
    pub site: String,
    /// Line to train for.
    #[arg(long)]
    pub line: String,
    /// Start of the data range, inclusive: RFC 3339 (`2026-05-01T10:00:00Z`) or microseconds
    /// since the Unix epoch.
    #[arg(long, value_parser = parse_time_us)]
    pub from: i64,
    /// End of the data range, exclusive; same forms as `--from`.
    #[arg(long, value_parser = parse_time_us)]
    pub to: i64,
    /// Output folder (created): `model.safetensors`, then `metrics.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Version of the model written.
    #[arg(long)]
    pub version: String,
    /// Seed of training: the same data and seed give the same artifact, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The running model's artifact, evaluated on the same held-out windows.
    #[arg(long)]
    pub champion: Option<PathBuf>,
    /// The most recent share of the range, by time, held out from training: the threshold
    /// is set and the models evaluated on it.
    #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
    pub holdout_fraction: f64,
    /// Window length; must match the agents' (`window` in their configuration).
    #[arg(long, default_value = "1s", value_parser = parse_window)]
    pub window: Duration,
    /// Channels the model reads, comma-separated, in feature order.
    #[arg(long, value_delimiter = ',', default_values_t = loopline_model::DEFAULT_CHANNELS.map(str::to_owned))]
    pub channels: Vec<String>,
    /// Largest share of the training windows the running model may flag for its flags to be
    /// trusted (flagged windows left out); above it the operating point has moved, its flags
    /// say nothing, and robust trimming decides instead.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    pub max_flag_share: f64,
    /// Robust trimming limit: windows scoring above median + this many (normal-consistent)
    /// MADs of the training scores are left out, and the model is fitted again.
    #[arg(long, default_value_t = 6.0)]
    pub trim_mads: f64,
    /// Fewest training windows (after every exclusion) to train on; fewer exit with 3.
    #[arg(long, default_value_t = 30)]
    pub min_train_windows: u64,
    /// Fewest held-out normal windows to set the threshold on; fewer exit with 3.
    #[arg(long, default_value_t = 10)]
    pub min_holdout_windows: u64,
    /// Passes over the training windows.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Fewest optimiser steps: a small training set gets more passes up to this many steps.
    /// Kept low so that a few minutes of data are not memorised (an autoencoder that
    /// reconstructs its training noise scores every unseen normal window high).
    #[arg(long, default_value_t = 200)]
    pub min_steps: usize,
    /// Quantile of the held-out normal windows' int8 scores the threshold starts from.
    #[arg(long, default_value_t = 0.995, value_parser = parse_fraction)]
    pub threshold_quantile: f64,
    /// Factor (≥ 1) applied to that quantile: headroom for normal windows not seen.
    #[arg(long, default_value_t = 1.5)]
    pub threshold_margin: f32,
}

/// An operator annotation to append.
#[derive(Debug, Clone, Args)]
pub struct AnnotateArgs {
    /// The lake's root folder.
    #[arg(long)]
    pub lake: PathBuf,
    #[arg(long)]
    pub site: String,
    #[arg(long)]
    pub line: String,
    /// Start of the span, inclusive (RFC 3339 or microseconds since the epoch).
    #[arg(long, value_parser = parse_time_us)]
    pub from: i64,
    /// End of the span, exclusive.
    #[arg(long, value_parser = parse_time_us)]
    pub to: i64,
    /// What the span is.
    #[arg(long, value_enum)]
    pub label: AnnotationLabel,
    /// Why: what the operator saw or did.
    #[arg(long)]
    pub note: String,
    /// The device it concerns; the whole line when absent.
    #[arg(long)]
    pub device: Option<String>,
    /// Who annotated it (default: `$USER`).
    #[arg(long)]
    pub author: Option<String>,
}

/// What an operator says about a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLabel {
    /// A real fault: never trained on; counts as suspect in held-out data.
    Fault,
    /// Not representative (maintenance, a trial run): never trained on.
    Exclude,
    /// Known normal: kept even when the running model flagged it.
    Normal,
}

impl AnnotationLabel {
    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotationLabel::Fault => "fault",
            AnnotationLabel::Exclude => "exclude",
            AnnotationLabel::Normal => "normal",
        }
    }

    /// The label stored as `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Fault, Self::Exclude, Self::Normal]
            .into_iter()
            .find(|l| l.as_str() == name)
    }
}

/// Parses RFC 3339 (`2026-05-01T10:00:00Z`, any offset) or integer microseconds since the
/// Unix epoch.
pub fn parse_time_us(text: &str) -> Result<i64, String> {
    if let Ok(us) = text.parse::<i64>() {
        return Ok(us);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            format!("`{text}` is neither RFC 3339 (2026-05-01T10:00:00Z) nor microseconds: {e}")
        })
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not within (0, 1)")),
        Err(e) => Err(format!("`{text}`: {e}")),
    }
}

fn parse_window(text: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if window < Duration::from_millis(1) {
        return Err(format!("`{text}` is shorter than 1ms"));
    }
    Ok(window)
}

/// Checks a site, line or device name as ingest does: ASCII letters, digits, `_`, `.` and
/// `-`, 1 to 64 characters, not starting with `.`; so it is always a safe folder name.
pub(crate) fn check_name(flag: &'static str, name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TrainError::BadArgument {
            flag,
            reason: format!(
                "`{name}` is not a name (1 to 64 ASCII letters, digits, `_`, `.`, `-`, not starting with `.`)"
            ),
        })
    }
}

/// Checks what clap cannot: names, the range, the margin, the channels.
pub(crate) fn check_train_args(args: &TrainArgs) -> Result<()> {
    check_name("--site", &args.site)?;
    check_name("--line", &args.line)?;
    check_range(args.from, args.to)?;
    if !(args.threshold_margin.is_finite() && args.threshold_margin >= 1.0) {
        return Err(TrainError::BadArgument {
            flag: "--threshold-margin",
            reason: format!("{} is not a finite factor ≥ 1", args.threshold_margin),
        });
    }
    if !(args.trim_mads.is_finite() && args.trim_mads > 0.0) {
        return Err(TrainError::BadArgument {
            flag: "--trim-mads",
            reason: format!("{} is not > 0", args.trim_mads),
        });
    }
    let channels: Vec<&str> = args.channels.iter().map(String::as_str).collect();
    loopline_model::FeatureLayout::new(&channels).map_err(|e| TrainError::BadArgument {
        flag: "--channels",
        reason: e.to_string(),
    })?;
    if args.version.trim().is_empty() {
        return Err(TrainError::BadArgument {
            flag: "--version",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_range(from: i64, to: i64) -> Result<()> {
    if from >= to {
        return Err(TrainError::BadArgument {
            flag: "--to",
            reason: format!("{to} is not after --from {from}: the range [from, to) is empty"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        command: TrainCommand,
    }

    #[test]
    fn times_parse_as_rfc3339_or_microseconds() {
        assert_eq!(parse_time_us("1700000000000000"), Ok(1_700_000_000_000_000));
        assert_eq!(
            parse_time_us("2026-01-01T00:00:01Z"),
            Ok(1_767_225_601_000_000)
        );
        assert_eq!(
            parse_time_us("2026-01-01T01:00:01+01:00"),
            Ok(1_767_225_601_000_000)
        );
        assert!(parse_time_us("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn flags_train_and_the_subcommand_annotates() {
        let cli = Cli::try_parse_from([
            "loopline-train",
            "--lake",
            "/l",
            "--site",
            "s",
            "--line",
            "l1",
            "--from",
            "0",
            "--to",
            "2026-01-01T00:00:00Z",
            "--out",
            "/o",
            "--version",
            "v2",
        ])
        .unwrap();
        let train = cli.command.train.unwrap();
        assert_eq!(train.seed, 1);
        assert_eq!(train.holdout_fraction, 0.25);
        assert_eq!(train.window, Duration::from_secs(1));
        assert_eq!(train.channels.len(), 7);
        assert!(cli.command.command.is_none());
        check_train_args(&train).unwrap();

        let cli = Cli::try_parse_from([
            "loopline-train",
            "annotate",
            "--lake",
            "/l",
            "--site",
            "s",
            "--line",
            "l1",
            "--from",
            "0",
            "--to",
            "10",
            "--label",
            "exclude",
            "--note",
            "maintenance",
        ])
        .unwrap();
        let Some(TrainSubcommand::Annotate(a)) = cli.command.command else {
            panic!("not annotate");
        };
        assert_eq!(a.label, AnnotationLabel::Exclude);
        assert_eq!(a.device, None);

        let err = Cli::try_parse_from(["loopline-train", "--lake", "/l", "--site", "s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--line"), "{err}");
        let err = Cli::try_parse_from([
            "loopline-train",
            "--lake",
            "/l",
            "--site",
            "s",
            "--line",
            "l",
            "--from",
            "0",
            "--to",
            "1",
            "--out",
            "/o",
            "--version",
            "v",
            "--holdout-fraction",
            "1.5",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("not within (0, 1)"), "{err}");
    }

    #[test]
    fn names_and_ranges_are_checked() {
        assert!(check_name("--site", "plant-1.a_b").is_ok());
        let err = check_name("--line", "../x").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("bad argument --line: `../x`"));
        assert!(check_range(5, 5).is_err());
    }
}
