//! The `local` backend against real processes: exit statuses, the GPU environment, the job log,
//! cancellation of a whole process tree, and a second backend instance (a restarted dispatch)
//! finding jobs the first one started.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopline_dispatch::backend::local::LocalBackend;
use loopline_dispatch::backend::{Backend, BackendError, JobSpec, Observed};

const DEADLINE: Duration = Duration::from_secs(60);

fn sh(job_id: &str, workdir: &Path, script: &str) -> JobSpec {
    JobSpec {
        job_id: job_id.to_string(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        gpus: 0,
        gpu_indices: None,
        workdir: workdir.to_path_buf(),
        time_limit: Duration::from_secs(600),
    }
}

fn workdir(root: &tempfile::TempDir, name: &str) -> PathBuf {
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls until `done` accepts what the backend sees; panics with the last observation.
fn wait_for(
    backend: &dyn Backend,
    handle: &str,
    what: &str,
    done: impl Fn(&Observed) -> bool,
) -> Observed {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < DEADLINE {
        let seen = backend.poll(handle).unwrap();
        if done(&seen) {
            return seen;
        }
        last = Some(seen);
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("job {handle}: waited {DEADLINE:?} for {what}, last saw {last:?}");
}

fn wait_terminal(backend: &dyn Backend, handle: &str) -> Observed {
    wait_for(backend, handle, "the end", Observed::is_terminal)
}

fn wait_file(path: &Path) -> String {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} not written after {DEADLINE:?}", path.display());
}

/// Whether a process is still running (a zombie has ended).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

#[test]
fn exit_statuses_and_signals_are_reported() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let cases = [
        ("true", Observed::Exited { code: 0 }),
        ("exit 3", Observed::Exited { code: 3 }),
        ("kill -9 $$", Observed::Signalled { signal: 9 }),
    ];
    for (i, (script, want)) in cases.into_iter().enumerate() {
        let dir = workdir(&root, &format!("j{i}"));
        let handle = backend.submit(&sh(&format!("j{i}"), &dir, script)).unwrap();
        assert!(handle.starts_with("local:"), "{handle}");
        assert_eq!(wait_terminal(&backend, &handle), want, "script {script:?}");
    }
    // A command that does not exist: the shell's 127, not a failed submission.
    let dir = workdir(&root, "missing");
    let mut spec = sh("missing", &dir, "");
    spec.command = vec!["/nonexistent/train".into()];
    let handle = backend.submit(&spec).unwrap();
    assert_eq!(
        wait_terminal(&backend, &handle),
        Observed::Exited { code: 127 }
    );
}

#[test]
fn the_job_sees_exactly_its_gpus_and_its_environment() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let script = r#"echo "cvd=[${CUDA_VISIBLE_DEVICES-unset}] line=[$LOOPLINE_LINE] pwd=$(pwd)""#;

    let dir = workdir(&root, "two");
    let mut spec = sh("two", &dir, script);
    spec.gpus = 2;
    spec.gpu_indices = Some(vec![1, 3]);
    spec.env = vec![("LOOPLINE_LINE".into(), "line 'a'".into())];
    let handle = backend.submit(&spec).unwrap();
    assert_eq!(
        wait_terminal(&backend, &handle),
        Observed::Exited { code: 0 }
    );
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    let dir_real = dir.canonicalize().unwrap();
    assert_eq!(
        log,
        format!("cvd=[1,3] line=[line 'a'] pwd={}\n", dir_real.display())
    );

    // No GPU: the variable is set and empty (unset would mean every GPU), even when the job's
    // own environment tries to name one.
    let dir = workdir(&root, "none");
    let mut spec = sh("none", &dir, script);
    spec.env = vec![("CUDA_VISIBLE_DEVICES".into(), "0".into())];
    let handle = backend.submit(&spec).unwrap();
    assert_eq!(
        wait_terminal(&backend, &handle),
        Observed::Exited { code: 0 }
    );
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    assert!(log.starts_with("cvd=[] line=[]"), "{log}");
}

