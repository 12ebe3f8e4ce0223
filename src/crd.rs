//! The `ExternalMetric` custom resource (`metrics.aws/v1alpha1`): a metric definition that a team
//! applies in its own namespace, next to its HPAs.
//!
//! The spec is [`MetricSpec`], the same type as a definitions-file entry (itself the archived
//! awslabs adapter's spec plus extensions), so the archived adapter's manifests apply unchanged.
//! The CRD YAML is generated from these types (`cloudwatch-metrics-adapter crd`) and committed at
//! [`CRD_PATH`]; a test fails when the committed copy drifts.
//!
//! Names: the metric's name for the HPA is `metadata.name`, as in the archived adapter (which
//! ignored `spec.name`). A differing `spec.name` is ignored and reported in the `Valid` condition.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::core::{ApiResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{Definition, InvalidDefinition, MetricSpec};

/// Where the generated CRD is committed (the Helm chart installs it from there).
pub const CRD_PATH: &str =
    "charts/cloudwatch-metrics-adapter/crds/externalmetrics.metrics.aws.yaml";

/// Condition type: whether the spec is usable (`False` with the reason when it is rejected).
pub const CONDITION_VALID: &str = "Valid";
/// Condition type: whether the metric's latest refreshes returned data.
pub const CONDITION_READY: &str = "Ready";

/// How the metric's value is read, from CloudWatch queries or an SQS queue: a definitions-file
/// entry (the archived awslabs adapter's ExternalMetric spec plus extensions). Its name for HPAs
/// is metadata.name.
// Each printcolumn(...) repeats `type_ = ...` keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "metrics.aws",
    version = "v1alpha1",
    kind = "ExternalMetric",
    namespaced,
    status = "ExternalMetricStatus",
    category = "metrics",
    doc = "A CloudWatch metric or SQS queue depth served to HPAs in this namespace as external metric metadata.name.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Value", type_ = "string", json_path = ".status.value"),
    printcolumn(
        name = "Value Age",
        type_ = "date",
        json_path = ".status.valueTimestamp",
        description = "How old the datapoint behind the value is"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".status.source",
        priority = 1
    ),
    printcolumn(
        name = "Queue",
        type_ = "string",
        json_path = ".spec.sqs.queue",
        priority = 1
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status",
        priority = 1
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(transparent)]
pub struct ExternalMetricSpec(pub MetricSpec);

/// What the adapter reports about an `ExternalMetric`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for `kubectl get`: Invalid, Conflict, Pending, Ready, NoData or Failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Where the value is read: CloudWatch or SQS (absent while the definition is not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The condition behind the state, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The latest value served (of the most recently refreshed series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The time of the datapoint behind `value` (not when it was fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_timestamp: Option<String>,
    /// The HPA selector (labels) of the series `value` belongs to; empty for a metric without
    /// placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_selector: Option<String>,
    /// How many series (distinct HPA selectors) were refreshed recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_series: Option<i64>,
    /// The latest refresh error, kept after recovery so it can still be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When `lastError` happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_time: Option<String>,
    /// `Valid` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The CRD document, as committed at [`CRD_PATH`].
pub fn crd_yaml() -> String {
    let crd = ExternalMetric::crd();
    // Long lines stay plain scalars (not re-wrapped into folded blocks), multi-line text stays a
    // literal block: the committed file reads and greps like what it describes.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
    let body =
        serde_saphyr::to_string_with_options(&crd, options).expect("a CRD serializes to YAML");
    format!(
        "# Generated from the Rust types by `cloudwatch-metrics-adapter crd`: do not edit.\n{body}"
    )
}

/// The API resource to watch and patch `ExternalMetric`s as dynamic objects, so one malformed
/// object cannot fail the decoding of a whole list.
pub fn api_resource() -> ApiResource {
    ExternalMetric::api_resource()
}

/// The result of turning an object into a definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The definition (with its namespace set), or every reason why not.
    pub definition: Result<Arc<Definition>, InvalidDefinition>,
    /// A note for the `Valid` condition when the object is valid but has something to say
    /// (a `spec.name` that differs from `metadata.name`).
    pub note: Option<String>,
}

/// Whether an `ExternalMetric` object may use `role_arn`. Anyone who can create an object in
/// their namespace would otherwise make the adapter assume any role its own identity may assume,
/// including roles meant for another team's metrics, so an administrator lists the roles objects
/// may use (exact ARNs, or prefixes ending in `*`). The definitions file is not restricted.
pub fn role_allowed(role_arn: &str, allowed: &[String]) -> bool {
    allowed
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => role_arn.starts_with(prefix),
            None => role_arn == pattern,
        })
}

/// The most problems reported for one object (the status message must stay readable).
const MAX_PROBLEMS: usize = 20;

