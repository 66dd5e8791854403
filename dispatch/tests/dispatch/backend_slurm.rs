//! The `slurm` backend against a real cluster: the one `scripts/slurm-cluster start` runs on
//! this machine (one node, 4 GPUs). Without a cluster these tests say why and pass, unless
//! `LOOPLINE_REQUIRE_SLURM=1` (CI), where they fail.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loopline_dispatch::backend::slurm::{SlurmBackend, SlurmConfig};
use loopline_dispatch::backend::{Backend, BackendError, JobSpec, Observed};

const DEADLINE: Duration = Duration::from_secs(60);

/// The tests share the node's 4 GPUs: one at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// The backend when a cluster takes jobs; `None` (the test returns) when there is none and
/// none is required.
fn cluster() -> Option<SlurmBackend> {
    let config = SlurmConfig::default();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-cluster");
    let why_not = if !config.sbatch.is_absolute() {
        Some("sbatch is not installed".to_string())
    } else {
        match Command::new("bash").arg(&script).arg("status").output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`scripts/slurm-cluster status` says: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )),
            Err(e) => Some(format!("cannot run {}: {e}", script.display())),
        }
    };
    match why_not {
        None => Some(SlurmBackend::new(config)),
        Some(why) if std::env::var("LOOPLINE_REQUIRE_SLURM").as_deref() == Ok("1") => {
            panic!(
                "LOOPLINE_REQUIRE_SLURM=1 but no Slurm cluster: {why} (start one: scripts/slurm-cluster start)"
            )
        }
        Some(why) => {
            eprintln!("skipped: no Slurm cluster ({why}); `scripts/slurm-cluster start` runs one");
            None
        }
    }
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    CLUSTER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sh(job_id: &str, workdir: &Path, gpus: u32, script: &str) -> JobSpec {
    JobSpec {
        job_id: job_id.to_string(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("LOOPLINE_TEST_JOB".into(), format!("job '{job_id}'"))],
        gpus,
        gpu_indices: None,
        workdir: workdir.to_path_buf(),
        time_limit: Duration::from_secs(300),
    }
}

fn workdir(root: &tempfile::TempDir, name: &str) -> PathBuf {
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for(
    backend: &SlurmBackend,
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
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("Slurm job {handle}: waited {DEADLINE:?} for {what}, last saw {last:?}");
}

fn wait_terminal(backend: &SlurmBackend, handle: &str) -> Observed {
    wait_for(backend, handle, "the end", Observed::is_terminal)
}

fn wait_running(backend: &SlurmBackend, handle: &str) -> Option<Vec<u32>> {
    match wait_for(backend, handle, "running", |o| {
        matches!(o, Observed::Running { .. })
    }) {
        Observed::Running { gpus } => gpus,
        other => unreachable!("{other:?}"),
    }
}

/// The first line of `path` that starts with `prefix`, once the job has written it.
fn wait_line(path: &Path, prefix: &str) -> String {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().find(|l| l.starts_with(prefix))
        {
            return line.to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} has no line starting {prefix:?} after {DEADLINE:?}",
        path.display()
    );
}

#[test]
fn jobs_run_and_report_their_exit_status() {
    let Some(backend) = cluster() else { return };
    let _cluster = lock();
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ok",
            r#"echo "env=[$LOOPLINE_TEST_JOB] cvd=[${CUDA_VISIBLE_DEVICES-unset}]""#,
            Observed::Exited { code: 0 },
        ),
        (
            "three",
            "echo failing; exit 3",
            Observed::Exited { code: 3 },
        ),
        ("killed", "kill -9 $$", Observed::Signalled { signal: 9 }),
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|(name, script, _)| {
            let dir = workdir(&root, name);
            (
                dir.clone(),
                backend.submit(&sh(name, &dir, 0, script)).unwrap(),
            )
        })
        .collect();
    for ((dir, handle), (name, _, want)) in handles.iter().zip(&cases) {
        assert!(handle.parse::<u64>().is_ok(), "handle {handle:?}");
        assert_eq!(&wait_terminal(&backend, handle), want, "job {name}");
        let script = std::fs::read_to_string(dir.join("job.sbatch")).unwrap();
        assert!(
            script.contains(&format!("#SBATCH --job-name=loopline-{name}\n")),
            "{script}"
        );
    }
    // The environment arrives quoted as given, and a CPU job sees no GPU.
    let log = std::fs::read_to_string(handles[0].0.join("job.log")).unwrap();
    assert_eq!(log, "env=[job 'ok'] cvd=[]\n");
    assert_eq!(
        std::fs::read_to_string(handles[1].0.join("job.log")).unwrap(),
        "failing\n"
    );
}

