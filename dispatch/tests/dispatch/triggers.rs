//! Retraining triggers end to end on simulated lines: the line simulator's scenarios, scored
//! by the agents' bootstrap model, judged by the trigger evaluator.

// Helpers outside #[test] functions unwrap too: a failure there is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use loopline_agent::bootstrap::{self, BootstrapKey, MODEL_CHANNELS};
use loopline_dispatch::triggers::{
    Alert, ChannelHealth, Decision, LineWindowData, ReferenceSource, ScoredWindow, Trigger,
    TriggerConfig, TriggerEvaluator,
};
use loopline_linesim::{CHANNELS, LineSim, Scenario};
use loopline_model::{Artifact, FeatureLayout};

const RATE_HZ: u32 = 1000;
const WINDOW: usize = 1000;
const DEVICES: [&str; 3] = ["pump-1", "pump-2", "pump-3"];
/// 2026-03-02T10:00:00Z.
const T0_US: i64 = 1_772_445_600_000_000;
const SEED: u64 = 7;

/// One scored window of one device, with the telemetry it was scored on.
#[derive(Debug, Clone)]
struct SimWindow {
    device: String,
    start_us: i64,
    end_us: i64,
    score: f32,
    anomaly: bool,
    /// Per channel: mean, standard deviation, sample count, non-good share.
    channels: BTreeMap<String, (f64, f64, u64, f64)>,
}

/// Sample rows of the telemetry table: (ts, device, sensor, value, quality).
type Sample = (i64, String, String, f64, i16);

fn model() -> Arc<Artifact> {
    bootstrap::model(BootstrapKey {
        seed: SEED,
        sample_rate_hz: NonZeroU32::new(RATE_HZ).unwrap(),
        window_samples: WINDOW as u64,
    })
    .unwrap()
}

/// Simulates `seconds` of a 3-device line on `scenario`, scoring every 1 s window as the
/// agents do; returns the windows in end-time order and, when `keep_samples`, the samples.
fn simulate(
    scenario: &Scenario,
    seconds: usize,
    keep_samples: bool,
) -> (Vec<SimWindow>, Vec<Sample>) {
    let artifact = model();
    let layout = FeatureLayout::new(&MODEL_CHANNELS).unwrap();
    let index: Vec<usize> = MODEL_CHANNELS
        .iter()
        .map(|n| loopline_linesim::channel_index(n).unwrap())
        .collect();
    let rate = NonZeroU32::new(RATE_HZ).unwrap();
    let mut windows = Vec::new();
    let mut samples = Vec::new();
    for device in DEVICES {
        let mut sim = LineSim::new(scenario, SEED, device, rate, T0_US);
        let mut last_finite = vec![0f32; index.len()];
        for _ in 0..seconds {
            let mut buffers: Vec<Vec<f32>> = vec![Vec::with_capacity(WINDOW); index.len()];
            let mut all: Vec<Vec<(f64, i16)>> = vec![Vec::with_capacity(WINDOW); CHANNELS.len()];
            let (mut start_us, mut end_us) = (0, 0);
            for k in 0..WINDOW {
                let s = sim.next_sample();
                if k == 0 {
                    start_us = s.ts_us;
                }
                end_us = s.ts_us;
                for ((buffer, last), &i) in buffers.iter_mut().zip(&mut last_finite).zip(&index) {
                    if s.values[i].is_finite() {
                        *last = s.values[i];
                    }
                    buffer.push(*last);
                }
                for (c, column) in all.iter_mut().enumerate() {
                    let quality = s.quality[c] as i16;
                    column.push((f64::from(s.values[c]), quality));
                    if keep_samples {
                        samples.push((
                            s.ts_us,
                            device.to_owned(),
                            CHANNELS[c].name.to_owned(),
                            f64::from(s.values[c]),
                            quality,
                        ));
                    }
                }
            }
            let slices: Vec<&[f32]> = buffers.iter().map(Vec::as_slice).collect();
            let features = layout.extract(&slices, 1e6 / f64::from(RATE_HZ)).unwrap();
            let inference = artifact.model.infer(&features).unwrap();
            let channels = all
                .iter()
                .enumerate()
                .map(|(c, column)| {
                    let finite: Vec<f64> = column
                        .iter()
                        .map(|v| v.0)
                        .filter(|v| v.is_finite())
                        .collect();
                    let n = finite.len() as f64;
                    let mean = finite.iter().sum::<f64>() / n;
                    let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                    let bad =
                        column.iter().filter(|v| v.1 != 0).count() as f64 / column.len() as f64;
                    (
                        CHANNELS[c].name.to_owned(),
                        (mean, var.sqrt(), column.len() as u64, bad),
                    )
                })
                .collect();
            windows.push(SimWindow {
                device: device.to_owned(),
                start_us,
                end_us,
                score: inference.score,
                anomaly: inference.anomaly,
                channels,
            });
        }
    }
    windows.sort_by(|a, b| (a.end_us, &a.device).cmp(&(b.end_us, &b.device)));
    (windows, samples)
}

