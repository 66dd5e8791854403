//! Retraining triggers end to end on simulated lines: the line simulator's scenarios, scored
//! by the agents' bootstrap model, judged by the trigger evaluator.

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
    println!("recipe change detected {delay:.0} s after it");
    assert!(delay <= 15.0, "detected {delay} s after the change");
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
