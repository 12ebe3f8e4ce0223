//! The second seam: between the HTTP API and the cluster's other external-metrics providers
//! (KEDA's metrics server, Datadog's cluster agent, prometheus-adapter).
//!
//! A cluster has room for one `v1beta1.external.metrics.k8s.io` APIService. When this adapter
//! holds it, requests for metrics it does not define may be passed on to the provider that held
//! it before (a "delegate"), so that provider's HPAs keep working. The API layer sees only this
//! trait and these types: which delegate takes a request (cheap, in memory), the forwarding
//! itself (a future), and the names the delegates list for discovery (a cached copy). The HTTP
//! client, TLS, credentials and background refreshes live behind it in `crate::delegate`.
//!
//! The rules the API layer keeps around it: a metric this adapter defines never reaches a
//! forwarder; the caller is authenticated and authorized before any forwarding; the delegate's
//! answer is passed on as it is (status, content type, body); a failure to get one is a
//! [`ForwardError`], which `api::status` turns into a `503` naming the delegate.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::provider::{MetricInfo, Selector};

/// Which configured delegate takes a request (an index into the forwarder's list, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(pub usize);

/// A value request for a metric this adapter does not define, as it arrived, already
/// authenticated and authorized.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// The path exactly as received: the delegate sees the same namespace and metric the caller
    /// was authorized for.
    pub path: String,
    /// The query string exactly as received (`labelSelector=...` and anything else).
    pub query: Option<String>,
    /// The caller's `Accept` header, so a caller that reads protobuf may get protobuf.
    pub accept: Option<String>,
    /// kube-apiserver's audit ID for the original request (its `Audit-ID` header), passed on so
    /// the delegate's audit log can be joined with kube-apiserver's, which names the real caller.
    pub audit_id: Option<String>,
}

/// The delegate's answer, passed on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedAnswer {
    /// Its HTTP status code (2xx, or the code of its own `Status` error).
    pub status: u16,
    /// Its content type (`application/json`, or protobuf when the caller asked for it).
    pub content_type: String,
    /// Its body, byte for byte (bounded in size).
    pub body: Bytes,
}

/// Why no answer could be had from a delegate: every kind is a `503` (the HPA retries every sync
/// period); the kind decides the message and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The delegate did not answer within its timeout.
    Timeout(Duration),
    /// No connection could be made (refused, reset, DNS).
    Unreachable,
    /// The TLS handshake failed: most often its certificate does not chain to its configured CA.
    Tls,
    /// The delegate's CA is not known yet (its Secret has not been read).
    NoCa,
    /// No credential to call it with (the token file or client certificate is not readable).
    NoCredentials,
    /// Its concurrency bound is reached: more requests are waiting on it than it may have.
    Busy,
    /// It answered with something that is not an API answer (wrong content type, too large).
    InvalidAnswer,
}

impl ForwardFailure {
    /// A fixed word for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ForwardFailure::Timeout(_) => "timeout",
            ForwardFailure::Unreachable => "unreachable",
            ForwardFailure::Tls => "tls_error",
            ForwardFailure::NoCa => "no_ca",
            ForwardFailure::NoCredentials => "no_credentials",
            ForwardFailure::Busy => "busy",
            ForwardFailure::InvalidAnswer => "invalid_answer",
        }
    }
}

/// A failed forward, with what the user needs: which delegate, where, and what went wrong. The
/// detail never carries a credential (tokens are never part of an error here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardError {
    /// The delegate's configured name.
    pub delegate: String,
    /// Its URL (validated to carry no user information).
    pub url: String,
    /// The metric asked for.
    pub metric: String,
    /// What went wrong.
    pub failure: ForwardFailure,
    /// One line of detail (e.g. the TLS error).
    pub detail: String,
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.failure {
            ForwardFailure::Timeout(timeout) => format!(
                "did not answer within {}",
                humantime::format_duration(timeout)
            ),
            ForwardFailure::Unreachable => "could not be reached".to_string(),
            ForwardFailure::Tls => "failed the TLS check".to_string(),
            ForwardFailure::NoCa => "cannot be called yet: its CA is not loaded".to_string(),
            ForwardFailure::NoCredentials => {
                "cannot be called: this adapter has no credential for it".to_string()
            }
            ForwardFailure::Busy => "has too many requests in flight from this adapter".to_string(),
            ForwardFailure::InvalidAnswer => "gave an answer that is not usable".to_string(),
        };
        write!(
            f,
            "the external metric {} is served by delegate {:?} ({}), which {what}",
            self.metric, self.delegate, self.url
        )?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for ForwardError {}

