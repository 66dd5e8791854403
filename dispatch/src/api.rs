//! The HTTP API (`/api/v1/…`, JSON), `/metrics` and `/healthz`.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /api/v1/jobs?state=queued,running&line=L&limit=N` | jobs, oldest first |
//! | `POST /api/v1/jobs` | a manual training job: `{"line", "reason", "priority"?, "gpus"?, "idempotency_key"?, "from_us"?, "to_us"?}` |
//! | `GET /api/v1/jobs/{id}` | one job with every transition and its reason |
//! | `POST /api/v1/jobs/{id}/cancel` | cancel a queued or running job |
//! | `GET /api/v1/queue` | queued jobs in the order the scheduler takes them |
//! | `GET /api/v1/pool` | the GPU pool: capacity, who holds which GPU, each line's recent use |
//! | `GET /api/v1/models` | each line's champion and versions |
//! | `GET /api/v1/rollouts` | rollouts and their phases |
//! | `GET /api/v1/timeline?after=ID` | what dispatch noticed and did |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::scheduler::{Candidate, micros, order};
use crate::service::{Shared, now_us};
use crate::store::{State, StoreError};

type App = Arc<Shared>;

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/pool", get(pool))
        .route("/api/v1/models", get(models))
        .route("/api/v1/rollouts", get(rollouts))
        .route("/api/v1/timeline", get(timeline))
        .with_state(shared)
}

/// An error answer: status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        let status = match &e {
            crate::Error::Store(StoreError::NoSuchJob(_)) => StatusCode::NOT_FOUND,
            crate::Error::Store(StoreError::Invalid(_)) | crate::Error::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        crate::Error::from(e).into()
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn health(AxumState(app): AxumState<App>) -> Response {
    match app.with_db(|db| db.counts()) {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("job database: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(AxumState(app): AxumState<App>) -> Response {
    if let Ok(counts) = app.with_db(|db| db.counts()) {
        app.metrics.set_jobs(&counts);
    }
    (
        [(
            header::CONTENT_TYPE,
            loopline_common::http::OPENMETRICS_TEXT,
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
    line: Option<String>,
    limit: Option<usize>,
}

async fn jobs(
    AxumState(app): AxumState<App>,
    Query(query): Query<JobsQuery>,
) -> ApiResult<Response> {
    let states = match &query.state {
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<State>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?,
        None => Vec::new(),
    };
    let jobs =
        app.with_db(|db| db.jobs(&states, query.line.as_deref(), query.limit.unwrap_or(1000)))?;
    Ok(Json(jobs).into_response())
}

/// A manual training request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualRequest {
    pub line: String,
    pub reason: String,
    pub priority: Option<i64>,
    pub gpus: Option<u32>,
    pub idempotency_key: Option<String>,
    /// Data range; by default the last `manual_window` up to now.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

/// Data a manual job trains on when the request names no range.
pub const MANUAL_WINDOW: Duration = Duration::from_secs(600);

async fn submit(
    AxumState(app): AxumState<App>,
    Json(body): Json<ManualRequest>,
) -> ApiResult<Response> {
    let now = now_us();
    let to = body.to_us.unwrap_or(now);
    let from = body.from_us.unwrap_or(to - micros(MANUAL_WINDOW));
    let mut request = app.request(
        &body.line,
        "manual",
        format!("manual: {}", body.reason),
        from,
        to,
    );
    if let Some(priority) = body.priority {
        request.priority = priority;
    }
    if let Some(gpus) = body.gpus {
        request.gpus = gpus;
    }
    request.idempotency_key = body.idempotency_key;
    let submitted = app.submit(&request)?;
    Ok((StatusCode::ACCEPTED, Json(submitted)).into_response())
}

async fn job(AxumState(app): AxumState<App>, Path(id): Path<i64>) -> ApiResult<Response> {
    let (job, transitions) =
        app.with_db(|db| -> Result<_, StoreError> { Ok((db.job(id)?, db.transitions(id)?)) })?;
    Ok(Json(json!({ "job": job, "transitions": transitions })).into_response())
}

async fn cancel(AxumState(app): AxumState<App>, Path(id): Path<i64>) -> ApiResult<Response> {
    app.cancel(id, "cancelled through the API")?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "job": id, "cancel": "requested" })),
    )
        .into_response())
}

async fn queue(AxumState(app): AxumState<App>) -> ApiResult<Response> {
    let now = now_us();
    let window = micros(app.config.fair_share_window);
    let (mut queued, usage) = app.with_db(|db| -> Result<_, StoreError> {
        let queued = db.jobs(&[State::Queued], None, usize::MAX)?;
        let usage: HashMap<String, f64> = db.usage_since(now - window, now)?.into_iter().collect();
        Ok((queued, usage))
    })?;
    // The scheduler's own order.
    queued.sort_by(|a, b| order(&Candidate::of(a), &Candidate::of(b), &usage));
    Ok(Json(queued).into_response())
}

async fn pool(AxumState(app): AxumState<App>) -> ApiResult<Response> {
    let now = now_us();
    let window = micros(app.config.fair_share_window);
    let (in_flight, usage) = app.with_db(|db| -> Result<_, StoreError> {
        Ok((
            db.jobs(&[State::Dispatched, State::Running], None, usize::MAX)?,
            db.usage_since(now - window, now)?,
        ))
    })?;
    let held: Vec<_> = in_flight
        .iter()
        .map(|job| {
            json!({
                "job": job.name(),
                "line": job.request.line,
                "state": job.state,
                "gpus_asked": job.request.gpus,
                "gpus": job.gpu_indices,
            })
        })
        .collect();
    let in_use: u32 = in_flight.iter().map(|job| job.request.gpus).sum();
    Ok(Json(json!({
        "backend": app.backend_name(),
        "capacity": app.config.gpus,
        "in_use": in_use,
        "free": app.config.gpus.saturating_sub(in_use),
        "jobs": held,
        "gpu_seconds_by_line": usage.into_iter().collect::<HashMap<_, _>>(),
    }))
    .into_response())
}

async fn models(AxumState(app): AxumState<App>) -> ApiResult<Response> {
    Ok(Json(crate::service::models_view(&app)?).into_response())
}

async fn rollouts(AxumState(app): AxumState<App>) -> ApiResult<Response> {
    Ok(Json(crate::service::rollouts_view(&app)?).into_response())
}

#[derive(Debug, Deserialize)]
struct TimelineQuery {
    after: Option<i64>,
    limit: Option<usize>,
}

async fn timeline(
    AxumState(app): AxumState<App>,
    Query(query): Query<TimelineQuery>,
) -> ApiResult<Response> {
    let events =
        app.with_db(|db| db.events(query.after.unwrap_or(0), query.limit.unwrap_or(10_000)))?;
    Ok(Json(events).into_response())
}
