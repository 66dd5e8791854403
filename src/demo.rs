//! `loopline demo`: a whole factory in one process.
//!
//! ```text
//!  agents (lines × devices) ──MQTT──► broker (embedded rumqttd, or --broker) ──► ingest ──► lake
//! ```
//!
//! Each device runs the physical line simulator (the `--scenario`), scores every window with
//! the int8 model on its simulated NPU, and spools every batch on disk until the broker
//! acknowledges it (the agents' state lives in `<lake>/_loopline/agents`, which no lake
//! reader looks at). Ingest writes the samples, the inference results, the device health and
//! the simulator's ground-truth labels as four tables.
//!
//! The order of events is what makes the numbers true: ingest subscribes before any agent
//! publishes; at the end the agents stop sealing and wait for every PUBACK, ingest drains
//! what the broker delivered and commits it, and only then is the lake read back, file by
//! file, to count what it holds. The summary prints counts read from the Parquet files, not
//! counters; the model's precision and recall are computed from the lake's `inference` and
//! `sim_labels` tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loopline_agent::{AgentConfig, AgentReport, AgentStats};
use loopline_common::{BrokerUrl, CancellationToken};
use loopline_ingest::writer::{COMMITS_DIR, CommitRecord, TABLES, read_commit_log, read_commits};
use loopline_ingest::{IngestConfig, IngestStats};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

/// Name of the demo's ingester (its files are `part-demo-<n>.parquet`).
const INGEST_ID: &str = "demo";
/// Site name of the simulated factory.
pub const SITE: &str = "plant-1";
/// The agents' spools and accepted models, inside the lake's private folder.
const AGENT_STATE_DIR: &str = "_loopline/agents";
/// Labels that do not make a window faulty.
const NOT_FAULTS: [&str; 2] = ["normal", "recipe_change"];

/// Runs a simulated factory: lines of devices publishing telemetry to a broker, ingest
/// writing the Parquet lake, a live progress line, and a verified summary at the end.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this broker instead of starting the embedded one (mqtt://host:port).
    #[arg(long)]
    pub broker: Option<BrokerUrl>,
    /// Production lines to simulate.
    #[arg(long, default_value = "2")]
    pub lines: NonZeroU32,
    /// Devices (edge agents) on each line.
    #[arg(long, default_value = "3")]
    pub devices_per_line: NonZeroU32,
    /// How long the line runs before the demo stops, flushes and verifies (Ctrl-C stops
    /// it early the same way). The default leaves time for the whole loop: a process change
    /// at 30 s, 50 s of its data, the retraining, the canary's probation, the rollout, and a
    /// minute of the new model.
    #[arg(long, default_value = "3m", value_parser = loopline_common::duration::parse)]
    pub duration: Duration,
    /// Folder of the Parquet lake. A previous demo lake there is replaced unless
    /// --keep-lake is given; any other non-empty folder is refused.
    #[arg(long, default_value = "loopline-lake")]
    pub lake: PathBuf,
    /// Append to the lake instead of replacing a previous demo's data.
    #[arg(long)]
    pub keep_lake: bool,
    /// Samples per second of each of a device's eight channels.
    #[arg(long, default_value = "1000")]
    pub sample_rate_hz: NonZeroU32,
    /// How often each device seals and publishes a batch.
    #[arg(long, default_value = "1s", value_parser = loopline_common::duration::parse)]
    pub batch_interval: Duration,
    /// Longest ingest buffers rows before committing a file.
    #[arg(long, default_value = "5s", value_parser = loopline_common::duration::parse)]
    pub roll_age: Duration,
    /// Seed of the line and NPU simulators and of the bootstrap model.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Line scenarios, comma-separated, given to the lines in turn: built-in names
    /// (demo-recipe, demo-bearing, default, normal, bearing-wear, sensor-faults,
    /// recipe-change) or scenario TOML files. The default: line 1 changes recipe at 30 s to a
    /// product its model never saw, line 2 develops a bearing fault from 30 s.
    #[arg(long, default_value = "demo-recipe,demo-bearing")]
    pub scenario: String,
    /// The simulated NPU of every device: hailo-8l, hailo-8, rk3588, dx-m1.
    #[arg(long, default_value = "hailo-8l")]
    pub npu_profile: loopline_npusim::Profile,
    /// Inference window length.
    #[arg(long, default_value = "1s", value_parser = loopline_common::duration::parse)]
    pub window: Duration,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// GPUs in the demo's training pool (local child processes, each given its GPU through
    /// CUDA_VISIBLE_DEVICES).
    #[arg(long, default_value = "4")]
    pub gpus: u32,
    /// Where to write the HTML report (plots of scores, F1, the GPU pool and model versions).
    #[arg(long, default_value = "loopline-report.html")]
    pub report: PathBuf,
}

