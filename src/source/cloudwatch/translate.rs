//! Pure translation: definition + selector + clock -> `GetMetricData` request, and results -> value.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::definition::cloudwatch::{MAX_DIMENSION_VALUE, MAX_EXPRESSION_LENGTH, renamed_length};
use crate::definition::placeholder::check_value;
use crate::definition::{CloudWatchRead, Definition, render};
use crate::provider::ProviderError;

use super::{Dimension, MetricDataRequest, MetricStat, Query, QueryKind, QueryResult, Target};

/// What a CloudWatch definition reads; an error for any other (the engine routes series by
/// backend, so this only guards against a wiring mistake).
pub fn cloudwatch_read(definition: &Definition) -> Result<&CloudWatchRead, ProviderError> {
    definition
        .cloudwatch()
        .ok_or_else(|| ProviderError::Backend {
            failure: crate::provider::BackendFailure::InvalidQuery,
            message: format!(
                "metric {} is not read from CloudWatch",
                definition.spec.name
            ),
        })
}

/// Build the request for `definition` with `labels` at time `now`.
///
/// The window ends at `now - endOffset`, rounded down to the period, so the bucket still filling
/// is never read (a partial `Sum` would look like a drop in load); it starts `window` earlier,
/// aligned to the period, because CloudWatch answers faster and more predictably for aligned
/// times.
pub fn build_request(
    definition: &Definition,
    labels: &BTreeMap<String, String>,
    now: SystemTime,
) -> Result<MetricDataRequest, ProviderError> {
    let spec = &definition.spec;
    let read = cloudwatch_read(definition)?;
    // Label values are checked for the place they fill before any query is built: a value
    // CloudWatch would refuse must fail this series alone, not the call it would share.
    for (label, context) in &read.placeholders {
        if let Some(value) = labels.get(label) {
            check_value(label, value, *context).map_err(|reason| {
                ProviderError::InvalidSelector(format!("metric {}: {reason}", spec.name))
            })?;
        }
    }
    let fill = |template: &str| {
        render(template, labels).map_err(|missing| {
            ProviderError::InvalidSelector(format!("metric {} {missing}", spec.name))
        })
    };
    let mut queries = Vec::with_capacity(spec.queries.len());
    for query in &spec.queries {
        let kind = match (&query.expression, &query.metric_stat) {
            (Some(expression), _) => {
                let filled = fill(expression)?;
                let ids: Vec<&str> = spec.queries.iter().map(|q| q.id.as_str()).collect();
                let length = renamed_length(&filled, &ids);
                if length > MAX_EXPRESSION_LENGTH {
                    return Err(ProviderError::InvalidSelector(format!(
                        "metric {}: with these label values the expression of query {} is {length} characters in a call, over CloudWatch's {MAX_EXPRESSION_LENGTH}",
                        spec.name, query.id
                    )));
                }
                QueryKind::Expression(filled)
            }
            (None, Some(stat)) => QueryKind::MetricStat(MetricStat {
                namespace: stat.metric.namespace.clone(),
                metric_name: stat.metric.metric_name.clone(),
                dimensions: stat
                    .metric
                    .dimensions
                    .iter()
                    .map(|d| {
                        let value = fill(&d.value)?;
                        if value.len() > MAX_DIMENSION_VALUE {
                            return Err(ProviderError::InvalidSelector(format!(
                                "metric {}: with these label values dimension {} is {} characters, over CloudWatch's {MAX_DIMENSION_VALUE}",
                                spec.name,
                                d.name,
                                value.len()
                            )));
                        }
                        Ok(Dimension {
                            name: d.name.clone(),
                            value,
                        })
                    })
                    .collect::<Result<_, ProviderError>>()?,
                period: to_i32(stat.period.unwrap_or(read.period)),
                stat: stat
                    .stat
                    .clone()
                    .ok_or_else(|| unusable_query(definition, &query.id))?,
                unit: stat.unit.clone(),
            }),
            // Validation makes this impossible; if it ever happens, say so rather than send
            // CloudWatch a query nobody wrote.
            (None, None) => return Err(unusable_query(definition, &query.id)),
        };
        queries.push(Query {
            id: query.id.clone(),
            label: query.label.clone(),
            return_data: query.id == read.value_query,
            period: query.period.map(to_i32),
            account_id: query.account_id.clone(),
            kind,
        });
    }
    let (start_time, end_time) = window(read, now);
    Ok(MetricDataRequest {
        target: Target::of(definition),
        start_time,
        end_time,
        scan_by: "TimestampDescending",
        metric_data_queries: queries,
    })
}

