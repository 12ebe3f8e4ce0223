//! The spec types, as written in the definitions file and in an `ExternalMetric`'s `spec`.
//!
//! One set of types serves both: their serde shape is the file's and the object's, and their
//! `JsonSchema` (patterns, limits and CEL rules) becomes the CRD's OpenAPI schema, so
//! `kubectl apply` rejects what [`super::Definition::new`] would reject, for the rules a schema
//! can express. The fields are the archived awslabs k8s-cloudwatch-adapter's `ExternalMetric`
//! spec (so its manifests apply unchanged) plus this adapter's extensions.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::limits::{
    ACCOUNT_ID_PATTERN, DURATION_PATTERN, PERIOD_RULE, PERIOD_RULE_MESSAGE, QUERY_ID_PATTERN,
    REGION_PATTERN, ROLE_ARN_PATTERN, STAT_PATTERN, UNITS,
};

/// The definitions file: a top-level `metrics:` list.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefinitionsFile {
    /// One entry per metric name served to HPAs (`metrics:` with nothing after it is none).
    #[serde(default, deserialize_with = "strict::list_or_null")]
    pub metrics: Vec<MetricSpec>,
}

/// One metric: its name for the HPA and where its value is read: the CloudWatch `queries` that
/// produce it, or the SQS queue (`sqs`) whose depth it is.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = |schema: &mut Schema| crd_fields(schema, &[]))]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.queries) != has(self.sqs)",
        "message": "set exactly one of queries (CloudWatch) or sqs (an SQS queue's depth)",
    },
    {
        "rule": "!has(self.sqs) || (!has(self.window) && !has(self.endOffset) && !has(self.noDataValue))",
        "message": "window, endOffset and noDataValue apply to CloudWatch queries only: an SQS queue's depth is read as it is now, and an empty queue is a real 0",
    },
]))]
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
    /// How often the adapter refreshes this metric's series. CloudWatch: default and minimum the
    /// period, because CloudWatch cannot have newer data sooner. SQS: default 15s, at least 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<HumanDuration>,
    /// How long the last good value may be served while refreshes fail (default: the adapter's
    /// `--max-value-age`, and never less than three refresh intervals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// The value to serve when CloudWatch has no datapoints in the window (an idle SQS queue
    /// publishes nothing). Absent means "answer with an error".
    #[serde(
        default,
        deserialize_with = "strict::number",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = -9.2e15, max = 9.2e15))]
    pub no_data_value: Option<f64>,
    /// The `GetMetricData` queries; exactly one must return data. Set this or `sqs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 500))]
    pub queries: Vec<QuerySpec>,
    /// An SQS queue whose depth is the value, read with `GetQueueAttributes`. Set this or
    /// `queries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs: Option<SqsSpec>,
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
    /// Query id, `^[a-z][a-zA-Z0-9_]*$`, unique within the metric, at most 250 characters
    /// (CloudWatch's 255, less the prefix batching adds).
    #[schemars(regex(pattern = QUERY_ID_PATTERN), length(max = 250))]
    pub id: String,
    /// Human-readable label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub label: Option<String>,
    /// Whether this query's result is the metric's value (CloudWatch's default is true).
    #[serde(
        default,
        deserialize_with = "strict::boolean",
        skip_serializing_if = "Option::is_none"
    )]
    pub return_data: Option<bool>,
    /// A metric math expression over other query ids; `${label}` placeholders are filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub expression: Option<String>,
    /// A single metric and statistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_stat: Option<MetricStatSpec>,
    /// Period of an expression's result, in seconds (optional).
    #[serde(
        default,
        deserialize_with = "strict::integer",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": PERIOD_RULE,
        "message": PERIOD_RULE_MESSAGE,
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
    #[serde(
        default,
        deserialize_with = "strict::integer",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": PERIOD_RULE,
        "message": PERIOD_RULE_MESSAGE,
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

