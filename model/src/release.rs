//! Signing and verifying model releases.
//!
//! Design invariants:
//!
//! - What is signed is the SHA-256 digest of the artifact bytes, and nothing else: the
//!   release message carries `(artifact, sha256, signature)`, and an agent accepts the artifact
//!   only if the bytes hash to `sha256` *and* `signature` is a valid Ed25519 signature of those
//!   32 digest bytes under the configured key. Signing the digest (not the artifact) lets
//!   dispatch sign a release without holding the artifact in memory twice, and lets a reviewer
//!   check a signature with any Ed25519 tool given the digest.
//! - Verification uses `verify_strict`, which rejects small-order keys and non-canonical
//!   signatures, so one artifact has one valid signature per key.
//! - Every way a release can be unacceptable has its own [`ReleaseError`] variant, so an agent's
//!   model report can say *why* it refused a model (unsigned, tampered, wrong key).
//!
//! ```
//! use loopline_model::release::{self, ReleaseError};
//!
//! let key = release::signing_key_from_seed(7);
//! let artifact = b"model bytes";
//! let digest = release::sha256(artifact);
//! let signature = release::sign(&digest, &key);
//! release::verify(artifact, &digest, &signature, &key.verifying_key()).unwrap();
//!
//! // One flipped byte in the artifact: the digest no longer matches.
//! let err = release::verify(b"model bytez", &digest, &signature, &key.verifying_key());
//! assert!(matches!(err, Err(ReleaseError::DigestMismatch { .. })));
//! ```

