//! The scheduler: which queued job gets GPUs next, and the loop that starts, watches, retries,
//! times out and cancels jobs on a backend.
//!
//! The decision ([`pick`]) is a pure function of the queue, the jobs in flight, the pool and
//! each line's recent GPU use, so it is tested without a database or a backend. Its rules:
//!
//! 1. A job is eligible when its back-off has passed, no other job of its (line, family) is in
//!    flight, and it asks for no more GPUs than the pool has.
//! 2. Among eligible jobs: higher priority first; within a priority, the line that used the
//!    fewest GPU-seconds recently (fair share); then the longest queued.
//! 3. If that job does not fit the free GPUs, nothing else starts (no back-filling): a job
//!    asking for many GPUs is not starved by a stream of small ones.
//!
//! The loop ([`Dispatcher::tick`]) persists before it acts: a job is `dispatched` (with its
//! GPUs) in SQLite before the backend is asked to start it, and its handle is stored as soon as
//! the backend answers. A dispatch killed between the two finds, on restart, a dispatched job
//! without a handle; it asks the backend whether a job of that name exists
//! ([`Backend::find`]) before starting it again, so a job is never run twice.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::backend::{Backend, BackendError, JobSpec, Observed};
use crate::store::{Changes, Job, State, Store};

/// What the decision needs of a queued job.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: i64,
    pub line: String,
    pub family: String,
    pub priority: i64,
    pub gpus: u32,
    pub queued_us: i64,
    pub not_before_us: i64,
}

impl Candidate {
    pub fn of(job: &Job) -> Candidate {
        Candidate {
            id: job.id,
            line: job.request.line.clone(),
            family: job.request.family.clone(),
            priority: job.request.priority,
            gpus: job.request.gpus,
            queued_us: job.queued_us,
            not_before_us: job.not_before_us,
        }
    }
}

/// A job holding GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    pub line: String,
    pub family: String,
    pub gpus: Vec<u32>,
    /// GPUs it asked for (Slurm jobs report their indices only once running).
    pub asked: u32,
}

/// The scheduler's choice: start this job on these GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub id: i64,
    pub gpus: Vec<u32>,
}

/// The scheduler's order of queued jobs: higher priority first, then the line that used the
/// fewest GPU-seconds recently (`usage`), then the longest queued, then the oldest id.
pub fn order(a: &Candidate, b: &Candidate, usage: &HashMap<String, f64>) -> std::cmp::Ordering {
    let use_a = usage.get(&a.line).copied().unwrap_or(0.0);
    let use_b = usage.get(&b.line).copied().unwrap_or(0.0);
    b.priority
        .cmp(&a.priority)
        .then(use_a.total_cmp(&use_b))
        .then(a.queued_us.cmp(&b.queued_us))
        .then(a.id.cmp(&b.id))
}

/// Picks the next job to start, or `None`. `usage` is each line's recent GPU-seconds.
pub fn pick(
    queued: &[Candidate],
    in_flight: &[InFlight],
    capacity: u32,
    usage: &HashMap<String, f64>,
    now_us: i64,
) -> Option<Pick> {
    let busy: BTreeSet<(&str, &str)> = in_flight
        .iter()
        .map(|job| (job.line.as_str(), job.family.as_str()))
        .collect();
    let best = queued
        .iter()
        .filter(|job| {
            job.not_before_us <= now_us
                && job.gpus <= capacity
                && !busy.contains(&(job.line.as_str(), job.family.as_str()))
        })
        .min_by(|a, b| order(a, b, usage))?;
    let held: BTreeSet<u32> = in_flight
        .iter()
        .flat_map(|job| job.gpus.iter().copied())
        .collect();
    // Jobs whose indices are not known yet still count against the pool.
    let unknown: u32 = in_flight
        .iter()
        .map(|job| {
            job.asked
                .saturating_sub(u32::try_from(job.gpus.len()).unwrap_or(u32::MAX))
        })
        .sum();
    let free: Vec<u32> = (0..capacity).filter(|gpu| !held.contains(gpu)).collect();
    let available = u32::try_from(free.len())
        .unwrap_or(0)
        .saturating_sub(unknown);
    if best.gpus > available {
        return None;
    }
    Some(Pick {
        id: best.id,
        gpus: free.into_iter().take(best.gpus as usize).collect(),
    })
}

