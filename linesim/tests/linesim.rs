//! The simulator against physics and against its own contract, through the public API only.
//! Physics checks use real signal analysis (a windowed DFT at the frequencies that matter,
//! kurtosis, RMS over whole supply cycles), on scenarios with `variation = 0` where an exact
//! expected value is needed.

#![allow(clippy::unwrap_used)]

use std::f64::consts::TAU;
use std::num::NonZeroU32;

use loopline_linesim::{
    CHANNELS, FaultKind, LabelSpans, LineSim, Sample, Scenario, channel, sample_ts_us,
    samples_before,
};
use loopline_proto::v1::Quality;
use proptest::prelude::*;

fn rate(hz: u32) -> NonZeroU32 {
    NonZeroU32::new(hz).unwrap()
}

fn run(sim: &mut LineSim, n: u64) -> Vec<Sample> {
    let mut out = Vec::with_capacity(n as usize);
    sim.fill(sim.next_k() + n, &mut out);
    out
}

fn channel_of(samples: &[Sample], ch: usize) -> Vec<f64> {
    samples.iter().map(|s| f64::from(s.values[ch])).collect()
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// RMS about the mean.
fn rms(x: &[f64]) -> f64 {
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Kurtosis (not excess): 1.5 for a sine, 3 for Gaussian noise, more for impacts.
fn kurtosis(x: &[f64]) -> f64 {
    let m = mean(x);
    let (mut m2, mut m4) = (0.0, 0.0);
    for v in x {
        let d = (v - m) * (v - m);
        m2 += d;
        m4 += d * d;
    }
    let n = x.len() as f64;
    (m4 / n) / (m2 / n).powi(2)
}

/// Amplitude of the component at `freq_hz`, from a Hann-windowed DFT evaluated at exactly that
/// frequency (a single-bin Goertzel, written out).
fn amplitude_at(x: &[f64], freq_hz: f64, rate_hz: f64) -> f64 {
    let n = x.len() as f64;
    let m = mean(x);
    let (mut re, mut im, mut wsum) = (0.0, 0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let w = 0.5 - 0.5 * (TAU * i as f64 / n).cos();
        let phi = TAU * freq_hz * i as f64 / rate_hz;
        re += w * (v - m) * phi.cos();
        im -= w * (v - m) * phi.sin();
        wsum += w;
    }
    2.0 * (re * re + im * im).sqrt() / wsum
}

/// Line-free reference: the median amplitude at frequencies between `lo` and `hi` that are
/// not near any multiple of the given fundamentals.
fn floor_between(x: &[f64], lo: f64, hi: f64, rate_hz: f64, avoid: &[f64]) -> f64 {
    let mut amps = Vec::new();
    let mut f = lo;
    while f < hi {
        let near = avoid.iter().any(|&a| {
            let h = (f / a).round();
            h >= 1.0 && (f - h * a).abs() < 2.0
        });
        if !near {
            amps.push(amplitude_at(x, f, rate_hz));
        }
        f += 1.37;
    }
    amps.sort_by(f64::total_cmp);
    amps[amps.len() / 2]
}

/// A fault-free single-recipe machine with exact parameters, plus `extra` TOML.
fn exact(extra: &str) -> Scenario {
    let text = format!("name = \"test\"\n{extra}\n[machine]\nvariation = 0.0\n",);
    Scenario::from_toml_str(&text).unwrap()
}

/// A sample with its floats as bits, so comparisons are exact (and NaN-safe).
type Bits = (u64, i64, [u32; 8], [Quality; 8], String, u32);

fn bits(samples: &[Sample]) -> Vec<Bits> {
    samples
        .iter()
        .map(|s| {
            (
                s.k,
                s.ts_us,
                s.values.map(f32::to_bits),
                s.quality,
                s.label.fault.as_str().to_owned(),
                s.label.severity.to_bits(),
            )
        })
        .collect()
}

/// Every kind of event within the first three seconds.
const BUSY: &str = r#"
name = "busy"
[[recipe]]
id = 1
speed_rpm = 1480.0
load = 0.7
[[recipe]]
id = 2
speed_rpm = 1100.0
load = 0.9
[[event]]
at = "0s"
kind = "sensor_stuck"
sensor = "speed"
duration = "500ms"
[[event]]
at = "300ms"
kind = "recipe_change"
recipe = 2
[[event]]
at = "700ms"
kind = "bearing_inner_race"
ramp = "1s"
[[event]]
at = "1s"
kind = "sensor_spike"
sensor = "vibration"
[[event]]
at = "1200ms"
kind = "sensor_drift"
sensor = "pressure"
ramp = "1s"
[[event]]
at = "1500ms"
kind = "sensor_dropout"
sensor = "current"
duration = "200ms"
[[event]]
at = "2s"
kind = "sensor_noise"
sensor = "flow"
[[event]]
at = "2500ms"
kind = "imbalance"
severity = 0.5
"#;

#[test]
fn same_seed_and_device_give_the_same_frames() {
    let scenario = Scenario::from_toml_str(BUSY).unwrap();
    let a = run(
        &mut LineSim::new(&scenario, 7, "pump-1", rate(1000), 1_000),
        4_000,
    );
    let b = run(
        &mut LineSim::new(&scenario, 7, "pump-1", rate(1000), 1_000),
        4_000,
    );
    assert_eq!(bits(&a), bits(&b));
    // And the busy scenario really is busy: faults show in labels and in quality.
    let mut kinds: Vec<FaultKind> = a.iter().map(|s| s.label.fault).collect();
    kinds.sort();
    kinds.dedup();
    assert!(kinds.len() >= 4, "{kinds:?}");
    let flagged = |q| a.iter().filter(|s| s.quality.contains(&q)).count();
    assert!(flagged(Quality::Bad) == 200 && flagged(Quality::Uncertain) > 1_000);
}

#[test]
fn other_devices_and_seeds_get_other_machines() {
    let scenario = Scenario::named("normal").unwrap();
    let a = run(
        &mut LineSim::new(&scenario, 7, "pump-1", rate(1000), 0),
        2_000,
    );
    let b = run(
        &mut LineSim::new(&scenario, 7, "pump-2", rate(1000), 0),
        2_000,
    );
    let c = run(
        &mut LineSim::new(&scenario, 8, "pump-1", rate(1000), 0),
        2_000,
    );
    assert_ne!(bits(&a), bits(&b));
    assert_ne!(bits(&a), bits(&c));
    // The variation is in the physics, within the scenario's ±5 %: rated pressure at the same
    // speed differs from device to device.
    let pressures: Vec<f64> = (0..8)
        .map(|i| {
            let s = run(
                &mut LineSim::new(&scenario, 7, &format!("pump-{i}"), rate(1000), 0),
                2_000,
            );
            mean(&channel_of(&s, channel::PRESSURE))
        })
        .collect();
    let lo = pressures.iter().cloned().fold(f64::MAX, f64::min);
    let hi = pressures.iter().cloned().fold(f64::MIN, f64::max);
    assert!(hi - lo > 0.05, "{pressures:?}");
    assert!(
        lo > 6.0 * 0.95 - 0.01 && hi < 6.0 * 1.05 + 0.01,
        "{pressures:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn batch_boundaries_do_not_change_the_stream(cuts in proptest::collection::vec(0u64..3_000, 0..8)) {
        let scenario = Scenario::from_toml_str(BUSY).unwrap();
        let whole = run(&mut LineSim::new(&scenario, 3, "d", rate(1000), 5), 3_000);
        let mut cuts = cuts;
        cuts.push(3_000);
        cuts.sort();
        let mut sim = LineSim::new(&scenario, 3, "d", rate(1000), 5);
        let mut parts = Vec::new();
        for cut in cuts {
            sim.fill(cut, &mut parts);
        }
        prop_assert_eq!(bits(&whole), bits(&parts));
    }
}

#[test]
fn timestamps_come_from_the_index() {
    let scenario = Scenario::named("default").unwrap();
    let r = rate(3);
    let mut sim = LineSim::new(&scenario, 1, "d", r, 1_700_000_000_000_000);
    let samples = run(&mut sim, 10);
    for s in &samples {
        assert_eq!(s.ts_us, sample_ts_us(1_700_000_000_000_000, r, s.k));
        assert_eq!(s.ts_us, sim.ts_us(s.k));
    }
    assert_eq!(samples[1].ts_us - samples[0].ts_us, 333_333);
    assert_eq!(samples[3].ts_us - samples[0].ts_us, 1_000_000);
    assert_eq!(sim.next_k(), 10);
    assert_eq!(
        samples_before(sim.t0_us(), r, samples[9].ts_us + 1),
        10,
        "the agent's catch-up count"
    );
}

#[test]
fn channels_are_the_agreed_eight() {
    let names: Vec<_> = CHANNELS.iter().map(|c| (c.name, c.unit)).collect();
    assert_eq!(
        names,
        vec![
            ("vibration", "mm/s"),
            ("temperature", "Cel"),
            ("current", "A"),
            ("pressure", "bar"),
            ("flow", "L/min"),
            ("speed", "rpm"),
            ("speed_setpoint", "rpm"),
            ("recipe", "1"),
        ]
    );
}

#[test]
fn vibration_spectrum_shows_the_shaft_and_then_bpfo() {
    let fs = 2_000.0;
    let scenario = exact(
        "[[recipe]]\nid = 1\nspeed_rpm = 1480.0\nload = 0.75\n\
         [[event]]\nat = \"10s\"\nkind = \"bearing_outer_race\"\nseverity = 0.6\n",
    );
    let mut sim = LineSim::new(&scenario, 11, "pump-1", rate(2_000), 0);
    let healthy = channel_of(&run(&mut sim, 20_000), channel::VIBRATION);
    let worn = channel_of(&run(&mut sim, 20_000), channel::VIBRATION);
    let shaft = 1480.0 / 60.0;
    let bpfo = shaft * scenario.machine().bearing.bpfo_order();
    let bpfi = shaft * scenario.machine().bearing.bpfi_order();
    assert!((bpfo - 88.42).abs() < 0.05, "{bpfo}");

    let floor = floor_between(&healthy, 30.0, 300.0, fs, &[shaft, bpfo]);
    let one_x = amplitude_at(&healthy, shaft, fs);
    // 1x carries the residual imbalance, 1.8 mm/s peak at rated speed.
    assert!((one_x - 1.8).abs() < 0.1, "1x {one_x}");
    assert!(one_x > 50.0 * floor, "1x {one_x} floor {floor}");
    let bpfo_healthy = amplitude_at(&healthy, bpfo, fs);
    assert!(
        bpfo_healthy < 3.0 * floor,
        "healthy BPFO {bpfo_healthy} floor {floor}"
    );

    let worn_floor = floor_between(&worn, 30.0, 300.0, fs, &[shaft, bpfo]);
    let bpfo_worn = amplitude_at(&worn, bpfo, fs);
    assert!(
        bpfo_worn > 10.0 * bpfo_healthy,
        "BPFO {bpfo_healthy} -> {bpfo_worn}"
    );
    assert!(
        bpfo_worn > 5.0 * worn_floor,
        "BPFO {bpfo_worn} floor {worn_floor}"
    );
    // Its harmonics too, and not BPFI: this is the outer race.
    let second = amplitude_at(&worn, 2.0 * bpfo, fs);
    assert!(
        second > 5.0 * worn_floor,
        "2xBPFO {second} floor {worn_floor}"
    );
    let at_bpfi = amplitude_at(&worn, bpfi, fs);
    assert!(
        at_bpfi < 3.0 * worn_floor,
        "BPFI {at_bpfi} floor {worn_floor}"
    );
}

#[test]
fn inner_race_defect_shows_bpfi_with_shaft_sidebands() {
    let fs = 2_000.0;
    let scenario = exact("[[event]]\nat = \"0s\"\nkind = \"bearing_inner_race\"\nseverity = 0.8\n");
    let mut sim = LineSim::new(&scenario, 5, "pump-1", rate(2_000), 0);
    let x = channel_of(&run(&mut sim, 20_000), channel::VIBRATION);
    let shaft = 1480.0 / 60.0;
    let bpfi = shaft * scenario.machine().bearing.bpfi_order();
    let floor = floor_between(&x, 30.0, 300.0, fs, &[shaft, bpfi]);
    let line = amplitude_at(&x, bpfi, fs);
    let lower = amplitude_at(&x, bpfi - shaft, fs);
    let upper = amplitude_at(&x, bpfi + shaft, fs);
    assert!(line > 5.0 * floor, "BPFI {line} floor {floor}");
    assert!(
        lower > 3.0 * floor && upper > 3.0 * floor,
        "sidebands {lower} {upper} floor {floor}"
    );
}

#[test]
fn kurtosis_rises_before_rms_as_the_bearing_wears() {
    // The bearing-wear scenario, sped up: the spall grows over 100 s instead of 10 min.
    let scenario =
        exact("[[event]]\nat = \"10s\"\nkind = \"bearing_outer_race\"\nramp = \"100s\"\n");
    let mut sim = LineSim::new(&scenario, 2, "pump-1", rate(1_000), 0);
    let samples = run(&mut sim, 120_000);
    let x = channel_of(&samples, channel::VIBRATION);
    let windows: Vec<(f64, f64)> = x.chunks(1_000).map(|w| (rms(w), kurtosis(w))).collect();
    let (rms0, kurt0) = (
        mean(&windows[..10].iter().map(|w| w.0).collect::<Vec<_>>()),
        mean(&windows[..10].iter().map(|w| w.1).collect::<Vec<_>>()),
    );
    // Alarm when a window is 25 % above its healthy baseline.
    let first = |f: &dyn Fn(&(f64, f64)) -> bool| windows.iter().position(f);
    let kurt_alarm = first(&|w| w.1 > 1.25 * kurt0).unwrap();
    let rms_alarm = first(&|w| w.0 > 1.25 * rms0).unwrap();
    assert!(
        kurt_alarm + 10 <= rms_alarm,
        "kurtosis alarm at {kurt_alarm} s, RMS alarm at {rms_alarm} s; baseline rms {rms0} kurtosis {kurt0}; windows {:?}",
        &windows[..]
    );
    assert!(kurt_alarm > 10, "no alarm before the fault: {kurt_alarm}");
    // And the labels say when: severity grows with the square of time over the ramp.
    let at = |s: u64| samples[(s * 1_000) as usize].label;
    assert_eq!(at(5).fault, FaultKind::Normal);
    assert_eq!(at(60).fault, FaultKind::BearingOuterRace);
    assert!((at(60).severity - 0.25).abs() < 1e-3, "{:?}", at(60));
    assert!((at(115).severity - 1.0).abs() < 1e-6, "{:?}", at(115));
}

#[test]
fn temperature_follows_the_first_order_model() {
    let scenario = Scenario::from_toml_str(
        "name = \"t\"\n[[recipe]]\nid = 1\nspeed_rpm = 1480.0\nload = 0.75\n\
         [machine]\nvariation = 0.0\ncold_start = true\nthermal_tau = \"20s\"\n",
    )
    .unwrap();
    let m = scenario.machine();
    // Ambient + load rise × 0.75 + speed rise × 1 at rated speed.
    let steady = m.ambient_c + m.temp_rise_load_c * 0.75 + m.temp_rise_speed_c;
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(100), 0);
    assert_eq!(sim.state().temperature_c, m.ambient_c);
    assert!((sim.state().steady_temperature_c - steady).abs() < 1e-9);
    let samples = run(&mut sim, 100 * 120);
    let t = channel_of(&samples, channel::TEMPERATURE);
    // Mean of one second around t, to beat the transmitter's noise.
    let around = |sec: usize| mean(&t[sec * 100 - 50..sec * 100 + 50]);
    for (sec, expected_fraction) in [
        (20, 1.0 - (-1.0f64).exp()),
        (40, 1.0 - (-2.0f64).exp()),
        (100, 1.0 - (-5.0f64).exp()),
    ] {
        let expected = m.ambient_c + (steady - m.ambient_c) * expected_fraction;
        assert!(
            (around(sec) - expected).abs() < 0.1,
            "at {sec} s: {} vs {expected}",
            around(sec)
        );
    }
}

#[test]
fn current_rms_scales_with_load() {
    let text = |load: f64| {
        format!(
            "name = \"c\"\n[[recipe]]\nid = 1\nspeed_rpm = 1480.0\nload = {load}\n\
             [machine]\nvariation = 0.0\n"
        )
    };
    let mut measured = Vec::new();
    for load in [0.2, 0.6, 1.0] {
        let scenario = Scenario::from_toml_str(&text(load)).unwrap();
        let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(1_000), 0);
        // 50 whole supply cycles.
        let i = channel_of(&run(&mut sim, 1_000), channel::CURRENT);
        let rms_a = (i.iter().map(|v| v * v).sum::<f64>() / i.len() as f64).sqrt();
        let m = scenario.machine();
        let expected = m.no_load_current_a + (m.full_load_current_a - m.no_load_current_a) * load;
        assert!(
            (rms_a - expected).abs() < 0.02,
            "load {load}: {rms_a} vs {expected}"
        );
        // It is a 50 Hz sine.
        assert!((amplitude_at(&i, 50.0, 1_000.0) - expected * 2f64.sqrt()).abs() < 0.05);
        measured.push(rms_a);
    }
    assert!(
        measured[0] < measured[1] && measured[1] < measured[2],
        "{measured:?}"
    );
    // Affine: equal steps of load give equal steps of current.
    let (d1, d2) = (measured[1] - measured[0], measured[2] - measured[1]);
    assert!((d1 - d2).abs() < 0.03, "{measured:?}");
}

