//! `loopline-dispatch serve`: the scheduler loop on its own thread, the HTTP API, and the tasks
//! that turn finished jobs into promoted, rolled-out models.
//!
//! Threads and tasks:
//!
//! - **dispatcher** (a std thread): owns the scheduler's database connection and the backend
//!   (whose calls block). It ticks every `tick`, and at once when woken by a submission or a
//!   cancellation; every state change it makes is sent to the event task.
//! - **API** (tokio): axum over its own database connection (SQLite in WAL mode serialises the
//!   writers); submissions and cancellations are written to the database, then the dispatcher is
//!   woken.
//! - **events** (tokio): the timeline, metrics, and what follows a succeeded job.
//!
//! Shutdown stops the loop and the API; jobs in flight keep running in their backend, and the
//! next start finds them through their stored handles.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::backend::slurm::SlurmBackend;
use crate::config::{BackendKind, DispatchConfig};
use crate::launcher::TrainerLauncher;
use crate::metrics::Metrics;
use crate::pipeline::{self, RolloutCommand};
use crate::registry::Registry;
use crate::rollout::{Phase, Rollout};
use crate::scheduler::{CANCEL_KEY_PREFIX, Dispatcher, DispatcherConfig, JobEvent, micros};
use crate::signing::ReleaseKey;
use crate::store::{JobRequest, State, Store, Submitted};
use crate::{Error, Result};

/// Microseconds since the Unix epoch, by this host's clock.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What the API and the event task share.
#[derive(Debug)]
pub struct Shared {
    pub config: DispatchConfig,
    db: Mutex<Store>,
    wake: Mutex<std_mpsc::Sender<()>>,
    pub metrics: Metrics,
    pub backend: &'static str,
    /// Signs promoted models.
    pub key: ReleaseKey,
    /// Lines whose trigger reference must be rebuilt (a rollout ended).
    new_references: Mutex<BTreeSet<String>>,
}

impl Shared {
    /// Runs `f` with the API's database connection.
    pub fn with_db<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut db = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut db)
    }

    /// Wakes the dispatcher loop.
    pub fn wake(&self) {
        let wake = self.wake.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = wake.send(());
    }

    /// A job request from this dispatch's defaults.
    pub fn request(
        &self,
        line: &str,
        trigger_kind: &str,
        trigger: String,
        from_us: i64,
        to_us: i64,
    ) -> JobRequest {
        let config = &self.config;
        JobRequest {
            site: config.site.clone(),
            line: line.to_owned(),
            family: config.family.clone(),
            priority: config.priority,
            gpus: config.gpus_per_job,
            dedup_key: None,
            idempotency_key: None,
            trigger,
            trigger_kind: trigger_kind.to_owned(),
            data_from_us: from_us,
            data_to_us: to_us,
            max_attempts: config.max_attempts,
            queue_timeout: config.queue_timeout,
            run_timeout: config.run_timeout,
        }
    }

    /// Submits a job and wakes the loop; records it on the timeline.
    pub fn submit(&self, request: &JobRequest) -> Result<Submitted> {
        let now = now_us();
        let submitted = self.with_db(|db| -> Result<Submitted> {
            let submitted = db.submit(request, now)?;
            let job = submitted.job();
            let text = match &submitted {
                // A triggered job's reason is on the timeline already, as the trigger's entry.
                Submitted::Created { .. } if request.trigger_kind == "manual" => {
                    format!("job {} queued: {}", job.name(), request.trigger)
                }
                Submitted::Created { .. } => {
                    format!(
                        "job {} queued by the {} trigger",
                        job.name(),
                        request.trigger_kind
                    )
                }
                Submitted::Merged { .. } => format!(
                    "{} merged into job {} ({})",
                    request.trigger,
                    job.name(),
                    job.state
                ),
                Submitted::Repeated { .. } => format!("repeated submission of job {}", job.name()),
            };
            db.log_event(now, &request.line, "job", &text)?;
            Ok(submitted)
        })?;
        self.wake();
        Ok(submitted)
    }

    /// Asks the loop to cancel a job.
    pub fn cancel(&self, id: i64, why: &str) -> Result<()> {
        self.with_db(|db| -> Result<()> {
            let job = db.job(id)?;
            if !job.state.is_active() {
                return Err(Error::Config(format!(
                    "job {} has already ended ({})",
                    job.name(),
                    job.state
                )));
            }
            db.set_kv(&format!("{CANCEL_KEY_PREFIX}{id}"), why)?;
            Ok(())
        })?;
        self.wake();
        Ok(())
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend
    }

    /// Whether `line`'s trigger reference must be rebuilt (and forgets that it must).
    pub fn take_new_reference(&self, line: &str) -> bool {
        let mut lines = self
            .new_references
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lines.remove(line)
    }

    /// A rollout of `line` ended (done or rolled back): its running model changed.
    pub fn rollouts_done(&self, line: &str, rollout: &Rollout) {
        if matches!(rollout.phase(), Phase::Done | Phase::RolledBack { .. }) {
            let mut lines = self
                .new_references
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lines.insert(line.to_owned());
        }
    }
}

