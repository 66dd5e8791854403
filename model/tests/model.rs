//! End to end through the public API: signals → features → fit → int8 → artifact bytes →
//! signed release → verified and loaded model scoring normal and faulty windows.

#![allow(clippy::unwrap_used)]

use loopline_model::release::{self, ReleaseError};
use loopline_model::{
    Artifact, FeatureLayout, FitOptions, TrainingRange, fit, stats, train_int8, window_features,
};
use proptest::prelude::*;

const CHANNELS: [&str; 5] = ["vibration", "temperature", "current", "pressure", "speed"];
const SAMPLES: usize = 500;
const INTERVAL_US: f64 = 1000.0;

/// A deterministic generator for the test signals.
struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Roughly Gaussian: the sum of four uniforms, unit variance.
    fn noise(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Bearing defect: impulses in the vibration, not explained by the load.
    Bearing,
    /// Current far above what the load and speed explain.
    Overcurrent,
}

/// One window of five physically linked channels at operating load `load` (0.5..1.5).
fn window(rng: &mut Lcg, load: f32, fault: Fault) -> Vec<Vec<f32>> {
    let speed = 1000.0 + 400.0 * load;
    let mut vibration = Vec::with_capacity(SAMPLES);
    let mut temperature = Vec::with_capacity(SAMPLES);
    let mut current = Vec::with_capacity(SAMPLES);
    let mut pressure = Vec::with_capacity(SAMPLES);
    let mut rpm = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let t = i as f32 * 1e-3;
        let phase = std::f32::consts::TAU * speed / 60.0 * t;
        let mut v = 0.3 * load * phase.sin() + 0.05 * rng.noise();
        if fault == Fault::Bearing && i % 37 == 0 {
            v += 2.5;
        }
        vibration.push(v);
        temperature.push(40.0 + 15.0 * load + 0.1 * rng.noise());
        let extra = if fault == Fault::Overcurrent {
            6.0
        } else {
            0.0
        };
        current.push(8.0 * load + extra + 0.2 * rng.noise());
        pressure.push(101_325.0 + 2000.0 * load + 20.0 * rng.noise());
        rpm.push(speed + 2.0 * rng.noise());
    }
    vec![vibration, temperature, current, pressure, rpm]
}

fn features(layout: &FeatureLayout, rng: &mut Lcg, load: f32, fault: Fault) -> Vec<f32> {
    let w = window(rng, load, fault);
    let refs: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    layout.extract(&refs, INTERVAL_US).unwrap()
}

fn dataset(layout: &FeatureLayout, n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let load = 1.0 + 0.5 * rng.uniform();
            features(layout, &mut rng, load, Fault::None)
        })
        .collect()
}

fn range(windows: u64) -> TrainingRange {
    TrainingRange {
        start_us: 1_767_225_600_000_000,
        end_us: 1_767_225_600_000_000 + windows as i64 * 500_000,
        windows,
        window_us: 500_000,
        sample_rate_hz: 1000.0,
    }
}

fn layout() -> FeatureLayout {
    FeatureLayout::new(&CHANNELS).unwrap()
}

#[test]
fn layout_gives_25_named_features() {
    let layout = layout();
    assert_eq!(layout.feature_count(), 25);
    assert_eq!(layout.feature_names()[0], "vibration.rms");
    assert_eq!(layout.feature_names()[24], "speed.trend");
    let w = window(&mut Lcg(1), 1.0, Fault::None);
    let refs: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let f = layout.extract(&refs, INTERVAL_US).unwrap();
    assert_eq!(f[5..10], window_features(&w[1], INTERVAL_US));
    // temperature.mean at load 1.0 is 55.
    assert!((f[8] - 55.0).abs() < 0.05, "{}", f[8]);
}

#[test]
fn int8_scores_track_float_scores_on_held_out_windows() {
    let layout = layout();
    let train = dataset(&layout, 1000, 1);
    let held_out = dataset(&layout, 400, 2);
    let float = fit(
        &train,
        layout.feature_names().to_vec(),
        &FitOptions::default(),
    )
    .unwrap();
    let int8 = float.quantize(&train).unwrap();

    let f: Vec<f32> = float.scores(&held_out).unwrap();
    let q: Vec<f32> = held_out
        .iter()
        .map(|w| int8.infer(w).unwrap().score)
        .collect();
    let rho = stats::spearman(&f, &q).unwrap();
    assert!(rho > 0.97, "Spearman {rho}");
    let relative: Vec<f32> = f.iter().zip(&q).map(|(f, q)| (q - f).abs() / f).collect();
    let p50 = stats::quantile(&relative, 0.5).unwrap();
    let p95 = stats::quantile(&relative, 0.95).unwrap();
    assert!(
        p50 < 0.05 && p95 < 0.2,
        "relative error p50 {p50} p95 {p95}"
    );
    // Normal held-out windows raise (almost) no alarms in either model.
    let float_alarms = f.iter().filter(|&&s| s > float.threshold()).count();
    let int8_alarms = held_out
        .iter()
        .filter(|w| int8.infer(w).unwrap().anomaly)
        .count();
    assert!(
        float_alarms <= 4 && int8_alarms <= 4,
        "{float_alarms} {int8_alarms}"
    );
    assert_eq!(int8.feature_names(), layout.feature_names());
    // 25→16→4→16→25 plus the error sum: 2·(400+64+64+400) + 2·25.
    assert_eq!(int8.ops(), 1906);
}