/// Retries: which failures are worth another attempt, and how long to wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubles with each further one.
    #[serde(with = "loopline_common::duration")]
    pub backoff_base: Duration,
    /// Longest wait between attempts.
    #[serde(with = "loopline_common::duration")]
    pub backoff_max: Duration,
    /// Exit codes of the job that mean "try again" (75 is EX_TEMPFAIL, the trainer's).
    pub retryable_exit_codes: Vec<i32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            retryable_exit_codes: vec![75],
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` attempts failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// How an ended job is classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Worth another attempt, if any are left.
    Retryable(String),
    Failed(String),
    TimedOut(String),
    Cancelled(String),
}

/// Classifies what the backend saw of an ended job.
pub fn classify(observed: &Observed, policy: &RetryPolicy) -> Outcome {
    match observed {
        Observed::Exited { code: 0 } => Outcome::Succeeded,
        Observed::Exited { code } if policy.retryable_exit_codes.contains(code) => {
            Outcome::Retryable(format!("exit {code} (retryable)"))
        }
        Observed::Exited { code } => Outcome::Failed(format!("exit {code}")),
        // SIGKILL from outside is the OOM killer or a node going away: worth a retry.
        Observed::Signalled { signal: 9 } => Outcome::Retryable("killed by signal 9".into()),
        Observed::Signalled { signal } => Outcome::Failed(format!("killed by signal {signal}")),
        Observed::TimedOut => Outcome::TimedOut("the backend's time limit".into()),
        Observed::Cancelled => Outcome::Cancelled("cancelled in the backend".into()),
        Observed::Lost { reason } => Outcome::Retryable(format!("lost by the backend: {reason}")),
        Observed::Pending { .. } | Observed::Running { .. } => {
            Outcome::Failed("classified before it ended".into())
        }
    }
}

/// How the dispatcher builds a job's command and folder.
pub trait JobLauncher: Send + Sync + std::fmt::Debug {
    /// The backend spec of `job`, with its (created) work folder.
    fn spec(&self, job: &Job, gpus: Option<Vec<u32>>) -> std::io::Result<JobSpec>;
}

/// Settings of the dispatcher loop.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// GPUs in the pool.
    pub capacity: u32,
    /// Whether the scheduler chooses GPU indices (local) or the backend does (Slurm).
    pub assign_gpus: bool,
    pub retry: RetryPolicy,
    /// Fair share looks back this far.
    pub fair_share_window: Duration,
}

/// A state change the loop made, for the service (registry, timeline, metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub job: Job,
    pub from: State,
}

/// The loop that drives jobs through a backend. Not thread-safe on purpose: one owner thread.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    backend: Arc<dyn Backend>,
    launcher: Arc<dyn JobLauncher>,
    config: DispatcherConfig,
}

/// A cancellation request recorded for the loop (kv key prefix).
pub const CANCEL_KEY_PREFIX: &str = "cancel/";

impl Dispatcher {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        launcher: Arc<dyn JobLauncher>,
        config: DispatcherConfig,
    ) -> Dispatcher {
        Dispatcher {
            store,
            backend,
            launcher,
            config,
        }
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// One round: watch jobs in flight, enforce time-outs and cancellations, then start what
    /// fits. Returns the state changes made.
    pub fn tick(&mut self, now_us: i64) -> crate::Result<Vec<JobEvent>> {
        let mut events = Vec::new();
        self.cancel_requested(now_us, &mut events)?;
        self.expire_queued(now_us, &mut events)?;
        self.watch(now_us, &mut events)?;
        self.start(now_us, &mut events)?;
        Ok(events)
    }

    fn move_to(
        &mut self,
        job: &Job,
        to: State,
        reason: &str,
        changes: Changes,
        now_us: i64,
        events: &mut Vec<JobEvent>,
    ) -> crate::Result<Job> {
        let updated = self.store.transition(job.id, to, reason, changes, now_us)?;
        info!(job = %job.name(), from = %job.state, to = %to, reason, "job");
        events.push(JobEvent {
            job: updated.clone(),
            from: job.state,
        });
        Ok(updated)
    }

    fn cancel_requested(&mut self, now_us: i64, events: &mut Vec<JobEvent>) -> crate::Result<()> {
        for (key, why) in self.store.kv_with_prefix(CANCEL_KEY_PREFIX)? {
            let Some(id) = key
                .strip_prefix(CANCEL_KEY_PREFIX)
                .and_then(|id| id.parse::<i64>().ok())
            else {
                continue;
            };
            let job = self.store.job(id)?;
            if job.state.is_active() {
                if let Some(handle) = &job.handle
                    && let Err(e) = self.backend.cancel(handle)
                {
                    warn!(job = %job.name(), error = %e, "cancel in the backend failed; retrying next round");
                    continue;
                }
                self.move_to(
                    &job,
                    State::Cancelled,
                    &why,
                    Changes::default(),
                    now_us,
                    events,
                )?;
            }
            self.store.set_kv(&key, "")?;
        }
        Ok(())
    }

    fn expire_queued(&mut self, now_us: i64, events: &mut Vec<JobEvent>) -> crate::Result<()> {
        let expired: Vec<i64> = self
            .store
            .queued()?
            .into_iter()
            .filter(|job| now_us - job.queued_us > job.queue_timeout_us)
            .map(|job| job.id)
            .collect();
        for id in expired {
            let job = self.store.job(id)?;
            let reason = format!(
                "queue time-out: waited longer than {}",
                humantime::format_duration(job.request.queue_timeout)
            );
            self.move_to(
                &job,
                State::TimedOut,
                &reason,
                Changes::default(),
                now_us,
                events,
            )?;
        }
        Ok(())
    }

    fn watch(&mut self, now_us: i64, events: &mut Vec<JobEvent>) -> crate::Result<()> {
        let in_flight = self
            .store
            .jobs(&[State::Dispatched, State::Running], None, usize::MAX)?;
        for job in in_flight {
            let Some(handle) = job.handle.clone() else {
                self.adopt_or_restart(&job, now_us, events)?;
                continue;
            };
            // The run time-out counts from the start (or from dispatch while pending).
            let since = job.started_us.or(job.dispatched_us).unwrap_or(now_us);
            if now_us - since > micros(job.request.run_timeout) {
                if let Err(e) = self.backend.cancel(&handle) {
                    warn!(job = %job.name(), error = %e, "stopping a timed-out job failed; retrying next round");
                    continue;
                }
                let reason = format!(
                    "run time-out: ran longer than {}",
                    humantime::format_duration(job.request.run_timeout)
                );
                self.move_to(
                    &job,
                    State::TimedOut,
                    &reason,
                    Changes::default(),
                    now_us,
                    events,
                )?;
                continue;
            }
            let observed = match self.backend.poll(&handle) {
                Ok(observed) => observed,
                Err(e) => {
                    warn!(job = %job.name(), error = %e, "polling the backend failed; trying again next round");
                    continue;
                }
            };
            match observed {
                Observed::Pending { .. } => {}
                Observed::Running { gpus } => {
                    if job.state == State::Dispatched {
                        self.mark_running(&job, gpus, now_us, events)?;
                    }
                }
                ended => self.finish(&job, &ended, now_us, events)?,
            }
        }
        Ok(())
    }

    fn mark_running(
        &mut self,
        job: &Job,
        gpus: Option<Vec<u32>>,
        now_us: i64,
        events: &mut Vec<JobEvent>,
    ) -> crate::Result<()> {
        let on = match gpus.as_ref().or(job.gpu_indices.as_ref()) {
            Some(g) if !g.is_empty() => format!(" on GPU {}", join(g)),
            _ => String::new(),
        };
        let reason = format!("running on {}{on}", self.backend.name());
        let changes = Changes {
            gpu_indices: gpus,
            ..Changes::default()
        };
        self.move_to(job, State::Running, &reason, changes, now_us, events)?;
        Ok(())
    }

    fn finish(
        &mut self,
        job: &Job,
        observed: &Observed,
        now_us: i64,
        events: &mut Vec<JobEvent>,
    ) -> crate::Result<()> {
        let exit_code = match observed {
            Observed::Exited { code } => Some(*code),
            _ => None,
        };
        let changes = Changes {
            exit_code,
            ..Changes::default()
        };
        match classify(observed, &self.config.retry) {
            Outcome::Succeeded => {
                self.move_to(job, State::Succeeded, "exit 0", changes, now_us, events)?;
            }
            Outcome::Retryable(why) if job.attempt < job.request.max_attempts => {
                let wait = self.config.retry.backoff(job.attempt);
                let reason = format!(
                    "{why}; retry {} of {} in {}",
                    job.attempt + 1,
                    job.request.max_attempts,
                    humantime::format_duration(wait)
                );
                let changes = Changes {
                    not_before_us: Some(now_us + micros(wait)),
                    ..changes
                };
                self.move_to(job, State::Queued, &reason, changes, now_us, events)?;
            }
            Outcome::Retryable(why) => {
                let reason = format!("{why}; no attempts left ({} made)", job.attempt);
                self.move_to(job, State::Failed, &reason, changes, now_us, events)?;
            }
            Outcome::Failed(why) => {
                let reason = format!("{why} (not retryable)");
                self.move_to(job, State::Failed, &reason, changes, now_us, events)?;
            }
            Outcome::TimedOut(why) => {
                self.move_to(job, State::TimedOut, &why, changes, now_us, events)?;
            }
            Outcome::Cancelled(why) => {
                self.move_to(job, State::Cancelled, &why, changes, now_us, events)?;
            }
        }
        Ok(())
    }

    /// A job dispatched by a process that died before storing the backend's handle.
    fn adopt_or_restart(
        &mut self,
        job: &Job,
        now_us: i64,
        events: &mut Vec<JobEvent>,
    ) -> crate::Result<()> {
        let spec = self
            .launcher
            .spec(job, job.gpu_indices.clone())
            .map_err(|e| crate::Error::Io(format!("job {} folder", job.name()), e))?;
        match self.backend.find(&spec) {
            Ok(Some(handle)) => {
                info!(job = %job.name(), %handle, "found the job started before a restart");
                self.store.record(
                    job.id,
                    Changes {
                        handle: Some(handle),
                        ..Changes::default()
                    },
                    now_us,
                )?;
            }
            Ok(None) => self.submit(job, spec, now_us, events)?,
            Err(e) => {
                warn!(job = %job.name(), error = %e, "looking the job up in the backend failed")
            }
        }
        Ok(())
    }

    fn start(&mut self, now_us: i64, events: &mut Vec<JobEvent>) -> crate::Result<()> {
        let mut queued: Vec<Candidate> = self
            .store
            .queued()?
            .into_iter()
            .map(|job| Candidate {
                id: job.id,
                line: job.line,
                family: job.family,
                priority: job.priority,
                gpus: job.gpus,
                queued_us: job.queued_us,
                not_before_us: job.not_before_us,
            })
            .collect();
        if queued.is_empty() {
            return Ok(());
        }
        let since = now_us - micros(self.config.fair_share_window);
        let usage: HashMap<String, f64> =
            self.store.usage_since(since, now_us)?.into_iter().collect();
        loop {
            let in_flight: Vec<InFlight> = self
                .store
                .jobs(&[State::Dispatched, State::Running], None, usize::MAX)?
                .iter()
                .map(|job| InFlight {
                    line: job.request.line.clone(),
                    family: job.request.family.clone(),
                    gpus: job.gpu_indices.clone().unwrap_or_default(),
                    asked: job.request.gpus,
                })
                .collect();
            // A job asking more GPUs than the pool has can never run.
            if let Some(too_big) = queued
                .iter()
                .position(|job| job.gpus > self.config.capacity)
            {
                let candidate = queued.swap_remove(too_big);
                let job = self.store.job(candidate.id)?;
                let reason = format!(
                    "asks for {} GPUs; the pool has {}",
                    candidate.gpus, self.config.capacity
                );
                self.move_to(
                    &job,
                    State::Failed,
                    &reason,
                    Changes::default(),
                    now_us,
                    events,
                )?;
                continue;
            }
            let Some(choice) = pick(&queued, &in_flight, self.config.capacity, &usage, now_us)
            else {
                return Ok(());
            };
            queued.retain(|job| job.id != choice.id);
            let job = self.store.job(choice.id)?;
            let gpus = self.config.assign_gpus.then(|| choice.gpus.clone());
            let spec = self
                .launcher
                .spec(&job, gpus.clone())
                .map_err(|e| crate::Error::Io(format!("job {} folder", job.name()), e))?;
            let reason = match &gpus {
                Some(g) if !g.is_empty() => {
                    format!("pool: GPU {} of {}", join(g), self.config.capacity)
                }
                Some(_) => "pool: no GPU asked".to_owned(),
                None => format!(
                    "pool: {} GPU(s) from {}",
                    job.request.gpus,
                    self.backend.name()
                ),
            };
            let changes = Changes {
                backend: Some(self.backend.name().to_owned()),
                gpu_indices: gpus,
                ..Changes::default()
            };
            let job = self.move_to(&job, State::Dispatched, &reason, changes, now_us, events)?;
            self.submit(&job, spec, now_us, events)?;
        }
    }

    fn submit(
        &mut self,
        job: &Job,
        spec: JobSpec,
        now_us: i64,
        events: &mut Vec<JobEvent>,
    ) -> crate::Result<()> {
        match self.backend.submit(&spec) {
            Ok(handle) => {
                let job = self.store.record(
                    job.id,
                    Changes {
                        handle: Some(handle.clone()),
                        ..Changes::default()
                    },
                    now_us,
                )?;
                // A local job runs at once: say so now rather than at the next round.
                if let Ok(Observed::Running { gpus }) = self.backend.poll(&handle) {
                    self.mark_running(&job, gpus, now_us, events)?;
                }
            }
            Err(e @ BackendError::Unavailable { .. }) if job.attempt < job.request.max_attempts => {
                let wait = self.config.retry.backoff(job.attempt);
                let reason = format!(
                    "submitting failed: {e}; retry in {}",
                    humantime::format_duration(wait)
                );
                let changes = Changes {
                    not_before_us: Some(now_us + micros(wait)),
                    ..Changes::default()
                };
                self.move_to(job, State::Queued, &reason, changes, now_us, events)?;
            }
            Err(e) => {
                let reason = format!("submitting failed: {e}");
                self.move_to(
                    job,
                    State::Failed,
                    &reason,
                    Changes::default(),
                    now_us,
                    events,
                )?;
            }
        }
        Ok(())
    }
}

/// A job's work folder under the state directory.
pub fn job_dir(state_dir: &std::path::Path, job: &Job) -> PathBuf {
    state_dir.join("jobs").join(job.name())
}

fn join(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::store::JobRequest;

    /// The store tests' request, with one-minute time-outs.
    fn request(line: &str) -> JobRequest {
        JobRequest {
            queue_timeout: Duration::from_secs(60),
            run_timeout: Duration::from_secs(60),
            ..crate::store::tests::request(line)
        }
    }

    /// A backend whose jobs end as scripted: each submission takes the next outcome.
    #[derive(Debug, Default)]
    struct Scripted {
        outcomes: Mutex<VecDeque<Observed>>,
        started: Mutex<Vec<(String, Option<Vec<u32>>)>>,
        running: Mutex<HashMap<String, Observed>>,
        cancelled: Mutex<Vec<String>>,
        known: Mutex<HashMap<String, String>>,
    }

    impl Backend for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn submit(&self, spec: &JobSpec) -> Result<String, BackendError> {
            let mut started = self.started.lock().unwrap();
            let handle = format!("h{}", started.len());
            started.push((spec.job_id.clone(), spec.gpu_indices.clone()));
            let outcome = self
                .outcomes
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Observed::Running { gpus: None });
            self.running.lock().unwrap().insert(handle.clone(), outcome);
            Ok(handle)
        }
        fn poll(&self, handle: &str) -> Result<Observed, BackendError> {
            Ok(self
                .running
                .lock()
                .unwrap()
                .get(handle)
                .cloned()
                .unwrap_or(Observed::Lost {
                    reason: "unknown".into(),
                }))
        }
        fn cancel(&self, handle: &str) -> Result<(), BackendError> {
            self.cancelled.lock().unwrap().push(handle.to_owned());
            self.running
                .lock()
                .unwrap()
                .insert(handle.to_owned(), Observed::Cancelled);
            Ok(())
        }
        fn find(&self, spec: &JobSpec) -> Result<Option<String>, BackendError> {
            Ok(self.known.lock().unwrap().get(&spec.job_id).cloned())
        }
    }

    #[derive(Debug)]
    struct Folderless;

    impl JobLauncher for Folderless {
        fn spec(&self, job: &Job, gpus: Option<Vec<u32>>) -> std::io::Result<JobSpec> {
            Ok(JobSpec {
                job_id: job.name(),
                command: vec!["/bin/true".into()],
                env: Vec::new(),
                gpus: job.request.gpus,
                gpu_indices: gpus,
                workdir: std::env::temp_dir(),
                time_limit: job.request.run_timeout,
            })
        }
    }

    const S: i64 = 1_000_000;

    fn dispatcher(backend: Arc<Scripted>) -> Dispatcher {
        Dispatcher::new(
            Store::in_memory().unwrap(),
            backend,
            Arc::new(Folderless),
            DispatcherConfig {
                capacity: 2,
                assign_gpus: true,
                retry: RetryPolicy::default(),
                fair_share_window: Duration::from_secs(3600),
            },
        )
    }

    fn path(d: &mut Dispatcher, id: i64) -> Vec<State> {
        d.store()
            .transitions(id)
            .unwrap()
            .into_iter()
            .map(|t| t.to)
            .collect()
    }

    #[test]
    fn a_retryable_failure_is_retried_after_its_back_off_and_a_bad_one_is_not() {
        let backend = Arc::new(Scripted::default());
        backend.outcomes.lock().unwrap().extend([
            Observed::Exited { code: 75 },
            Observed::Exited { code: 0 },
            Observed::Exited { code: 2 },
        ]);
        let mut d = dispatcher(backend.clone());
        let a = d.store().submit(&request("a"), 0).unwrap().job().id;
        d.tick(0).unwrap(); // dispatched (first attempt)
        d.tick(S).unwrap(); // exit 75: back to the queue for 5 s
        let job = d.store().job(a).unwrap();
        assert_eq!((job.state, job.not_before_us), (State::Queued, 6 * S));
        assert!(
            job.reason
                .contains("exit 75 (retryable); retry 2 of 3 in 5s"),
            "{}",
            job.reason
        );
        d.tick(5 * S).unwrap();
        assert_eq!(
            d.store().job(a).unwrap().state,
            State::Queued,
            "back-off honoured"
        );
        d.tick(6 * S).unwrap(); // second attempt
        d.tick(7 * S).unwrap(); // exit 0
        assert_eq!(d.store().job(a).unwrap().state, State::Succeeded);
        assert_eq!(
            path(&mut d, a),
            [
                State::Queued,
                State::Dispatched,
                State::Queued,
                State::Dispatched,
                State::Succeeded
            ]
        );
        let b = d.store().submit(&request("b"), 8 * S).unwrap().job().id;
        d.tick(8 * S).unwrap();
        d.tick(9 * S).unwrap(); // exit 2: not retryable
        let job = d.store().job(b).unwrap();
        assert_eq!(
            (job.state, job.attempt, job.exit_code),
            (State::Failed, 1, Some(2))
        );
        assert_eq!(job.reason, "exit 2 (not retryable)");
        assert_eq!(backend.started.lock().unwrap().len(), 3);
    }

    #[test]
    fn time_outs_stop_the_job_and_cancellation_requests_are_honoured() {
        let backend = Arc::new(Scripted::default());
        let mut d = dispatcher(backend.clone());
        let a = d.store().submit(&request("a"), 0).unwrap().job().id;
        d.tick(0).unwrap();
        assert_eq!(d.store().job(a).unwrap().state, State::Running);
        d.tick(61 * S).unwrap();
        let job = d.store().job(a).unwrap();
        assert_eq!(
            (job.state, job.reason.as_str()),
            (State::TimedOut, "run time-out: ran longer than 1m")
        );
        assert_eq!(*backend.cancelled.lock().unwrap(), ["h0"]);

        // Two running lines fill the pool; a third waits past its queue time-out.
        let long = |line: &str| JobRequest {
            run_timeout: Duration::from_secs(3600),
            ..request(line)
        };
        let b = d.store().submit(&long("b"), 62 * S).unwrap().job().id;
        let c = d.store().submit(&long("c"), 62 * S).unwrap().job().id;
        let e = d.store().submit(&request("e"), 62 * S).unwrap().job().id;
        d.tick(62 * S).unwrap();
        let gpus: Vec<Option<Vec<u32>>> = [b, c]
            .iter()
            .map(|id| d.store().job(*id).unwrap().gpu_indices)
            .collect();
        assert_eq!(gpus, [Some(vec![0]), Some(vec![1])]);
        d.tick(123 * S).unwrap();
        assert_eq!(d.store().job(e).unwrap().state, State::TimedOut);
        assert!(
            d.store()
                .job(e)
                .unwrap()
                .reason
                .starts_with("queue time-out")
        );

        d.store()
            .set_kv(&format!("{CANCEL_KEY_PREFIX}{b}"), "operator")
            .unwrap();
        d.tick(124 * S).unwrap();
        assert_eq!(d.store().job(b).unwrap().state, State::Cancelled);
        assert_eq!(backend.cancelled.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_dispatched_job_without_a_handle_is_found_before_it_is_started_again() {
        let backend = Arc::new(Scripted::default());
        let mut d = dispatcher(backend.clone());
        let a = d.store().submit(&request("a"), 0).unwrap().job().id;
        let b = d.store().submit(&request("b"), 0).unwrap().job().id;
        // A dispatch that died between marking the jobs dispatched and storing their handles:
        // the backend knows a; b never reached it.
        for id in [a, b] {
            d.store()
                .transition(id, State::Dispatched, "pool", Changes::default(), 1)
                .unwrap();
        }
        backend
            .known
            .lock()
            .unwrap()
            .insert(format!("j-{a}"), "old".into());
        backend
            .running
            .lock()
            .unwrap()
            .insert("old".into(), Observed::Running { gpus: None });
        d.tick(2).unwrap();
        assert_eq!(d.store().job(a).unwrap().handle.as_deref(), Some("old"));
        let started = backend.started.lock().unwrap().clone();
        assert_eq!(
            started.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            [format!("j-{b}")]
        );
    }

    fn candidate(id: i64, line: &str, priority: i64, gpus: u32, queued_us: i64) -> Candidate {
        Candidate {
            id,
            line: line.into(),
            family: "anomaly-ae".into(),
            priority,
            gpus,
            queued_us,
            not_before_us: 0,
        }
    }

    fn running(line: &str, gpus: &[u32]) -> InFlight {
        InFlight {
            line: line.into(),
            family: "anomaly-ae".into(),
            gpus: gpus.to_vec(),
            asked: u32::try_from(gpus.len()).unwrap(),
        }
    }

    #[test]
    fn priority_then_fair_share_then_age() {
        let queued = vec![
            candidate(1, "a", 0, 1, 10),
            candidate(2, "b", 0, 1, 20),
            candidate(3, "c", 5, 1, 30),
        ];
        let usage: HashMap<String, f64> = [("a".to_string(), 100.0), ("b".to_string(), 5.0)].into();
        assert_eq!(
            pick(&queued, &[], 4, &usage, 0).unwrap().id,
            3,
            "priority first"
        );
        assert_eq!(
            pick(&queued[..2], &[], 4, &usage, 0).unwrap().id,
            2,
            "line b used less"
        );
        assert_eq!(
            pick(&queued[..2], &[], 4, &HashMap::new(), 0).unwrap().id,
            1,
            "oldest"
        );
    }

    #[test]
    fn one_job_per_line_and_family_in_flight_and_gpus_are_distinct() {
        let queued = vec![candidate(1, "a", 9, 1, 0), candidate(2, "b", 0, 2, 0)];
        let in_flight = vec![running("a", &[0])];
        let choice = pick(&queued, &in_flight, 4, &HashMap::new(), 0).unwrap();
        assert_eq!(
            choice,
            Pick {
                id: 2,
                gpus: vec![1, 2]
            }
        );
    }

    #[test]
    fn a_job_that_does_not_fit_blocks_smaller_ones_and_back_off_is_honoured() {
        let queued = vec![candidate(1, "a", 5, 3, 0), candidate(2, "b", 0, 1, 0)];
        let in_flight = vec![running("c", &[0, 1])];
        assert_eq!(pick(&queued, &in_flight, 4, &HashMap::new(), 0), None);
        let mut later = candidate(3, "d", 0, 1, 0);
        later.not_before_us = 100;
        assert_eq!(pick(&[later.clone()], &[], 4, &HashMap::new(), 99), None);
        assert_eq!(pick(&[later], &[], 4, &HashMap::new(), 100).unwrap().id, 3);
    }

    #[test]
    fn unknown_indices_still_take_capacity() {
        let in_flight = vec![InFlight {
            line: "x".into(),
            family: "anomaly-ae".into(),
            gpus: vec![],
            asked: 4,
        }];
        assert_eq!(
            pick(
                &[candidate(1, "a", 0, 1, 0)],
                &in_flight,
                4,
                &HashMap::new(),
                0
            ),
            None
        );
    }

    #[test]
    fn retry_classification_and_back_off() {
        let policy = RetryPolicy::default();
        assert_eq!(
            classify(&Observed::Exited { code: 0 }, &policy),
            Outcome::Succeeded
        );
        assert!(matches!(
            classify(&Observed::Exited { code: 75 }, &policy),
            Outcome::Retryable(_)
        ));
        assert!(matches!(
            classify(&Observed::Exited { code: 2 }, &policy),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            classify(&Observed::Signalled { signal: 9 }, &policy),
            Outcome::Retryable(_)
        ));
        assert!(matches!(
            classify(&Observed::Lost { reason: "x".into() }, &policy),
            Outcome::Retryable(_)
        ));
        assert_eq!(policy.backoff(1), Duration::from_secs(5));
        assert_eq!(policy.backoff(3), Duration::from_secs(20));
        assert_eq!(policy.backoff(30), Duration::from_secs(300));
    }
}