/// One device's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub site: String,
    pub line: String,
    pub device: String,
    pub boot_id: String,
    /// Batches the broker acknowledged.
    pub batches: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Samples the broker acknowledged.
    pub samples: u64,
    /// Rows of this device read back from the lake's files.
    pub rows_in_lake: u64,
    /// Distinct batches (seq) of this device found in the lake.
    pub batches_in_lake: u64,
    /// Whether the lake holds exactly the acknowledged batches, seq contiguous, no
    /// duplicate and no missing row.
    pub complete: bool,
    /// Windows the device's model scored, and how many it flagged, as the agent counted.
    pub windows_scored: u64,
    pub anomalies: u64,
}

/// The model judged against the simulator's ground truth, from the lake's `inference` and
/// `sim_labels` tables: a window is truly faulty when a fault label (machine or sensor; not
/// `normal`, not `recipe_change`) overlaps it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelEvaluation {
    pub windows: u64,
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub true_negatives: u64,
    /// Of the flagged windows, the share that were faulty (None when none was flagged).
    pub precision: Option<f64>,
    /// Of the faulty windows, the share that were flagged (None when none was faulty).
    pub recall: Option<f64>,
    /// Model versions that scored the windows.
    pub model_versions: Vec<String>,
}

/// What the demo did, as printed and as written by `--summary-json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub lake: PathBuf,
    pub broker: String,
    pub duration_s: f64,
    pub lines: u32,
    pub devices_per_line: u32,
    pub sample_rate_hz: u32,
    pub samples_published: u64,
    pub messages_received: u64,
    pub messages_rejected: u64,
    /// Rows committed by ingest, as its commit log records them.
    pub rows_committed: u64,
    /// Rows counted by reading every committed file back.
    pub rows_verified: u64,
    pub files_committed: u64,
    pub bytes_committed: u64,
    pub samples_per_second: f64,
    pub devices: Vec<DeviceSummary>,
    /// Rows per table, read back from the files committed during this run.
    pub table_rows: BTreeMap<String, u64>,
    pub scenario: String,
    pub npu_profile: String,
    pub model: ModelEvaluation,
    pub verified: bool,
    /// Dispatch's loop: timeline, jobs, and F1 per line before the change, after it and after
    /// the rollout.
    pub closed_loop: Option<crate::closed_loop::LoopSummary>,
}

