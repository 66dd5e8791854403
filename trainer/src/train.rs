//! The training run: lake → windows → selection → fit → int8 → threshold → evaluation →
//! `model.safetensors` and `metrics.json`.
//!
//! Invariants:
//! - Ground truth never reaches training: `sim_labels` are read only after the artifact's
//!   bytes are fixed, and only to fill the evaluations of `metrics.json`. What training may use
//!   is what a real plant has: the telemetry (with its operating context), operator
//!   annotations and the running model's own flags.
//! - The artifact is a pure function of the lake's rows, the annotations and the flags: the
//!   same inputs and seed give the same bytes (no time, path or environment in it).
//! - The output folder holds `metrics.json` only after a run succeeded: a stale one is removed
//!   first, the artifact is written before it, each by write-fsync-rename.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use loopline_model::{
    Artifact, FeatureLayout, FitOptions, FloatModel, Metadata, TrainingRange, stats,
};

use crate::annotations::{self, Annotation, write_durable};
use crate::cli::{AnnotationLabel, TrainArgs, check_train_args};
use crate::error::{Result, TrainError};
use crate::eval::{BootLabels, Eval, evaluate};
use crate::lake::{self, BootSeries, Scored};
use crate::metrics::{CONTRACT_VERSION, DataSummary, Excluded, Metrics, Reference, Selection};
use crate::windows::{Cut, LayoutIndex, Window, cut, sample_rate_hz};

/// The artifact's file name in `--out`.
pub const MODEL_FILE: &str = "model.safetensors";
/// The metrics' file name in `--out`; its presence means success.
pub const METRICS_FILE: &str = "metrics.json";
/// Rounds of trimming at most: fit, drop what scores above the limit, fit again.
const TRIM_ROUNDS: usize = 3;
/// MAD × this estimates a normal distribution's standard deviation.
const MAD_TO_SIGMA: f32 = 1.4826;

/// The robust upper limit of `scores`: median + `k` × 1.4826 × MAD.
pub fn robust_limit(scores: &[f32], k: f64) -> f32 {
    let Some(median) = stats::quantile(scores, 0.5) else {
        return f32::INFINITY;
    };
    let deviations: Vec<f32> = scores.iter().map(|s| (s - median).abs()).collect();
    let mad = stats::quantile(&deviations, 0.5).unwrap_or(0.0) * MAD_TO_SIGMA;
    let mad = mad.max(median.abs() * 1e-6).max(f32::MIN_POSITIVE);
    median + k as f32 * mad
}

/// What the plant says about one window (no ground truth here).
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    holdout: bool,
    /// Overlaps a `fault` or `exclude` annotation.
    annotated: bool,
    /// Overlaps a `normal` annotation.
    known_normal: bool,
    /// The running model scored it.
    scored: bool,
    /// The running model flagged it.
    flagged: bool,
}

