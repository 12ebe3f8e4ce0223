//! The provider that answers HPA requests from CloudWatch definitions.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::definition::{DefinitionSet, HumanDuration};
use crate::metrics::AdapterMetrics;
use crate::provider::{
    BackendFailure, ExternalMetricsProvider, MetricInfo, MetricRequest, MetricValue, ProviderError,
};

use super::translate::{build_request, describe_query, newest_point, selector_labels};
use super::{CloudWatchError, MetricDataSource, ResultStatus};

/// Serves values by querying CloudWatch for each request.
#[derive(Debug)]
pub struct CloudWatchProvider<S> {
    definitions: Arc<ArcSwap<DefinitionSet>>,
    source: S,
    metrics: Arc<AdapterMetrics>,
}

impl<S: MetricDataSource> CloudWatchProvider<S> {
    /// A provider over `definitions` (swappable at runtime) reading from `source`.
    pub fn new(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        source: S,
        metrics: Arc<AdapterMetrics>,
    ) -> Self {
        Self {
            definitions,
            source,
            metrics,
        }
    }

    /// Answer one request as of `now`.
    pub async fn values_at(
        &self,
        request: &MetricRequest,
        now: SystemTime,
    ) -> Result<Vec<MetricValue>, ProviderError> {
        let definitions = self.definitions.load();
        let Some(definition) = definitions.get(&request.metric) else {
            return Err(ProviderError::NotFound {
                metric: request.metric.clone(),
                namespace: request.namespace.clone(),
            });
        };
        let name = &definition.spec.name;
        let labels = selector_labels(definition, &request.selector)?;
        let query = build_request(definition, &labels, now)?;
        let results = self
            .source
            .get_metric_data(&query)
            .await
            .inspect(|_| {
                self.metrics
                    .cloudwatch_call("ok", query.metric_data_queries.len())
            })
            .map_err(|error| {
                let failure = failure_of(&error);
                self.metrics
                    .cloudwatch_call(failure.describe(), query.metric_data_queries.len());
                tracing::warn!(metric = %name, error = %error, "GetMetricData failed");
                ProviderError::Backend {
                    failure,
                    message: backend_message(failure, name),
                }
            })?;
        if let Some(result) = results.iter().find(|r| r.id == definition.value_query) {
            let failure = match &result.status {
                ResultStatus::Forbidden => Some(BackendFailure::AccessDenied),
                ResultStatus::InternalError => Some(BackendFailure::ServiceError),
                _ => None,
            };
            if let Some(failure) = failure {
                tracing::warn!(metric = %name, status = ?result.status, messages = ?result.messages, "query result not usable");
                return Err(ProviderError::Backend {
                    failure,
                    message: backend_message(failure, name),
                });
            }
        }
        let window = Some(std::time::Duration::from_secs(
            u64::try_from(definition.period).unwrap_or(0),
        ));
        let (timestamp, value) = match newest_point(definition, &results) {
            Some(point) => point,
            None => match definition.spec.no_data_value {
                // The user said what "no data" means; the timestamp is the newest time the
                // statement is about: the end of the searched window, not a datapoint's.
                Some(value) => (now.checked_sub(definition.end_offset).unwrap_or(now), value),
                None => {
                    return Err(ProviderError::NoData(format!(
                        "no datapoints for {} in the last {} (metric {name}); if no data means zero, as for an idle SQS queue, set noDataValue: 0 in the definition",
                        describe_query(&query, &definition.value_query),
                        HumanDuration(definition.window),
                    )));
                }
            },
        };
        Ok(vec![MetricValue {
            metric_name: name.clone(),
            labels,
            timestamp,
            window,
            value,
        }])
    }
}

impl<S: MetricDataSource> ExternalMetricsProvider for CloudWatchProvider<S> {
    fn list_metrics(&self) -> Vec<MetricInfo> {
        self.definitions
            .load()
            .iter()
            .map(|d| MetricInfo {
                name: d.spec.name.clone(),
            })
            .collect()
    }

    async fn get_values(&self, request: MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        self.values_at(&request, SystemTime::now()).await
    }
}

fn failure_of(error: &CloudWatchError) -> BackendFailure {
    match error {
        CloudWatchError::Throttled { .. } => BackendFailure::Throttled,
        CloudWatchError::AccessDenied { .. } => BackendFailure::AccessDenied,
        CloudWatchError::NoCredentials { .. } => BackendFailure::NoCredentials,
        CloudWatchError::InvalidQuery { .. } => BackendFailure::InvalidQuery,
        CloudWatchError::Service { .. } => BackendFailure::ServiceError,
        CloudWatchError::Unreachable { .. } => BackendFailure::Unreachable,
    }
}

