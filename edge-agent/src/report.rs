//! What a run did, per device: written as JSON at exit when `report_file` is set, and returned
//! by [`crate::run`] for the in-process demo and for tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{Error, Result};

/// The outcome of one agent run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentReport {
    pub devices: Vec<DeviceReport>,
}

/// The outcome of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    pub site: String,
    pub line: String,
    pub device: String,
    /// Random per device task start; with `seq`, the batches' de-duplication key.
    pub boot_id: String,
    pub batches_sealed: u64,
    /// Batches (and their samples, over all channels) the broker acknowledged.
    pub batches_acked: u64,
    pub samples_acked: u64,
    /// Lowest and highest acknowledged `seq`; `None` when nothing was acknowledged.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Batches sealed but never acknowledged (dropped from a full buffer, or unacknowledged
    /// when the drain ended), and their samples.
    /// Batches an earlier boot left in the spool, acknowledged during this run.
    pub earlier_boot_batches_acked: u64,
    pub earlier_boot_samples_acked: u64,
    /// Batches still in the spool at exit (not acknowledged yet): sent at the next start.
    pub pending_batches: u64,
    /// Samples of this run's batches among them.
    pub pending_samples: u64,
    /// Batches that never made it into the spool or were dropped from it: lost.
    pub lost_batches: u64,
    pub lost_samples: u64,
    /// Inference windows scored, flagged anomalous, and failed on the NPU.
    pub windows_scored: u64,
    pub anomalies: u64,
    pub failed_inferences: u64,
    /// Model running at exit.
    pub model_version: String,
}

impl AgentReport {
    /// Batches lost over all devices.
    pub fn lost_batches(&self) -> u64 {
        self.devices.iter().map(|d| d.lost_batches).sum()
    }

    /// Batches acknowledged over all devices.
    pub fn pending_batches(&self) -> u64 {
        self.devices.iter().map(|d| d.pending_batches).sum()
    }

    pub fn batches_acked(&self) -> u64 {
        self.devices.iter().map(|d| d.batches_acked).sum()
    }

    /// Writes the report as pretty JSON: to a temporary file beside `path`, then renamed over
    /// it, so that a reader never sees half a report.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let error = |source: std::io::Error| Error::Report {
            path: path.to_owned(),
            source,
        };
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| error(std::io::Error::other(e)))?;
        text.push(b'\n');
        let tmp = temporary_path(path);
        let written = std::fs::File::create(&tmp).and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(error(e));
        }
        Ok(())
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pretty_json_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let report = AgentReport {
            devices: vec![DeviceReport {
                site: "s".into(),
                line: "l".into(),
                device: "d".into(),
                boot_id: "b".into(),
                batches_sealed: 5,
                batches_acked: 5,
                samples_acked: 20,
                first_seq: Some(0),
                last_seq: Some(4),
                earlier_boot_batches_acked: 0,
                earlier_boot_samples_acked: 0,
                pending_batches: 0,
                pending_samples: 0,
                lost_batches: 0,
                lost_samples: 0,
                windows_scored: 2,
                anomalies: 0,
                failed_inferences: 0,
                model_version: "m".into(),
            }],
        };
        report.write_json(&path).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(value["devices"][0]["last_seq"], 4);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = report
            .write_json(&dir.path().join("missing/report.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing/report.json"), "{err}");
    }
}
