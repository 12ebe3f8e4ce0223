//! TLS to a delegate: its serving certificate checked against its CA (swapped in place when the
//! CA rotates, without rebuilding the connection pool), or not checked when explicitly asked;
//! and this adapter's client certificate, when one is configured (also swapped in place).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

/// Why a PEM bundle is not a usable CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The text is not PEM.
    #[error("not a PEM certificate bundle")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// PEM without a certificate.
    #[error("no CERTIFICATE block found")]
    Empty,
    /// A certificate that cannot be a trust anchor.
    #[error("unusable CA certificate")]
    Unusable(#[source] rustls::Error),
    /// The verifier could not be built from the certificates.
    #[error("cannot build a certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
}

/// A parsed CA bundle and the verifier for server certificates that chain to it.
#[derive(Debug)]
pub struct CaRoots {
    pem: Vec<u8>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl CaRoots {
    /// Parse a PEM bundle of one or more CA certificates.
    pub fn from_pem(pem: &[u8]) -> Result<Self, CaError> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::Pem)?;
        if certificates.is_empty() {
            return Err(CaError::Empty);
        }
        let mut roots = RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(CaError::Unusable)?;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()
                .map_err(CaError::Verifier)?;
        Ok(Self {
            pem: pem.to_vec(),
            verifier,
        })
    }

    /// The PEM this was parsed from (to notice changes).
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

/// Checks a delegate's serving certificate against its current CA. Connections already open
/// keep the certificate they were checked with; new ones use the CA trusted now.
#[derive(Debug)]
pub struct DelegateVerifier {
    /// `None` for `--delegate-insecure-skip-tls-verify`; otherwise the CA slot (empty until a
    /// CA read from a Secret arrives).
    ca: Option<ArcSwapOption<CaRoots>>,
}

impl DelegateVerifier {
    /// A verifier that checks against a CA, set later with [`set_ca`](Self::set_ca).
    pub fn with_ca(roots: Option<CaRoots>) -> Self {
        Self {
            ca: Some(ArcSwapOption::from(roots.map(Arc::new))),
        }
    }

    /// A verifier that accepts any certificate (still checking the handshake's signatures, so
    /// the peer holds the key of the certificate it shows, whatever that certificate is).
    pub fn insecure() -> Self {
        Self { ca: None }
    }

    /// Trust `roots` from now on.
    pub fn set_ca(&self, roots: CaRoots) {
        if let Some(slot) = &self.ca {
            slot.store(Some(Arc::new(roots)));
        }
    }

    /// Whether a handshake can succeed at all: a CA is loaded, or verification is off.
    pub fn ready(&self) -> bool {
        self.ca.as_ref().is_none_or(|slot| slot.load().is_some())
    }

    /// The PEM trusted now, if any (to notice changes).
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.ca
            .as_ref()
            .and_then(|slot| slot.load().as_ref().map(|roots| roots.pem().to_vec()))
    }
}

impl ServerCertVerifier for DelegateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(slot) = &self.ca else {
            return Ok(ServerCertVerified::assertion());
        };
        match slot.load().as_ref() {
            Some(roots) => roots.verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::General(
                "no CA is loaded for this delegate yet".to_string(),
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
            &crate::tls::provider().signature_verification_algorithms,
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
            &crate::tls::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// This adapter's client certificate for a delegate, swapped in place when its files change.
#[derive(Debug)]
pub struct ClientCertificate {
    current: ArcSwapOption<CertifiedKey>,
}

impl ClientCertificate {
    /// Present `key` from now on.
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwapOption::from_pointee(key),
        }
    }

    /// Replace the certificate; handshakes already done keep the old one.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Some(Arc::new(key)));
    }
}

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The rustls client configuration for one delegate (ALPN is set by the connector).
pub fn client_config(
    verifier: Arc<DelegateVerifier>,
    client_certificate: Option<Arc<ClientCertificate>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Ok(match client_certificate {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }

    fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> CertificateDer<'static> {
        let params = rcgen::CertificateParams::new(vec!["keda.svc".to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    #[test]
    fn checks_against_the_ca_trusted_now() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (first_pem, first) = ca("keda-ca");
        let (second_pem, second) = ca("keda-ca-rotated");
        let name = ServerName::try_from("keda.svc").unwrap();
        let verifier = DelegateVerifier::with_ca(None);
        assert!(!verifier.ready());
        let err = verifier
            .verify_server_cert(&leaf(&first), &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("no CA is loaded"), "{err}");
        verifier.set_ca(CaRoots::from_pem(first_pem.as_bytes()).unwrap());
        assert!(verifier.ready());
        verifier
            .verify_server_cert(&leaf(&first), &[], &name, &[], UnixTime::now())
            .unwrap();
        // A certificate from another CA is refused, never waved through.
        let err = verifier
            .verify_server_cert(&leaf(&second), &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        // After a rotation, the new CA's certificates pass and the old ones do not.
        verifier.set_ca(CaRoots::from_pem(second_pem.as_bytes()).unwrap());
        verifier
            .verify_server_cert(&leaf(&second), &[], &name, &[], UnixTime::now())
            .unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf(&first), &[], &name, &[], UnixTime::now())
                .is_err()
        );
        assert_eq!(verifier.ca_pem().unwrap(), second_pem.as_bytes());
        // Insecure mode accepts anything, and is ready without a CA.
        let insecure = DelegateVerifier::insecure();
        assert!(insecure.ready());
        insecure
            .verify_server_cert(&leaf(&second), &[], &name, &[], UnixTime::now())
            .unwrap();
    }

    #[test]
    fn garbage_is_not_a_ca() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let err = CaRoots::from_pem(b"not pem").unwrap_err();
        assert!(matches!(err, CaError::Empty), "{err:?}");
        assert_eq!(err.to_string(), "no CERTIFICATE block found");
    }
}
