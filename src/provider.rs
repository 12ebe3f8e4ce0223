//! The seam between the HTTP API and where values come from.
//!
//! The API layer sees only this trait and these types: no AWS, no cache types. Errors say what
//! went wrong in domain terms (not found, bad selector, no data, backend failure); `api::status`
//! is the one place that turns them into HTTP codes.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

/// A parsed label selector: the HPA's `metric.selector`, as the apiserver passes it on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// All requirements must hold.
    pub requirements: Vec<Requirement>,
}

/// One term of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (one for `=`/`!=`, any number for `in`/`notin`, none for existence).
    pub values: Vec<String>,
}

/// Label selector operators, as Kubernetes defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`
    Equals,
    /// `key!=value`
    NotEquals,
    /// `key in (a,b)`
    In,
    /// `key notin (a,b)`
    NotIn,
    /// `key`
    Exists,
    /// `!key`
    DoesNotExist,
}

impl Operator {
    /// How the operator is written in a selector.
    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "exists",
            Operator::DoesNotExist => "!",
        }
    }
}

/// One metric a provider can serve (for discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    /// The name HPAs use.
    pub name: String,
}

/// What the HPA asked for.
#[derive(Debug, Clone)]
pub struct MetricRequest {
    /// The HPA's namespace.
    pub namespace: String,
    /// The metric name.
    pub metric: String,
    /// The HPA's metric selector.
    pub selector: Selector,
}

/// One value the HPA will sum.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// The metric name.
    pub metric_name: String,
    /// Labels describing the series (the selector's labels).
    pub labels: BTreeMap<String, String>,
    /// The datapoint's own time, not the time of the request.
    pub timestamp: SystemTime,
    /// The period the value was aggregated over.
    pub window: Option<Duration>,
    /// The value.
    pub value: f64,
}

/// A value as a source read it, without what its series already knows (its name and labels):
/// the answer's name and labels are built when it is served.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The datapoint's own time.
    pub timestamp: SystemTime,
    /// The period it was aggregated over.
    pub window: Option<Duration>,
    /// The value.
    pub value: f64,
}

/// What kind of backend failure happened: decides the HTTP code and the user's next step. The
/// backend is the one the metric's definition reads (CloudWatch, SQS); the message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendFailure {
    /// The adapter's AWS identity may not read the metric, or its credentials are bad.
    AccessDenied,
    /// The backend is throttling the account.
    Throttled,
    /// The backend could not be reached (network, DNS, timeout).
    Unreachable,
    /// The backend answered with a server error.
    ServiceError,
    /// The backend rejected the request the definition produced.
    InvalidQuery,
    /// No usable AWS credentials were found.
    NoCredentials,
    /// The backend refused the request as a whole before reading what it asked for (a signature
    /// or clock error such as `RequestExpired`, a proxy's error page): no query is to blame.
    RequestRefused,
    /// The refresh did not complete inside the adapter (a task that panicked or timed out).
    Internal,
}

impl BackendFailure {
    /// Whether retrying may help without anyone acting (throttling, an outage).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            BackendFailure::Throttled
                | BackendFailure::Unreachable
                | BackendFailure::ServiceError
                | BackendFailure::RequestRefused
                | BackendFailure::Internal
        )
    }
}

impl BackendFailure {
    /// A short description for messages and metric labels.
    pub fn describe(self) -> &'static str {
        match self {
            BackendFailure::AccessDenied => "access denied",
            BackendFailure::Throttled => "throttled",
            BackendFailure::Unreachable => "unreachable",
            BackendFailure::ServiceError => "service error",
            BackendFailure::InvalidQuery => "query rejected",
            BackendFailure::NoCredentials => "no credentials",
            BackendFailure::RequestRefused => "request refused",
            BackendFailure::Internal => "internal error",
        }
    }
}

/// Why no value could be served. Serializable: a leader hands its answers, errors included, to
/// the other replicas.
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ProviderError {
    /// No definition of that name is visible from that namespace.
    #[error("the server could not find the metric {metric} for namespace {namespace}")]
    NotFound {
        /// The requested metric.
        metric: String,
        /// The requested namespace.
        namespace: String,
    },
    /// The selector cannot be translated exactly into the definition's queries.
    #[error("{0}")]
    InvalidSelector(String),
    /// CloudWatch has no datapoints in the window and the definition has no no-data value.
    #[error("{0}")]
    NoData(String),
    /// The backend failed; the message is safe to show (no AWS request details, no
    /// credentials).
    #[error("{message}")]
    Backend {
        /// The kind of failure.
        failure: BackendFailure,
        /// A user-facing message.
        message: String,
    },
    /// The value cannot be represented for the HPA.
    #[error("{0}")]
    Unrepresentable(String),
    /// What the definition reads does not exist (an SQS queue); the message names it.
    #[error("{0}")]
    ResourceNotFound(String),
    /// The adapter's own condition: the last value is past its max age (refreshes are failing,
    /// for the reason given, or behind schedule).
    #[error("{message}")]
    Stale {
        /// Why refreshes fail, if they do.
        failure: Option<BackendFailure>,
        /// A user-facing message with the value's age and its max age.
        message: String,
    },
    /// The adapter's own condition: no first value yet (the first fetch has not answered in
    /// time); it will be retried.
    #[error("{0}")]
    FirstFetchPending(String),
    /// The adapter's own condition: the series table is at `--max-series` (or this tenant's fair
    /// share of it), so a new series cannot be tracked.
    #[error("{0}")]
    AtCapacity(String),
}

/// Where values come from. The API layer is generic over this.
pub trait ExternalMetricsProvider: Send + Sync + 'static {
    /// The metrics visible for discovery.
    fn list_metrics(&self) -> Vec<MetricInfo>;

    /// Whether `metric` is defined for HPAs in `namespace` (cheap; checked before anything else,
    /// so an unknown metric is a 404 whatever else is wrong with the request).
    fn is_defined(&self, namespace: &str, metric: &str) -> bool;

    /// The values for one request; an empty list is never returned (the HPA treats it as an error).
    fn get_values(
        &self,
        request: MetricRequest,
    ) -> impl Future<Output = Result<Vec<MetricValue>, ProviderError>> + Send;
}
