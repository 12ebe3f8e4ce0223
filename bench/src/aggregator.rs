//! Requests as kube-apiserver's aggregator sends them: over mTLS with the front-proxy client
//! certificate (CN `front-proxy-client`, signed by the requestheader CA), with the caller's
//! identity in `X-Remote-*` headers: one `X-Remote-Group` line per group, percent-encoded
//! `X-Remote-Extra-<key>` names.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::certs::{Ca, CertifiedPem};

/// The HPA controller, as the aggregator names it.
pub const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

/// The front proxy: its CA (what the adapter trusts) and its client certificate.
#[derive(Debug)]
pub struct FrontProxy {
    /// The requestheader CA.
    pub ca: Ca,
    /// The aggregator's client certificate.
    pub client: CertifiedPem,
}

impl FrontProxy {
    /// A requestheader CA and a `front-proxy-client` certificate from it.
    pub fn new() -> anyhow::Result<FrontProxy> {
        let ca = Ca::new("front-proxy-ca")?;
        let client = ca.client("front-proxy-client", None)?;
        Ok(FrontProxy { ca, client })
    }

    /// The adapter flags that trust this front proxy without a cluster lookup.
    pub fn adapter_flags(&self, ca_file: &std::path::Path) -> Vec<String> {
        vec![
            "--authentication-skip-lookup".to_string(),
            format!("--requestheader-client-ca-file={}", ca_file.display()),
            "--requestheader-allowed-names=front-proxy-client".to_string(),
        ]
    }
}

/// Who the aggregator says is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `X-Remote-User`.
    pub user: String,
    /// `X-Remote-Group`, one line each.
    pub groups: Vec<String>,
    /// `X-Remote-Uid`, if any.
    pub uid: Option<String>,
    /// `X-Remote-Extra-<key>`; keys are sent percent-encoded as the aggregator does.
    pub extra: Vec<(String, String)>,
}

impl Caller {
    /// The HPA controller on a current cluster (the identity behind almost every request).
    pub fn hpa_controller() -> Caller {
        Caller {
            user: HPA_USER.to_string(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                "system:serviceaccounts:kube-system".to_string(),
                "system:authenticated".to_string(),
            ],
            uid: Some("0c7b4a8e-5bd0-4b5e-9a7c-2f6f1c0d7e11".to_string()),
            extra: vec![
                (
                    "authentication.kubernetes.io/credential-id".to_string(),
                    "JTI=7f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9".to_string(),
                ),
                (
                    "authentication.kubernetes.io/node-name".to_string(),
                    "ip-10-0-1-23.ec2.internal".to_string(),
                ),
            ],
        }
    }

    /// The identity headers for this caller.
    pub fn headers(&self) -> anyhow::Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        headers.append("x-remote-user", HeaderValue::from_str(&self.user)?);
        for group in &self.groups {
            headers.append("x-remote-group", HeaderValue::from_str(group)?);
        }
        if let Some(uid) = &self.uid {
            headers.append("x-remote-uid", HeaderValue::from_str(uid)?);
        }
        for (key, value) in &self.extra {
            // The aggregator escapes the key (`/` -> `%2f`) so it fits a header name.
            let name = format!(
                "x-remote-extra-{}",
                key.replace('%', "%25").replace('/', "%2f")
            );
            headers.append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        // The aggregator asks for protobuf first; JSON is an acceptable answer.
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf, */*"),
        );
        Ok(headers)
    }
}
