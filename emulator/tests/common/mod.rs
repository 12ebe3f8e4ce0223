//! Helpers shared by the test binaries: a real `aws-sdk-cloudwatch` client and aligned times.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::config::{Credentials, Region};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};

/// A real SDK client for `endpoint` with static test credentials in us-east-1. `max_attempts`
/// 1 disables retries; retries back off for only a few milliseconds so tests stay fast.
pub async fn client(endpoint: &str, max_attempts: u32) -> Client {
    // The SDK's HTTPS client needs a process-wide crypto provider when several are compiled in.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let retry = if max_attempts <= 1 {
        RetryConfig::disabled()
    } else {
        RetryConfig::standard()
            .with_max_attempts(max_attempts)
            .with_initial_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(20))
    };
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "AKIDEMULATORTEST",
            "emulator-secret",
            None,
            None,
            "tests",
        ))
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await;
    Client::new(&config)
}

/// Whole seconds since the epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A 5-minute-aligned instant about an hour ago: recent enough for every period CloudWatch keeps,
/// aligned so that 60 s and 300 s buckets start on it.
pub fn aligned_hour_ago() -> i64 {
    (now_secs() - 3600) / 300 * 300
}

pub fn dt(secs: i64) -> DateTime {
    DateTime::from_secs(secs)
}

/// A namespace nobody else uses in this run.
pub fn unique_namespace(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}/{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A dimension.
pub fn dim(name: &str, value: &str) -> Dimension {
    Dimension::builder().name(name).value(value).build()
}

/// A MetricStat query for `name` in namespace `ns`.
pub fn stat_query_in(
    ns: &str,
    id: &str,
    name: &str,
    dims: &[(&str, &str)],
    stat: &str,
    period: i32,
) -> MetricDataQuery {
    let metric = Metric::builder()
        .namespace(ns)
        .metric_name(name)
        .set_dimensions(Some(dims.iter().map(|(n, v)| dim(n, v)).collect()))
        .build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(metric)
                .period(period)
                .stat(stat)
                .build(),
        )
        .build()
}
