//! Turning a series' `GetMetricData` outcome into the value (or error) the HPA gets.
//!
//! Pure: the same function serves the refresh engine and the `query` subcommand.

use std::time::{Duration, SystemTime};

use crate::definition::{Definition, HumanDuration};
use crate::provider::{BackendFailure, ProviderError, Reading};
use crate::source::backend_error;

use super::translate::{cloudwatch_read, describe_query, newest_point};
use super::{MetricDataRequest, PROFILE, QueryResult, ResultStatus};

/// The value for one series from its results in a call that succeeded, as of `now`.
///
/// The newest datapoint wins and keeps its own timestamp. No datapoints means the definition's
/// `noDataValue`, or a `NoData` error that says what was searched. A call that failed as a whole
/// never gets here: the engine answers its members.
pub fn evaluate(
    definition: &Definition,
    request: &MetricDataRequest,
    results: &[QueryResult],
    now: SystemTime,
) -> Result<Reading, ProviderError> {
    let name = &definition.spec.name;
    let read = cloudwatch_read(definition)?;
    let series = results.iter().filter(|r| r.id == read.value_query).count();
    if series > 1 {
        // The HPA needs one number; picking one of several series would be a made-up answer.
        tracing::warn!(metric = %name, series, "value query returned several time series");
        return Err(ProviderError::Backend {
            failure: BackendFailure::InvalidQuery,
            message: format!(
                "metric {name}: query {} returns {series} time series; aggregate them into one (for example SUM(SEARCH(...)), or a Metrics Insights query without GROUP BY)",
                read.value_query
            ),
        });
    }
    if let Some(result) = results.iter().find(|r| r.id == read.value_query) {
        let failure = match &result.status {
            ResultStatus::Forbidden => Some(BackendFailure::AccessDenied),
            ResultStatus::InternalError => Some(BackendFailure::ServiceError),
            _ => None,
        };
        if let Some(failure) = failure {
            tracing::warn!(metric = %name, status = ?result.status, messages = ?result.messages, "query result not usable");
            return Err(backend_error(&PROFILE, failure, name));
        }
    }
    let window = Some(Duration::from_secs(u64::try_from(read.period).unwrap_or(0)));
    let partial = results
        .iter()
        .any(|r| r.id == read.value_query && r.status == ResultStatus::PartialData);
    let (timestamp, value) = match newest_point(read, results) {
        Some(point) => point,
        // Pages were left unread: "no datapoints" would be a guess.
        None if partial => {
            tracing::warn!(metric = %name, "value query has partial data and no datapoint");
            return Err(backend_error(&PROFILE, BackendFailure::ServiceError, name));
        }
        None => match definition.spec.no_data_value {
            // The user said what "no data" means; the timestamp is the newest time the
            // statement is about: the end of the searched window, not a datapoint's.
            Some(value) => (now.checked_sub(read.end_offset).unwrap_or(now), value),
            None => {
                return Err(ProviderError::NoData(format!(
                    "no datapoints for {} in the last {} (metric {name}); if no data means zero, as for an idle SQS queue, set noDataValue: 0 in the definition",
                    describe_query(request, &read.value_query),
                    HumanDuration(read.window),
                )));
            }
        },
    };
    Ok(Reading {
        timestamp,
        window,
        value,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::definition::{parse, selector_labels};
    use crate::provider::{Operator, Requirement, Selector};
    use crate::source::cloudwatch::translate::build_request;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

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

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_790_000_000)
    }

    fn run(
        metric: &str,
        queue: Option<&str>,
        results: Vec<QueryResult>,
    ) -> Result<Reading, ProviderError> {
        let set = parse(DEFS).unwrap();
        let definition: Arc<Definition> = set.get(metric).unwrap().clone();
        let selector = Selector {
            requirements: queue
                .map(|q| Requirement {
                    key: "QueueName".into(),
                    operator: Operator::Equals,
                    values: vec![q.into()],
                })
                .into_iter()
                .collect(),
        };
        let labels = selector_labels(&definition, &selector).unwrap();
        let request = build_request(&definition, &labels, now()).unwrap();
        evaluate(&definition, &request, &results, now())
    }

    fn result(points: Vec<(SystemTime, f64)>, status: ResultStatus) -> QueryResult {
        QueryResult {
            id: "visible".into(),
            label: None,
            points,
            status,
            messages: vec![],
        }
    }

    #[test]
    fn serves_the_newest_point_with_its_own_timestamp() {
        let t = UNIX_EPOCH + Duration::from_secs(1_789_999_940);
        let value = run(
            "sqs-visible",
            Some("orders"),
            vec![result(
                vec![(t, 12.5), (t - Duration::from_secs(60), 3.0)],
                ResultStatus::Complete,
            )],
        )
        .unwrap();
        assert_eq!(value.value, 12.5);
        assert_eq!(value.timestamp, t);
        assert_eq!(value.window, Some(Duration::from_secs(60)));
    }

    #[test]
    fn no_data_is_an_actionable_error_by_default() {
        let err = run(
            "sqs-visible",
            Some("orders"),
            vec![result(vec![], ResultStatus::Complete)],
        )
        .unwrap_err();
        let ProviderError::NoData(message) = err else {
            panic!("expected NoData, got {err:?}");
        };
        assert!(message.contains("no datapoints for AWS/SQS ApproximateNumberOfMessagesVisible QueueName=orders in the last 5m"), "{message}");
        assert!(message.contains("noDataValue: 0"), "{message}");
    }

    #[test]
    fn no_data_value_is_served_when_configured() {
        let value = run("sqs-idle-is-zero", None, vec![]).unwrap();
        assert_eq!(value.value, 0.0);
        assert_eq!(value.timestamp, now());
    }

    #[test]
    fn several_time_series_for_the_value_query_are_refused() {
        let t = UNIX_EPOCH + Duration::from_secs(1_789_999_940);
        let mut first = result(vec![(t, 1.0)], ResultStatus::Complete);
        first.label = Some("orders-a".into());
        let mut second = result(vec![(t, 2.0)], ResultStatus::Complete);
        second.label = Some("orders-b".into());
        let err = run("sqs-visible", Some("orders"), vec![first, second]).unwrap_err();
        let ProviderError::Backend { failure, message } = err else {
            panic!("expected Backend");
        };
        assert_eq!(failure, BackendFailure::InvalidQuery);
        assert!(message.contains("returns 2 time series"), "{message}");
    }

    #[test]
    fn partial_data_without_a_point_is_not_no_data() {
        let err = run(
            "sqs-idle-is-zero",
            None,
            vec![result(vec![], ResultStatus::PartialData)],
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ProviderError::Backend {
                    failure: BackendFailure::ServiceError,
                    ..
                }
            ),
            "{err:?}"
        );
        let t = UNIX_EPOCH + Duration::from_secs(1_789_999_940);
        let value = run(
            "sqs-visible",
            Some("orders"),
            vec![result(vec![(t, 7.0)], ResultStatus::PartialData)],
        )
        .unwrap();
        assert_eq!(
            value.value, 7.0,
            "the newest point comes first, so it serves"
        );
    }

    #[test]
    fn forbidden_result_status_is_not_a_value() {
        let err = run(
            "sqs-visible",
            Some("orders"),
            vec![result(vec![], ResultStatus::Forbidden)],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ProviderError::Backend {
                failure: BackendFailure::AccessDenied,
                ..
            }
        ));
    }
}