/// Recipe 1 at rated speed, recipe 2 at 1000 rpm from 5 s.
const STEP: &str = "name = \"step\"\ninitial_recipe = 1\n\
    [[recipe]]\nid = 1\nspeed_rpm = 1480.0\nload = 0.75\n\
    [[recipe]]\nid = 2\nspeed_rpm = 1000.0\nload = 0.9\n\
    [[event]]\nat = \"5s\"\nkind = \"recipe_change\"\nrecipe = 2\n\
    [machine]\nvariation = 0.0\n";

#[test]
fn pressure_and_flow_follow_the_affinity_laws() {
    let scenario = Scenario::from_toml_str(STEP).unwrap();
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(100), 0);
    let samples = run(&mut sim, 100 * 40);
    let speed = channel_of(&samples, channel::SPEED);
    let pressure = channel_of(&samples, channel::PRESSURE);
    let flow = channel_of(&samples, channel::FLOW);
    let m = scenario.machine();
    // Through the whole transient, sample by sample: p = p_rated (n / n_rated)², Q ∝ n.
    for (i, ((n, p), q)) in speed.iter().zip(&pressure).zip(&flow).enumerate() {
        let ratio = n / m.rated_speed_rpm;
        let p_expected = m.rated_pressure_bar * ratio * ratio;
        let q_expected = m.rated_flow_l_min * ratio;
        assert!((p - p_expected).abs() < 0.12, "sample {i}: p {p} n {n}");
        assert!((q - q_expected).abs() < 4.0, "sample {i}: q {q} n {n}");
    }
    // Averaged over the two steady states: the ratios are the square and the first power.
    let before = |x: &[f64]| mean(&x[100..500]);
    let after = |x: &[f64]| mean(&x[3_500..4_000]);
    let speed_ratio = after(&speed) / before(&speed);
    assert!(
        (speed_ratio - 1000.0 / 1480.0).abs() < 1e-3,
        "{speed_ratio}"
    );
    let p_ratio = after(&pressure) / before(&pressure);
    assert!(
        (p_ratio - speed_ratio.powi(2)).abs() < 2e-3,
        "{p_ratio} vs {speed_ratio}²"
    );
    let q_ratio = after(&flow) / before(&flow);
    assert!(
        (q_ratio - speed_ratio).abs() < 2e-3,
        "{q_ratio} vs {speed_ratio}"
    );
}

