//! PutMetricData: validation as CloudWatch does it, then storage.
//!
//! The whole request is validated before anything is stored, so a rejected call stores nothing.
//! Messages marked "AWS" in the tests are the ones AWS was recorded returning; the others follow
//! the same wording pattern.

use std::time::SystemTime;

use ciborium::Value;

use crate::error::{ApiError, code};
use crate::store::{Aggregate, MetricKey, StorageResolution, Store};
use crate::units;
use crate::wire::{self, Obj};

const MAX_DATUMS: usize = 1000;
const MAX_DIMENSIONS: usize = 30;
const MAX_VALUES: usize = 150;
const MAX_NAME_LEN: usize = 255;
/// CloudWatch accepts timestamps up to two weeks old and up to two hours ahead.
const MAX_AGE_MS: i64 = 14 * 24 * 3_600_000;
const MAX_AHEAD_MS: i64 = 2 * 3_600_000;

/// One validated datum, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreparedDatum {
    pub key: MetricKey,
    pub timestamp_ms: i64,
    pub resolution: StorageResolution,
    pub unit: Option<String>,
    pub aggregate: Aggregate,
}

fn missing(parameter: &str) -> ApiError {
    ApiError::new(
        400,
        code::MISSING_PARAMETER,
        format!("The parameter {parameter} is required."),
    )
}

fn invalid_value(value: impl std::fmt::Display, parameter: &str) -> ApiError {
    ApiError::new(
        400,
        code::INVALID_PARAMETER_VALUE,
        format!("The value {value} for parameter {parameter} is invalid."),
    )
}

fn exclusive(a: &str, b: &str) -> ApiError {
    ApiError::new(
        400,
        code::INVALID_PARAMETER_COMBINATION,
        format!("The parameters {a} and {b} are mutually exclusive and you have specified both."),
    )
}

/// CloudWatch rejects NaN, infinities and magnitudes beyond 2^360.
fn check_number(value: f64, parameter: &str) -> Result<f64, ApiError> {
    let limit = 2f64.powi(360);
    if value.is_finite() && value.abs() <= limit {
        Ok(value)
    } else {
        Err(invalid_value(value, parameter))
    }
}

/// Validates a PutMetricData input and returns the datums to store.
pub(crate) fn prepare(input: &Value, now_ms: i64) -> Result<Vec<PreparedDatum>, ApiError> {
    let root = Obj::root(input)?;
    let namespace = root.str("Namespace")?.ok_or_else(|| missing("Namespace"))?;
    if namespace.is_empty() || namespace.len() > MAX_NAME_LEN || namespace.starts_with(':') {
        return Err(invalid_value(namespace, "Namespace"));
    }
    // Namespaces beginning with "AWS/" belong to AWS services; seed those through the admin API.
    if namespace.starts_with("AWS/") {
        return Err(invalid_value(namespace, "Namespace"));
    }

    // (parameter prefix, datum) for MetricData and for each EntityMetricData's MetricData.
    let mut datums = Vec::new();
    if let Some(list) = root.list("MetricData")? {
        for (i, datum) in list.objs()?.into_iter().enumerate() {
            datums.push((format!("MetricData.member.{}", i + 1), datum));
        }
    }
    if let Some(list) = root.list("EntityMetricData")? {
        for (i, entity) in list.objs()?.into_iter().enumerate() {
            if let Some(inner) = entity.list("MetricData")? {
                for (j, datum) in inner.objs()?.into_iter().enumerate() {
                    datums.push((
                        format!(
                            "EntityMetricData.member.{}.MetricData.member.{}",
                            i + 1,
                            j + 1
                        ),
                        datum,
                    ));
                }
            }
        }
    }
    if datums.is_empty() {
        return Err(missing("MetricData"));
    }
    if datums.len() > MAX_DATUMS {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at 'metricData' failed to satisfy constraint: \
             Member must have length less than or equal to {MAX_DATUMS}"
        )));
    }
    datums
        .iter()
        .map(|(prefix, datum)| prepare_datum(namespace, prefix, datum, now_ms))
        .collect()
}