/// Runs the demo until `duration` passes or `shutdown` is cancelled.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<DemoSummary> {
    if args.duration.is_zero() {
        bail!("--duration must be longer than 0s");
    }
    // Every setting is checked before the lake is touched or anything starts: a bad
    // --batch-interval must not surface only after the whole --duration.
    let mut ingest_config = IngestConfig {
        lake: args.lake.clone(),
        ingest_id: INGEST_ID.to_owned(),
        roll_age: args.roll_age,
        ..IngestConfig::default()
    };
    ingest_config.validate().context("invalid demo settings")?;
    let agent_state = args.lake.join(AGENT_STATE_DIR);
    let scenarios = crate::closed_loop::line_scenarios(&args.scenario, args.lines.get());
    let line_names: Vec<String> = (1..=args.lines.get())
        .map(|l| format!("line-{l}"))
        .collect();
    let mut agent_configs: Vec<AgentConfig> = (1..=args.lines.get())
        .map(|line| AgentConfig {
            state_dir: agent_state.clone(),
            scenario: scenarios[line as usize - 1].clone(),
            npu_profile: args.npu_profile,
            window: args.window,
            site: SITE.to_owned(),
            line: format!("line-{line}"),
            devices: (1..=args.devices_per_line.get())
                .map(|d| format!("dev-{d}"))
                .collect(),
            sample_rate_hz: args.sample_rate_hz,
            batch_interval: args.batch_interval,
            seed: args.seed,
            ..AgentConfig::default()
        })
        .collect();
    for config in &agent_configs {
        config.validate().context("invalid demo settings")?;
    }
    if args.gpus == 0 {
        bail!("--gpus must be at least 1: the training pool needs a GPU");
    }
    prepare_lake(&args.lake, args.keep_lake)?;
    // Agents speak MQTT 3.1.1 and ingest MQTT 5: one port on a real broker, two on rumqttd.
    let (broker, ingest_broker) = match &args.broker {
        Some(url) => (url.clone(), url.clone()),
        None => {
            let listeners = loopline_common::embedded_broker::start_on_free_ports()?;
            (listeners.v4, listeners.v5)
        }
    };
    let commits_before = commit_records(&args.lake)?.len();
    let all_commits_before =
        read_commits(&args.lake.join(COMMITS_DIR).join(format!("{INGEST_ID}.log")))?.len();
    let mut out = std::io::stderr();
    let _ = writeln!(
        out,
        "loopline demo: {} line(s) × {} device(s), 8 channels at {} Hz each, scenario {:?}, int8 model on a simulated {}, for {}; broker {}{}; lake {}",
        args.lines,
        args.devices_per_line,
        args.sample_rate_hz,
        args.scenario,
        args.npu_profile,
        loopline_common::duration::format(args.duration),
        broker,
        if args.broker.is_some() {
            ""
        } else {
            " (embedded)"
        },
        args.lake.display()
    );

    // Ingest first, and wait for its subscription: a message published before it would have
    // no subscriber and be dropped by the broker.
    let ingest_stats = Arc::new(IngestStats::default());
    let ingest_token = CancellationToken::new();
    ingest_config.broker = ingest_broker;
    let ingest = tokio::spawn(loopline_ingest::run(
        ingest_config,
        ingest_token.clone(),
        ingest_stats.clone(),
    ));
    let subscribe_deadline = Instant::now() + Duration::from_secs(15);
    while !ingest_stats.is_subscribed() {
        if ingest.is_finished() || Instant::now() > subscribe_deadline {
            ingest_token.cancel();
            let outcome = ingest.await;
            bail!(
                "ingest did not subscribe to {broker} within 15s ({})",
                match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no error reported".to_owned(),
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Dispatch: its key signs every release, so the devices must trust it from the start;
    // the model they start with is each line's first champion.
    let dispatch_config = crate::closed_loop::dispatch_config(
        &args.lake,
        &broker,
        &line_names,
        args.gpus,
        args.seed,
    )?;
    let release_key =
        loopline_dispatch::signing::ReleaseKey::load_or_generate(&dispatch_config.state_dir())?;
    let window_samples =
        u64::from(args.sample_rate_hz.get()) * args.window.as_micros() as u64 / 1_000_000;
    let bootstrap = loopline_agent::bootstrap::model(loopline_agent::bootstrap::BootstrapKey {
        seed: args.seed,
        sample_rate_hz: args.sample_rate_hz,
        window_samples,
    })
    .map_err(|e| anyhow::anyhow!("the devices' bootstrap model: {e}"))?;
    crate::closed_loop::register_bootstrap(
        &args.lake,
        &release_key,
        &line_names,
        &bootstrap,
        loopline_dispatch::service::now_us(),
    )?;
    for config in &mut agent_configs {
        config.model_public_key = Some(release_key.public_key_hex());
    }
    let dispatch_token = CancellationToken::new();
    let dispatch = loopline_dispatch::service::start(dispatch_config, dispatch_token.clone())
        .await
        .context("starting dispatch")?;

    let started = Instant::now();
    let t0_us = loopline_dispatch::service::now_us();
    let agent_stats = Arc::new(AgentStats::new());
    let agent_token = CancellationToken::new();
    let mut agents = Vec::new();
    for mut config in agent_configs {
        config.broker = broker.clone();
        agents.push(tokio::spawn(loopline_agent::run(
            config,
            None,
            agent_token.clone(),
            agent_stats.clone(),
        )));
    }

    let progress = Progress::new(
        agent_stats.clone(),
        ingest_stats.clone(),
        args.duration,
        Some(dispatch.shared.clone()),
        t0_us,
    );
    let ticker = tokio::spawn(progress.clone().run(agent_token.clone()));
    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        () = shutdown.cancelled() => {}
    }
    agent_token.cancel();
    let mut reports = Vec::new();
    for agent in agents {
        reports.push(agent.await.context("agent task panicked")??);
    }
    let _ = ticker.await;
    let acked = agent_stats.snapshot().samples_acked;

    // Everything acknowledged by the broker is on its way to ingest: wait until it arrived.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while ingest_stats.snapshot().samples_accepted < acked && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ingest_token.cancel();
    let ingest_report = ingest.await.context("ingest task panicked")??;
    let elapsed = started.elapsed();
    let end_us = loopline_dispatch::service::now_us();
    progress.finish();
    dispatch_token.cancel();
    let (dispatch_shared, events, jobs) = crate::closed_loop::finish(dispatch).await?;

    let records: Vec<CommitRecord> = commit_records(&args.lake)?
        .into_iter()
        .skip(commits_before)
        .collect();
    let lake_counts = read_back(&args.lake, &records)?;
    let commits_path = args.lake.join(COMMITS_DIR).join(format!("{INGEST_ID}.log"));
    let all_records: Vec<CommitRecord> = read_commits(&commits_path)?
        .into_iter()
        .skip(all_commits_before)
        .collect();
    let evaluation = evaluate(&args.lake, &all_records)?;
    let mut summary = summarise(
        &args,
        &broker,
        elapsed,
        &reports,
        &ingest_report.stats,
        &records,
        &lake_counts,
    );
    summary.table_rows = evaluation.table_rows;
    summary.model = evaluation.model;
    let scenario_of: BTreeMap<String, String> = line_names.iter().cloned().zip(scenarios).collect();
    let facts = vec![
        (
            "lines × devices".to_owned(),
            format!("{} × {}", args.lines, args.devices_per_line),
        ),
        (
            "samples in the lake".to_owned(),
            human(summary.rows_verified),
        ),
        ("windows scored".to_owned(), human(summary.model.windows)),
        (
            "verified".to_owned(),
            if summary.verified {
                "every acknowledged sample, exactly once".to_owned()
            } else {
                "NO".to_owned()
            },
        ),
        (
            "GPU pool".to_owned(),
            format!("{} GPUs, local backend", args.gpus),
        ),
        ("NPU".to_owned(), args.npu_profile.to_string()),
    ];
    let (mut closed, report) = crate::closed_loop::evaluate(
        &evaluation.windows,
        &scenario_of,
        &dispatch_shared,
        &events,
        &jobs,
        t0_us,
        end_us,
        facts,
    )?;
    crate::report::write(&report, &args.report)
        .with_context(|| format!("writing the report {}", args.report.display()))?;
    closed.report = Some(args.report.clone());
    summary.closed_loop = Some(closed);
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}

/// Makes `lake` ready: creates it, or clears a previous demo's data from it.
fn prepare_lake(lake: &Path, keep: bool) -> anyhow::Result<()> {
    let marker = lake.join(COMMITS_DIR);
    if lake.exists() {
        let empty = std::fs::read_dir(lake)
            .with_context(|| format!("reading {}", lake.display()))?
            .next()
            .is_none();
        if !empty && !marker.exists() {
            bail!(
                "{} is not empty and not a Loopline lake; choose another --lake",
                lake.display()
            );
        }
        if !empty && !keep {
            for sub in TABLES
                .iter()
                .copied()
                .chain(["_loopline", "_models", "annotations"])
            {
                let path = lake.join(sub);
                if path.exists() {
                    std::fs::remove_dir_all(&path).with_context(|| {
                        format!("clearing the previous demo's {}", path.display())
                    })?;
                }
            }
            eprintln!(
                "loopline demo: replaced the previous demo's data in {} (--keep-lake appends)",
                lake.display()
            );
        }
    }
    std::fs::create_dir_all(lake).with_context(|| format!("creating {}", lake.display()))?;
    Ok(())
}

fn commit_records(lake: &Path) -> anyhow::Result<Vec<CommitRecord>> {
    let path = lake.join(COMMITS_DIR).join(format!("{INGEST_ID}.log"));
    Ok(read_commit_log(&path)?)
}

/// What the files of one (line, device, boot) hold.
#[derive(Debug, Default)]
struct LakeCounts {
    rows: u64,
    rows_per_seq: BTreeMap<i64, u64>,
}

/// Reads the device, boot_id and seq columns of every committed file back.
fn read_back(
    lake: &Path,
    records: &[CommitRecord],
) -> anyhow::Result<HashMap<(String, String, String), LakeCounts>> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;

    let mut counts: HashMap<(String, String, String), LakeCounts> = HashMap::new();
    for record in records {
        let path = lake.join(&record.path);
        let line = record
            .path
            .split('/')
            .find_map(|level| level.strip_prefix("line="))
            .with_context(|| format!("{} has no line= partition", record.path))?
            .to_owned();
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading {}", path.display()))?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["device", "boot_id", "seq"]);
        let reader = builder.with_projection(mask).build()?;
        let mut file_rows = 0;
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("{} has no column {name}", path.display()))
            };
            let device = column("device")?.as_string::<i32>();
            let boot = column("boot_id")?.as_string::<i32>();
            let seq = column("seq")?.as_primitive::<Int64Type>();
            // Rows are sorted by device, so runs of one (device, boot) are long: count a run
            // under one key instead of hashing every row.
            let mut i = 0;
            while i < batch.num_rows() {
                let (dev, boot_id) = (device.value(i), boot.value(i));
                let key = (line.clone(), dev.to_owned(), boot_id.to_owned());
                let entry = counts.entry(key).or_default();
                while i < batch.num_rows() && device.value(i) == dev && boot.value(i) == boot_id {
                    entry.rows += 1;
                    *entry.rows_per_seq.entry(seq.value(i)).or_default() += 1;
                    i += 1;
                }
            }
            file_rows += batch.num_rows() as u64;
        }
        if file_rows != record.rows {
            bail!(
                "{} holds {file_rows} rows but its commit says {}",
                record.path,
                record.rows
            );
        }
    }
    Ok(counts)
}