fn unusable_query(definition: &Definition, id: &str) -> ProviderError {
    ProviderError::Backend {
        failure: crate::provider::BackendFailure::InvalidQuery,
        message: format!(
            "metric {}: query {id} has no expression or no metricStat.stat; fix the definition",
            definition.spec.name
        ),
    }
}

fn to_i32(period: i64) -> i32 {
    i32::try_from(period).unwrap_or(i32::MAX)
}

/// The `[start, end)` window for `now`, aligned to the definition's period.
pub fn window(read: &CloudWatchRead, now: SystemTime) -> (SystemTime, SystemTime) {
    let period = u64::try_from(read.period.max(1)).unwrap_or(60);
    let now_secs = now
        .checked_sub(read.end_offset)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let end = now_secs / period * period;
    let start = end.saturating_sub(read.window.as_secs()) / period * period;
    (
        UNIX_EPOCH + Duration::from_secs(start),
        UNIX_EPOCH + Duration::from_secs(end),
    )
}

/// The newest datapoint of the value query, if any.
pub fn newest_point(read: &CloudWatchRead, results: &[QueryResult]) -> Option<(SystemTime, f64)> {
    results
        .iter()
        .filter(|r| r.id == read.value_query)
        .flat_map(|r| r.points.iter().copied())
        .filter(|(_, value)| value.is_finite())
        .max_by_key(|(timestamp, _)| *timestamp)
}

/// A human description of what was queried, for no-data messages:
/// `AWS/SQS ApproximateNumberOfMessagesVisible QueueName=orders`.
pub fn describe_query(request: &MetricDataRequest, value_query: &str) -> String {
    let query = request
        .metric_data_queries
        .iter()
        .find(|q| q.id == value_query);
    match query.map(|q| &q.kind) {
        Some(QueryKind::MetricStat(stat)) => {
            let mut text = format!("{} {}", stat.namespace, stat.metric_name);
            for dimension in &stat.dimensions {
                text.push_str(&format!(" {}={}", dimension.name, dimension.value));
            }
            text
        }
        Some(QueryKind::Expression(expression)) => format!("expression {expression:?}"),
        None => value_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::definition::{parse, selector_labels};
    use crate::provider::{Operator, Requirement, Selector};
    use std::sync::Arc;

    fn definition(yaml: &str) -> Arc<Definition> {
        let set = parse(yaml).unwrap();
        set.iter().next().unwrap().clone()
    }

    fn sqs() -> Arc<Definition> {
        crate::definition::fixtures::sqs_visible()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn equality_selector_fills_the_dimension() {
        let def = sqs();
        let selector = Selector {
            requirements: vec![req("QueueName", Operator::Equals, &["orders"])],
        };
        let labels = selector_labels(&def, &selector).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_790_000_030);
        let request = build_request(&def, &labels, now).unwrap();
        let QueryKind::MetricStat(stat) = &request.metric_data_queries[0].kind else {
            panic!("metric stat expected");
        };
        assert_eq!(stat.dimensions[0].value, "orders");
        assert!(request.metric_data_queries[0].return_data);
        assert_eq!(
            describe_query(&request, "visible"),
            "AWS/SQS ApproximateNumberOfMessagesVisible QueueName=orders"
        );
    }

    #[test]
    fn window_is_aligned_and_honours_the_end_offset() {
        let def = definition(
            "metrics:\n  - name: x\n    window: 5m\n    endOffset: 2m\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 60\n          stat: Sum\n",
        );
        let now = UNIX_EPOCH + Duration::from_secs(10_000 * 60 + 17);
        let (start, end) = window(def.cloudwatch().unwrap(), now);
        // now - 2m = minute 9998 + 17s -> rounded down: the bucket at 9998 is still filling.
        assert_eq!(end, UNIX_EPOCH + Duration::from_secs(9_998 * 60));
        assert_eq!(start, UNIX_EPOCH + Duration::from_secs(9_993 * 60));
    }

    #[test]
    fn newest_point_ignores_other_queries_and_order() {
        let def = sqs();
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let results = vec![
            QueryResult {
                id: "other".into(),
                label: None,
                points: vec![(t(500), 9.0)],
                status: crate::source::cloudwatch::ResultStatus::Complete,
                messages: vec![],
            },
            QueryResult {
                id: "visible".into(),
                label: None,
                points: vec![(t(120), 2.0), (t(180), 3.5), (t(60), 1.0)],
                status: crate::source::cloudwatch::ResultStatus::Complete,
                messages: vec![],
            },
        ];
        assert_eq!(
            newest_point(def.cloudwatch().unwrap(), &results),
            Some((t(180), 3.5))
        );
    }
}