#[test]
fn faults_score_above_the_threshold_after_a_round_trip() {
    let layout = layout();
    let train = dataset(&layout, 800, 3);
    let artifact = train_int8(
        &train,
        layout.feature_names().to_vec(),
        &FitOptions::default(),
        "line-7@1",
        range(800),
    )
    .unwrap();
    let loaded = Artifact::from_bytes(&artifact.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded, artifact);
    let model = &loaded.model;
    let layout_back = loaded.metadata.feature_layout().unwrap();
    assert_eq!(layout_back, layout);

    // Bearing impulses push vibration features tens of σ out: far above the threshold even
    // though the int8 input saturates. A current that no longer matches the load is subtler:
    // every feature stays within a few σ, only their relation breaks.
    let mut rng = Lcg(99);
    for (fault, factor) in [(Fault::Bearing, 3.0), (Fault::Overcurrent, 1.0)] {
        for load in [0.6, 1.0, 1.4] {
            let f = features(&layout, &mut rng, load, fault);
            let inference = model.infer(&f).unwrap();
            assert!(
                inference.anomaly && inference.score > factor * model.threshold(),
                "load {load}: score {} threshold {}",
                inference.score,
                model.threshold()
            );
        }
    }
    let normal = features(&layout, &mut rng, 1.1, Fault::None);
    assert!(!model.infer(&normal).unwrap().anomaly);

    let m = &loaded.metadata.metrics;
    assert_eq!(m["train.windows"], 800.0);
    assert!(m["int8.spearman"] > 0.97, "{}", m["int8.spearman"]);
    assert!(m["int8.anomaly_agreement"] > 0.99);
    assert_eq!(m["threshold.int8"], f64::from(model.threshold()));
    assert_eq!(m["model.ops"], 1906.0);
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let layout = layout();
    let train = dataset(&layout, 300, 4);
    let names = layout.feature_names().to_vec();
    let make = |seed| {
        let options = FitOptions {
            seed,
            ..FitOptions::default()
        };
        train_int8(&train, names.clone(), &options, "v", range(300))
            .unwrap()
            .to_bytes()
            .unwrap()
    };
    let a = make(1);
    assert_eq!(release::sha256(&a), release::sha256(&make(1)));
    assert_ne!(release::sha256(&a), release::sha256(&make(2)));
}

#[test]
fn signed_release_verifies_and_tampering_is_caught() {
    let layout = layout();
    let train = dataset(&layout, 200, 5);
    let bytes = train_int8(
        &train,
        layout.feature_names().to_vec(),
        &FitOptions::default(),
        "v9",
        range(200),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    let key = release::signing_key_from_seed(42);
    let digest = release::sha256(&bytes);
    let signature = release::sign(&digest, &key);
    let vk = release::verifying_key_from_hex(&hex_of(&key.verifying_key().to_bytes())).unwrap();
    release::verify(&bytes, &digest, &signature, &vk).unwrap();

    // A weight flipped in transit still parses as a model; only the digest catches it.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(matches!(
        release::verify(&tampered, &digest, &signature, &vk),
        Err(ReleaseError::DigestMismatch { .. })
    ));
    // Re-hashed by the attacker: the signature catches it.
    let digest2 = release::sha256(&tampered);
    assert!(matches!(
        release::verify(&tampered, &digest2, &signature, &vk),
        Err(ReleaseError::BadSignature { .. })
    ));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_truncation_is_a_clean_error() {
    let layout = layout();
    let train = dataset(&layout, 100, 6);
    let options = FitOptions {
        epochs: 1,
        min_steps: 10,
        ..FitOptions::default()
    };
    let bytes = train_int8(
        &train,
        layout.feature_names().to_vec(),
        &options,
        "t",
        range(100),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    for len in 0..bytes.len() {
        assert!(Artifact::from_bytes(&bytes[..len]).is_err(), "length {len}");
    }
    assert!(Artifact::from_bytes(&bytes).is_ok());
}

fn small_artifact_bytes() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(train_small_artifact).clone()
}

fn train_small_artifact() -> Vec<u8> {
    let layout = FeatureLayout::new(&["a", "b"]).unwrap();
    let mut rng = Lcg(8);
    let train: Vec<Vec<f32>> = (0..60)
        .map(|_| {
            let x = rng.uniform();
            let a: Vec<f32> = (0..50).map(|_| x + 0.1 * rng.noise()).collect();
            let b: Vec<f32> = (0..50).map(|_| 2.0 * x + 0.1 * rng.noise()).collect();
            layout.extract(&[&a, &b], 1000.0).unwrap()
        })
        .collect();
    let options = FitOptions {
        epochs: 1,
        min_steps: 10,
        hidden: vec![6, 2],
        ..FitOptions::default()
    };
    train_int8(
        &train,
        layout.feature_names().to_vec(),
        &options,
        "p",
        range(60),
    )
    .unwrap()
    .to_bytes()
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random byte corruption: loading gives a model or an error, never a panic, and a model
    /// that loads still scores without panicking.
    #[test]
    fn corrupted_artifacts_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = small_artifact_bytes();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] ^= value | 1;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(artifact) = Artifact::from_bytes(&bytes) {
            let n = artifact.model.feature_names().len();
            let _ = artifact.model.infer(&vec![0.5; n]);
            let _ = artifact.model.infer(&vec![1e30; n]);
            let _ = artifact.to_bytes();
        }
    }
}
