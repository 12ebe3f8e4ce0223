//! Value request metrics, keyed by defined metric names and pruned when names go.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::REQUEST_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    metric: String,
    code: u16,
}

/// External metric value requests by metric and HTTP code.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    /// The (metric, code) label sets of `requests` and `request_duration`, so the names of
    /// metrics no longer defined can be dropped at scrape time.
    request_label_sets: RwLock<HashMap<String, HashSet<u16>>>,
}

impl ApiMetrics {
    /// Register the value request metrics on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // Memory hits are sub-millisecond, first fetches wait on CloudWatch; the 1 ms
            // bound is the latency objective for warm series.
            Histogram::new(REQUEST_BUCKETS.iter().copied())
        });
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
        ApiMetrics {
            requests,
            request_duration,
            request_label_sets: RwLock::default(),
        }
    }

    /// Record one value request. `metric` must be a defined metric name or a fixed word, never
    /// raw user input, to keep label cardinality bounded.
    pub fn observe_request(&self, metric: &str, code: u16, elapsed: Duration) {
        let known = self
            .request_label_sets
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(metric)
            .is_some_and(|codes| codes.contains(&code));
        if !known {
            self.request_label_sets
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(metric.to_string())
                .or_default()
                .insert(code);
        }
        let labels = RequestLabels {
            metric: metric.to_string(),
            code,
        };
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Drop the request label sets of metric names for which `keep` is false (names no longer
    /// defined), so `/metrics` does not keep every name that ever existed.
    pub fn retain_request_metrics(&self, keep: impl Fn(&str) -> bool) {
        let mut sets = self
            .request_label_sets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sets.retain(|metric, codes| {
            if keep(metric) {
                return true;
            }
            for code in codes.iter() {
                let labels = RequestLabels {
                    metric: metric.clone(),
                    code: *code,
                };
                self.requests.remove(&labels);
                self.request_duration.remove(&labels);
            }
            false
        });
    }
}