#[test]
fn a_recipe_change_moves_the_setpoint_and_the_speed_follows() {
    let scenario = Scenario::from_toml_str(STEP).unwrap();
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(100), 0);
    let samples = run(&mut sim, 100 * 30);
    let setpoint = channel_of(&samples, channel::SPEED_SETPOINT);
    let recipe = channel_of(&samples, channel::RECIPE);
    // Exactly at 5 s (sample 500), the context tags switch.
    assert_eq!((setpoint[499], recipe[499]), (1480.0, 1.0));
    assert_eq!((setpoint[500], recipe[500]), (1000.0, 2.0));
    let true_speed = |k: usize| {
        let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(100), 0);
        run(&mut sim, k as u64);
        sim.state().speed_rpm
    };
    // First-order lag with τ = 2 s: 63 % of the step after τ, 99.3 % after 5τ.
    let tau = scenario.machine().speed_tau.as_secs_f64();
    assert_eq!(tau, 2.0);
    let after_tau = true_speed(700);
    let expected = 1480.0 - 480.0 * (1.0 - (-1.0f64).exp());
    assert!(
        (after_tau - expected).abs() < 3.0,
        "{after_tau} vs {expected}"
    );
    let speed = channel_of(&samples, channel::SPEED);
    let settled = mean(&speed[2_500..3_000]);
    assert!((settled - 1000.0).abs() < 1.0, "{settled}");
    // The label says recipe_change for five time constants, and it is not a fault.
    assert_eq!(samples[499].label.fault, FaultKind::Normal);
    assert_eq!(samples[500].label.fault, FaultKind::RecipeChange);
    assert!(!samples[500].label.fault.is_fault());
    assert!((samples[500].label.severity - 480.0 / 1480.0).abs() < 1e-6);
    assert_eq!(samples[1_499].label.fault, FaultKind::RecipeChange);
    assert_eq!(samples[1_500].label.fault, FaultKind::Normal);
}

