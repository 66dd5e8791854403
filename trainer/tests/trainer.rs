//! The trainer against a lake built the way a real one is: each device's agent (line
//! simulator, bootstrap model on the simulated NPU, sealed batches with their inference
//! results and labels) written by ingest's lake writer.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopline_agent::batch::{HealthInputs, Sealer};
use loopline_agent::bootstrap::{self, BootstrapKey};
use loopline_agent::inference::{Inferencer, LoadedModel};
use loopline_ingest::dedup::DedupLimits;
use loopline_ingest::writer::{LakeWriter, WriterOptions};
use loopline_linesim::{LineSim, Scenario};
use loopline_npusim::{Npu, Profile};
use loopline_proto::v1::DeviceId;
use loopline_trainer::eval::{BootLabels, evaluate};
use loopline_trainer::{AnnotationLabel, Metrics, TrainArgs, annotations, lake, run};

/// 2026-03-01T10:59:00Z: the run crosses into the next hour partition.
const T0: i64 = 1_772_362_740_000_000;
const S: i64 = 1_000_000;
const RATE: u32 = 1000;
const DEVICES: [&str; 3] = ["pump-1", "pump-2", "pump-3"];

fn key() -> BootstrapKey {
    BootstrapKey {
        seed: 1,
        sample_rate_hz: NonZeroU32::new(RATE).unwrap(),
        window_samples: u64::from(RATE),
    }
}

/// Writes `seconds` of `scenario` for every device of site `plant`, line `line-1`, in
/// one-second batches, as agents on the bootstrap model and ingest would.
fn build_lake(lake: &Path, scenario: &str, seconds: u64) {
    let scenario = Scenario::named(scenario).unwrap();
    let artifact = bootstrap::model(key()).unwrap();
    let rate = NonZeroU32::new(RATE).unwrap();
    let mut writer = LakeWriter::open(WriterOptions {
        lake: lake.to_owned(),
        ingest_id: "ing-1".into(),
        roll_rows: std::num::NonZeroUsize::new(10_000_000).unwrap(),
        roll_age: Duration::from_secs(3600),
        max_buffered_rows: std::num::NonZeroUsize::new(10_000_000).unwrap(),
        roll_bytes: usize::MAX,
        max_buffered_bytes: usize::MAX,
        zstd_level: 1,
        dedup: DedupLimits {
            window_us: i64::MAX,
            max_ranges: 4096,
        },
        quarantine_max_payload_bytes: 1 << 20,
    })
    .unwrap();
    for (i, device) in DEVICES.iter().enumerate() {
        let model = Arc::new(LoadedModel::new((*artifact).clone()).unwrap());
        let npu = Npu::new(Profile::Hailo8L, i as u64, T0);
        let inferencer = Inferencer::new(model, npu, RATE as usize, 1e6 / f64::from(RATE));
        let line = LineSim::new(&scenario, 1, device, rate, T0);
        let mut sealer = Sealer::new(
            DeviceId::checked("plant", "line-1", device).unwrap(),
            format!("{i:032x}"),
            line,
            inferencer,
        );
        for s in 1..=seconds {
            let k_end = s * u64::from(RATE);
            let sealed = sealer
                .seal(k_end, T0 + s as i64 * S, HealthInputs::default())
                .unwrap();
            writer
                .append(&sealed.batch, tokio::time::Instant::now())
                .unwrap();
        }
    }
    writer.flush().unwrap();
}

fn args(lake: &Path, out: PathBuf, from_s: i64, to_s: i64, champion: Option<PathBuf>) -> TrainArgs {
    TrainArgs {
        lake: lake.to_owned(),
        site: "plant".into(),
        line: "line-1".into(),
        from: T0 + from_s * S,
        to: T0 + to_s * S,
        out,
        version: "line-1-v2".into(),
        seed: 1,
        champion,
        holdout_fraction: 0.4,
        window: Duration::from_secs(1),
        channels: loopline_model::DEFAULT_CHANNELS.map(str::to_owned).to_vec(),
        max_flag_share: 0.2,
        trim_mads: 6.0,
        min_train_windows: 30,
        min_holdout_windows: 10,
        epochs: 40,
        min_steps: 200,
        threshold_quantile: 0.995,
        threshold_margin: 1.5,
    }
}

fn f1(m: &Option<f64>) -> f64 {
    m.unwrap_or(0.0)
}