#[allow(clippy::too_many_arguments)]
fn summarise(
    args: &DemoArgs,
    broker: &BrokerUrl,
    elapsed: Duration,
    reports: &[AgentReport],
    ingest: &loopline_ingest::StatsSnapshot,
    records: &[CommitRecord],
    lake: &HashMap<(String, String, String), LakeCounts>,
) -> DemoSummary {
    let mut devices = Vec::new();
    for report in reports {
        for d in &report.devices {
            let counts = lake.get(&(d.line.clone(), d.device.clone(), d.boot_id.clone()));
            let (rows, seqs) = counts
                .map(|c| {
                    (
                        c.rows,
                        c.rows_per_seq.keys().copied().collect::<BTreeSet<_>>(),
                    )
                })
                .unwrap_or_default();
            let expected: BTreeSet<i64> = match (d.first_seq, d.last_seq) {
                (Some(first), Some(last)) => (first as i64..=last as i64).collect(),
                _ => BTreeSet::new(),
            };
            let foreign = lake.keys().any(|(line, device, boot)| {
                *line == d.line && *device == d.device && *boot != d.boot_id
            });
            devices.push(DeviceSummary {
                site: d.site.clone(),
                line: d.line.clone(),
                device: d.device.clone(),
                boot_id: d.boot_id.clone(),
                batches: d.batches_acked,
                first_seq: d.first_seq,
                last_seq: d.last_seq,
                samples: d.samples_acked,
                rows_in_lake: rows,
                batches_in_lake: seqs.len() as u64,
                complete: rows == d.samples_acked
                    && seqs == expected
                    && expected.len() as u64 == d.batches_acked
                    && d.pending_batches == 0
                    && d.lost_batches == 0
                    && (!foreign || args.keep_lake),
                windows_scored: d.windows_scored,
                anomalies: d.anomalies,
            });
        }
    }
    devices.sort_by(|a, b| (&a.line, &a.device).cmp(&(&b.line, &b.device)));
    let rows_committed: u64 = records.iter().map(|r| r.rows).sum();
    let rows_verified: u64 = lake.values().map(|c| c.rows).sum();
    let samples_published: u64 = devices.iter().map(|d| d.samples).sum();
    let verified = devices.iter().all(|d| d.complete)
        && rows_committed == rows_verified
        && (args.keep_lake || rows_verified == samples_published);
    DemoSummary {
        lake: args.lake.clone(),
        broker: broker.to_string(),
        duration_s: elapsed.as_secs_f64(),
        lines: args.lines.get(),
        devices_per_line: args.devices_per_line.get(),
        sample_rate_hz: args.sample_rate_hz.get(),
        samples_published,
        messages_received: ingest.messages_received,
        messages_rejected: ingest.rejected_total(),
        rows_committed,
        rows_verified,
        files_committed: records.len() as u64,
        bytes_committed: records.iter().map(|r| r.bytes).sum(),
        samples_per_second: rows_verified as f64 / elapsed.as_secs_f64().max(1e-9),
        devices,
        table_rows: BTreeMap::new(),
        scenario: args.scenario.clone(),
        npu_profile: args.npu_profile.to_string(),
        model: ModelEvaluation::default(),
        verified,
        closed_loop: None,
    }
}

