//! The AWS SDK behind [`MetricDataSource`]: the only CloudWatch file that imports `aws-sdk-*`
//! types.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension as AwsDimension, Metric, MetricDataQuery, MetricStat as AwsMetricStat, ScanBy,
    StandardUnit, StatusCode,
};

use super::{MetricDataRequest, MetricDataSource, QueryKind, QueryResult, ResultStatus, Target};
use crate::source::SourceError;
use crate::source::aws::{self, Clients};

/// The most `NextToken` pages followed for one request. A window of a few periods fits in one
/// page; this only bounds a pathological definition.
const MAX_PAGES: usize = 20;

/// `GetMetricData` through the real SDK, one client per target, built once and reused.
#[derive(Debug)]
pub struct AwsCloudWatch {
    clients: Clients<Client>,
}

impl AwsCloudWatch {
    /// Wrap a loaded SDK configuration (region, credentials chain, endpoint, retries, timeouts).
    pub fn new(base: SdkConfig) -> Self {
        Self {
            clients: Clients::new(base),
        }
    }

    /// Send CloudWatch calls (only those: STS `AssumeRole` keeps its own endpoint) to `url`.
    pub fn with_endpoint_url(self, url: Option<String>) -> Self {
        Self {
            clients: self.clients.with_endpoint_url(url),
        }
    }

    async fn client(&self, target: &Target) -> Client {
        self.clients
            .get(target, |config, endpoint_url| {
                let mut builder = aws_sdk_cloudwatch::config::Builder::from(config);
                // Only an override replaces the base configuration's endpoint (which may
                // itself come from AWS_ENDPOINT_URL).
                if let Some(url) = endpoint_url {
                    builder.set_endpoint_url(Some(url.to_string()));
                }
                Client::from_conf(builder.build())
            })
            .await
    }
}

impl MetricDataSource for AwsCloudWatch {
    async fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> Result<Vec<QueryResult>, SourceError> {
        let client = self.client(&request.target).await;
        let queries = || -> Vec<MetricDataQuery> {
            request
                .metric_data_queries
                .iter()
                .map(to_sdk_query)
                .collect()
        };
        let mut merged: Vec<QueryResult> = Vec::new();
        // Where each (id, label) is in `merged`, so pages merge in O(1) per result.
        let mut index: HashMap<(String, Option<String>), usize> = HashMap::new();
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            // Built per page (another page is rare): no copy of 500 queries for every call.
            let output = client
                .get_metric_data()
                .set_metric_data_queries(Some(queries()))
                .start_time(DateTime::from(request.start_time))
                .end_time(DateTime::from(request.end_time))
                .scan_by(ScanBy::from(request.scan_by))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|error| aws::classify(error).0)?;
            for result in output.metric_data_results() {
                let id = result.id().unwrap_or_default().to_string();
                let label = result.label().map(str::to_string);
                let points = result
                    .timestamps()
                    .iter()
                    .zip(result.values())
                    .filter_map(|(t, v)| SystemTime::try_from(*t).ok().map(|t| (t, *v)));
                let status = match result.status_code() {
                    Some(StatusCode::Complete) | None => ResultStatus::Complete,
                    Some(StatusCode::PartialData) => ResultStatus::PartialData,
                    Some(StatusCode::InternalError) => ResultStatus::InternalError,
                    Some(StatusCode::Forbidden) => ResultStatus::Forbidden,
                    Some(other) => ResultStatus::Other(other.as_str().to_string()),
                };
                let messages = result
                    .messages()
                    .iter()
                    .map(|m| format!("{}: {}", m.code().unwrap_or("?"), m.value().unwrap_or("")))
                    .collect();
                // Pages continue a result with the same id and label.
                match index.entry((id, label)) {
                    Entry::Occupied(at) => {
                        let existing = &mut merged[*at.get()];
                        existing.points.extend(points);
                        existing.status = status;
                        existing.messages.extend(messages);
                    }
                    Entry::Vacant(slot) => {
                        let (id, label) = slot.key().clone();
                        slot.insert(merged.len());
                        merged.push(QueryResult {
                            id,
                            label,
                            points: points.collect(),
                            status,
                            messages,
                        });
                    }
                }
            }
            next_token = output.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }
        if next_token.is_some() {
            // Pages left unread: the results are not complete, and say so (the newest points
            // come first, so what was read may still serve; no data cannot be concluded).
            tracing::warn!(
                pages = MAX_PAGES,
                queries = request.metric_data_queries.len(),
                "GetMetricData pagination stopped before the last page"
            );
            for result in &mut merged {
                result.status = ResultStatus::PartialData;
            }
        }
        Ok(merged)
    }
}

fn to_sdk_query(query: &super::Query) -> MetricDataQuery {
    let builder = MetricDataQuery::builder()
        .id(&query.id)
        .set_label(query.label.clone())
        .return_data(query.return_data)
        .set_period(query.period)
        .set_account_id(query.account_id.clone());
    match &query.kind {
        QueryKind::Expression(expression) => builder.expression(expression),
        QueryKind::MetricStat(stat) => builder.metric_stat(
            AwsMetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace(&stat.namespace)
                        .metric_name(&stat.metric_name)
                        .set_dimensions(Some(
                            stat.dimensions
                                .iter()
                                .map(|d| {
                                    AwsDimension::builder()
                                        .name(&d.name)
                                        .value(&d.value)
                                        .build()
                                })
                                .collect(),
                        ))
                        .build(),
                )
                .period(stat.period)
                .stat(&stat.stat)
                .set_unit(stat.unit.as_deref().map(StandardUnit::from))
                .build(),
        ),
    }
    .build()
}
