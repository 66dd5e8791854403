//! TLS to the broker: which files to trust and to present, and the rustls client built from
//! them.
//!
//! Design invariants:
//! - rustls on the `ring` provider, named explicitly: no process-wide default provider is
//!   installed or needed, and `aws-lc` stays out of the build (it is large and harder to
//!   cross-build for the Pi).
//! - Trust is explicit. A TLS connection needs `ca_file`; the platform's certificate store is
//!   never consulted, so a device trusts exactly the CA its operator put on it.
//! - Every file is read once, when the options are built; an error names the key, the file and
//!   what is wrong with it, so a bad deployment fails at start-up rather than at the first
//!   handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::{Error, Result};

/// TLS files for an `mqtts://` broker. All paths are PEM files.
///
/// With a plain `mqtt://` broker every field must be left out. Client-certificate
/// authentication (mutual TLS) needs both `client_cert_file` and `client_key_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM bundle of the CA certificates to trust for the broker's certificate. Required for
    /// `mqtts://`: the system's certificate store is deliberately not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain this client presents to the broker (leaf first), for brokers that
    /// authenticate devices by certificate. Needs `client_key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`. Keep it readable by the
    /// agent's user only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

/// Config key names, as errors show them.
pub const CA_FILE: &str = "ca_file";
pub const CLIENT_CERT_FILE: &str = "client_cert_file";
pub const CLIENT_KEY_FILE: &str = "client_key_file";

impl TlsConfig {
    /// True when no file is set: the configuration of a plain `mqtt://` connection.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// The keys that are set, for errors that name them.
    pub(crate) fn keys_set(&self) -> Vec<&'static str> {
        [
            (CA_FILE, self.ca_file.is_some()),
            (CLIENT_CERT_FILE, self.client_cert_file.is_some()),
            (CLIENT_KEY_FILE, self.client_key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// Lays `other`'s set fields over this one's: how a binary applies environment variables
    /// and flags over the config file.
    pub fn overlay(&mut self, other: TlsConfig) {
        if other.ca_file.is_some() {
            self.ca_file = other.ca_file;
        }
        if other.client_cert_file.is_some() {
            self.client_cert_file = other.client_cert_file;
        }
        if other.client_key_file.is_some() {
            self.client_key_file = other.client_key_file;
        }
    }

    /// Checks the combination of keys without reading any file: `ca_file` present, client
    /// certificate and key both or neither. `broker` only names the broker in errors.
    pub fn check(&self, broker: &str) -> Result<()> {
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => {
                return Err(tls_error(
                    broker,
                    "client_cert_file is set but client_key_file is not: client-certificate \
                     authentication needs both",
                ));
            }
            (None, Some(_)) => {
                return Err(tls_error(
                    broker,
                    "client_key_file is set but client_cert_file is not: client-certificate \
                     authentication needs both",
                ));
            }
            _ => {}
        }
        if self.ca_file.is_none() {
            return Err(tls_error(
                broker,
                "TLS needs ca_file, a PEM bundle of the CA certificates to trust (the system's \
                 certificate store is not used)",
            ));
        }
        Ok(())
    }

    /// Reads the files and builds the rustls client configuration (ring provider, TLS 1.2 and
    /// 1.3). `broker` only names the broker in errors.
    pub fn client_config(&self, broker: &str) -> Result<Arc<ClientConfig>> {
        self.check(broker)?;
        let Some(ca_file) = &self.ca_file else {
            return Err(tls_error(broker, "ca_file is not set"));
        };
        let mut roots = RootCertStore::empty();
        for cert in read_certs(CA_FILE, ca_file)? {
            roots.add(cert).map_err(|e| {
                file_error(CA_FILE, ca_file, format!("unusable CA certificate: {e}"))
            })?;
        }

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(broker, &format!("TLS set-up: {e}")))?
            .with_root_certificates(roots);
        let config = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert_file), Some(key_file)) => {
                let chain = read_certs(CLIENT_CERT_FILE, cert_file)?;
                let key = read_key(key_file)?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    file_error(
                        CLIENT_KEY_FILE,
                        key_file,
                        format!(
                            "unusable with client_cert_file {}: {e}",
                            cert_file.display()
                        ),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// Every certificate in a PEM file; a file with none is an error.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, pem_reason(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, pem_reason(e)))?;
    if certs.is_empty() {
        return Err(file_error(
            key,
            path,
            "holds no PEM certificate (no -----BEGIN CERTIFICATE----- section)".to_owned(),
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => file_error(
            CLIENT_KEY_FILE,
            path,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        ),
        e => file_error(CLIENT_KEY_FILE, path, pem_reason(e)),
    })
}

fn pem_reason(e: pem::Error) -> String {
    match e {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "holds no PEM item of the expected kind".to_owned(),
        e => format!("not a valid PEM file: {e}"),
    }
}

fn file_error(key: &'static str, path: &Path, reason: String) -> Error {
    Error::TlsFile {
        key,
        path: path.to_owned(),
        reason,
    }
}

fn tls_error(broker: &str, reason: &str) -> Error {
    Error::Tls {
        broker: broker.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ca: bool, cert: bool, key: bool) -> TlsConfig {
        TlsConfig {
            ca_file: ca.then(|| PathBuf::from("/etc/loopline/ca.pem")),
            client_cert_file: cert.then(|| PathBuf::from("/etc/loopline/agent.crt")),
            client_key_file: key.then(|| PathBuf::from("/etc/loopline/agent.key")),
        }
    }

    #[test]
    fn checks_the_combination_of_keys() {
        assert!(config(true, false, false).check("b").is_ok());
        assert!(config(true, true, true).check("b").is_ok());
        for (tls, needle) in [
            (config(false, false, false), "needs ca_file"),
            (config(true, true, false), "client_key_file is not"),
            (config(true, false, true), "client_cert_file is not"),
        ] {
            let err = tls.check("mqtts://b:8883").unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains("mqtts://b:8883"), "{err}");
        }
    }

    #[test]
    fn deserializes_and_denies_unknown_keys() {
        let tls: TlsConfig = toml::from_str("ca_file = \"/ca.pem\"\n").unwrap();
        assert_eq!(tls.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.keys_set(), vec![CA_FILE]);
        let err = toml::from_str::<TlsConfig>("ca_fiel = \"/ca.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca_fiel"), "{err}");
        assert_eq!(toml::to_string(&TlsConfig::default()).unwrap(), "");
    }

    #[test]
    fn overlay_keeps_what_is_not_overridden() {
        let mut base = config(true, true, true);
        base.overlay(TlsConfig {
            ca_file: Some(PathBuf::from("/other/ca.pem")),
            ..TlsConfig::default()
        });
        assert_eq!(base.ca_file, Some(PathBuf::from("/other/ca.pem")));
        assert_eq!(
            base.client_key_file,
            Some(PathBuf::from("/etc/loopline/agent.key"))
        );
        assert!(TlsConfig::default().is_empty());
    }
}
