//! CloudWatch: query translation (pure), the narrow client seam, and the provider built on them.
//!
//! Only `client.rs` imports AWS SDK types. Nothing here knows about HTTP.

pub mod batch;
pub mod client;
pub mod evaluate;
pub mod translate;

use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;

/// Which account, region and identity a query runs as. Queries are batched per target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Region; the adapter's default when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Role to assume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// External id for the role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

/// A `GetMetricData` request in domain terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricDataRequest {
    /// Who runs it.
    #[serde(skip)]
    pub target: Target,
    /// Inclusive start, aligned to the period.
    #[serde(serialize_with = "serialize_time")]
    pub start_time: SystemTime,
    /// Exclusive end, aligned to the period.
    #[serde(serialize_with = "serialize_time")]
    pub end_time: SystemTime,
    /// Newest first, so the value is the first datapoint.
    pub scan_by: &'static str,
    /// The queries, placeholders filled.
    pub metric_data_queries: Vec<Query>,
}

/// One `MetricDataQuery`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Query {
    /// Query id.
    pub id: String,
    /// Label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether the result comes back.
    pub return_data: bool,
    /// Expression period, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<i32>,
    /// Cross-account source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Either a metric stat or an expression.
    #[serde(flatten)]
    pub kind: QueryKind,
}

/// The body of a query.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub enum QueryKind {
    /// A metric and statistic.
    MetricStat(MetricStat),
    /// Metric math.
    Expression(String),
}

/// A metric, period and statistic.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetricStat {
    /// Namespace.
    pub namespace: String,
    /// Metric name.
    pub metric_name: String,
    /// Dimensions, placeholders filled.
    pub dimensions: Vec<Dimension>,
    /// Period in seconds.
    pub period: i32,
    /// Statistic.
    pub stat: String,
    /// Unit filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Dimension {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// One query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The query id.
    pub id: String,
    /// The result's label: a query that returns several time series (SEARCH, Metrics Insights
    /// GROUP BY) has one result per series, all with the query's id, told apart by label.
    pub label: Option<String>,
    /// Datapoints, in the order CloudWatch returned them.
    pub points: Vec<(SystemTime, f64)>,
    /// CloudWatch's per-result status.
    pub status: ResultStatus,
    /// CloudWatch's per-result messages (codes and values), for logs.
    pub messages: Vec<String>,
}

/// Per-result `StatusCode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultStatus {
    /// All data returned.
    Complete,
    /// More data exists (pages were followed; this remains if a page limit was hit).
    PartialData,
    /// CloudWatch failed for this query.
    InternalError,
    /// Not allowed to read this query's metric (cross-account).
    Forbidden,
    /// A code this adapter does not know.
    Other(String),
}

/// How a `GetMetricData` call failed, classified for users and metrics. The `detail` is for logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudWatchError {
    /// Throttling / rate exceeded.
    #[error("throttled by CloudWatch ({detail})")]
    Throttled {
        /// For logs.
        detail: String,
    },
    /// AccessDenied, bad or expired credentials.
    #[error("access denied by AWS ({detail})")]
    AccessDenied {
        /// For logs.
        detail: String,
    },
    /// No credentials could be loaded.
    #[error("no AWS credentials ({detail})")]
    NoCredentials {
        /// For logs.
        detail: String,
    },
    /// CloudWatch rejected the request as invalid.
    #[error("CloudWatch rejected the query ({detail})")]
    InvalidQuery {
        /// For logs.
        detail: String,
    },
    /// A 5xx from CloudWatch.
    #[error("CloudWatch service error ({detail})")]
    Service {
        /// For logs.
        detail: String,
    },
    /// Connection, DNS or timeout.
    #[error("CloudWatch unreachable ({detail})")]
    Unreachable {
        /// For logs.
        detail: String,
    },
}

/// The narrow seam in front of the AWS SDK, so provider logic can be tested with a fake.
pub trait MetricDataSource: Send + Sync + 'static {
    /// Run one request, following `NextToken` pages, and return one result per returned query.
    fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> impl Future<Output = Result<Vec<QueryResult>, CloudWatchError>> + Send;
}

fn serialize_time<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&humantime::format_rfc3339_seconds(*time).to_string())
}

impl<T: MetricDataSource> MetricDataSource for std::sync::Arc<T> {
    fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> impl Future<Output = Result<Vec<QueryResult>, CloudWatchError>> + Send {
        (**self).get_metric_data(request)
    }
}
