//! The HTTP API: discovery, the external metrics handler, and `Status` errors.
//!
//! Sees only [`crate::provider`]; never AWS or cache types.

pub mod metrics;
pub mod quantity;
pub mod selector;
pub mod status;
pub mod types;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery,
};
use serde::Serialize;

use crate::forward::{ForwardRequest, ForwardedAnswer, Forwarder};
use crate::metrics::AdapterMetrics;
use crate::provider::{ExternalMetricsProvider, MetricRequest, ProviderError};
use status::ApiError;
use types::{
    ApiGroupDiscovery, ApiGroupDiscoveryList, ApiResourceDiscovery, ApiVersionDiscovery, EmptyMeta,
    ExternalMetricValue, ExternalMetricValueList, GROUP, GROUP_VERSION, NameMeta, ResponseKind,
    VERSION,
};

/// The content type of aggregated discovery (`apidiscovery.k8s.io/v2`).
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// What the handlers share.
#[derive(Debug)]
pub struct ApiState<P> {
    /// Where values come from.
    pub provider: P,
    /// The adapter's own metrics.
    pub metrics: Arc<AdapterMetrics>,
    /// The cluster's other external-metrics providers, for names `provider` does not define
    /// ([`crate::forward::NoDelegates`] when none is configured).
    pub forwarder: Arc<dyn Forwarder>,
}

/// The external metrics API router (served over HTTPS).
pub fn router<P: ExternalMetricsProvider>(state: Arc<ApiState<P>>) -> Router {
    Router::new()
        .route("/apis", get(api_groups::<P>))
        .route("/apis/external.metrics.k8s.io", get(api_group))
        .route("/apis/external.metrics.k8s.io/", get(api_group))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(api_resources::<P>),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/",
            get(api_resources::<P>),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(metric_values::<P>),
        )
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Guards every request on the API port, outermost (before authentication): a request that
/// declares a body is refused (`413`; nothing here reads one, and HTTP/2 receive windows are
/// small so undeclared data cannot pile up either), and the rest is [`contain`]ed. Each refusal
/// is a `metav1.Status`, and counted in `api_rejections_total`.
pub fn guard(router: Router, request_timeout: Duration, metrics: Arc<AdapterMetrics>) -> Router {
    router.layer(GuardLayer {
        refuse_bodies: true,
        request_timeout,
        metrics,
    })
}

/// A request not answered within `request_timeout` gets `504 Timeout`, and a handler that
/// panics gets `500` instead of a dropped stream (a streamed response counts as answered once
/// its head is sent). Each is a `metav1.Status`, and counted in `api_rejections_total`.
pub fn contain(router: Router, request_timeout: Duration, metrics: Arc<AdapterMetrics>) -> Router {
    router.layer(GuardLayer {
        refuse_bodies: false,
        request_timeout,
        metrics,
    })
}

/// [`guard`] and [`contain`] as one tower layer: `axum::middleware::from_fn` would box and clone
/// the rest of the stack on every request, once per layer.
#[derive(Debug, Clone)]
struct GuardLayer {
    refuse_bodies: bool,
    request_timeout: Duration,
    metrics: Arc<AdapterMetrics>,
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A route behind [`GuardLayer`].
#[derive(Debug, Clone)]
struct Guarded<S> {
    inner: S,
    guard: GuardLayer,
}

impl<S> tower::Service<Request> for Guarded<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let GuardLayer {
            refuse_bodies,
            request_timeout,
            ref metrics,
        } = self.guard;
        let metrics = metrics.clone();
        if refuse_bodies && declares_body(&request) {
            metrics.edge().rejection("request_body");
            return Box::pin(std::future::ready(Ok(
                ApiError::request_body_refused().into_response()
            )));
        }
        // Polled ready by `poll_ready` (axum's routes always are).
        let handled = std::panic::AssertUnwindSafe(self.inner.call(request));
        Box::pin(async move {
            let outcome = tokio::time::timeout(
                request_timeout,
                futures_util::FutureExt::catch_unwind(handled),
            )
            .await;
            Ok(match outcome {
                Ok(Ok(Ok(response))) => response,
                Ok(Ok(Err(infallible))) => match infallible {},
                Ok(Err(_)) => {
                    tracing::error!("a request handler panicked");
                    metrics.edge().rejection("panic");
                    ApiError::internal(
                        "the server failed while handling this request; the failure is in its log",
                    )
                    .into_response()
                }
                Err(_) => {
                    metrics.edge().rejection("timeout");
                    ApiError::timeout(format!(
                        "the request was not answered within {} (--request-timeout); try again",
                        humantime::format_duration(request_timeout)
                    ))
                    .into_response()
                }
            })
        })
    }
}