/// Runs one training job (see the crate docs for the contract) and returns what it wrote to
/// `metrics.json`.
pub fn run(args: &TrainArgs) -> Result<Metrics> {
    let started = Instant::now();
    check_train_args(args)?;
    let out = &args.out;
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    let stale = out.join(METRICS_FILE);
    match std::fs::remove_file(&stale) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TrainError::io(stale)(e)),
    }
    let where_ = format!(
        "site={}/line={} in [{}, {})",
        args.site, args.line, args.from, args.to
    );

    let champion = args.champion.as_deref().map(load_champion).transpose()?;
    let channels: Vec<&str> = args.channels.iter().map(String::as_str).collect();
    let layout = FeatureLayout::new(&channels).map_err(|e| TrainError::BadArgument {
        flag: "--channels",
        reason: e.to_string(),
    })?;
    let mut read_channels: Vec<String> = args.channels.clone();
    if let Some((_, champion_layout)) = &champion {
        for c in champion_layout.channels() {
            if !read_channels.contains(c) {
                read_channels.push(c.clone());
            }
        }
    }

    // The data.
    let telemetry_dir = args.lake.join("telemetry");
    let series = lake::read_telemetry(
        &args.lake,
        &args.site,
        &args.line,
        args.from,
        args.to,
        &read_channels,
    )?;
    let series: Vec<BootSeries> = series
        .into_iter()
        .filter(|s| s.channels.iter().any(|c| !c.ts.is_empty()))
        .collect();
    if series.is_empty() {
        return Err(TrainError::NotEnoughData {
            what: format!("telemetry samples of {where_}"),
            found: 0,
            needed: 1,
            detail: format!("; read {}", telemetry_dir.display()),
        });
    }
    for s in &series {
        if let Some((c, _)) = read_channels
            .iter()
            .zip(&s.channels)
            .find(|(_, c)| c.ts.is_empty())
        {
            return Err(TrainError::bad_input(
                &telemetry_dir,
                format!(
                    "device {} (boot {}) reports no `{c}` samples in the range; the model reads it",
                    s.device, s.boot_id
                ),
            ));
        }
    }
    let rate_hz = common_rate(&series, &telemetry_dir)?;
    let window_us = u64::try_from(args.window.as_micros()).unwrap_or(u64::MAX);
    let window_samples = (f64::from(rate_hz) * args.window.as_secs_f64()).round() as usize;
    if window_samples < 2 {
        return Err(TrainError::BadArgument {
            flag: "--window",
            reason: format!(
                "{} holds {window_samples} samples at the data's {rate_hz} Hz; a window needs at least 2",
                humantime::format_duration(args.window)
            ),
        });
    }

    let scored = lake::read_inference(&args.lake, &args.site, &args.line, args.from, args.to)?;
    let mut scored_by_boot: HashMap<(&str, &str), Vec<&Scored>> = HashMap::new();
    for s in &scored {
        scored_by_boot
            .entry((s.device.as_str(), s.boot_id.as_str()))
            .or_default()
            .push(s);
    }

    let mut layouts = vec![index(layout.clone(), &read_channels)?];
    if let Some((_, champion_layout)) = &champion {
        layouts.push(index(champion_layout.clone(), &read_channels)?);
    }
    let mut cut_ = Cut::default();
    for (i, s) in series.iter().enumerate() {
        let boot_scored = scored_by_boot.get(&(s.device.as_str(), s.boot_id.as_str()));
        let anchor = boot_scored
            .and_then(|v| v.first())
            .map(|r| r.start_us)
            .or_else(|| s.channels.first().and_then(|c| c.ts.first().copied()))
            .unwrap_or(args.from);
        cut(i, s, rate_hz, window_samples, anchor, &layouts, &mut cut_)?;
    }
    let Cut {
        windows,
        bad_quality,
        gaps,
    } = cut_;
    let windows_total = windows.len() as u64 + bad_quality + gaps;
    let mut excluded = Excluded {
        bad_quality,
        gaps,
        ..Excluded::default()
    };
    if windows.is_empty() {
        return Err(TrainError::NotEnoughData {
            what: format!("complete windows of good samples of {where_}"),
            found: 0,
            needed: args.min_train_windows + args.min_holdout_windows,
            detail: format!("; {bad_quality} with bad quality, {gaps} with gaps"),
        });
    }

    // What the plant says about each window.
    let notes = annotations::read(&args.lake, &args.site, &args.line, args.from, args.to)?;
    let first = windows
        .iter()
        .map(|w| w.start_us)
        .min()
        .unwrap_or(args.from);
    let last = windows.iter().map(|w| w.end_us).max().unwrap_or(args.to);
    let holdout_from = first + ((1.0 - args.holdout_fraction) * (last - first) as f64) as i64;
    let context: Vec<Context> = windows
        .iter()
        .map(|w| {
            let s = &series[w.series];
            window_context(
                w,
                s,
                &notes,
                scored_by_boot.get(&(s.device.as_str(), s.boot_id.as_str())),
                holdout_from,
            )
        })
        .collect();

    // Training windows.
    let mut train: Vec<usize> = Vec::new();
    for (i, c) in context.iter().enumerate() {
        if c.holdout {
            continue;
        }
        if c.annotated {
            excluded.annotated += 1;
        } else {
            train.push(i);
        }
    }
    let scored_train = train.iter().filter(|&&i| context[i].scored).count();
    let flagged_train = train.iter().filter(|&&i| context[i].flagged).count();
    let flag_share = (scored_train > 0).then(|| flagged_train as f64 / scored_train as f64);
    let flags_trusted = flag_share.is_some_and(|s| s <= args.max_flag_share);
    if flags_trusted {
        train.retain(|&i| {
            let drop = context[i].flagged && !context[i].known_normal;
            excluded.flagged_by_running_model += u64::from(drop);
            !drop
        });
    }
    let options = FitOptions {
        seed: args.seed,
        threshold_quantile: args.threshold_quantile,
        threshold_margin: args.threshold_margin,
        epochs: args.epochs.max(1),
        min_steps: args.min_steps,
        ..FitOptions::default()
    };
    let enough = |train: &[usize], excluded: &Excluded| -> Result<()> {
        if (train.len() as u64) < args.min_train_windows {
            return Err(TrainError::NotEnoughData {
                what: format!(
                    "training windows of {where_} before {holdout_from} (the held-out part starts there)"
                ),
                found: train.len() as u64,
                needed: args.min_train_windows,
                detail: format!(
                    "; {windows_total} windows in the range, left out: {} bad quality, {} gaps, {} annotated, {} flagged by the running model, {} trimmed",
                    excluded.bad_quality,
                    excluded.gaps,
                    excluded.annotated,
                    excluded.flagged_by_running_model,
                    excluded.trimmed
                ),
            });
        }
        Ok(())
    };
    enough(&train, &excluded)?;
    let features = |idx: &[usize]| -> Vec<Vec<f32>> {
        idx.iter()
            .map(|&i| windows[i].features[0].clone())
            .collect()
    };
    let context_feature = layout
        .feature_names()
        .iter()
        .position(|n| *n == format!("{CONTEXT_CHANNEL}.mean"));
    if !flags_trusted {
        // The first round needs no model: each machine's windows at one operating point,
        // feature by feature, against their own median and MAD.
        let outliers = screen(&windows, &train, context_feature, args.trim_mads);
        let before = train.len();
        let mut k = 0;
        train.retain(|&i| {
            let keep = outliers[k] != Some(true) || context[i].known_normal;
            k += 1;
            keep
        });
        excluded.trimmed += (before - train.len()) as u64;
        enough(&train, &excluded)?;
    }
    let mut train_features = features(&train);
    let mut float = fit(&train_features, &layout, &options)?;
    let mut train_scores = float.scores(&train_features)?;
    if !flags_trusted {
        for _ in 0..TRIM_ROUNDS {
            let limit = robust_limit(&train_scores, args.trim_mads);
            let before = train.len();
            let mut k = 0;
            train.retain(|&i| {
                let keep = train_scores[k] <= limit || context[i].known_normal;
                k += 1;
                keep
            });
            let trimmed = before - train.len();
            if trimmed == 0 {
                break;
            }
            excluded.trimmed += trimmed as u64;
            enough(&train, &excluded)?;
            train_features = features(&train);
            float = fit(&train_features, &layout, &options)?;
            train_scores = float.scores(&train_features)?;
        }
    }
    let trim_limit = robust_limit(&train_scores, args.trim_mads);
    let int8 = float.quantize(&train_features)?;

    // The threshold, on held-out windows nothing marks as suspect.
    // Screened like the training windows, per machine and operating point; a window of a
    // group too small to screen is suspect when the model scores it above the trimming limit.
    let holdout: Vec<usize> = (0..windows.len()).filter(|&i| context[i].holdout).collect();
    let screened = screen(&windows, &holdout, context_feature, args.trim_mads);
    let mut holdout_int8 = Vec::with_capacity(holdout.len());
    let mut normal_scores = Vec::new();
    for (&i, outlier) in holdout.iter().zip(screened) {
        let f = &windows[i].features[0];
        let score = int8.infer(f)?.score;
        holdout_int8.push(score);
        let c = &context[i];
        let unusual = match outlier {
            Some(outlier) => outlier,
            None => float.score(f)? > trim_limit,
        };
        let suspect = !c.known_normal && (c.annotated || (flags_trusted && c.flagged) || unusual);
        if !suspect {
            normal_scores.push(score);
        }
    }
    if (normal_scores.len() as u64) < args.min_holdout_windows {
        return Err(TrainError::NotEnoughData {
            what: format!("held-out normal windows of {where_} from {holdout_from}"),
            found: normal_scores.len() as u64,
            needed: args.min_holdout_windows,
            detail: format!(
                "; {} held-out windows, the rest annotated, flagged or above the robust limit; widen the range or raise --holdout-fraction",
                holdout.len()
            ),
        });
    }
    let quantile = stats::quantile(&normal_scores, args.threshold_quantile).unwrap_or(0.0);
    let threshold = quantile * args.threshold_margin;

    let train_start = train
        .iter()
        .map(|&i| windows[i].start_us)
        .min()
        .unwrap_or(first);
    let train_end = train
        .iter()
        .map(|&i| windows[i].end_us)
        .max()
        .unwrap_or(last);
    let mut metadata = Metadata::for_model(
        &int8,
        &args.version,
        TrainingRange {
            start_us: train_start,
            end_us: train_end,
            windows: train.len() as u64,
            window_us,
            sample_rate_hz: f64::from(rate_hz),
        },
    );
    metadata.metrics = [
        ("train.windows", train.len() as f64),
        ("train.loss", f64::from(float.training_loss())),
        ("train.trim_limit", f64::from(trim_limit)),
        ("train.flags_trusted", f64::from(u8::from(flags_trusted))),
        ("holdout.windows", holdout.len() as f64),
        ("holdout.normal_windows", normal_scores.len() as f64),
        ("threshold.int8", f64::from(threshold)),
        ("model.ops", int8.ops() as f64),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_finite())
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut artifact = Artifact::new(metadata, int8)?;
    artifact.set_threshold(threshold)?;
    let bytes = artifact.to_bytes()?;

    // Evaluation: the only place labels are read.
    let labels = lake::read_sim_labels(&args.lake, &args.site, &args.line, holdout_from, args.to)?;
    let mut by_boot: HashMap<(&str, &str), Vec<&lake::LabelSpan>> = HashMap::new();
    for l in &labels {
        by_boot
            .entry((l.device.as_str(), l.boot_id.as_str()))
            .or_default()
            .push(l);
    }
    let boot_labels: Vec<BootLabels> = series
        .iter()
        .map(|s| {
            BootLabels::new(
                by_boot
                    .get(&(s.device.as_str(), s.boot_id.as_str()))
                    .into_iter()
                    .flatten()
                    .copied(),
            )
        })
        .collect();
    let truth = |i: usize| {
        let w = &windows[i];
        boot_labels[w.series].truth(w.start_us, w.end_us)
    };
    let candidate = evaluate(
        holdout
            .iter()
            .zip(&holdout_int8)
            .map(|(&i, &s)| (s > threshold, truth(i))),
    );
    let champion_eval = match &champion {
        None => None,
        Some((artifact, _)) => {
            let mut flags = Vec::with_capacity(holdout.len());
            for &i in &holdout {
                flags.push((
                    artifact.model.infer(&windows[i].features[1])?.anomaly,
                    truth(i),
                ));
            }
            Some(Eval {
                version: Some(artifact.metadata.model_version.clone()),
                ..evaluate(flags)
            })
        }
    };

    let metrics = Metrics {
        contract: CONTRACT_VERSION,
        version: args.version.clone(),
        site: args.site.clone(),
        line: args.line.clone(),
        seed: args.seed,
        gpus: gpus(),
        duration_ms: 0,
        data: DataSummary {
            from_us: args.from,
            to_us: args.to,
            devices: {
                let mut d: Vec<&str> = series.iter().map(|s| s.device.as_str()).collect();
                d.dedup();
                d.len() as u64
            },
            sample_rate_hz: rate_hz,
            window_us,
            windows_total,
            windows_train: train.len() as u64,
            windows_holdout: holdout.len() as u64,
            windows_holdout_normal: normal_scores.len() as u64,
            holdout_from_us: holdout_from,
            excluded,
        },
        threshold,
        training_loss: float.training_loss(),
        reference: Reference {
            score_quantiles: (0..=20)
                .map(|q| stats::quantile(&holdout_int8, f64::from(q) / 20.0).unwrap_or(0.0))
                .collect(),
            anomaly_rate: candidate.anomaly_rate,
        },
        candidate,
        champion: champion_eval,
        selection: Selection {
            running_model_flag_share: flag_share,
            flags_trusted,
            trim_limit,
        },
    };

    write_durable(
        &out.join(format!(".{MODEL_FILE}.tmp")),
        &out.join(MODEL_FILE),
        &bytes,
    )?;
    let metrics = Metrics {
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..metrics
    };
    let json = serde_json::to_vec_pretty(&metrics)
        .map_err(|e| TrainError::Internal(format!("metrics.json: {e}")))?;
    write_durable(
        &out.join(format!(".{METRICS_FILE}.tmp")),
        &out.join(METRICS_FILE),
        &json,
    )?;
    Ok(metrics)
}