#[test]
fn sensor_faults_do_what_they_say() {
    let scenario = Scenario::named("sensor-faults").unwrap();
    let fs = 100u32;
    let mut sim = LineSim::new(&scenario, 9, "pump-3", rate(fs), 0);
    let samples = run(&mut sim, u64::from(fs) * 240);
    let sec = |s: f64| (s * f64::from(fs)) as usize;
    let range = |a: f64, b: f64| &samples[sec(a)..sec(b)];

    // Stuck temperature, 20..40 s: one constant value, quality still GOOD (it does not know).
    let stuck = range(20.0, 40.0);
    let held = stuck[0].values[channel::TEMPERATURE];
    assert!(stuck.iter().all(|s| s.values[channel::TEMPERATURE] == held));
    assert!(
        stuck
            .iter()
            .all(|s| s.quality[channel::TEMPERATURE] == Quality::Good)
    );
    assert_eq!(
        held,
        samples[sec(20.0) - 1].values[channel::TEMPERATURE],
        "holds the last value"
    );
    let after = channel_of(range(40.0, 45.0), channel::TEMPERATURE);
    assert!(rms(&after) > 0.02, "moves again afterwards");

    // Drift on pressure, 60..120 s, 0.5 span per minute: offset grows linearly to 3 bar.
    let p = channel_of(range(55.0, 125.0), channel::PRESSURE);
    let early = mean(&p[sec(0.0)..sec(5.0)]);
    let mid = mean(&p[sec(34.0)..sec(36.0)]); // 30 s into the drift
    let late = mean(&p[sec(63.0)..sec(65.0)]); // 59 s into it
    assert!((mid - early - 1.5).abs() < 0.05, "{early} {mid} {late}");
    assert!((late - early - 2.95).abs() < 0.05, "{early} {mid} {late}");
    let drift = range(60.0, 120.0);
    let first_uncertain = drift
        .iter()
        .position(|s| s.quality[channel::PRESSURE] == Quality::Uncertain)
        .unwrap();
    // Flagged once past 5 % of the 6 bar span: 0.3 bar, 6 s into a 3 bar/min drift.
    assert!(
        (first_uncertain as f64 / f64::from(fs) - 6.0).abs() < 0.1,
        "{first_uncertain}"
    );
    assert!(
        range(125.0, 130.0)
            .iter()
            .all(|s| s.quality[channel::PRESSURE] == Quality::Good)
    );

    // Spikes on vibration, 140..150 s: isolated outliers far beyond anything healthy.
    let healthy = channel_of(range(125.0, 140.0), channel::VIBRATION);
    let limit = healthy.iter().fold(0.0f64, |a, v| a.max(v.abs())) * 1.5;
    let spiky = channel_of(range(140.0, 150.0), channel::VIBRATION);
    let outliers = spiky.iter().filter(|v| v.abs() > limit).count();
    // 5 a second at severity 1: about 50, each a single sample.
    assert!((25..80).contains(&outliers), "{outliers} beyond {limit}");
    let isolated = spiky
        .windows(2)
        .filter(|w| w[0].abs() > limit && w[1].abs() > limit)
        .count();
    assert!(isolated <= 2, "{isolated} back-to-back outliers");

    // Dropout on current, 170..180 s: BAD, holding the last good value.
    let dropout = range(170.0, 180.0);
    let last_good = samples[sec(170.0) - 1].values[channel::CURRENT];
    assert!(
        dropout
            .iter()
            .all(|s| s.quality[channel::CURRENT] == Quality::Bad)
    );
    assert!(
        dropout
            .iter()
            .all(|s| s.values[channel::CURRENT] == last_good)
    );
    assert_eq!(samples[sec(180.0)].quality[channel::CURRENT], Quality::Good);

    // Noise on flow, 200..230 s: a raised floor, flagged UNCERTAIN.
    let quiet = rms(&channel_of(range(185.0, 200.0), channel::FLOW));
    let noisy = rms(&channel_of(range(200.0, 230.0), channel::FLOW));
    assert!(noisy > 5.0 * quiet, "{quiet} -> {noisy}");
    assert!(
        range(200.0, 230.0)
            .iter()
            .all(|s| s.quality[channel::FLOW] == Quality::Uncertain)
    );

    // Nothing else was touched: other sensors are GOOD throughout.
    for s in &samples {
        for ch in [channel::SPEED, channel::SPEED_SETPOINT, channel::RECIPE] {
            assert_eq!(s.quality[ch], Quality::Good);
        }
    }
}