/// What the user sees: which metric, which kind of failure, what to do. No AWS text.
fn backend_message(failure: BackendFailure, metric: &str) -> String {
    match failure {
        BackendFailure::AccessDenied => format!(
            "unable to fetch metric {metric} from CloudWatch: access denied; check that the adapter's IAM role allows cloudwatch:GetMetricData (and sts:AssumeRole for a definition's roleArn)"
        ),
        BackendFailure::NoCredentials => format!(
            "unable to fetch metric {metric} from CloudWatch: no AWS credentials; configure IRSA (eks.amazonaws.com/role-arn on the service account) or another credentials source"
        ),
        BackendFailure::Throttled => format!(
            "unable to fetch metric {metric} from CloudWatch: throttled (GetMetricData rate limit for the account and region); it will be retried"
        ),
        BackendFailure::Unreachable => format!(
            "unable to fetch metric {metric} from CloudWatch: CloudWatch is unreachable (network, DNS or timeout)"
        ),
        BackendFailure::ServiceError => format!(
            "unable to fetch metric {metric} from CloudWatch: CloudWatch returned a server error; it will be retried"
        ),
        BackendFailure::InvalidQuery => format!(
            "unable to fetch metric {metric} from CloudWatch: the query was rejected; check the definition with `cloudwatch-metrics-adapter query`"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cloudwatch::{MetricDataRequest, QueryResult};
    use crate::definition::parse;
    use crate::provider::{Operator, Requirement, Selector};
    use std::sync::Mutex;
    use std::time::{Duration, UNIX_EPOCH};

    /// A scripted source: returns the queued answer and records requests.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<Result<Vec<QueryResult>, CloudWatchError>>>,
        seen: Mutex<Vec<MetricDataRequest>>,
    }

    impl MetricDataSource for Scripted {
        async fn get_metric_data(
            &self,
            request: &MetricDataRequest,
        ) -> Result<Vec<QueryResult>, CloudWatchError> {
            self.seen.lock().unwrap().push(request.clone());
            self.answers.lock().unwrap().remove(0)
        }
    }

    const DEFS: &str = r#"
metrics:
  - name: sqs-visible
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Average
  - name: sqs-idle-is-zero
    noDataValue: 0
    queries:
      - id: visible
        metricStat:
          metric: {namespace: AWS/SQS, metricName: ApproximateNumberOfMessagesVisible}
          period: 60
          stat: Average
"#;

    fn provider(answer: Result<Vec<QueryResult>, CloudWatchError>) -> CloudWatchProvider<Scripted> {
        let source = Scripted {
            answers: Mutex::new(vec![answer]),
            seen: Mutex::default(),
        };
        let definitions = Arc::new(ArcSwap::from_pointee(parse(DEFS).unwrap()));
        CloudWatchProvider::new(definitions, source, Arc::new(AdapterMetrics::default()))
    }

    fn request(metric: &str, queue: Option<&str>) -> MetricRequest {
        MetricRequest {
            namespace: "default".into(),
            metric: metric.into(),
            selector: Selector {
                requirements: queue
                    .map(|q| Requirement {
                        key: "QueueName".into(),
                        operator: Operator::Equals,
                        values: vec![q.into()],
                    })
                    .into_iter()
                    .collect(),
            },
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    #[tokio::test]
    async fn serves_the_newest_point_with_its_own_timestamp() {
        let t = UNIX_EPOCH + Duration::from_secs(1_789_999_940);
        let provider = provider(Ok(vec![QueryResult {
            id: "visible".into(),
            points: vec![(t, 12.5), (t - Duration::from_secs(60), 3.0)],
            status: ResultStatus::Complete,
            messages: vec![],
        }]));
        let values = provider
            .values_at(&request("sqs-visible", Some("orders")), now())
            .await
            .unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].value, 12.5);
        assert_eq!(values[0].timestamp, t);
        assert_eq!(values[0].window, Some(Duration::from_secs(60)));
        assert_eq!(values[0].labels["QueueName"], "orders");
    }

    #[tokio::test]
    async fn no_data_is_an_actionable_error_by_default() {
        let provider = provider(Ok(vec![QueryResult {
            id: "visible".into(),
            points: vec![],
            status: ResultStatus::Complete,
            messages: vec![],
        }]));
        let err = provider
            .values_at(&request("sqs-visible", Some("orders")), now())
            .await
            .unwrap_err();
        let ProviderError::NoData(message) = err else {
            panic!("expected NoData, got {err:?}");
        };
        assert!(message.contains("no datapoints for AWS/SQS ApproximateNumberOfMessagesVisible QueueName=orders in the last 5m"), "{message}");
        assert!(message.contains("noDataValue: 0"), "{message}");
    }

    #[tokio::test]
    async fn no_data_value_is_served_when_configured() {
        let provider = provider(Ok(vec![]));
        let values = provider
            .values_at(&request("sqs-idle-is-zero", None), now())
            .await
            .unwrap();
        assert_eq!(values[0].value, 0.0);
        assert_eq!(values[0].timestamp, now());
    }

    #[tokio::test]
    async fn backend_errors_become_safe_messages() {
        let provider = provider(Err(CloudWatchError::AccessDenied {
            detail: "AccessDenied, HTTP 403: User arn:aws:sts::123:assumed-role/secret".into(),
        }));
        let err = provider
            .values_at(&request("sqs-visible", Some("orders")), now())
            .await
            .unwrap_err();
        let ProviderError::Backend { failure, message } = err else {
            panic!("expected Backend");
        };
        assert_eq!(failure, BackendFailure::AccessDenied);
        assert!(message.contains("sqs-visible") && message.contains("access denied"));
        assert!(
            !message.contains("arn:aws:sts"),
            "AWS detail leaked: {message}"
        );
    }

    #[tokio::test]
    async fn forbidden_result_status_is_not_a_value() {
        let provider = provider(Ok(vec![QueryResult {
            id: "visible".into(),
            points: vec![],
            status: ResultStatus::Forbidden,
            messages: vec![],
        }]));
        let err = provider
            .values_at(&request("sqs-visible", Some("orders")), now())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ProviderError::Backend {
                failure: BackendFailure::AccessDenied,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn unknown_metric_is_not_found_without_calling_cloudwatch() {
        let provider = provider(Ok(vec![]));
        let err = provider
            .values_at(&request("nope", None), now())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server could not find the metric nope for namespace default"
        );
        assert!(provider.source.seen.lock().unwrap().is_empty());
    }
}
