//! CloudWatch's rules for a definition's `queries`: what `GetMetricData` would reject, checked
//! when the definition is loaded (and, where a schema can say it, at `kubectl apply`).
//!
//! The limits live here, with the validation; the batcher in [`crate::source::cloudwatch`] uses
//! the same constants, so the two cannot disagree.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::placeholder::{collect_placeholders, no_placeholder};
use super::spec::{ACCOUNT_ID_PATTERN, HumanDuration, MetricSpec};

/// CloudWatch's limit of queries in one `GetMetricData` call.
pub const MAX_QUERIES: usize = 500;
/// Default look-back window when a definition does not set one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// The longest end offset accepted: beyond an hour the value is no use for autoscaling.
const MAX_END_OFFSET: Duration = Duration::from_secs(3600);
/// The longest look-back window accepted (CloudWatch keeps 1-minute data for 15 days, but an
/// autoscaling signal older than a day is a configuration mistake).
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// CloudWatch's rule for `MetricDataQuery.Id` (also the CRD schema's pattern).
pub const QUERY_ID_PATTERN: &str = r"^[a-z][a-zA-Z0-9_]*$";
/// The statistics CloudWatch accepts: the basic ones, percentiles and the trimmed/windsorized
/// family (also the CRD schema's pattern, so it is RE2-compatible).
pub const STAT_PATTERN: &str = r"^(SampleCount|Average|Sum|Minimum|Maximum|IQM|[pP]\d{1,2}(\.\d{1,10})?|[pP]100|(tm|wm|tc|ts|pr|TM|WM|TC|TS|PR)(\d{1,2}(\.\d{1,10})?|100)|(tm|wm|tc|ts|pr|TM|WM|TC|TS|PR)\(\s*[-\d.%]*\s*:\s*[-\d.%]*\s*\))$";
/// The CEL rule for a period: 1, 5, 10, 30 or a positive multiple of 60 (what [`check_period`]
/// checks), enforced by the apiserver at apply time.
pub const PERIOD_RULE: &str = "self in [1, 5, 10, 30] || (self > 0 && self % 60 == 0)";
/// What the apiserver says when [`PERIOD_RULE`] fails.
pub const PERIOD_RULE_MESSAGE: &str = "period must be 1, 5, 10, 30 or a multiple of 60 seconds";

/// The units CloudWatch accepts in `MetricStat.Unit`.
pub const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

static QUERY_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(QUERY_ID_PATTERN).expect("static regex"));
static STAT: LazyLock<Regex> = LazyLock::new(|| Regex::new(STAT_PATTERN).expect("static regex"));
static ACCOUNT_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(ACCOUNT_ID_PATTERN).expect("static regex"));

/// What a valid CloudWatch definition reads, derived from its queries.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchRead {
    /// The id of the one query whose result is the value.
    pub value_query: String,
    /// The period the value is aggregated over (seconds).
    pub period: i64,
    /// The effective look-back window.
    pub window: Duration,
    /// The effective end offset.
    pub end_offset: Duration,
}

impl CloudWatchRead {
    /// The period as a duration.
    pub fn period_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.period.max(1)).unwrap_or(1))
    }
}

/// CloudWatch accepts 1, 5, 10 and 30 s (high-resolution) or any multiple of 60.
pub fn check_period(period: i64) -> Result<(), String> {
    if matches!(period, 1 | 5 | 10 | 30) || (period > 0 && period % 60 == 0) {
        Ok(())
    } else {
        Err(format!(
            "{period} is not a period CloudWatch accepts (1, 5, 10, 30 or a multiple of 60)"
        ))
    }
}