/// What the lake's other tables hold for this run.
struct Evaluation {
    table_rows: BTreeMap<String, u64>,
    model: ModelEvaluation,
    /// Every scored window, judged against the labels.
    windows: Vec<crate::closed_loop::Window>,
}

/// Reads this run's inference and label files back and scores the model against the labels.
fn evaluate(lake: &Path, records: &[CommitRecord]) -> anyhow::Result<Evaluation> {
    use loopline_ingest::{inference, sim_labels};

    let mut table_rows: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        *table_rows.entry(record.table.clone()).or_default() += record.rows;
    }
    let files = |table: &'static str| {
        records
            .iter()
            .filter(move |r| r.table == table)
            .map(|r| lake.join(&r.path))
    };
    // Fault spans per (line, device, boot), sorted by start.
    type Key = (String, String, String);
    let mut faults: HashMap<Key, Vec<(i64, i64)>> = HashMap::new();
    for path in files(sim_labels::TABLE) {
        for row in
            sim_labels::read_file(&path).with_context(|| format!("reading {}", path.display()))?
        {
            if !NOT_FAULTS.contains(&row.fault.as_str()) {
                faults
                    .entry((row.line, row.device, row.boot_id))
                    .or_default()
                    .push((row.start_us, row.end_us));
            }
        }
    }
    for spans in faults.values_mut() {
        spans.sort_unstable();
    }
    let mut model = ModelEvaluation::default();
    let mut versions = BTreeSet::new();
    let mut windows = Vec::new();
    for path in files(inference::TABLE) {
        for row in
            inference::read_file(&path).with_context(|| format!("reading {}", path.display()))?
        {
            let key = (row.line, row.device, row.boot_id);
            let faulty = faults.get(&key).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|&(start, end)| start <= row.ts_us && end > row.window_start_us)
            });
            windows.push(crate::closed_loop::Window {
                line: key.0.clone(),
                device: key.1.clone(),
                boot_id: key.2.clone(),
                start_us: row.window_start_us,
                end_us: row.ts_us,
                version: row.model_version.clone(),
                score: row.score,
                anomaly: row.anomaly,
                faulty,
            });
            model.windows += 1;
            match (row.anomaly, faulty) {
                (true, true) => model.true_positives += 1,
                (true, false) => model.false_positives += 1,
                (false, true) => model.false_negatives += 1,
                (false, false) => model.true_negatives += 1,
            }
            if let Some(version) = row.model_version {
                versions.insert(version);
            }
        }
    }
    let share = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
    model.precision = share(
        model.true_positives,
        model.true_positives + model.false_positives,
    );
    model.recall = share(
        model.true_positives,
        model.true_positives + model.false_negatives,
    );
    model.model_versions = versions.into_iter().collect();
    Ok(Evaluation {
        table_rows,
        model,
        windows,
    })
}

