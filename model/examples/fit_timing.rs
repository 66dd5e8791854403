//! Times the model's hot paths on synthetic data and prints how closely int8 follows float.
//!
//! `cargo run --release -p loopline-model --example fit_timing`

use std::time::Instant;

use loopline_model::{FeatureLayout, FitOptions, fit, stats};

/// A small deterministic generator (the timing must not depend on an RNG crate's version).
struct Lcg(u64);

impl Lcg {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `n` windows of `d` features driven by two latent factors, with independent noise.
fn windows(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let a = rng.next();
            let b = rng.next();
            (0..d)
                .map(|i| {
                    let i = i as f32;
                    10.0 + i + (1.0 + 0.1 * i) * a + (0.5 - 0.05 * i) * a * b + 0.3 * rng.next()
                })
                .collect()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Feature extraction: 8 channels × 1000 samples, as the agent runs it every second.
    let layout = FeatureLayout::new(&["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"])?;
    let mut rng = Lcg(7);
    let signals: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..1000).map(|_| rng.next()).collect())
        .collect();
    let refs: Vec<&[f32]> = signals.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        layout.extract_into(&refs, 1000.0, &mut out)?;
    }
    let per_sample = start.elapsed().as_secs_f64() / f64::from(rounds) / 8000.0;
    println!("features: {:.2} ns per sample", per_sample * 1e9);

    for (n, d) in [(1000usize, 25usize), (5000, 40)] {
        let train = windows(n, d, 1);
        let held_out = windows(1000, d, 2);
        let names: Vec<String> = (0..d).map(|i| format!("c{i}.f")).collect();
        let start = Instant::now();
        let float = fit(&train, names, &FitOptions::default())?;
        let fit_time = start.elapsed();
        let start = Instant::now();
        let int8 = float.quantize(&train)?;
        let quantize_time = start.elapsed();
        let float_scores = float.scores(&held_out)?;
        let start = Instant::now();
        let mut int8_scores = Vec::with_capacity(held_out.len());
        for w in &held_out {
            int8_scores.push(int8.infer(w)?.score);
        }
        let infer_time = start.elapsed() / held_out.len() as u32;
        let relative: Vec<f32> = float_scores
            .iter()
            .zip(&int8_scores)
            .map(|(f, q)| (q - f).abs() / f)
            .collect();
        println!(
            "{n} windows × {d} features: fit {fit_time:.2?}, quantize {quantize_time:.2?}, int8 infer {infer_time:.2?}/window, {} ops",
            int8.ops()
        );
        println!(
            "  held-out: float score p50 {:.4}, int8 p50 {:.4}; Spearman {:.4}; |int8−float|/float p50 {:.3} p95 {:.3}; threshold float {:.4} int8 {:.4}",
            stats::quantile(&float_scores, 0.5).unwrap_or(f32::NAN),
            stats::quantile(&int8_scores, 0.5).unwrap_or(f32::NAN),
            stats::spearman(&float_scores, &int8_scores).unwrap_or(f64::NAN),
            stats::quantile(&relative, 0.5).unwrap_or(f32::NAN),
            stats::quantile(&relative, 0.95).unwrap_or(f32::NAN),
            float.threshold(),
            int8.threshold(),
        );
    }
    Ok(())
}
