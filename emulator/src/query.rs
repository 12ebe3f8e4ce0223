//! GetMetricData: validation, period bucketing, metric math, labels and pagination.
//!
//! Time handling follows the API reference: StartTime is inclusive and rounded down (to the
//! minute when it is less than 15 days old, to 5 minutes between 15 and 63 days, to the hour
//! beyond; high-resolution periods of 1, 5, 10, 20 and 30 s round to their own multiple instead of
//! the minute), EndTime is exclusive, a result's timestamps are `rounded StartTime + k x Period`,
//! and periods with no data are omitted. When StartTime is older than 3 hours the period must be a
//! multiple of 60 s (older than 15 days: 300 s; older than 63 days: 3600 s) or no datapoints are
//! returned, as CloudWatch's retention documentation says.

use std::collections::{BTreeMap, HashMap, HashSet};

use ciborium::Value;

use crate::error::{ApiError, code};
use crate::math::{self, Env, Expr, MathError, Series, Val};
use crate::stats::{self, Stat, StatError};
use crate::store::{MetricKey, Store};
use crate::units;
use crate::wire::{self, Obj, map, text};

const MAX_QUERIES: usize = 500;
const MAX_DIMENSIONS: usize = 30;
const DEFAULT_MAX_DATAPOINTS: i64 = 100_800;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const HIGH_RES_PERIODS: [i64; 5] = [1, 5, 10, 20, 30];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanBy {
    Descending,
    Ascending,
}

#[derive(Debug)]
struct MetricStatQuery {
    key: MetricKey,
    period_s: i64,
    stat: Stat,
    /// The statistic as the caller wrote it (used in generated labels).
    stat_text: String,
    unit: Option<String>,
}

#[derive(Debug)]
enum Body {
    Stat(MetricStatQuery),
    Expression(String),
}

#[derive(Debug)]
struct Query {
    id: String,
    body: Body,
    label: Option<String>,
    return_data: bool,
}

#[derive(Debug)]
struct Request {
    queries: Vec<Query>,
    start_ms: i64,
    end_ms: i64,
    scan_by: ScanBy,
    max_datapoints: i64,
    next_token: Option<String>,
}

/// What one successful GetMetricData call did, for the response and the meter.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub body: Value,
    pub queries: u64,
    pub metrics_requested: u64,
    pub datapoints: u64,
}

fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_valid_period(period: i64) -> bool {
    // The model's Period is a 32-bit integer; larger values are not periods at all.
    period > 0
        && period <= i64::from(i32::MAX)
        && (HIGH_RES_PERIODS.contains(&period) || period % 60 == 0)
}

fn bad_period(period: i64, parameter: &str) -> String {
    format!(
        "The value {period} for parameter {parameter} is not valid. The period must be 1, 5, 10, \
         20, 30, 60, or any multiple of 60."
    )
}

fn not_null(member: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value null at '{member}' failed to satisfy constraint: \
         Member must not be null"
    ))
}

fn is_insights_query(expression: &str) -> bool {
    expression
        .trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("SELECT"))
}