/// The live progress line: rewritten in place on a terminal, a plain line every few seconds
/// otherwise (CI logs, pipes).
#[derive(Debug, Clone)]
struct Progress {
    agents: Arc<AgentStats>,
    ingest: Arc<IngestStats>,
    duration: Duration,
    started: Instant,
    tty: bool,
    /// Dispatch, whose timeline entries are printed as they happen.
    dispatch: Option<Arc<loopline_dispatch::service::Shared>>,
    /// When the devices started, µs since the Unix epoch: the timeline's zero.
    t0_us: i64,
}

impl Progress {
    fn new(
        agents: Arc<AgentStats>,
        ingest: Arc<IngestStats>,
        duration: Duration,
        dispatch: Option<Arc<loopline_dispatch::service::Shared>>,
        t0_us: i64,
    ) -> Self {
        Progress {
            agents,
            ingest,
            duration,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            dispatch,
            t0_us,
        }
    }

    /// Prints the timeline entries dispatch recorded since `after`; returns the last id.
    fn print_events(&self, after: i64) -> i64 {
        let Some(dispatch) = &self.dispatch else {
            return after;
        };
        let events = dispatch
            .with_db(|db| db.events(after, 100))
            .unwrap_or_default();
        let mut last = after;
        let mut err = std::io::stderr();
        for event in events {
            last = event.id;
            let t = u64::try_from(event.at_us - self.t0_us).unwrap_or(0) / 1_000_000;
            let clear = if self.tty { "\r\x1b[2K" } else { "" };
            let _ = writeln!(
                err,
                "{clear}  {:>2}:{:02}  {:<7} {:<8} {}",
                t / 60,
                t % 60,
                event.line,
                event.kind,
                event.text
            );
        }
        last
    }

