//! The adapter's own Prometheus metrics, served on the admin port at `/metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    metric: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Counters and histograms, registered once and shared.
#[derive(Debug)]
pub struct AdapterMetrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    cloudwatch_calls: Family<OutcomeLabels, Counter>,
    cloudwatch_queries: Counter,
}

impl Default for AdapterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cloudwatch_adapter");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 100 us .. ~3 s: memory hits are sub-millisecond, CloudWatch calls are not.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.5, 12,
            ))
        });
        let cloudwatch_calls = Family::<OutcomeLabels, Counter>::default();
        let cloudwatch_queries = Counter::default();
        registry.register(
            "requests",
            "External metric value requests by metric and HTTP code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "External metric value request latency",
            request_duration.clone(),
        );
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
        Self {
            registry: Mutex::new(registry),
            requests,
            request_duration,
            cloudwatch_calls,
            cloudwatch_queries,
        }
    }
}

impl AdapterMetrics {
    /// Record one value request. `metric` must be a defined metric name or a fixed word, never
    /// raw user input, to keep label cardinality bounded.
    pub fn observe_request(&self, metric: &str, code: u16, elapsed: Duration) {
        let labels = RequestLabels {
            metric: metric.to_string(),
            code,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Record one `GetMetricData` call and how many queries it carried.
    pub fn cloudwatch_call(&self, outcome: &str, queries: usize) {
        self.cloudwatch_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.cloudwatch_queries.inc_by(queries as u64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
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
    use super::*;

    #[test]
    fn exposes_requests_and_cloudwatch_calls() {
        let metrics = AdapterMetrics::default();
        metrics.observe_request("sqs-visible", 200, Duration::from_millis(2));
        metrics.cloudwatch_call("ok", 3);
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
    }
}
