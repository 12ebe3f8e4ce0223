//! The refresh engine's metrics: calls and their cost by source, lookups, series, ages, lag,
//! isolation and fallback.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::definition::Backend;
use crate::source::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MetricLabels {
    metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IsolationLabels {
    source: String,
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Calls, lookups and the state of the series table.
#[derive(Debug)]
pub struct EngineMetrics {
    cloudwatch_calls: Family<OutcomeLabels, Counter>,
    cloudwatch_queries: Counter,
    cloudwatch_metrics_requested: Counter,
    cloudwatch_datapoints: Counter,
    sqs_calls: Family<OutcomeLabels, Counter>,
    sqs_requests: Counter,
    estimated_cost: Family<SourceLabels, Counter<f64, AtomicU64>>,
    bisected_calls: Family<SourceLabels, Counter>,
    truncated_calls: Family<SourceLabels, Counter>,
    cache_lookups: Family<ResultLabels, Counter>,
    active_series: Gauge,
    value_age: Family<MetricLabels, Gauge<f64, AtomicU64>>,
    refresh_lag: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    queued_series: Family<SourceLabels, Gauge>,
    fallback_refreshes: Family<SourceLabels, Counter>,
    lane_cycles: Family<SourceLabels, Counter>,
    isolated_definitions: Family<IsolationLabels, Gauge>,
}

impl EngineMetrics {
    /// Register the engine's metrics on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let cloudwatch_calls = Family::<OutcomeLabels, Counter>::default();
        let cloudwatch_queries = Counter::default();
        let cloudwatch_metrics_requested = Counter::default();
        let cloudwatch_datapoints = Counter::default();
        let sqs_calls = Family::<OutcomeLabels, Counter>::default();
        let sqs_requests = Counter::default();
        let estimated_cost = Family::<SourceLabels, Counter<f64, AtomicU64>>::default();
        let bisected_calls = Family::<SourceLabels, Counter>::default();
        let truncated_calls = Family::<SourceLabels, Counter>::default();
        let cache_lookups = Family::<ResultLabels, Counter>::default();
        let active_series = Gauge::default();
        let value_age = Family::<MetricLabels, Gauge<f64, AtomicU64>>::default();
        let refresh_lag = Family::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        let queued_series = Family::<SourceLabels, Gauge>::default();
        let fallback_refreshes = Family::<SourceLabels, Counter>::default();
        let lane_cycles = Family::<SourceLabels, Counter>::default();
        let isolated_definitions = Family::<IsolationLabels, Gauge>::default();
        registry.register(
            "cloudwatch_calls",
            "GetMetricData calls by outcome",
            cloudwatch_calls.clone(),
        );
        registry.register(
            "cloudwatch_queries",
            "MetricDataQuery entries sent to CloudWatch (billed per metric requested)",
            cloudwatch_queries.clone(),
        );
        registry.register(
            "cloudwatch_metrics_requested",
            "Metrics requested from GetMetricData (MetricStat queries), the billed unit",
            cloudwatch_metrics_requested.clone(),
        );
        registry.register(
            "cloudwatch_datapoints",
            "Datapoints returned by GetMetricData",
            cloudwatch_datapoints.clone(),
        );
        registry.register(
            "sqs_calls",
            "SQS GetQueueAttributes calls by outcome",
            sqs_calls.clone(),
        );
        registry.register(
            "sqs_requests",
            "SQS requests made (GetQueueAttributes and GetQueueUrl), the billed unit",
            sqs_requests.clone(),
        );
        registry.register(
            "estimated_cost_dollars",
            "Estimated cost by source: GetMetricData at $0.01 per 1,000 metrics requested, SQS at $0.40 per million requests",
            estimated_cost.clone(),
        );
        registry.register(
            "rejected_calls_searched",
            "Calls the backend rejected as a bad request of their members, whose members were then searched for the series causing it",
            bisected_calls.clone(),
        );
        registry.register(
            "incomplete_calls",
            "Calls whose results were incomplete (pagination stopped before the last page)",
            truncated_calls.clone(),
        );
        registry.register(
            "cache_lookups",
            "Value requests answered from memory (hit), after a first fetch (miss), or refused as stale",
            cache_lookups.clone(),
        );
        registry.register(
            "active_series",
            "Series kept fresh by the refresher",
            active_series.clone(),
        );
        registry.register(
            "value_age_seconds",
            "Age of the oldest served datapoint per metric (now minus datapoint time)",
            value_age.clone(),
        );
        registry.register(
            "refresh_lag_seconds",
            "How late the oldest due series of a source is (waiting for the budget, or in a call not yet answered): near 0 when refreshes keep up; growing when a lane is stalled or over budget",
            refresh_lag.clone(),
        );
        registry.register(
            "queued_series",
            "Series waiting in a source's timer queue (every active series not being refreshed right now)",
            queued_series.clone(),
        );
        registry.register(
            "fallback_refreshes",
            "Calls a replica made itself because no leader streamed values to it (0 in steady state)",
            fallback_refreshes.clone(),
        );
        registry.register(
            "lane_cycles",
            "Times a source's lane looked at its queue: about one per second, or per burst of first requests, when idle; fast growth means a lane that does not sleep",
            lane_cycles.clone(),
        );
        registry.register(
            "isolated_definitions",
            "Definitions with series that get calls of their own because the backend rejects the calls they share (scope=series), or rejected whatever the selector (scope=definition)",
            isolated_definitions.clone(),
        );
        EngineMetrics {
            cloudwatch_calls,
            cloudwatch_queries,
            cloudwatch_metrics_requested,
            cloudwatch_datapoints,
            sqs_calls,
            sqs_requests,
            estimated_cost,
            bisected_calls,
            truncated_calls,
            cache_lookups,
            active_series,
            value_age,
            refresh_lag,
            queued_series,
            fallback_refreshes,
            lane_cycles,
            isolated_definitions,
        }
    }

    /// Record one call of `backend`'s source: its outcome, what it used, and its estimated
    /// cost.
    pub fn source_call(&self, backend: Backend, outcome: &str, usage: &Usage, dollars: f64) {
        match backend {
            Backend::CloudWatch => {
                self.cloudwatch_calls
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_string(),
                    })
                    .inc();
                self.cloudwatch_queries.inc_by(usage.items as u64);
                self.cloudwatch_metrics_requested
                    .inc_by(usage.billed as u64);
                self.cloudwatch_datapoints.inc_by(usage.datapoints as u64);
            }
            Backend::Sqs => {
                self.sqs_calls
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.to_string(),
                    })
                    .inc();
                self.sqs_requests.inc_by(usage.billed as u64);
            }
        }
        self.estimated_cost
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc_by(dollars);
        if usage.truncated {
            self.truncated_calls
                .get_or_create(&SourceLabels {
                    source: backend.label().to_string(),
                })
                .inc();
        }
    }

    /// Count one call of `backend` rejected as a bad request of its members.
    pub fn call_bisected(&self, backend: Backend) {
        self.bisected_calls
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc();
    }

    /// Count one cache lookup: `hit`, `miss` or `stale`.
    pub fn cache_lookup(&self, result: &str) {
        self.cache_lookups
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Set the number of active series.
    pub fn set_active_series(&self, count: usize) {
        self.active_series
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Set a metric's value age; metrics without series are removed.
    pub fn set_value_ages(&self, ages: &[(String, f64)]) {
        self.value_age.clear();
        for (metric, age) in ages {
            self.value_age
                .get_or_create(&MetricLabels {
                    metric: metric.clone(),
                })
                .set(*age);
        }
    }

    /// Set a source lane's gauges: how late its oldest due series is, how many series wait in
    /// its queue, and how many definitions it isolates (`learned` with anything learned, `whole`
    /// of them rejected whatever the selector).
    pub fn set_lane(
        &self,
        backend: Backend,
        lag: Duration,
        queued: usize,
        learned: usize,
        whole: usize,
    ) {
        let source = || SourceLabels {
            source: backend.label().to_string(),
        };
        self.refresh_lag
            .get_or_create(&source())
            .set(lag.as_secs_f64());
        self.queued_series
            .get_or_create(&source())
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        for (scope, count) in [
            ("series", learned.saturating_sub(whole)),
            ("definition", whole),
        ] {
            self.isolated_definitions
                .get_or_create(&IsolationLabels {
                    source: backend.label().to_string(),
                    scope,
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Count one call made while falling back (no leader heard from), as it completes (before
    /// [`EngineMetrics::source_call`] counts it among all calls).
    pub fn fallback_refresh(&self, backend: Backend) {
        self.fallback_refreshes
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc();
    }

    /// Count one look of `backend`'s lane at its queue.
    pub fn lane_cycle(&self, backend: Backend) {
        self.lane_cycles
            .get_or_create(&SourceLabels {
                source: backend.label().to_string(),
            })
            .inc();
    }
}
