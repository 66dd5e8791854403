//! Loopline's on-disk spool: append-only, checksummed segment files holding telemetry batches
//! until the broker acknowledges them.
//!
//! The edge agent appends every telemetry batch here before publishing it, hands records to the
//! MQTT client with [`Spool::next_unsent`], and calls [`Spool::ack`] when the broker's PUBACK
//! arrives. A broker outage or a reboot loses nothing that fits under the cap; what happens at
//! the cap is an explicit, counted policy ([`WhenFull`]).
//!
//! ```
//! use loopline_spool::{Appended, Spool, SpoolConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let (mut spool, _recovery) = Spool::open(dir.path(), SpoolConfig::default())?;
//! let Appended::Stored { id, .. } = spool.append(b"batch".to_vec())? else { unreachable!() };
//! let record = spool.next_unsent()?.expect("one record is pending");
//! assert_eq!((record.id, record.payload.as_slice()), (id, &b"batch"[..]));
//! spool.ack(id)?;
//! assert_eq!(spool.stats().pending_records, 0);
//! spool.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How this crate is laid out
//!
//! - [`spool`](crate::Spool) (`spool.rs`): the [`Spool`] itself, with the design and its
//!   invariants at the top of the module: segments, recovery, replay, acks, the cap.
//! - `format.rs`: the byte layout of segments and of the ack log, and the scanner recovery runs
//!   over a segment; pure functions over bytes, tested without files.
//! - `ledger.rs`: the append-only ack log and its atomic compaction.
//! - `config.rs`: [`SpoolConfig`], [`FsyncPolicy`] and [`WhenFull`], with the text forms the
//!   agent's configuration uses.
//! - `error.rs`: the crate's [`Error`]; errors from a failed append hand the payload back.

mod config;
mod error;
mod format;
mod ledger;
mod spool;

pub use config::{FsyncPolicy, SpoolConfig, WhenFull};
pub use error::{Error, Result, Unwritten};
pub use format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use spool::{
    Appended, Dropped, QUARANTINE_DIR, Quarantined, Record, RecordId, Recovery, Spool, SpoolStats,
};

/// Makes a directory's entries (created, renamed files) durable. A no-op where directories
/// cannot be opened as files.
pub(crate) fn sync_dir(dir: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
