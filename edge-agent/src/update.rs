//! Model updates: which release a device runs, and why it refused the others.
//!
//! A release arrives retained on the line's (or, for a canary, the device's) `model` topic.
//! [`ModelSlot::consider`] decides, without I/O:
//!
//! 1. It decodes the `ModelRelease`, and ignores a release it already runs or has staged,
//!    and one it already refused (the broker re-delivers retained messages on every
//!    reconnection; one refusal is logged once).
//! 2. It refuses, keeping the running model, when no public key is configured, when the
//!    artifact does not hash to the release's SHA-256, when the Ed25519 signature over that
//!    digest does not verify with the configured key, when the artifact does not load, or
//!    when it reads channels this line does not have.
//! 3. Otherwise the release is *staged*: the device task swaps it in before it seals the
//!    next batch ([`ModelSlot::promote`]), so no window goes unscored.
//!
//! The device task persists an accepted release (the whole signed message, so that it is
//! verified again at the next start) and publishes [`ModelSlot::report`] on
//! `model/report` after every change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopline_model::Artifact;
use loopline_model::release::{self, VerifyingKey};
use loopline_proto::Message;
use loopline_proto::v1::{self, DeviceId, ModelRelease, ModelReport, model_report::State};

use crate::inference::LoadedModel;

/// What to do with a release.
#[derive(Debug)]
pub enum Decision {
    /// Already running, staged or refused: nothing to do, nothing to report.
    Ignore,
    /// Verified and loaded; swap it in before the next batch, and persist `release`.
    Stage { model: Arc<LoadedModel> },
    /// Refused; the running model stays. The reason is in the report.
    Refuse { version: String, reason: String },
}

/// The model state of one device.
#[derive(Debug)]
pub struct ModelSlot {
    key: Option<VerifyingKey>,
    running: String,
    staged: Option<Arc<LoadedModel>>,
    last_error: String,
    rejected_version: String,
    /// SHA-256 of the last refused payload, so a re-delivery is not refused (and logged) again.
    rejected_digest: Option<[u8; 32]>,
}

impl ModelSlot {
    pub fn new(key: Option<VerifyingKey>, running: &str) -> ModelSlot {
        ModelSlot {
            key,
            running: running.to_owned(),
            staged: None,
            last_error: String::new(),
            rejected_version: String::new(),
            rejected_digest: None,
        }
    }

    pub fn running_version(&self) -> &str {
        &self.running
    }

    /// Decides about one payload from a model topic.
    pub fn consider(&mut self, payload: &[u8]) -> Decision {
        let digest = release::sha256(payload);
        if self.rejected_digest == Some(digest) {
            return Decision::Ignore;
        }
        match check(payload, self.key.as_ref()) {
            Ok(release) => {
                let version = release.version.clone();
                let staged = self.staged.as_ref().map(|m| m.version());
                if version == self.running || staged == Some(version.as_str()) {
                    return Decision::Ignore;
                }
                match load(release) {
                    Ok(model) => {
                        self.staged = Some(Arc::clone(&model));
                        Decision::Stage { model }
                    }
                    Err(reason) => self.refuse(digest, version, reason),
                }
            }
            Err((version, reason)) => self.refuse(digest, version, reason),
        }
    }

    fn refuse(&mut self, digest: [u8; 32], version: String, reason: String) -> Decision {
        self.rejected_digest = Some(digest);
        self.rejected_version.clone_from(&version);
        self.last_error.clone_from(&reason);
        Decision::Refuse { version, reason }
    }

    /// The staged model now runs. Returns it, if one was staged.
    pub fn promote(&mut self) -> Option<Arc<LoadedModel>> {
        let model = self.staged.take()?;
        self.running = model.version().to_owned();
        Some(model)
    }

    /// The retained `model/report` message for the current state.
    pub fn report(&self, device: &DeviceId, boot_id: &str, ts_us: i64) -> ModelReport {
        let state = if self.staged.is_some() {
            State::Staged
        } else if !self.last_error.is_empty() {
            State::Rejected
        } else {
            State::Running
        };
        ModelReport {
            schema_version: v1::SCHEMA_VERSION,
            device: Some(device.clone()),
            state: state as i32,
            running_version: self.running.clone(),
            staged_version: self
                .staged
                .as_ref()
                .map(|m| m.version().to_owned())
                .unwrap_or_default(),
            last_error: self.last_error.clone(),
            rejected_version: self.rejected_version.clone(),
            ts_us,
            boot_id: boot_id.to_owned(),
        }
    }
}

/// Decodes and verifies a release. On failure: (version if known, reason).
pub fn check(payload: &[u8], key: Option<&VerifyingKey>) -> Result<ModelRelease, (String, String)> {
    let release = ModelRelease::decode(payload).map_err(|e| {
        (
            String::new(),
            format!("the release is not a ModelRelease message: {e}"),
        )
    })?;
    let version = release.version.clone();
    let fail = |reason: String| (version.clone(), reason);
    if release.schema_version != v1::SCHEMA_VERSION {
        return Err(fail(format!(
            "release schema_version {} is not {}",
            release.schema_version,
            v1::SCHEMA_VERSION
        )));
    }
    if release.version.is_empty() {
        return Err(fail("the release has no version".to_owned()));
    }
    let Some(key) = key else {
        return Err(fail(
            "no model_public_key is configured, so no release can be trusted".to_owned(),
        ));
    };
    if release.size != release.artifact.len() as u64 {
        return Err(fail(format!(
            "the artifact is {} bytes, the release says {}",
            release.artifact.len(),
            release.size
        )));
    }
    release::verify(&release.artifact, &release.sha256, &release.signature, key)
        .map_err(|e| fail(format!("release refused: {e}")))?;
    Ok(release)
}

/// Loads a verified release's artifact.
pub fn load(release: ModelRelease) -> Result<Arc<LoadedModel>, String> {
    let artifact = Artifact::from_bytes(&release.artifact)
        .map_err(|e| format!("the artifact does not load: {e}"))?;
    if artifact.metadata.model_version != release.version {
        return Err(format!(
            "the artifact's version {:?} is not the release's {:?}",
            artifact.metadata.model_version, release.version
        ));
    }
    let model = LoadedModel::new(artifact)?;
    Ok(Arc::new(model))
}

/// Where one device keeps its accepted release.
pub fn release_path(model_dir: &Path, device: &DeviceId) -> PathBuf {
    model_dir
        .join(&device.site)
        .join(&device.line)
        .join(format!("{}.release", device.device))
}

/// Writes an accepted release durably: temporary file, fsync, rename, fsync of the folder.
pub fn persist(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("release.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(payload)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
