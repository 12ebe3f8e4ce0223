//! Metric definitions: what a metric name served to the HPA means in CloudWatch terms.
//!
//! The spec is the archived awslabs k8s-cloudwatch-adapter's `ExternalMetric` spec (so its users can
//! paste their definitions in unchanged), extended with `${label}` placeholders, a look-back window,
//! an end-time offset and a no-data policy. The same types back the definitions file and the
//! `ExternalMetric` custom resource ([`crate::crd`]): their `JsonSchema` (with the patterns, limits
//! and CEL rules below) becomes the CRD's OpenAPI schema, so `kubectl apply` rejects what
//! [`Definition::new`] would reject for the rules a schema can express.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default look-back window when a definition does not set one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// CloudWatch's limit of queries in one `GetMetricData` call.
pub const MAX_QUERIES: usize = 500;
/// The HPA reads values as int64 milli-units, so anything at or above this cannot be represented.
pub const MAX_HPA_VALUE: f64 = 9.2e15;
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
/// An AWS region name.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-[a-z]+)+-\d+$";
/// An IAM role ARN.
pub const ROLE_ARN_PATTERN: &str = r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$";
/// A 12-digit AWS account id.
pub const ACCOUNT_ID_PATTERN: &str = r"^\d{12}$";
/// What `humantime` accepts, loosely: numbers with unit words (`90s`, `5m`, `1h 30m`). The
/// server parses it exactly; the schema only catches obvious mistakes at apply time.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*[a-zA-Z]+\s*)+$";
/// The CEL rule for a period: 1, 5, 10, 30 or a positive multiple of 60 (what [`check_period`]
/// checks), enforced by the apiserver at apply time.
const PERIOD_RULE: &str = "self in [1, 5, 10, 30] || (self > 0 && self % 60 == 0)";

static QUERY_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(QUERY_ID_PATTERN).expect("static regex"));
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\{([^}]*)\}").expect("static regex"));
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    // A Kubernetes label key: optional DNS prefix, then a name of at most 63 characters.
    Regex::new(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
        .expect("static regex")
});
static STAT: LazyLock<Regex> = LazyLock::new(|| Regex::new(STAT_PATTERN).expect("static regex"));
static REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(REGION_PATTERN).expect("static regex"));
static ROLE_ARN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(ROLE_ARN_PATTERN).expect("static regex"));
static ACCOUNT_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(ACCOUNT_ID_PATTERN).expect("static regex"));

/// The units CloudWatch accepts in `MetricStat.Unit`.
const UNITS: &[&str] = &[
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

/// The definitions file: a top-level `metrics:` list.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefinitionsFile {
    /// One entry per metric name served to HPAs.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
}

/// One metric: its name for the HPA and the CloudWatch queries that produce its value.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = |schema: &mut Schema| crd_fields(schema, &["queries"]))]
pub struct MetricSpec {
    /// The metric name HPAs ask for (`external.metric.name`). Required in the definitions file.
    /// In an ExternalMetric object the name is metadata.name; spec.name is accepted for
    /// compatibility with the archived awslabs adapter and ignored.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub name: String,
    /// AWS region to query; the adapter's region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = REGION_PATTERN))]
    pub region: Option<String>,
    /// IAM role to assume for this metric's queries (cross-account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ROLE_ARN_PATTERN))]
    pub role_arn: Option<String>,
    /// External id passed to STS when assuming `roleArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,
    /// How far back to look for the newest datapoint (`5m` when absent, at least 3 periods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<HumanDuration>,
    /// How far before now the window ends, to skip CloudWatch's still-filling newest bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_offset: Option<HumanDuration>,
    /// How often the adapter refreshes this metric's series (default and minimum: the period,
    /// because CloudWatch cannot have newer data sooner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<HumanDuration>,
    /// How long the last good value may be served while refreshes fail (default: the adapter's
    /// `--max-value-age`, and never less than three refresh intervals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// The value to serve when CloudWatch has no datapoints in the window (an idle SQS queue
    /// publishes nothing). Absent means "answer with an error".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_data_value: Option<f64>,
    /// The `GetMetricData` queries; exactly one must return data.
    #[serde(default)]
    #[schemars(length(min = 1, max = 500))]
    pub queries: Vec<QuerySpec>,
    /// Accepted for compatibility with awslabs k8s-cloudwatch-adapter configs; not used.
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "any_value")]
    pub resource: Option<serde_json::Value>,
}

