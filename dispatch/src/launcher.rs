//! Turns a job into the trainer command the backend runs: the training contract's flags
//! (`docs/training.md`), its folder, and its GPUs.

use std::path::{Path, PathBuf};

use crate::backend::JobSpec;
use crate::scheduler::{JobLauncher, job_dir};
use crate::store::Job;

/// Builds `loopline-train` (or any command honouring its contract) invocations.
#[derive(Debug, Clone)]
pub struct TrainerLauncher {
    /// The command before the contract flags.
    pub command: Vec<String>,
    pub lake: PathBuf,
    pub state_dir: PathBuf,
    pub seed: u64,
}

impl TrainerLauncher {
    /// Where a job's trainer writes `model.safetensors` and `metrics.json`.
    pub fn out_dir(state_dir: &Path, job: &Job) -> PathBuf {
        job_dir(state_dir, job).join("out")
    }

    /// The model version a job produces: line, data end and job id, e.g.
    /// `line-1-20261129T101500Z-j7`.
    pub fn version(job: &Job) -> String {
        let end = chrono::DateTime::from_timestamp_micros(job.request.data_to_us)
            .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_else(|| job.request.data_to_us.to_string());
        format!("{}-{end}-j{}", job.request.line, job.id)
    }

    /// The champion's artifact of `line`, if the registry has one.
    fn champion(&self, line: &str) -> Option<PathBuf> {
        crate::registry::Registry::open(&self.lake)
            .ok()?
            .champion(line)
            .ok()
            .flatten()
            .map(|entry| entry.model_path())
    }
}

impl JobLauncher for TrainerLauncher {
    fn spec(&self, job: &Job, gpus: Option<Vec<u32>>) -> std::io::Result<JobSpec> {
        let workdir = job_dir(&self.state_dir, job);
        std::fs::create_dir_all(&workdir)?;
        let request = &job.request;
        let mut command = self.command.clone();
        let lake = std::fs::canonicalize(&self.lake).unwrap_or_else(|_| self.lake.clone());
        command.extend([
            "--lake".to_owned(),
            lake.display().to_string(),
            "--site".to_owned(),
            request.site.clone(),
            "--line".to_owned(),
            request.line.clone(),
            "--from".to_owned(),
            request.data_from_us.to_string(),
            "--to".to_owned(),
            request.data_to_us.to_string(),
            "--out".to_owned(),
            Self::out_dir(&self.state_dir, job).display().to_string(),
            "--version".to_owned(),
            Self::version(job),
            "--seed".to_owned(),
            self.seed.to_string(),
        ]);
        if let Some(champion) = self.champion(&request.line) {
            command.extend(["--champion".to_owned(), champion.display().to_string()]);
        }
        Ok(JobSpec {
            job_id: job.name(),
            command,
            env: vec![("LOOPLINE_JOB_ID".to_owned(), job.name())],
            gpus: request.gpus,
            gpu_indices: gpus,
            workdir,
            time_limit: request.run_timeout,
        })
    }
}
