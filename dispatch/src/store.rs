//! The job store: every training job and every change of its state, in SQLite.
//!
//! Invariants:
//!
//! - The database is the truth. Dispatch keeps no job state it could not rebuild from it, so a
//!   dispatch killed at any instant restarts where it stopped: a job is never lost (it is in
//!   the `jobs` table from the moment [`Store::submit`] returns) and never run twice (a job is
//!   marked `dispatched` *before* the backend is asked to start it, and its backend handle is
//!   stored as soon as the backend returns one; see `scheduler`).
//! - Every state change goes through [`Store::transition`], which checks it against the state
//!   machine ([`State::can_become`]), updates the job and appends a row to `transitions` with
//!   its reason, in one transaction.
//! - At most one *active* job (queued, dispatched or running) per de-duplication key: a unique
//!   partial index enforces it, and a submission whose key is active returns that job.
//! - A submission with an idempotency key seen before returns the job it created then.
//!
//! The database runs in WAL mode with `synchronous=FULL`: a committed transition survives a
//! power cut, not only a killed process. Dispatch's loop and its API each have a connection;
//! every transaction that writes starts `IMMEDIATE` (it takes the write lock before it reads),
//! so that the two wait for each other (`busy_timeout`) instead of one failing to upgrade a
//! read snapshot the other has moved past.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

/// Errors of the job store, naming the job or the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("job database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("job {0} does not exist")]
    NoSuchJob(i64),
    #[error("job {id} cannot go from {from} to {to}")]
    BadTransition { id: i64, from: State, to: State },
    #[error("job {id}: stored {what} is unreadable: {detail}")]
    Corrupt {
        id: i64,
        what: &'static str,
        detail: String,
    },
    #[error("invalid job request: {0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A job's state. `queued → dispatched → running → succeeded | failed | timed_out |
