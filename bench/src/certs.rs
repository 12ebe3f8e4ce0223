//! Certificate authorities and client certificates for benchmarks, generated with rcgen: the
//! front-proxy (requestheader) CA and the client certificate kube-apiserver's aggregator
//! presents, and serving certificates for fake servers.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA that signs client and serving certificates.
pub struct Ca {
    /// The CA certificate (PEM), for `--requestheader-client-ca-file` or a kubeconfig.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedPem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

impl CertifiedPem {
    /// The pair as a reqwest client identity (certificate + key in one PEM).
    pub fn identity(&self) -> anyhow::Result<reqwest::Identity> {
        reqwest::Identity::from_pem(format!("{}{}", self.cert, self.key).as_bytes())
            .context("client identity")
    }
}

impl Ca {
    /// A new self-signed CA named `name` (ECDSA P-256, as kubeadm's are).
    pub fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A client certificate as kube issues them: CN = user, O = group, extended key usage
    /// clientAuth. The aggregator's is CN `front-proxy-client` from the front-proxy CA.
    pub fn client(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> anyhow::Result<CertifiedPem> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A serving certificate for 127.0.0.1 and localhost.
    pub fn server(&self, common_name: &str) -> anyhow::Result<CertifiedPem> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}
