//! The model registry: every model a line was ever offered, which one is its champion, and why.
//!
//! Layout, under the lake so that the models sit beside the data they were trained on:
//!
//! ```text
//! <lake>/_models/<line>/<version>/model.safetensors   the artifact, as the trainer wrote it
//! <lake>/_models/<line>/<version>/metrics.json        the trainer's evaluation, verbatim
//! <lake>/_models/<line>/<version>/lineage.json        data range, trigger, job, backend, GPUs, parent
//! <lake>/_models/<line>/<version>/release.pb          the signed ModelRelease, once signed
//! <lake>/_models/<line>/champion                      the champion's version, one line
//! <lake>/_models/<line>/history.jsonl                 one JSON object per promotion or rollback
//! ```
//!
//! Design invariants:
//!
//! - A version folder appears whole or not at all: it is assembled under a hidden staging name
//!   (`.staging-<version>`), every file and the folder synced, then renamed into place. A folder
//!   whose name starts with `.` is never a model.
//! - Nothing is registered that an agent would refuse to load: the artifact is parsed in full,
//!   and its metadata version, `metrics.json`'s `version` and `line` must all be the version and
//!   line it is registered as.
//! - `champion` changes atomically (temporary file, fsync, rename, fsync of the folder), so a
//!   crash leaves the old champion or the new one. It is written before the history record,
//!   so the record of a change can be missing after a crash, never the reverse.
//! - Registering the same artifact again under the same version is a no-op (a dispatch that
//!   restarts after registering may do it twice); another artifact under a taken version is an
//!   error: a version names one model forever, because agents and reports name models by it.
//! - One dispatch process owns a registry; the registry takes no locks.
//! - [`decide_promotion`] is pure: the numbers in, the decision and its reason out.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use loopline_model::Artifact;
use loopline_proto::Message;
use loopline_proto::topic::validate_segment;
use loopline_proto::v1::ModelRelease;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The registry's folder under the lake.
pub const MODELS_DIR: &str = "_models";
/// The artifact's file name, in a job's output folder and in the registry.
pub const MODEL_FILE: &str = "model.safetensors";
/// The trainer's evaluation, in a job's output folder and in the registry.
pub const METRICS_FILE: &str = "metrics.json";
/// Where the model came from.
pub const LINEAGE_FILE: &str = "lineage.json";
/// The signed release.
pub const RELEASE_FILE: &str = "release.pb";
/// The file naming a line's champion.
pub const CHAMPION_FILE: &str = "champion";
/// A line's promotions and rollbacks.
pub const HISTORY_FILE: &str = "history.jsonl";

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file holds something it should not.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A line or version is not usable as a folder name (nor as a topic segment).
    #[error("{0}")]
    BadName(#[from] loopline_proto::topic::TopicError),
    /// The line has no such version.
    #[error("line {line} has no model {version} (no {path})")]
    NotRegistered {
        /// The line.
        line: String,
        /// The version asked for.
        version: String,
        /// Where it would be.
        path: PathBuf,
    },
    /// Another artifact is registered under this version.
    #[error("{path}: version {version} is already registered with another artifact")]
    AlreadyRegistered {
        /// The registered artifact.
        path: PathBuf,
        /// The version.
        version: String,
    },
    /// A rollback to a version that never was the line's champion.
    #[error("line {line}: cannot roll back to {version}, which was never its champion")]
    NeverChampion {
        /// The line.
        line: String,
        /// The version asked for.
        version: String,
    },
}

/// `type Result` of this module.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A model's figures on held-out data. `None` where a figure is undefined (null in
/// `metrics.json`): F1 and recall without any fault in the data, precision when the model
/// flagged nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Eval {
    /// F1 of the anomaly flags against the labelled faults.
    pub f1: Option<f64>,
    /// Fraction of flagged windows that were faults.
    pub precision: Option<f64>,
    /// Fraction of faulty windows that were flagged.
    pub recall: Option<f64>,
    /// Fraction of windows flagged; without faults in the data, the false-alarm rate.
    pub anomaly_rate: Option<f64>,
}

/// The running champion's figures, measured by the trainer on the candidate's held-out data.
#[derive(Debug, Clone, PartialEq)]
pub struct ChampionEval {
    /// The champion's version.
    pub version: String,
    /// Its figures.
    pub eval: Eval,
}

/// What dispatch reads from a job's `metrics.json`. The whole document is kept in
/// [`Metrics::raw`]; the fields here are those dispatch decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    /// `version`: the candidate's version.
    pub version: String,
    /// `line`.
    pub line: String,
    /// `candidate.{f1,precision,recall,anomaly_rate}`.
    pub candidate: Eval,
    /// `champion`: null when the line had no model to compare with.
    pub champion: Option<ChampionEval>,
    /// `data.from_us`: start of the training data, microseconds since the Unix epoch.
    pub data_from_us: i64,
    /// `data.to_us`: its end.
    pub data_to_us: i64,
    /// The document as the trainer wrote it.
    pub raw: Value,
}

