//! The trainer's error, and the exit code each kind of failure maps to.
//!
//! The exit code is the contract with dispatch, which retries only what may pass: `2` and `3`
//! say that running the same job again gives the same failure, `75` (`EX_TEMPFAIL`) that it
//! may not.

use std::path::PathBuf;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failure nobody can act on but a developer (a bug).
pub const EXIT_INTERNAL: i32 = 1;
/// Bad arguments or bad input data: not retryable.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Not enough usable data in the range: not retryable (until the range holds more).
pub const EXIT_NOT_ENOUGH_DATA: i32 = 3;
/// An I/O failure that may pass (`EX_TEMPFAIL` of `sysexits.h`): retryable.
pub const EXIT_TEMPFAIL: i32 = 75;

/// Everything that stops a training run or an annotation, naming the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A flag's value is unusable.
    #[error("bad argument {flag}: {reason}")]
    BadArgument {
        /// The flag, e.g. `--from`.
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An input file or its content is unusable (a corrupt Parquet file, a column of the
    /// wrong type, a champion artifact that does not load).
    #[error("{}: {reason}", path.display())]
    BadInput {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The range holds too little usable data to train or to set a threshold.
    #[error("not enough usable data: {what}: found {found}, need at least {needed}{detail}")]
    NotEnoughData {
        /// What was counted, e.g. `training windows of site=s/line=l in [from, to)`.
        what: String,
        /// How many there are.
        found: u64,
        /// How many are needed.
        needed: u64,
        /// Where the rest went (exclusions), starting with `; ` when present.
        detail: String,
    },
    /// Reading or writing a file failed in a way that may pass (a full disk, a file removed by
    /// compaction between listing and opening it, a network file system's hiccup).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The model could not be trained, quantised or serialised on this data.
    #[error("model: {0}")]
    Model(#[from] loopline_model::Error),
    /// Something that should not happen did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<loopline_common::lake::LakeIoError> for TrainError {
    fn from(e: loopline_common::lake::LakeIoError) -> TrainError {
        TrainError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl TrainError {
    /// The process exit code of this failure (see the crate docs for the contract).
    pub fn exit_code(&self) -> i32 {
        match self {
            TrainError::BadArgument { .. } | TrainError::BadInput { .. } => EXIT_BAD_INPUT,
            // Training the same data again with the same seed fails the same way.
            TrainError::Model(_) => EXIT_BAD_INPUT,
            TrainError::NotEnoughData { .. } => EXIT_NOT_ENOUGH_DATA,
            TrainError::Io { .. } => EXIT_TEMPFAIL,
            TrainError::Internal(_) => EXIT_INTERNAL,
        }
    }

    /// Whether dispatch may retry the job.
    pub fn is_retryable(&self) -> bool {
        self.exit_code() == EXIT_TEMPFAIL
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |source| TrainError::Io { path, source }
    }

    pub(crate) fn bad_input(path: impl Into<PathBuf>, reason: impl Into<String>) -> TrainError {
        TrainError::BadInput {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        let bad = TrainError::BadArgument {
            flag: "--from",
            reason: "x".into(),
        };
        assert_eq!(bad.exit_code(), 2);
        let short = TrainError::NotEnoughData {
            what: "training windows".into(),
            found: 3,
            needed: 30,
            detail: String::new(),
        };
        assert_eq!(short.exit_code(), 3);
        assert_eq!(
            short.to_string(),
            "not enough usable data: training windows: found 3, need at least 30"
        );
        let io = TrainError::Io {
            path: "/lake/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(io.exit_code(), 75);
        assert!(io.is_retryable() && !bad.is_retryable());
        assert_eq!(io.to_string(), "/lake/x: disk full");
    }
}