fn bearing_scenario() -> Scenario {
    Scenario::from_toml_str(
        r#"
name = "bearing-demo"
description = "Steady running; from 30 s an outer-race spall grows over 4 min."
[[recipe]]
id = 101
speed_rpm = 1480.0
load = 0.75
[[event]]
at = "30s"
kind = "bearing_outer_race"
severity = 1.0
ramp = "4m"
"#,
    )
    .unwrap()
}

impl SimWindow {
    fn scored(&self) -> ScoredWindow {
        let channels: BTreeMap<String, ChannelHealth> = self
            .channels
            .iter()
            .map(|(name, &(mean, std, samples, bad))| {
                let finite = mean.is_finite();
                (
                    name.clone(),
                    ChannelHealth {
                        samples,
                        mean: finite.then_some(mean),
                        std: finite.then_some(std),
                        non_good_share: bad,
                    },
                )
            })
            .collect();
        ScoredWindow {
            device: self.device.clone(),
            window_start_us: self.start_us,
            window_end_us: self.end_us,
            model_version: Some(model().metadata.model_version.clone()),
            score: f64::from(self.score),
            anomaly: self.anomaly,
            recipe: self.channels.get("recipe").map(|c| c.0),
            speed_setpoint: self.channels.get("speed_setpoint").map(|c| c.0),
            channels,
        }
    }
}

fn evaluator() -> TriggerEvaluator {
    TriggerEvaluator::new(
        TriggerConfig::default(),
        ReferenceSource::FirstWindows {
            model_version: Some(model().metadata.model_version.clone()),
        },
    )
}

/// Feeds the windows second by second, as dispatch would poll the lake every second; returns
/// each evaluation's time (s since T0) and decision.
fn run(windows: &[SimWindow]) -> Vec<(f64, Decision)> {
    let mut evaluator = evaluator();
    let mut decisions = Vec::new();
    let last = windows.iter().map(|w| w.end_us).max().unwrap();
    let mut now = T0_US + 1_000_000;
    while now <= last + 1_000_000 {
        let data = LineWindowData {
            windows: windows
                .iter()
                .filter(|w| w.end_us < now && w.end_us >= now - 1_000_000)
                .map(SimWindow::scored)
                .collect(),
        };
        let decision = evaluator.evaluate(now, &data);
        decisions.push(((now - T0_US) as f64 / 1e6, decision));
        now += 1_000_000;
    }
    decisions
}

