//! Dispatch's Prometheus metrics (prefix `loopline_dispatch`).

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::State;

type Labels = Vec<(&'static str, String)>;

/// The live metrics; `/metrics` encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Jobs per state (`state` label).
    pub jobs: Family<Labels, Gauge>,
    /// State changes made (`to` label).
    pub transitions: Family<Labels, Counter>,
    pub pool_gpus: Gauge,
    pub pool_gpus_in_use: Gauge,
    /// Trigger evaluations by outcome (`decision`: retrain, hold, alert).
    pub decisions: Family<Labels, Counter>,
    /// Submission to running, seconds.
    pub time_to_running: Histogram,
    /// Promotions, rejections and rollbacks (`outcome` label).
    pub models: Family<Labels, Counter>,
    /// 1 while the MQTT connection that carries releases is up.
    pub broker_connected: Gauge,
    /// Model reports received from the agents.
    pub model_reports: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("loopline_dispatch");
        let jobs = Family::<Labels, Gauge>::default();
        registry.register("jobs", "Jobs in each state", jobs.clone());
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "job_transitions",
            "Job state changes, by new state",
            transitions.clone(),
        );
        let pool_gpus = Gauge::default();
        registry.register("pool_gpus", "GPUs in the pool", pool_gpus.clone());
        let pool_gpus_in_use = Gauge::default();
        registry.register(
            "pool_gpus_in_use",
            "GPUs held by jobs in flight",
            pool_gpus_in_use.clone(),
        );
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "trigger_decisions",
            "Trigger evaluations, by decision",
            decisions.clone(),
        );
        let time_to_running = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "time_to_running_seconds",
            "From a job's submission to its start on the pool",
            time_to_running.clone(),
        );
        let models = Family::<Labels, Counter>::default();
        registry.register("models", "Candidate models, by outcome", models.clone());
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the MQTT connection that carries releases is up",
            broker_connected.clone(),
        );
        let model_reports = Counter::default();
        registry.register(
            "model_reports",
            "Model reports received from the agents",
            model_reports.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            jobs,
            transitions,
            pool_gpus,
            pool_gpus_in_use,
            decisions,
            time_to_running,
            models,
            broker_connected,
            model_reports,
        }
    }

    pub fn set_jobs(&self, counts: &[(State, u64)]) {
        for (state, n) in counts {
            self.jobs
                .get_or_create(&vec![("state", state.as_str().to_owned())])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub fn count(family: &Family<Labels, Counter>, label: &'static str, value: &str) {
        family.get_or_create(&vec![(label, value.to_owned())]).inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}