#[test]
fn a_fifth_one_gpu_job_waits_for_a_free_gpu_and_gets_the_freed_one() {
    let Some(backend) = cluster() else { return };
    let _cluster = lock();
    let root = tempfile::tempdir().unwrap();
    // Each job prints its GPUs, then holds them until its release file appears.
    let script = r#"echo "cvd=$CUDA_VISIBLE_DEVICES"; while [ ! -e release ]; do sleep 0.1; done"#;
    let jobs: Vec<(PathBuf, String)> = (0..5)
        .map(|i| {
            let dir = workdir(&root, &format!("g{i}"));
            let handle = backend
                .submit(&sh(&format!("g{i}"), &dir, 1, script))
                .unwrap();
            (dir, handle)
        })
        .collect();

    let mut held = Vec::new();
    for (dir, handle) in &jobs[..4] {
        let gpus = wait_running(&backend, handle);
        let Some([gpu]) = gpus.as_deref() else {
            panic!("job {handle} runs on {gpus:?}, not one GPU")
        };
        // What the job itself was handed agrees with what poll reports.
        assert_eq!(
            wait_line(&dir.join("job.log"), "cvd="),
            format!("cvd={gpu}"),
            "job {handle}"
        );
        held.push(*gpu);
    }
    let mut distinct = held.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct,
        vec![0, 1, 2, 3],
        "the four running jobs hold GPUs {held:?}"
    );

    let (fifth_dir, fifth) = &jobs[4];
    wait_for(
        &backend,
        fifth,
        "pending on Resources",
        |o| matches!(o, Observed::Pending { reason } if reason == "Resources"),
    );

    // One job ends; the fifth starts on the GPU it freed.
    std::fs::write(jobs[1].0.join("release"), b"").unwrap();
    assert_eq!(
        wait_terminal(&backend, &jobs[1].1),
        Observed::Exited { code: 0 }
    );
    let gpus = wait_running(&backend, fifth);
    assert_eq!(
        gpus,
        Some(vec![held[1]]),
        "the fifth job should get the freed GPU {}",
        held[1]
    );
    assert_eq!(
        wait_line(&fifth_dir.join("job.log"), "cvd="),
        format!("cvd={}", held[1])
    );

    for (dir, _) in &jobs {
        std::fs::write(dir.join("release"), b"").unwrap();
    }
    for (_, handle) in &jobs {
        assert_eq!(
            wait_terminal(&backend, handle),
            Observed::Exited { code: 0 },
            "job {handle}"
        );
    }
}

#[test]
fn cancel_stops_running_and_pending_jobs() {
    let Some(backend) = cluster() else { return };
    let _cluster = lock();
    let root = tempfile::tempdir().unwrap();
    let dir = workdir(&root, "long");
    let running = backend
        .submit(&sh("long", &dir, 1, "echo started; sleep 300"))
        .unwrap();
    wait_running(&backend, &running);
    wait_line(&dir.join("job.log"), "started");
    backend.cancel(&running).unwrap();
    assert_eq!(wait_terminal(&backend, &running), Observed::Cancelled);
    // A second cancel of an ended job is not an error.
    backend.cancel(&running).unwrap();

    // A job waiting for GPUs that another job holds is cancelled while pending.
    let holder_dir = workdir(&root, "holder");
    let holder = backend
        .submit(&sh(
            "holder",
            &holder_dir,
            4,
            "while [ ! -e release ]; do sleep 0.1; done",
        ))
        .unwrap();
    wait_running(&backend, &holder);
    let dir = workdir(&root, "pending");
    let pending = backend.submit(&sh("pending", &dir, 1, "echo ran")).unwrap();
    wait_for(&backend, &pending, "pending", |o| {
        matches!(o, Observed::Pending { .. })
    });
    backend.cancel(&pending).unwrap();
    assert_eq!(wait_terminal(&backend, &pending), Observed::Cancelled);
    std::fs::write(holder_dir.join("release"), b"").unwrap();
    assert_eq!(
        wait_terminal(&backend, &holder),
        Observed::Exited { code: 0 }
    );
    assert!(
        !dir.join("job.log").exists(),
        "the cancelled pending job ran"
    );
}

#[test]
fn more_gpus_than_the_node_has_is_refused() {
    let Some(backend) = cluster() else { return };
    let root = tempfile::tempdir().unwrap();
    let dir = workdir(&root, "eight");
    let err = backend.submit(&sh("eight", &dir, 8, "true")).unwrap_err();
    assert!(matches!(err, BackendError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Requested node configuration is not available"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn unknown_job_ids_are_lost_and_missing_tools_unavailable() {
    let Some(backend) = cluster() else { return };
    let seen = backend.poll("999999999").unwrap();
    assert!(
        matches!(&seen, Observed::Lost { reason } if reason.contains("999999999")),
        "{seen:?}"
    );

    let broken = SlurmBackend::new(SlurmConfig {
        scontrol: PathBuf::from("/nonexistent/scontrol"),
        squeue: PathBuf::from("/nonexistent/squeue"),
        ..backend.config().clone()
    });
    let err = broken.poll("1").unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("/nonexistent/scontrol"),
        "{err}"
    );
}

#[test]
fn a_submitted_job_is_found_by_its_name() {
    let Some(backend) = cluster() else { return };
    let _cluster = lock();
    let root = tempfile::tempdir().unwrap();
    // A name no other test uses, unique to this run: Slurm remembers finished jobs.
    let name = format!("find-{}", std::process::id());
    let spec = sh(&name, &workdir(&root, &name), 0, "sleep 30");
    assert_eq!(backend.find(&spec).unwrap(), None, "nothing submitted yet");
    let handle = backend.submit(&spec).unwrap();
    assert_eq!(
        backend.find(&spec).unwrap().as_deref(),
        Some(handle.as_str())
    );
    backend.cancel(&handle).unwrap();
}