/// cancelled`; a retry takes a dispatched or running job back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Queued,
        State::Dispatched,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::TimedOut,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Dispatched => "dispatched",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
        }
    }

    /// Whether the job holds (or is about to hold) GPUs of the pool.
    pub fn is_in_flight(self) -> bool {
        matches!(self, State::Dispatched | State::Running)
    }

    /// Whether the job may still change state.
    pub fn is_active(self) -> bool {
        matches!(self, State::Queued | State::Dispatched | State::Running)
    }

    /// The state machine.
    pub fn can_become(self, to: State) -> bool {
        use State::*;
        match (self, to) {
            (Queued, Dispatched | Cancelled | TimedOut | Failed) => true,
            // Dispatched: the backend has it but has not started it.
            (Dispatched, Running | Queued | Succeeded | Failed | TimedOut | Cancelled) => true,
            (Running, Queued | Succeeded | Failed | TimedOut | Cancelled) => true,
            _ => false,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// What asked for a job: why it exists, for the timeline and lineage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    pub site: String,
    pub line: String,
    /// Model family, e.g. `anomaly-ae`.
    pub family: String,
    /// Higher runs first.
    pub priority: i64,
    /// GPUs the job asks for.
    pub gpus: u32,
    /// Jobs with the same key are one job while it is active (default:
    /// `train/<site>/<line>/<family>`).
    pub dedup_key: Option<String>,
    /// A client's key that makes a repeated submission return the first one's job.
    pub idempotency_key: Option<String>,
    /// The trigger, in words and in kind (`drift`, `volume`, `schedule`, `manual`).
    pub trigger: String,
    pub trigger_kind: String,
    /// Range of lake data to train on, microseconds since the epoch.
    pub data_from_us: i64,
    pub data_to_us: i64,
    /// Attempts before a retryable failure is final.
    pub max_attempts: u32,
    pub queue_timeout: Duration,
    pub run_timeout: Duration,
}

impl JobRequest {
    /// The de-duplication key this request uses.
    pub fn effective_dedup_key(&self) -> String {
        self.dedup_key
            .clone()
            .unwrap_or_else(|| format!("train/{}/{}/{}", self.site, self.line, self.family))
    }

    fn check(&self) -> Result<()> {
        let bad = |what: String| Err(StoreError::Invalid(what));
        if self.line.is_empty() || self.site.is_empty() || self.family.is_empty() {
            return bad("site, line and family must not be empty".into());
        }
        if self.data_to_us <= self.data_from_us {
            return bad(format!(
                "the data range ends ({}) before it starts ({})",
                self.data_to_us, self.data_from_us
            ));
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub state: State,
    pub dedup_key: String,
    pub request: JobRequest,
    /// Attempts started so far (1 while the first runs).
    pub attempt: u32,
    /// A queued job is not dispatched before this time (retry back-off).
    pub not_before_us: i64,
    pub created_us: i64,
    pub updated_us: i64,
    /// When it was last queued (creation or retry): the queue time-out counts from here.
    pub queued_us: i64,
    pub dispatched_us: Option<i64>,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub backend: Option<String>,
    pub handle: Option<String>,
    /// GPUs assigned: by the scheduler (local) or reported by the backend (Slurm).
    pub gpu_indices: Option<Vec<u32>>,
    pub exit_code: Option<i32>,
    /// The reason of the last transition.
    pub reason: String,
}

impl Job {
    /// The job's name in backends, folders and model versions.
    pub fn name(&self) -> String {
        format!("j-{}", self.id)
    }
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub job_id: i64,
    pub at_us: i64,
    /// `None` for the creation.
    pub from: Option<State>,
    pub to: State,
    pub reason: String,
}

/// A queued job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: i64,
    pub line: String,
    pub family: String,
    pub priority: i64,
    pub gpus: u32,
    pub queued_us: i64,
    pub not_before_us: i64,
    pub queue_timeout_us: i64,
}

/// One entry of the timeline: what dispatch noticed or did, in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_us: i64,
    pub line: String,
    /// `drift`, `alert`, `job`, `model`, `rollout`, …
    pub kind: String,
    pub text: String,
}

/// What [`Store::submit`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Submitted {
    Created {
        job: Job,
    },
    /// The idempotency key was seen: the job it created then.
    Repeated {
        job: Job,
    },
    /// An active job has the same de-duplication key.
    Merged {
        job: Job,
    },
}

impl Submitted {
    pub fn job(&self) -> &Job {
        match self {
            Submitted::Created { job }
            | Submitted::Repeated { job }
            | Submitted::Merged { job } => job,
        }
    }
}

/// Fields a transition may set besides the state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub backend: Option<String>,
    pub handle: Option<String>,
    pub gpu_indices: Option<Vec<u32>>,
    pub exit_code: Option<i32>,
    /// For a retry: not before this time.
    pub not_before_us: Option<i64>,
}

impl Changes {
    /// The GPU indices as stored (a JSON array), if set.
    fn gpu_text(&self) -> Result<Option<String>> {
        self.gpu_indices
            .as_ref()
            .map(|gpus| serde_json::to_string(gpus).map_err(|e| StoreError::Invalid(e.to_string())))
            .transpose()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    state          TEXT    NOT NULL,
    dedup_key      TEXT    NOT NULL,
    request        TEXT    NOT NULL,
    priority       INTEGER NOT NULL,
    line           TEXT    NOT NULL,
    family         TEXT    NOT NULL,
    gpus           INTEGER NOT NULL,
    queue_timeout_us INTEGER NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    not_before_us  INTEGER NOT NULL,
    created_us     INTEGER NOT NULL,
    updated_us     INTEGER NOT NULL,
    queued_us      INTEGER NOT NULL,
    dispatched_us  INTEGER,
    started_us     INTEGER,
    finished_us    INTEGER,
    backend        TEXT,
    handle         TEXT,
    gpu_indices    TEXT,
    exit_code      INTEGER,
    reason         TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_dedup ON jobs(dedup_key)
    WHERE state IN ('queued', 'dispatched', 'running');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS transitions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    at_us      INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_id);
CREATE TABLE IF NOT EXISTS submissions (
    idempotency_key TEXT PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs(id)
);
CREATE TABLE IF NOT EXISTS events (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us INTEGER NOT NULL,
    line  TEXT    NOT NULL,
    kind  TEXT    NOT NULL,
    text  TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

const JOB_COLUMNS: &str = "id, state, dedup_key, request, attempt, not_before_us, created_us, \
     updated_us, queued_us, dispatched_us, started_us, finished_us, backend, handle, gpu_indices, \
     exit_code, reason";

/// The job database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let open = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Store { conn })
    }

