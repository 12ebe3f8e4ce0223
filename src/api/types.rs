//! Wire types that k8s-openapi does not carry: the external metrics list and aggregated discovery.

use std::collections::BTreeMap;

use serde::Serialize;

/// The group and version served.
pub const GROUP: &str = "external.metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";
/// `group/version`.
pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// `external.metrics.k8s.io/v1beta1` `ExternalMetricValueList`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValueList {
    /// Always `ExternalMetricValueList`.
    pub kind: &'static str,
    /// Always `external.metrics.k8s.io/v1beta1`.
    pub api_version: &'static str,
    /// Always empty.
    pub metadata: EmptyMeta,
    /// The values; the HPA sums them.
    pub items: Vec<ExternalMetricValue>,
}

impl ExternalMetricValueList {
    /// A list of `items`.
    pub fn new(items: Vec<ExternalMetricValue>) -> Self {
        Self {
            kind: "ExternalMetricValueList",
            api_version: GROUP_VERSION,
            metadata: EmptyMeta {},
            items,
        }
    }
}

/// An empty `ListMeta`, serialised as `{}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EmptyMeta {}

/// One `ExternalMetricValue`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    /// The metric name.
    pub metric_name: String,
    /// Serialised as `null` when empty, as the Go type does.
    pub metric_labels: Option<BTreeMap<String, String>>,
    /// RFC 3339, the datapoint's own time.
    pub timestamp: String,
    /// Seconds the value was aggregated over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    /// A Kubernetes quantity.
    pub value: String,
}

/// `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, for aggregated discovery at `/apis`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroupDiscoveryList {
    /// Always `APIGroupDiscoveryList`.
    pub kind: &'static str,
    /// Always `apidiscovery.k8s.io/v2`.
    pub api_version: &'static str,
    /// Always empty.
    pub metadata: EmptyMeta,
    /// One group.
    pub items: Vec<ApiGroupDiscovery>,
}

/// One group in aggregated discovery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroupDiscovery {
    /// `{name: group}`.
    pub metadata: NameMeta,
    /// The versions.
    pub versions: Vec<ApiVersionDiscovery>,
}

/// `ObjectMeta` with only a name.
#[derive(Debug, Clone, Serialize)]
pub struct NameMeta {
    /// The group name.
    pub name: &'static str,
}

/// One version in aggregated discovery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiVersionDiscovery {
    /// `v1beta1`.
    pub version: &'static str,
    /// The resources (metrics).
    pub resources: Vec<ApiResourceDiscovery>,
    /// `Current`.
    pub freshness: &'static str,
}

/// One resource in aggregated discovery.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResourceDiscovery {
    /// The metric name.
    pub resource: String,
    /// `{kind: ExternalMetricValueList}`.
    pub response_kind: ResponseKind,
    /// `Namespaced`.
    pub scope: &'static str,
    /// Empty.
    pub singular_resource: &'static str,
    /// `["get"]`.
    pub verbs: Vec<&'static str>,
}

/// `GroupVersionKind` of a response.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseKind {
    /// Empty: same group.
    pub group: &'static str,
    /// Empty: same version.
    pub version: &'static str,
    /// `ExternalMetricValueList`.
    pub kind: &'static str,
}
