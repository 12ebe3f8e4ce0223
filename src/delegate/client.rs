//! One delegate: its own connection pool (hyper-util over hyper-rustls, HTTP/2 or HTTP/1.1 by
//! ALPN), its credentials, its concurrency bound, and the last metric list it gave.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::http::{HeaderValue, Request, Uri, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use tokio::sync::Semaphore;

use super::config::{CaSource, DelegateConfig};
use super::tls::{CaError, CaRoots, ClientCertificate, DelegateVerifier};
use crate::forward::{ForwardFailure, ForwardRequest, ForwardedAnswer, valid_metric_name};
use crate::metrics::AdapterMetrics;
use crate::provider::{Operator, Selector};

/// The discovery document every external-metrics server serves.
pub const DISCOVERY_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1";
/// At most this many names are kept from one delegate's list (discovery stays small).
pub const MAX_DISCOVERED: usize = 10_000;
/// Longest audit ID passed on (kube's are UUIDs).
const MAX_AUDIT_ID_LEN: usize = 256;
/// Longest token accepted from the token file (projected tokens are ~1 KB).
const MAX_TOKEN_LEN: usize = 64 * 1024;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A failure and its one-line detail.
pub type Failure = (ForwardFailure, String);

/// One configured delegate and everything needed to call it.
#[derive(Debug)]
pub struct Delegate {
    pub(super) config: DelegateConfig,
    url_text: String,
    client: HttpClient,
    pub(super) verifier: Arc<DelegateVerifier>,
    /// `Authorization: Bearer ...`, marked sensitive; `None` inside until a token is read.
    pub(super) token: Option<ArcSwapOption<HeaderValue>>,
    pub(super) client_certificate: Option<Arc<ClientCertificate>>,
    in_flight: Semaphore,
    discovered: ArcSwap<Vec<String>>,
    discovery_failing: AtomicBool,
    metrics: Arc<AdapterMetrics>,
}

/// Why a delegate's client cannot be built at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file cannot be read.
    #[error("cannot read {}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA (from a file, or given inline) is not usable.
    #[error("{}", path.as_ref().map_or_else(|| "the CA".to_string(), |path| path.display().to_string()))]
    Ca {
        /// The file, if it came from one.
        path: Option<PathBuf>,
        /// What is wrong with it.
        #[source]
        source: CaError,
    },
    /// The token file is not usable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The client certificate and key do not load.
    #[error(transparent)]
    ClientCertificate(#[from] crate::tls::TlsError),
    /// rustls refused the TLS configuration.
    #[error("cannot build the TLS configuration")]
    Tls(#[source] rustls::Error),
}

/// A token file that does not hold a usable bearer token. Never quotes the content.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read the token file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Content a header cannot carry (not UTF-8, control characters).
    #[error("the token file {} holds characters a header cannot carry", path.display())]
    Unprintable {
        /// The file.
        path: PathBuf,
    },
    /// Empty, or over the size cap.
    #[error("the token file {} is empty or larger than {MAX_TOKEN_LEN} bytes", path.display())]
    Size {
        /// The file.
        path: PathBuf,
    },
}

