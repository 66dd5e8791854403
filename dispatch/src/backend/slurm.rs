//! A Slurm cluster through its command-line tools.
//!
//! Invariants:
//!
//! - A job is a batch script, `<workdir>/job.sbatch`, submitted with `sbatch --parsable`; the
//!   handle is the Slurm job id. The script is written before the submission and names every
//!   option in `#SBATCH` lines (job name `loopline-<job id>`, `--gres=gpu:N`, `--time` in whole
//!   minutes rounded up, `--output` and `--chdir` in the workdir), so what ran can be read back.
//! - The script `exec`s the command, so the batch step's exit status is the command's:
//!   `ExitCode=3:0` is [`Observed::Exited`] `{ code: 3 }` and `ExitCode=0:9` is
//!   [`Observed::Signalled`] `{ signal: 9 }`.
//! - The state comes from `scontrol show job -o -d <id>`, which also names the GPU indices the
//!   job got (`GRES=gpu:2(IDX:0-1)`); `squeue -t all` is the fallback when `scontrol` fails. A job
//!   id the controller does not know ("Invalid job id specified": it was never there, or it was
//!   purged `MinJobAge` seconds after it ended) is [`Observed::Lost`].
//! - A failed command is [`BackendError::Unavailable`] (the controller may be down or busy),
//!   except `sbatch` rejecting the job itself (more GPUs than any node has, an unknown
//!   partition), which is [`BackendError::Refused`].
//! - A job asking for no GPU gets `CUDA_VISIBLE_DEVICES=` (empty) from its script, so it never
//!   inherits dispatch's; one with GPUs gets Slurm's.
//!
//! The tools are run as they are: their own message timeouts (`MessageTimeout`) bound how
//! long a call can block.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{Backend, BackendError, Handle, JobSpec, Observed};

const NAME: &str = "slurm";

/// The batch script, in the job's working directory.
pub const SCRIPT_FILE: &str = "job.sbatch";
/// The job's standard output and error, in its working directory.
pub const LOG_FILE: &str = "job.log";

/// Where the Slurm tools are and where jobs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmConfig {
    /// The partition to submit to; `None` uses the cluster's default partition.
    pub partition: Option<String>,
    /// `sbatch`, which submits.
    pub sbatch: PathBuf,
    /// `squeue`, the fallback for polling.
    pub squeue: PathBuf,
    /// `scontrol`, which polls.
    pub scontrol: PathBuf,
    /// `scancel`, which cancels.
    pub scancel: PathBuf,
}

impl Default for SlurmConfig {
    /// The cluster's default partition and the tools found on `PATH` (or in `/usr/bin`, where
    /// distributions install them, when `PATH` lacks it).
    fn default() -> Self {
        Self {
            partition: None,
            sbatch: find_tool("sbatch"),
            squeue: find_tool("squeue"),
            scontrol: find_tool("scontrol"),
            scancel: find_tool("scancel"),
        }
    }
}

/// `name` on `PATH`, then in `/usr/bin` and `/usr/local/bin`; the bare name when none has it
/// (running it then fails as [`BackendError::Unavailable`]).
pub fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Submits to a Slurm cluster; see the module documentation.
#[derive(Debug, Clone)]
pub struct SlurmBackend {
    config: SlurmConfig,
}

impl SlurmBackend {
    /// A backend that runs the tools `config` names; nothing is contacted until the first call.
    pub fn new(config: SlurmConfig) -> Self {
        Self { config }
    }

    /// The tools and partition this backend uses.
    pub fn config(&self) -> &SlurmConfig {
        &self.config
    }
}

fn unavailable(detail: String) -> BackendError {
    BackendError::Unavailable {
        backend: NAME,
        detail,
    }
}

fn refused(detail: String) -> BackendError {
    BackendError::Refused {
        backend: NAME,
        detail,
    }
}

/// Runs a tool; `Err` only when it could not be started.
fn run(tool: &Path, args: &[&OsStr]) -> Result<Output, BackendError> {
    Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("running {}: {e}", tool.display())))
}