fn show(decisions: &[(f64, Decision)]) -> String {
    decisions
        .iter()
        .filter(|(_, d)| !matches!(d, Decision::Hold { .. }))
        .map(|(t, d)| format!("{t:6.1}s {}", d.sentence()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn at(seconds: i64) -> i64 {
    T0_US + seconds * 1_000_000
}

#[test]
fn a_move_to_an_unseen_operating_point_retrains_on_the_data_since_the_change() {
    // recipe-change: 101 (1480 rpm, load 0.75) until 30 s, then 102 (1100 rpm, full load),
    // an operating point the bootstrap model never saw.
    let (windows, _) = simulate(&Scenario::named("recipe-change").unwrap(), 75, false);
    let decisions = run(&windows);
    println!("{}", show(&decisions));
    let retrains: Vec<_> = decisions.iter().filter(|(_, d)| d.is_retrain()).collect();
    assert_eq!(retrains.len(), 1, "{}", show(&decisions));
    let (t, decision) = retrains[0];
    let Decision::Retrain {
        trigger: Trigger::Drift { .. },
        data_from_us,
        data_to_us,
        ..
    } = decision
    else {
        panic!("{decision:?}");
    };
    // From the first window that straddles the change, i.e. within one window of it.
    assert!(
        (at(29)..=at(30)).contains(data_from_us),
        "data from {}",
        (data_from_us - T0_US) as f64 / 1e6
    );
    assert!(*data_to_us > at(30));
    let delay = t - 30.0;
    println!("recipe change retrained {delay:.0} s after it");
    // Drift is seen within seconds; the retrain waits for `min_training_windows` (90) windows
    // of the new recipe from 3 devices after the 8 s settle: 38 s, and no longer.
    let config = TriggerConfig::default();
    let needed =
        (config.min_training_windows as f64 / 3.0).ceil() + config.context_settle.as_secs_f64();
    assert!(
        delay <= needed + 3.0,
        "retrained {delay} s after the change"
    );
    assert!(
        decisions.iter().any(|(_, d)| d
            .sentence()
            .contains("waiting for data of the new operating point")),
        "{}",
        show(&decisions)
    );
    assert!(
        !decisions
            .iter()
            .any(|(_, d)| matches!(d, Decision::Alert(_))),
        "{}",
        show(&decisions)
    );
}

fn bearing_scenario_decisions() -> Vec<(f64, Decision)> {
    let (windows, _) = simulate(&bearing_scenario(), 170, false);
    run(&windows)
}

#[test]
fn a_developing_bearing_fault_is_an_alert_and_never_a_retrain() {
    let decisions = bearing_scenario_decisions();
    println!("{}", show(&decisions));
    assert!(
        !decisions.iter().any(|(_, d)| d.is_retrain()),
        "{}",
        show(&decisions)
    );
    let alerts: Vec<_> = decisions
        .iter()
        .filter_map(|(t, d)| match d {
            Decision::Alert(a @ Alert::Degradation { .. }) => Some((*t, a.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(alerts.len(), 1, "{}", show(&decisions));
    let (
        t,
        Alert::Degradation {
            since_us, devices, ..
        },
    ) = &alerts[0]
    else {
        unreachable!()
    };
    assert!(
        *since_us >= at(30),
        "onset {}",
        (since_us - T0_US) / 1_000_000
    );
    assert!(!devices.is_empty());
    println!(
        "bearing fault (onset 30 s) raised at {t:.0} s, estimated onset {} s",
        (since_us - T0_US) / 1_000_000
    );
    // After the alert, every decision holds.
    assert!(
        decisions
            .iter()
            .filter(|(u, _)| u > t)
            .all(|(_, d)| matches!(d, Decision::Hold { .. }))
    );
}

#[test]
fn a_stuck_sensor_is_a_sensor_fault_and_never_a_retrain() {
    // sensor-faults: the temperature sensor is stuck from 20 s to 40 s.
    let (windows, _) = simulate(&Scenario::named("sensor-faults").unwrap(), 60, false);
    let decisions = run(&windows);
    println!("{}", show(&decisions));
    assert!(
        !decisions.iter().any(|(_, d)| d.is_retrain()),
        "{}",
        show(&decisions)
    );
    let faults: Vec<_> = decisions
        .iter()
        .filter_map(|(t, d)| match d {
            Decision::Alert(Alert::SensorFault {
                device,
                sensor,
                since_us,
                ..
            }) => Some((*t, device.clone(), sensor.clone(), *since_us)),
            _ => None,
        })
        .collect();
    assert_eq!(faults.len(), 3, "{}", show(&decisions));
    for (t, _, sensor, since) in &faults {
        assert_eq!(sensor, "temperature");
        assert!((at(20)..at(21)).contains(since));
        assert!(*t <= 25.0, "raised at {t}");
    }
    let devices: std::collections::BTreeSet<_> = faults.iter().map(|f| f.1.clone()).collect();
    assert_eq!(devices.len(), 3);
}

#[test]
fn a_normal_line_holds_without_alerts() {
    // normal: recipes the bootstrap model was fitted on (101, then 102 at 30 s, 103 at 2 min).
    let (windows, _) = simulate(&Scenario::named("normal").unwrap(), 150, false);
    let decisions = run(&windows);
    assert!(
        decisions
            .iter()
            .all(|(_, d)| matches!(d, Decision::Hold { .. })),
        "{}",
        show(&decisions)
    );
}

/// Writes the windows and samples as ingest lays them out: Hive partitions by hour, several
/// files per partition, and a temporary file that is not part of the lake.
fn write_lake(lake: &std::path::Path, windows: &[SimWindow], samples: &[Sample]) {
    use arrow_array::{
        BooleanArray, Float32Array, Float64Array, Int16Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow_schema::{DataType, Field, Schema, TimeUnit};
    use parquet::arrow::ArrowWriter;

    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let hour_dir = |table: &str, ts: i64| {
        let t = chrono::DateTime::from_timestamp_micros(ts).unwrap();
        lake.join(table)
            .join("site=plant")
            .join("line=l1")
            .join(t.format("date=%Y-%m-%d").to_string())
            .join(t.format("hour=%H").to_string())
    };
    let write = |dir: std::path::PathBuf, n: usize, batch: RecordBatch| {
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join(format!("part-test-{n:08}.parquet"))).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    };
    // Inference in files of 10 s; `model_version` absent from the first (an older file).
    for (n, chunk) in windows.chunks(30).enumerate() {
        let mut fields = vec![
            Field::new("ts", ts_type.clone(), false),
            Field::new("window_start", ts_type.clone(), false),
            Field::new("device", DataType::Utf8, false),
        ];
        let mut columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|w| w.end_us))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|w| w.start_us))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|w| &w.device),
            )),
        ];
        if n > 0 {
            fields.push(Field::new("model_version", DataType::Utf8, true));
            let version = model().metadata.model_version.clone();
            columns.push(Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|_| version.as_str()),
            )));
        }
        fields.extend([
            Field::new("score", DataType::Float32, false),
            Field::new("anomaly", DataType::Boolean, false),
            Field::new("latency_us", DataType::Int64, false),
        ]);
        columns.extend([
            Arc::new(Float32Array::from_iter_values(
                chunk.iter().map(|w| w.score),
            )) as arrow_array::ArrayRef,
            Arc::new(BooleanArray::from(
                chunk.iter().map(|w| w.anomaly).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(chunk.iter().map(|_| 900))),
        ]);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        write(hour_dir("inference", chunk[0].end_us), 1000 + n, batch);
    }
    // Telemetry in files of about 10 s of the line, each sorted by (device, sensor, ts).
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ts_type.clone(), false),
        Field::new("device", DataType::Utf8, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("quality", DataType::Int16, false),
    ]));
    let mut by_time: Vec<&Sample> = samples.iter().collect();
    by_time.sort_by_key(|s| s.0);
    for (n, chunk) in by_time.chunks(240_000).enumerate() {
        let mut chunk = chunk.to_vec();
        chunk.sort_by(|a, b| (&a.1, &a.2, a.0).cmp(&(&b.1, &b.2, b.0)));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|s| s.0))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| &s.1))),
                Arc::new(StringArray::from_iter_values(chunk.iter().map(|s| &s.2))),
                Arc::new(Float64Array::from_iter_values(chunk.iter().map(|s| s.3))),
                Arc::new(Int16Array::from_iter_values(chunk.iter().map(|s| s.4))),
            ],
        )
        .unwrap();
        write(hour_dir("telemetry", chunk[0].0), n, batch);
    }
    let tmp = lake.join("_loopline/tmp/test");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("part-test-99999999.parquet.tmp"), b"not parquet").unwrap();
}

