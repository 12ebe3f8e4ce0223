//! The generated CRD rejects at `kubectl apply` what CloudWatch (and the adapter) would reject
//! later. No kube-apiserver runs here, so the test evaluates the emitted OpenAPI constraints
//! (types, required, unknown fields, pattern, lengths, item counts, enums) with a small
//! evaluator below, and the emitted CEL rules with kube's client-side CEL validator, both against
//! the schema taken from the generated CRD itself. Each sample is also run through the adapter's
//! own validation, so the two cannot drift apart on the rules the schema covers.
#![allow(clippy::unwrap_used)]

use cloudwatch_metrics_adapter::crd::{self, ExternalMetric};
use cloudwatch_metrics_adapter::definition::InvalidDefinition;
use kube::core::CustomResourceExt;
use kube::core::cel::{ScopeContext, Validator, analyze_rule, compile_schema};
use regex::Regex;
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = ExternalMetric::crd();
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Every OpenAPI violation, each with its JSON path.
fn openapi_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            errors.push(format!("{path}: must not be null"));
        }
        return;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else {
                errors.push(format!("{path}: must be an object"));
                return;
            };
            let properties = schema["properties"].as_object();
            for required in schema["required"].as_array().into_iter().flatten() {
                if !object.contains_key(required.as_str().unwrap()) {
                    errors.push(format!(
                        "{path}.{}: Required value",
                        required.as_str().unwrap()
                    ));
                }
            }
            for (key, child) in object {
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => {
                        openapi_errors(child_schema, child, &format!("{path}.{key}"), errors)
                    }
                    // kubectl's default --validate=strict rejects unknown fields.
                    None if !preserve && !path.is_empty() => {
                        errors.push(format!("{path}.{key}: unknown field"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                errors.push(format!("{path}: must be an array"));
                return;
            };
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(format!("{path}: Too many: {} (max {max})", items.len()));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errors.push(format!("{path}: at least {min} item(s)"));
            }
            for (index, item) in items.iter().enumerate() {
                openapi_errors(&schema["items"], item, &format!("{path}[{index}]"), errors);
            }
        }
        Some("string") => {
            let Some(text) = value.as_str() else {
                errors.push(format!("{path}: must be a string"));
                return;
            };
            let length = text.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && length > max
            {
                errors.push(format!("{path}: longer than {max}"));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && length < min
            {
                errors.push(format!("{path}: shorter than {min}"));
            }
            if let Some(pattern) = schema["pattern"].as_str()
                && !Regex::new(pattern).unwrap().is_match(text)
            {
                errors.push(format!("{path}: should match '{pattern}'"));
            }
            if let Some(allowed) = schema["enum"].as_array()
                && !allowed.contains(value)
            {
                errors.push(format!("{path}: Unsupported value: {value}"));
            }
        }
        Some("integer") if !value.is_i64() => errors.push(format!("{path}: must be an integer")),
        Some("number") if !value.is_number() => errors.push(format!("{path}: must be a number")),
        Some("boolean") if !value.is_boolean() => errors.push(format!("{path}: must be a boolean")),
        Some(_) => {}
        None if preserve => {}
        None => errors.push(format!("{path}: schema has no type")),
    }
}

/// What kube-apiserver would say to `kubectl apply` of this object: every OpenAPI and CEL error.
fn apply_errors(object: &Value) -> Vec<String> {
    let schema = schema();
    let mut errors = Vec::new();
    openapi_errors(&schema, object, "", &mut errors);
    if let Err(failures) = Validator::new().validate(&schema, object, None) {
        errors.extend(
            failures
                .iter()
                .map(|f| format!("{}: {}", f.field_path, f.message)),
        );
    }
    errors
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "metrics.aws/v1alpha1",
        "kind": "ExternalMetric",
        "metadata": {"name": "sample", "namespace": "default"},
        "spec": spec,
    })
}

fn query(extra: Value) -> Value {
    let mut query = json!({
        "id": "visible",
        "metricStat": {
            "metric": {"namespace": "AWS/SQS", "metricName": "ApproximateNumberOfMessagesVisible",
                       "dimensions": [{"name": "QueueName", "value": "${QueueName}"}]},
            "period": 60,
            "stat": "Average",
        },
    });
    for (key, value) in extra.as_object().unwrap() {
        if value.is_null() {
            query.as_object_mut().unwrap().remove(key);
        } else {
            query[key] = value.clone();
        }
    }
    query
}

/// The sample query with one `metricStat` field replaced (`null`: removed).
fn stat(field: &str, value: Value) -> Value {
    let mut query = query(json!({}));
    let stat = query["metricStat"].as_object_mut().unwrap();
    if value.is_null() {
        stat.remove(field);
    } else {
        stat.insert(field.to_string(), value);
    }
    query
}