fn prepare_datum(
    namespace: &str,
    prefix: &str,
    datum: &Obj<'_>,
    now_ms: i64,
) -> Result<PreparedDatum, ApiError> {
    let name_param = format!("{prefix}.MetricName");
    let name = datum
        .str("MetricName")?
        .ok_or_else(|| missing(&name_param))?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid_value(name, &name_param));
    }

    let mut dimensions = Vec::new();
    if let Some(list) = datum.list("Dimensions")? {
        if list.len() > MAX_DIMENSIONS {
            return Err(ApiError::new(
                400,
                code::INVALID_PARAMETER_VALUE,
                format!(
                    "The collection {prefix}.Dimensions must not have more than {MAX_DIMENSIONS} members."
                ),
            ));
        }
        for (j, dim) in list.objs()?.into_iter().enumerate() {
            let dim_prefix = format!("{prefix}.Dimensions.member.{}", j + 1);
            let dname = dim
                .str("Name")?
                .ok_or_else(|| missing(&format!("{dim_prefix}.Name")))?;
            let dvalue = dim
                .str("Value")?
                .ok_or_else(|| missing(&format!("{dim_prefix}.Value")))?;
            if dname.is_empty() || dname.len() > MAX_NAME_LEN {
                return Err(invalid_value(dname, &format!("{dim_prefix}.Name")));
            }
            if dvalue.is_empty() || dvalue.len() > 1024 {
                return Err(invalid_value(dvalue, &format!("{dim_prefix}.Value")));
            }
            if dimensions
                .iter()
                .any(|(n, _): &(String, String)| n == dname)
            {
                return Err(ApiError::new(
                    400,
                    code::INVALID_PARAMETER_VALUE,
                    format!(
                        "The dimension name {dname} appears more than once in {prefix}.Dimensions."
                    ),
                ));
            }
            dimensions.push((dname.to_string(), dvalue.to_string()));
        }
    }

    let timestamp_ms = datum.timestamp_ms("Timestamp")?.unwrap_or(now_ms);
    if timestamp_ms < now_ms - MAX_AGE_MS || timestamp_ms > now_ms + MAX_AHEAD_MS {
        return Err(ApiError::new(
            400,
            code::INVALID_PARAMETER_VALUE,
            format!(
                "The parameter {prefix}.Timestamp must specify a time no more than two weeks in the \
                 past and no more than two hours in the future."
            ),
        ));
    }

    let value = datum.f64("Value")?;
    let values = datum.list("Values")?.map(|l| l.f64s()).transpose()?;
    let counts = datum.list("Counts")?.map(|l| l.f64s()).transpose()?;
    let statistic_values = datum.obj("StatisticValues")?;
    let has_values = values.as_ref().is_some_and(|v| !v.is_empty());

    if value.is_some() && has_values {
        return Err(exclusive(
            &format!("{prefix}.Value"),
            &format!("{prefix}.Values"),
        ));
    }
    if value.is_some() && statistic_values.is_some() {
        return Err(exclusive(
            &format!("{prefix}.Value"),
            &format!("{prefix}.StatisticValues"),
        ));
    }

    let aggregate = if let Some(v) = value {
        Aggregate::single(check_number(v, &format!("{prefix}.Value"))?)
    } else if has_values {
        // AWS accepts Values together with StatisticValues; the raw Values are the richer record.
        let values = values.unwrap_or_default();
        if values.len() > MAX_VALUES {
            return Err(ApiError::new(
                400,
                code::INVALID_PARAMETER_VALUE,
                format!(
                    "The collection {prefix}.Values must not have more than {MAX_VALUES} members."
                ),
            ));
        }
        let counts = match counts {
            Some(c) if !c.is_empty() => {
                if c.len() != values.len() {
                    return Err(ApiError::new(
                        400,
                        code::INVALID_PARAMETER_VALUE,
                        format!(
                            "The parameters {prefix}.Values and {prefix}.Counts must be of the same size."
                        ),
                    ));
                }
                c
            }
            _ => vec![1.0; values.len()],
        };
        let mut pairs = Vec::with_capacity(values.len());
        for (k, (v, c)) in values.into_iter().zip(counts).enumerate() {
            let v = check_number(v, &format!("{prefix}.Values.member.{}", k + 1))?;
            let c = check_number(c, &format!("{prefix}.Counts.member.{}", k + 1))?;
            if c < 0.0 {
                return Err(invalid_value(
                    c,
                    &format!("{prefix}.Counts.member.{}", k + 1),
                ));
            }
            pairs.push((v, c));
        }
        Aggregate::from_values(pairs)
    } else if let Some(set) = statistic_values {
        let field = |name: &str| -> Result<f64, ApiError> {
            let parameter = format!("{prefix}.StatisticValues.{name}");
            let v = set.f64(name)?.ok_or_else(|| missing(&parameter))?;
            check_number(v, &parameter)
        };
        let (count, sum, min, max) = (
            field("SampleCount")?,
            field("Sum")?,
            field("Minimum")?,
            field("Maximum")?,
        );
        if count <= 0.0 {
            return Err(invalid_value(
                count,
                &format!("{prefix}.StatisticValues.SampleCount"),
            ));
        }
        if min > max {
            return Err(ApiError::new(
                400,
                code::INVALID_PARAMETER_VALUE,
                format!(
                    "The parameter {prefix}.StatisticValues.Maximum must be greater than \
                     {prefix}.StatisticValues.Minimum."
                ),
            ));
        }
        Aggregate::from_statistic_set(count, sum, min, max)
    } else {
        return Err(missing(&format!("{prefix}.Value")));
    };

    let unit = datum.str("Unit")?;
    if let Some(u) = unit
        && !units::is_valid(u)
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{u}' at '{}' failed to satisfy constraint: \
                 Member must satisfy enum value set: {}",
            prefix_to_member_path(prefix, "unit"),
            units::enum_list()
        )));
    }

    let resolution = match datum.int("StorageResolution")? {
        None | Some(60) => StorageResolution::Standard,
        Some(1) => StorageResolution::High,
        Some(other) => return Err(invalid_value(other, &format!("{prefix}.StorageResolution"))),
    };

    Ok(PreparedDatum {
        key: MetricKey::new(namespace, name, dimensions),
        timestamp_ms,
        resolution,
        unit: unit.map(str::to_string),
        aggregate,
    })
}