/// One `MetricDataQuery`, in the awslabs adapter's field names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.expression) != has(self.metricStat)",
    "message": "set exactly one of expression or metricStat",
}]))]
pub struct QuerySpec {
    /// Query id, `^[a-z][a-zA-Z0-9_]*$`, unique within the metric.
    #[schemars(regex(pattern = QUERY_ID_PATTERN), length(max = 255))]
    pub id: String,
    /// Human-readable label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub label: Option<String>,
    /// Whether this query's result is the metric's value (CloudWatch's default is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_data: Option<bool>,
    /// A metric math expression over other query ids; `${label}` placeholders are filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub expression: Option<String>,
    /// A single metric and statistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_stat: Option<MetricStatSpec>,
    /// Period of an expression's result, in seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": PERIOD_RULE,
        "message": "period must be 1, 5, 10, 30 or a multiple of 60 seconds",
    }]))]
    pub period: Option<i64>,
    /// Account to read from with CloudWatch cross-account observability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ACCOUNT_ID_PATTERN))]
    pub account_id: Option<String>,
    /// Accepted for compatibility with awslabs k8s-cloudwatch-adapter manifests; not used.
    #[serde(default, skip_serializing)]
    #[schemars(schema_with = "any_value")]
    pub resources: Option<serde_json::Value>,
}

/// `MetricStat`: a metric, a period and a statistic.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = |schema: &mut Schema| crd_fields(schema, &["period", "stat"]))]
pub struct MetricStatSpec {
    /// The metric identity.
    pub metric: MetricRef,
    /// Seconds: 1, 5, 10, 30 or a multiple of 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": PERIOD_RULE,
        "message": "period must be 1, 5, 10, 30 or a multiple of 60 seconds",
    }]))]
    pub period: Option<i64>,
    /// `Sum`, `Average`, `Minimum`, `Maximum`, `SampleCount`, `pNN`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = STAT_PATTERN))]
    pub stat: Option<String>,
    /// Only datapoints published with this unit are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "unit_schema")]
    pub unit: Option<String>,
}

/// A metric identity: namespace, name, and the full set of dimensions.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = |schema: &mut Schema| crd_fields(schema, &[]))]
pub struct MetricRef {
    /// e.g. `AWS/SQS`.
    #[schemars(length(min = 1, max = 255))]
    pub namespace: String,
    /// e.g. `ApproximateNumberOfMessagesVisible`.
    #[schemars(length(min = 1, max = 255))]
    pub metric_name: String,
    /// Dimension values may hold `${label}` placeholders.
    #[serde(default)]
    #[schemars(length(max = 30))]
    pub dimensions: Vec<DimensionSpec>,
}

/// A dimension name and value.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DimensionSpec {
    /// Dimension name.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// Dimension value; may hold `${label}` placeholders.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// Shape a struct's schema for the CRD: `required` lists the fields the adapter requires although
/// serde defaults them (so the error comes at apply time), and no `default`s are emitted
/// (kube-apiserver would write them into every object, and refuses a CRD whose default does not
/// itself validate, as `queries: []` would not).
fn crd_fields(schema: &mut Schema, required: &[&str]) {
    if let Some(properties) = schema
        .get_mut("properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        for property in properties.values_mut() {
            if let Some(property) = property.as_object_mut() {
                property.remove("default");
            }
        }
    }
    if !required.is_empty() {
        let list = schema
            .ensure_object()
            .entry("required")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let Some(list) = list.as_array_mut() {
            for name in required {
                if !list.iter().any(|existing| existing == name) {
                    list.push((*name).into());
                }
            }
        }
    }
}