/// Apply-time verdict and the adapter's own verdict for one spec.
fn verdicts(spec: Value) -> (Vec<String>, Result<(), InvalidDefinition>) {
    let errors = apply_errors(&object(spec.clone()));
    // Every role allowed: this compares schema rules, not the role policy.
    let adapter = crd::to_definition("default", "sample", Some(&spec), &["*".to_string()])
        .definition
        .map(|_| ());
    (errors, adapter)
}

#[test]
fn the_archived_adapter_sample_and_the_extensions_are_accepted() {
    let text = include_str!("fixtures/awslabs-sqs-externalmetric.yaml");
    let mut sample: Value = serde_saphyr::from_str(text).unwrap();
    sample["metadata"]["namespace"] = json!("default");
    assert_eq!(apply_errors(&sample), Vec::<String>::new());

    let extended = json!({
        "window": "10m", "endOffset": "1m", "refreshInterval": "5m", "maxAge": "1h 30m",
        "noDataValue": 0, "region": "eu-west-1",
        "roleArn": "arn:aws:iam::123456789012:role/cloudwatch-reader", "externalId": "tenant-42",
        "resource": {"resource": "deployment"},
        "queries": [
            query(json!({"returnData": false, "accountId": "210987654321", "label": "Visible"})),
            {"id": "backlog", "expression": "visible * 2", "period": 300, "returnData": true},
        ],
    });
    let (errors, adapter) = verdicts(extended);
    assert_eq!(errors, Vec::<String>::new());
    adapter.unwrap();

    for sqs in [
        json!({"sqs": {"queue": "${QueueName}"}}),
        json!({"sqs": {"queue": "orders-${Env}", "accountId": "${Account}",
                       "count": ["visible", "inFlight", "delayed"]},
               "refreshInterval": "1s", "maxAge": "1m", "region": "eu-west-1"}),
        json!({"sqs": {"queue": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo"}}),
    ] {
        let (errors, adapter) = verdicts(sqs.clone());
        assert_eq!(errors, Vec::<String>::new(), "{sqs}");
        adapter.unwrap();
    }
}

#[test]
fn what_cloudwatch_would_reject_is_rejected_at_apply_time() {
    let many: Vec<Value> = (0..501)
        .map(|i| json!({"id": format!("q{i}"), "expression": "1", "returnData": i == 0}))
        .collect();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "hyphenated id",
            json!({"queries": [query(json!({"id": "queue-depth"}))]}),
            "should match '^[a-z][a-zA-Z0-9_]*$'",
        ),
        (
            "upper-case id",
            json!({"queries": [query(json!({"id": "Visible"}))]}),
            "should match '^[a-z][a-zA-Z0-9_]*$'",
        ),
        (
            "both expression and metricStat",
            json!({"queries": [query(json!({"expression": "SUM(METRICS())"}))]}),
            "set exactly one of expression or metricStat",
        ),
        (
            "neither expression nor metricStat",
            json!({"queries": [{"id": "empty"}]}),
            "set exactly one of expression or metricStat",
        ),
        (
            "period 45",
            json!({"queries": [stat("period", json!(45))]}),
            "period must be 1, 5, 10, 20, 30 or a multiple of 60",
        ),
        (
            "period 0",
            json!({"queries": [stat("period", json!(0))]}),
            "period must be 1, 5, 10, 20, 30 or a multiple of 60",
        ),
        (
            "period -60",
            json!({"queries": [stat("period", json!(-60))]}),
            "period must be 1, 5, 10, 20, 30 or a multiple of 60",
        ),
        (
            "expression period 90",
            json!({"queries": [{"id": "e", "expression": "1", "period": 90}]}),
            "period must be 1, 5, 10, 20, 30 or a multiple of 60",
        ),
        (
            "501 queries",
            json!({"queries": many}),
            "Too many: 501 (max 500)",
        ),
        (
            "unknown stat",
            json!({"queries": [stat("stat", json!("Avg"))]}),
            "metricStat.stat: should match",
        ),
        (
            "missing stat",
            json!({"queries": [stat("stat", Value::Null)]}),
            "metricStat.stat: Required value",
        ),
        (
            "unknown unit",
            json!({"queries": [stat("unit", json!("Bytez"))]}),
            "Unsupported value: \"Bytez\"",
        ),
        (
            "misspelt field",
            json!({"widnow": "5m", "queries": [query(json!({}))]}),
            "spec.widnow: unknown field",
        ),
        ("no queries", json!({"queries": []}), "at least 1 item(s)"),
        (
            "neither queries nor sqs",
            json!({"window": "5m"}),
            "set exactly one of queries (CloudWatch) or sqs",
        ),
        (
            "both queries and sqs",
            json!({"queries": [query(json!({}))], "sqs": {"queue": "orders"}}),
            "set exactly one of queries (CloudWatch) or sqs",
        ),
        (
            "sqs with a window",
            json!({"sqs": {"queue": "orders"}, "window": "5m"}),
            "apply to CloudWatch queries only",
        ),
        (
            "sqs with noDataValue",
            json!({"sqs": {"queue": "orders"}, "noDataValue": 0}),
            "apply to CloudWatch queries only",
        ),
        (
            "sqs without a queue",
            json!({"sqs": {"count": ["visible"]}}),
            "spec.sqs.queue: Required value",
        ),
        (
            "unknown sqs count",
            json!({"sqs": {"queue": "orders", "count": ["oldest"]}}),
            "Unsupported value: \"oldest\"",
        ),
        (
            "misspelt sqs field",
            json!({"sqs": {"queue": "orders", "acountId": "123456789012"}}),
            "spec.sqs.acountId: unknown field",
        ),
        (
            "bad duration",
            json!({"window": "five minutes", "queries": [query(json!({}))]}),
            "spec.window: should match",
        ),
        (
            "bad region",
            json!({"region": "US East", "queries": [query(json!({}))]}),
            "spec.region: should match",
        ),
        (
            "bad account",
            json!({"queries": [query(json!({"accountId": "1234"}))]}),
            "accountId: should match",
        ),
        (
            "bad role",
            json!({"roleArn": "my-role", "queries": [query(json!({}))]}),
            "spec.roleArn: should match",
        ),
        (
            "period as a string",
            json!({"queries": [stat("period", json!("60"))]}),
            "period: must be an integer",
        ),
        (
            "returnData as a string",
            json!({"queries": [query(json!({"returnData": "no"}))]}),
            "returnData: must be a boolean",
        ),
        (
            "noDataValue as a string",
            json!({"noDataValue": "0", "queries": [query(json!({}))]}),
            "noDataValue: must be a number",
        ),
    ];
    for (what, spec, expected) in cases {
        let (errors, adapter) = verdicts(spec);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{what}: expected an error containing {expected:?}, got {errors:?}"
        );
        // The schema only says early what the adapter itself would refuse.
        assert!(adapter.is_err(), "{what}: the adapter would have served it");
    }
}