/// Reads and validates the input. AWS reports every validation problem of a request in one
/// `ValidationError`, one per line; features the emulator lacks are refused after that.
fn parse(input: &Value) -> Result<Request, ApiError> {
    let root = Obj::root(input)?;
    let list = root
        .list("MetricDataQueries")?
        .ok_or_else(|| not_null("metricDataQueries"))?;
    let start_ms = root
        .timestamp_ms("StartTime")?
        .ok_or_else(|| not_null("startTime"))?;
    let end_ms = root
        .timestamp_ms("EndTime")?
        .ok_or_else(|| not_null("endTime"))?;
    if list.len() > MAX_QUERIES {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'metricDataQueries' failed to satisfy \
             constraint: Member must have length less than or equal to {MAX_QUERIES}"
        )));
    }

    let mut errors = Vec::new();
    let mut unsupported = Vec::new();
    let mut queries = Vec::new();
    let mut ids = Vec::new();
    for (i, q) in list.objs()?.iter().enumerate() {
        let p = format!("MetricDataQueries.member.{}", i + 1);
        let id = match q.str("Id")? {
            None => {
                errors.push(format!("The parameter {p}.Id is required."));
                None
            }
            Some(id) if !is_valid_id(id) || id.len() > 255 => {
                errors.push(format!(
                    "The value {id} for parameter {p}.Id is not matching the expected pattern \
                     ^[a-z][a-zA-Z0-9_]*$."
                ));
                None
            }
            Some(id) => Some(id.to_string()),
        };
        if let Some(id) = &id {
            ids.push(id.clone());
        }
        if let Some(period) = q.int("Period")?
            && !is_valid_period(period)
        {
            errors.push(bad_period(period, &format!("{p}.Period")));
        }
        // Cross-account queries read the caller's own (only) account here.
        let _account_id = q.str("AccountId")?;
        let label = q
            .str("Label")?
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        if label.as_deref().is_some_and(|l| l.contains("${")) {
            unsupported.push(format!("dynamic labels (the Label of {p} uses ${{...}})"));
        }
        let return_data = q.bool("ReturnData")?.unwrap_or(true);
        let body = match (q.obj("MetricStat")?, q.str("Expression")?) {
            (Some(_), Some(_)) => {
                errors.push(format!(
                    "The parameters {p}.MetricStat and {p}.Expression are mutually exclusive and \
                     you have specified both."
                ));
                None
            }
            (None, None) => {
                errors.push(format!(
                    "Exactly one of the parameters {p}.MetricStat and {p}.Expression must be \
                     specified."
                ));
                None
            }
            (Some(ms), None) => {
                parse_metric_stat(&ms, &p, &mut errors, &mut unsupported)?.map(Body::Stat)
            }
            (None, Some(expression)) => {
                if expression.trim().is_empty() || expression.len() > math::MAX_EXPRESSION_LEN {
                    errors.push(format!(
                        "The value for parameter {p}.Expression must be between 1 and {} characters long.",
                        math::MAX_EXPRESSION_LEN
                    ));
                    None
                } else {
                    Some(Body::Expression(expression.to_string()))
                }
            }
        };
        if let (Some(id), Some(body)) = (id, body) {
            queries.push(Query {
                id,
                body,
                label,
                return_data,
            });
        }
    }

    let mut seen = HashSet::new();
    if !ids.iter().all(|id| seen.insert(id.as_str())) {
        // AWS's wording, recorded from real responses.
        errors.push("The values for parameter id in MetricDataQueries are not unique.".into());
    }
    if start_ms >= end_ms {
        errors.push("The parameter StartTime must be less than the parameter EndTime.".into());
    }
    let scan_by = match root.str("ScanBy")? {
        None | Some("TimestampDescending") => ScanBy::Descending,
        Some("TimestampAscending") => ScanBy::Ascending,
        Some(other) => {
            errors.push(format!(
                "1 validation error detected: Value '{other}' at 'scanBy' failed to satisfy \
                 constraint: Member must satisfy enum value set: [TimestampDescending, TimestampAscending]"
            ));
            ScanBy::Descending
        }
    };
    let max_datapoints = root.int("MaxDatapoints")?.unwrap_or(DEFAULT_MAX_DATAPOINTS);
    if max_datapoints < 1 {
        errors.push(format!(
            "The value {max_datapoints} for parameter MaxDatapoints is not valid. It must be greater than 0."
        ));
    }
    // The timezone only affects dynamic labels, which are refused above.
    if let Some(options) = root.obj("LabelOptions")? {
        let _timezone = options.str("Timezone")?;
    }
    let next_token = root.str("NextToken")?.map(str::to_string);

    let insights = queries
        .iter()
        .filter(|q| matches!(&q.body, Body::Expression(e) if is_insights_query(e)))
        .count();
    if insights > 1 {
        errors.push("Only one Metrics Insights query is allowed per GetMetricData call.".into());
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors.join("\n")));
    }
    if insights > 0 {
        unsupported.insert(0, "Metrics Insights (SQL) queries".into());
    }
    if let Some(first) = unsupported.first() {
        return Err(ApiError::unsupported(first.clone()));
    }
    Ok(Request {
        queries,
        start_ms,
        end_ms,
        scan_by,
        max_datapoints,
        next_token,
    })
}

