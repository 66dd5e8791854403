//! Plumbing that every Loopline binary needs, kept in one small crate.
//!
//! How this crate is laid out:
//! - [`broker`]: the broker address (`mqtt://host:port`, `mqtts://user:pass@host:port`) and the
//!   MQTT options derived from it.
//! - [`tls`]: the TLS files of an `mqtts://` broker and the rustls client (ring) built from them.
//! - [`config`]: loading a TOML config file with errors that name the file and the key.
//! - `embedded_broker` (feature `embedded-broker`): rumqttd in-process, for the demo and tests.
//! - `env` (feature `cli`): `LOOPLINE_<BINARY>_*` variables no setting reads, as an error.
//! - [`duration`]: human-readable durations (`"1s"`, `"250ms"`) in config files and flags.
//! - [`logging`]: `tracing` set-up, human or JSON.
//! - `lake` (feature `lake`): the lake's partition folders, pruned to a time range.
//! - [`http`]: the read-only `/metrics` and `/healthz` endpoint.
//! - [`shutdown`]: SIGINT/SIGTERM into a cancellation token that every task watches.

pub mod broker;
pub mod config;
pub mod duration;
#[cfg(feature = "embedded-broker")]
pub mod embedded_broker;
#[cfg(feature = "cli")]
pub mod env;
pub mod http;
#[cfg(feature = "lake")]
pub mod lake;
pub mod logging;
pub mod shutdown;
pub mod tls;

pub use broker::{BrokerUrl, Credentials, Scheme};
pub use tls::TlsConfig;
pub use tokio_util::sync::CancellationToken;

/// Errors of this crate; each names the input that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker address {url:?}: {reason}")]
    BrokerUrl { url: String, reason: String },
    #[error("config file {path}: {source}")]
    ConfigRead {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ConfigParse {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("embedded broker: {0}")]
    EmbeddedBroker(String),
    #[error("TLS to broker {broker}: {reason}")]
    Tls { broker: String, reason: String },
    #[error("{key} {path}: {reason}")]
    TlsFile {
        key: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("log filter {filter:?}: {message}")]
    LogFilter { filter: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
