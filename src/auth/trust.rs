//! The certificate authorities callers are checked against, swappable at runtime.
//!
//! Two CAs matter, as for any aggregated API server: the requestheader (front-proxy) CA, whose
//! certificate holders may assert identities in headers, and the client CA, whose certificates
//! are identities themselves. The TLS layer asks for (never requires) a client certificate and
//! accepts chains to either; authentication then checks which one a chain belongs to against
//! the CAs trusted at that moment. Every change gets a new generation number, so what a
//! connection concluded from its certificate can be reused until the CAs change (see
//! `auth::connection`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use axum::http::HeaderName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// Why a CA bundle is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TrustError(pub String);

/// A parsed CA bundle and a verifier for chains that end in it.
#[derive(Debug)]
pub struct CaBundle {
    pem: Vec<u8>,
    certificates: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl CaBundle {
    /// Parse a PEM bundle of one or more CA certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TrustError(format!("not a PEM certificate bundle: {err}")))?;
        if certificates.is_empty() {
            return Err(TrustError("no CERTIFICATE block found".to_string()));
        }
        let verifier = verifier_for(&certificates, false)?;
        Ok(Self {
            pem: pem.to_vec(),
            certificates,
            verifier,
        })
    }

    /// The PEM this was parsed from (to notice changes).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// Whether `chain` (end entity first, then intermediates) chains to this bundle, is valid
    /// at `now`, and may be used for client authentication.
    pub fn verify(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ())
    }
}

fn verifier_for(
    certificates: &[CertificateDer<'static>],
    allow_unauthenticated: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TrustError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate.clone())
            .map_err(|err| TrustError(format!("unusable CA certificate: {err}")))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if allow_unauthenticated {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|err| TrustError(format!("cannot build a certificate verifier: {err}")))
}

fn provider() -> Arc<CryptoProvider> {
    crate::tls::provider()
}

/// Front-proxy settings: who may assert identities, and in which headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaderSettings {
    /// CNs the proxy certificate may have; empty means any certificate the CA signed.
    pub allowed_names: Vec<String>,
    /// The user name: the first of these headers with a non-empty value.
    pub username_headers: Vec<HeaderName>,
    /// Groups: every non-empty value of every one of these headers.
    pub group_headers: Vec<HeaderName>,
    /// The UID: the first of these headers with a non-empty value.
    pub uid_headers: Vec<HeaderName>,
    /// Extra attributes: headers starting with one of these (lowercase) prefixes.
    pub extra_prefixes: Vec<String>,
}

impl RequestHeaderSettings {
    /// Settings from header names as kube-apiserver's flags and ConfigMap spell them.
    pub fn new(
        allowed_names: Vec<String>,
        username_headers: &[String],
        group_headers: &[String],
        uid_headers: &[String],
        extra_prefixes: &[String],
    ) -> Result<Self, TrustError> {
        let names = |list: &[String]| {
            list.iter()
                .map(|name| {
                    HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|_| TrustError(format!("{name:?} is not an HTTP header name")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allowed_names,
            username_headers: names(username_headers)?,
            group_headers: names(group_headers)?,
            uid_headers: names(uid_headers)?,
            extra_prefixes: extra_prefixes
                .iter()
                .map(|prefix| prefix.trim().to_ascii_lowercase())
                .filter(|prefix| !prefix.is_empty())
                .collect(),
        })
    }

    /// Whether a verified proxy certificate's CN may assert identities.
    pub fn allows(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty()
            || common_name.is_some_and(|cn| self.allowed_names.iter().any(|name| name == cn))
    }
}

/// The front-proxy CA and its settings.
#[derive(Debug)]
pub struct RequestHeaderTrust {
    /// The requestheader CA.
    pub ca: CaBundle,
    /// Allowed names and header names.
    pub settings: RequestHeaderSettings,
}

/// One consistent view of what is trusted.
#[derive(Debug, Clone)]
pub struct Trust {
    /// Grows with every change of the store (and is unique across stores): equal generations
    /// mean the same CAs and settings.
    pub generation: u64,
    /// Front-proxy trust, if configured.
    pub request_header: Option<Arc<RequestHeaderTrust>>,
    /// The client CA, if configured.
    pub client_ca: Option<Arc<CaBundle>>,
    /// Accepts chains to either CA at the handshake; `None` when neither is configured.
    handshake: Option<Arc<dyn ClientCertVerifier>>,
}

impl Trust {
    fn new(
        generation: u64,
        request_header: Option<Arc<RequestHeaderTrust>>,
        client_ca: Option<Arc<CaBundle>>,
    ) -> Self {
        let roots: Vec<CertificateDer<'static>> = request_header
            .iter()
            .flat_map(|rh| rh.ca.certificates.iter())
            .chain(client_ca.iter().flat_map(|ca| ca.certificates.iter()))
            .cloned()
            .collect();
        let handshake = if roots.is_empty() {
            None
        } else {
            // Each bundle already built a verifier on its own, so their union cannot fail.
            match verifier_for(&roots, true) {
                Ok(verifier) => Some(verifier),
                Err(err) => {
                    tracing::error!(error = %err, "cannot combine the client CAs; client certificates are not requested");
                    None
                }
            }
        };
        Self {
            generation,
            request_header,
            client_ca,
            handshake,
        }
    }
}

/// The CAs in force, swapped atomically when a source (ConfigMap or file) changes. Also the
/// rustls verifier of the API port, so a rotation applies to the next handshake.
#[derive(Debug)]
pub struct TrustStore {
    current: ArcSwap<Trust>,
    provider: Arc<CryptoProvider>,
}

/// Generations are unique across stores too, so a verdict reached under one store can never be
/// mistaken for one under another.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl TrustStore {
    /// A store trusting the given CAs.
    pub fn new(
        request_header: Option<Arc<RequestHeaderTrust>>,
        client_ca: Option<Arc<CaBundle>>,
    ) -> Self {
        Self {
            current: ArcSwap::from_pointee(Trust::new(
                next_generation(),
                request_header,
                client_ca,
            )),
            provider: provider(),
        }
    }

    /// What is trusted now.
    pub fn current(&self) -> Arc<Trust> {
        self.current.load_full()
    }

    /// What is trusted now, without taking a reference count (the per-request read).
    pub fn load(&self) -> arc_swap::Guard<Arc<Trust>> {
        self.current.load()
    }

    /// The generation of what is trusted now.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Replace the front-proxy trust, keeping the client CA.
    pub fn set_request_header(&self, request_header: Option<Arc<RequestHeaderTrust>>) {
        self.current.rcu(|trust| {
            Trust::new(
                next_generation(),
                request_header.clone(),
                trust.client_ca.clone(),
            )
        });
    }

    /// Replace the client CA, keeping the front-proxy trust.
    pub fn set_client_ca(&self, client_ca: Option<Arc<CaBundle>>) {
        self.current.rcu(|trust| {
            Trust::new(
                next_generation(),
                trust.request_header.clone(),
                client_ca.clone(),
            )
        });
    }
}

/// A generation no snapshot has had (`rcu` may build several candidates; gaps are fine).
fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

impl ClientCertVerifier for TrustStore {
    fn offer_client_auth(&self) -> bool {
        self.current.load().handshake.is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        // Bearer tokens and (if enabled) anonymous callers connect without a certificate.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to borrow from `self` while the CAs rotate underneath. An empty
        // list tells clients to send their certificate whoever issued it, which is what the
        // aggregator and kubectl (Go's crypto/tls) then do.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.current.load().handshake {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no client certificate authority is configured".to_string(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::test_ca::{Ca, ca};

    fn leaf(ca: &Ca, cn: &str) -> CertificateDer<'static> {
        ca.leaf(cn, None, None)
    }