fn parse_metric_stat(
    ms: &Obj<'_>,
    p: &str,
    errors: &mut Vec<String>,
    unsupported: &mut Vec<String>,
) -> Result<Option<MetricStatQuery>, ApiError> {
    let before = errors.len();
    let required = |errors: &mut Vec<String>, member: &str| {
        errors.push(format!(
            "The parameter {p}.MetricStat.{member} is required."
        ));
    };
    let mut key = None;
    match ms.obj("Metric")? {
        None => required(errors, "Metric"),
        Some(metric) => {
            let namespace = metric.str("Namespace")?;
            let name = metric.str("MetricName")?;
            if namespace.is_none() {
                required(errors, "Metric.Namespace");
            }
            if name.is_none() {
                required(errors, "Metric.MetricName");
            }
            let mut dimensions = Vec::new();
            if let Some(list) = metric.list("Dimensions")? {
                if list.len() > MAX_DIMENSIONS {
                    errors.push(format!(
                        "The collection {p}.MetricStat.Metric.Dimensions must not have more than {MAX_DIMENSIONS} members."
                    ));
                }
                for (j, dim) in list.objs()?.iter().enumerate() {
                    match (dim.str("Name")?, dim.str("Value")?) {
                        (Some(n), Some(v)) => dimensions.push((n.to_string(), v.to_string())),
                        (None, _) => {
                            required(errors, &format!("Metric.Dimensions.member.{}.Name", j + 1))
                        }
                        (_, None) => {
                            required(errors, &format!("Metric.Dimensions.member.{}.Value", j + 1))
                        }
                    }
                }
            }
            if let (Some(namespace), Some(name)) = (namespace, name) {
                key = Some(MetricKey::new(namespace, name, dimensions));
            }
        }
    }
    let period = ms.int("Period")?;
    match period {
        None => required(errors, "Period"),
        Some(v) if !is_valid_period(v) => {
            errors.push(bad_period(v, &format!("{p}.MetricStat.Period")))
        }
        Some(_) => {}
    }
    let stat_text = ms.str("Stat")?;
    let stat = match stat_text {
        None => {
            required(errors, "Stat");
            None
        }
        Some(s) => match Stat::parse(s) {
            Ok(stat) => Some(stat),
            Err(StatError::Invalid) => {
                // AWS's wording, recorded from real responses.
                errors.push(format!(
                    "The value for parameter {p}.MetricStat.Stat is not a valid statistic."
                ));
                None
            }
            Err(StatError::Unsupported) => {
                unsupported.push(format!("the extended statistic {s} (in {p})"));
                None
            }
        },
    };
    let unit = ms.str("Unit")?;
    if let Some(u) = unit
        && !units::is_valid(u)
    {
        errors.push(format!(
            "The value {u} for parameter {p}.MetricStat.Unit is not valid. Valid values are {}.",
            units::enum_list()
        ));
    }
    if errors.len() > before {
        return Ok(None);
    }
    Ok(match (key, period, stat, stat_text) {
        (Some(key), Some(period_s), Some(stat), Some(stat_text)) => Some(MetricStatQuery {
            key,
            period_s,
            stat,
            stat_text: stat_text.to_string(),
            unit: unit.map(str::to_string),
        }),
        _ => None,
    })
}

/// StartTime rounded down as CloudWatch documents it.
pub(crate) fn aligned_start(start_ms: i64, period_s: i64, now_ms: i64) -> i64 {
    let age = now_ms - start_ms;
    let step = if age > 63 * DAY_MS {
        HOUR_MS
    } else if age > 15 * DAY_MS {
        5 * MINUTE_MS
    } else if period_s < 60 {
        period_s * 1000
    } else {
        MINUTE_MS
    };
    start_ms.div_euclid(step) * step
}

/// Whether CloudWatch still has data at this period for a query starting at `start_ms`.
pub(crate) fn period_retained(period_s: i64, start_ms: i64, now_ms: i64) -> bool {
    let age = now_ms - start_ms;
    if age > 63 * DAY_MS {
        period_s % 3600 == 0
    } else if age > 15 * DAY_MS {
        period_s % 300 == 0
    } else if age > 3 * HOUR_MS {
        period_s % 60 == 0
    } else {
        true
    }
}