#[test]
fn cloudwatch_periods_and_statistics_are_accepted() {
    for period in [1, 5, 10, 20, 30, 60, 120, 300, 3600, 86400] {
        let (errors, adapter) = verdicts(json!({"queries": [stat("period", json!(period))]}));
        assert_eq!(errors, Vec::<String>::new(), "period {period}");
        adapter.unwrap();
    }
    for statistic in [
        "SampleCount",
        "Average",
        "Sum",
        "Minimum",
        "Maximum",
        "IQM",
        "p99",
        "p99.9",
        "p100",
        "tm90",
        "TM(10%:90%)",
        "wm99",
        "tc(:500)",
        "ts99",
        "PR(100:2000)",
    ] {
        let (errors, adapter) = verdicts(json!({"queries": [stat("stat", json!(statistic))]}));
        assert_eq!(errors, Vec::<String>::new(), "stat {statistic}");
        adapter.unwrap();
    }
}

/// kube-apiserver refuses a CRD whose schema is not structural or whose CEL does not compile.
#[test]
fn the_schema_is_structural_and_its_cel_compiles_cheaply() {
    fn walk(schema: &Value, path: &str, rules: &mut Vec<String>) {
        for forbidden in [
            "$ref",
            "definitions",
            "$defs",
            "$schema",
            "oneOf",
            "anyOf",
            "allOf",
        ] {
            assert!(
                schema.get(forbidden).is_none(),
                "{path}: {forbidden} is not allowed"
            );
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"] == json!(true);
        assert!(
            schema.get("type").is_some() || preserve,
            "{path}: every node of a structural schema has a type"
        );
        assert!(
            !(schema.get("properties").is_some() && schema.get("additionalProperties").is_some()),
            "{path}: properties and additionalProperties are exclusive"
        );
        for rule in schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            rules.push(rule["rule"].as_str().unwrap().to_string());
        }
        for (name, child) in schema["properties"].as_object().into_iter().flatten() {
            walk(child, &format!("{path}.{name}"), rules);
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), rules);
        }
    }
    let schema = schema();
    let mut rules = Vec::new();
    walk(&schema, "", &mut rules);
    assert_eq!(rules.len(), 5, "{rules:?}");
    let compiled = compile_schema(&schema);
    assert!(
        !compiled.has_errors(),
        "{:?}",
        compiled.compilation_errors()
    );
    for rule in &rules {
        let warnings = analyze_rule(rule, &compiled, ScopeContext::CrdValidation);
        assert!(warnings.is_empty(), "{rule}: {warnings:?}");
    }
}

#[test]
fn the_crd_has_status_printer_columns_and_the_right_names() {
    let crd = ExternalMetric::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("externalmetrics.metrics.aws")
    );
    assert_eq!(crd.spec.group, "metrics.aws");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "ExternalMetric");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["State", "Value", "Value Age", "Age"]);
    let yaml = crd::crd_yaml();
    assert!(yaml.starts_with("# Generated"), "{yaml}");
    assert!(yaml.contains("apiVersion: apiextensions.k8s.io/v1"));
}