use ed25519_dalek::{Signature, Signer};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a release (artifact, digest, signature) was refused, or why a key could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReleaseError {
    /// The release carries no signature at all.
    #[error("the model release is unsigned (empty signature)")]
    Unsigned,
    /// The digest field is not 32 bytes long, so it cannot be a SHA-256 digest.
    #[error("the release digest is {len} bytes long; a SHA-256 digest is 32")]
    BadDigestLength {
        /// Length of the digest field, in bytes.
        len: usize,
    },
    /// The artifact bytes do not hash to the digest the release claims.
    #[error("the artifact hashes to sha256 {actual}, but the release says {expected}")]
    DigestMismatch {
        /// The digest the release carries, hex.
        expected: String,
        /// The digest of the artifact bytes received, hex.
        actual: String,
    },
    /// The signature is malformed or was not made by the configured key over this digest.
    #[error("the release signature is not valid for the configured key: {reason}")]
    BadSignature {
        /// What was wrong: its length, or the verification failure.
        reason: String,
    },
    /// A key given as hex could not be parsed.
    #[error("bad {what}: {reason}")]
    BadKey {
        /// Which key: "verifying key" or "signing key".
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Signs a 32-byte artifact digest (see [`sha256`]) with `key`.
pub fn sign(digest: &[u8; 32], key: &SigningKey) -> [u8; 64] {
    key.sign(digest).to_bytes()
}

/// Checks a release: `signature` is non-empty, `sha256` is 32 bytes, `artifact` hashes to
/// `sha256`, and `signature` is `key`'s Ed25519 signature of `sha256`. The checks run in that
/// order, so the error names the first thing wrong.
pub fn verify(
    artifact: &[u8],
    sha256: &[u8],
    signature: &[u8],
    key: &VerifyingKey,
) -> Result<(), ReleaseError> {
    if signature.is_empty() {
        return Err(ReleaseError::Unsigned);
    }
    let expected: [u8; 32] = sha256
        .try_into()
        .map_err(|_| ReleaseError::BadDigestLength { len: sha256.len() })?;
    let actual = self::sha256(artifact);
    if actual != expected {
        return Err(ReleaseError::DigestMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    let signature = Signature::from_slice(signature).map_err(|_| ReleaseError::BadSignature {
        reason: format!(
            "it is {} bytes long; an Ed25519 signature is 64",
            signature.len()
        ),
    })?;
    key.verify_strict(&expected, &signature)
        .map_err(|e| ReleaseError::BadSignature {
            reason: e.to_string(),
        })
}

fn key_bytes_from_hex(what: &'static str, text: &str) -> Result<[u8; 32], ReleaseError> {
    let bytes = hex::decode(text.trim()).map_err(|e| ReleaseError::BadKey {
        what,
        reason: format!("not hex: {e}"),
    })?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| ReleaseError::BadKey {
            what,
            reason: format!(
                "{} bytes ({} hex digits); expected 32 bytes (64 hex digits)",
                bytes.len(),
                bytes.len() * 2
            ),
        })
}

/// Parses an Ed25519 public key given as 64 hex digits (surrounding whitespace is ignored).
pub fn verifying_key_from_hex(text: &str) -> Result<VerifyingKey, ReleaseError> {
    const WHAT: &str = "verifying key";
    let bytes = key_bytes_from_hex(WHAT, text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| ReleaseError::BadKey {
        what: WHAT,
        reason: format!("not an Ed25519 public key: {e}"),
    })
}

/// Parses an Ed25519 secret key (the 32-byte seed) given as 64 hex digits.
pub fn signing_key_from_hex(text: &str) -> Result<SigningKey, ReleaseError> {
    Ok(SigningKey::from_bytes(&key_bytes_from_hex(
        "signing key",
        text,
    )?))
}

/// A signing key derived deterministically from `seed`, **for demos and tests only**: anyone
/// who knows the seed (and a `u64` is easily guessed) can sign models with it. Production keys
/// come from [`signing_key_from_hex`] with a secret generated by a proper RNG.
pub fn signing_key_from_seed(seed: u64) -> SigningKey {
    let mut material = Vec::with_capacity(40);
    material.extend_from_slice(b"loopline demo signing key");
    material.extend_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&sha256(&material))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(seed: u64) -> (Vec<u8>, [u8; 32], [u8; 64], SigningKey) {
        let key = signing_key_from_seed(seed);
        let artifact = b"loopline artifact".to_vec();
        let digest = sha256(&artifact);
        let signature = sign(&digest, &key);
        (artifact, digest, signature, key)
    }

    #[test]
    fn sha256_of_empty_input_is_the_known_digest() {
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_good_release_verifies() {
        let (artifact, digest, signature, key) = release(1);
        assert_eq!(
            verify(&artifact, &digest, &signature, &key.verifying_key()),
            Ok(())
        );
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let (artifact, digest, signature, key) = release(1);
        let vk = key.verifying_key();
        assert_eq!(
            verify(&artifact, &digest, &[], &vk),
            Err(ReleaseError::Unsigned)
        );
        assert_eq!(
            verify(&artifact, &digest[..31], &signature, &vk),
            Err(ReleaseError::BadDigestLength { len: 31 })
        );
        let err = verify(b"other bytes", &digest, &signature, &vk).unwrap_err();
        assert!(
            matches!(&err, ReleaseError::DigestMismatch { expected, .. } if *expected == hex::encode(digest)),
            "{err:?}"
        );
        // Signed by another key.
        let other = signing_key_from_seed(2);
        let err = verify(&artifact, &digest, &signature, &other.verifying_key()).unwrap_err();
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err:?}");
        // A flipped signature bit.
        let mut flipped = signature;
        flipped[10] ^= 1;
        let err = verify(&artifact, &digest, &flipped, &vk).unwrap_err();
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err:?}");
        // A truncated signature.
        let err = verify(&artifact, &digest, &signature[..63], &vk).unwrap_err();
        assert!(err.to_string().contains("63 bytes"), "{err}");
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let key = signing_key_from_seed(9);
        let parsed = signing_key_from_hex(&hex::encode(key.to_bytes())).unwrap();
        assert_eq!(parsed.to_bytes(), key.to_bytes());
        let vk_hex = format!("  {}\n", hex::encode(key.verifying_key().to_bytes()));
        assert_eq!(
            verifying_key_from_hex(&vk_hex).unwrap(),
            key.verifying_key()
        );
    }

    #[test]
    fn bad_hex_keys_are_named_errors() {
        let err = verifying_key_from_hex("abcd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad verifying key: 2 bytes (4 hex digits); expected 32 bytes (64 hex digits)"
        );
        let err = signing_key_from_hex("zz").unwrap_err();
        assert!(
            err.to_string().starts_with("bad signing key: not hex"),
            "{err}"
        );
    }

    #[test]
    fn seeded_keys_are_deterministic_and_distinct() {
        assert_eq!(
            signing_key_from_seed(3).to_bytes(),
            signing_key_from_seed(3).to_bytes()
        );
        assert_ne!(
            signing_key_from_seed(3).to_bytes(),
            signing_key_from_seed(4).to_bytes()
        );
    }
}
