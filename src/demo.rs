//! `loopline demo`: a whole factory in one process.
//!
//! ```text
//!  agents (lines × devices) ──MQTT──► broker (embedded rumqttd, or --broker) ──► ingest ──► lake
//! ```
//!
//! The order of events is what makes the numbers true: ingest subscribes before any agent
//! publishes; at the end the agents stop sealing and wait for every PUBACK, ingest drains
//! what the broker delivered and commits it, and only then is the lake read back, file by
//! file, to count what it holds. The summary prints counts read from the Parquet files, not
//! counters.

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
use loopline_ingest::writer::{COMMITS_DIR, CommitRecord, read_commit_log};
use loopline_ingest::{IngestConfig, IngestStats};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

/// Name of the demo's ingester (its files are `part-demo-<n>.parquet`).
const INGEST_ID: &str = "demo";
/// Site name of the simulated factory.
const SITE: &str = "plant-1";

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
    /// it early the same way).
    #[arg(long, default_value = "60s", value_parser = loopline_common::duration::parse)]
    pub duration: Duration,
    /// Folder of the Parquet lake. A previous demo lake there is replaced unless
    /// --keep-lake is given; any other non-empty folder is refused.
    #[arg(long, default_value = "loopline-lake")]
    pub lake: PathBuf,
    /// Append to the lake instead of replacing a previous demo's data.
    #[arg(long)]
    pub keep_lake: bool,
    /// Samples per second of each of a device's four sensors.
    #[arg(long, default_value = "1000")]
    pub sample_rate_hz: NonZeroU32,
    /// How often each device seals and publishes a batch.
    #[arg(long, default_value = "1s", value_parser = loopline_common::duration::parse)]
    pub batch_interval: Duration,
    /// Longest ingest buffers rows before committing a file.
    #[arg(long, default_value = "5s", value_parser = loopline_common::duration::parse)]
    pub roll_age: Duration,
    /// Seed of the simulated signals.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
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
    pub verified: bool,
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
    let agent_configs: Vec<AgentConfig> = (1..=args.lines.get())
        .map(|line| AgentConfig {
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
    prepare_lake(&args.lake, args.keep_lake)?;
    let broker = match &args.broker {
        Some(url) => url.clone(),
        None => loopline_common::embedded_broker::start_on_free_port()?,
    };
    let commits_before = commit_records(&args.lake)?.len();
    let mut out = std::io::stderr();
    let _ = writeln!(
        out,
        "loopline demo: {} line(s) × {} device(s), 4 sensors at {} Hz each, for {}; broker {}{}; lake {}",
        args.lines,
        args.devices_per_line,
        args.sample_rate_hz,
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
    ingest_config.broker = broker.clone();
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

    let started = Instant::now();
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

    let progress = Progress::new(agent_stats.clone(), ingest_stats.clone(), args.duration);
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
    progress.finish();

    let records: Vec<CommitRecord> = commit_records(&args.lake)?
        .into_iter()
        .skip(commits_before)
        .collect();
    let lake_counts = read_back(&args.lake, &records)?;
    let summary = summarise(
        &args,
        &broker,
        elapsed,
        &reports,
        &ingest_report.stats,
        &records,
        &lake_counts,
    );
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
            for sub in ["telemetry", "_loopline"] {
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
                    && (!foreign || args.keep_lake),
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
        verified,
    }
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
}

impl Progress {
    fn new(agents: Arc<AgentStats>, ingest: Arc<IngestStats>, duration: Duration) -> Self {
        Progress {
            agents,
            ingest,
            duration,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
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
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
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
            "[{:>3}s/{}s] published {} samples · ingested {} · committed {} rows in {} files · rejected {}",
            elapsed,
            self.duration.as_secs(),
            human(agents.samples_acked),
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