#[test]
fn labels_follow_the_schedule() {
    let scenario = Scenario::named("sensor-faults").unwrap();
    let fs = rate(50);
    let t0 = 1_000_000;
    let mut sim = LineSim::new(&scenario, 1, "pump-1", fs, t0);
    let mut spans = LabelSpans::new();
    // In batches of 7 samples, as the agent would: spans are cut at batch ends, so merge.
    let mut all = Vec::new();
    while sim.next_k() < 50 * 300 {
        let n = (50 * 300 - sim.next_k()).min(7);
        for s in run(&mut sim, n) {
            spans.push(s.ts_us, &s.label);
        }
        all.extend(spans.take(sim.ts_us(sim.next_k())));
    }
    let mut merged: Vec<(i64, i64, &str, Option<&str>)> = Vec::new();
    for span in &all {
        match merged.last_mut() {
            Some(last)
                if last.1 == span.start_us && last.2 == span.fault && last.3 == span.sensor =>
            {
                last.1 = span.end_us
            }
            _ => merged.push((span.start_us, span.end_us, span.fault, span.sensor)),
        }
    }
    let s = |sec: i64| t0 + sec * 1_000_000;
    assert_eq!(
        merged,
        vec![
            (s(0), s(20), "normal", None),
            (s(20), s(40), "sensor_stuck", Some("temperature")),
            (s(40), s(60), "normal", None),
            (s(60), s(120), "sensor_drift", Some("pressure")),
            (s(120), s(140), "normal", None),
            (s(140), s(150), "sensor_spike", Some("vibration")),
            (s(150), s(170), "normal", None),
            (s(170), s(180), "sensor_dropout", Some("current")),
            (s(180), s(200), "normal", None),
            (s(200), s(230), "sensor_noise", Some("flow")),
            (s(230), s(300), "normal", None),
        ]
    );
    // Batches' spans tile time exactly.
    for pair in all.windows(2) {
        assert_eq!(pair[0].end_us, pair[1].start_us);
    }
    // The drift's severity grows to 0.5 (half a span per minute, for a minute).
    let drift_max = all
        .iter()
        .filter(|x| x.fault == "sensor_drift")
        .map(|x| x.severity)
        .fold(0.0f32, f32::max);
    assert!((drift_max - 0.5).abs() < 0.01, "{drift_max}");
}