#[test]
fn stdout_and_stderr_go_to_the_job_log() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let dir = workdir(&root, "log");
    let handle = backend
        .submit(&sh(
            "log",
            &dir,
            "echo out; echo err >&2; echo more; exit 2",
        ))
        .unwrap();
    assert_eq!(
        wait_terminal(&backend, &handle),
        Observed::Exited { code: 2 }
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("job.log")).unwrap(),
        "out\nerr\nmore\n"
    );
    assert_eq!(std::fs::read_to_string(dir.join("exit")).unwrap(), "2\n");
}

#[test]
fn concurrent_jobs_are_distinct() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let mut handles = Vec::new();
    for i in 0..4u32 {
        let dir = workdir(&root, &format!("c{i}"));
        // Each waits for its own go file, so all four are running at the same time.
        let script = format!(
            "echo job {i} gpu $CUDA_VISIBLE_DEVICES; while [ ! -e go ]; do sleep 0.02; done; exit {}",
            10 + i
        );
        let mut spec = sh(&format!("c{i}"), &dir, &script);
        spec.gpus = 1;
        spec.gpu_indices = Some(vec![i]);
        handles.push((dir, backend.submit(&spec).unwrap()));
    }
    let mut distinct: Vec<&String> = handles.iter().map(|(_, h)| h).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{handles:?}");
    for (i, (dir, handle)) in handles.iter().enumerate() {
        assert_eq!(
            backend.poll(handle).unwrap(),
            Observed::Running {
                gpus: Some(vec![i as u32])
            }
        );
        assert_eq!(
            wait_file(&dir.join("job.log")),
            format!("job {i} gpu {i}\n")
        );
    }
    for (dir, _) in &handles {
        std::fs::write(dir.join("go"), b"").unwrap();
    }
    for (i, (_, handle)) in handles.iter().enumerate() {
        assert_eq!(
            wait_terminal(&backend, handle),
            Observed::Exited {
                code: 10 + i as i32
            }
        );
    }
}

#[test]
fn cancel_kills_the_whole_process_group() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let dir = workdir(&root, "cancel");
    // The job's shell starts a grandchild and waits for it.
    let handle = backend
        .submit(&sh(
            "cancel",
            &dir,
            "sleep 300 & echo $! > grandchild; wait",
        ))
        .unwrap();
    let grandchild: u32 = wait_file(&dir.join("grandchild")).trim().parse().unwrap();
    assert!(process_running(grandchild));
    assert_eq!(
        backend.poll(&handle).unwrap(),
        Observed::Running { gpus: Some(vec![]) }
    );
    backend.cancel(&handle).unwrap();
    assert!(
        !process_running(grandchild),
        "grandchild {grandchild} survived the cancel"
    );
    assert_eq!(backend.poll(&handle).unwrap(), Observed::Cancelled);
    // Cancelling again, or polling later, changes nothing.
    backend.cancel(&handle).unwrap();
    assert_eq!(backend.poll(&handle).unwrap(), Observed::Cancelled);
}

#[test]
fn cancel_escalates_to_sigkill_when_sigterm_is_ignored() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::with_cancel_grace(Duration::from_millis(200));
    let dir = workdir(&root, "stubborn");
    let handle = backend
        .submit(&sh(
            "stubborn",
            &dir,
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ))
        .unwrap();
    assert_eq!(wait_file(&dir.join("job.log")), "ready\n");
    backend.cancel(&handle).unwrap();
    assert_eq!(backend.poll(&handle).unwrap(), Observed::Cancelled);
    let pid: u32 = handle.split(':').nth(1).unwrap().parse().unwrap();
    assert!(!process_running(pid), "job shell {pid} still running");
}