    async fn run(self, stop: CancellationToken) {
        let period = if self.tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        let mut last = (Instant::now(), 0u64);
        let mut seen = 0;
        let mut events = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
                _ = events.tick() => {
                    seen = self.print_events(seen);
                    continue;
                }
            }
            let published = self.agents.snapshot().samples_acked;
            let now = Instant::now();
            let rate = (published - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, published);
            self.print(&format!("{} · {}/s", self.line(), human(rate as u64)));
        }
    }

    fn line(&self) -> String {
        let agents = self.agents.snapshot();
        let ingest = self.ingest.snapshot();
        let elapsed = self
            .started
            .elapsed()
            .as_secs()
            .min(self.duration.as_secs().max(1));
        format!(
            "[{:>3}s/{}s] published {} samples · scored {} windows, {} anomalous · ingested {} · committed {} rows in {} files · rejected {}",
            elapsed,
            self.duration.as_secs(),
            human(agents.samples_acked),
            human(agents.windows_scored),
            human(agents.anomalies),
            human(ingest.samples_accepted),
            human(ingest.rows_committed),
            ingest.files_committed,
            ingest.rejected_total(),
        )
    }

    fn print(&self, text: &str) {
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{text}");
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        self.print(&format!("{} · done", self.line()));
        if self.tty {
            eprintln!();
        }
    }
}