/// The cluster's other external-metrics providers, as the API layer sees them.
pub trait Forwarder: Send + Sync + std::fmt::Debug + 'static {
    /// The first delegate (in configured order) whose rules take a request for `metric` with
    /// `selector` (`None` when the selector did not parse), or `None`: then nobody serves the
    /// name and it is this adapter's 404. Never does I/O.
    fn route(&self, metric: &str, selector: Option<&Selector>) -> Option<Route>;

    /// A delegate's configured name (for logs and metric labels).
    fn name(&self, route: Route) -> &str;

    /// Pass the request on to the delegate and bring back its answer, within its timeout.
    fn forward(
        &self,
        route: Route,
        metric: &str,
        request: ForwardRequest,
    ) -> BoxFuture<'static, Result<ForwardedAnswer, ForwardError>>;

    /// The names the delegates list, as last fetched in the background (never on the caller's
    /// time), keeping only names a request would reach them by.
    fn list_metrics(&self) -> Vec<MetricInfo>;
}

/// No delegates configured: nothing is forwarded, nothing is added to discovery.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelegates;

impl Forwarder for NoDelegates {
    fn route(&self, _metric: &str, _selector: Option<&Selector>) -> Option<Route> {
        None
    }

    fn name(&self, _route: Route) -> &str {
        ""
    }

    fn forward(
        &self,
        _route: Route,
        metric: &str,
        _request: ForwardRequest,
    ) -> BoxFuture<'static, Result<ForwardedAnswer, ForwardError>> {
        // Unreachable through the API (route() is always None), but answer sensibly anyway.
        let error = ForwardError {
            delegate: String::new(),
            url: String::new(),
            metric: metric.to_string(),
            failure: ForwardFailure::Unreachable,
            detail: "no delegates are configured".to_string(),
        };
        Box::pin(async move { Err(error) })
    }

    fn list_metrics(&self) -> Vec<MetricInfo> {
        Vec::new()
    }
}

/// Whether a namespace and metric name may be put in a delegate's URL: a namespace is a DNS
/// label, and a metric name is a path segment apimachinery accepts (no `/`, `%`, `.` or `..`).
/// Anything else is this adapter's 404, never a request to a delegate.
pub fn forwardable(namespace: &str, metric: &str) -> bool {
    let namespace_ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && namespace.starts_with(|c: char| c.is_ascii_alphanumeric())
        && namespace.ends_with(|c: char| c.is_ascii_alphanumeric());
    namespace_ok && valid_metric_name(metric)
}

/// A resource name a delegate may be asked about or listed under.
pub fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && !name.contains(['/', '%'])
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_forwarded() {
        assert!(forwardable("default", "s0-rabbitmq-orders"));
        assert!(forwardable("shop", "datadogmetric@shop:orders"));
        for (namespace, metric) in [
            ("..", "x"),
            ("Default", "x"),
            ("default", ".."),
            ("default", "a%2fb"),
            ("default", ""),
            ("-a", "x"),
        ] {
            assert!(!forwardable(namespace, metric), "{namespace}/{metric}");
        }
    }

    #[test]
    fn errors_name_the_delegate_and_the_failure() {
        let error = ForwardError {
            delegate: "keda".into(),
            url: "https://keda-operator-metrics-apiserver.keda.svc:443".into(),
            metric: "s0-rabbitmq-orders".into(),
            failure: ForwardFailure::Timeout(Duration::from_secs(5)),
            detail: String::new(),
        };
        assert_eq!(
            error.to_string(),
            "the external metric s0-rabbitmq-orders is served by delegate \"keda\" (https://keda-operator-metrics-apiserver.keda.svc:443), which did not answer within 5s"
        );
    }
}
