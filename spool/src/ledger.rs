//! The ack log: which records the broker acknowledged, so that a restart does not send them
//! again.
//!
//! Append-only rather than a checkpoint rewritten on every ack: one 12-byte `write` per ack
//! (reaching the page cache, so a killed process keeps it) and no fsync of its own; the log is
//! synced with the data (`sync`, `maybe_sync`, `close`). Losing the last acks to a power cut only
//! means resending those records, which ingest de-duplicates. The log is rewritten compactly
//! (temporary file, fsync, rename, directory fsync) when the spool opens and when it has grown
//! to hold mostly acks for segments already deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{self, AckLog};
use crate::sync_dir;

/// File name of the ack log inside the spool directory.
pub(crate) const ACK_LOG_NAME: &str = "acks.log";

#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Entries in the file, live or not.
    pub(crate) entries: u64,
    /// Whether entries were written since the last sync.
    pub(crate) dirty: bool,
}

/// Reads the ack log of `dir`; a missing log is an empty one.
pub(crate) fn load(dir: &Path) -> Result<AckLog> {
    let path = dir.join(ACK_LOG_NAME);
    match fs::read(&path) {
        Ok(bytes) => Ok(format::decode_ack_log(&bytes)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(AckLog::default()),
        Err(e) => Err(Error::io("read ack log", path, e)),
    }
}

impl Ledger {
    /// Replaces the ack log of `dir` atomically with one holding `floor` and `ids`.
    pub(crate) fn rewrite(
        dir: &Path,
        floor: u64,
        ids: impl Iterator<Item = u64>,
    ) -> Result<Ledger> {
        let path = dir.join(ACK_LOG_NAME);
        let tmp = dir.join(format!("{ACK_LOG_NAME}.tmp"));
        let mut bytes = format::encode_ack_log_header(floor).to_vec();
        let mut entries = 0;
        for id in ids {
            bytes.extend_from_slice(&format::encode_ack_entry(id));
            entries += 1;
        }
        let mut f = File::create(&tmp).map_err(|e| Error::io("create ack log", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io("write ack log", &tmp, e))?;
        f.sync_all()
            .map_err(|e| Error::io("fsync ack log", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename ack log into place", &path, e))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open ack log", &path, e))?;
        Ok(Ledger {
            path,
            file,
            len: bytes.len() as u64,
            entries,
            dirty: false,
        })
    }

    /// Records an ack. One `write` call, so a process killed right after keeps it. A failed
    /// write is cut off again, so that later entries stay aligned.
    pub(crate) fn append(&mut self, id: u64) -> Result<()> {
        if let Err(e) = self.file.write_all(&format::encode_ack_entry(id)) {
            let _ = self.file.set_len(self.len);
            return Err(Error::io("append to ack log", &self.path, e));
        }
        self.len += format::ACK_ENTRY_LEN as u64;
        self.entries += 1;
        self.dirty = true;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|e| Error::io("fsync ack log", &self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }
}
