//! Child processes on this machine.
//!
//! Invariants, which let a restarted dispatch find its jobs again:
//!
//! - A job is `/bin/sh -c <wrapper> <exit file> <argv...>` started as the leader of its own
//!   process group (group id = its pid), so [`LocalBackend::cancel`] signals the whole tree
//!   and a terminal's Ctrl-C aimed at dispatch does not reach it. The wrapper runs the command,
//!   then writes its exit status to `<workdir>/exit` (`exit.tmp`, then a rename, so a reader
//!   never sees half a number). A command killed by signal N reads as 128+N, the shell's
//!   convention: statuses 129..=192 are reported as [`Observed::Signalled`].
//! - The wrapper, not dispatch, records the status, so a job outlives a `kill -9` of dispatch
//!   and its result is still there for the next dispatch process.
//! - The handle is `local:<pid>:<start time>:<gpu indices>:<workdir>`. The start time (field 22
//!   of `/proc/<pid>/stat`, clock ticks since boot) tells this job's process from a later one
//!   that reuses its pid: a pid whose start time differs is not the job.
//! - `cancel` writes `<workdir>/cancelled` before it signals, so a job it stops always polls as
//!   [`Observed::Cancelled`], whatever the dying wrapper managed to write.
//! - A job whose process is gone with neither file is [`Observed::Lost`].
//! - The children this process started are reaped at every call (their statuses are in the
//!   exit files already; the reaped status is kept only to name the signal that killed a
//!   wrapper that could not write its file).
//!
//! The time limit is the scheduler's to enforce: this backend has no daemon of its own that
//! would outlive dispatch.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use super::{Backend, BackendError, Handle, JobSpec, Observed};

const NAME: &str = "local";

/// The job's standard output and error, in its working directory.
pub const LOG_FILE: &str = "job.log";
/// The command's exit status, written by the wrapper when the command ends.
pub const EXIT_FILE: &str = "exit";
/// Written by [`LocalBackend::cancel`] before it signals the job.
pub const CANCELLED_FILE: &str = "cancelled";
/// The job's handle, written once the process is started (what [`Backend::find`] reads).
pub const HANDLE_FILE: &str = "handle";

/// Runs the command, then records its status atomically. `$1` is the exit file's path.
const WRAPPER: &str =
    r#"e=$1; shift; "$@"; s=$?; printf '%s\n' "$s" > "$e.tmp" && mv -f "$e.tmp" "$e"; exit "$s""#;

/// How long `cancel` waits after SIGTERM before SIGKILL, unless told otherwise.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Runs jobs as child processes of this machine; see the module documentation.
#[derive(Debug)]
pub struct LocalBackend {
    cancel_grace: Duration,
    /// Children this process started and has not reaped yet.
    children: Mutex<Vec<Child>>,
    /// Statuses of reaped children, by pid, for wrappers that died without an exit file.
    reaped: Mutex<HashMap<u32, ExitStatus>>,
}

impl Default for LocalBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBackend {
    /// A backend that gives a cancelled job [`DEFAULT_CANCEL_GRACE`] to exit on SIGTERM.
    pub fn new() -> Self {
        Self::with_cancel_grace(DEFAULT_CANCEL_GRACE)
    }

    /// A backend that gives a cancelled job `grace` between SIGTERM and SIGKILL.
    pub fn with_cancel_grace(grace: Duration) -> Self {
        Self {
            cancel_grace: grace,
            children: Mutex::new(Vec::new()),
            reaped: Mutex::new(HashMap::new()),
        }
    }

    /// Reaps the children that have ended, keeping their statuses.
    fn reap(&self) {
        let Ok(mut children) = self.children.lock() else {
            return;
        };
        let mut done = Vec::new();
        children.retain_mut(|child| match child.try_wait() {
            Ok(Some(status)) => {
                done.push((child.id(), status));
                false
            }
            Ok(None) => true,
            // ECHILD: someone else reaped it; nothing more to learn.
            Err(_) => false,
        });
        drop(children);
        if !done.is_empty()
            && let Ok(mut reaped) = self.reaped.lock()
        {
            reaped.extend(done);
        }
    }

    fn reaped_status(&self, pid: u32) -> Option<ExitStatus> {
        self.reaped.lock().ok().and_then(|r| r.get(&pid).copied())
    }
}

/// A parsed handle.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalHandle {
    pid: u32,
    start_time: u64,
    gpus: Vec<u32>,
    workdir: PathBuf,
}

impl LocalHandle {
    fn encode(&self) -> Handle {
        let gpus = join_indices(&self.gpus);
        format!(
            "local:{}:{}:{}:{}",
            self.pid,
            self.start_time,
            gpus,
            self.workdir.display()
        )
    }