#[test]
fn the_recipe_change_read_back_from_parquet_in_the_lake_layout_gives_the_same_decision() {
    use loopline_dispatch::lake::{self, TimeRange};

    let (windows, samples) = simulate(&Scenario::named("recipe-change").unwrap(), 50, true);
    let dir = tempfile::tempdir().unwrap();
    write_lake(dir.path(), &windows, &samples);

    // The reader gives back what was written, window by window.
    let all =
        lake::read_line_windows(dir.path(), "plant", "l1", TimeRange::new(at(0), at(60))).unwrap();
    assert_eq!(all.windows.len(), windows.len());
    let direct: Vec<ScoredWindow> = windows.iter().map(SimWindow::scored).collect();
    for (read, want) in all.windows.iter().zip(&direct) {
        assert_eq!(read.device, want.device);
        assert_eq!(read.window_end_us, want.window_end_us);
        assert_eq!(read.score, want.score);
        assert_eq!(read.recipe, want.recipe);
        let (r, w) = (&read.channels["vibration"], &want.channels["vibration"]);
        assert_eq!(r.samples, 1000);
        assert!((r.std.unwrap() - w.std.unwrap()).abs() < 1e-9);
    }
    // The first file predates `model_version`: null there, set after.
    assert_eq!(all.windows[0].model_version, None);
    assert!(all.windows.last().unwrap().model_version.is_some());
    // Partition pruning: another line and another hour hold nothing.
    let other = lake::read_line_windows(dir.path(), "plant", "l2", TimeRange::new(at(0), at(60)));
    assert!(other.unwrap().windows.is_empty());
    let later = TimeRange::new(at(3600), at(7200));
    assert!(
        lake::read_inference(dir.path(), "plant", "l1", later)
            .unwrap()
            .is_empty()
    );

    // Dispatch's loop: every second, read the second that passed and evaluate (50 s of data:
    // fewer windows of the new recipe needed before training than by default).
    let mut evaluator = TriggerEvaluator::new(
        TriggerConfig {
            min_training_windows: 30,
            ..TriggerConfig::default()
        },
        ReferenceSource::FirstWindows {
            model_version: None,
        },
    );
    let mut retrain = None;
    for second in 1..=51 {
        let range = TimeRange::new(at(second - 1), at(second));
        let data = lake::read_line_windows(dir.path(), "plant", "l1", range).unwrap();
        if let d @ Decision::Retrain { .. } = evaluator.evaluate(at(second), &data) {
            retrain = Some((second, d));
            break;
        }
    }
    let Some((
        second,
        Decision::Retrain {
            data_from_us,
            trigger: Trigger::Drift { .. },
            ..
        },
    )) = retrain
    else {
        panic!("no drift retrain");
    };
    assert!((at(29)..=at(30)).contains(&data_from_us));
    // The 8 s settle, then 30 windows of the new recipe from 3 devices: 10 s.
    assert!(second - 30 <= 20, "retrained at {second} s");
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    use loopline_dispatch::lake::{self, TimeRange};

    let dir = tempfile::tempdir().unwrap();
    let hour = dir
        .path()
        .join("inference/site=plant/line=l1/date=2026-03-02/hour=10");
    std::fs::create_dir_all(&hour).unwrap();
    std::fs::write(hour.join("part-x-00000000.parquet"), b"garbage").unwrap();
    let err =
        lake::read_inference(dir.path(), "plant", "l1", TimeRange::new(at(0), at(60))).unwrap_err();
    assert!(err.to_string().contains("part-x-00000000.parquet"), "{err}");
}