impl Delegate {
    /// Build the delegate's client, loading its CA, token and client certificate from files now
    /// (a CA from a Secret arrives later, from its watch).
    pub fn new(config: DelegateConfig, metrics: Arc<AdapterMetrics>) -> Result<Self, SetupError> {
        let name = &config.name;
        let verifier = Arc::new(match &config.ca {
            CaSource::InsecureSkipVerify => {
                tracing::warn!(
                    delegate = %name,
                    "TLS verification of this delegate is off: whoever answers on its address gets this adapter's credential and can feed HPAs any value"
                );
                DelegateVerifier::insecure()
            }
            CaSource::File(path) => {
                let pem = std::fs::read(path).map_err(|source| SetupError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                DelegateVerifier::with_ca(Some(CaRoots::from_pem(&pem).map_err(|source| {
                    SetupError::Ca {
                        path: Some(path.clone()),
                        source,
                    }
                })?))
            }
            CaSource::Pem(pem) => DelegateVerifier::with_ca(Some(
                CaRoots::from_pem(pem.as_bytes())
                    .map_err(|source| SetupError::Ca { path: None, source })?,
            )),
            CaSource::Secret { .. } => DelegateVerifier::with_ca(None),
        });
        let token = match &config.credentials.token_file {
            Some(path) => Some(ArcSwapOption::from_pointee(read_token(path)?)),
            None => None,
        };
        let client_certificate = match &config.credentials.client_certificate {
            Some((cert, key)) => {
                let (certified, _) = crate::tls::load_files(cert, key)?;
                Some(Arc::new(ClientCertificate::new(certified)))
            }
            None => None,
        };
        let tls = super::tls::client_config(verifier.clone(), client_certificate.clone())
            .map_err(SetupError::Tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // Its own pool: a delegate that hangs holds only its own connections, and at most
        // `max_concurrent_requests` of them. HTTP/2 pings notice a peer that vanished without
        // closing (a deleted pod) before the request timeout does.
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(config.max_concurrent_requests as usize)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .build(connector);
        Ok(Self {
            url_text: config.url_text(),
            in_flight: Semaphore::new(config.max_concurrent_requests as usize),
            config,
            client,
            verifier,
            token,
            client_certificate,
            discovered: ArcSwap::from_pointee(Vec::new()),
            discovery_failing: AtomicBool::new(false),
            metrics,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The URL as shown in messages.
    pub fn url_text(&self) -> &str {
        &self.url_text
    }

    /// Whether this delegate's rules take a request for `metric` with `selector`.
    pub fn takes(&self, metric: &str, selector: Option<&Selector>) -> bool {
        let rules = &self.config.rules;
        if let Some(pattern) = &rules.name_pattern
            && !pattern.is_match(metric)
        {
            return false;
        }
        match &rules.selector_key {
            // Selected with a value, as KEDA reads it (`key=value`, or `key in (value)`).
            Some(key) => selector.is_some_and(|selector| {
                selector.requirements.iter().any(|requirement| {
                    requirement.key == *key
                        && matches!(requirement.operator, Operator::Equals | Operator::In)
                        && requirement.values.iter().any(|value| !value.is_empty())
                })
            }),
            None => true,
        }
    }

    /// The names discovery shows for this delegate.
    pub fn discovered(&self) -> Arc<Vec<String>> {
        self.discovered.load_full()
    }

    /// Forward one value request; the outcome is counted and timed.
    pub async fn forward(&self, request: &ForwardRequest) -> Result<ForwardedAnswer, Failure> {
        let started = Instant::now();
        let result = self.forward_bounded(request).await;
        let outcome = match &result {
            Ok(answer) if (200..300).contains(&answer.status) => "success",
            Ok(_) => "error_status",
            Err((failure, _)) => failure.label(),
        };
        self.metrics
            .delegate()
            .request(self.name(), outcome, started.elapsed());
        if let Err((failure, detail)) = &result {
            // Configuration problems are worth a warning; an outage shows in the metrics and
            // in every HPA's status, and would otherwise log once per HPA poll.
            match failure {
                ForwardFailure::Tls | ForwardFailure::NoCa | ForwardFailure::NoCredentials => {
                    tracing::warn!(delegate = %self.name(), outcome, %detail, "cannot forward to delegate")
                }
                _ => {
                    tracing::debug!(delegate = %self.name(), outcome, %detail, "cannot forward to delegate")
                }
            }
        }
        result
    }

    async fn forward_bounded(&self, request: &ForwardRequest) -> Result<ForwardedAnswer, Failure> {
        // Never wait for a slot: a delegate that is slow must not make callers queue here.
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            (
                ForwardFailure::Busy,
                format!(
                    "{} requests are already waiting on it (its maxConcurrentRequests)",
                    self.config.max_concurrent_requests
                ),
            )
        })?;
        let path_and_query = match &request.query {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.clone(),
        };
        self.call(
            &path_and_query,
            request.accept.as_deref(),
            request.audit_id.as_deref(),
        )
        .await
    }

    /// One GET, bounded by the delegate's timeout (connect, TLS, answer and body together).
    async fn call(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        audit_id: Option<&str>,
    ) -> Result<ForwardedAnswer, Failure> {
        if !self.verifier.ready() {
            return Err((ForwardFailure::NoCa, self.ca_description()));
        }
        match tokio::time::timeout(
            self.config.timeout,
            self.send(path_and_query, accept, audit_id),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err((ForwardFailure::Timeout(self.config.timeout), String::new())),
        }
    }

    async fn send(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        audit_id: Option<&str>,
    ) -> Result<ForwardedAnswer, Failure> {
        let authority = self.config.url.authority().cloned().ok_or((
            ForwardFailure::Unreachable,
            "the URL has no host".to_string(),
        ))?;
        let uri = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(|err| {
                (
                    ForwardFailure::InvalidAnswer,
                    format!("cannot build the request: {err}"),
                )
            })?;
        let mut request = Request::get(uri).header(
            header::USER_AGENT,
            concat!("cloudwatch-metrics-adapter/", env!("CARGO_PKG_VERSION")),
        );
        let accept = accept
            .and_then(|value| HeaderValue::from_str(value).ok())
            .unwrap_or(HeaderValue::from_static("application/json"));
        request = request.header(header::ACCEPT, accept);
        if let Some(token) = &self.token {
            let Some(value) = token.load_full() else {
                return Err((
                    ForwardFailure::NoCredentials,
                    "its token file could not be read".to_string(),
                ));
            };
            request = request.header(header::AUTHORIZATION, (*value).clone());
        }
        // The same audit ID as kube-apiserver's event for the caller's request: the delegate's
        // audit log names this adapter, and the ID leads back to who really asked.
        if let Some(id) = audit_id.filter(|id| valid_audit_id(id))
            && let Ok(value) = HeaderValue::from_str(id)
        {
            request = request.header("Audit-ID", value);
        }
        let request = request.body(Empty::new()).map_err(|err| {
            (
                ForwardFailure::InvalidAnswer,
                format!("cannot build the request: {err}"),
            )
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| classify(&err))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // Refused before its body is read: an error page is not worth buffering.
        if !is_api_content_type(&content_type) {
            return Err((
                ForwardFailure::InvalidAnswer,
                format!(
                    "it answered HTTP {status} with content type {:?}, not a Kubernetes API answer",
                    content_type
                ),
            ));
        }
        let limit = usize::try_from(self.config.max_response_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<http_body_util::LengthLimitError>() {
                    (
                        ForwardFailure::InvalidAnswer,
                        format!("its answer is larger than {limit} bytes (its maxResponseBytes)"),
                    )
                } else {
                    (
                        ForwardFailure::Unreachable,
                        format!("the connection broke while reading its answer: {err}"),
                    )
                }
            })?
            .to_bytes();
        Ok(ForwardedAnswer {
            status,
            content_type,
            body,
        })
    }

    /// Fetch the delegate's metric list (in the background, never for a caller) and keep the
    /// names a request would reach it by. On failure the last good list stays.
    pub async fn refresh_discovery(&self) {
        let result = self.fetch_discovery().await;
        match result {
            Ok(names) => {
                let count = names.len();
                self.discovered.store(Arc::new(names));
                self.metrics
                    .delegate()
                    .discovery(self.name(), "success", Some(count));
                if self.discovery_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(delegate = %self.name(), metrics = count, "delegate's metric list fetched again");
                }
            }
            Err((failure, detail)) => {
                self.metrics
                    .delegate()
                    .discovery(self.name(), failure.label(), None);
                // Once per outage, not once per interval.
                if !self.discovery_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        delegate = %self.name(), url = %self.url_text, outcome = failure.label(), %detail,
                        "cannot fetch the delegate's metric list; discovery keeps the last one it had"
                    );
                }
            }
        }
    }