/// Any JSON value, kept as written (fields accepted only for compatibility).
fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `MetricStat.Unit`: one of CloudWatch's units.
fn unit_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "enum": UNITS,
        "description": "Only datapoints published with this unit are used.",
    })
}

/// A duration written the human way (`90s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "HumanDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|err| serde::de::Error::custom(format!("invalid duration {text:?}: {err}")))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Why a definitions file could not be used: every problem, each naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read definitions file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not match the schema.
    #[error("definitions file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// the YAML parser's message, which names the line and field.
        message: String,
    },
    /// The YAML parsed but some definitions are unusable.
    #[error("definitions file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

/// Read, parse and validate a definitions file, reporting every problem at once.
pub fn load_file(path: &Path) -> Result<DefinitionSet, LoadError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: display.clone(),
        source,
    })?;
    parse(&text).map_err(|err| match err {
        ParseError::Yaml(message) => LoadError::Parse {
            path: display.clone(),
            message,
        },
        ParseError::Invalid(problems) => LoadError::Invalid {
            path: display.clone(),
            problems,
        },
    })
}

/// Why definitions text could not be used.
#[derive(Debug)]
pub enum ParseError {
    /// Not valid YAML for the schema.
    Yaml(String),
    /// Valid YAML, invalid definitions.
    Invalid(Vec<String>),
}

/// Parse and validate definitions text.
pub fn parse(text: &str) -> Result<DefinitionSet, ParseError> {
    let file: DefinitionsFile =
        serde_saphyr::from_str(text).map_err(|err| ParseError::Yaml(err.to_string()))?;
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut metrics = BTreeMap::new();
    for (index, spec) in file.metrics.into_iter().enumerate() {
        let place = format!("metrics[{index}] ({})", spec.name);
        if !seen.insert(spec.name.clone()) {
            problems.push(format!("{place}: name is defined more than once"));
        }
        match Definition::new(spec) {
            Ok(definition) => {
                metrics.insert(definition.spec.name.clone(), Arc::new(definition));
            }
            Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{place}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(DefinitionSet {
            metrics,
            namespaced: BTreeMap::new(),
        })
    } else {
        Err(ParseError::Invalid(problems))
    }
}

/// Validated definitions: the cluster-wide ones (the definitions file) by metric name, and the
/// namespaced ones (`ExternalMetric` objects) by namespace and name.
///
/// Precedence: a cluster-wide definition wins over a namespaced one of the same name. The
/// administrator's file decides what a name means everywhere; an `ExternalMetric` that would
/// shadow it is never served and reports the conflict in its status (see [`crate::controller`]).
#[derive(Debug, Clone, Default)]
pub struct DefinitionSet {
    metrics: BTreeMap<String, Arc<Definition>>,
    namespaced: BTreeMap<String, BTreeMap<String, Arc<Definition>>>,
}

impl DefinitionSet {
    /// Look a cluster-wide (definitions file) metric up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Definition>> {
        self.metrics.get(name)
    }

    /// The definition serving `name` to an HPA in `namespace`: a cluster-wide one if there is
    /// one, else the `ExternalMetric` of that name in that namespace.
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<&Arc<Definition>> {
        self.metrics.get(name).or_else(|| {
            self.namespaced
                .get(namespace)
                .and_then(|metrics| metrics.get(name))
        })
    }

    /// This set's cluster-wide definitions plus `namespaced` ones (each with its namespace set).
    /// A namespaced definition whose name is defined cluster-wide is left out (the caller
    /// reports it); of two for the same namespace and name the last wins.
    pub fn with_namespaced(&self, namespaced: impl IntoIterator<Item = Arc<Definition>>) -> Self {
        let mut by_namespace: BTreeMap<String, BTreeMap<String, Arc<Definition>>> = BTreeMap::new();
        for definition in namespaced {
            let Some(namespace) = definition.namespace.clone() else {
                continue;
            };
            if self.metrics.contains_key(&definition.spec.name) {
                continue;
            }
            by_namespace
                .entry(namespace)
                .or_default()
                .insert(definition.spec.name.clone(), definition);
        }
        Self {
            metrics: self.metrics.clone(),
            namespaced: by_namespace,
        }
    }

    /// Every definition: cluster-wide ones by name, then namespaced ones by namespace and name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.metrics
            .values()
            .chain(self.namespaced.values().flat_map(BTreeMap::values))
    }

    /// The cluster-wide definitions, sorted by name.
    pub fn cluster_wide(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.metrics.values()
    }

    /// Every metric name served somewhere, once, sorted (for discovery, which has no namespace).
    pub fn names(&self) -> BTreeSet<&str> {
        self.iter().map(|d| d.spec.name.as_str()).collect()
    }

    /// How many definitions there are, cluster-wide and namespaced.
    pub fn len(&self) -> usize {
        self.metrics.len() + self.namespaced.values().map(BTreeMap::len).sum::<usize>()
    }

    /// Whether no metric is defined.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated metric definition with the facts derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The spec as written.
    pub spec: MetricSpec,
    /// The label names its placeholders need, sorted.
    pub labels: BTreeSet<String>,
    /// The id of the one query whose result is the value.
    pub value_query: String,
    /// The period the value is aggregated over (seconds).
    pub period: i64,
    /// The effective look-back window.
    pub window: Duration,
    /// The effective end offset.
    pub end_offset: Duration,
    /// How often its series are refreshed.
    pub refresh_interval: Duration,
    /// The definition's own max age, if set.
    pub max_age: Option<Duration>,
    /// The namespace of a namespaced definition (an `ExternalMetric` object); `None` for the
    /// cluster-wide definitions file.
    pub namespace: Option<String>,
}