/// Whether a request says it carries a body: a non-zero `Content-Length`, or any
/// `Transfer-Encoding` (HTTP/1.1 chunked). An HTTP/2 GET whose headers lack END_STREAM but that
/// sends no data is not refused; whatever data it does send is capped by the stream window.
fn declares_body(request: &Request) -> bool {
    let length = request.headers().get(header::CONTENT_LENGTH);
    let nonzero = length.is_some_and(|value| value.as_bytes().iter().any(|b| *b != b'0'));
    nonzero || request.headers().contains_key(header::TRANSFER_ENCODING)
}

fn json<T: Serialize>(value: &T) -> Response {
    json_as(value, "application/json")
}

fn json_as<T: Serialize>(value: &T, content_type: &'static str) -> Response {
    // A value list is a few hundred bytes: one allocation, no regrowth.
    let mut body = Vec::with_capacity(512);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => {
            let mut response = (StatusCode::OK, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(err) => ApiError::internal(format!("cannot encode response: {err}")).into_response(),
    }
}

fn group_version_for_discovery() -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: GROUP_VERSION.to_string(),
        version: VERSION.to_string(),
    }
}

fn api_group_document() -> APIGroup {
    APIGroup {
        name: GROUP.to_string(),
        preferred_version: Some(group_version_for_discovery()),
        server_address_by_client_cidrs: None,
        versions: vec![group_version_for_discovery()],
    }
}

async fn api_groups<P: ExternalMetricsProvider>(
    State(state): State<Arc<ApiState<P>>>,
    headers: HeaderMap,
) -> Response {
    let wants_aggregated = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|accept| accept.split(','))
        .any(is_aggregated_discovery);
    if wants_aggregated {
        let resources = discovered_metrics(&state)
            .into_iter()
            .map(|name| ApiResourceDiscovery {
                resource: name,
                response_kind: ResponseKind {
                    group: "",
                    version: "",
                    kind: "ExternalMetricValueList",
                },
                scope: "Namespaced",
                singular_resource: "",
                verbs: vec!["get"],
            })
            .collect();
        let list = ApiGroupDiscoveryList {
            kind: "APIGroupDiscoveryList",
            api_version: "apidiscovery.k8s.io/v2",
            metadata: EmptyMeta {},
            items: vec![ApiGroupDiscovery {
                metadata: NameMeta { name: GROUP },
                versions: vec![ApiVersionDiscovery {
                    version: VERSION,
                    resources,
                    freshness: "Current",
                }],
            }],
        };
        return json_as(&list, AGGREGATED_DISCOVERY);
    }
    json(&APIGroupList {
        groups: vec![api_group_document()],
    })
}

/// Whether one Accept media range asks for `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`.
fn is_aggregated_discovery(media_range: &str) -> bool {
    let mut parts = media_range.split(';').map(str::trim);
    if parts.next() != Some("application/json") {
        return false;
    }
    let params: Vec<&str> = parts.collect();
    ["g=apidiscovery.k8s.io", "v=v2", "as=APIGroupDiscoveryList"]
        .iter()
        .all(|wanted| params.contains(wanted))
}

/// Ours first, then each delegate's (from their background-refreshed lists), each name once.
fn discovered_metrics<P: ExternalMetricsProvider>(state: &ApiState<P>) -> Vec<String> {
    let mut names: Vec<String> = state
        .provider
        .list_metrics()
        .into_iter()
        .map(|metric| metric.name)
        .collect();
    let mut seen: HashSet<String> = names.iter().cloned().collect();
    for metric in state.forwarder.list_metrics() {
        if seen.insert(metric.name.clone()) {
            names.push(metric.name);
        }
    }
    names
}

async fn api_group() -> Response {
    json(&api_group_document())
}

async fn api_resources<P: ExternalMetricsProvider>(
    State(state): State<Arc<ApiState<P>>>,
) -> Response {
    let resources = discovered_metrics(&state)
        .into_iter()
        .map(|name| APIResource {
            name,
            singular_name: String::new(),
            namespaced: true,
            kind: "ExternalMetricValueList".to_string(),
            verbs: vec!["get".to_string()],
            ..APIResource::default()
        })
        .collect();
    json(&APIResourceList {
        group_version: GROUP_VERSION.to_string(),
        resources,
    })
}

