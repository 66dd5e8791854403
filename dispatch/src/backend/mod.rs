//! Where training jobs run: one trait, two backends.
//!
//! - [`local`]: child processes on this machine, each handed its GPUs through
//!   `CUDA_VISIBLE_DEVICES`; the embedded default.
//! - [`slurm`]: `sbatch --gres=gpu:N`, polled with `squeue`/`scontrol`, cancelled with
//!   `scancel`.
//!
//! The scheduler owns the decisions (which job, how many GPUs, when to give up); a backend only
//! starts, observes and stops processes. Its methods block (they run commands or touch
//! `/proc`) and are called from a blocking thread. A job's [`Handle`] is plain text so that it
//! is stored in SQLite with the job: a restarted dispatch polls the same handle and finds the
//! same job, running or finished, without starting it again.

use std::path::PathBuf;
use std::time::Duration;

pub mod local;
pub mod slurm;

/// Everything a backend needs to start one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Dispatch's job id (e.g. `"j-42"`); names the job in the backend too.
    pub job_id: String,
    /// The command, `argv[0]` first (an absolute path).
    pub command: Vec<String>,
    /// Extra environment for the command, on top of the backend's own.
    pub env: Vec<(String, String)>,
    /// GPUs the job asks for (0 for a CPU-only job).
    pub gpus: u32,
    /// GPU indices the scheduler chose, for backends that do not choose themselves (`local`);
    /// `None` lets the backend choose (`slurm`).
    pub gpu_indices: Option<Vec<u32>>,
    /// An existing folder for the job: its working directory, where `job.log` gets its
    /// standard output and error.
    pub workdir: PathBuf,
    /// Wall-clock limit. The scheduler enforces it too; a backend that can (Slurm's `--time`)
    /// also enforces it, as a backstop when dispatch is down.
    pub time_limit: Duration,
}

/// A backend's name for a started job (a process id with its start time, a Slurm job id).
pub type Handle = String;

/// What a backend sees of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// Accepted but not started: the backend's reason (`"Resources"`, `"Priority"`).
    Pending { reason: String },
    /// Started; with the GPU indices it runs on, when the backend knows them.
    Running { gpus: Option<Vec<u32>> },
    /// Ended by itself with this exit status.
    Exited { code: i32 },
    /// Killed by this signal (not through [`Backend::cancel`]).
    Signalled { signal: i32 },
    /// Ended by the backend's own time limit.
    TimedOut,
    /// Ended by [`Backend::cancel`] (or an operator's `scancel`).
    Cancelled,
    /// The backend has no trace of the job (it forgot it, or the node failed).
    Lost { reason: String },
}

impl Observed {
    /// Whether the job has ended, one way or another.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Observed::Pending { .. } | Observed::Running { .. })
    }
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or its command failed; worth trying again.
    #[error("{backend}: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// The backend refused the job as it is; trying again will not help.
    #[error("{backend} refused the job: {detail}")]
    Refused {
        backend: &'static str,
        detail: String,
    },
}

impl BackendError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }
}

/// A place to run training jobs.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `"local"` or `"slurm"`.
    fn name(&self) -> &'static str;
    /// Starts (or queues) the job; returns its handle.
    fn submit(&self, spec: &JobSpec) -> Result<Handle, BackendError>;
    /// What the job is doing now. Also answers for jobs started by an earlier dispatch process.
    fn poll(&self, handle: &str) -> Result<Observed, BackendError>;
    /// Stops the job (no-op when it has ended). A later [`Backend::poll`] says
    /// [`Observed::Cancelled`].
    fn cancel(&self, handle: &str) -> Result<(), BackendError>;
}