impl Definition {
    /// Validate a spec, returning every problem found.
    pub fn new(spec: MetricSpec) -> Result<Definition, Vec<String>> {
        let mut problems = Vec::new();
        let mut labels = BTreeSet::new();
        validate_metric_name(&spec.name, &mut problems);
        if let Some(region) = &spec.region
            && !REGION.is_match(region)
        {
            problems.push(format!(
                "region {region:?} is not an AWS region name such as us-east-1"
            ));
        }
        if let Some(role) = &spec.role_arn
            && !ROLE_ARN.is_match(role)
        {
            problems.push(format!(
                "roleArn {role:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
            ));
        }
        if spec.external_id.is_some() && spec.role_arn.is_none() {
            problems.push("externalId is set but roleArn is not".to_string());
        }
        if let Some(value) = spec.no_data_value
            && !(value.is_finite() && value.abs() < MAX_HPA_VALUE)
        {
            problems.push(format!(
                "noDataValue {value} is out of range (the HPA needs |value| < 9.2e15)"
            ));
        }

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
            {
                if let Some(expression) = &query.expression {
                    if expression.trim().is_empty() {
                        push("expression is empty".into());
                    }
                    collect_placeholders("expression", expression, &mut labels, &mut push);
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
                            &mut labels,
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
                        None => push(
                            "metricStat.stat is required (e.g. Average, Sum, Maximum, p99)".into(),
                        ),
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

        let refresh_interval = match spec.refresh_interval {
            Some(HumanDuration(interval)) => {
                if interval < period_duration {
                    problems.push(format!(
                        "refreshInterval {} is shorter than the period ({period}s): CloudWatch cannot have newer data that often",
                        HumanDuration(interval)
                    ));
                }
                interval
            }
            None => period_duration,
        };
        let max_age = spec.max_age.map(|d| d.0);
        if let Some(age) = max_age
            && age < refresh_interval
        {
            problems.push(format!(
                "maxAge {} is shorter than the refresh interval ({}): values would expire between refreshes",
                HumanDuration(age),
                HumanDuration(refresh_interval)
            ));
        }
        if problems.is_empty() {
            Ok(Definition {
                spec,
                labels,
                value_query,
                period,
                window,
                end_offset,
                refresh_interval,
                max_age,
                namespace: None,
            })
        } else {
            Err(problems)
        }
    }
}

fn validate_metric_name(name: &str, problems: &mut Vec<String>) {
    // The name is a path segment of /apis/external.metrics.k8s.io/v1beta1/namespaces/NS/NAME.
    if name.is_empty() {
        problems.push("name is required".to_string());
    } else if name.len() > 253
        || name == "."
        || name == ".."
        || name.chars().any(|c| {
            c == '/' || c == '%' || c == '?' || c == '#' || c.is_whitespace() || c.is_control()
        })
    {
        problems.push(format!(
            "name {name:?} cannot be used in a URL path: use at most 253 characters without '/', '%', '?', '#' or spaces"
        ));
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

fn no_placeholder(field: &str, value: &str, push: &mut impl FnMut(String)) {
    if value.contains("${") {
        push(format!(
            "{field} contains a ${{...}} placeholder, but placeholders are only filled in dimension values and expressions"
        ));
    }
}

fn collect_placeholders(
    field: &str,
    value: &str,
    labels: &mut BTreeSet<String>,
    push: &mut impl FnMut(String),
) {
    let mut covered = 0;
    for capture in PLACEHOLDER.captures_iter(value) {
        let whole = capture.get(0).expect("capture 0 always exists");
        let name = &capture[1];
        if !LABEL_NAME.is_match(name) {
            push(format!(
                "{field}: placeholder ${{{name}}} is not a valid Kubernetes label name"
            ));
        } else {
            labels.insert(name.to_string());
        }
        if value[covered..whole.start()].contains("${") {
            push(format!("{field}: unclosed ${{ placeholder"));
        }
        covered = whole.end();
    }
    if value[covered..].contains("${") {
        push(format!("{field}: unclosed ${{ placeholder"));
    }
}

/// Fill `${label}` placeholders from `labels`. Validation guarantees every placeholder is
/// well-formed; the caller guarantees every needed label is present.
pub fn render(template: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
    let mut missing = None;
    let rendered = PLACEHOLDER.replace_all(template, |capture: &regex::Captures<'_>| match labels
        .get(&capture[1])
    {
        Some(value) => value.clone(),
        None => {
            missing.get_or_insert_with(|| capture[1].to_string());
            String::new()
        }
    });
    match missing {
        Some(label) => Err(label),
        None => Ok(rendered.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SQS: &str = r#"
metrics:
  - name: sqs-visible
    window: 10m
    endOffset: 1m
    noDataValue: 0
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions:
              - name: QueueName
                value: "${QueueName}"
          period: 60
          stat: Average
          unit: Count
"#;

    #[test]
    fn parses_an_sqs_definition_with_placeholders() {
        let set = parse(SQS).unwrap();
        let definition = set.get("sqs-visible").unwrap();
        assert_eq!(definition.labels, BTreeSet::from(["QueueName".to_string()]));
        assert_eq!(definition.value_query, "visible");
        assert_eq!(definition.period, 60);
        assert_eq!(definition.window, Duration::from_secs(600));
        assert_eq!(definition.end_offset, Duration::from_secs(60));
        assert_eq!(definition.spec.no_data_value, Some(0.0));
    }

    #[test]
    fn accepts_the_awslabs_sample_unchanged() {
        // The archived adapter's samples/sqs spec, as a definitions-file entry.
        let text = r#"
metrics:
  - name: sqs-helloworld-length
    resource:
      resource: "deployment"
    queries:
      - id: sqs_helloworld_length
        metricStat:
          metric:
            namespace: "AWS/SQS"
            metricName: "ApproximateNumberOfMessagesVisible"
            dimensions:
              - name: QueueName
                value: "helloworld"
          period: 60
          stat: Average
          unit: Count
        returnData: true
"#;
        let set = parse(text).unwrap();
        let definition = set.get("sqs-helloworld-length").unwrap();
        assert!(definition.labels.is_empty());
        assert_eq!(definition.window, DEFAULT_WINDOW);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
metrics:
  - name: broken
    queries:
      - id: Bad-Id
        metricStat:
          metric: {namespace: AWS/SQS, metricName: "${oops}"}
          period: 7
      - id: e1
        expression: "SUM(METRICS())"
        metricStat:
          metric: {namespace: AWS/SQS, metricName: X}
          period: 60
          stat: Avg
      - id: e2
        expression: "SUM(METRICS()) / ${Replicas"
  - name: broken
    queries: []
"#;
        let Err(ParseError::Invalid(problems)) = parse(text) else {
            panic!("expected validation problems");
        };
        let all = problems.join("\n");
        for needle in [
            "id \"Bad-Id\" must start with a lowercase letter",
            "metricName contains a ${...} placeholder",
            "7 is not a period CloudWatch accepts",
            "metricStat.stat is required",
            "set either expression or metricStat, not both",
            "unclosed ${ placeholder",
            "\"Avg\" is not a CloudWatch statistic",
            "queries Bad-Id, e1, e2 all return data",
            "name is defined more than once",
            "at least one query is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn rejects_unknown_fields_naming_them() {
        let text = "metrics:\n  - name: x\n    widnow: 5m\n    queries: []\n";
        let Err(ParseError::Yaml(message)) = parse(text) else {
            panic!("expected a schema error");
        };
        assert!(message.contains("widnow"), "{message}");
    }

    #[test]
    fn periods_follow_cloudwatch() {
        for ok in [1, 5, 10, 30, 60, 120, 300, 3600] {
            assert!(check_period(ok).is_ok(), "{ok}");
        }
        for bad in [0, -60, 2, 15, 45, 90, 61] {
            assert!(check_period(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn window_defaults_to_three_periods_for_long_periods() {
        let text = "metrics:\n  - name: x\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 300\n          stat: Sum\n";
        let set = parse(text).unwrap();
        assert_eq!(set.get("x").unwrap().window, Duration::from_secs(900));
    }

    #[test]
    fn window_shorter_than_period_is_refused() {
        let text = "metrics:\n  - name: x\n    window: 30s\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 60\n          stat: Sum\n";
        let Err(ParseError::Invalid(problems)) = parse(text) else {
            panic!("expected a problem");
        };
        assert!(
            problems[0].contains("shorter than the period"),
            "{problems:?}"
        );
    }

    #[test]
    fn cluster_wide_definitions_win_and_namespaced_ones_stay_in_their_namespace() {
        let file = parse(SQS).unwrap();
        let namespaced = |namespace: &str, name: &str| {
            let mut spec = file.get("sqs-visible").unwrap().spec.clone();
            spec.name = name.to_string();
            let mut definition = Definition::new(spec).unwrap();
            definition.namespace = Some(namespace.to_string());
            Arc::new(definition)
        };
        let set = file.with_namespaced([
            namespaced("team-a", "orders"),
            namespaced("team-b", "orders"),
            namespaced("team-a", "sqs-visible"),
        ]);
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.lookup("team-a", "orders").unwrap().namespace.as_deref(),
            Some("team-a")
        );
        assert!(set.lookup("team-c", "orders").is_none());
        assert!(
            set.lookup("team-a", "sqs-visible")
                .unwrap()
                .namespace
                .is_none()
        );
        assert!(set.lookup("anywhere", "sqs-visible").is_some());
        assert_eq!(
            set.names().into_iter().collect::<Vec<_>>(),
            ["orders", "sqs-visible"]
        );
        assert_eq!(set.cluster_wide().count(), 1);
        assert!(
            set.get("orders").is_none(),
            "get() is the definitions file only"
        );
    }

    #[test]
    fn render_fills_and_reports_missing_labels() {
        let labels = BTreeMap::from([("QueueName".to_string(), "orders".to_string())]);
        assert_eq!(render("q-${QueueName}", &labels).unwrap(), "q-orders");
        assert_eq!(render("plain", &labels).unwrap(), "plain");
        assert_eq!(render("${Other}", &labels).unwrap_err(), "Other");
    }
}
