//! The adapter's own Prometheus metrics, served on the admin port at `/metrics`. Each module
//! registers its own ([`crate::api::metrics`], [`crate::engine::metrics`],
//! [`crate::auth::metrics`], [`crate::delegate::metrics`], the edge's in `server`, and the
//! leader's and peer link's); this module holds the registry, the scrape-time collector, and a
//! handle to each.

use std::sync::{Mutex, OnceLock};

use prometheus_client::registry::Registry;

use crate::api::metrics::ApiMetrics;
use crate::auth::metrics::AuthMetrics;
use crate::delegate::metrics::DelegateMetrics;
use crate::engine::metrics::EngineMetrics;
use crate::server::metrics::EdgeMetrics;

/// Latency buckets (seconds) for value requests.
pub(crate) const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Computes point-in-time gauges (value ages, active series) just before each scrape.
pub type Collector = Box<dyn Fn(&AdapterMetrics) + Send + Sync>;

/// Every module's metrics on one registry, registered once and shared.
pub struct AdapterMetrics {
    registry: Mutex<Registry>,
    collector: OnceLock<Collector>,
    api: ApiMetrics,
    engine: EngineMetrics,
    auth: AuthMetrics,
    leader: crate::leader::LeaderMetrics,
    peer: crate::peer::PeerMetrics,
    delegate: DelegateMetrics,
    edge: EdgeMetrics,
}

impl std::fmt::Debug for AdapterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterMetrics").finish_non_exhaustive()
    }
}

impl Default for AdapterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cloudwatch_adapter");
        let api = ApiMetrics::register(&mut registry);
        let engine = EngineMetrics::register(&mut registry);
        let auth = AuthMetrics::register(&mut registry);
        let leader = crate::leader::register(&mut registry);
        let peer = crate::peer::register(&mut registry);
        let delegate = DelegateMetrics::register(&mut registry);
        let edge = EdgeMetrics::register(&mut registry);
        AdapterMetrics {
            registry: Mutex::new(registry),
            collector: OnceLock::new(),
            api,
            engine,
            auth,
            leader,
            peer,
            delegate,
            edge,
        }
    }
}

impl AdapterMetrics {
    /// Value requests by metric and code.
    pub fn api(&self) -> &ApiMetrics {
        &self.api
    }

    /// Calls, lookups and the series table.
    pub fn engine(&self) -> &EngineMetrics {
        &self.engine
    }

    /// The authentication and authorization counters.
    pub fn auth(&self) -> &AuthMetrics {
        &self.auth
    }

    /// The peer link's metrics.
    pub fn peer(&self) -> &crate::peer::PeerMetrics {
        &self.peer
    }

    /// The leader election's gauge and counter.
    pub fn leader(&self) -> &crate::leader::LeaderMetrics {
        &self.leader
    }

    /// Forwarding to delegates.
    pub fn delegate(&self) -> &DelegateMetrics {
        &self.delegate
    }

    /// Connections and requests at the API port.
    pub fn edge(&self) -> &EdgeMetrics {
        &self.edge
    }

    /// Install the scrape-time collector (once).
    pub fn set_collector(&self, collector: Collector) {
        if self.collector.set(collector).is_err() {
            tracing::warn!("a metrics collector is already installed");
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        if let Some(collector) = self.collector.get() {
            collector(self);
        }
        let mut text = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::definition::Backend;
    use crate::source::Usage;

    #[test]
    fn exposes_requests_and_cloudwatch_calls() {
        let metrics = AdapterMetrics::default();
        metrics
            .api()
            .observe_request("sqs-visible", 200, Duration::from_millis(2));
        metrics.engine().source_call(
            Backend::CloudWatch,
            "ok",
            &Usage {
                items: 3,
                billed: 2,
                datapoints: 6,
                truncated: false,
            },
            0.00002,
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "cloudwatch_adapter_requests_total{metric=\"sqs-visible\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_cloudwatch_queries_total 3"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_cloudwatch_calls_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        metrics.engine().source_call(
            Backend::Sqs,
            "throttled",
            &Usage {
                items: 1,
                billed: 2,
                datapoints: 1,
                truncated: true,
            },
            0.0000008,
        );
        let text = metrics.encode();
        assert!(
            text.contains("cloudwatch_adapter_sqs_calls_total{outcome=\"throttled\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_sqs_requests_total 2"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_incomplete_calls_total{source=\"sqs\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"} 8e-7")
                || text.contains(
                    "cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"} 0.0000008"
                ),
            "{text}"
        );
    }
}
