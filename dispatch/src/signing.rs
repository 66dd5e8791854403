//! The release signing key, and signed releases.
//!
//! Design invariants:
//!
//! - One Ed25519 key per dispatch installation, generated from the operating system's
//!   randomness the first time dispatch needs it, and never regenerated: a new key would make
//!   every agent refuse every later release. `<state_dir>/release.key` holds its 32-byte secret
//!   seed as 64 hex digits, mode 0600; `<state_dir>/release.pub` holds the public key as 64 hex
//!   digits, which is what agents set as `model_public_key`.
//! - A key file that anyone but its owner can read or write, or that does not hold exactly one
//!   key, is refused with an error naming the file; dispatch never "repairs" it, because the
//!   operator has to know that the secret may have leaked or the file was replaced.
//! - `release.pub` is derived from the secret; when it is missing it is written again, when it
//!   disagrees with the secret the key is refused (agents configured from that file would
//!   refuse every release).
//! - The key is created under a temporary name and linked into place, which fails when a key is
//!   already there: two dispatch processes starting at once end up with the same key, and a
//!   crash never leaves a half-written `release.key`.
//! - What is signed is the SHA-256 of the artifact bytes (see [`loopline_model::release`]).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use loopline_model::release::{self, SigningKey, VerifyingKey};
use loopline_proto::v1::{self, ModelRelease};
use rand::TryRngCore;

/// File name of the secret key in the state folder.
pub const SECRET_FILE: &str = "release.key";
/// File name of the public key in the state folder.
pub const PUBLIC_FILE: &str = "release.pub";

/// Why the release key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The secret key file can be read or written by others than its owner.
    #[error(
        "{path}: mode {mode:04o} lets others than its owner read or write the release signing key; \
         if nobody else had access, `chmod 600` it, otherwise replace the key and reconfigure the agents"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file does not hold a key.
    #[error("{path}: {reason}")]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error(
        "generating a release key in {path}: no randomness from the operating system: {reason}"
    )]
    Randomness {
        /// Where the key was to be written.
        path: PathBuf,
        /// What the generator said.
        reason: String,
    },
}

/// `type Result` of this module.
pub type Result<T, E = SigningError> = std::result::Result<T, E>;

/// Dispatch's release signing key.
pub struct ReleaseKey {
    key: SigningKey,
    key_id: String,
}

impl std::fmt::Debug for ReleaseKey {
    /// Shows the public half only, so that logging a key never leaks it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseKey")
            .field("key_id", &self.key_id)
            .field("public_key", &self.public_key_hex())
            .finish()
    }
}

impl ReleaseKey {
    /// Loads the key from `state_dir`, generating it (and the folder) on first use.
    pub fn load_or_generate(state_dir: &Path) -> Result<ReleaseKey> {
        std::fs::create_dir_all(state_dir).map_err(|source| SigningError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let secret = state_dir.join(SECRET_FILE);
        let key = match read_secret(&secret)? {
            Some(key) => key,
            None => generate(state_dir, &secret)?,
        };
        let key = ReleaseKey::from_signing_key(key);
        key.check_or_write_public(state_dir)?;
        Ok(key)
    }

    /// A key held in memory only (tests, or a key kept in a secret store).
    pub fn from_signing_key(key: SigningKey) -> ReleaseKey {
        let key_id = key_id(&key.verifying_key());
        ReleaseKey { key, key_id }
    }

    /// The public key, 64 hex digits: an agent's `model_public_key`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// A short name for the key (the first 16 hex digits of the SHA-256 of the public key),
    /// carried in releases so that a person can tell which key signed one.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A signed release of `artifact` (the bytes of `model.safetensors`) as version `version`,
    /// made at `now_us` (microseconds since the Unix epoch).
    pub fn sign(&self, version: &str, artifact: Vec<u8>, now_us: i64) -> ModelRelease {
        let digest = release::sha256(&artifact);
        ModelRelease {
            schema_version: v1::SCHEMA_VERSION,
            version: version.to_owned(),
            sha256: digest.to_vec(),
            size: artifact.len() as u64,
            signature: release::sign(&digest, &self.key).to_vec(),
            artifact,
            created_ts_us: now_us,
            key_id: self.key_id.clone(),
        }
    }

    fn check_or_write_public(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(PUBLIC_FILE);
        let expected = self.public_key_hex();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let found = release::verifying_key_from_hex(&text).map_err(|e| {
                    SigningError::BadKeyFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                if hex::encode(found.as_bytes()) != expected {
                    return Err(SigningError::BadKeyFile {
                        path,
                        reason: format!(
                            "holds public key {}, but {SECRET_FILE} beside it is the secret of {expected}",
                            hex::encode(found.as_bytes())
                        ),
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let tmp = state_dir.join(format!("{PUBLIC_FILE}.tmp"));
                write_new(&tmp, &format!("{expected}\n"), 0o644)?;
                rename(&tmp, &path)?;
                sync_dir(state_dir)
            }
            Err(source) => Err(SigningError::Io { path, source }),
        }
    }
}

fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&release::sha256(key.as_bytes())[..8])
}

/// The key in `path`, `None` when there is no such file.
fn read_secret(path: &Path) -> Result<Option<SigningKey>> {
    let io = |source| SigningError::Io {
        path: path.to_owned(),
        source,
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !metadata.is_file() {
        return Err(SigningError::BadKeyFile {
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SigningError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    release::signing_key_from_hex(&text)
        .map(Some)
        .map_err(|e| SigningError::BadKeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Generates a key into `secret`; when another process got there first, loads its key.
fn generate(state_dir: &Path, secret: &Path) -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| SigningError::Randomness {
            path: secret.to_owned(),
            reason: e.to_string(),
        })?;
    let key = SigningKey::from_bytes(&seed);
    let tmp = state_dir.join(format!("{SECRET_FILE}.{}.tmp", std::process::id()));
    // A leftover from a crashed attempt holds no key anybody uses.
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, &format!("{}\n", hex::encode(seed)), 0o600)?;
    let linked = std::fs::hard_link(&tmp, secret);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(state_dir)?;
            tracing::info!(path = %secret.display(), "generated the release signing key");
            Ok(key)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_secret(secret)?.ok_or_else(|| SigningError::BadKeyFile {
                path: secret.to_owned(),
                reason: "vanished while it was being created".to_owned(),
            })
        }
        Err(source) => Err(SigningError::Io {
            path: secret.to_owned(),
            source,
        }),
    }
}

/// Creates `path` (which must not exist) with `mode`, writes `text` and syncs it.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let io = |source| SigningError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| SigningError::Io {
        path: to.to_owned(),
        source,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| SigningError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = ReleaseKey::load_or_generate(&state).unwrap();
        assert_eq!(mode(&state.join(SECRET_FILE)), 0o600);
        assert_eq!(mode(&state.join(PUBLIC_FILE)), 0o644);
        let public = std::fs::read_to_string(state.join(PUBLIC_FILE)).unwrap();
        assert_eq!(public.trim(), first.public_key_hex());
        assert_eq!(first.public_key_hex().len(), 64);
        assert_eq!(first.key_id().len(), 16);

        let second = ReleaseKey::load_or_generate(&state).unwrap();
        assert_eq!(second.public_key_hex(), first.public_key_hex());
        assert_eq!(second.key_id(), first.key_id());
        // No temporary file is left behind.
        let mut names: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [SECRET_FILE, PUBLIC_FILE]);

        // Another state folder gets another key.
        let other = ReleaseKey::load_or_generate(&dir.path().join("other")).unwrap();
        assert_ne!(other.public_key_hex(), first.public_key_hex());
    }