fn describe(tool: &Path, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout.trim()
    } else {
        stderr.trim()
    };
    format!("{} failed ({}): {text}", tool.display(), out.status)
}

/// `sbatch` messages that mean the job as written can never run here.
const REFUSALS: &[&str] = &[
    "Requested node configuration is not available",
    "Invalid generic resource",
    "Invalid partition",
    "Invalid account",
    "Invalid qos",
    "Requested time limit is invalid",
    "More processors requested than permitted",
    "Node count specification invalid",
    "Invalid feature specification",
    "User's group not permitted",
    "Access/permission denied",
];

/// Shell single quoting: `it's` becomes `'it'\''s'`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value for an `#SBATCH` line: sbatch splits those lines on blanks and honours double
/// quotes; `%` starts one of its file-name patterns. Values that need more are refused.
fn sbatch_value(what: &str, value: &str) -> Result<String, BackendError> {
    if value
        .chars()
        .any(|c| c.is_control() || matches!(c, '"' | '\\' | '%'))
    {
        return Err(refused(format!(
            "{what} {value:?} holds a character an #SBATCH line cannot carry"
        )));
    }
    Ok(if value.contains(char::is_whitespace) {
        format!("\"{value}\"")
    } else {
        value.to_string()
    })
}

/// Whole minutes, rounded up, at least one (Slurm's `--time=0` means no limit).
fn time_minutes(limit: Duration) -> u64 {
    let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
    secs.div_ceil(60).max(1)
}

/// The batch script for `spec`, whose working directory is `workdir` (absolute).
fn batch_script(
    spec: &JobSpec,
    workdir: &Path,
    partition: Option<&str>,
) -> Result<String, BackendError> {
    if spec.command.is_empty() {
        return Err(refused(format!("job {}: empty command", spec.job_id)));
    }
    let workdir_text = workdir.to_str().ok_or_else(|| {
        refused(format!(
            "job {}: working directory {} is not UTF-8",
            spec.job_id,
            workdir.display()
        ))
    })?;
    let mut s = String::from("#!/bin/sh\n");
    let mut opt = |line: String| {
        s.push_str("#SBATCH ");
        s.push_str(&line);
        s.push('\n');
    };
    opt(format!(
        "--job-name={}",
        sbatch_value("job id", &format!("loopline-{}", spec.job_id))?
    ));
    if let Some(p) = partition {
        opt(format!("--partition={}", sbatch_value("partition", p)?));
    }
    if spec.gpus > 0 {
        opt(format!("--gres=gpu:{}", spec.gpus));
    }
    opt(format!("--time={}", time_minutes(spec.time_limit)));
    opt(format!(
        "--output={}",
        sbatch_value("working directory", &format!("{workdir_text}/{LOG_FILE}"))?
    ));
    opt(format!(
        "--chdir={}",
        sbatch_value("working directory", workdir_text)?
    ));
    for (key, value) in &spec.env {
        if !valid_env_name(key) {
            return Err(refused(format!(
                "job {}: {key:?} is not an environment variable name",
                spec.job_id
            )));
        }
        s.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    if spec.gpus == 0 {
        s.push_str("export CUDA_VISIBLE_DEVICES=''\n");
    }
    s.push_str("exec");
    for arg in &spec.command {
        s.push(' ');
        s.push_str(&shell_quote(arg));
    }
    s.push('\n');
    Ok(s)
}

/// The value of the first `key=` field of a `scontrol -o` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
}

/// The GPU indices in `GRES=gpu:2(IDX:0-1)` / `GRES=gpu(IDX:0,2)` detail fields.
fn gres_indices(line: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    let mut found = false;
    for token in line.split_whitespace() {
        let Some(gres) = token.strip_prefix("GRES=") else {
            continue;
        };
        for item in gres.split_inclusive(')') {
            let item = item.trim_start_matches(',');
            if !item.starts_with("gpu") {
                continue;
            }
            let Some(idx) = item.split("IDX:").nth(1) else {
                continue;
            };
            let idx = idx.trim_end_matches(')');
            found = true;
            for part in idx.split(',').filter(|p| !p.is_empty()) {
                match part.split_once('-') {
                    Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
                    None => out.push(part.parse().ok()?),
                }
            }
        }
    }
    found.then_some(out)
}

