//! `tracing` set-up shared by the binaries.

use std::io::IsTerminal;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

use crate::{Error, Result};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format (human or json)")),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `default_filter`.
pub fn init(format: LogFormat, default_filter: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => default_filter.to_owned(),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|e| Error::LogFilter {
        filter: filter.clone(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (tests, the in-process demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