#[test]
fn the_dominant_label_wins_when_events_overlap() {
    let scenario = Scenario::from_toml_str(
        "name = \"o\"\n\
         [[recipe]]\nid = 1\nspeed_rpm = 1480.0\nload = 0.7\n\
         [[recipe]]\nid = 2\nspeed_rpm = 1400.0\nload = 0.7\n\
         [[event]]\nat = \"0s\"\nkind = \"bearing_outer_race\"\nseverity = 0.4\n\
         [[event]]\nat = \"1s\"\nkind = \"sensor_spike\"\nsensor = \"flow\"\nseverity = 0.9\nduration = \"1s\"\n\
         [[event]]\nat = \"3s\"\nkind = \"recipe_change\"\nrecipe = 2\n",
    )
    .unwrap();
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(10), 0);
    let labels: Vec<_> = run(&mut sim, 50)
        .iter()
        .map(|s| (s.label.fault, s.label.sensor))
        .collect();
    assert_eq!(labels[5], (FaultKind::BearingOuterRace, None));
    assert_eq!(
        labels[15],
        (FaultKind::SensorSpike, Some("flow")),
        "higher severity wins"
    );
    assert_eq!(labels[25], (FaultKind::BearingOuterRace, None));
    assert_eq!(
        labels[35],
        (FaultKind::BearingOuterRace, None),
        "a fault beats a recipe change"
    );
}