    fn settings(allowed: &[&str]) -> RequestHeaderSettings {
        RequestHeaderSettings::new(
            allowed.iter().map(|s| s.to_string()).collect(),
            &["X-Remote-User".into()],
            &["X-Remote-Group".into()],
            &["X-Remote-Uid".into()],
            &["X-Remote-Extra-".into()],
        )
        .unwrap()
    }

    #[test]
    fn bundles_verify_only_their_own_chains() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let other = ca("other-ca");
        let bundle = CaBundle::from_pem(proxy.pem.as_bytes()).unwrap();
        let now = UnixTime::now();
        bundle
            .verify(&[leaf(&proxy, "front-proxy-client")], now)
            .unwrap();
        assert!(
            bundle
                .verify(&[leaf(&other, "front-proxy-client")], now)
                .is_err()
        );
        assert!(bundle.verify(&[], now).is_err());
        assert!(CaBundle::from_pem(b"garbage").is_err());
    }

    #[test]
    fn the_handshake_accepts_either_ca_and_follows_rotation() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let client = ca("client-ca");
        let rotated = ca("front-proxy-ca-2");
        let store = TrustStore::new(None, None);
        assert!(!store.offer_client_auth());
        let mut generations = vec![store.generation()];
        let now = UnixTime::now();
        assert!(
            store
                .verify_client_cert(&leaf(&client, "alice"), &[], now)
                .is_err()
        );

        store.set_request_header(Some(Arc::new(RequestHeaderTrust {
            ca: CaBundle::from_pem(proxy.pem.as_bytes()).unwrap(),
            settings: settings(&[]),
        })));
        generations.push(store.generation());
        store.set_client_ca(Some(Arc::new(
            CaBundle::from_pem(client.pem.as_bytes()).unwrap(),
        )));
        generations.push(store.generation());
        assert!(store.offer_client_auth());
        assert!(!store.client_auth_mandatory());
        for cert in [leaf(&proxy, "front-proxy-client"), leaf(&client, "alice")] {
            store.verify_client_cert(&cert, &[], now).unwrap();
        }
        assert!(
            store
                .verify_client_cert(&leaf(&rotated, "x"), &[], now)
                .is_err()
        );

        // Rotating the front-proxy CA keeps the client CA.
        store.set_request_header(Some(Arc::new(RequestHeaderTrust {
            ca: CaBundle::from_pem(rotated.pem.as_bytes()).unwrap(),
            settings: settings(&[]),
        })));
        generations.push(store.generation());
        // Every change is a new generation, and the snapshot carries its own.
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "{generations:?}"
        );
        assert_eq!(store.current().generation, store.generation());
        store
            .verify_client_cert(&leaf(&rotated, "x"), &[], now)
            .unwrap();
        store
            .verify_client_cert(&leaf(&client, "alice"), &[], now)
            .unwrap();
        assert!(
            store
                .verify_client_cert(&leaf(&proxy, "front-proxy-client"), &[], now)
                .is_err()
        );
    }

    #[test]
    fn allowed_names_empty_means_any() {
        assert!(settings(&[]).allows(Some("anything")));
        assert!(settings(&[]).allows(None));
        let strict = settings(&["front-proxy-client"]);
        assert!(strict.allows(Some("front-proxy-client")));
        assert!(!strict.allows(Some("front-proxy-client2")));
        assert!(!strict.allows(None));
        assert!(RequestHeaderSettings::new(vec![], &["bad header".into()], &[], &[], &[]).is_err());
    }
}