/// Turn an object's `spec` into a definition named `name` in `namespace`, or the reasons why not.
/// Never panics, whatever the spec holds.
pub fn to_definition(
    namespace: &str,
    name: &str,
    spec: Option<&Value>,
    allowed_roles: &[String],
) -> Converted {
    let refuse = |problems: Vec<String>| Err(InvalidDefinition { problems });
    let Some(spec) = spec else {
        return Converted {
            definition: refuse(vec!["spec is missing".to_string()]),
            note: None,
        };
    };
    let mut metric: MetricSpec = match serde_path_to_error::deserialize(spec) {
        Ok(metric) => metric,
        Err(err) => {
            let path = err.path().to_string();
            let at = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            return Converted {
                definition: refuse(vec![format!("{at}: {}", err.into_inner())]),
                note: None,
            };
        }
    };
    let note = (!metric.name.is_empty() && metric.name != name).then(|| {
        format!(
            "spec.name {:?} is ignored: the metric is served as metadata.name {name:?}",
            metric.name
        )
    });
    metric.name = name.to_string();
    let refused_role = metric
        .role_arn
        .as_ref()
        .filter(|role| !role_allowed(role, allowed_roles))
        .map(|role| {
            format!(
                "roleArn {role:?} is not allowed in ExternalMetric objects: the adapter's administrator must list it in --external-metric-allowed-role-arns"
            )
        });
    let definition = match Definition::new(metric) {
        Ok(_) if refused_role.is_some() => refuse(refused_role.into_iter().collect()),
        Ok(mut definition) => {
            definition.namespace = Some(namespace.to_string());
            Ok(Arc::new(definition))
        }
        Err(InvalidDefinition { mut problems }) => {
            problems.extend(refused_role);
            if problems.len() > MAX_PROBLEMS {
                let more = problems.len() - MAX_PROBLEMS;
                problems.truncate(MAX_PROBLEMS);
                problems.push(format!("... and {more} more problem(s)"));
            }
            refuse(problems)
        }
    };
    Converted { definition, note }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn objects_may_assume_only_roles_an_administrator_allowed() {
        let spec = serde_json::json!({
            "roleArn": "arn:aws:iam::123456789012:role/team-b-metrics",
            "queries": [{"id": "m", "metricStat": {
                "metric": {"namespace": "AWS/SQS", "metricName": "X"}, "period": 60, "stat": "Sum"}}]
        });
        let Err(InvalidDefinition { problems }) =
            to_definition("team-a", "x", Some(&spec), &[]).definition
        else {
            panic!("a role no administrator allowed must be refused");
        };
        assert!(
            problems[0].contains("--external-metric-allowed-role-arns"),
            "{problems:?}"
        );
        let other = ["arn:aws:iam::123456789012:role/team-a-*".to_string()];
        assert!(
            to_definition("team-a", "x", Some(&spec), &other)
                .definition
                .is_err()
        );
        let exact = ["arn:aws:iam::123456789012:role/team-b-metrics".to_string()];
        assert!(
            to_definition("team-a", "x", Some(&spec), &exact)
                .definition
                .is_ok()
        );
        let prefix = ["arn:aws:iam::123456789012:role/team-b-*".to_string()];
        assert!(
            to_definition("team-a", "x", Some(&spec), &prefix)
                .definition
                .is_ok()
        );
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CRD_PATH);
        let generated = crd_yaml();
        if std::env::var_os("UPDATE_CRD").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{CRD_PATH} is out of date with src/definition.rs and src/crd.rs: regenerate it with\n  \
             cargo run -- crd > {CRD_PATH}\n(or UPDATE_CRD=1 cargo test committed_crd)"
        );
    }

    #[test]
    fn metadata_name_wins_over_spec_name() {
        let spec = serde_json::json!({
            "name": "old-name",
            "queries": [{"id": "a", "metricStat": {
                "metric": {"namespace": "AWS/SQS", "metricName": "M"}, "period": 60, "stat": "Sum"}}],
        });
        let converted = to_definition("team-a", "new-name", Some(&spec), &[]);
        let definition = converted.definition.unwrap();
        assert_eq!(definition.spec.name, "new-name");
        assert_eq!(definition.namespace.as_deref(), Some("team-a"));
        assert!(
            converted
                .note
                .unwrap()
                .contains("spec.name \"old-name\" is ignored")
        );

        let spec = serde_json::json!({"name": "same", "queries": spec["queries"]});
        assert_eq!(to_definition("ns", "same", Some(&spec), &[]).note, None);
    }

    #[test]
    fn hostile_specs_are_rejected_with_reasons() {
        let not_an_object = serde_json::json!("oops");
        let Err(InvalidDefinition { problems }) =
            to_definition("ns", "x", Some(&not_an_object), &[]).definition
        else {
            panic!("expected a rejection");
        };
        assert!(problems[0].starts_with("spec: "), "{problems:?}");

        let queries: Vec<Value> = (0..3000)
            .map(|i| serde_json::json!({"id": format!("Q{i}"), "expression": "1"}))
            .collect();
        let many = serde_json::json!({"queries": queries});
        let Err(InvalidDefinition { problems }) =
            to_definition("ns", "x", Some(&many), &[]).definition
        else {
            panic!("expected a rejection");
        };
        assert_eq!(problems.len(), MAX_PROBLEMS + 1);
        assert!(
            problems.iter().any(|p| p.contains("at most 500")),
            "{problems:?}"
        );
        assert!(problems.last().unwrap().contains("more problem(s)"));

        let Err(InvalidDefinition { problems }) = to_definition("ns", "x", None, &[]).definition
        else {
            panic!("expected a rejection");
        };
        assert_eq!(problems, vec!["spec is missing".to_string()]);
    }
}
