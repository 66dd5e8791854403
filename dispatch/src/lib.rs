//! Training dispatch: decides when a line's model is retrained, runs the training job on the
//! GPU pool, and rolls the better model back out to the line's devices.
//!
//! ```text
//!  lake ──► triggers (volume, drift, schedule, manual; guards) ──► job queue (SQLite)
//!                                                                   │ scheduler: priority, fair share
//!                                                                   ▼
//!                                      GPU pool: backend `local` (child processes) | `slurm`
//!                                                                   │ loopline-train → artifact + metrics.json
//!                                                                   ▼
//!                             registry (<lake>/_models) ──► signed release ──► canary ──► line
//! ```

pub mod api;
pub mod backend;
pub mod cli;
pub mod config;
pub mod drift;
pub mod lake;
pub mod launcher;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod rollout;
pub mod scheduler;
pub mod service;
pub mod signing;
pub mod store;
pub mod triggers;

/// Errors of dispatch's own work, naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error(transparent)]
    Signing(#[from] signing::SigningError),
    #[error(transparent)]
    Lake(#[from] lake::LakeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