/// 1234567 -> "1,234,567".
pub fn human(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl DemoSummary {
    /// The table and the queries printed at the end.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let seq_range = |d: &DeviceSummary| match (d.first_seq, d.last_seq) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "-".to_owned(),
        };
        s.push_str(&format!(
            "\n{:<8} {:<7} {:>8} {:>10} {:>18} {:>14}  {}\n",
            "line", "device", "batches", "seq", "samples published", "rows in lake", "complete"
        ));
        for d in &self.devices {
            s.push_str(&format!(
                "{:<8} {:<7} {:>8} {:>10} {:>18} {:>14}  {}\n",
                d.line,
                d.device,
                d.batches,
                seq_range(d),
                human(d.samples),
                human(d.rows_in_lake),
                if d.complete { "yes" } else { "NO" }
            ));
        }
        s.push_str(&format!(
            "{:<8} {:<7} {:>8} {:>10} {:>18} {:>14}\n\n",
            "total",
            "",
            self.devices.iter().map(|d| d.batches).sum::<u64>(),
            "",
            human(self.samples_published),
            human(self.rows_verified)
        ));
        s.push_str(&format!(
            "ingest:  {} messages, {} rejected, {} rows in {} files ({:.1} MiB zstd Parquet)\n",
            human(self.messages_received),
            self.messages_rejected,
            human(self.rows_committed),
            self.files_committed,
            self.bytes_committed as f64 / (1024.0 * 1024.0)
        ));
        let tables: Vec<String> = self
            .table_rows
            .iter()
            .map(|(table, rows)| format!("{table} {}", human(*rows)))
            .collect();
        s.push_str(&format!("tables:  {}\n", tables.join(" · ")));
        let m = &self.model;
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        s.push_str(&format!(
            "model:   {} windows scored on a simulated {} by {}; {} flagged; against the simulator's labels ({}): precision {}, recall {} (TP {} FP {} FN {} TN {})\n",
            human(m.windows),
            self.npu_profile,
            if m.model_versions.is_empty() { "-".to_owned() } else { m.model_versions.join(", ") },
            human(m.true_positives + m.false_positives),
            self.scenario,
            ratio(m.precision),
            ratio(m.recall),
            m.true_positives,
            m.false_positives,
            m.false_negatives,
            m.true_negatives,
        ));
        if let Some(closed) = &self.closed_loop {
            s.push_str(&closed.render());
        }
        s.push_str(&format!(
            "rate:    {} samples/s end to end over {:.1}s\n",
            human(self.samples_per_second as u64),
            self.duration_s
        ));
        s.push_str(&format!(
            "lake:    {}  ({})\n",
            self.lake.display(),
            if self.verified {
                "verified: every acknowledged sample read back from the Parquet files, exactly once"
            } else {
                "NOT VERIFIED: the lake does not match what the devices published; see the table"
            }
        ));
        let glob = format!("{}/telemetry/**/*.parquet", self.lake.display());
        s.push_str("\nQuery it with DuckDB:\n");
        s.push_str(&format!(
            "  duckdb -c \"SELECT line, device, sensor, count(*) AS samples, round(avg(value), 3) AS mean FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\"\n"
        ));
        let inference = format!("{}/inference/**/*.parquet", self.lake.display());
        s.push_str(&format!(
            "  duckdb -c \"SELECT line, device, model_version, count(*) AS windows, count(*) FILTER (WHERE anomaly) AS anomalies, max(score) AS max_score FROM read_parquet('{inference}', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\"\n"
        ));
        s.push_str("or Polars:\n");
        s.push_str(&format!(
            "  python3 -c \"import polars as pl; print(pl.scan_parquet('{glob}', hive_partitioning=True).group_by('line', 'device', 'sensor').agg(pl.len(), pl.col('value').mean()).sort('line', 'device', 'sensor').collect())\"\n"
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_groups_thousands() {
        assert_eq!(human(0), "0");
        assert_eq!(human(999), "999");
        assert_eq!(human(1000), "1,000");
        assert_eq!(human(1_234_567), "1,234,567");
    }

    #[test]
    fn refuses_a_foreign_non_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
        let err = prepare_lake(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("not a Loopline lake"), "{err}");
        assert!(dir.path().join("thesis.tex").exists());
    }

    #[test]
    fn replaces_a_previous_demo_lake_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path();
        std::fs::create_dir_all(lake.join(COMMITS_DIR)).unwrap();
        std::fs::create_dir_all(lake.join("telemetry/site=a")).unwrap();
        std::fs::write(lake.join("notes.txt"), "keep").unwrap();
        prepare_lake(lake, true).unwrap();
        assert!(lake.join("telemetry/site=a").exists());
        prepare_lake(lake, false).unwrap();
        assert!(!lake.join("telemetry").exists());
        assert!(!lake.join("_loopline").exists());
        assert!(lake.join("notes.txt").exists());
    }
}