    async fn fetch_discovery(&self) -> Result<Vec<String>, Failure> {
        let answer = self
            .call(DISCOVERY_PATH, Some("application/json"), None)
            .await?;
        if answer.status != 200 {
            return Err((
                ForwardFailure::InvalidAnswer,
                format!(
                    "{DISCOVERY_PATH} answered HTTP {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
                ),
            ));
        }
        let list: APIResourceList = serde_json::from_slice(&answer.body).map_err(|err| {
            (
                ForwardFailure::InvalidAnswer,
                format!("{DISCOVERY_PATH} is not an APIResourceList: {err}"),
            )
        })?;
        let mut names: Vec<String> = list
            .resources
            .into_iter()
            .map(|resource| resource.name)
            .filter(|name| self.discoverable(name))
            .collect();
        names.sort();
        names.dedup();
        names.truncate(MAX_DISCOVERED);
        Ok(names)
    }

    /// A listed name is shown only if it is a usable resource name and a request for it would
    /// reach this delegate by its name pattern (a name it lists but would never be sent, such
    /// as KEDA's placeholder `externalmetric`, would be a 404 here).
    fn discoverable(&self, name: &str) -> bool {
        valid_metric_name(name)
            && self
                .config
                .rules
                .name_pattern
                .as_ref()
                .is_none_or(|pattern| pattern.is_match(name))
    }

