//! The crate's one error type. Every variant names the file or the value it is about; the
//! variants for a failed append hand the payload back, so a caller never loses a batch to an
//! error without knowing it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::RecordId;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A payload that was not stored, handed back inside an [`Error`]. Its `Debug` shows only its
/// length, so logging an error never dumps a telemetry batch.
#[derive(Clone, PartialEq, Eq)]
pub struct Unwritten(pub Vec<u8>);

impl Unwritten {
    /// Length of the payload in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Unwritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Unwritten({} bytes)", self.0.len())
    }
}

/// What went wrong in the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation on the spool directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the spool was doing, e.g. "read segment".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Storing a record failed; nothing of it is in the spool and the payload comes back.
    #[error("{action} {} failed, so a {}-byte record was not stored: {source}", path.display(), payload.len())]
    Append {
        /// What the spool was doing, e.g. "append to segment".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
        payload: Unwritten,
    },
    /// The record was written, but `fdatasync` after it failed (`FsyncPolicy::Always`). It is
    /// in the spool and will be replayed, but may not survive a power cut.
    #[error("record {id} was written to {} but fdatasync failed, so it may not be durable: {source}", path.display())]
    Unsynced {
        id: RecordId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The record can never fit, however much is acknowledged or dropped.
    #[error(
        "a {len}-byte record takes {framed} bytes in a segment, more than the spool's max_bytes of {max_bytes}"
    )]
    TooLarge {
        len: u64,
        framed: u64,
        max_bytes: u64,
        payload: Unwritten,
    },
    /// A configuration value is out of range.
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// An fsync policy string did not parse.
    #[error(
        "invalid fsync policy {input:?}: expected \"always\", \"never\" or \"interval:<duration>\" (e.g. \"interval:200ms\")"
    )]
    ParseFsyncPolicy { input: String },
    /// A when-full policy string did not parse.
    #[error("invalid when_full policy {input:?}: expected \"block\" or \"drop_oldest\"")]
    ParseWhenFull { input: String },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Turns an I/O error met while preparing to store `payload` into one that hands it back.
    pub(crate) fn give_back(self, payload: Vec<u8>) -> Error {
        match self {
            Error::Io {
                action,
                path,
                source,
            } => Error::Append {
                action,
                path,
                source,
                payload: Unwritten(payload),
            },
            other => other,
        }
    }

    /// The payload this error hands back, if the record was not stored.
    pub fn into_payload(self) -> Option<Vec<u8>> {
        match self {
            Error::Append { payload, .. } | Error::TooLarge { payload, .. } => Some(payload.0),
            _ => None,
        }
    }
}
