//! Counters per CloudWatch operation, for tests and benchmarks to read what the client did.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The CloudWatch operations the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// `GetMetricData`.
    GetMetricData,
    /// `PutMetricData`.
    PutMetricData,
    /// `ListMetrics`.
    ListMetrics,
}

impl Operation {
    /// The operation name as it appears in the request path.
    pub fn name(self) -> &'static str {
        match self {
            Self::GetMetricData => "GetMetricData",
            Self::PutMetricData => "PutMetricData",
            Self::ListMetrics => "ListMetrics",
        }
    }

    /// Parses an operation name from the request path.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "GetMetricData" => Some(Self::GetMetricData),
            "PutMetricData" => Some(Self::PutMetricData),
            "ListMetrics" => Some(Self::ListMetrics),
            _ => None,
        }
    }
}

/// Counters of one operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpStats {
    /// Requests received, whatever their outcome.
    pub calls: u64,
    /// Error responses by AWS error code (injected faults included).
    pub errors: BTreeMap<String, u64>,
    /// Calls answered with an injected `Throttling` (also counted in `errors`).
    pub throttled: u64,
    /// GetMetricData: `MetricDataQueries` received in calls that passed fault injection.
    pub queries: u64,
    /// GetMetricData: MetricStat queries answered (CloudWatch bills per metric requested).
    pub metrics_requested: u64,
    /// GetMetricData: datapoints returned; ListMetrics: metrics returned.
    pub datapoints_returned: u64,
    /// PutMetricData: datapoints stored (one per datum, Values arrays count once).
    pub datapoints_received: u64,
    /// Requests whose body arrived gzip-compressed (`Content-Encoding: gzip`).
    pub gzipped_requests: u64,
}

/// A snapshot of every counter (see [`crate::Emulator::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `GetMetricData` counters.
    pub get_metric_data: OpStats,
    /// `PutMetricData` counters.
    pub put_metric_data: OpStats,
    /// `ListMetrics` counters.
    pub list_metrics: OpStats,
    /// Requests for operations the emulator does not serve.
    pub unknown_operations: u64,
}

impl Stats {
    /// The counters of one operation.
    pub fn op(&self, operation: Operation) -> &OpStats {
        match operation {
            Operation::GetMetricData => &self.get_metric_data,
            Operation::PutMetricData => &self.put_metric_data,
            Operation::ListMetrics => &self.list_metrics,
        }
    }

    fn op_mut(&mut self, operation: Operation) -> &mut OpStats {
        match operation {
            Operation::GetMetricData => &mut self.get_metric_data,
            Operation::PutMetricData => &mut self.put_metric_data,
            Operation::ListMetrics => &mut self.list_metrics,
        }
    }
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Meter {
    stats: Mutex<Stats>,
}

impl Meter {
    fn with(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn reset(&self) {
        self.with(|s| *s = Stats::default());
    }

    pub fn call(&self, operation: Operation) {
        self.with(|s| s.op_mut(operation).calls += 1);
    }

    pub fn unknown_operation(&self) {
        self.with(|s| s.unknown_operations += 1);
    }

    pub fn error(&self, operation: Operation, code: &str) {
        self.with(|s| {
            let op = s.op_mut(operation);
            *op.errors.entry(code.to_string()).or_default() += 1;
            if code == crate::error::code::THROTTLING {
                op.throttled += 1;
            }
        });
    }

    /// Records what one GetMetricData call asked for and returned.
    pub fn get_metric_data(&self, queries: u64, metrics_requested: u64, datapoints: u64) {
        self.with(|s| {
            s.get_metric_data.queries += queries;
            s.get_metric_data.metrics_requested += metrics_requested;
            s.get_metric_data.datapoints_returned += datapoints;
        });
    }

    pub fn gzipped(&self, operation: Operation) {
        self.with(|s| s.op_mut(operation).gzipped_requests += 1);
    }

    pub fn put_metric_data(&self, datapoints: u64) {
        self.with(|s| s.put_metric_data.datapoints_received += datapoints);
    }

    pub fn list_metrics(&self, metrics: u64) {
        self.with(|s| s.list_metrics.datapoints_returned += metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_operation_and_resets() {
        let meter = Meter::default();
        meter.call(Operation::GetMetricData);
        meter.call(Operation::GetMetricData);
        meter.error(Operation::GetMetricData, "Throttling");
        meter.error(Operation::GetMetricData, "ValidationError");
        meter.get_metric_data(3, 2, 10);
        meter.put_metric_data(5);
        meter.list_metrics(7);
        let s = meter.snapshot();
        assert_eq!(s.get_metric_data.calls, 2);
        assert_eq!(s.get_metric_data.throttled, 1);
        assert_eq!(s.get_metric_data.errors.get("ValidationError"), Some(&1));
        assert_eq!(s.get_metric_data.queries, 3);
        assert_eq!(s.get_metric_data.metrics_requested, 2);
        assert_eq!(s.get_metric_data.datapoints_returned, 10);
        assert_eq!(s.put_metric_data.datapoints_received, 5);
        assert_eq!(s.op(Operation::ListMetrics).datapoints_returned, 7);
        meter.reset();
        assert_eq!(meter.snapshot(), Stats::default());
    }

    #[test]
    fn operation_names_round_trip() {
        for op in [
            Operation::GetMetricData,
            Operation::PutMetricData,
            Operation::ListMetrics,
        ] {
            assert_eq!(Operation::from_name(op.name()), Some(op));
        }
        assert_eq!(Operation::from_name("GetMetricStatistics"), None);
    }
}