#[test]
fn demo_recipe_a_model_trained_after_the_change_recovers_and_ignores_labels() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    build_lake(&lake, "demo-recipe", 100);
    let built = started.elapsed();
    let champion = dir.path().join("bootstrap.safetensors");
    std::fs::write(
        &champion,
        bootstrap::model(key()).unwrap().to_bytes().unwrap(),
    )
    .unwrap();

    // Before the change the bootstrap model does its job: judged from the lake's own
    // inference results.
    let scored = lake::read_inference(&lake, "plant", "line-1", T0, T0 + 30 * S).unwrap();
    let labels = lake::read_sim_labels(&lake, "plant", "line-1", T0, T0 + 30 * S).unwrap();
    let before = evaluate(scored.iter().filter(|r| r.end_us < T0 + 30 * S).map(|r| {
        let boot = BootLabels::new(labels.iter().filter(|l| l.device == r.device));
        (r.anomaly, boot.truth(r.start_us, r.end_us))
    }));

    // Train on what followed the change (the speed settles within 10 s).
    let out = dir.path().join("out-1");
    let m: Metrics = run(&args(&lake, out.clone(), 45, 100, Some(champion.clone()))).unwrap();
    let trained = started.elapsed() - built;
    let champ = m.champion.clone().unwrap();
    eprintln!(
        "lake built in {built:?}, trained in {trained:?}\nbootstrap before the change: {before:?}\n{}",
        serde_json::to_string_pretty(&m).unwrap()
    );
    assert!(
        f1(&before.f1) >= 0.9,
        "bootstrap before the change: {before:?}"
    );
    assert_eq!(m.data.devices, 3);
    assert_eq!(m.data.sample_rate_hz, RATE);
    assert_eq!(m.data.windows_total, 3 * 55);
    assert_eq!(m.data.excluded.bad_quality + m.data.excluded.gaps, 0);
    assert!(
        !m.selection.flags_trusted,
        "the bootstrap flags most windows: {:?}",
        m.selection
    );
    assert!(m.selection.running_model_flag_share.unwrap() > 0.5);
    assert!(m.data.excluded.trimmed > 0);
    assert_eq!(champ.version.as_deref(), Some("bootstrap-s1-r1000-w1000"));
    assert!(f1(&champ.f1) < 0.6, "champion after the change: {champ:?}");
    assert!(f1(&m.candidate.f1) >= 0.9, "candidate: {:?}", m.candidate);
    assert!(
        m.candidate.recall.unwrap() >= 0.9,
        "the candidate still flags the faults"
    );
    assert!(m.candidate.faulty_windows >= 10);
    assert_eq!(m.reference.score_quantiles.len(), 21);
    let metrics: Metrics =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics, m);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let artifact = loopline_model::Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(artifact.metadata.model_version, "line-1-v2");
    assert_eq!(artifact.metadata.threshold, m.threshold);
    assert_eq!(artifact.metadata.training.windows, m.data.windows_train);

    // Same inputs and seed: the same bytes.
    let again = dir.path().join("out-2");
    run(&args(&lake, again.clone(), 45, 100, None)).unwrap();
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        bytes
    );

    // Without the ground truth: the same bytes, and nothing to evaluate against.
    std::fs::remove_dir_all(lake.join("sim_labels")).unwrap();
    let blind_out = dir.path().join("out-3");
    let blind = run(&args(&lake, blind_out.clone(), 45, 100, None)).unwrap();
    assert_eq!(
        std::fs::read(blind_out.join("model.safetensors")).unwrap(),
        bytes
    );
    assert_eq!(blind.candidate.labelled_windows, 0);
    assert_eq!(blind.candidate.f1, None);

    eprintln!("whole test {:?}", started.elapsed());
}

#[test]
fn exit_codes_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&lake).unwrap();
    let err = run(&args(&lake, dir.path().join("o"), 0, 10, None)).unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(
        err.to_string()
            .contains("telemetry samples of site=plant/line=line-1"),
        "{err}"
    );
    assert!(!dir.path().join("o/metrics.json").exists());

    let err = run(&args(&lake, dir.path().join("o"), 10, 10, None)).unwrap_err();
    assert_eq!(err.exit_code(), 2);

    let missing = dir.path().join("none.safetensors");
    let err = run(&args(
        &lake,
        dir.path().join("o"),
        0,
        10,
        Some(missing.clone()),
    ))
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("none.safetensors"), "{err}");
}

#[test]
fn too_short_a_range_exits_3_saying_how_much_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    build_lake(&lake, "normal", 12);
    let out = dir.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.json"), b"{}").unwrap();
    // An operator excludes three seconds of one pump: those windows are not trained on,
    // and the message says where the windows went.
    annotations::append(
        &lake,
        "plant",
        "line-1",
        &annotations::Annotation {
            start_us: T0 + 2 * S,
            end_us: T0 + 5 * S,
            device: Some("pump-2".into()),
            label: AnnotationLabel::Exclude,
            note: "seal replaced".into(),
            author: "test".into(),
            created_us: T0 + 200 * S,
        },
    )
    .unwrap();
    let err = run(&args(&lake, out.clone(), 0, 12, None)).unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let text = err.to_string();
    assert!(
        text.contains("training windows") && text.contains("need at least 30"),
        "{text}"
    );
    assert!(
        text.contains("found 21, need at least 30; 36 windows in the range")
            && text.contains("3 annotated"),
        "{text}"
    );
    assert!(
        !out.join("metrics.json").exists(),
        "a stale metrics.json is removed first"
    );
}