/// Check `spec.queries` (and the fields only CloudWatch reads) against CloudWatch's rules,
/// collecting the labels its placeholders need. What it returns is only meaningful when no
/// problem was added (it is returned anyway, so later checks can still report theirs).
pub(crate) fn validate(
    spec: &MetricSpec,
    labels: &mut BTreeSet<String>,
    problems: &mut Vec<String>,
) -> CloudWatchRead {
    if spec.queries.is_empty() {
        problems.push("queries: at least one query is required".to_string());
    }
    if spec.queries.len() > MAX_QUERIES {
        problems.push(format!(
            "queries: {} queries, CloudWatch accepts at most {MAX_QUERIES} in one call",
            spec.queries.len()
        ));
    }
    let mut ids = HashMap::new();
    let mut returning = Vec::new();
    let mut max_period = 0;
    for (index, query) in spec.queries.iter().enumerate() {
        let place = format!("queries[{index}] ({})", query.id);
        let mut push = |problem: String| problems.push(format!("{place}: {problem}"));
        if !QUERY_ID.is_match(&query.id) {
            push(format!(
                "id {:?} must start with a lowercase letter and contain only letters, digits and underscores (^[a-z][a-zA-Z0-9_]*$)",
                query.id
            ));
        }
        if let Some(previous) = ids.insert(query.id.clone(), index) {
            push(format!("id is already used by queries[{previous}]"));
        }
        if query.return_data.unwrap_or(true) {
            returning.push(query.id.clone());
        }
        if let Some(account) = &query.account_id
            && !ACCOUNT_ID.is_match(account)
        {
            push(format!(
                "accountId {account:?} must be a 12-digit AWS account id"
            ));
        }
        if let Some(period) = query.period {
            if let Err(problem) = check_period(period) {
                push(format!("period: {problem}"));
            } else {
                max_period = max_period.max(period);
            }
        }
        no_placeholder("id", &query.id, &mut push);
        match (&query.expression, &query.metric_stat) {
            (Some(_), Some(_)) => push("set either expression or metricStat, not both".into()),
            (None, None) => push("set one of expression or metricStat".into()),
            _ => {}
        }
        // Both halves are checked even when both are (wrongly) set, to report everything.
        if let Some(expression) = &query.expression {
            if expression.trim().is_empty() {
                push("expression is empty".into());
            }
            collect_placeholders("expression", expression, labels, &mut push);
        }
        if let Some(stat) = &query.metric_stat {
            let metric = &stat.metric;
            if metric.namespace.trim().is_empty() {
                push("metricStat.metric.namespace is required".into());
            }
            if metric.metric_name.trim().is_empty() {
                push("metricStat.metric.metricName is required".into());
            }
            no_placeholder("metricStat.metric.namespace", &metric.namespace, &mut push);
            no_placeholder(
                "metricStat.metric.metricName",
                &metric.metric_name,
                &mut push,
            );
            if metric.dimensions.len() > 30 {
                push("metricStat.metric.dimensions: CloudWatch allows at most 30".into());
            }
            let mut dimension_names = BTreeSet::new();
            for dimension in &metric.dimensions {
                if dimension.name.trim().is_empty() {
                    push("a dimension has an empty name".into());
                }
                if !dimension_names.insert(dimension.name.as_str()) {
                    push(format!("dimension {} is listed twice", dimension.name));
                }
                no_placeholder("a dimension name", &dimension.name, &mut push);
                if dimension.value.is_empty() {
                    push(format!("dimension {} has an empty value", dimension.name));
                }
                collect_placeholders(
                    &format!("dimension {}", dimension.name),
                    &dimension.value,
                    labels,
                    &mut push,
                );
            }
            match stat.period {
                None => push("metricStat.period is required".into()),
                Some(period) => match check_period(period) {
                    Ok(()) => max_period = max_period.max(period),
                    Err(problem) => push(format!("metricStat.period: {problem}")),
                },
            }
            match &stat.stat {
                None => {
                    push("metricStat.stat is required (e.g. Average, Sum, Maximum, p99)".into())
                }
                Some(name) if !STAT.is_match(name) => push(format!(
                    "metricStat.stat {name:?} is not a CloudWatch statistic (SampleCount, Average, Sum, Minimum, Maximum, pNN, tmNN, ...)"
                )),
                Some(_) => {}
            }
            if let Some(unit) = &stat.unit
                && !UNITS.contains(&unit.as_str())
            {
                push(format!(
                    "metricStat.unit {unit:?} is not a CloudWatch unit (e.g. Count, Seconds, Percent)"
                ));
            }
        }
    }
    let value_query = match returning.as_slice() {
        [one] => one.clone(),
        [] if !spec.queries.is_empty() => {
            problems.push(
                "no query returns data: set returnData: true on the query whose value the HPA should read"
                    .to_string(),
            );
            String::new()
        }
        [] => String::new(),
        many => {
            problems.push(format!(
                "queries {} all return data; the HPA reads one value, so set returnData: false on all but one",
                many.join(", ")
            ));
            String::new()
        }
    };
    // An expression's period comes from its inputs unless set explicitly.
    let period = spec
        .queries
        .iter()
        .find(|q| q.id == value_query)
        .and_then(|q| q.metric_stat.as_ref().and_then(|s| s.period).or(q.period))
        .unwrap_or(max_period);

    let end_offset = spec.end_offset.map(|d| d.0).unwrap_or_default();
    if end_offset > MAX_END_OFFSET {
        problems.push(format!(
            "endOffset {} is longer than the 1h maximum",
            HumanDuration(end_offset)
        ));
    }
    let period_duration = Duration::from_secs(u64::try_from(period.max(1)).unwrap_or(1));
    let window = match spec.window {
        Some(HumanDuration(window)) => {
            if window < period_duration {
                problems.push(format!(
                    "window {} is shorter than the period ({period}s): it could never hold a datapoint",
                    HumanDuration(window)
                ));
            }
            if window > MAX_WINDOW {
                problems.push(format!(
                    "window {} is longer than the 24h maximum",
                    HumanDuration(window)
                ));
            }
            window
        }
        None => DEFAULT_WINDOW.max(period_duration * 3),
    };
    CloudWatchRead {
        value_query,
        period,
        window,
        end_offset,
    }
}