/// `ExitCode=<status>:<signal>`.
fn exit_code(text: &str) -> Option<(i32, i32)> {
    let (code, signal) = text.split_once(':')?;
    Some((code.parse().ok()?, signal.parse().ok()?))
}

/// What a job state (with its reason, exit code and GPUs) means; a pure function of
/// `scontrol`'s fields.
fn observe(
    state: &str,
    reason: &str,
    exit: Option<(i32, i32)>,
    gpus: Option<Vec<u32>>,
) -> Observed {
    // States may carry flags after a `+` (e.g. `CANCELLED+`); the base state decides.
    let base = state.split('+').next().unwrap_or(state);
    let ended = |what: &str| match exit {
        Some((_, signal)) if signal != 0 => Observed::Signalled { signal },
        Some((code, _)) if code != 0 || what == "COMPLETED" => Observed::Exited { code },
        _ => Observed::Lost {
            reason: format!("job {what} without an exit status (reason {reason})"),
        },
    };
    match base {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => {
            Observed::Pending {
                reason: reason.to_string(),
            }
        }
        "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "RESIZING"
        | "SIGNALING" | "STAGE_OUT" => Observed::Running { gpus },
        "COMPLETED" | "FAILED" => ended(base),
        "CANCELLED" => Observed::Cancelled,
        "TIMEOUT" | "DEADLINE" => Observed::TimedOut,
        // The kernel's OOM killer ends a job with SIGKILL.
        "OUT_OF_MEMORY" => Observed::Signalled { signal: 9 },
        "NODE_FAIL" | "BOOT_FAIL" | "PREEMPTED" | "LAUNCH_FAILED" | "SPECIAL_EXIT" | "REVOKED" => {
            Observed::Lost {
                reason: format!("job state {state} (reason {reason})"),
            }
        }
        // A state this code does not know: not ended as far as it can tell.
        other => Observed::Pending {
            reason: format!("{other} ({reason})"),
        },
    }
}

/// Parses one `scontrol show job -o -d` line.
fn observe_scontrol(line: &str) -> Option<Observed> {
    let state = field(line, "JobState")?;
    let reason = field(line, "Reason").unwrap_or("None");
    let exit = field(line, "ExitCode").and_then(exit_code);
    Some(observe(state, reason, exit, gres_indices(line)))
}

fn invalid_job_id(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("Invalid job id")
}

fn parse_job_id(handle: &str) -> Result<u64, BackendError> {
    handle
        .trim()
        .parse()
        .map_err(|_| refused(format!("not a Slurm job id: {handle:?}")))
}

