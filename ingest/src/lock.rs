//! Advisory file locks that keep lake compaction and live ingesters out of each other's way.
//!
//! Two lock files live under `<lake>/_loopline/`:
//! - `lake.lock`: every ingester holds it **shared** while it commits a file into a partition
//!   folder (from creating the `.tmp` to the folder fsync after the rename); compaction holds
//!   it **exclusive** only for the last step of a partition (re-list, link late files, swap).
//!   So a late file is never half-way into a folder that is being swapped away, and ingesters
//!   never wait on each other.
//! - `compact.lock`: held exclusive for a whole compaction run, taken with `try_lock`, so two
//!   compactions of one lake never run at once; the second fails at once instead of waiting.
//!
//! The locks are `flock(2)` locks on an open file description: they belong to the open file,
//! not the process, so an ingester and a compaction in one process exclude each other as two
//! processes would, and the kernel drops them when a process dies, so a crash never leaves a
//! lake locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The lock ingesters share while committing and compaction takes alone to swap, under the
/// lake root.
pub const LAKE_LOCK: &str = "_loopline/lake.lock";

/// The lock one compaction run holds, under the lake root.
pub const COMPACT_LOCK: &str = "_loopline/compact.lock";

/// An open lock file. Locking it returns a guard that unlocks on drop.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a LockFile,
}

impl LockFile {
    /// Opens (creating if needed) the lock file at `path`; its folder must exist.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(LockFile {
            file,
            path: path.to_owned(),
        })
    }

    /// Opens the lake's [`LAKE_LOCK`]; `<lake>/_loopline` must exist.
    pub fn lake(lake: &Path) -> Result<Self> {
        Self::open(&lake.join(LAKE_LOCK))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the lock in shared mode (beside other shared holders).
    pub fn shared(&self) -> Result<LockGuard<'_>> {
        self.file.lock_shared().map_err(|source| self.io(source))?;
        Ok(LockGuard { lock: self })
    }

    /// Waits for the lock in exclusive mode (no other holder at all).
    pub fn exclusive(&self) -> Result<LockGuard<'_>> {
        self.file.lock().map_err(|source| self.io(source))?;
        Ok(LockGuard { lock: self })
    }

    /// Takes the lock in exclusive mode if nobody holds it; `None` when somebody does.
    pub fn try_exclusive(&self) -> Result<Option<LockGuard<'_>>> {
        match self.file.try_lock() {
            Ok(()) => Ok(Some(LockGuard { lock: self })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(self.io(source)),
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // An unlock that fails leaves the lock to the file's close, which always releases it.
        if let Err(e) = self.lock.file.unlock() {
            tracing::warn!(path = %self.lock.path.display(), error = %e, "unlocking failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_shared_and_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let (a, b) = (
            LockFile::open(&path).unwrap(),
            LockFile::open(&path).unwrap(),
        );
        let guard = a.exclusive().unwrap();
        assert!(b.try_exclusive().unwrap().is_none());
        assert!(matches!(
            b.file.try_lock_shared(),
            Err(TryLockError::WouldBlock)
        ));
        drop(guard);
        let shared = b.shared().unwrap();
        assert!(a.try_exclusive().unwrap().is_none());
        let second_shared = a.shared().unwrap();
        drop((shared, second_shared));
        assert!(a.try_exclusive().unwrap().is_some());
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let err = LockFile::lake(dir.path()).unwrap_err().to_string();
        assert!(err.contains("_loopline/lake.lock"), "{err}");
    }
}