    #[test]
    fn a_missing_public_file_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let key = ReleaseKey::load_or_generate(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(PUBLIC_FILE)).unwrap();
        ReleaseKey::load_or_generate(dir.path()).unwrap();
        let public = std::fs::read_to_string(dir.path().join(PUBLIC_FILE)).unwrap();
        assert_eq!(public.trim(), key.public_key_hex());
    }

    #[test]
    fn bad_key_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        ReleaseKey::load_or_generate(dir.path()).unwrap();
        let secret = dir.path().join(SECRET_FILE);

        std::fs::set_permissions(&secret, Permissions::from_mode(0o644)).unwrap();
        let err = ReleaseKey::load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(err, SigningError::Permissions { mode: 0o644, .. }));
        let text = err.to_string();
        assert!(text.starts_with(&secret.display().to_string()), "{text}");
        assert!(text.contains("mode 0644"), "{text}");

        std::fs::set_permissions(&secret, Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&secret, "not hex!\n").unwrap();
        let err = ReleaseKey::load_or_generate(dir.path())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: bad signing key: not hex: Invalid character 'n' at position 0",
                secret.display()
            )
        );

        std::fs::write(&secret, "abcd").unwrap();
        let err = ReleaseKey::load_or_generate(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");

        // A secret that does not match the public key beside it.
        std::fs::write(&secret, hex::encode([7u8; 32])).unwrap();
        let err = ReleaseKey::load_or_generate(dir.path())
            .unwrap_err()
            .to_string();
        let public = dir.path().join(PUBLIC_FILE);
        assert!(err.starts_with(&public.display().to_string()), "{err}");
        assert!(err.contains("is the secret of"), "{err}");
    }

    #[test]
    fn a_signed_release_verifies_and_names_its_key() {
        let key = ReleaseKey::from_signing_key(release::signing_key_from_seed(3));
        let artifact = b"model bytes".to_vec();
        let signed = key.sign("line-1-7", artifact.clone(), 1_700_000_000_000_000);
        assert_eq!(signed.schema_version, v1::SCHEMA_VERSION);
        assert_eq!(signed.version, "line-1-7");
        assert_eq!(signed.size, artifact.len() as u64);
        assert_eq!(signed.sha256, release::sha256(&artifact).to_vec());
        assert_eq!(signed.created_ts_us, 1_700_000_000_000_000);
        assert_eq!(signed.key_id, key.key_id());
        release::verify(
            &signed.artifact,
            &signed.sha256,
            &signed.signature,
            &key.verifying_key(),
        )
        .unwrap();
        // The public key round-trips through its hex form, as agents read it.
        let parsed = release::verifying_key_from_hex(&key.public_key_hex()).unwrap();
        assert_eq!(parsed, key.verifying_key());
        // Debug shows no secret.
        let debug = format!("{key:?}");
        assert!(!debug.contains(&hex::encode(release::signing_key_from_seed(3).to_bytes())));
    }
}