/// One MetricStat query's datapoints (oldest first) and its result messages.
fn metric_stat_series(
    store: &Store,
    q: &MetricStatQuery,
    start_ms: i64,
    end_ms: i64,
    now_ms: i64,
) -> (Series, Vec<(String, String)>) {
    if !period_retained(q.period_s, start_ms, now_ms) {
        return (Vec::new(), Vec::new());
    }
    let start = aligned_start(start_ms, q.period_s, now_ms);
    let period_ms = q.period_s * 1000;
    let samples = store.range(&q.key, start, end_ms);
    let mut messages = Vec::new();
    let unit: Option<&str> = match &q.unit {
        Some(u) => Some(u),
        None => {
            let mut found: Vec<&str> = samples.iter().map(|s| s.unit.as_str()).collect();
            found.sort_unstable();
            found.dedup();
            if found.len() > 1 {
                messages.push((
                    "MultipleUnits".to_string(),
                    format!("Multiple units returned: '[{}]'", found.join(", ")),
                ));
                units::preferred(&found)
            } else {
                None
            }
        }
    };
    let mut buckets: BTreeMap<i64, Vec<&crate::store::Aggregate>> = BTreeMap::new();
    for sample in samples.iter().filter(|s| unit.is_none_or(|u| s.unit == u)) {
        let index = (sample.timestamp_ms - start).div_euclid(period_ms);
        buckets.entry(index).or_default().push(&sample.aggregate);
    }
    let series = buckets
        .into_iter()
        .filter_map(|(index, aggregates)| {
            stats::compute(q.stat, aggregates).map(|v| (start + index * period_ms, v))
        })
        .collect();
    (series, messages)
}

/// Labels CloudWatch generates: the metric name, plus the statistic and/or the period when other
/// queries for the same metric in the request differ in them (AWS-recorded behaviour; a
/// difference in Unit alone adds nothing).
fn default_labels(queries: &[Query]) -> HashMap<&str, String> {
    let mut groups: HashMap<&MetricKey, Vec<&MetricStatQuery>> = HashMap::new();
    for q in queries {
        if let Body::Stat(ms) = &q.body {
            groups.entry(&ms.key).or_default().push(ms);
        }
    }
    let mut labels = HashMap::new();
    for q in queries {
        if let Body::Stat(ms) = &q.body {
            let group = &groups[&ms.key];
            let mut label = ms.key.name.clone();
            if group.iter().any(|o| o.stat_text != ms.stat_text) {
                label.push(' ');
                label.push_str(&ms.stat_text);
            }
            if group.iter().any(|o| o.period_s != ms.period_s) {
                label.push_str(&format!(" {}", ms.period_s));
            }
            labels.insert(q.id.as_str(), label);
        }
    }
    labels
}

struct Evaluator<'a> {
    stat_series: &'a HashMap<&'a str, Series>,
    /// MetricStat ids in request order, for `METRICS()`.
    stat_order: &'a [&'a str],
    expressions: &'a HashMap<&'a str, Expr>,
    memo: HashMap<String, Val>,
    visiting: Vec<String>,
}

impl Env for Evaluator<'_> {
    fn value(&mut self, id: &str) -> Result<Val, MathError> {
        if let Some(series) = self.stat_series.get(id) {
            return Ok(Val::Series(series.clone()));
        }
        if let Some(v) = self.memo.get(id) {
            return Ok(v.clone());
        }
        let expressions = self.expressions;
        let Some(expr) = expressions.get(id) else {
            return Err(MathError::Invalid(format!(
                "{id} is not the Id of a query in this request"
            )));
        };
        if self.visiting.iter().any(|v| v == id) {
            let mut chain = self.visiting.clone();
            chain.push(id.to_string());
            return Err(MathError::Invalid(format!(
                "circular reference {}",
                chain.join(" -> ")
            )));
        }
        self.visiting.push(id.to_string());
        let result = math::eval(expr, self);
        self.visiting.pop();
        let value = result?;
        self.memo.insert(id.to_string(), value.clone());
        Ok(value)
    }

    fn metrics(&mut self, filter: Option<&str>) -> Result<Vec<Series>, MathError> {
        Ok(self
            .stat_order
            .iter()
            .filter(|id| filter.is_none_or(|f| id.contains(f)))
            .filter_map(|id| self.stat_series.get(id).cloned())
            .collect())
    }
}

