//! Metrics of forwarding to delegates, registered by the delegate module.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::REQUEST_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelegateLabels {
    delegate: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DelegateNameLabels {
    delegate: String,
}

/// Forwarded requests and discovery fetches, by delegate.
#[derive(Debug)]
pub struct DelegateMetrics {
    requests: Family<DelegateLabels, Counter>,
    request_duration: Family<DelegateLabels, Histogram>,
    discovery_refreshes: Family<DelegateLabels, Counter>,
    discovered_metrics: Family<DelegateNameLabels, Gauge>,
}

impl DelegateMetrics {
    /// Register the delegate metrics on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let delegate_requests = Family::<DelegateLabels, Counter>::default();
        let delegate_request_duration =
            Family::<DelegateLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(REQUEST_BUCKETS.iter().copied())
            });
        let delegate_discovery_refreshes = Family::<DelegateLabels, Counter>::default();
        let delegate_discovered_metrics = Family::<DelegateNameLabels, Gauge>::default();
        registry.register(
            "delegate_requests",
            "Value requests forwarded to a delegate, by delegate and outcome (success, error_status for the delegate's own errors, or why no answer came)",
            delegate_requests.clone(),
        );
        registry.register(
            "delegate_request_duration_seconds",
            "Latency of requests forwarded to a delegate, by delegate and outcome",
            delegate_request_duration.clone(),
        );
        registry.register(
            "delegate_discovery_refreshes",
            "Background fetches of a delegate's metric list, by delegate and outcome",
            delegate_discovery_refreshes.clone(),
        );
        registry.register(
            "delegate_discovered_metrics",
            "Metric names a delegate lists that discovery shows",
            delegate_discovered_metrics.clone(),
        );
        DelegateMetrics {
            requests: delegate_requests,
            request_duration: delegate_request_duration,
            discovery_refreshes: delegate_discovery_refreshes,
            discovered_metrics: delegate_discovered_metrics,
        }
    }

    /// Record one forwarded request: `delegate` is a configured name, `outcome` a fixed word.
    pub fn request(&self, delegate: &str, outcome: &str, elapsed: Duration) {
        let labels = DelegateLabels {
            delegate: delegate.to_string(),
            outcome: outcome.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Record one background discovery fetch, and how many names it left in discovery.
    pub fn discovery(&self, delegate: &str, outcome: &str, names: Option<usize>) {
        self.discovery_refreshes
            .get_or_create(&DelegateLabels {
                delegate: delegate.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(names) = names {
            self.discovered_metrics
                .get_or_create(&DelegateNameLabels {
                    delegate: delegate.to_string(),
                })
                .set(i64::try_from(names).unwrap_or(i64::MAX));
        }
    }
}
