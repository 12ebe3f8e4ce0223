//! The adapter's own Prometheus metrics, served on the admin port at `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::definition::Backend;
use crate::source::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    metric: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IsolationLabels {
    source: String,
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelegateLabels {
    delegate: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelegateNameLabels {
    delegate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthenticationLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    review: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewCacheLabels {
    review: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewWaitingLabels {
    review: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why an API connection ended (the `reason` label of `api_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionClose {
    /// The client closed it, or it failed (normal life).
    Client,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// The TLS handshake did not finish within `--tls-handshake-timeout`.
    HandshakeTimeout,
    /// No complete request within `--header-read-timeout` of the handshake.
    HeaderReadTimeout,
    /// No request started or finished within `--idle-timeout`.
    IdleTimeout,
    /// Closed at `--max-connections` to make room for a new connection.
    Shed,
    /// Closed by shutdown (drained, or cut at the end of the grace period).
    Shutdown,
}

impl ConnectionClose {
    /// The metric label, also used in logs.
    pub fn label(self) -> &'static str {
        match self {
            ConnectionClose::Client => "client",
            ConnectionClose::HandshakeFailed => "tls_handshake_failed",
            ConnectionClose::HandshakeTimeout => "tls_handshake_timeout",
            ConnectionClose::HeaderReadTimeout => "header_read_timeout",
            ConnectionClose::IdleTimeout => "idle_timeout",
            ConnectionClose::Shed => "shed",
            ConnectionClose::Shutdown => "shutdown",
        }
    }
}

/// Latency buckets (seconds) for value requests.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Computes point-in-time gauges (value ages, active series) just before each scrape.
pub type Collector = Box<dyn Fn(&AdapterMetrics) + Send + Sync>;

/// Counters and histograms, registered once and shared.
pub struct AdapterMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    cloudwatch_calls: Family<OutcomeLabels, Counter>,
    cloudwatch_queries: Counter,
    cloudwatch_metrics_requested: Counter,
    cloudwatch_datapoints: Counter,
    sqs_calls: Family<OutcomeLabels, Counter>,
    sqs_requests: Counter,
    estimated_cost: Family<SourceLabels, Counter<f64, AtomicU64>>,
    bisected_calls: Family<SourceLabels, Counter>,
    truncated_calls: Family<SourceLabels, Counter>,
    cache_lookups: Family<ResultLabels, Counter>,
    active_series: Gauge,
    value_age: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    refresh_lag: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    queued_series: Family<SourceLabels, Gauge>,
    fallback_refreshes: Family<SourceLabels, Counter>,
    isolated_definitions: Family<IsolationLabels, Gauge>,
    /// The (metric, code) label sets of `requests` and `request_duration`, so the names of
    /// metrics no longer defined can be dropped at scrape time.
    request_label_sets: std::sync::RwLock<HashMap<String, HashSet<u16>>>,
    delegate_requests: Family<DelegateLabels, Counter>,
    delegate_request_duration: Family<DelegateLabels, Histogram>,
    delegate_discovery_refreshes: Family<DelegateLabels, Counter>,
    delegate_discovered_metrics: Family<DelegateNameLabels, Gauge>,
    api_connections: Gauge,
    api_connection_limit: Gauge,
    api_connection_waits: Counter,
    api_requests_in_flight: Gauge,
    api_connections_closed: Family<ReasonLabels, Counter>,
    api_rejections: Family<ReasonLabels, Counter>,
    collector: OnceLock<Collector>,
    auth: AuthMetrics,
    leader: crate::leader::LeaderMetrics,
    peer: crate::peer::PeerMetrics,
}

/// Authentication and authorization counters. Every label value is a fixed word (how a caller
/// authenticated, never who). The known combinations are created up front, so they show as 0
/// before they happen and counting one is an atomic increment, not a map lookup.
#[derive(Clone, Debug)]
pub struct AuthMetrics {
    authentications: Vec<(&'static str, &'static str, Counter)>,
    decisions: Vec<(&'static str, Counter)>,
    reviews: Vec<(&'static str, &'static str, Counter)>,
    review_cache: Vec<(&'static str, &'static str, Counter)>,
    review_waiting: Vec<(&'static str, Gauge)>,
    certificate_verifications: Counter,
}

impl AuthMetrics {
    /// Count one authentication: `method` is `front-proxy`, `client-certificate`, `token`,
    /// `anonymous` or `none`; `result` is `success`, `failure` (401) or `error` (503).
    pub fn authentication(&self, method: &'static str, result: &'static str) {
        count(&self.authentications, method, result);
    }

    /// Count one authorization decision: `allowed`, `denied` or `error`.
    pub fn decision(&self, decision: &'static str) {
        if let Some((_, counter)) = self.decisions.iter().find(|(d, _)| *d == decision) {
            counter.inc();
        }
    }

    /// Count one call to the cluster: `review` is `TokenReview` or `SubjectAccessReview`,
    /// `outcome` what it answered (`authenticated`, `rejected`, `allowed`, `denied`) or `error`.
    pub fn review(&self, review: &'static str, outcome: &'static str) {
        count(&self.reviews, review, outcome);
    }

    /// Count one review-cache lookup: `hit`, `miss` (a review was made) or `shared` (waited for
    /// an identical review already under way).
    pub fn review_cache(&self, review: &'static str, result: &'static str) {
        count(&self.review_cache, review, result);
    }

    /// Requests waiting for a `review` answer (`TokenReview` or `SubjectAccessReview`), made
    /// for them or shared with an identical review under way: the review cache keeps it.
    pub fn review_waiting(&self, review: &'static str) -> Gauge {
        self.review_waiting
            .iter()
            .find(|(name, _)| *name == review)
            .map(|(_, gauge)| gauge.clone())
            // An unknown name gets a gauge of its own, counted but not exposed.
            .unwrap_or_default()
    }

    /// Count one verification of a client certificate chain (once per connection and CA
    /// version, and again when a certificate expires).
    pub fn certificate_verification(&self) {
        self.certificate_verifications.inc();
    }
}

fn count(counters: &[(&'static str, &'static str, Counter)], first: &str, second: &str) {
    if let Some((.., counter)) = counters
        .iter()
        .find(|(a, b, _)| *a == first && *b == second)
    {
        counter.inc();
    }
}

const AUTHENTICATIONS: [(&str, &str); 8] = [
    ("front-proxy", "success"),
    ("client-certificate", "success"),
    ("client-certificate", "failure"),
    ("token", "success"),
    ("token", "failure"),
    ("token", "error"),
    ("anonymous", "success"),
    ("none", "failure"),
];
const DECISIONS: [&str; 3] = ["allowed", "denied", "error"];
const REVIEWS: [(&str, &str); 6] = [
    ("TokenReview", "authenticated"),
    ("TokenReview", "rejected"),
    ("TokenReview", "error"),
    ("SubjectAccessReview", "allowed"),
    ("SubjectAccessReview", "denied"),
    ("SubjectAccessReview", "error"),
];
const REVIEW_CACHE: [(&str, &str); 6] = [
    ("TokenReview", "hit"),
    ("TokenReview", "miss"),
    ("TokenReview", "shared"),
    ("SubjectAccessReview", "hit"),
    ("SubjectAccessReview", "miss"),
    ("SubjectAccessReview", "shared"),
];

impl AuthMetrics {
    fn register(registry: &mut Registry) -> Self {
        let authentications = Family::<AuthenticationLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        let review_cache = Family::<ReviewCacheLabels, Counter>::default();
        let review_waiting = Family::<ReviewWaitingLabels, Gauge>::default();
        let certificate_verifications = Counter::default();
        registry.register(
            "authentications",
            "API requests by how the caller authenticated (front-proxy, client-certificate, token, anonymous, none) and the result",
            authentications.clone(),
        );
        registry.register(
            "authorization_decisions",
            "Authorization decisions on API requests",
            decisions.clone(),
        );
        registry.register(
            "reviews",
            "TokenReview and SubjectAccessReview calls to the Kubernetes API server by outcome",
            reviews.clone(),
        );
        registry.register(
            "review_cache_lookups",
            "Review answers found in the cache (hit), asked for (miss), or shared with an identical review under way",
            review_cache.clone(),
        );
        registry.register(
            "review_waiting",
            "API requests waiting now for a TokenReview or SubjectAccessReview answer (their own, or an identical review under way): a slow Kubernetes API server shows here first",
            review_waiting.clone(),
        );
        registry.register(
            "client_certificate_verifications",
            "Client certificate chains verified (once per connection and CA version)",
            certificate_verifications.clone(),
        );
        Self {
            authentications: AUTHENTICATIONS
                .iter()
                .map(|&(method, result)| {
                    let labels = AuthenticationLabels { method, result };
                    (
                        method,
                        result,
                        authentications.get_or_create(&labels).clone(),
                    )
                })
                .collect(),
            decisions: DECISIONS
                .iter()
                .map(|&decision| {
                    let counter = decisions
                        .get_or_create(&DecisionLabels { decision })
                        .clone();
                    (decision, counter)
                })
                .collect(),
            reviews: REVIEWS
                .iter()
                .map(|&(review, outcome)| {
                    let labels = ReviewLabels { review, outcome };
                    (review, outcome, reviews.get_or_create(&labels).clone())
                })
                .collect(),
            review_cache: REVIEW_CACHE
                .iter()
                .map(|&(review, result)| {
                    let labels = ReviewCacheLabels { review, result };
                    (review, result, review_cache.get_or_create(&labels).clone())
                })
                .collect(),
            review_waiting: ["TokenReview", "SubjectAccessReview"]
                .into_iter()
                .map(|review| {
                    let labels = ReviewWaitingLabels { review };
                    (review, review_waiting.get_or_create(&labels).clone())
                })
                .collect(),
            certificate_verifications,
        }
    }
}

impl std::fmt::Debug for AdapterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterMetrics").finish_non_exhaustive()
    }
}

impl Default for AdapterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cloudwatch_adapter");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // Memory hits are sub-millisecond, first fetches wait on CloudWatch; the 1 ms
            // bound is the latency objective for warm series.
            Histogram::new(REQUEST_BUCKETS.iter().copied())
        });
        let cloudwatch_calls = Family::<OutcomeLabels, Counter>::default();
        let cloudwatch_queries = Counter::default();
        let cloudwatch_metrics_requested = Counter::default();
        let cloudwatch_datapoints = Counter::default();
        let sqs_calls = Family::<OutcomeLabels, Counter>::default();
        let sqs_requests = Counter::default();
        let estimated_cost = Family::<SourceLabels, Counter<f64, AtomicU64>>::default();
        let bisected_calls = Family::<SourceLabels, Counter>::default();
        let truncated_calls = Family::<SourceLabels, Counter>::default();
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        let active_series = Gauge::default();
        let value_age = Family::<MetricLabels, Gauge<f64, AtomicU64>>::default();
        let refresh_lag = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        let queued_series = Family::<SourceLabels, Gauge>::default();
        let fallback_refreshes = Family::<SourceLabels, Counter>::default();
        let isolated_definitions = Family::<IsolationLabels, Gauge>::default();
        let delegate_requests = Family::<DelegateLabels, Counter>::default();
        let delegate_request_duration =
            Family::<DelegateLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(REQUEST_BUCKETS.iter().copied())
            });
        let delegate_discovery_refreshes = Family::<DelegateLabels, Counter>::default();
        let delegate_discovered_metrics = Family::<DelegateNameLabels, Gauge>::default();
        registry.register(
            "requests",
            "External metric value requests by metric and HTTP code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "External metric value request latency",
            request_duration.clone(),
        );
        registry.register(
            "cloudwatch_calls",
            "GetMetricData calls by outcome",
            cloudwatch_calls.clone(),
        );
        registry.register(
            "cloudwatch_queries",
            "MetricDataQuery entries sent to CloudWatch (billed per metric requested)",
            cloudwatch_queries.clone(),
        );
        registry.register(
            "cloudwatch_metrics_requested",
            "Metrics requested from GetMetricData (MetricStat queries), the billed unit",
            cloudwatch_metrics_requested.clone(),
        );
        registry.register(
            "cloudwatch_datapoints",
            "Datapoints returned by GetMetricData",
            cloudwatch_datapoints.clone(),
        );
        registry.register(
            "sqs_calls",
            "SQS GetQueueAttributes calls by outcome",
            sqs_calls.clone(),
        );
        registry.register(
            "sqs_requests",
            "SQS requests made (GetQueueAttributes and GetQueueUrl), the billed unit",
            sqs_requests.clone(),
        );
        registry.register(
            "estimated_cost_dollars",
            "Estimated cost by source: GetMetricData at $0.01 per 1,000 metrics requested, SQS at $0.40 per million requests",
            estimated_cost.clone(),
        );
        registry.register(
            "rejected_calls_searched",
            "Calls the backend rejected as a bad request of their members, whose members were then searched for the series causing it",
            bisected_calls.clone(),
        );
        registry.register(
            "incomplete_calls",
            "Calls whose results were incomplete (pagination stopped before the last page)",
            truncated_calls.clone(),
        );
        registry.register(
            "cache_lookups",
            "Value requests answered from memory (hit), after a first fetch (miss), or refused as stale",
            cache_lookups.clone(),
        );
        registry.register(
            "active_series",
            "Series kept fresh by the refresher",
            active_series.clone(),
        );
        registry.register(
            "value_age_seconds",
            "Age of the oldest served datapoint per metric (now minus datapoint time)",
            value_age.clone(),
        );
        let auth = AuthMetrics::register(&mut registry);
        let leader = crate::leader::register(&mut registry);
        let peer = crate::peer::register(&mut registry);
        registry.register(
            "refresh_lag_seconds",
            "How late the oldest due series of a source is (waiting for the budget, or in a call not yet answered): near 0 when refreshes keep up; growing when a lane is stalled or over budget",
            refresh_lag.clone(),
        );
        registry.register(
            "queued_series",
            "Series waiting in a source's timer queue (every active series not being refreshed right now)",
            queued_series.clone(),
        );
        registry.register(
            "fallback_refreshes",
            "Calls a replica made itself because no leader streamed values to it (0 in steady state)",
            fallback_refreshes.clone(),
        );
        registry.register(
            "isolated_definitions",
            "Definitions with series that get calls of their own because the backend rejects the calls they share (scope=series), or rejected whatever the selector (scope=definition)",
            isolated_definitions.clone(),
        );
        registry.register(
            "delegate_requests",
            "Value requests forwarded to a delegate, by delegate and outcome (success, error_status for the delegate's own errors, or why no answer came)",
            delegate_requests.clone(),
        );
        registry.register(
            "delegate_request_duration_seconds",
            "Latency of requests forwarded to a delegate, by delegate and outcome",
            delegate_request_duration.clone(),
        );
        registry.register(
            "delegate_discovery_refreshes",
            "Background fetches of a delegate's metric list, by delegate and outcome",
            delegate_discovery_refreshes.clone(),
        );
        registry.register(
            "delegate_discovered_metrics",
            "Metric names a delegate lists that discovery shows",
            delegate_discovered_metrics.clone(),
        );
        let api_connections = Gauge::default();
        let api_connection_limit = Gauge::default();
        let api_connection_waits = Counter::default();
        let api_requests_in_flight = Gauge::default();
        let api_connections_closed = Family::<ReasonLabels, Counter>::default();
        let api_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "api_connections",
            "Open connections on the API port, handshakes included",
            api_connections.clone(),
        );
        registry.register(
            "api_connection_limit",
            "The API port's connection cap (--max-connections)",
            api_connection_limit.clone(),
        );
        registry.register(
            "api_connection_waits",
            "Times the API port stopped accepting because every connection at the cap had a request in flight",
            api_connection_waits.clone(),
        );
        registry.register(
            "api_requests_in_flight",
            "API requests whose response is not fully sent (bounded by connections x HTTP/2 streams); high and flat means clients that do not read",
            api_requests_in_flight.clone(),
        );
        registry.register(
            "api_connections_closed",
            "API connections ended, by reason: client, tls_handshake_failed, tls_handshake_timeout, header_read_timeout, idle_timeout, shed (at the cap), shutdown",
            api_connections_closed.clone(),
        );
        registry.register(
            "api_rejections",
            "API requests refused before reaching a handler, by reason: request_body, timeout, panic",
            api_rejections.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            request_duration,
            cloudwatch_calls,
            cloudwatch_queries,
            cloudwatch_metrics_requested,
            cloudwatch_datapoints,
            sqs_calls,
            sqs_requests,
            estimated_cost,
            bisected_calls,
            truncated_calls,
            cache_lookups,
            active_series,
            value_age,
            refresh_lag,
            queued_series,
            fallback_refreshes,
            isolated_definitions,
            request_label_sets: std::sync::RwLock::default(),
            delegate_requests,
            delegate_request_duration,
            delegate_discovery_refreshes,
            delegate_discovered_metrics,
            api_connections,
            api_connection_limit,
            api_connection_waits,
            api_requests_in_flight,
            api_connections_closed,
            api_rejections,
            collector: OnceLock::new(),
            auth,
            leader,
            peer,
        }
    }
}

impl AdapterMetrics {
    /// The authentication and authorization counters.
    pub fn auth(&self) -> &AuthMetrics {
        &self.auth
    }

    /// The peer link's metrics (registered by `peer::register`).
    pub fn peer(&self) -> &crate::peer::PeerMetrics {
        &self.peer
    }

    /// The leader election's gauge and counter (registered by `leader::register`).
    pub fn leader(&self) -> &crate::leader::LeaderMetrics {
        &self.leader
    }

    /// Record one value request. `metric` must be a defined metric name or a fixed word, never
    /// raw user input, to keep label cardinality bounded.
    pub fn observe_request(&self, metric: &str, code: u16, elapsed: Duration) {
        let known = self
            .request_label_sets
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(metric)
            .is_some_and(|codes| codes.contains(&code));
        if !known {
            self.request_label_sets
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(metric.to_string())
                .or_default()
                .insert(code);
        }
        let labels = RequestLabels {
            metric: metric.to_string(),
            code,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Record one call of `backend`'s source: its outcome, what it used, and its estimated
    /// cost.
    pub fn source_call(&self, backend: Backend, outcome: &str, usage: &Usage, dollars: f64) {
        match backend {
            Backend::CloudWatch => {
                self.cloudwatch_calls
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_string(),
                    })
                    .inc();
                self.cloudwatch_queries.inc_by(usage.items as u64);
                self.cloudwatch_metrics_requested
                    .inc_by(usage.billed as u64);
                self.cloudwatch_datapoints.inc_by(usage.datapoints as u64);
            }
            Backend::Sqs => {
                self.sqs_calls
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_string(),
                    })
                    .inc();
                self.sqs_requests.inc_by(usage.billed as u64);
            }
        }
        self.estimated_cost
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc_by(dollars);
        if usage.truncated {
            self.truncated_calls
                .get_or_create(&SourceLabels {
                    source: backend.label().to_string(),
                })
                .inc();
        }
    }

    /// Count one call of `backend` rejected as a bad request of its members.
    pub fn call_bisected(&self, backend: Backend) {
        self.bisected_calls
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc();
    }

    /// Count one cache lookup: `hit`, `miss` or `stale`.
    pub fn cache_lookup(&self, result: &str) {
        self.cache_lookups
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Set the number of active series.
    pub fn set_active_series(&self, count: usize) {
        self.active_series
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Set a metric's value age; metrics without series are removed.
    pub fn set_value_ages(&self, ages: &[(String, f64)]) {
        self.value_age.clear();
        for (metric, age) in ages {
            self.value_age
                .get_or_create(&MetricLabels {
                    metric: metric.clone(),
                })
                .set(*age);
        }
    }

    /// Set a source lane's gauges: how late its oldest due series is, how many series wait in
    /// its queue, and how many definitions it isolates (`learned` with anything learned, `whole`
    /// of them rejected whatever the selector).
    pub fn set_lane(
        &self,
        backend: Backend,
        lag: Duration,
        queued: usize,
        learned: usize,
        whole: usize,
    ) {
        let source = || SourceLabels {
            source: backend.label().to_string(),
        };
        self.refresh_lag
            .get_or_create(&source())
            .set(lag.as_secs_f64());
        self.queued_series
            .get_or_create(&source())
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        for (scope, count) in [
            ("series", learned.saturating_sub(whole)),
            ("definition", whole),
        ] {
            self.isolated_definitions
                .get_or_create(&IsolationLabels {
                    source: backend.label().to_string(),
                    scope,
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Count one call made while falling back (no leader heard from), as it completes (before
    /// [`AdapterMetrics::source_call`] counts it among all calls).
    pub fn fallback_refresh(&self, backend: Backend) {
        self.fallback_refreshes
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc();
    }

    /// Drop the request label sets of metric names for which `keep` is false (names no longer
    /// defined), so `/metrics` does not keep every name that ever existed.
    pub fn retain_request_metrics(&self, keep: impl Fn(&str) -> bool) {
        let mut sets = self
            .request_label_sets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sets.retain(|metric, codes| {
            if keep(metric) {
                return true;
            }
            for code in codes.iter() {
                let labels = RequestLabels {
                    metric: metric.clone(),
                    code: *code,
                };
                self.requests.remove(&labels);
                self.request_duration.remove(&labels);
            }
            false
        });
    }

    /// Record one forwarded request: `delegate` is a configured name, `outcome` a fixed word.
    pub fn delegate_request(&self, delegate: &str, outcome: &str, elapsed: Duration) {
        let labels = DelegateLabels {
            delegate: delegate.to_string(),
            outcome: outcome.to_string(),
        };
        self.delegate_requests.get_or_create(&labels).inc();
        self.delegate_request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Record one background discovery fetch, and how many names it left in discovery.
    pub fn delegate_discovery(&self, delegate: &str, outcome: &str, names: Option<usize>) {
        self.delegate_discovery_refreshes
            .get_or_create(&DelegateLabels {
                delegate: delegate.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(names) = names {
            self.delegate_discovered_metrics
                .get_or_create(&DelegateNameLabels {
                    delegate: delegate.to_string(),
                })
                .set(i64::try_from(names).unwrap_or(i64::MAX));
        }
    }

    /// Set the number of open API connections.
    pub fn set_open_connections(&self, count: usize) {
        self.api_connections
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Set the API port's connection cap.
    pub fn set_connection_limit(&self, limit: usize) {
        self.api_connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Count one pause of the accept loop at the connection cap.
    pub fn connection_wait(&self) {
        self.api_connection_waits.inc();
    }

    /// One more (or, with -1, one fewer) API request whose response is not fully sent.
    pub fn request_in_flight(&self, delta: i64) {
        self.api_requests_in_flight.inc_by(delta);
    }

    /// Count one ended API connection.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        self.api_connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count one request refused at the edge (`request_body`, `timeout`, `panic`).
    pub fn rejection(&self, reason: &'static str) {
        self.api_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Install the scrape-time collector (once).
    pub fn set_collector(&self, collector: Collector) {
        if self.collector.set(collector).is_err() {
            tracing::warn!("a metrics collector is already installed");
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        if let Some(collector) = self.collector.get() {
            collector(self);
        }
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_requests_and_cloudwatch_calls() {
        let metrics = AdapterMetrics::default();
        metrics.observe_request("sqs-visible", 200, Duration::from_millis(2));
        metrics.source_call(
            Backend::CloudWatch,
            "ok",
            &Usage {
                items: 3,
                billed: 2,
                datapoints: 6,
                truncated: false,
            },
            0.00002,
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "cloudwatch_adapter_requests_total{metric=\"sqs-visible\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_cloudwatch_queries_total 3"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_cloudwatch_calls_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        metrics.source_call(
            Backend::Sqs,
            "throttled",
            &Usage {
                items: 1,
                billed: 2,
                datapoints: 1,
                truncated: true,
            },
            0.0000008,
        );
        let text = metrics.encode();
        assert!(
            text.contains("cloudwatch_adapter_sqs_calls_total{outcome=\"throttled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_sqs_requests_total 2"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_incomplete_calls_total{source=\"sqs\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"} 8e-7")
                || text.contains(
                    "cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"} 0.0000008"
                ),
            "{text}"
        );
    }

    #[test]
    fn auth_counters_exist_from_the_start_and_count() {
        let metrics = AdapterMetrics::default();
        let text = metrics.encode();
        for line in [
            "cloudwatch_adapter_authentications_total{method=\"front-proxy\",result=\"success\"} 0",
            "cloudwatch_adapter_authorization_decisions_total{decision=\"denied\"} 0",
            "cloudwatch_adapter_reviews_total{review=\"SubjectAccessReview\",outcome=\"error\"} 0",
            "cloudwatch_adapter_review_cache_lookups_total{review=\"TokenReview\",result=\"shared\"} 0",
            "cloudwatch_adapter_client_certificate_verifications_total 0",
            "cloudwatch_adapter_review_waiting{review=\"SubjectAccessReview\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let auth = metrics.auth();
        auth.authentication("front-proxy", "success");
        auth.authentication("front-proxy", "success");
        auth.decision("allowed");
        auth.review("SubjectAccessReview", "allowed");
        auth.review_cache("SubjectAccessReview", "hit");
        auth.certificate_verification();
        let text = metrics.encode();
        for line in [
            "cloudwatch_adapter_authentications_total{method=\"front-proxy\",result=\"success\"} 2",
            "cloudwatch_adapter_authorization_decisions_total{decision=\"allowed\"} 1",
            "cloudwatch_adapter_reviews_total{review=\"SubjectAccessReview\",outcome=\"allowed\"} 1",
            "cloudwatch_adapter_review_cache_lookups_total{review=\"SubjectAccessReview\",result=\"hit\"} 1",
            "cloudwatch_adapter_client_certificate_verifications_total 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