#[test]
fn a_restarted_backend_adopts_running_and_finished_jobs() {
    let root = tempfile::tempdir().unwrap();
    let first = LocalBackend::new();
    let running_dir = workdir(&root, "running");
    let script = "echo started; while [ ! -e go ]; do sleep 0.02; done; exit 7";
    let mut spec = sh("running", &running_dir, script);
    spec.gpus = 1;
    spec.gpu_indices = Some(vec![2]);
    let running = first.submit(&spec).unwrap();
    let done_dir = workdir(&root, "done");
    let done = first.submit(&sh("done", &done_dir, "exit 5")).unwrap();
    let cancel_dir = workdir(&root, "to-cancel");
    let to_cancel = first
        .submit(&sh("to-cancel", &cancel_dir, "echo started; sleep 300"))
        .unwrap();
    assert_eq!(wait_terminal(&first, &done), Observed::Exited { code: 5 });
    wait_file(&running_dir.join("job.log"));
    wait_file(&cancel_dir.join("job.log"));
    // The dispatch process that started them goes away (its children live on).
    drop(first);

    let second = LocalBackend::new();
    assert_eq!(
        second.poll(&running).unwrap(),
        Observed::Running {
            gpus: Some(vec![2])
        }
    );
    assert_eq!(second.poll(&done).unwrap(), Observed::Exited { code: 5 });
    std::fs::write(running_dir.join("go"), b"").unwrap();
    assert_eq!(
        wait_terminal(&second, &running),
        Observed::Exited { code: 7 }
    );
    second.cancel(&to_cancel).unwrap();
    assert_eq!(second.poll(&to_cancel).unwrap(), Observed::Cancelled);
}

#[test]
fn a_job_without_process_or_status_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let dir = workdir(&root, "gone");
    let handle = backend.submit(&sh("gone", &dir, "exit 0")).unwrap();
    assert_eq!(
        wait_terminal(&backend, &handle),
        Observed::Exited { code: 0 }
    );
    // The wrapper writes the exit file just before it exits: wait until it is gone (and
    // reaped, which polling does), or its /proc entry still answers for it.
    let pid: u32 = handle.split(':').nth(1).unwrap().parse().unwrap();
    let start = Instant::now();
    while process_running(pid) && start.elapsed() < DEADLINE {
        backend.poll(&handle).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(dir.join("exit")).unwrap();
    let seen = LocalBackend::new().poll(&handle).unwrap();
    assert!(
        matches!(&seen, Observed::Lost { reason } if reason.contains("left no")),
        "{seen:?}"
    );

    // A live pid with another start time is another process that reused the pid.
    let dir = dir.canonicalize().unwrap();
    let reused = format!("local:{}:1::{}", std::process::id(), dir.display());
    assert!(matches!(
        backend.poll(&reused).unwrap(),
        Observed::Lost { .. }
    ));
    backend.cancel(&reused).unwrap();
    assert!(
        !dir.join("cancelled").exists(),
        "cancel of a reused pid must not touch it"
    );

    assert!(matches!(
        backend.poll("slurm:12").unwrap(),
        Observed::Lost { .. }
    ));
}

#[test]
fn jobs_that_cannot_run_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let dir = workdir(&root, "r");
    let mut spec = sh("r", &dir, "true");
    spec.gpus = 2;
    let err = backend.submit(&spec).unwrap_err();
    assert!(
        matches!(err, BackendError::Refused { .. }) && err.to_string().contains("gpu_indices"),
        "{err}"
    );
    spec.gpu_indices = Some(vec![0]);
    let err = backend.submit(&spec).unwrap_err();
    assert!(err.to_string().contains("asks for 2 GPUs"), "{err}");
    let mut spec = sh("r", &root.path().join("absent"), "true");
    assert!(matches!(
        backend.submit(&spec),
        Err(BackendError::Refused { .. })
    ));
    spec.workdir = dir;
    spec.command.clear();
    assert!(matches!(
        backend.submit(&spec),
        Err(BackendError::Refused { .. })
    ));
}

#[test]
fn a_started_job_is_found_by_its_folder() {
    let root = tempfile::tempdir().unwrap();
    let backend = LocalBackend::new();
    let job = sh("j-found", &workdir(&root, "j-found"), "sleep 5");
    assert_eq!(backend.find(&job).unwrap(), None, "nothing started yet");
    let handle = backend.submit(&job).unwrap();
    assert_eq!(
        backend.find(&job).unwrap().as_deref(),
        Some(handle.as_str())
    );
    backend.cancel(&handle).unwrap();
}