/// The operating-context tag whose value separates operating points (exact, noise-free).
const CONTEXT_CHANNEL: &str = "speed_setpoint";
/// Fewest windows of a (device, operating point) group for its median and MAD to mean
/// something; smaller groups are not screened.
const MIN_GROUP: usize = 10;

/// Robust screening without a model: for each (device, operating point) group of the
/// windows `idx`, a window is an outlier when any feature lies more than `k` normal-consistent
/// MADs from the group's median. Grouping by machine and operating point keeps a machine that
/// differs from its neighbours, or a recipe that is rarer than another, from looking anomalous.
fn screen(windows: &[Window], idx: &[usize], context: Option<usize>, k: f64) -> Vec<Option<bool>> {
    let mut groups: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
    for (pos, &i) in idx.iter().enumerate() {
        let w = &windows[i];
        let key = context.map_or(0, |c| w.features[0][c].to_bits());
        groups.entry((w.series, key)).or_default().push(pos);
    }
    let mut outlier = vec![None; idx.len()];
    let width = windows.first().map_or(0, |w| w.features[0].len());
    let mut column = Vec::new();
    for members in groups.values().filter(|m| m.len() >= MIN_GROUP) {
        for &p in members {
            outlier[p] = Some(false);
        }
        for f in 0..width {
            column.clear();
            column.extend(members.iter().map(|&p| windows[idx[p]].features[0][f]));
            let Some(median) = stats::quantile(&column, 0.5) else {
                continue;
            };
            let deviations: Vec<f32> = column.iter().map(|x| (x - median).abs()).collect();
            let mad = stats::quantile(&deviations, 0.5).unwrap_or(0.0) * MAD_TO_SIGMA;
            // A feature constant within the group (a setpoint) moves only by rounding.
            let mad = mad.max(median.abs() * 1e-4).max(1e-6);
            let limit = k as f32 * mad;
            for (&p, x) in members.iter().zip(&column) {
                if (x - median).abs() > limit {
                    outlier[p] = Some(true);
                }
            }
        }
    }
    outlier
}

