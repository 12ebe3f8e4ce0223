//! CloudWatch `GetMetricData` as a [`Source`]: query translation (pure), batching up to 500
//! queries per call, evaluation of the results, and the narrow client seam in front of the SDK.
//!
//! Only `client.rs` imports AWS SDK types. Nothing here knows about HTTP.

pub mod batch;
pub mod client;
pub mod evaluate;
pub mod translate;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::SystemTime;

use serde::Serialize;

use crate::definition::cloudwatch::{Token, tokens};
use crate::definition::{Backend, Definition, MAX_QUERIES};
use crate::provider::ProviderError;
use crate::source::aws::CREDENTIALS_HINT;
use crate::source::{Fetched, Member, Planned, Profile, Source, SourceError, Usage};

/// How `GetMetricData` batches and what it costs: up to 500 queries a call, billed about $0.01
/// per 1,000 metrics requested (us-east-1 list price, no free tier).
pub const PROFILE: Profile = Profile {
    backend: Backend::CloudWatch,
    max_items_per_call: MAX_QUERIES,
    dollars_per_unit: 0.01 / 1000.0,
    permissions: "cloudwatch:GetMetricData (and sts:AssumeRole for a definition's roleArn)",
    credentials_hint: CREDENTIALS_HINT,
    operation: "GetMetricData",
};

pub use crate::source::aws::Target;

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

/// The narrow seam in front of the AWS SDK, so provider logic can be tested with a fake.
pub trait MetricDataSource: Send + Sync + 'static {
    /// Run one request, following `NextToken` pages, and return one result per returned query,
    /// or why the call failed as a whole.
    fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> impl Future<Output = Result<Vec<QueryResult>, SourceError>> + Send;
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
    ) -> impl Future<Output = Result<Vec<QueryResult>, SourceError>> + Send {
        (**self).get_metric_data(request)
    }
}

/// `GetMetricData` behind the engine's [`Source`] seam, over any [`MetricDataSource`] client.
#[derive(Debug)]
pub struct CloudWatchSource<C> {
    client: C,
}

impl<C: MetricDataSource> CloudWatchSource<C> {
    /// A source calling `client`.
    pub fn new(client: C) -> Self {
        Self { client }
    }
}

impl<C: MetricDataSource> Source for CloudWatchSource<C> {
    type Request = MetricDataRequest;
    type Call = batch::Batch;

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn prepare(
        &self,
        definition: &Definition,
        labels: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<MetricDataRequest, ProviderError> {
        translate::build_request(definition, labels, now)
    }

    fn size(&self, definition: &Definition) -> usize {
        size(definition)
    }

    fn plan(&self, items: &[&MetricDataRequest]) -> Vec<Planned<batch::Batch>> {
        batch::plan(items, MAX_QUERIES)
            .into_iter()
            .map(|batch| Planned {
                members: batch.members.clone(),
                call: batch,
            })
            .collect()
    }

    async fn fetch(
        &self,
        call: &batch::Batch,
        members: &[Member<'_, MetricDataRequest>],
        now: SystemTime,
    ) -> Fetched {
        let queries = &call.request.metric_data_queries;
        let mut usage = Usage {
            items: queries.len(),
            // CloudWatch bills the metrics requested: MetricStat queries, not expressions.
            billed: queries
                .iter()
                .filter(|q| matches!(q.kind, QueryKind::MetricStat(_)))
                .count(),
            ..Usage::default()
        };
        let results = match self.client.get_metric_data(&call.request).await {
            Ok(results) => results,
            Err(error) => {
                return Fetched {
                    usage,
                    outcome: Err(error),
                };
            }
        };
        usage.datapoints = results.iter().map(|r| r.points.len()).sum();
        usage.truncated = results
            .iter()
            .any(|r| r.status == ResultStatus::PartialData);
        let mut by_member = call.distribute(results);
        let outcome = call
            .members
            .iter()
            .zip(members)
            .map(|(index, member)| {
                let results = by_member.remove(index).unwrap_or_default();
                evaluate::evaluate(member.definition, member.request, &results, now)
            })
            .collect();
        Fetched {
            usage,
            outcome: Ok(outcome),
        }
    }
}

/// How much of a call's 500 queries a series of `definition` takes. `METRICS()` reads every
/// query of its call, so such a series always gets a call of its own (see `batch`): it is
/// charged a whole call, or a tenant could spend the call budget hundreds of times over at one
/// item each.
fn size(definition: &Definition) -> usize {
    let reads_whole_call = definition.spec.queries.iter().any(|query| {
        query.expression.as_deref().is_some_and(|expression| {
            tokens(expression).iter().any(|token| {
                matches!(token, Token::Word { text, call: true } if text.eq_ignore_ascii_case("METRICS"))
            })
        })
    });
    if reads_whole_call {
        MAX_QUERIES
    } else {
        definition.spec.queries.len().max(1)
    }
}

#[cfg(test)]
mod size_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn first(yaml: &str) -> std::sync::Arc<Definition> {
        crate::definition::parse(yaml)
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .clone()
    }

    #[test]
    fn a_series_that_reads_its_whole_call_is_charged_a_whole_call() {
        let shared = first(
            r#"
metrics:
  - name: shared
    queries:
      - id: m
        returnData: false
        metricStat: {metric: {namespace: AWS/SQS, metricName: X}, period: 60, stat: Sum}
      - id: e
        expression: "m * 2"
"#,
        );
        let alone = first(
            r#"
metrics:
  - name: alone
    queries:
      - id: m
        returnData: false
        metricStat: {metric: {namespace: AWS/SQS, metricName: X}, period: 60, stat: Sum}
      - id: e
        expression: "SUM(metrics ())"
"#,
        );
        assert_eq!(size(&shared), 2);
        assert_eq!(size(&alone), MAX_QUERIES);
    }
}