fn math_error(id: &str, err: MathError) -> ApiError {
    match err {
        MathError::Invalid(msg) => ApiError::validation(format!("Error in expression {id}: {msg}")),
        MathError::Unsupported(msg) => ApiError::unsupported(format!("{msg} (in expression {id})")),
    }
}

/// 64-bit FNV-1a: a stable fingerprint that ties a NextToken to the request it came from.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn invalid_token() -> ApiError {
    ApiError::new(
        400,
        code::INVALID_NEXT_TOKEN,
        "The specified NextToken is not valid.",
    )
}

fn decode_token(token: &str, expected_fingerprint: u64) -> Result<usize, ApiError> {
    if token.len() != 32 || !token.is_ascii() {
        return Err(invalid_token());
    }
    let offset = u64::from_str_radix(&token[..16], 16).map_err(|_| invalid_token())?;
    let fp = u64::from_str_radix(&token[16..], 16).map_err(|_| invalid_token())?;
    if fp != expected_fingerprint {
        return Err(invalid_token());
    }
    usize::try_from(offset).map_err(|_| invalid_token())
}

struct ResultSeries {
    id: String,
    label: String,
    /// In ScanBy order.
    points: Series,
    messages: Vec<(String, String)>,
}

/// The first string in the request's `MetricDataQueries` that contains `text` (for the poison
/// fault): its parameter path in CloudWatch's notation
/// (`MetricDataQueries.member.2.MetricStat.Metric.Dimensions.member.1.Value`) and the string.
/// Map keys are searched too, and are named by their parent's path.
pub(crate) fn find_mention(input: &Value, text: &str) -> Option<(String, String)> {
    fn walk(value: &Value, path: &str, text: &str) -> Option<(String, String)> {
        match value {
            Value::Text(s) if s.contains(text) => Some((path.to_string(), s.clone())),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, &format!("{path}.member.{}", i + 1), text)),
            Value::Map(entries) => entries.iter().find_map(|(k, v)| {
                let member = match k {
                    Value::Text(key) => format!("{path}.{key}"),
                    _ => path.to_string(),
                };
                walk(k, path, text).or_else(|| walk(v, &member, text))
            }),
            Value::Tag(_, inner) => walk(inner, path, text),
            _ => None,
        }
    }
    match input {
        Value::Map(entries) => entries.iter().find_map(|(key, value)| match key {
            Value::Text(k) if k == "MetricDataQueries" => walk(value, k, text),
            _ => None,
        }),
        _ => None,
    }
}

