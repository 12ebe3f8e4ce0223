//! Test certificate authorities for the unit tests of `auth` (generated with rcgen).
#![allow(clippy::unwrap_used)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

/// A CA: its certificate as PEM, and what signs with it.
pub(crate) struct Ca {
    pub(crate) pem: String,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

/// A new self-signed CA named `name`.
pub(crate) fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

impl Ca {
    /// A certificate signed by this CA with CN `cn`, O `o`, and validity `(not_before,
    /// not_after)` in seconds since the epoch (rcgen's default when `None`).
    pub(crate) fn leaf(
        &self,
        cn: &str,
        o: Option<&str>,
        validity: Option<(i64, i64)>,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = o {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        if let Some((not_before, not_after)) = validity {
            params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
            params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        }
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &self.issuer).unwrap().der().clone()
    }
}
