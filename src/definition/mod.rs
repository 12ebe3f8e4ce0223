//! Definitions: what a metric name served to the HPA means, and where its value is read.
//!
//! - [`spec`]: the types written in the definitions file and in an `ExternalMetric`'s spec (one
//!   set of types; its JSON schema is the CRD's).
//! - [`Definition::new`]: validation, reporting every problem at once, each naming its field;
//!   the backend's own rules are in [`cloudwatch`].
//! - [`placeholder`]: `${label}` placeholders and the exact-or-refused selector rules.
//! - [`DefinitionSet`]: the definitions in force and their precedence (the file wins over an
//!   `ExternalMetric` of the same name).
//! - [`file`]: loading the definitions file.
//! - [`limits`]: the schema's limits, patterns and period rule, a leaf every module above
//!   imports (so `spec` and `cloudwatch` never import each other).

pub mod cloudwatch;
pub mod file;
pub mod limits;
pub mod placeholder;
pub mod spec;
pub mod sqs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use regex::Regex;

pub use cloudwatch::CloudWatchRead;
pub use file::{LoadError, ParseError, load_file, parse};
pub use limits::{
    DEFAULT_WINDOW, MAX_HPA_VALUE, MAX_MAX_AGE, MAX_QUERIES, MAX_REFRESH_INTERVAL, check_period,
};
pub use placeholder::{render, selector_labels};
pub use spec::{
    DefinitionsFile, DimensionSpec, HumanDuration, MetricRef, MetricSpec, MetricStatSpec,
    QuerySpec, QueueCount, SqsSpec,
};
pub use sqs::{QueueRef, SqsRead};

static REGION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(limits::REGION_PATTERN).expect("static regex"));
static ROLE_ARN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(limits::ROLE_ARN_PATTERN).expect("static regex"));

/// Which backend a definition's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// CloudWatch `GetMetricData` (a definition with `queries`).
    CloudWatch,
    /// SQS `GetQueueAttributes` (a definition with `sqs`).
    Sqs,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 2] = [Backend::CloudWatch, Backend::Sqs];

    /// The name users know it by, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::CloudWatch => "CloudWatch",
            Backend::Sqs => "SQS",
        }
    }

    /// A lowercase word for metric labels and logs.
    pub fn label(self) -> &'static str {
        match self {
            Backend::CloudWatch => "cloudwatch",
            Backend::Sqs => "sqs",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a series is accounted to when the call budget and the series capacity are shared: each
/// `ExternalMetric` namespace is one tenant (its teams may create many objects), and each
/// definition of the cluster-wide definitions file is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tenant {
    /// A definitions-file metric, by name.
    Definition(String),
    /// The `ExternalMetric` objects of a namespace.
    Namespace(String),
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tenant::Definition(name) => write!(f, "definition {name}"),
            Tenant::Namespace(namespace) => write!(f, "namespace {namespace}"),
        }
    }
}

/// How a definition's value is read, per backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// `GetMetricData` queries.
    CloudWatch(CloudWatchRead),
    /// An SQS queue's approximate counts.
    Sqs(SqsRead),
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
    /// A set of cluster-wide definitions only (the definitions file), by name.
    pub(crate) fn cluster_wide_only(metrics: BTreeMap<String, Arc<Definition>>) -> Self {
        Self {
            metrics,
            namespaced: BTreeMap::new(),
        }
    }

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

/// Why a spec is not a usable definition: every problem found, each a sentence that names its
/// field. Nothing branches on which problem it is; people read them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("; "))]
pub struct InvalidDefinition {
    /// The problems, in the order they were found.
    pub problems: Vec<String>,
}

/// A validated metric definition with the facts derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// The spec as written.
    pub spec: MetricSpec,
    /// The label names its placeholders need, sorted.
    pub labels: BTreeSet<String>,
    /// How its value is read.
    pub read: Read,
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
    pub fn new(spec: MetricSpec) -> Result<Definition, InvalidDefinition> {
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

        let (read, refresh_interval) = match (&spec.sqs, spec.queries.is_empty()) {
            (Some(sqs), queries_empty) => {
                if !queries_empty {
                    problems.push(
                        "set either queries (CloudWatch) or sqs (an SQS queue's depth), not both"
                            .to_string(),
                    );
                }
                let read = sqs::validate(&spec, sqs, &mut labels, &mut problems);
                let refresh_interval = match spec.refresh_interval {
                    Some(HumanDuration(interval)) => {
                        if interval < sqs::MIN_REFRESH_INTERVAL {
                            problems.push(format!(
                                "refreshInterval {} is shorter than the 1s minimum",
                                HumanDuration(interval)
                            ));
                        }
                        interval
                    }
                    None => sqs::DEFAULT_REFRESH_INTERVAL,
                };
                (Read::Sqs(read), refresh_interval)
            }
            (None, _) => {
                let read = cloudwatch::validate(&spec, &mut labels, &mut problems);
                let period = read.period;
                let period_duration = read.period_duration();
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
                (Read::CloudWatch(read), refresh_interval)
            }
        };
        if refresh_interval > MAX_REFRESH_INTERVAL {
            problems.push(format!(
                "refreshInterval {} is longer than the 24h maximum",
                HumanDuration(refresh_interval)
            ));
        }
        let max_age = spec.max_age.map(|d| d.0);
        if let Some(age) = max_age
            && age > MAX_MAX_AGE
        {
            problems.push(format!(
                "maxAge {} is longer than the 7d maximum",
                HumanDuration(age)
            ));
        }
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
                read,
                refresh_interval,
                max_age,
                namespace: None,
            })
        } else {
            Err(InvalidDefinition { problems })
        }
    }

    /// The backend its values come from.
    pub fn backend(&self) -> Backend {
        match &self.read {
            Read::CloudWatch(_) => Backend::CloudWatch,
            Read::Sqs(_) => Backend::Sqs,
        }
    }

    /// What it reads from CloudWatch, if it is a CloudWatch definition.
    pub fn cloudwatch(&self) -> Option<&CloudWatchRead> {
        match &self.read {
            Read::CloudWatch(read) => Some(read),
            Read::Sqs(_) => None,
        }
    }

    /// What it reads from SQS, if it is an SQS definition.
    pub fn sqs(&self) -> Option<(&SqsSpec, &SqsRead)> {
        match (&self.read, &self.spec.sqs) {
            (Read::Sqs(read), Some(spec)) => Some((spec, read)),
            _ => None,
        }
    }

    /// Who its series are accounted to (see [`Tenant`]).
    pub fn tenant(&self) -> Tenant {
        match &self.namespace {
            Some(namespace) => Tenant::Namespace(namespace.clone()),
            None => Tenant::Definition(self.spec.name.clone()),
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

#[cfg(test)]
mod tests;

/// Definitions the unit tests of several stages share.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use super::Definition;

    /// The flagship: SQS visible messages from CloudWatch, one definition for every queue.
    pub(crate) fn sqs_visible() -> Arc<Definition> {
        let set = super::parse(
            r#"
metrics:
  - name: sqs-visible
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Average
"#,
        )
        .unwrap_or_default();
        set.iter().next().cloned().expect("the fixture is valid")
    }
}
