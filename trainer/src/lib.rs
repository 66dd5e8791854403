//! Loopline's trainer: reads a line's data from the lake, trains the anomaly model, quantises
//! it to int8, sets its threshold on held-out data, evaluates it (and the running model) and
//! writes `model.safetensors` and `metrics.json`.
//!
//! Dispatch runs it as a job on its GPU pool (a local slot or a Slurm allocation); any
//! command that honours the same contract can replace it, a PyTorch script on a real cluster
//! included. The contract is `docs/training.md`: the flags ([`TrainArgs`]), the outputs
//! (the artifact, then [`Metrics`] as `metrics.json`, each written to a temporary name and
//! renamed, `metrics.json` last so that its presence means success) and the exit codes
//! (0 success; 2 bad arguments or input; 3 not enough usable data; 75 an I/O failure that may
//! pass; see [`TrainError::exit_code`]).
//!
//! # How this crate is laid out
//!
//! - [`cli`]: the flags, parsed once into typed values, and the `annotate` subcommand.
//! - [`lake`]: partition pruning and the Arrow readers of `telemetry`, `inference` and
//!   `sim_labels`.
//! - [`annotations`]: the operators' annotations table, written and read.
//! - [`windows`]: each device boot's samples cut into the agent's windows, and their features.
//! - [`train`] (the run), [`eval`] (judging flags against ground truth) and [`metrics`] (the
//!   report's types).
//!
//! # What training may use
//!
//! A real plant has no ground truth, so training uses only what it has: the telemetry
//! (including the operating context the line reports, the speed setpoint the model reads), the
//! operators' annotations (`fault` and `exclude` spans are never trained on, `normal` ones are
//! always kept) and the running model's flags from the `inference` table. When the running
//! model flags a small share of the training windows (at most `--max-flag-share`), those
//! windows are likely real faults and are left out. When it flags more, the operating point
//! has moved (a new recipe) and its flags say nothing; robust trimming takes over: fit, score,
//! leave out what scores above median + k·MAD, fit again. The simulator's `sim_labels` are read
//! only to evaluate, after the artifact's bytes are fixed; a test deletes them and gets the
//! same artifact.
//!
//! # Why Loopline's own training code, on the CPU
//!
//! The model is the small dense autoencoder of [`loopline_model`] (about 2 000 operations
//! per window), and the trainer fits it with that crate's [`loopline_model::fit`], the same
//! code that fits the agent's bootstrap model, rather than with a tensor framework such as
//! candle:
//!
//! - **One definition of the model.** Normalisation, architecture, score and threshold rule
//!   exist once; the int8 quantiser and the artifact format read the float model's exact
//!   structure. A second implementation in a framework would have to agree with it bit for bit
//!   on the score that the threshold is set on.
//! - **Determinism.** `fit` gives bit-identical weights for the same windows and seed on any
//!   IEEE-754 machine (fixed reduction order, its own random stream), which is what makes a
//!   training job reproducible and this crate's byte-identical-artifact test possible. GPU
//!   kernels (cuBLAS reductions, atomics) do not promise that.
//! - **Size.** Thousands of windows train in well under a second on one core; a GPU's launch
//!   and transfer overheads exceed the work, and a framework would add hundreds of
//!   dependencies (and CUDA toolkits) to a small binary.
//!
//! Using a GPU would take a bigger model: one whose training is dominated by large matrix
//! products (a convolutional or recurrent model over raw samples rather than window features,
//! or one model over many lines). That model would be written in a framework (candle with its
//! CUDA backend, or PyTorch behind the same job contract), export its int8 weights in this
//! artifact format (or a new model family the agent learns to run), and give up bit-exact
//! reproducibility for tolerance-based checks. Until then the trainer runs on the CPU, and
//! records the GPUs dispatch gave it (`CUDA_VISIBLE_DEVICES`) in `metrics.json` so that the
//! pool's accounting stays honest.

pub mod annotations;
pub mod cli;
pub mod error;
pub mod eval;
pub mod lake;
pub mod metrics;
pub mod train;
pub mod windows;

pub use cli::{AnnotateArgs, AnnotationLabel, TrainArgs, TrainCommand, TrainSubcommand};
pub use error::{
    EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOT_ENOUGH_DATA, EXIT_OK, EXIT_TEMPFAIL, Result, TrainError,
};
pub use eval::Eval;
pub use metrics::{CONTRACT_VERSION, DataSummary, Excluded, Metrics, Reference, Selection};
pub use train::{METRICS_FILE, MODEL_FILE, annotate, run};

/// Runs `loopline-train` (or `loopline train`) as parsed, reporting on stderr, and returns the
/// process exit code of the contract.
pub fn main_with(command: TrainCommand) -> i32 {
    let outcome = match (&command.command, &command.train) {
        (Some(TrainSubcommand::Annotate(args)), _) => annotate(args).map(|path| {
            eprintln!("annotation written: {}", path.display());
        }),
        (None, Some(args)) => run(args).map(|m| {
            let f1 = |e: &Eval| e.f1.map_or("n/a".to_owned(), |f| format!("{f:.3}"));
            eprintln!(
                "model {} written to {}: {} training windows, {} held out; threshold {:.4}; F1 on held-out windows {}{}",
                m.version,
                args.out.display(),
                m.data.windows_train,
                m.data.windows_holdout,
                m.threshold,
                f1(&m.candidate),
                m.champion
                    .as_ref()
                    .map(|c| format!(" (running model {})", f1(c)))
                    .unwrap_or_default(),
            );
        }),
        (None, None) => Err(TrainError::BadArgument {
            flag: "--lake",
            reason: "give the training flags (see --help) or a subcommand".into(),
        }),
    };
    match outcome {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("loopline-train: {e}");
            e.exit_code()
        }
    }
}