fn fit(features: &[Vec<f32>], layout: &FeatureLayout, options: &FitOptions) -> Result<FloatModel> {
    Ok(loopline_model::fit(
        features,
        layout.feature_names().to_vec(),
        options,
    )?)
}

fn index(layout: FeatureLayout, channels: &[String]) -> Result<LayoutIndex> {
    LayoutIndex::new(layout, channels).map_err(TrainError::Internal)
}

/// The champion artifact and its feature layout.
fn load_champion(path: &Path) -> Result<(Artifact, FeatureLayout)> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TrainError::bad_input(path, "the --champion artifact does not exist")
        } else {
            TrainError::io(path)(e)
        }
    })?;
    let artifact = Artifact::from_bytes(&bytes)
        .map_err(|e| TrainError::bad_input(path, format!("not a model artifact: {e}")))?;
    let layout = artifact
        .metadata
        .feature_layout()
        .map_err(|e| TrainError::bad_input(path, e.to_string()))?;
    Ok((artifact, layout))
}

/// The one sample rate of every series; one model needs one rate.
fn common_rate(series: &[BootSeries], telemetry_dir: &Path) -> Result<u32> {
    let rates: Vec<(u32, &BootSeries)> = series
        .iter()
        .filter_map(|s| sample_rate_hz(s).map(|r| (r, s)))
        .collect();
    let Some(&(rate, _)) = rates.first() else {
        return Err(TrainError::NotEnoughData {
            what: "samples per device boot to find the sample rate".into(),
            found: 1,
            needed: 2,
            detail: String::new(),
        });
    };
    if let Some((other, s)) = rates.iter().find(|(r, _)| *r != rate) {
        return Err(TrainError::bad_input(
            telemetry_dir,
            format!(
                "device {} samples at {other} Hz and {} at {rate} Hz; one model needs one rate (train the devices apart)",
                s.device, rates[0].1.device
            ),
        ));
    }
    Ok(rate)
}