/// Runs GetMetricData against the store at wall-clock time `now_ms`.
pub(crate) fn get_metric_data(
    input: &Value,
    store: &Store,
    now_ms: i64,
) -> Result<Outcome, ApiError> {
    let request = parse(input)?;
    let fp = fingerprint(&format!(
        "{:?}|{}|{}|{:?}|{}",
        request.queries, request.start_ms, request.end_ms, request.scan_by, request.max_datapoints
    ));
    let offset = match &request.next_token {
        Some(token) => decode_token(token, fp)?,
        None => 0,
    };

    let mut expressions = HashMap::new();
    for q in &request.queries {
        if let Body::Expression(src) = &q.body {
            let expr = math::parse(src).map_err(|e| math_error(&q.id, e))?;
            expressions.insert(q.id.as_str(), expr);
        }
    }

    let mut stat_series = HashMap::new();
    let mut stat_messages = HashMap::new();
    let mut stat_order = Vec::new();
    for q in &request.queries {
        if let Body::Stat(ms) = &q.body {
            let (series, messages) =
                metric_stat_series(store, ms, request.start_ms, request.end_ms, now_ms);
            stat_series.insert(q.id.as_str(), series);
            stat_messages.insert(q.id.as_str(), messages);
            stat_order.push(q.id.as_str());
        }
    }

    let mut evaluator = Evaluator {
        stat_series: &stat_series,
        stat_order: &stat_order,
        expressions: &expressions,
        memo: HashMap::new(),
        visiting: Vec::new(),
    };
    let mut expression_results = HashMap::new();
    for q in &request.queries {
        if matches!(q.body, Body::Expression(_)) {
            let value = evaluator.value(&q.id).map_err(|e| math_error(&q.id, e))?;
            expression_results.insert(q.id.as_str(), value);
        }
    }

    let labels = default_labels(&request.queries);
    let mut results = Vec::new();
    for q in request.queries.iter().filter(|q| q.return_data) {
        let (mut points, messages) = match &q.body {
            Body::Stat(_) => (
                stat_series.get(q.id.as_str()).cloned().unwrap_or_default(),
                stat_messages.remove(q.id.as_str()).unwrap_or_default(),
            ),
            Body::Expression(_) => match expression_results.remove(q.id.as_str()) {
                Some(Val::Series(series)) => (
                    // Division by zero and the like leave no datapoint rather than NaN or Inf.
                    series.into_iter().filter(|(_, v)| v.is_finite()).collect(),
                    Vec::new(),
                ),
                Some(Val::Scalar(_)) => {
                    return Err(ApiError::unsupported(format!(
                        "expressions whose result is a single number (expression {})",
                        q.id
                    )));
                }
                Some(Val::Array(_)) | None => {
                    return Err(ApiError::unsupported(format!(
                        "expressions that return several time series (expression {})",
                        q.id
                    )));
                }
            },
        };
        if request.scan_by == ScanBy::Descending {
            points.reverse();
        }
        let label = q
            .label
            .clone()
            .or_else(|| labels.get(q.id.as_str()).cloned())
            .unwrap_or_else(|| q.id.clone());
        results.push(ResultSeries {
            id: q.id.clone(),
            label,
            points,
            messages,
        });
    }

    // CloudWatch returns no NextToken when the request contains math: everything comes at once.
    let total: usize = results.iter().map(|r| r.points.len()).sum();
    let paginate = expressions.is_empty();
    if offset > total {
        return Err(invalid_token());
    }
    let page_end = if paginate {
        let max = usize::try_from(request.max_datapoints).unwrap_or(usize::MAX);
        total.min(offset.saturating_add(max))
    } else {
        total
    };
    let page_start = if paginate { offset } else { 0 };

    let mut position = 0;
    let mut returned = 0u64;
    let mut encoded = Vec::with_capacity(results.len());
    for result in results {
        let len = result.points.len();
        let from = page_start.clamp(position, position + len) - position;
        let to = page_end.clamp(position, position + len) - position;
        let status = if position + len <= page_end {
            "Complete"
        } else {
            "PartialData"
        };
        position += len;
        let page = &result.points[from..to];
        returned += page.len() as u64;
        let mut entries = vec![
            ("Id", text(result.id)),
            ("Label", text(result.label)),
            (
                "Timestamps",
                Value::Array(page.iter().map(|(t, _)| wire::timestamp(*t)).collect()),
            ),
            (
                "Values",
                Value::Array(page.iter().map(|(_, v)| Value::Float(*v)).collect()),
            ),
            ("StatusCode", text(status)),
        ];
        if !result.messages.is_empty() {
            entries.push((
                "Messages",
                Value::Array(
                    result
                        .messages
                        .into_iter()
                        .map(|(c, v)| map(vec![("Code", text(c)), ("Value", text(v))]))
                        .collect(),
                ),
            ));
        }
        encoded.push(map(entries));
    }
    let mut body = vec![
        ("MetricDataResults", Value::Array(encoded)),
        ("Messages", Value::Array(Vec::new())),
    ];
    if page_end < total {
        body.push(("NextToken", text(format!("{page_end:016x}{fp:016x}"))));
    }
    let metrics_requested = request
        .queries
        .iter()
        .filter(|q| matches!(q.body, Body::Stat(_)))
        .count() as u64;
    Ok(Outcome {
        body: map(body),
        queries: request.queries.len() as u64,
        metrics_requested,
        datapoints: returned,
    })
}

#[cfg(test)]
mod tests;