impl Metrics {
    /// Parses `metrics.json`; `path` names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Metrics> {
        let invalid = |reason: String| RegistryError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let raw: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if !raw.is_object() {
            return Err(invalid("not a JSON object".to_owned()));
        }
        let string = |key: &str| -> Result<String> {
            match pointer(&raw, key) {
                Some(Value::String(s)) => Ok(s.clone()),
                other => Err(invalid(format!(
                    "`{key}`: expected a string, found {}",
                    shown(other)
                ))),
            }
        };
        let integer = |key: &str| -> Result<i64> {
            pointer(&raw, key).and_then(Value::as_i64).ok_or_else(|| {
                invalid(format!(
                    "`{key}`: expected an integer (microseconds), found {}",
                    shown(pointer(&raw, key))
                ))
            })
        };
        let eval = |prefix: &str| -> Result<Eval> {
            let figure = |name: &str| -> Result<Option<f64>> {
                let key = format!("{prefix}.{name}");
                match pointer(&raw, &key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Ok(Some(v)),
                        _ => Err(invalid(format!("`{key}`: {n} is not in [0, 1]"))),
                    },
                    other => Err(invalid(format!(
                        "`{key}`: expected a number or null, found {}",
                        shown(other)
                    ))),
                }
            };
            Ok(Eval {
                f1: figure("f1")?,
                precision: figure("precision")?,
                recall: figure("recall")?,
                anomaly_rate: figure("anomaly_rate")?,
            })
        };
        let champion = match raw.get("champion") {
            None | Some(Value::Null) => None,
            Some(Value::Object(_)) => Some(ChampionEval {
                version: string("champion.version")?,
                eval: eval("champion")?,
            }),
            Some(other) => {
                return Err(invalid(format!(
                    "`champion`: expected null or an object, found {other}"
                )));
            }
        };
        let metrics = Metrics {
            version: string("version")?,
            line: string("line")?,
            candidate: eval("candidate")?,
            champion,
            data_from_us: integer("data.from_us")?,
            data_to_us: integer("data.to_us")?,
            raw: Value::Null,
        };
        if metrics.data_from_us > metrics.data_to_us {
            return Err(invalid(format!(
                "`data.from_us` {} is after `data.to_us` {}",
                metrics.data_from_us, metrics.data_to_us
            )));
        }
        Ok(Metrics { raw, ..metrics })
    }
}

/// `a.b` → the value at `/a/b`.
fn pointer<'a>(value: &'a Value, dotted: &str) -> Option<&'a Value> {
    value.pointer(&format!("/{}", dotted.replace('.', "/")))
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".to_owned(), Value::to_string)
}

/// Where a model came from, kept as `lineage.json` beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// Start of the training data, microseconds since the Unix epoch.
    pub data_from_us: i64,
    /// End of the training data.
    pub data_to_us: i64,
    /// Why the job ran (the trigger and its reason, e.g. `drift: PSI 0.31 on vib.rms`).
    pub trigger: String,
    /// Dispatch's job id.
    pub job_id: String,
    /// The backend that ran it (`local`, `slurm`).
    pub backend: String,
    /// The GPU indices it ran on, when known.
    pub gpus: Vec<u32>,
    /// When the model was registered, microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// The line's champion when the job started: the model this one was meant to replace.
    pub parent_champion: Option<String>,
}

/// One registered model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The line.
    pub line: String,
    /// The version.
    pub version: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Its `metrics.json`.
    pub metrics: Metrics,
    /// Its `lineage.json`.
    pub lineage: Lineage,
    /// Whether a signed release is stored.
    pub signed: bool,
}

impl ModelEntry {
    /// The artifact file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// The artifact's bytes.
    pub fn read_artifact(&self) -> Result<Vec<u8>> {
        read(&self.model_path())
    }
}