#[test]
fn the_default_demo_does_something_within_a_minute() {
    let scenario = Scenario::named("default").unwrap();
    let mut sim = LineSim::new(&scenario, 1, "pump-1", rate(100), 0);
    let samples = run(&mut sim, 100 * 60);
    let mut kinds: Vec<&str> = samples.iter().map(|s| s.label.fault.as_str()).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        vec![
            "normal",
            "recipe_change",
            "normal",
            "sensor_stuck",
            "normal",
            "sensor_spike",
            "bearing_outer_race"
        ]
    );
}

#[test]
fn scenario_files_load_and_their_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // Every shipped file loads from disk to the same scenario as its built-in.
    for name in Scenario::NAMES {
        let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let loaded = Scenario::load(&path).unwrap();
        let built_in = Scenario::named(name).unwrap();
        assert_eq!(loaded.events(), built_in.events());
        assert_eq!(loaded.machine(), built_in.machine());
        assert_eq!(loaded.origin(), path);
    }
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "name = \"bad\"\n[machine]\nbearing_balls = 9\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("bearing_balls"),
        "{err}"
    );

    std::fs::write(
        &path,
        "name = \"bad\"\n[[event]]\nat = \"soon\"\nkind = \"imbalance\"\n",
    )
    .unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("at") && err.contains("soon"),
        "{err}"
    );

    std::fs::write(
        &path,
        "name = \"bad\"\n[[event]]\nat = \"1s\"\nkind = \"sensor_drift\"\nsensor = \"pressure\"\nrecipe = 3\n",
    )
    .unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("`event[0].recipe`"),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    let err = Scenario::load(&missing).unwrap_err().to_string();
    assert!(err.contains("missing.toml"), "{err}");
}