impl SlurmBackend {
    /// `squeue -t all`'s view: state and reason only (no exit code).
    fn poll_squeue(&self, id: u64) -> Result<Observed, BackendError> {
        let tool = &self.config.squeue;
        let id_text = id.to_string();
        let out = run(
            tool,
            &["-h", "-t", "all", "-j", &id_text, "-o", "%T|%r"].map(OsStr::new),
        )?;
        if !out.status.success() {
            if invalid_job_id(&out) {
                return Ok(Observed::Lost {
                    reason: format!("Slurm does not know job {id}"),
                });
            }
            return Err(unavailable(describe(tool, &out)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((state, reason)) = text.lines().next().and_then(|l| l.trim().split_once('|'))
        else {
            return Ok(Observed::Lost {
                reason: format!("squeue does not list job {id}"),
            });
        };
        // squeue shows no exit code: a finished job's outcome is only known for success.
        let exit = (state == "COMPLETED").then_some((0, 0));
        Ok(observe(state, reason, exit, None))
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn submit(&self, spec: &JobSpec) -> Result<Handle, BackendError> {
        let workdir = spec.workdir.canonicalize().map_err(|e| {
            refused(format!(
                "job {}: working directory {}: {e}",
                spec.job_id,
                spec.workdir.display()
            ))
        })?;
        let script = batch_script(spec, &workdir, self.config.partition.as_deref())?;
        let path = workdir.join(SCRIPT_FILE);
        fs::write(&path, script)
            .map_err(|e| unavailable(format!("writing {}: {e}", path.display())))?;
        let tool = &self.config.sbatch;
        let out = run(tool, &[OsStr::new("--parsable"), path.as_os_str()])?;
        if !out.status.success() {
            let detail = describe(tool, &out);
            return Err(if REFUSALS.iter().any(|r| detail.contains(r)) {
                refused(detail)
            } else {
                unavailable(detail)
            });
        }
        // `<id>` or `<id>;<cluster>`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or("");
        id.parse::<u64>().map(|id| id.to_string()).map_err(|_| {
            unavailable(format!(
                "{} printed no job id: {:?}",
                tool.display(),
                text.trim()
            ))
        })
    }

    fn poll(&self, handle: &str) -> Result<Observed, BackendError> {
        let id = match parse_job_id(handle) {
            Ok(id) => id,
            Err(_) => {
                return Ok(Observed::Lost {
                    reason: format!("not a Slurm job id: {handle:?}"),
                });
            }
        };
        let tool = &self.config.scontrol;
        let id_text = id.to_string();
        let out = run(tool, &["-o", "-d", "show", "job", &id_text].map(OsStr::new))?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(observed) = text.lines().find_map(observe_scontrol) {
                return Ok(observed);
            }
        } else if invalid_job_id(&out) {
            return Ok(Observed::Lost {
                reason: format!("Slurm does not know job {id}"),
            });
        }
        let first = describe(tool, &out);
        self.poll_squeue(id)
            .map_err(|e| unavailable(format!("{first}; then {e}")))
    }

    fn cancel(&self, handle: &str) -> Result<(), BackendError> {
        let id = parse_job_id(handle)?;
        let tool = &self.config.scancel;
        let out = run(tool, &[OsStr::new(&id.to_string())])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // scancel reports a finished job on stderr, with or without a failing status.
        if out.status.success()
            || stderr.contains("already completing or completed")
            || invalid_job_id(&out)
        {
            return Ok(());
        }
        Err(unavailable(describe(tool, &out)))
    }

    /// The newest Slurm job named `loopline-<job id>`, in any state Slurm still remembers.
    fn find(&self, spec: &JobSpec) -> Result<Option<Handle>, BackendError> {
        let tool = &self.config.squeue;
        let name = format!("--name=loopline-{}", spec.job_id);
        let args = ["--noheader", "--states=all", "--format=%i", name.as_str()];
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = run(tool, &args)?;
        if !out.status.success() {
            return Err(unavailable(describe(tool, &out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.trim().parse::<u64>().ok())
            .max()
            .map(|id| id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            job_id: "j-42".into(),
            command: vec!["/usr/bin/train".into(), "--data".into(), "it's here".into()],
            env: vec![("LOOPLINE_LINE".into(), "a b'c".into())],
            gpus: 2,
            gpu_indices: None,
            workdir: PathBuf::from("/w/j 42"),
            time_limit: Duration::from_secs(61),
        }
    }

    #[test]
    fn script_names_every_option_and_quotes_the_command() {
        let script = batch_script(&spec(), Path::new("/w/j 42"), Some("gpu")).unwrap();
        assert_eq!(
            script,
            "#!/bin/sh\n\
             #SBATCH --job-name=loopline-j-42\n\
             #SBATCH --partition=gpu\n\
             #SBATCH --gres=gpu:2\n\
             #SBATCH --time=2\n\
             #SBATCH --output=\"/w/j 42/job.log\"\n\
             #SBATCH --chdir=\"/w/j 42\"\n\
             export LOOPLINE_LINE='a b'\\''c'\n\
             exec '/usr/bin/train' '--data' 'it'\\''s here'\n"
        );
    }

    #[test]
    fn a_cpu_job_asks_no_gres_and_sees_no_gpu() {
        let mut s = spec();
        s.gpus = 0;
        let script = batch_script(&s, Path::new("/w"), None).unwrap();
        assert!(!script.contains("--gres"), "{script}");
        assert!(!script.contains("--partition"), "{script}");
        assert!(
            script.contains("export CUDA_VISIBLE_DEVICES=''\n"),
            "{script}"
        );
    }

    #[test]
    fn scripts_that_cannot_be_written_safely_are_refused() {
        let mut s = spec();
        s.env = vec![("BAD NAME".into(), "x".into())];
        assert!(matches!(
            batch_script(&s, Path::new("/w"), None),
            Err(BackendError::Refused { .. })
        ));
        let s = spec();
        assert!(matches!(
            batch_script(&s, Path::new("/w/100%"), None),
            Err(BackendError::Refused { .. })
        ));
        let mut s = spec();
        s.job_id = "a\nb".into();
        assert!(matches!(
            batch_script(&s, Path::new("/w"), None),
            Err(BackendError::Refused { .. })
        ));
        let mut s = spec();
        s.command.clear();
        assert!(matches!(
            batch_script(&s, Path::new("/w"), None),
            Err(BackendError::Refused { .. })
        ));
    }

    #[test]
    fn time_limits_round_up_to_whole_minutes() {
        assert_eq!(time_minutes(Duration::ZERO), 1);
        assert_eq!(time_minutes(Duration::from_secs(1)), 1);
        assert_eq!(time_minutes(Duration::from_secs(60)), 1);
        assert_eq!(time_minutes(Duration::from_millis(60_500)), 2);
        assert_eq!(time_minutes(Duration::from_secs(61)), 2);
        assert_eq!(time_minutes(Duration::from_secs(3600)), 60);
    }

    #[test]
    fn gres_detail_gives_the_indices() {
        let line = "JobId=4 JobState=RUNNING JOB_GRES=gpu:2   Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0-1) MinCPUsNode=1";
        assert_eq!(gres_indices(line), Some(vec![0, 1]));
        assert_eq!(gres_indices("Nodes=vm GRES=gpu:1(IDX:2)"), Some(vec![2]));
        assert_eq!(
            gres_indices("Nodes=vm GRES=gpu(IDX:0,2-3)"),
            Some(vec![0, 2, 3])
        );
        assert_eq!(
            gres_indices("Nodes=vm GRES=mps:100(0),gpu:1(IDX:3)"),
            Some(vec![3])
        );
        assert_eq!(gres_indices("JobId=4 JobState=PENDING"), None);
    }

    #[test]
    fn scontrol_lines_map_to_observations() {
        let line = |state: &str, reason: &str, exit: &str| {
            format!(
                "JobId=7 JobName=loopline-j UserId=root(0) JobState={state} Reason={reason} Dependency=(null) ExitCode={exit} DerivedExitCode=0:0"
            )
        };
        let o = |s, r, e| observe_scontrol(&line(s, r, e)).unwrap();
        assert_eq!(
            o("PENDING", "Resources", "0:0"),
            Observed::Pending {
                reason: "Resources".into()
            }
        );
        assert_eq!(
            o("RUNNING", "None", "0:0"),
            Observed::Running { gpus: None }
        );
        assert_eq!(o("COMPLETED", "None", "0:0"), Observed::Exited { code: 0 });
        assert_eq!(
            o("FAILED", "NonZeroExitCode", "3:0"),
            Observed::Exited { code: 3 }
        );
        assert_eq!(
            o("FAILED", "NonZeroExitCode", "0:9"),
            Observed::Signalled { signal: 9 }
        );
        assert_eq!(o("CANCELLED", "None", "0:15"), Observed::Cancelled);
        assert_eq!(o("TIMEOUT", "TimeLimit", "0:15"), Observed::TimedOut);
        assert!(matches!(
            o("NODE_FAIL", "NodeDown", "0:0"),
            Observed::Lost { .. }
        ));
        assert!(matches!(
            o("FAILED", "JobLaunchFailure", "0:0"),
            Observed::Lost { .. }
        ));
        assert_eq!(observe_scontrol("slurm_load_jobs error"), None);
        let running = "JobId=4 JobState=RUNNING Reason=None ExitCode=0:0 Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:2)";
        assert_eq!(
            observe_scontrol(running),
            Some(Observed::Running {
                gpus: Some(vec![2])
            })
        );
    }
}
