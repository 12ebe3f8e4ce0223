//! CloudWatch's rules for a definition's `queries`: what `GetMetricData` would reject, checked
//! when the definition is loaded (and, where a schema can say it, at `kubectl apply`).
//!
//! The limits are in [`super::limits`], which the batcher in [`crate::source::cloudwatch`] uses
//! too (they are re-exported here for it), so the two cannot disagree.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::limits::{ACCOUNT_ID, MAX_END_OFFSET, MAX_WINDOW, QUERY_ID_PATTERN, STAT_PATTERN};
pub use super::limits::{
    DEFAULT_WINDOW, MAX_BATCH_PREFIX, MAX_DIMENSION_VALUE, MAX_EXPRESSION_LENGTH, MAX_ID_LENGTH,
    MAX_PERIOD, MAX_QUERIES, PERIOD_RULE, PERIOD_RULE_MESSAGE, PeriodError, UNITS, check_period,
};
use super::placeholder::{
    Context, collect_placeholders, expression_contexts, longest_fill, no_placeholder,
};
use super::spec::{HumanDuration, MetricSpec};

static QUERY_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(QUERY_ID_PATTERN).expect("static regex"));
static STAT: LazyLock<Regex> = LazyLock::new(|| Regex::new(STAT_PATTERN).expect("static regex"));

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
    /// Every placeholder with where it is filled, which decides the values it may take.
    pub placeholders: Vec<(String, Context)>,
}

impl CloudWatchRead {
    /// The period as a duration.
    pub fn period_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.period.max(1)).unwrap_or(1))
    }
}

/// How long `expression` can become in a call: placeholders filled with the longest values
/// their context allows, and every reference to one of `ids` prefixed by the batcher.
pub fn longest_in_a_call(expression: &str, contexts: &[(String, Context)], ids: &[&str]) -> usize {
    let filled = longest_fill(expression, contexts);
    renamed_length(&filled, ids)
}

/// The length of `expression` once every reference to one of `ids` gets the longest batch
/// prefix.
pub fn renamed_length(expression: &str, ids: &[&str]) -> usize {
    let references = tokens(expression)
        .iter()
        .filter(|token| matches!(token, Token::Word { text, call: false } if ids.contains(&text.as_str())))
        .count();
    expression.len() + references * MAX_BATCH_PREFIX
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
    let mut placeholders: Vec<(String, Context)> = Vec::new();
    for (index, query) in spec.queries.iter().enumerate() {
        let place = format!("queries[{index}] ({})", query.id);
        let mut push = |problem: String| problems.push(format!("{place}: {problem}"));
        if !QUERY_ID.is_match(&query.id) {
            push(format!(
                "id {:?} must start with a lowercase letter and contain only letters, digits and underscores (^[a-z][a-zA-Z0-9_]*$)",
                query.id
            ));
        }
        if query.id.len() > MAX_ID_LENGTH - MAX_BATCH_PREFIX {
            push(format!(
                "id is {} characters; CloudWatch allows {MAX_ID_LENGTH}, and batching prefixes up to {MAX_BATCH_PREFIX} (s499_), so at most {}",
                query.id.len(),
                MAX_ID_LENGTH - MAX_BATCH_PREFIX
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
            let contexts = expression_contexts(expression);
            let all_ids: Vec<&str> = spec.queries.iter().map(|q| q.id.as_str()).collect();
            let longest = longest_in_a_call(expression, &contexts, &all_ids);
            if longest > MAX_EXPRESSION_LENGTH {
                push(format!(
                    "expression can be {longest} characters in a call (placeholders filled with up to 63 characters, query ids prefixed by batching), over CloudWatch's {MAX_EXPRESSION_LENGTH}"
                ));
            }
            placeholders.extend(contexts);
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
                let contexts: Vec<(String, Context)> = expression_contexts(&dimension.value)
                    .into_iter()
                    .map(|(name, _)| (name, Context::DimensionValue))
                    .collect();
                let longest = longest_fill(&dimension.value, &contexts).len();
                if longest > MAX_DIMENSION_VALUE {
                    push(format!(
                        "dimension {} can be {longest} characters once its placeholders are filled, over CloudWatch's {MAX_DIMENSION_VALUE}",
                        dimension.name
                    ));
                }
                placeholders.extend(contexts);
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
    // An invalid period is reported above; the checks below must not compute with it.
    let period = if check_period(period).is_ok() {
        period
    } else {
        60
    };

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
    placeholders.sort();
    placeholders.dedup();
    CloudWatchRead {
        value_query,
        period,
        window,
        end_offset,
        placeholders,
    }
}

/// A metric math expression, split into words (identifiers, and whether a `(` follows) and
/// everything else (string literals, numbers, operators) kept verbatim.
#[derive(Debug, PartialEq)]
pub enum Token {
    /// An identifier or keyword, and whether a `(` follows (a function call).
    Word {
        /// The word.
        text: String,
        /// Followed by `(`.
        call: bool,
    },
    /// Anything else, verbatim.
    Text(String),
}

pub fn tokens(expression: &str) -> Vec<Token> {
    let chars: Vec<char> = expression.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            // A string literal, honouring backslash escapes.
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
            out.push(Token::Text(chars[start..i].iter().collect()));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            out.push(Token::Word {
                text: chars[start..i].iter().collect(),
                call,
            });
        } else if c.is_ascii_digit() {
            // Numbers (1e3, 0.5) stay whole so their letters are not read as identifiers.
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Text(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Text(c.to_string()));
            i += 1;
        }
    }
    out
}