async fn metric_values<P: ExternalMetricsProvider>(
    State(state): State<Arc<ApiState<P>>>,
    path: Result<Path<(String, String)>, PathRejection>,
    // The request itself, rather than copies of its headers and URI.
    request: Request,
) -> Response {
    let (uri, headers) = (request.uri(), request.headers());
    let query = uri.query();
    let started = Instant::now();
    let (namespace, metric) = match path {
        Ok(Path(segments)) => segments,
        Err(rejection) => {
            // e.g. `%ff`: percent-encoding that does not decode to UTF-8. No namespace or
            // metric can have such a name, but the caller sent something malformed: 400.
            let response = ApiError::bad_request(format!(
                "the request path is malformed: the namespace and metric segments must be percent-encoded UTF-8 ({})",
                rejection.body_text()
            ))
            .into_response();
            state.metrics.api().observe_request(
                "unknown",
                response.status().as_u16(),
                started.elapsed(),
            );
            return response;
        }
    };
    // An encoded '/' in a segment would be authorized as another path than the one served.
    let segments_ok = !namespace.contains('/') && !metric.contains('/');
    let defined = segments_ok && state.provider.is_defined(&namespace, &metric);
    // A name we define is answered here and never leaves us; any other name may belong to a
    // delegate (the caller was authorized for this path before the handler ran).
    if segments_ok
        && !defined
        && let Some(response) =
            forward(&state, &namespace, &metric, uri.path(), query, headers).await
    {
        state.metrics.api().observe_request(
            "forwarded",
            response.status().as_u16(),
            started.elapsed(),
        );
        return response;
    }
    if !defined {
        let response =
            ApiError::from(ProviderError::NotFound { metric, namespace }).into_response();
        // Unknown names are pooled under one label, so cardinality stays bounded.
        state.metrics.api().observe_request(
            "unknown",
            response.status().as_u16(),
            started.elapsed(),
        );
        return response;
    }
    let outcome = answer(&state.provider, namespace, metric.clone(), query).await;
    let (label, response) = match outcome {
        Ok(list) => (metric, json(&list)),
        Err((known, error)) => {
            let label = if known { metric } else { "unknown".to_string() };
            (label, error.into_response())
        }
    };
    state
        .metrics
        .api()
        .observe_request(&label, response.status().as_u16(), started.elapsed());
    response
}