    fn parse(handle: &str) -> Option<Self> {
        let rest = handle.strip_prefix("local:")?;
        let mut parts = rest.splitn(4, ':');
        let pid = parts.next()?.parse().ok()?;
        let start_time = parts.next()?.parse().ok()?;
        let gpus = parts.next()?;
        let gpus = if gpus.is_empty() {
            Vec::new()
        } else {
            gpus.split(',')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?
        };
        let workdir = PathBuf::from(parts.next()?);
        (pid > 0 && workdir.is_absolute()).then_some(Self {
            pid,
            start_time,
            gpus,
            workdir,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.workdir.join(name)
    }
}

fn join_indices(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The fields of `/proc/<pid>/stat` this backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgrp: i64,
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state), fields[2] field 5 (pgrp), fields[19] field 22 (starttime).
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(parse_stat)
}

/// Live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            read_stat(*pid)
                .is_some_and(|s| s.pgrp == i64::from(pgid) && !matches!(s.state, 'Z' | 'X'))
        })
        .collect()
}

/// Whether the handle's process is still the job's and has not ended.
fn job_process_alive(h: &LocalHandle) -> bool {
    read_stat(h.pid).is_some_and(|s| s.start_time == h.start_time && !matches!(s.state, 'Z' | 'X'))
}

/// What an exit status recorded by the wrapper means.
fn observed_from_status(code: i32) -> Observed {
    if (129..=192).contains(&code) {
        Observed::Signalled { signal: code - 128 }
    } else {
        Observed::Exited { code }
    }
}

fn read_exit_file(path: &Path) -> Option<Result<i32, String>> {
    match fs::read_to_string(path) {
        Ok(text) => Some(
            text.trim()
                .parse::<i32>()
                .map_err(|e| format!("{}: {e}: {:?}", path.display(), text.trim())),
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("{}: {e}", path.display()))),
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

fn signal_group(pgid: u32, signal: Signal) -> Result<(), BackendError> {
    let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return Err(refused(format!("process group {pgid} is not a valid id")));
    };
    match kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(unavailable(format!("signalling process group {pgid}: {e}"))),
    }
}

