//! The limits and patterns of the definition schema, in one leaf that every other part of
//! [`crate::definition`] (and the batcher in [`crate::source::cloudwatch`]) imports: CloudWatch's
//! limits, the adapter's own ranges, and the patterns and CEL rules the CRD's schema is built
//! from, so validation, the schema and the batcher cannot disagree. It imports nothing from the
//! rest of the crate.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

/// The HPA reads values as int64 milli-units, so anything at or above this cannot be represented.
pub const MAX_HPA_VALUE: f64 = 9.2e15;
/// The longest refresh interval accepted: a value refreshed less than daily is no autoscaling
/// signal (and every duration the engine computes from it stays far from overflow).
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The longest max age accepted.
pub const MAX_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// CloudWatch's limit of queries in one `GetMetricData` call.
pub const MAX_QUERIES: usize = 500;
/// CloudWatch's limit on a query id's length.
pub const MAX_ID_LENGTH: usize = 255;
/// CloudWatch's limit on an expression's length.
pub const MAX_EXPRESSION_LENGTH: usize = 2048;
/// CloudWatch's limit on a dimension value's length.
pub const MAX_DIMENSION_VALUE: usize = 1024;
/// The longest prefix the batcher puts before a query id (`s499_`: the series' slot in a call of
/// at most [`MAX_QUERIES`] queries), in ids and in the expressions that refer to them. Every
/// length limit is checked with it counted, so a query that fits alone fits in any batch.
pub const MAX_BATCH_PREFIX: usize = 5;
/// The longest period accepted: a day (a slower signal is no use for autoscaling).
pub const MAX_PERIOD: i64 = 86_400;
/// Default look-back window when a definition does not set one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// The longest end offset accepted: beyond an hour the value is no use for autoscaling.
pub const MAX_END_OFFSET: Duration = Duration::from_secs(3600);
/// The longest look-back window accepted (CloudWatch keeps 1-minute data for 15 days, but an
/// autoscaling signal older than a day is a configuration mistake).
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// CloudWatch's rule for `MetricDataQuery.Id` (also the CRD schema's pattern).
pub const QUERY_ID_PATTERN: &str = r"^[a-z][a-zA-Z0-9_]*$";
/// The statistics CloudWatch accepts: the basic ones, percentiles and the trimmed/windsorized
/// family (also the CRD schema's pattern, so it is RE2-compatible).
pub const STAT_PATTERN: &str = r"^(SampleCount|Average|Sum|Minimum|Maximum|IQM|[pP]\d{1,2}(\.\d{1,10})?|[pP]100|(tm|wm|tc|ts|pr|TM|WM|TC|TS|PR)(\d{1,2}(\.\d{1,10})?|100)|(tm|wm|tc|ts|pr|TM|WM|TC|TS|PR)\(\s*[-\d.%]*\s*:\s*[-\d.%]*\s*\))$";
/// The CEL rule for a period: 1, 5, 10, 20, 30 or a positive multiple of 60 up to a day (what
/// [`check_period`] checks), enforced by the apiserver at apply time.
pub const PERIOD_RULE: &str =
    "self in [1, 5, 10, 20, 30] || (self > 0 && self <= 86400 && self % 60 == 0)";
/// What the apiserver says when [`PERIOD_RULE`] fails.
pub const PERIOD_RULE_MESSAGE: &str =
    "period must be 1, 5, 10, 20, 30 or a multiple of 60 seconds, at most 86400";

/// The units CloudWatch accepts in `MetricStat.Unit`.
pub const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// An AWS region name.
pub const REGION_PATTERN: &str = r"^[a-z]{2}(-[a-z]+)+-\d+$";
/// An IAM role ARN.
pub const ROLE_ARN_PATTERN: &str = r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$";
/// A 12-digit AWS account id.
pub const ACCOUNT_ID_PATTERN: &str = r"^\d{12}$";
/// What `humantime` accepts, loosely: numbers with unit words (`90s`, `5m`, `1h 30m`), at most
/// six terms of at most nine digits, so no string the apiserver accepts can hold an absurd
/// number. The server parses it exactly and range-checks each field (CEL cannot parse
/// humantime's units); the schema catches the obvious mistakes at apply time.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]{1,9}\s*[a-zA-Z]{1,7}\s*){1,6}$";

/// A 12-digit AWS account id (CloudWatch's `accountId` and SQS's alike).
pub(crate) static ACCOUNT_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(ACCOUNT_ID_PATTERN).expect("static regex"));

/// Why a period is refused (see [`check_period`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// Longer than [`MAX_PERIOD`].
    #[error("{period} is longer than the {MAX_PERIOD} s (one day) maximum")]
    TooLong {
        /// The period asked for, in seconds.
        period: i64,
    },
    /// Not a period CloudWatch accepts.
    #[error("{period} is not a period CloudWatch accepts (1, 5, 10, 20, 30 or a multiple of 60)")]
    NotAccepted {
        /// The period asked for, in seconds.
        period: i64,
    },
}

/// CloudWatch accepts 1, 5, 10, 20 and 30 s (high-resolution) or any multiple of 60; the adapter
/// takes up to a day.
pub fn check_period(period: i64) -> Result<(), PeriodError> {
    if matches!(period, 1 | 5 | 10 | 20 | 30)
        || (period > 0 && period <= MAX_PERIOD && period % 60 == 0)
    {
        Ok(())
    } else if period > MAX_PERIOD {
        Err(PeriodError::TooLong { period })
    } else {
        Err(PeriodError::NotAccepted { period })
    }
}