fn window_context(
    w: &Window,
    s: &BootSeries,
    notes: &[Annotation],
    scored: Option<&Vec<&Scored>>,
    holdout_from: i64,
) -> Context {
    let mut c = Context {
        holdout: w.start_us >= holdout_from,
        ..Context::default()
    };
    for n in notes
        .iter()
        .filter(|n| n.covers(&s.device, w.start_us, w.end_us))
    {
        match n.label {
            AnnotationLabel::Fault | AnnotationLabel::Exclude => c.annotated = true,
            AnnotationLabel::Normal => c.known_normal = true,
        }
    }
    if let Some(rows) = scored {
        // Rows are sorted by start: those starting after the window cannot overlap it.
        let upto = rows.partition_point(|r| r.start_us <= w.end_us);
        for r in rows[..upto].iter().filter(|r| r.end_us >= w.start_us) {
            c.scored = true;
            c.flagged |= r.anomaly;
        }
    }
    c
}

/// The GPUs this job was given, from `CUDA_VISIBLE_DEVICES`.
fn gpus() -> Vec<String> {
    std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Appends an operator annotation from the `annotate` subcommand's flags.
pub fn annotate(args: &crate::cli::AnnotateArgs) -> Result<std::path::PathBuf> {
    let created_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let author = args
        .author
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    annotations::append(
        &args.lake,
        &args.site,
        &args.line,
        &Annotation {
            start_us: args.from,
            end_us: args.to,
            device: args.device.clone(),
            label: args.label,
            note: args.note.clone(),
            author,
            created_us,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_robust_limit_ignores_a_minority_of_outliers() {
        let mut scores: Vec<f32> = (0..80).map(|i| 1.0 + 0.01 * (i % 10) as f32).collect();
        scores.extend([50.0; 20]);
        let limit = robust_limit(&scores, 6.0);
        assert!(limit > 1.09 && limit < 2.0, "{limit}");
        assert_eq!(robust_limit(&[], 6.0), f32::INFINITY);
        // Constant scores: the limit sits just above them.
        let flat = robust_limit(&[2.0; 10], 6.0);
        assert!(flat > 2.0 && flat < 2.001, "{flat}");
    }
}