impl LocalBackend {
    /// Signals the group, then waits until `deadline` for it to empty.
    fn signal_and_wait(
        &self,
        pgid: u32,
        signal: Signal,
        deadline: Instant,
    ) -> Result<bool, BackendError> {
        signal_group(pgid, signal)?;
        loop {
            self.reap();
            if group_members(pgid).is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn submit(&self, spec: &JobSpec) -> Result<Handle, BackendError> {
        self.reap();
        let Some(program) = spec.command.first() else {
            return Err(refused(format!("job {}: empty command", spec.job_id)));
        };
        let gpus = match &spec.gpu_indices {
            Some(indices) if indices.len() == spec.gpus as usize => indices.clone(),
            Some(indices) => {
                return Err(refused(format!(
                    "job {}: asks for {} GPUs but was given indices [{}]",
                    spec.job_id,
                    spec.gpus,
                    join_indices(indices)
                )));
            }
            None if spec.gpus == 0 => Vec::new(),
            None => {
                return Err(refused(format!(
                    "job {}: asks for {} GPUs but the scheduler chose none (local needs gpu_indices)",
                    spec.job_id, spec.gpus
                )));
            }
        };
        let workdir = spec.workdir.canonicalize().map_err(|e| {
            refused(format!(
                "job {}: working directory {}: {e}",
                spec.job_id,
                spec.workdir.display()
            ))
        })?;
        // A workdir used before must not answer for the new job.
        for stale in [EXIT_FILE, CANCELLED_FILE, HANDLE_FILE, "exit.tmp"] {
            let path = workdir.join(stale);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(unavailable(format!("removing {}: {e}", path.display()))),
            }
        }
        let log_path = workdir.join(LOG_FILE);
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| unavailable(format!("opening {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| unavailable(format!("duplicating {}: {e}", log_path.display())))?;

        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("loopline-job")
            .arg(workdir.join(EXIT_FILE))
            .arg(program)
            .args(&spec.command[1..])
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        for (key, value) in &spec.env {
            cmd.env(key, value);
        }
        // After the job's own environment: a job never sees GPUs it was not given.
        cmd.env("CUDA_VISIBLE_DEVICES", join_indices(&gpus));
        let child = cmd.spawn().map_err(|e| {
            unavailable(format!(
                "job {}: starting /bin/sh for {program}: {e}",
                spec.job_id
            ))
        })?;
        let pid = child.id();
        // The child is not reaped yet, so its /proc entry is there even if it already ended.
        let stat = read_stat(pid);
        if let Ok(mut children) = self.children.lock() {
            children.push(child);
        }
        let Some(stat) = stat else {
            return Err(unavailable(format!(
                "job {}: cannot read /proc/{pid}/stat of its process",
                spec.job_id
            )));
        };
        let handle = LocalHandle {
            pid,
            start_time: stat.start_time,
            gpus,
            workdir: workdir.clone(),
        };
        tracing::debug!(job = %spec.job_id, pid, "local job started");
        let encoded = handle.encode();
        // For [`Backend::find`]: a dispatch that dies before storing the handle finds it here.
        let tmp = workdir.join(format!("{HANDLE_FILE}.tmp"));
        fs::write(&tmp, &encoded)
            .and_then(|()| fs::rename(&tmp, workdir.join(HANDLE_FILE)))
            .map_err(|e| {
                unavailable(format!(
                    "job {}: recording its handle in {}: {e}",
                    spec.job_id,
                    workdir.display()
                ))
            })?;
        Ok(encoded)
    }

    /// The handle recorded in the job's folder, if a job was started there.
    fn find(&self, spec: &JobSpec) -> Result<Option<Handle>, BackendError> {
        let path = spec.workdir.join(HANDLE_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(LocalHandle::parse(text.trim()).map(|h| h.encode())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(format!("reading {}: {e}", path.display()))),
        }
    }

    fn poll(&self, handle: &str) -> Result<Observed, BackendError> {
        self.reap();
        let Some(h) = LocalHandle::parse(handle) else {
            return Ok(Observed::Lost {
                reason: format!("not a local handle: {handle:?}"),
            });
        };
        if h.file(CANCELLED_FILE).exists() {
            return Ok(Observed::Cancelled);
        }
        if let Some(code) = read_exit_file(&h.file(EXIT_FILE)) {
            return Ok(code
                .map(observed_from_status)
                .unwrap_or_else(|reason| Observed::Lost { reason }));
        }
        if job_process_alive(&h) {
            return Ok(Observed::Running { gpus: Some(h.gpus) });
        }
        // It may have written its file and ended between the two looks.
        if let Some(code) = read_exit_file(&h.file(EXIT_FILE)) {
            return Ok(code
                .map(observed_from_status)
                .unwrap_or_else(|reason| Observed::Lost { reason }));
        }
        if let Some(signal) = self.reaped_status(h.pid).and_then(|s| s.signal()) {
            return Ok(Observed::Signalled { signal });
        }
        Ok(Observed::Lost {
            reason: format!(
                "process {} is gone and left no {}",
                h.pid,
                h.file(EXIT_FILE).display()
            ),
        })
    }

    fn cancel(&self, handle: &str) -> Result<(), BackendError> {
        self.reap();
        let Some(h) = LocalHandle::parse(handle) else {
            return Err(refused(format!("not a local handle: {handle:?}")));
        };
        if h.file(EXIT_FILE).exists() || h.file(CANCELLED_FILE).exists() {
            return Ok(());
        }
        // The leader may be gone (killed on its own) while the rest of its group lives on; a
        // live leader with another start time is a different process that reused the pid.
        let leader_is_ours = match read_stat(h.pid) {
            Some(s) => s.start_time == h.start_time,
            None => true,
        };
        if !leader_is_ours || group_members(h.pid).is_empty() {
            return Ok(());
        }
        let marker = h.file(CANCELLED_FILE);
        fs::write(&marker, b"")
            .map_err(|e| unavailable(format!("writing {}: {e}", marker.display())))?;
        if !self.signal_and_wait(h.pid, Signal::TERM, Instant::now() + self.cancel_grace)? {
            tracing::info!(pid = h.pid, grace = ?self.cancel_grace, "local job ignored SIGTERM: SIGKILL");
            if !self.signal_and_wait(
                h.pid,
                Signal::KILL,
                Instant::now() + Duration::from_secs(5),
            )? {
                return Err(unavailable(format!(
                    "process group {} still has processes after SIGKILL: {:?}",
                    h.pid,
                    group_members(h.pid)
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trips_with_colons_in_the_workdir() {
        let h = LocalHandle {
            pid: 42,
            start_time: 123456,
            gpus: vec![0, 3],
            workdir: PathBuf::from("/tmp/a:b/c"),
        };
        let text = h.encode();
        assert_eq!(text, "local:42:123456:0,3:/tmp/a:b/c");
        assert_eq!(LocalHandle::parse(&text), Some(h));
        let none = LocalHandle {
            pid: 7,
            start_time: 1,
            gpus: vec![],
            workdir: PathBuf::from("/w"),
        };
        assert_eq!(LocalHandle::parse(&none.encode()), Some(none));
    }

    #[test]
    fn malformed_handles_are_rejected() {
        for bad in [
            "",
            "slurm:12",
            "local:x:1::/w",
            "local:1:1:a:/w",
            "local:1:1::relative",
            "local:0:1::/w",
        ] {
            assert_eq!(LocalHandle::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text =
            "1234 (a b) c)) S 1 777 777 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 777,
                start_time: 98765
            })
        );
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn shell_statuses_above_128_are_signals() {
        assert_eq!(observed_from_status(0), Observed::Exited { code: 0 });
        assert_eq!(observed_from_status(3), Observed::Exited { code: 3 });
        assert_eq!(observed_from_status(128), Observed::Exited { code: 128 });
        assert_eq!(observed_from_status(137), Observed::Signalled { signal: 9 });
        assert_eq!(
            observed_from_status(143),
            Observed::Signalled { signal: 15 }
        );
        assert_eq!(observed_from_status(255), Observed::Exited { code: 255 });
    }
}