/// `MetricData.member.3` + `unit` -> `metricData.3.member.unit`, the way Coral validation names members.
fn prefix_to_member_path(prefix: &str, member: &str) -> String {
    let parts: Vec<&str> = prefix.split('.').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let mut name = parts[i].to_string();
        if let Some(first) = name.get(..1) {
            name = first.to_ascii_lowercase() + &name[1..];
        }
        out.push(name);
        if parts.get(i + 1) == Some(&"member") {
            if let Some(index) = parts.get(i + 2) {
                out.push((*index).to_string());
                out.push("member".to_string());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push(member.to_string());
    out.join(".")
}

/// Runs PutMetricData against the store; returns the response body and datapoints stored.
pub(crate) fn put_metric_data(
    input: &Value,
    store: &mut Store,
    now: SystemTime,
) -> Result<(Value, u64), ApiError> {
    let prepared = prepare(input, crate::epoch_ms(now))?;
    let stored = prepared.len() as u64;
    for datum in prepared {
        store.insert(
            datum.key,
            datum.timestamp_ms,
            datum.resolution,
            datum.unit.as_deref(),
            datum.aggregate,
            now,
        );
    }
    Ok((wire::map(vec![]), stored))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wire::{map, text};

    const NOW: i64 = 1_790_000_000_000;

    fn ts(ms: i64) -> Value {
        Value::Tag(1, Box::new(Value::Float(ms as f64 / 1000.0)))
    }

    fn datum(extra: Vec<(&str, Value)>) -> Value {
        let mut entries = vec![("MetricName", text("m"))];
        if !extra.iter().any(|(k, _)| *k == "Timestamp") {
            entries.push(("Timestamp", ts(NOW)));
        }
        entries.extend(extra);
        map(entries)
    }

    fn request(datums: Vec<Value>) -> Value {
        map(vec![
            ("Namespace", text("App")),
            ("MetricData", Value::Array(datums)),
        ])
    }

    fn err(input: Value) -> ApiError {
        prepare(&input, NOW).unwrap_err()
    }

    fn num(v: f64) -> Value {
        Value::Float(v)
    }

    #[test]
    fn validation_table() {
        let both_values = request(vec![datum(vec![
            ("Value", num(1.5)),
            ("Values", Value::Array(vec![num(1.0), num(10.0)])),
        ])]);
        let set = map(vec![
            ("SampleCount", num(10.0)),
            ("Sum", num(55.0)),
            ("Minimum", num(1.0)),
            ("Maximum", num(10.0)),
        ]);
        let value_and_set = request(vec![datum(vec![
            ("Value", num(1.5)),
            ("StatisticValues", set),
        ])]);
        let counts_mismatch = request(vec![datum(vec![
            ("Values", Value::Array(vec![num(1.0), num(10.0)])),
            ("Counts", Value::Array(vec![num(2.0), num(4.0), num(5.0)])),
        ])]);
        let cases: Vec<(Value, &str, &str)> = vec![
            // AWS-recorded codes and messages.
            (
                both_values,
                "InvalidParameterCombination",
                "The parameters MetricData.member.1.Value and MetricData.member.1.Values are mutually exclusive and you have specified both.",
            ),
            (
                value_and_set,
                "InvalidParameterCombination",
                "The parameters MetricData.member.1.Value and MetricData.member.1.StatisticValues are mutually exclusive and you have specified both.",
            ),
            (
                counts_mismatch,
                "InvalidParameterValue",
                "The parameters MetricData.member.1.Values and MetricData.member.1.Counts must be of the same size.",
            ),
            // Same wording pattern.
            (
                map(vec![(
                    "MetricData",
                    Value::Array(vec![datum(vec![("Value", num(1.0))])]),
                )]),
                "MissingParameter",
                "The parameter Namespace is required.",
            ),
            (
                map(vec![("Namespace", text("App"))]),
                "MissingParameter",
                "The parameter MetricData is required.",
            ),
            (
                map(vec![
                    ("Namespace", text("AWS/SQS")),
                    (
                        "MetricData",
                        Value::Array(vec![datum(vec![("Value", num(1.0))])]),
                    ),
                ]),
                "InvalidParameterValue",
                "The value AWS/SQS for parameter Namespace is invalid.",
            ),
            (
                request(vec![map(vec![("Value", num(1.0))])]),
                "MissingParameter",
                "The parameter MetricData.member.1.MetricName is required.",
            ),
            (
                request(vec![datum(vec![("Value", num(f64::NAN))])]),
                "InvalidParameterValue",
                "The value NaN for parameter MetricData.member.1.Value is invalid.",
            ),
            (
                request(vec![datum(vec![("Value", num(1e200))])]),
                "InvalidParameterValue",
                "for parameter MetricData.member.1.Value is invalid.",
            ),
            (
                request(vec![datum(vec![])]),
                "MissingParameter",
                "The parameter MetricData.member.1.Value is required.",
            ),
            (
                request(vec![datum(vec![
                    ("Value", num(1.0)),
                    ("Unit", text("Parsecs")),
                ])]),
                "ValidationError",
                "Value 'Parsecs' at 'metricData.1.member.unit' failed to satisfy constraint",
            ),
            (
                request(vec![datum(vec![
                    ("Value", num(1.0)),
                    ("StorageResolution", Value::Integer(5.into())),
                ])]),
                "InvalidParameterValue",
                "The value 5 for parameter MetricData.member.1.StorageResolution is invalid.",
            ),
            (
                request(vec![datum(vec![
                    ("Value", num(1.0)),
                    ("Timestamp", ts(NOW - 15 * 24 * 3_600_000)),
                ])]),
                "InvalidParameterValue",
                "MetricData.member.1.Timestamp must specify a time no more than two weeks in the past",
            ),
            (
                request(vec![datum(vec![
                    ("Value", num(1.0)),
                    ("Timestamp", ts(NOW + 3 * 3_600_000)),
                ])]),
                "InvalidParameterValue",
                "no more than two hours in the future",
            ),
            (
                request(vec![datum(vec![(
                    "StatisticValues",
                    map(vec![
                        ("SampleCount", num(2.0)),
                        ("Sum", num(3.0)),
                        ("Minimum", num(5.0)),
                        ("Maximum", num(1.0)),
                    ]),
                )])]),
                "InvalidParameterValue",
                "MetricData.member.1.StatisticValues.Maximum must be greater than MetricData.member.1.StatisticValues.Minimum.",
            ),
            (
                request(vec![datum(vec![(
                    "StatisticValues",
                    map(vec![("SampleCount", num(2.0))]),
                )])]),
                "MissingParameter",
                "The parameter MetricData.member.1.StatisticValues.Sum is required.",
            ),
            (
                request(vec![datum(vec![
                    ("Value", num(1.0)),
                    (
                        "Dimensions",
                        Value::Array(vec![map(vec![("Name", text("A"))])]),
                    ),
                ])]),
                "MissingParameter",
                "The parameter MetricData.member.1.Dimensions.member.1.Value is required.",
            ),
            (
                request(vec![datum(vec![("Value", text("1"))])]),
                "SerializationException",
                "MetricData[0].Value",
            ),
            (
                request(
                    (0..1001)
                        .map(|_| datum(vec![("Value", num(1.0))]))
                        .collect(),
                ),
                "ValidationError",
                "less than or equal to 1000",
            ),
        ];
        for (input, want_code, want_message) in cases {
            let e = err(input);
            assert_eq!(e.code, want_code, "{}", e.message);
            assert!(
                e.message.contains(want_message),
                "{} does not contain {want_message}",
                e.message
            );
        }
    }

    #[test]
    fn values_and_statistic_values_together_are_accepted() {
        let set = map(vec![
            ("SampleCount", num(10.0)),
            ("Sum", num(55.0)),
            ("Minimum", num(1.0)),
            ("Maximum", num(10.0)),
        ]);
        let input = request(vec![datum(vec![
            ("Values", Value::Array(vec![num(1.0), num(10.0)])),
            ("StatisticValues", set),
        ])]);
        let prepared = prepare(&input, NOW).unwrap();
        assert_eq!(prepared[0].aggregate.count, 2.0);
    }

    #[test]
    fn prepares_dimensions_units_and_resolution() {
        let input = request(vec![datum(vec![
            ("Value", Value::Integer(7.into())),
            ("Unit", text("Count")),
            ("StorageResolution", Value::Integer(1.into())),
            (
                "Dimensions",
                Value::Array(vec![
                    map(vec![("Name", text("Z")), ("Value", text("1"))]),
                    map(vec![("Name", text("A")), ("Value", text("2"))]),
                ]),
            ),
        ])]);
        let d = &prepare(&input, NOW).unwrap()[0];
        assert_eq!(
            d.key.dimensions,
            vec![("A".into(), "2".into()), ("Z".into(), "1".into())]
        );
        assert_eq!(d.unit.as_deref(), Some("Count"));
        assert_eq!(d.resolution, StorageResolution::High);
        assert_eq!(d.aggregate.sum, 7.0);
        assert_eq!(d.timestamp_ms, NOW);
    }

    #[test]
    fn a_rejected_request_stores_nothing() {
        let mut store = Store::default();
        let input = request(vec![
            datum(vec![("Value", num(1.0))]),
            datum(vec![("Value", num(f64::INFINITY))]),
        ]);
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64);
        assert!(put_metric_data(&input, &mut store, now).is_err());
        assert_eq!(store.sample_count(), 0);
        let ok = request(vec![
            datum(vec![("Value", num(1.0))]),
            datum(vec![("Value", num(2.0))]),
        ]);
        assert_eq!(put_metric_data(&ok, &mut store, now).unwrap().1, 2);
        assert_eq!(store.sample_count(), 2);
    }

    #[test]
    fn member_paths_follow_coral_naming() {
        assert_eq!(
            prefix_to_member_path("MetricData.member.3", "unit"),
            "metricData.3.member.unit"
        );
        assert_eq!(
            prefix_to_member_path("EntityMetricData.member.1.MetricData.member.2", "unit"),
            "entityMetricData.1.member.metricData.2.member.unit"
        );
    }
}
