//! A wire-faithful AWS CloudWatch emulator for tests, demos and benchmarks.
//!
//! It serves `GetMetricData`, `PutMetricData` and `ListMetrics` over Smithy RPC v2 CBOR, the
//! protocol the current `aws-sdk-cloudwatch` speaks, so the unmodified SDK works against it with
//! only an endpoint URL. It follows CloudWatch's documented semantics (period bucketing, StartTime
//! rounding, statistics, percentiles, labels, pagination, validation and error codes), evaluates a
//! subset of metric math, and refuses what it does not implement with a 400 `EmulatorUnsupported`
//! instead of guessing. Fault injection and counters make client retry and batching behaviour
//! testable.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use cloudwatch_emulator::{Datum, Emulator, FaultKind};
//!
//! let emulator = Emulator::start().await?;
//! emulator.put(Datum::new("AWS/SQS", "ApproximateNumberOfMessagesVisible", 1250.0)
//!     .dimension("QueueName", "orders")
//!     .unit("Count"));
//! emulator.faults().inject(FaultKind::Throttling, 1);
//! // point aws_config at emulator.endpoint_url() ...
//! println!("{:?}", emulator.stats().get_metric_data);
//! # Ok(()) }
//! ```
//!
//! See `README.md` for the admin API, what is implemented and refused, and how it differs from
//! AWS and LocalStack.

mod admin;
mod error;
mod faults;
mod list;
mod math;
mod metering;
mod put;
mod query;
mod server;
mod stats;
mod store;
mod units;
mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

pub use faults::{ActiveWindow, FaultKind, Faults, PoisonCode, PoisonMarker};
pub use metering::{OpStats, Operation, Stats};
pub use server::Emulator;
pub use store::StorageResolution;

/// One datapoint to seed with [`Emulator::put`].
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    /// Namespace, e.g. `AWS/SQS` (seeding accepts the `AWS/` namespaces PutMetricData refuses).
    pub namespace: String,
    /// Metric name.
    pub metric_name: String,
    /// The full dimension set; order does not matter.
    pub dimensions: Vec<(String, String)>,
    /// When the value was observed.
    pub timestamp: SystemTime,
    /// The observed value.
    pub value: f64,
    /// A CloudWatch `StandardUnit`; `None` stores the unit `None`, as CloudWatch does.
    pub unit: Option<String>,
}

impl Datum {
    /// A datum observed now, with no dimensions and no unit.
    pub fn new(namespace: impl Into<String>, metric_name: impl Into<String>, value: f64) -> Self {
        Self {
            namespace: namespace.into(),
            metric_name: metric_name.into(),
            dimensions: Vec::new(),
            timestamp: SystemTime::now(),
            value,
            unit: None,
        }
    }

    /// Adds a dimension.
    pub fn dimension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.dimensions.push((name.into(), value.into()));
        self
    }

    /// Sets when the value was observed.
    pub fn at(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// Sets the unit.
    pub fn unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }
}

/// Milliseconds since the epoch (negative before 1970), the emulator's internal time.
pub(crate) fn epoch_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}