/// A running dispatch.
#[derive(Debug)]
pub struct RunningDispatch {
    pub shared: Arc<Shared>,
    /// Where the API listens.
    pub api: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dispatcher: Option<std::thread::JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl RunningDispatch {
    /// Stops the loop and the API and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.shared.wake();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(thread) = self.dispatcher.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The backend the configuration names.
pub fn backend(config: &DispatchConfig) -> Result<Arc<dyn Backend>> {
    Ok(match config.backend {
        BackendKind::Local => Arc::new(LocalBackend::new()),
        BackendKind::Slurm => Arc::new(SlurmBackend::new(crate::backend::slurm::SlurmConfig {
            partition: config.slurm_partition.clone(),
            ..crate::backend::slurm::SlurmConfig::default()
        })),
    })
}

/// Starts dispatch: the loop, the API and the event task.
pub async fn start(config: DispatchConfig, shutdown: CancellationToken) -> Result<RunningDispatch> {
    let mqtt = config.validated_mqtt_options()?;
    let state_dir = config.state_dir();
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| Error::Io(format!("state folder {}", state_dir.display()), e))?;
    let backend = backend(&config)?;
    let exe = std::env::current_exe().map_err(|e| Error::Io("this program's path".into(), e))?;
    let launcher = Arc::new(TrainerLauncher {
        command: config.trainer_command(&exe),
        lake: config.lake.clone(),
        state_dir: state_dir.clone(),
        seed: config.seed,
    });
    let loop_store = Store::open(&config.database())?;
    let api_store = Store::open(&config.database())?;
    let (wake_tx, wake_rx) = std_mpsc::channel();
    let metrics = Metrics::new();
    metrics.pool_gpus.set(i64::from(config.gpus));
    let key = ReleaseKey::load_or_generate(&state_dir)?;
    info!(public_key = %key.public_key_hex(), key_id = key.key_id(), "release signing key (agents' model_public_key)");
    let shared = Arc::new(Shared {
        config: config.clone(),
        db: Mutex::new(api_store),
        wake: Mutex::new(wake_tx),
        metrics,
        backend: backend.name(),
        key,
        new_references: Mutex::new(BTreeSet::new()),
    });
    let (rollouts_tx, rollouts_rx) = mpsc::unbounded_channel();
    {
        let shared = shared.clone();
        let rollouts = rollouts_tx.clone();
        tokio::task::spawn_blocking(move || pipeline::catch_up(&shared, &shared.key, &rollouts))
            .await
            .map_err(|e| Error::Config(format!("post-processing finished jobs panicked: {e}")))??;
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let dispatcher = Dispatcher::new(
        loop_store,
        backend.clone(),
        launcher,
        DispatcherConfig {
            capacity: config.gpus,
            assign_gpus: config.backend == BackendKind::Local,
            retry: config.retry.clone(),
            fair_share_window: config.fair_share_window,
        },
    );
    let thread = {
        let shutdown = shutdown.clone();
        let tick = config.tick;
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || dispatcher_loop(dispatcher, wake_rx, events_tx, tick, shutdown))
            .map_err(|e| Error::Io("the dispatcher thread".into(), e))?
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Io(format!("API address {}", config.listen), e))?;
    let api = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("API address {}", config.listen), e))?;
    info!(%api, backend = backend.name(), gpus = config.gpus, lake = %config.lake.display(), "dispatch serving");
    let mut tasks = Vec::new();
    {
        let router = crate::api::router(shared.clone());
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                error!(error = %e, "the API stopped");
            }
        }));
    }
    tasks.push(tokio::spawn(event_task(
        shared.clone(),
        events_rx,
        rollouts_tx,
    )));
    tasks.push(tokio::spawn(pipeline::trigger_task(
        shared.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(pipeline::rollout_task(
        shared.clone(),
        mqtt,
        rollouts_rx,
        shutdown.clone(),
    )));
    Ok(RunningDispatch {
        shared,
        api,
        tasks,
        dispatcher: Some(thread),
        shutdown,
    })
}

fn dispatcher_loop(
    mut dispatcher: Dispatcher,
    wake: std_mpsc::Receiver<()>,
    events: mpsc::UnboundedSender<JobEvent>,
    tick: Duration,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match dispatcher.tick(now_us()) {
            Ok(changes) => {
                for change in changes {
                    let _ = events.send(change);
                }
            }
            Err(e) => error!(error = %e, "scheduler round failed; trying again"),
        }
        match wake.recv_timeout(tick) {
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Timeout) => {
                // Several wake-ups make one round.
                while wake.try_recv().is_ok() {}
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

async fn event_task(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<JobEvent>,
    rollouts: mpsc::UnboundedSender<RolloutCommand>,
) {
    while let Some(event) = events.recv().await {
        let job = &event.job;
        crate::metrics::Metrics::count(&shared.metrics.transitions, "to", job.state.as_str());
        if job.state == State::Running
            && let Some(started) = job.started_us
        {
            shared
                .metrics
                .time_to_running
                .observe((started - job.created_us) as f64 / 1e6);
        }
        let text = format!(
            "job {} {} → {}: {}",
            job.name(),
            event.from,
            job.state,
            job.reason
        );
        let logged = shared.with_db(|db| -> Result<()> {
            db.log_event(job.updated_us, &job.request.line, "job", &text)?;
            let counts = db.counts()?;
            shared.metrics.set_jobs(&counts);
            let in_use: u32 = db
                .jobs(&[State::Dispatched, State::Running], None, usize::MAX)?
                .iter()
                .map(|job| job.request.gpus)
                .sum();
            shared.metrics.pool_gpus_in_use.set(i64::from(in_use));
            Ok(())
        });
        if let Err(e) = logged {
            warn!(error = %e, "recording a job event failed");
        }
        if job.state == State::Succeeded {
            let (shared, job, rollouts) = (shared.clone(), job.clone(), rollouts.clone());
            let done = tokio::task::spawn_blocking(move || {
                pipeline::post_process(&shared, &shared.key, &job, &rollouts)
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "post-processing a succeeded job failed"),
                Err(e) => warn!(error = %e, "post-processing a succeeded job panicked"),
            }
        }
    }
}

/// How long ago `us` was, for messages.
pub fn ago(now: i64, us: i64) -> Duration {
    Duration::from_micros(u64::try_from(now - us).unwrap_or(0))
}

/// `d` in microseconds.
pub fn us(d: Duration) -> i64 {
    micros(d)
}

/// The models the registry holds, per line, for the API.
pub fn models_view(shared: &Shared) -> Result<serde_json::Value> {
    let registry = Registry::open(&shared.config.lake)?;
    let mut lines = BTreeMap::new();
    for line in registry.lines()? {
        let versions: Vec<serde_json::Value> = registry
            .list(&line)?
            .into_iter()
            .map(|entry| {
                serde_json::json!({
                    "version": entry.version,
                    "signed": entry.signed,
                    "metrics": entry.metrics.raw,
                    "lineage": entry.lineage,
                })
            })
            .collect();
        lines.insert(
            line.clone(),
            serde_json::json!({
                "champion": registry.champion_version(&line)?,
                "versions": versions,
                "history": registry.history(&line)?,
            }),
        );
    }
    Ok(serde_json::json!({ "public_key": shared.key.public_key_hex(), "lines": lines }))
}

/// Rollouts and their phases, for the API.
pub fn rollouts_view(shared: &Shared) -> Result<serde_json::Value> {
    let rollouts = pipeline::saved_rollouts(shared);
    serde_json::to_value(&rollouts).map_err(|e| Error::Config(e.to_string()))
}
