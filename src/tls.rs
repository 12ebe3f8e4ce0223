//! Serving certificates: loading, self-signing, and rotation without restart.
//!
//! Kubernetes updates Secret volumes by swapping a `..data` symlink, so watching inodes is
//! fragile; the reloader instead re-reads the files on an interval ([`crate::file_watch`]) and
//! swaps the certificate in when their bytes change and still parse. A bad or half-written pair
//! keeps the old certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::file_watch::{self, Contents, FilePoller, FileWatchError};

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM did not hold what was expected.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or is of an unsupported type.
    #[error("certificate {cert} and key {key} do not form a usable pair: {reason}")]
    Pair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// Self-signing failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
}

/// Resolves the current serving certificate for every handshake; swapped atomically on rotation.
#[derive(Debug)]
pub struct CertificateStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertificateStore {
    /// A store serving `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Replace the certificate; handshakes already under way keep the old one.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// The end-entity certificate currently served (DER).
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server config for the API port: ALPN `h2` and `http/1.1`, as the aggregator offers.
/// `client_verifier` decides whether a client certificate is asked for and which are accepted
/// (the front-proxy and client CAs; see `auth::trust`).
pub fn server_config(
    store: Arc<CertificateStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
) -> ServerConfig {
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// The process-wide rustls crypto provider (aws-lc-rs), installed by `main` and by tests.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Parse a PEM certificate chain (`cert_pem`, read from `cert`) and private key (`key_pem`,
/// from `key`) into a key rustls can serve, checking that key and certificate match.
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::Pem {
            path: cert.to_path_buf(),
            reason: format!("not a PEM certificate chain: {err}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| TlsError::Pem {
        path: key.to_path_buf(),
        reason: format!("no usable private key: {err}"),
    })?;
    CertifiedKey::from_der(chain, private_key, &provider()).map_err(|err| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: err.to_string(),
    })
}

/// Load a certificate and key from files (blocking: call it off the async workers). Returns
/// the bytes read too, for [`watch_files`] to notice changes.
pub fn load_files(cert: &Path, key: &Path) -> Result<(CertifiedKey, Contents), TlsError> {
    let pair = file_watch::read_blocking(&[cert.to_path_buf(), key.to_path_buf()]).map_err(
        |err| match err {
            FileWatchError::Read { path, source } => TlsError::Read { path, source },
            FileWatchError::Interrupted { path, source } => TlsError::Read {
                path,
                source: std::io::Error::other(source),
            },
        },
    )?;
    Ok((parse_pair(pair.file(0), pair.file(1), cert, key)?, pair))
}

/// A self-signed certificate for `names` (DNS names or IP addresses), and its PEM.
pub fn self_signed(names: &[String]) -> Result<(CertifiedKey, String), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|err| TlsError::Generate(err.to_string()))?;
    let cert_pem = generated.cert.pem();
    let key_pem = generated.signing_key.serialize_pem();
    let generated_name = Path::new("<generated>");
    let key = parse_pair(
        cert_pem.as_bytes(),
        key_pem.as_bytes(),
        generated_name,
        generated_name,
    )?;
    Ok((key, cert_pem))
}

/// Re-read `cert` and `key` every `interval` until `shutdown` resolves, swapping in a pair whose
/// bytes differ from `in_use` (what [`load_files`] returned) and that parses (see
/// [`crate::file_watch`]: Secret-volume symlink swaps, half-written pairs).
pub async fn watch_files(
    store: Arc<CertificateStore>,
    cert: PathBuf,
    key: PathBuf,
    in_use: Contents,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let poller = FilePoller::new(vec![cert.clone(), key.clone()], interval, Some(in_use));
    poller
        .run("serving certificate", shutdown, |pair| {
            store.replace(parse_pair(pair.file(0), pair.file(1), &cert, &key)?);
            tracing::info!(cert = %cert.display(), "serving certificate rotated");
            Ok::<_, TlsError>(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn install_provider() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        (cert, key, generated.cert.pem())
    }

    #[test]
    fn mismatched_key_and_certificate_are_refused() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, _, _) = write_pair(dir.path(), "a");
        let (_, key_b, _) = write_pair(dir.path(), "b");
        let err = load_files(&cert_a, &key_b).unwrap_err();
        assert!(matches!(err, TlsError::Pair { .. }), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c");
        let key = dir.path().join("k");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = load_files(&cert, &key).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        let missing = load_files(&dir.path().join("none"), &key).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read"), "{missing}");
    }

    #[tokio::test(start_paused = true)]
    async fn watcher_swaps_in_a_new_pair_and_ignores_a_broken_one() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "first");
        let (certified, pair) = load_files(&cert, &key).unwrap();
        let first = certified.cert[0].clone();
        let store = Arc::new(CertificateStore::new(certified));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watch_files(
            store.clone(),
            cert.clone(),
            key.clone(),
            pair,
            Duration::from_secs(1),
            async {
                let _ = stopped.await;
            },
        ));
        // A half-written rotation (new cert, old key) must not be served.
        let (new_cert, new_key, _) = write_pair(dir.path(), "second");
        std::fs::copy(&new_cert, &cert).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.current_certificate().unwrap(), first);
        std::fs::copy(&new_key, &key).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = store.current_certificate().unwrap();
        assert_ne!(now, first);
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