/// Pass a request for a name we do not define to the first delegate whose rules take it: its
/// answer as it is, or a `503` naming it. `None` when no delegate takes it (then it is our 404).
async fn forward<P: ExternalMetricsProvider>(
    state: &ApiState<P>,
    namespace: &str,
    metric: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<Response> {
    if !crate::forward::forwardable(namespace, metric) {
        return None;
    }
    // Rules on selector keys need the selector; one that does not parse selects no key.
    let selector = selector::parse(&selector_text(query)).ok();
    let route = state.forwarder.route(metric, selector.as_ref())?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let request = ForwardRequest {
        path: path.to_string(),
        query: query.map(str::to_string),
        accept: header_text("accept"),
        audit_id: header_text("audit-id"),
    };
    Some(
        match state.forwarder.forward(route, metric, request).await {
            Ok(answer) => relay(answer),
            Err(error) => ApiError::from(error).into_response(),
        },
    )
}

/// The delegate's answer, unchanged: its status (its own `Status` errors included, so
/// `kubectl describe hpa` shows the real reason), content type and body.
fn relay(answer: ForwardedAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = HeaderValue::from_str(&answer.content_type)
        .unwrap_or(HeaderValue::from_static("application/json"));
    let mut response = (status, answer.body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

/// Every `labelSelector` parameter, joined as the apiserver joins repeated ones.
fn selector_text(query: Option<&str>) -> String {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(key, _)| key == "labelSelector")
                .map(|(_, value)| value.into_owned())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The value request, start to end. The error side says whether the metric name is defined.
async fn answer<P: ExternalMetricsProvider>(
    provider: &P,
    namespace: String,
    metric: String,
    query: Option<&str>,
) -> Result<ExternalMetricValueList, (bool, ApiError)> {
    // Other list parameters (fieldSelector, limit, resourceVersion, pretty) are ignored.
    let selector = selector::parse(&selector_text(query))
        .map_err(|e| (true, ApiError::bad_request(e.to_string())))?;
    fetch(
        provider,
        MetricRequest {
            namespace,
            metric,
            selector,
        },
    )
    .await
}

/// Ask the provider and render the list exactly as the server would (used by `query` too).
pub async fn value_list<P: ExternalMetricsProvider>(
    provider: &P,
    request: MetricRequest,
) -> Result<ExternalMetricValueList, ApiError> {
    fetch(provider, request).await.map_err(|(_, error)| error)
}

async fn fetch<P: ExternalMetricsProvider>(
    provider: &P,
    request: MetricRequest,
) -> Result<ExternalMetricValueList, (bool, ApiError)> {
    let values = provider.get_values(request).await.map_err(|error| {
        let known = !matches!(error, ProviderError::NotFound { .. });
        (known, ApiError::from(error))
    })?;
    if values.is_empty() {
        return Err((true, ApiError::internal("the provider returned no values")));
    }
    let mut items = Vec::with_capacity(values.len());
    for value in values {
        let quantity = quantity::format(value.value).map_err(|reason| {
            (
                true,
                ApiError::from(ProviderError::Unrepresentable(format!(
                    "metric {}: {reason}",
                    value.metric_name
                ))),
            )
        })?;
        let seconds = value
            .timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        items.push(ExternalMetricValue {
            metric_name: value.metric_name,
            metric_labels: (!value.labels.is_empty()).then_some(value.labels),
            timestamp: humantime::format_rfc3339_seconds(
                UNIX_EPOCH + std::time::Duration::from_secs(seconds),
            )
            .to_string(),
            window: value
                .window
                .map(|w| i64::try_from(w.as_secs()).unwrap_or(i64::MAX)),
            value: quantity,
        });
    }
    Ok(ExternalMetricValueList::new(items))
}

async fn openapi_v2() -> Response {
    // A small valid document: the aggregator merges it into the cluster's spec.
    json(&serde_json::json!({
        "swagger": "2.0",
        "info": {"title": "cloudwatch-metrics-adapter", "version": env!("CARGO_PKG_VERSION")},
        "paths": {},
    }))
}

async fn openapi_v3() -> Response {
    json(&serde_json::json!({"paths": {}}))
}

async fn not_found() -> ApiError {
    ApiError::not_found("the server could not find the requested resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed(
        "the server does not allow this method on the requested resource (external metrics are read with GET)",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    fn routes() -> Router {
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/panics",
                get(|| async {
                    panic!("a handler bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .route(
                "/hangs",
                get(|| async {
                    std::future::pending::<()>().await;
                    ""
                }),
            )
    }

    async fn call(router: &Router, path: &str, body: Option<&'static str>) -> (u16, Value) {
        let mut request = axum::http::Request::builder().uri(path);
        if let Some(body) = body {
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        let request = request
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    fn rejections(metrics: &AdapterMetrics, reason: &str) -> String {
        let line = format!("cloudwatch_adapter_api_rejections_total{{reason=\"{reason}\"}} ");
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()).map(str::to_string))
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_answers_bodies_panics_and_hangs_with_a_status_and_counts_them() {
        let metrics = Arc::new(AdapterMetrics::default());
        let router = guard(routes(), Duration::from_secs(30), metrics.clone());
        assert_eq!(call(&router, "/ok", None).await, (200, Value::from("ok")));
        let (code, status) = call(&router, "/ok", Some("{}")).await;
        assert_eq!(
            (code, &status["kind"], &status["code"]),
            (413, &"Status".into(), &413.into())
        );
        let (code, status) = call(&router, "/panics", None).await;
        assert_eq!((code, &status["code"]), (500, &500.into()), "{status}");
        let (code, status) = call(&router, "/hangs", None).await;
        assert_eq!((code, &status["code"]), (504, &504.into()), "{status}");
        assert!(
            status["message"].as_str().unwrap().contains("30s"),
            "{status}"
        );
        for reason in ["request_body", "panic", "timeout"] {
            assert_eq!(rejections(&metrics, reason), "1", "{reason}");
        }
        // `contain` (the peer link's routes) takes bodies, and still contains panics.
        let contained = contain(routes(), Duration::from_secs(30), metrics.clone());
        assert_eq!(call(&contained, "/ok", Some("{}")).await.0, 200);
        assert_eq!(call(&contained, "/panics", None).await.0, 500);
        assert_eq!(rejections(&metrics, "panic"), "2");
    }
}