/// What happened to a line's champion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryAction {
    /// A better model became champion.
    Promote,
    /// An earlier champion came back.
    Rollback,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRecord {
    /// When, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// What.
    pub action: HistoryAction,
    /// The new champion.
    pub version: String,
    /// The champion before, if any.
    pub previous: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// The registry under one lake.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// The registry of `lake` (its `_models` folder, created when missing).
    pub fn open(lake: &Path) -> Result<Registry> {
        let root = lake.join(MODELS_DIR);
        std::fs::create_dir_all(&root).map_err(|source| RegistryError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(Registry { root })
    }

    /// The `_models` folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn line_dir(&self, line: &str) -> Result<PathBuf> {
        validate_segment("line", line)?;
        Ok(self.root.join(line))
    }

    fn version_dir(&self, line: &str, version: &str) -> Result<PathBuf> {
        validate_segment("version", version)?;
        Ok(self.line_dir(line)?.join(version))
    }

    /// Copies a finished job's `model.safetensors` and `metrics.json` from `job_out_dir`
    /// into the registry as `line`/`version`, with `lineage`.
    pub fn register(
        &self,
        line: &str,
        version: &str,
        job_out_dir: &Path,
        lineage: &Lineage,
    ) -> Result<ModelEntry> {
        let dir = self.version_dir(line, version)?;
        let metrics_path = job_out_dir.join(METRICS_FILE);
        let metrics_text = read_string(&metrics_path)?;
        let metrics = Metrics::parse(&metrics_path, &metrics_text)?;
        for (key, found, expected) in [
            ("version", &metrics.version, version),
            ("line", &metrics.line, line),
        ] {
            if found != expected {
                return Err(RegistryError::Invalid {
                    path: metrics_path,
                    reason: format!(
                        "`{key}` is {found:?}, but the model is registered as {expected:?}"
                    ),
                });
            }
        }
        let model_path = job_out_dir.join(MODEL_FILE);
        let artifact = read(&model_path)?;
        let parsed = Artifact::from_bytes(&artifact).map_err(|e| RegistryError::Invalid {
            path: model_path.clone(),
            reason: e.to_string(),
        })?;
        if parsed.metadata.model_version != version {
            return Err(RegistryError::Invalid {
                path: model_path,
                reason: format!(
                    "the artifact's model_version is {:?}, but it is registered as {version:?}",
                    parsed.metadata.model_version
                ),
            });
        }

        if dir.exists() {
            let registered = dir.join(MODEL_FILE);
            if read(&registered)? == artifact {
                return self.entry(line, version);
            }
            return Err(RegistryError::AlreadyRegistered {
                path: registered,
                version: version.to_owned(),
            });
        }
        let line_dir = self.line_dir(line)?;
        let staging = line_dir.join(format!(".staging-{version}"));
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RegistryError::Io {
                    path: staging,
                    source,
                });
            }
        }
        create_dir_all(&staging)?;
        let lineage_json =
            serde_json::to_vec_pretty(lineage).map_err(|e| RegistryError::Invalid {
                path: staging.join(LINEAGE_FILE),
                reason: e.to_string(),
            })?;
        write_synced(&staging.join(MODEL_FILE), &artifact)?;
        write_synced(&staging.join(METRICS_FILE), metrics_text.as_bytes())?;
        write_synced(&staging.join(LINEAGE_FILE), &lineage_json)?;
        sync_dir(&staging)?;
        rename(&staging, &dir)?;
        sync_dir(&line_dir)?;
        sync_dir(&self.root)?;
        tracing::info!(line, version, path = %dir.display(), "model registered");
        Ok(ModelEntry {
            line: line.to_owned(),
            version: version.to_owned(),
            dir,
            metrics,
            lineage: lineage.clone(),
            signed: false,
        })
    }

    /// The model `line`/`version`.
    pub fn entry(&self, line: &str, version: &str) -> Result<ModelEntry> {
        let dir = self.version_dir(line, version)?;
        if !dir.join(MODEL_FILE).exists() {
            return Err(RegistryError::NotRegistered {
                line: line.to_owned(),
                version: version.to_owned(),
                path: dir,
            });
        }
        let metrics_path = dir.join(METRICS_FILE);
        let metrics = Metrics::parse(&metrics_path, &read_string(&metrics_path)?)?;
        let lineage_path = dir.join(LINEAGE_FILE);
        let lineage = serde_json::from_str(&read_string(&lineage_path)?).map_err(|e| {
            RegistryError::Invalid {
                path: lineage_path,
                reason: e.to_string(),
            }
        })?;
        let signed = dir.join(RELEASE_FILE).exists();
        Ok(ModelEntry {
            line: line.to_owned(),
            version: version.to_owned(),
            dir,
            metrics,
            lineage,
            signed,
        })
    }

    /// The lines that have a folder in the registry, sorted.
    pub fn lines(&self) -> Result<Vec<String>> {
        subdirs(&self.root)
    }

    /// The models of `line`, oldest first (by `created_at_us`, then version).
    pub fn list(&self, line: &str) -> Result<Vec<ModelEntry>> {
        let line_dir = self.line_dir(line)?;
        if !line_dir.exists() {
            return Ok(Vec::new());
        }
        let mut entries = subdirs(&line_dir)?
            .iter()
            .map(|version| self.entry(line, version))
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| {
            (a.lineage.created_at_us, &a.version).cmp(&(b.lineage.created_at_us, &b.version))
        });
        Ok(entries)
    }

    /// The champion's version, `None` when the line has none yet.
    pub fn champion_version(&self, line: &str) -> Result<Option<String>> {
        let path = self.line_dir(line)?.join(CHAMPION_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        let version = text.trim();
        validate_segment("version", version).map_err(|e| RegistryError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(version.to_owned()))
    }

    /// The champion, `None` when the line has none yet.
    pub fn champion(&self, line: &str) -> Result<Option<ModelEntry>> {
        self.champion_version(line)?
            .map(|version| self.entry(line, &version))
            .transpose()
    }

    /// Makes `version` the line's champion (a no-op when it already is), and records why.
    pub fn promote(&self, line: &str, version: &str, reason: &str, now_us: i64) -> Result<()> {
        self.change_champion(line, version, HistoryAction::Promote, reason, now_us)
    }

    /// Rolls the line back to `version`, an earlier champion, and records why.
    pub fn demote_to(&self, line: &str, version: &str, reason: &str, now_us: i64) -> Result<()> {
        let was_champion = self
            .history(line)?
            .iter()
            .any(|record| record.version == version);
        if !was_champion {
            return Err(RegistryError::NeverChampion {
                line: line.to_owned(),
                version: version.to_owned(),
            });
        }
        self.change_champion(line, version, HistoryAction::Rollback, reason, now_us)
    }

    fn change_champion(
        &self,
        line: &str,
        version: &str,
        action: HistoryAction,
        reason: &str,
        now_us: i64,
    ) -> Result<()> {
        self.entry(line, version)?;
        let previous = self.champion_version(line)?;
        if previous.as_deref() == Some(version) {
            return Ok(());
        }
        let line_dir = self.line_dir(line)?;
        let path = line_dir.join(CHAMPION_FILE);
        let tmp = line_dir.join(format!("{CHAMPION_FILE}.tmp"));
        write_synced(&tmp, format!("{version}\n").as_bytes())?;
        rename(&tmp, &path)?;
        sync_dir(&line_dir)?;

        let record = HistoryRecord {
            ts_us: now_us,
            action,
            version: version.to_owned(),
            previous,
            reason: reason.to_owned(),
        };
        let history = line_dir.join(HISTORY_FILE);
        let mut text = serde_json::to_string(&record).map_err(|e| RegistryError::Invalid {
            path: history.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        let io = |source| RegistryError::Io {
            path: history.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&history)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        tracing::info!(
            line,
            version,
            previous = record.previous.as_deref(),
            ?action,
            reason,
            "champion changed"
        );
        Ok(())
    }

    /// The line's promotions and rollbacks, oldest first. A last line cut short (a crash
    /// while it was appended) is skipped; any other bad line is an error naming it.
    pub fn history(&self, line: &str) -> Result<Vec<HistoryRecord>> {
        let path = self.line_dir(line)?.join(HISTORY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut records = Vec::with_capacity(lines.len());
        for (i, row) in lines.iter().enumerate() {
            match serde_json::from_str(row) {
                Ok(record) => records.push(record),
                Err(_) if !complete && i + 1 == lines.len() => {}
                Err(e) => {
                    return Err(RegistryError::Invalid {
                        path,
                        reason: format!("line {}: {e}", i + 1),
                    });
                }
            }
        }
        Ok(records)
    }

    /// Stores the signed release of `line`/`version`, after checking that it is a release of
    /// the registered artifact.
    pub fn store_release(&self, line: &str, version: &str, release: &ModelRelease) -> Result<()> {
        let entry = self.entry(line, version)?;
        let path = entry.dir.join(RELEASE_FILE);
        let invalid = |reason: String| RegistryError::Invalid {
            path: path.clone(),
            reason,
        };
        if release.version != version {
            return Err(invalid(format!(
                "the release is of version {:?}, not {version:?}",
                release.version
            )));
        }
        let artifact = entry.read_artifact()?;
        if release.artifact != artifact
            || release.sha256 != loopline_model::release::sha256(&artifact)
        {
            return Err(invalid(format!(
                "the release does not carry the registered {MODEL_FILE} (or its SHA-256)"
            )));
        }
        let tmp = entry.dir.join(format!("{RELEASE_FILE}.tmp"));
        write_synced(&tmp, &release.encode_to_vec())?;
        rename(&tmp, &path)?;
        sync_dir(&entry.dir)
    }

    /// The stored signed release of `line`/`version`, `None` when it is not signed yet.
    pub fn release(&self, line: &str, version: &str) -> Result<Option<ModelRelease>> {
        let path = self.version_dir(line, version)?.join(RELEASE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        ModelRelease::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| RegistryError::Invalid {
                path,
                reason: format!("not a ModelRelease: {e}"),
            })
    }
}

/// The bar a candidate must clear to replace the champion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionRules {
    /// Lowest F1 a candidate may have, where F1 is defined.
    pub min_f1: f64,
    /// How much higher than the champion's the candidate's F1 must be.
    pub f1_margin: f64,
    /// Highest anomaly (false-alarm) rate a candidate may have where F1 is undefined (no
    /// fault in the held-out data, so every flag is a false alarm).
    pub max_false_alarm_rate: f64,
    /// How much lower than the champion's the candidate's anomaly rate must be, where F1 is
    /// undefined for both.
    pub anomaly_rate_margin: f64,
}

impl PromotionRules {
    /// The default rules: F1 ≥ 0.5 and 0.01 above the champion's; without F1, at most 5 % of
    /// windows flagged and strictly fewer than the champion flags.
    pub const fn defaults() -> PromotionRules {
        PromotionRules {
            min_f1: 0.5,
            f1_margin: 0.01,
            max_false_alarm_rate: 0.05,
            anomaly_rate_margin: 0.0,
        }
    }
}

impl Default for PromotionRules {
    fn default() -> Self {
        Self::defaults()
    }
}

/// Whether a candidate replaces the champion, and why (the reason goes to the history and
/// the timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The candidate becomes champion.
    Promote {
        /// Why.
        why: String,
    },
    /// The champion stays.
    Reject {
        /// Why.
        why: String,
    },
}

impl Promotion {
    /// Whether the candidate is promoted.
    pub fn is_promote(&self) -> bool {
        matches!(self, Promotion::Promote { .. })
    }
}

/// Decides on a candidate from its and the champion's figures on the same held-out data.
///
/// - Where the candidate's F1 is defined: it must be at least `min_f1`, and at least
///   `f1_margin` above the champion's (when the champion has one).
/// - Where it is undefined (no fault in the held-out data): a champion with a defined F1
///   stays; otherwise the candidate's anomaly rate, every flag being a false alarm, must be
///   at most `max_false_alarm_rate` and more than `anomaly_rate_margin` below the champion's.
/// - Without a champion, meeting the floor is enough.
pub fn decide_promotion(
    candidate: &Eval,
    champion: Option<&Eval>,
    rules: &PromotionRules,
) -> Promotion {
    let promote = |why: String| Promotion::Promote { why };
    let reject = |why: String| Promotion::Reject { why };
    match candidate.f1 {
        Some(f1) => {
            if f1 < rules.min_f1 {
                return reject(format!(
                    "candidate F1 {f1:.3} is below the floor {:.3}",
                    rules.min_f1
                ));
            }
            match champion.and_then(|c| c.f1) {
                None if champion.is_none() => promote(format!(
                    "no champion; candidate F1 {f1:.3} meets the floor {:.3}",
                    rules.min_f1
                )),
                None => promote(format!(
                    "champion F1 undefined on the held-out data; candidate F1 {f1:.3} meets the floor {:.3}",
                    rules.min_f1
                )),
                Some(best) if f1 >= best + rules.f1_margin => promote(format!(
                    "candidate F1 {f1:.3} beats champion F1 {best:.3} by at least {:.3}",
                    rules.f1_margin
                )),
                Some(best) => reject(format!(
                    "candidate F1 {f1:.3} does not beat champion F1 {best:.3} by {:.3}",
                    rules.f1_margin
                )),
            }
        }
        None => {
            if let Some(best) = champion.and_then(|c| c.f1) {
                return reject(format!(
                    "candidate F1 undefined on the held-out data, champion F1 {best:.3}"
                ));
            }
            let Some(rate) = candidate.anomaly_rate else {
                return reject("candidate F1 and anomaly rate both undefined".to_owned());
            };
            if rate > rules.max_false_alarm_rate {
                return reject(format!(
                    "no faults in the held-out data; candidate false-alarm rate {rate:.4} is above the ceiling {:.4}",
                    rules.max_false_alarm_rate
                ));
            }
            match champion.map(|c| c.anomaly_rate) {
                None => promote(format!(
                    "no champion; no faults in the held-out data and candidate false-alarm rate {rate:.4} is within {:.4}",
                    rules.max_false_alarm_rate
                )),
                Some(None) => promote(format!(
                    "no faults in the held-out data; champion anomaly rate undefined, candidate false-alarm rate {rate:.4} is within {:.4}",
                    rules.max_false_alarm_rate
                )),
                Some(Some(best)) if rate < best - rules.anomaly_rate_margin => promote(format!(
                    "no faults in the held-out data; candidate false-alarm rate {rate:.4} is below champion's {best:.4}"
                )),
                Some(Some(best)) => reject(format!(
                    "no faults in the held-out data; candidate false-alarm rate {rate:.4} is not below champion's {best:.4}"
                )),
            }
        }
    }
}

/// [`decide_promotion`] on a registered candidate's `metrics.json`, given the line's current
/// champion: the candidate must have been evaluated against that champion, or the comparison
/// says nothing about it.
pub fn decide_for(
    metrics: &Metrics,
    champion_version: Option<&str>,
    rules: &PromotionRules,
) -> Promotion {
    let evaluated_against = metrics.champion.as_ref().map(|c| c.version.as_str());
    if let Some(champion) = champion_version
        && evaluated_against != Some(champion)
    {
        return Promotion::Reject {
            why: format!(
                "candidate {} was evaluated against {}, but the champion is {champion}",
                metrics.version,
                evaluated_against.unwrap_or("no champion")
            ),
        };
    }
    decide_promotion(
        &metrics.candidate,
        metrics.champion.as_ref().map(|c| &c.eval),
        rules,
    )
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| RegistryError::Io {
        path: to.to_owned(),
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RegistryError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Names of the folders in `dir` that can be lines or versions (hidden ones are staging).
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let io = |source| RegistryError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if !entry.file_type().map_err(io)?.is_dir() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && validate_segment("name", name).is_ok()
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopline_model::{FitOptions, TrainingRange, train_int8};
    use serde_json::json;

    fn artifact_bytes(version: &str) -> Vec<u8> {
        artifact_bytes_seeded(version, 1)
    }

    fn artifact_bytes_seeded(version: &str, seed: u64) -> Vec<u8> {
        let windows: Vec<Vec<f32>> = (0..120)
            .map(|i| {
                let load = (i as f32 * 0.37).sin();
                vec![load, 2.0 * load + 1.0, load * load]
            })
            .collect();
        let names = vec!["motor.rms".into(), "motor.mean".into(), "pump.rms".into()];
        let range = TrainingRange {
            start_us: 0,
            end_us: 120_000_000,
            windows: 120,
            window_us: 1_000_000,
            sample_rate_hz: 1000.0,
        };
        let options = FitOptions {
            seed,
            hidden: vec![4, 2],
            epochs: 2,
            ..FitOptions::default()
        };
        train_int8(&windows, names, &options, version, range)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn metrics(line: &str, version: &str, f1: Option<f64>) -> Value {
        json!({
            "version": version,
            "line": line,
            "candidate": {"f1": f1, "precision": 0.9, "recall": null, "anomaly_rate": 0.02},
            "champion": null,
            "data": {"from_us": 1_000, "to_us": 2_000},
            "trainer": {"epochs": 3},
        })
    }

    /// A job output folder holding `version`'s artifact and `metrics`.
    fn job(dir: &Path, version: &str, metrics: &Value) -> PathBuf {
        let out = dir.join(format!("job-{version}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(MODEL_FILE), artifact_bytes(version)).unwrap();
        std::fs::write(out.join(METRICS_FILE), metrics.to_string()).unwrap();
        out
    }

    fn lineage(created_at_us: i64) -> Lineage {
        Lineage {
            data_from_us: 1_000,
            data_to_us: 2_000,
            trigger: "manual: test".into(),
            job_id: "j-1".into(),
            backend: "local".into(),
            gpus: vec![0],
            created_at_us,
            parent_champion: None,
        }
    }

    #[test]
    fn register_copies_and_reads_back() {
        let lake = tempfile::tempdir().unwrap();
        let registry = Registry::open(lake.path()).unwrap();
        let out = job(lake.path(), "v1", &metrics("l1", "v1", Some(0.8)));
        let entry = registry.register("l1", "v1", &out, &lineage(10)).unwrap();
        assert_eq!(entry.dir, lake.path().join("_models/l1/v1"));
        assert_eq!(entry.metrics.candidate.f1, Some(0.8));
        assert_eq!(entry.metrics.candidate.recall, None);
        assert_eq!(entry.metrics.raw["trainer"]["epochs"], 3);
        assert!(!entry.signed);
        assert_eq!(
            std::fs::read(entry.model_path()).unwrap(),
            std::fs::read(out.join(MODEL_FILE)).unwrap()
        );
        assert_eq!(registry.entry("l1", "v1").unwrap(), entry);
        // Registering the same artifact again changes nothing.
        assert_eq!(
            registry.register("l1", "v1", &out, &lineage(10)).unwrap(),
            entry
        );
        assert_eq!(registry.lines().unwrap(), ["l1"]);
        assert_eq!(registry.list("l1").unwrap(), [entry]);
        assert!(registry.list("l2").unwrap().is_empty());
        assert_eq!(registry.champion("l1").unwrap(), None);
        // No staging folder is left behind.
        let names: Vec<_> = std::fs::read_dir(lake.path().join("_models/l1"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["v1"]);
    }

    #[test]
    fn register_refuses_what_does_not_match() {
        let lake = tempfile::tempdir().unwrap();
        let registry = Registry::open(lake.path()).unwrap();
        // metrics.json of another version.
        let out = job(lake.path(), "v1", &metrics("l1", "v9", Some(0.8)));
        let err = registry
            .register("l1", "v1", &out, &lineage(1))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: `version` is \"v9\", but the model is registered as \"v1\"",
                out.join(METRICS_FILE).display()
            )
        );
        // An artifact whose metadata names another version.
        let out = job(lake.path(), "v2", &metrics("l1", "v3", Some(0.8)));
        let err = registry
            .register("l1", "v3", &out, &lineage(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_version is \"v2\""), "{err}");
        assert!(
            err.starts_with(&out.join(MODEL_FILE).display().to_string()),
            "{err}"
        );
        // Bytes that are no artifact.
        let out = job(lake.path(), "v4", &metrics("l1", "v4", Some(0.8)));
        std::fs::write(out.join(MODEL_FILE), b"not safetensors").unwrap();
        let err = registry
            .register("l1", "v4", &out, &lineage(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a safetensors model artifact"), "{err}");
        // A version taken by another artifact.
        let out = job(lake.path(), "v5", &metrics("l1", "v5", Some(0.8)));
        registry.register("l1", "v5", &out, &lineage(1)).unwrap();
        std::fs::write(out.join(MODEL_FILE), artifact_bytes_seeded("v5", 2)).unwrap();
        let err = registry
            .register("l1", "v5", &out, &lineage(1))
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::AlreadyRegistered { .. }),
            "{err}"
        );
        // Names that cannot be folders.
        let err = registry
            .register("../x", "v1", &out, &lineage(1))
            .unwrap_err();
        assert!(err.to_string().contains("line \"../x\""), "{err}");
        // Nothing half-registered is visible.
        let versions: Vec<_> = registry
            .list("l1")
            .unwrap()
            .into_iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, ["v5"]);
    }

    #[test]
    fn bad_metrics_json_is_named() {
        let path = Path::new("/jobs/j-1/metrics.json");
        let err = |value: Value| {
            Metrics::parse(path, &value.to_string())
                .unwrap_err()
                .to_string()
        };
        let mut m = metrics("l1", "v1", Some(0.8));
        m["candidate"]["f1"] = json!("high");
        assert_eq!(
            err(m),
            "/jobs/j-1/metrics.json: `candidate.f1`: expected a number or null, found \"high\""
        );
        let mut m = metrics("l1", "v1", Some(0.8));
        m["candidate"]["anomaly_rate"] = json!(1.5);
        assert_eq!(
            err(m),
            "/jobs/j-1/metrics.json: `candidate.anomaly_rate`: 1.5 is not in [0, 1]"
        );
        let mut m = metrics("l1", "v1", Some(0.8));
        m["data"].as_object_mut().unwrap().remove("to_us");
        assert_eq!(
            err(m),
            "/jobs/j-1/metrics.json: `data.to_us`: expected an integer (microseconds), found nothing"
        );
        let mut m = metrics("l1", "v1", Some(0.8));
        m["champion"] = json!({"f1": 0.5});
        assert_eq!(
            err(m),
            "/jobs/j-1/metrics.json: `champion.version`: expected a string, found nothing"
        );
        let mut m = metrics("l1", "v1", Some(0.8));
        m["data"]["from_us"] = json!(5_000);
        assert!(err(m).contains("`data.from_us` 5000 is after `data.to_us` 2000"));
        let text = Metrics::parse(path, "{").unwrap_err().to_string();
        assert!(
            text.starts_with("/jobs/j-1/metrics.json: not JSON"),
            "{text}"
        );

        let mut m = metrics("l1", "v1", None);
        m["champion"] = json!({"version": "v0", "f1": null, "anomaly_rate": 0.1});
        let parsed = Metrics::parse(path, &m.to_string()).unwrap();
        assert_eq!(parsed.candidate.f1, None);
        assert_eq!(
            parsed.champion,
            Some(ChampionEval {
                version: "v0".into(),
                eval: Eval {
                    anomaly_rate: Some(0.1),
                    ..Eval::default()
                }
            })
        );
        assert_eq!((parsed.data_from_us, parsed.data_to_us), (1_000, 2_000));

        // A bad metrics.json inside the registry is named by its registry path.
        let lake = tempfile::tempdir().unwrap();
        let registry = Registry::open(lake.path()).unwrap();
        let out = job(lake.path(), "v1", &metrics("l1", "v1", Some(0.8)));
        let entry = registry.register("l1", "v1", &out, &lineage(1)).unwrap();
        std::fs::write(entry.dir.join(METRICS_FILE), "[]").unwrap();
        let text = registry.entry("l1", "v1").unwrap_err().to_string();
        assert_eq!(
            text,
            format!(
                "{}: not a JSON object",
                entry.dir.join(METRICS_FILE).display()
            )
        );
    }

    #[test]
    fn champion_changes_atomically_with_history() {
        let lake = tempfile::tempdir().unwrap();
        let registry = Registry::open(lake.path()).unwrap();
        for (i, version) in ["v1", "v2", "v3"].iter().enumerate() {
            let out = job(lake.path(), version, &metrics("l1", version, Some(0.8)));
            registry
                .register("l1", version, &out, &lineage(i as i64))
                .unwrap();
        }
        let err = registry.promote("l1", "v9", "x", 1).unwrap_err();
        assert!(matches!(err, RegistryError::NotRegistered { .. }), "{err}");

        registry.promote("l1", "v1", "first model", 100).unwrap();
        registry.promote("l1", "v2", "F1 0.9 > 0.8", 200).unwrap();
        // Promoting the champion again records nothing.
        registry.promote("l1", "v2", "again", 250).unwrap();
        assert_eq!(registry.champion("l1").unwrap().unwrap().version, "v2");
        let champion_file = lake.path().join("_models/l1/champion");
        assert_eq!(std::fs::read_to_string(&champion_file).unwrap(), "v2\n");
        assert!(!lake.path().join("_models/l1/champion.tmp").exists());

        // Rollback only to an earlier champion.
        let err = registry
            .demote_to("l1", "v3", "canary worse", 300)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line l1: cannot roll back to v3, which was never its champion"
        );
        registry.demote_to("l1", "v1", "canary worse", 300).unwrap();
        assert_eq!(
            registry.champion_version("l1").unwrap().as_deref(),
            Some("v1")
        );

        let history = registry.history("l1").unwrap();
        assert_eq!(
            history,
            [
                HistoryRecord {
                    ts_us: 100,
                    action: HistoryAction::Promote,
                    version: "v1".into(),
                    previous: None,
                    reason: "first model".into(),
                },
                HistoryRecord {
                    ts_us: 200,
                    action: HistoryAction::Promote,
                    version: "v2".into(),
                    previous: Some("v1".into()),
                    reason: "F1 0.9 > 0.8".into(),
                },
                HistoryRecord {
                    ts_us: 300,
                    action: HistoryAction::Rollback,
                    version: "v1".into(),
                    previous: Some("v2".into()),
                    reason: "canary worse".into(),
                },
            ]
        );
        let text = std::fs::read_to_string(lake.path().join("_models/l1/history.jsonl")).unwrap();
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .contains("\"action\":\"rollback\""),
            "{text}"
        );

        // A record cut short by a crash is skipped; a bad record elsewhere is an error.
        let history_file = lake.path().join("_models/l1/history.jsonl");
        std::fs::write(&history_file, format!("{text}{{\"ts_us\":4")).unwrap();
        assert_eq!(registry.history("l1").unwrap().len(), 3);
        std::fs::write(&history_file, format!("garbage\n{text}")).unwrap();
        let err = registry.history("l1").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: line 1:", history_file.display())),
            "{err}"
        );

        // A champion file that names no version is an error naming it.
        std::fs::write(&champion_file, "a/b\n").unwrap();
        let err = registry.champion("l1").unwrap_err().to_string();
        assert!(
            err.starts_with(&champion_file.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn releases_are_stored_only_for_their_artifact() {
        let lake = tempfile::tempdir().unwrap();
        let registry = Registry::open(lake.path()).unwrap();
        let out = job(lake.path(), "v1", &metrics("l1", "v1", Some(0.8)));
        let entry = registry.register("l1", "v1", &out, &lineage(1)).unwrap();
        assert_eq!(registry.release("l1", "v1").unwrap(), None);
        let key = crate::signing::ReleaseKey::from_signing_key(
            loopline_model::release::signing_key_from_seed(1),
        );
        let release = key.sign("v1", entry.read_artifact().unwrap(), 5);
        let wrong = key.sign("v1", b"other".to_vec(), 5);
        let err = registry
            .store_release("l1", "v1", &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not carry the registered model.safetensors"),
            "{err}"
        );
        let err = registry.store_release(
            "l1",
            "v1",
            &key.sign("v2", entry.read_artifact().unwrap(), 5),
        );
        assert!(err.unwrap_err().to_string().contains("of version \"v2\""));
        registry.store_release("l1", "v1", &release).unwrap();
        assert_eq!(registry.release("l1", "v1").unwrap(), Some(release));
        assert!(registry.entry("l1", "v1").unwrap().signed);
    }

    fn eval(f1: Option<f64>, anomaly_rate: Option<f64>) -> Eval {
        Eval {
            f1,
            anomaly_rate,
            ..Eval::default()
        }
    }

    #[test]
    fn promotion_rule() {
        let rules = PromotionRules::defaults();
        let decide =
            |c: Eval, champion: Option<Eval>| decide_promotion(&c, champion.as_ref(), &rules);

        // F1 defined: floor, then margin over the champion.
        assert!(decide(eval(Some(0.6), None), None).is_promote());
        assert_eq!(
            decide(eval(Some(0.4), None), None),
            Promotion::Reject {
                why: "candidate F1 0.400 is below the floor 0.500".into()
            }
        );
        assert!(decide(eval(Some(0.80), None), Some(eval(Some(0.75), None))).is_promote());
        assert_eq!(
            decide(eval(Some(0.755), None), Some(eval(Some(0.75), None))),
            Promotion::Reject {
                why: "candidate F1 0.755 does not beat champion F1 0.750 by 0.010".into()
            }
        );
        // Better than a weak champion is not enough below the floor.
        assert!(!decide(eval(Some(0.45), None), Some(eval(Some(0.2), None))).is_promote());
        // A champion without F1 loses to a candidate with one above the floor.
        assert!(decide(eval(Some(0.7), None), Some(eval(None, Some(0.01)))).is_promote());

        // F1 undefined for both (no fault in the held-out data): fewer false alarms win.
        assert!(decide(eval(None, Some(0.01)), Some(eval(None, Some(0.03)))).is_promote());
        assert!(!decide(eval(None, Some(0.03)), Some(eval(None, Some(0.03)))).is_promote());
        assert!(!decide(eval(None, Some(0.04)), Some(eval(None, Some(0.03)))).is_promote());
        // ... and stay under the false-alarm ceiling.
        let over = decide(eval(None, Some(0.2)), Some(eval(None, Some(0.3))));
        assert!(
            matches!(&over, Promotion::Reject { why } if why.contains("above the ceiling")),
            "{over:?}"
        );
        assert!(decide(eval(None, Some(0.01)), None).is_promote());
        assert!(!decide(eval(None, None), None).is_promote());
        // A champion with F1 stays against a candidate without.
        assert!(!decide(eval(None, Some(0.0)), Some(eval(Some(0.6), Some(0.1)))).is_promote());
    }

    #[test]
    fn decide_for_requires_the_current_champion_as_baseline() {
        let path = Path::new("metrics.json");
        let mut m = metrics("l1", "v2", Some(0.9));
        m["champion"] = json!({"version": "v0", "f1": 0.7, "anomaly_rate": 0.02});
        let parsed = Metrics::parse(path, &m.to_string()).unwrap();
        let rules = PromotionRules::defaults();
        assert!(decide_for(&parsed, Some("v0"), &rules).is_promote());
        assert!(decide_for(&parsed, None, &rules).is_promote());
        assert_eq!(
            decide_for(&parsed, Some("v1"), &rules),
            Promotion::Reject {
                why: "candidate v2 was evaluated against v0, but the champion is v1".into()
            }
        );
        let alone = Metrics::parse(path, &metrics("l1", "v2", Some(0.9)).to_string()).unwrap();
        assert!(!decide_for(&alone, Some("v1"), &rules).is_promote());
    }
}