    /// An in-memory database, for tests and benchmarks.
    pub fn in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Adds a job, unless the idempotency key was seen or an active job has the same
    /// de-duplication key.
    pub fn submit(&mut self, request: &JobRequest, now_us: i64) -> Result<Submitted> {
        request.check()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = &request.idempotency_key {
            let seen: Option<i64> = tx
                .query_row(
                    "SELECT job_id FROM submissions WHERE idempotency_key = ?1",
                    [key],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(id) = seen {
                let job = get_job(&tx, id)?;
                return Ok(Submitted::Repeated { job });
            }
        }
        let dedup_key = request.effective_dedup_key();
        let active: Option<i64> = tx
            .query_row(
                "SELECT id FROM jobs WHERE dedup_key = ?1
                 AND state IN ('queued', 'dispatched', 'running')",
                [&dedup_key],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(id) = active {
            remember_submission(&tx, request, id)?;
            let job = get_job(&tx, id)?;
            tx.commit()?;
            return Ok(Submitted::Merged { job });
        }
        let request_json =
            serde_json::to_string(request).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let reason = format!("submitted: {}", request.trigger);
        tx.execute(
            "INSERT INTO jobs (state, dedup_key, request, priority, line, family, gpus,
                               queue_timeout_us, not_before_us, created_us, updated_us,
                               queued_us, reason)
             VALUES ('queued', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?8, ?9)",
            params![
                dedup_key,
                request_json,
                request.priority,
                request.line,
                request.family,
                request.gpus,
                i64::try_from(request.queue_timeout.as_micros()).unwrap_or(i64::MAX),
                now_us,
                reason
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO transitions (job_id, at_us, from_state, to_state, reason)
             VALUES (?1, ?2, NULL, 'queued', ?3)",
            params![id, now_us, reason],
        )?;
        remember_submission(&tx, request, id)?;
        let job = get_job(&tx, id)?;
        tx.commit()?;
        Ok(Submitted::Created { job })
    }

    /// Moves a job to `to`, recording why. Fails (changing nothing) if the state machine does
    /// not allow it from the job's current state.
    pub fn transition(
        &mut self,
        id: i64,
        to: State,
        reason: &str,
        changes: Changes,
        now_us: i64,
    ) -> Result<Job> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let job = get_job(&tx, id)?;
        if !job.state.can_become(to) {
            return Err(StoreError::BadTransition {
                id,
                from: job.state,
                to,
            });
        }
        let gpu_text = changes.gpu_text()?;
        let requeue = to == State::Queued;
        tx.execute(
            "UPDATE jobs SET
                state = ?2, updated_us = ?3, reason = ?4,
                backend = CASE WHEN ?5 THEN NULL ELSE COALESCE(?6, backend) END,
                handle = CASE WHEN ?5 THEN NULL ELSE COALESCE(?7, handle) END,
                gpu_indices = CASE WHEN ?5 THEN NULL ELSE COALESCE(?8, gpu_indices) END,
                exit_code = COALESCE(?9, exit_code),
                not_before_us = COALESCE(?10, not_before_us),
                queued_us = CASE WHEN ?5 THEN ?3 ELSE queued_us END,
                attempt = CASE WHEN ?2 = 'dispatched' THEN attempt + 1 ELSE attempt END,
                dispatched_us = CASE WHEN ?2 = 'dispatched' THEN ?3 ELSE dispatched_us END,
                started_us = CASE WHEN ?2 = 'running' THEN ?3 ELSE started_us END,
                finished_us = CASE WHEN ?2 IN ('succeeded', 'failed', 'timed_out', 'cancelled')
                                   THEN ?3 ELSE finished_us END
             WHERE id = ?1",
            params![
                id,
                to.as_str(),
                now_us,
                reason,
                requeue,
                changes.backend,
                changes.handle,
                gpu_text,
                changes.exit_code,
                changes.not_before_us,
            ],
        )?;
        tx.execute(
            "INSERT INTO transitions (job_id, at_us, from_state, to_state, reason)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, now_us, job.state.as_str(), to.as_str(), reason],
        )?;
        let job = get_job(&tx, id)?;
        tx.commit()?;
        Ok(job)
    }

    /// Records what the backend said without a state change (its handle, or the GPUs it chose).
    pub fn record(&mut self, id: i64, changes: Changes, now_us: i64) -> Result<Job> {
        let gpu_text = changes.gpu_text()?;
        let updated = self.conn.execute(
            "UPDATE jobs SET updated_us = ?2,
                backend = COALESCE(?3, backend), handle = COALESCE(?4, handle),
                gpu_indices = COALESCE(?5, gpu_indices)
             WHERE id = ?1",
            params![id, now_us, changes.backend, changes.handle, gpu_text],
        )?;
        if updated == 0 {
            return Err(StoreError::NoSuchJob(id));
        }
        get_job(&self.conn, id)
    }

    pub fn job(&self, id: i64) -> Result<Job> {
        get_job(&self.conn, id)
    }

    /// Jobs in any of `states` (all when empty), oldest first, at most `limit`.
    pub fn jobs(&self, states: &[State], line: Option<&str>, limit: usize) -> Result<Vec<Job>> {
        let states: Vec<&str> = if states.is_empty() {
            State::ALL.iter().map(|s| s.as_str()).collect()
        } else {
            states.iter().map(|s| s.as_str()).collect()
        };
        let placeholders = vec!["?"; states.len()].join(", ");
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ({placeholders})
             AND (? IS NULL OR line = ?) ORDER BY id LIMIT ?"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut values: Vec<rusqlite::types::Value> = states
            .iter()
            .map(|s| rusqlite::types::Value::Text((*s).to_owned()))
            .collect();
        let line_value = line.map_or(rusqlite::types::Value::Null, |l| {
            rusqlite::types::Value::Text(l.to_owned())
        });
        values.push(line_value.clone());
        values.push(line_value);
        values.push(rusqlite::types::Value::Integer(
            i64::try_from(limit).unwrap_or(i64::MAX),
        ));
        let rows = stmt.query_map(rusqlite::params_from_iter(values), read_job)?;
        rows.map(|row| row?).collect()
    }

    /// The recorded transitions of a job, in order.
    pub fn transitions(&self, id: i64) -> Result<Vec<Transition>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT job_id, at_us, from_state, to_state, reason FROM transitions
             WHERE job_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id], |row| {
            let from: Option<String> = row.get(2)?;
            let to: String = row.get(3)?;
            Ok((row.get(0)?, row.get(1)?, from, to, row.get(4)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (job_id, at_us, from, to, reason): (i64, i64, Option<String>, String, String) =
                row?;
            let parse = |s: &str| {
                s.parse::<State>().map_err(|detail| StoreError::Corrupt {
                    id: job_id,
                    what: "transition state",
                    detail,
                })
            };
            out.push(Transition {
                job_id,
                at_us,
                from: from.as_deref().map(parse).transpose()?,
                to: parse(&to)?,
                reason,
            });
        }
        Ok(out)
    }

    /// Jobs per state.
    pub fn counts(&self) -> Result<Vec<(State, u64)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut counts: Vec<(State, u64)> = State::ALL.iter().map(|s| (*s, 0)).collect();
        for row in rows {
            let (state, n) = row?;
            if let Ok(state) = state.parse::<State>()
                && let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state)
            {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts)
    }

