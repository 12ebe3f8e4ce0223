//! The AWS SDK behind [`MetricDataSource`]: the only file that imports `aws-sdk-*` types.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataError;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension as AwsDimension, Metric, MetricDataQuery, MetricStat as AwsMetricStat, ScanBy,
    StandardUnit, StatusCode,
};
use aws_sdk_cloudwatch::{Client, config::Region};

use super::{
    CloudWatchError, MetricDataRequest, MetricDataSource, QueryKind, QueryResult, ResultStatus,
    Target,
};

/// The most `NextToken` pages followed for one request. A window of a few periods fits in one
/// page; this only bounds a pathological definition.
const MAX_PAGES: usize = 20;

/// Session name the adapter uses when assuming a definition's role (shows in CloudTrail).
const SESSION_NAME: &str = "cloudwatch-metrics-adapter";

/// `GetMetricData` through the real SDK, one client per target, built once and reused.
#[derive(Debug)]
pub struct AwsCloudWatch {
    base: SdkConfig,
    endpoint_url: Option<String>,
    clients: Mutex<HashMap<Target, Client>>,
}

impl AwsCloudWatch {
    /// Wrap a loaded SDK configuration (region, credentials chain, endpoint, retries, timeouts).
    pub fn new(base: SdkConfig) -> Self {
        Self {
            base,
            endpoint_url: None,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Send CloudWatch calls (only those: STS `AssumeRole` keeps its own endpoint) to `url`.
    pub fn with_endpoint_url(mut self, url: Option<String>) -> Self {
        self.endpoint_url = url;
        self
    }

    async fn client(&self, target: &Target) -> Client {
        if let Some(client) = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(target)
        {
            return client.clone();
        }
        let mut builder = aws_sdk_cloudwatch::config::Builder::from(&self.base);
        if let Some(url) = &self.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        if let Some(region) = &target.region {
            builder = builder.region(Region::new(region.clone()));
        }
        if let Some(role) = &target.role_arn {
            // The assumed-role provider caches and refreshes its credentials; the client keeps it.
            let mut provider = AssumeRoleProvider::builder(role.clone())
                .session_name(SESSION_NAME)
                .configure(&self.base);
            if let Some(external_id) = &target.external_id {
                provider = provider.external_id(external_id.clone());
            }
            builder = builder.credentials_provider(provider.build().await);
        }
        let client = Client::from_conf(builder.build());
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(target.clone())
            .or_insert(client)
            .clone()
    }
}

impl MetricDataSource for AwsCloudWatch {
    async fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> Result<Vec<QueryResult>, CloudWatchError> {
        let client = self.client(&request.target).await;
        let queries: Vec<MetricDataQuery> = request
            .metric_data_queries
            .iter()
            .map(to_sdk_query)
            .collect();
        let mut merged: Vec<QueryResult> = Vec::new();
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let output = client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(DateTime::from(request.start_time))
                .end_time(DateTime::from(request.end_time))
                .scan_by(ScanBy::from(request.scan_by))
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(classify)?;
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
                match merged.iter_mut().find(|r| r.id == id && r.label == label) {
                    Some(existing) => {
                        existing.points.extend(points);
                        existing.status = status;
                        existing.messages.extend(messages);
                    }
                    None => merged.push(QueryResult {
                        id,
                        label,
                        points: points.collect(),
                        status,
                        messages,
                    }),
                }
            }
            next_token = output.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
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

/// Error codes that mean "who you are is not allowed", across CloudWatch and STS.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidSignatureException",
    "NotAuthorized",
];
const THROTTLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
];

fn classify(error: SdkError<GetMetricDataError, HttpResponse>) -> CloudWatchError {
    // Walk the chain for a credentials failure: it can hide under a dispatch failure.
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(credentials) = cause.downcast_ref::<CredentialsError>() {
            let detail = summarize(credentials);
            return match credentials {
                CredentialsError::CredentialsNotLoaded(_)
                | CredentialsError::InvalidConfiguration(_) => {
                    CloudWatchError::NoCredentials { detail }
                }
                CredentialsError::ProviderTimedOut(_) => CloudWatchError::Unreachable { detail },
                // A provider that answered and refused, e.g. STS denying a definition's roleArn.
                _ => CloudWatchError::AccessDenied { detail },
            };
        }
        source = cause.source();
    }
    match &error {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or("Unknown").to_string();
            let status = context.raw().status().as_u16();
            let detail = format!("{code}, HTTP {status}");
            if THROTTLE_CODES.contains(&code.as_str()) || status == 429 {
                CloudWatchError::Throttled { detail }
            } else if ACCESS_CODES.contains(&code.as_str()) || status == 403 {
                CloudWatchError::AccessDenied { detail }
            } else if status >= 500 {
                CloudWatchError::Service { detail }
            } else {
                let message = context.err().message().unwrap_or_default();
                CloudWatchError::InvalidQuery {
                    detail: format!("{detail}: {message}"),
                }
            }
        }
        SdkError::TimeoutError(_) => CloudWatchError::Unreachable {
            detail: "request timed out".to_string(),
        },
        SdkError::DispatchFailure(failure) => CloudWatchError::Unreachable {
            detail: summarize(&error).to_string()
                + if failure.is_timeout() {
                    " (timeout)"
                } else {
                    ""
                },
        },
        SdkError::ResponseError(_) => CloudWatchError::Service {
            detail: summarize(&error),
        },
        SdkError::ConstructionFailure(_) => CloudWatchError::InvalidQuery {
            detail: summarize(&error),
        },
        _ => CloudWatchError::Service {
            detail: summarize(&error),
        },
    }
}

/// The error and its causes on one line (for logs), without request or response dumps.
fn summarize(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