    fn ca_description(&self) -> String {
        match &self.config.ca {
            CaSource::Secret {
                namespace,
                name,
                key,
            } => format!(
                "waiting for key {key} of Secret {namespace}/{name} (check that it exists and that this adapter may get, list and watch it)"
            ),
            _ => "no CA is loaded".to_string(),
        }
    }
}

fn valid_audit_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_AUDIT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Content types a Kubernetes API server answers with.
fn is_api_content_type(content_type: &str) -> bool {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        media_type.as_str(),
        "application/json" | "application/vnd.kubernetes.protobuf" | "application/yaml"
    )
}

/// Read a bearer token file into a sensitive `Authorization` value. Errors never quote the
/// file's content.
pub fn read_token(path: &std::path::Path) -> Result<HeaderValue, TokenError> {
    let bytes = std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    token_header(&bytes, path)
}

/// The sensitive `Authorization: Bearer` value for the content of the token file at `path`.
/// Errors never quote the content.
pub fn token_header(content: &[u8], path: &std::path::Path) -> Result<HeaderValue, TokenError> {
    let unprintable = || TokenError::Unprintable {
        path: path.to_path_buf(),
    };
    let text = std::str::from_utf8(content).map_err(|_| unprintable())?;
    let token = text.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Size {
            path: path.to_path_buf(),
        });
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| unprintable())?;
    value.set_sensitive(true);
    Ok(value)
}

/// What kind of failure a client error is, with its innermost useful message. A TLS failure is
/// told apart (the usual cause: the delegate's CA is not the one configured).
fn classify(error: &hyper_util::client::legacy::Error) -> Failure {
    if let Some(tls) = find_tls_error(error) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => {
                " (its certificate does not check out against the CA configured for it)"
            }
            _ => "",
        };
        return (
            ForwardFailure::Tls,
            format!("TLS handshake failed: {tls}{hint}"),
        );
    }
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        innermost = current.to_string();
        source = current.source();
    }
    (ForwardFailure::Unreachable, innermost)
}

/// The rustls error somewhere in `error`'s chain. Connectors wrap it in `io::Error`s (sometimes
/// one inside another), and `io::Error::source` skips the error it wraps, so each `io::Error`
/// is opened with `get_ref` as well as followed by `source`.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut pending: Vec<&'a (dyn std::error::Error + 'static)> = vec![error];
    while let Some(current) = pending.pop() {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            pending.push(inner);
        }
        if let Some(next) = current.source() {
            pending.push(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_are_sensitive_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret-token\n").unwrap();
        let value = read_token(&path).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value, "Bearer secret-token");
        std::fs::write(&path, "bad\u{1}token").unwrap();
        let err = read_token(&path).unwrap_err();
        assert!(matches!(err, TokenError::Unprintable { .. }), "{err:?}");
        assert!(!format!("{err:?} {err}").contains("bad"), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(
            read_token(&path).unwrap_err(),
            TokenError::Size { .. }
        ));
    }

    #[test]
    fn names_and_content_types() {
        assert!(is_api_content_type("application/json"));
        assert!(is_api_content_type("Application/JSON; charset=utf-8"));
        assert!(is_api_content_type("application/vnd.kubernetes.protobuf"));
        assert!(!is_api_content_type("text/html"));
        assert!(!is_api_content_type(""));
        assert!(valid_audit_id("8f1e2c3a-0000-4000-8000-000000000001"));
        assert!(!valid_audit_id("a b"));
        assert!(!valid_audit_id(&"a".repeat(300)));
    }
}