    /// GPU-seconds each line's jobs used since `since_us` (finished and in flight), the
    /// measure fair share balances.
    pub fn usage_since(&self, since_us: i64, now_us: i64) -> Result<Vec<(String, f64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT line, SUM(MAX(COALESCE(finished_us, ?2) - MAX(COALESCE(started_us, dispatched_us), ?1), 0)
                              * MAX(gpus, 1))
             FROM jobs WHERE COALESCE(started_us, dispatched_us) IS NOT NULL
             AND COALESCE(finished_us, ?2) >= ?1 GROUP BY line",
        )?;
        let rows = stmt.query_map(params![since_us, now_us], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as f64 / 1e6))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What the scheduler needs of every queued job, without decoding whole requests:
    /// (id, line, family, priority, gpus, queued_us, not_before_us, queue_timeout_us).
    pub fn queued(&self) -> Result<Vec<QueuedJob>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, line, family, priority, gpus, queued_us, not_before_us, queue_timeout_us
             FROM jobs WHERE state = 'queued' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(QueuedJob {
                id: row.get(0)?,
                line: row.get(1)?,
                family: row.get(2)?,
                priority: row.get(3)?,
                gpus: row.get(4)?,
                queued_us: row.get(5)?,
                not_before_us: row.get(6)?,
                queue_timeout_us: row.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Pending cancellation requests: (job id, reason), recorded under `prefix<id>`.
    pub fn kv_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT key, value FROM kv WHERE substr(key, 1, length(?1)) = ?1 AND value != ''",
        )?;
        let rows = stmt.query_map([prefix], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Appends to the timeline.
    pub fn log_event(&mut self, at_us: i64, line: &str, kind: &str, text: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO events (at_us, line, kind, text) VALUES (?1, ?2, ?3, ?4)",
            params![at_us, line, kind, text],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Timeline entries after id `after`, oldest first.
    pub fn events(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, at_us, line, kind, text FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
            |row| {
                Ok(Event {
                    id: row.get(0)?,
                    at_us: row.get(1)?,
                    line: row.get(2)?,
                    kind: row.get(3)?,
                    text: row.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A small persistent key-value slot (trigger state, the last schedule run).
    pub fn get_kv(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub fn set_kv(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

/// Records that `request`'s idempotency key (if any) names job `id`.
fn remember_submission(conn: &Connection, request: &JobRequest, id: i64) -> Result<()> {
    if let Some(key) = &request.idempotency_key {
        conn.execute(
            "INSERT INTO submissions (idempotency_key, job_id) VALUES (?1, ?2)",
            params![key, id],
        )?;
    }
    Ok(())
}

fn get_job(conn: &Connection, id: i64) -> Result<Job> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    conn.query_row(&sql, [id], read_job)
        .optional()?
        .ok_or(StoreError::NoSuchJob(id))?
}

fn read_job(row: &Row<'_>) -> rusqlite::Result<Result<Job>> {
    let id: i64 = row.get(0)?;
    let state: String = row.get(1)?;
    let request: String = row.get(3)?;
    let gpu_text: Option<String> = row.get(14)?;
    let corrupt = |what: &'static str, detail: String| StoreError::Corrupt { id, what, detail };
    let parsed = (|| {
        let state = state.parse::<State>().map_err(|d| corrupt("state", d))?;
        let request: JobRequest =
            serde_json::from_str(&request).map_err(|e| corrupt("request", e.to_string()))?;
        let gpu_indices = gpu_text
            .map(|text| serde_json::from_str::<Vec<u32>>(&text))
            .transpose()
            .map_err(|e| corrupt("gpu_indices", e.to_string()))?;
        Ok((state, request, gpu_indices))
    })();
    let (state, request, gpu_indices) = match parsed {
        Ok(parts) => parts,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Job {
        id,
        state,
        dedup_key: row.get(2)?,
        request,
        attempt: row.get(4)?,
        not_before_us: row.get(5)?,
        created_us: row.get(6)?,
        updated_us: row.get(7)?,
        queued_us: row.get(8)?,
        dispatched_us: row.get(9)?,
        started_us: row.get(10)?,
        finished_us: row.get(11)?,
        backend: row.get(12)?,
        handle: row.get(13)?,
        gpu_indices,
        exit_code: row.get(15)?,
        reason: row.get(16)?,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn request(line: &str) -> JobRequest {
        JobRequest {
            site: "plant-1".into(),
            line: line.into(),
            family: "anomaly-ae".into(),
            priority: 0,
            gpus: 1,
            dedup_key: None,
            idempotency_key: None,
            trigger: "manual: test".into(),
            trigger_kind: "manual".into(),
            data_from_us: 0,
            data_to_us: 60_000_000,
            max_attempts: 3,
            queue_timeout: Duration::from_secs(600),
            run_timeout: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_job_walks_the_state_machine_and_every_step_is_recorded() {
        let mut store = Store::in_memory().unwrap();
        let job = store.submit(&request("line-1"), 10).unwrap().job().clone();
        assert_eq!(job.state, State::Queued);
        assert_eq!(job.attempt, 0);
        let gpus = Changes {
            gpu_indices: Some(vec![2]),
            backend: Some("local".into()),
            ..Changes::default()
        };
        let job = store
            .transition(job.id, State::Dispatched, "pool: gpu 2", gpus, 20)
            .unwrap();
        assert_eq!((job.attempt, job.gpu_indices.clone()), (1, Some(vec![2])));
        let job = store
            .record(
                job.id,
                Changes {
                    handle: Some("h1".into()),
                    ..Changes::default()
                },
                21,
            )
            .unwrap();
        let job = store
            .transition(job.id, State::Running, "started", Changes::default(), 30)
            .unwrap();
        let job = store
            .transition(
                job.id,
                State::Succeeded,
                "exit 0",
                Changes {
                    exit_code: Some(0),
                    ..Changes::default()
                },
                40,
            )
            .unwrap();
        assert_eq!(job.started_us, Some(30));
        assert_eq!(job.finished_us, Some(40));
        assert_eq!(job.handle.as_deref(), Some("h1"));
        let steps: Vec<(Option<State>, State, String)> = store
            .transitions(job.id)
            .unwrap()
            .into_iter()
            .map(|t| (t.from, t.to, t.reason))
            .collect();
        assert_eq!(
            steps,
            vec![
                (None, State::Queued, "submitted: manual: test".into()),
                (Some(State::Queued), State::Dispatched, "pool: gpu 2".into()),
                (Some(State::Dispatched), State::Running, "started".into()),
                (Some(State::Running), State::Succeeded, "exit 0".into()),
            ]
        );
        let err = store
            .transition(job.id, State::Running, "again", Changes::default(), 50)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("job {} cannot go from succeeded to running", job.id)
        );
    }

    #[test]
    fn duplicates_merge_while_active_and_idempotent_submissions_repeat() {
        let mut store = Store::in_memory().unwrap();
        let first = store.submit(&request("line-1"), 1).unwrap();
        assert!(matches!(first, Submitted::Created { .. }));
        let second = store.submit(&request("line-1"), 2).unwrap();
        assert!(matches!(&second, Submitted::Merged { job } if job.id == first.job().id));
        let other_line = store.submit(&request("line-2"), 3).unwrap();
        assert!(matches!(other_line, Submitted::Created { .. }));

        let mut keyed = request("line-3");
        keyed.idempotency_key = Some("client-7".into());
        let a = store.submit(&keyed, 4).unwrap();
        store
            .transition(
                a.job().id,
                State::Cancelled,
                "operator",
                Changes::default(),
                5,
            )
            .unwrap();
        // The first job ended, but the same idempotency key still names it.
        let b = store.submit(&keyed, 6).unwrap();
        assert!(
            matches!(&b, Submitted::Repeated { job } if job.id == a.job().id && job.state == State::Cancelled)
        );
        // Without the key, the finished job no longer blocks a new one.
        keyed.idempotency_key = None;
        let c = store.submit(&keyed, 7).unwrap();
        assert!(matches!(&c, Submitted::Created { job } if job.id != a.job().id));
    }

    #[test]
    fn a_retry_requeues_with_back_off_and_clears_the_backend() {
        let mut store = Store::in_memory().unwrap();
        let id = store.submit(&request("line-1"), 0).unwrap().job().id;
        store
            .transition(
                id,
                State::Dispatched,
                "go",
                Changes {
                    handle: Some("h".into()),
                    gpu_indices: Some(vec![0]),
                    ..Changes::default()
                },
                1,
            )
            .unwrap();
        let job = store
            .transition(
                id,
                State::Queued,
                "retry",
                Changes {
                    not_before_us: Some(100),
                    exit_code: Some(75),
                    ..Changes::default()
                },
                2,
            )
            .unwrap();
        assert_eq!(job.state, State::Queued);
        assert_eq!(
            (
                job.handle,
                job.gpu_indices,
                job.not_before_us,
                job.queued_us
            ),
            (None, None, 100, 2)
        );
        let job = store
            .transition(id, State::Dispatched, "go again", Changes::default(), 3)
            .unwrap();
        assert_eq!(job.attempt, 2);
    }

    #[test]
    fn the_database_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dispatch.db");
        let id = {
            let mut store = Store::open(&path).unwrap();
            let id = store.submit(&request("line-1"), 0).unwrap().job().id;
            store
                .transition(id, State::Dispatched, "go", Changes::default(), 1)
                .unwrap();
            store.set_kv("k", "v").unwrap();
            id
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.job(id).unwrap().state, State::Dispatched);
        assert_eq!(store.jobs(&[State::Dispatched], None, 10).unwrap().len(), 1);
        assert_eq!(store.get_kv("k").unwrap().as_deref(), Some("v"));
        assert!(matches!(store.job(99), Err(StoreError::NoSuchJob(99))));
    }

    #[test]
    fn usage_counts_gpu_seconds_per_line_within_the_window() {
        let mut store = Store::in_memory().unwrap();
        let a = store.submit(&request("a"), 0).unwrap().job().id;
        let mut two = request("b");
        two.gpus = 2;
        let b = store.submit(&two, 0).unwrap().job().id;
        let c = store.submit(&request("c"), 0).unwrap().job().id;
        let s = 1_000_000;
        for (id, start) in [(a, 0), (b, 20 * s)] {
            store
                .transition(id, State::Dispatched, "go", Changes::default(), start)
                .unwrap();
            store
                .transition(id, State::Running, "run", Changes::default(), start)
                .unwrap();
        }
        store
            .transition(b, State::Succeeded, "done", Changes::default(), 25 * s)
            .unwrap();
        let usage: std::collections::HashMap<String, f64> = store
            .usage_since(5 * s, 30 * s)
            .unwrap()
            .into_iter()
            .collect();
        // a: running since 0, counted from the window's start at 5 s: 25 s × 1 GPU;
        // b: 5 s × 2 GPUs; c never ran.
        assert_eq!(usage.get("a"), Some(&25.0));
        assert_eq!(usage.get("b"), Some(&10.0));
        assert_eq!(usage.get("c"), None);
        let queued = store.queued().unwrap();
        assert_eq!(queued.iter().map(|q| q.id).collect::<Vec<_>>(), vec![c]);
        assert_eq!((queued[0].gpus, queued[0].queue_timeout_us), (1, 600 * s));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut store = Store::in_memory().unwrap();
        let mut bad = request("line-1");
        bad.data_to_us = -1;
        let err = store.submit(&bad, 0).unwrap_err().to_string();
        assert!(err.contains("ends (-1) before it starts (0)"), "{err}");
    }
}