/// An SQS queue read natively: its approximate message counts, added up.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = |schema: &mut Schema| crd_fields(schema, &["queue"]))]
pub struct SqsSpec {
    /// The queue's name (resolved once with `GetQueueUrl`) or its full URL; may hold `${label}`
    /// placeholders.
    #[schemars(length(min = 1, max = 1024))]
    pub queue: String,
    /// The AWS account that owns a queue given by name, when it is not the adapter's (or the
    /// role's) own; 12 digits, may hold `${label}` placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub account_id: Option<String>,
    /// Which counts to add up: `visible` (ApproximateNumberOfMessages), `inFlight`
    /// (ApproximateNumberOfMessagesNotVisible), `delayed` (ApproximateNumberOfMessagesDelayed).
    /// Default: `[visible]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3), extend("x-kubernetes-list-type" = "set"))]
    pub count: Option<Vec<QueueCount>>,
}

/// One of a queue's approximate message counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum QueueCount {
    /// Messages available for retrieval (`ApproximateNumberOfMessages`).
    Visible,
    /// Messages received but not yet deleted (`ApproximateNumberOfMessagesNotVisible`).
    InFlight,
    /// Messages not yet available because of a delay (`ApproximateNumberOfMessagesDelayed`).
    Delayed,
}

impl QueueCount {
    /// How the field is written in a definition.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueCount::Visible => "visible",
            QueueCount::InFlight => "inFlight",
            QueueCount::Delayed => "delayed",
        }
    }

    /// The SQS queue attribute it reads.
    pub fn attribute(self) -> &'static str {
        match self {
            QueueCount::Visible => "ApproximateNumberOfMessages",
            QueueCount::InFlight => "ApproximateNumberOfMessagesNotVisible",
            QueueCount::Delayed => "ApproximateNumberOfMessagesDelayed",
        }
    }
}

/// Deserializers that take a number or a boolean only as written, never from a string: the CRD's
/// schema refuses `period: "60"` and `returnData: "no"`, and the definitions file must not accept
/// what an `ExternalMetric` may not say. They ask the format what the value is
/// (`deserialize_any`), so a quoted YAML scalar or a JSON string arrives as a string and is
/// refused with the field's path, line and column, where a typed read would have parsed it.
mod strict {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{self, Deserializer, Unexpected, Visitor};

    use super::{Deserialize, MetricSpec};

    /// `Option<T>` from a value that is a `T` as written, or null.
    struct Strict<T>(PhantomData<T>);

    impl<'de> Visitor<'de> for Strict<i64> {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer (not a quoted string)")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(Some(value))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            i64::try_from(value)
                .map(Some)
                .map_err(|_| E::invalid_value(Unexpected::Unsigned(value), &self))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
            // A whole number written with a fraction (`60.0`) is still that number.
            if value.fract() == 0.0 && value.abs() < 9.0e15 {
                Ok(Some(value as i64))
            } else {
                Err(E::invalid_type(Unexpected::Float(value), &self))
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    impl<'de> Visitor<'de> for Strict<f64> {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number (not a quoted string)")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
            Ok(Some(value as f64))
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(Some(value as f64))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
            Ok(Some(value))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    impl<'de> Visitor<'de> for Strict<bool> {
        type Value = Option<bool>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false (not a quoted string)")
        }

        fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
            Ok(Some(value))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    /// An integer as written (`60`, not `"60"`), or null.
    pub(super) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(Strict::<i64>(PhantomData))
    }

    /// A number as written (`0`, `1.5`, not `"0"`), or null.
    pub(super) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(Strict::<f64>(PhantomData))
    }

    /// `true` or `false` as written (not `"true"`, nor YAML 1.1's `no`), or null.
    pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_any(Strict::<bool>(PhantomData))
    }

    /// The metrics list; null (`metrics:` with nothing after it) is no metrics.
    pub(super) fn list_or_null<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<MetricSpec>, D::Error> {
        Ok(Option::<Vec<MetricSpec>>::deserialize(d)?.unwrap_or_default())
    }
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
            "maxLength": 64,
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
        // Beyond any accepted range, say it the way it was most likely written (and still
        // parseable): "7000000000000000000s", not "221816614698years 2months 13days ...".
        if self.0 >= LONG_DURATION {
            return write!(f, "{}s", self.0.as_secs());
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Durations from here on (a century) are shown in seconds: no accepted duration is anywhere
/// near, and "221816614698years 2months 13days ..." helps nobody find what they typed.
const LONG_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);
