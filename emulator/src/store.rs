//! In-memory metric storage: one series of samples per metric identity.
//!
//! A metric's identity is its namespace, name and full dimension set; dimensions are kept sorted
//! by name so that matching is exact and order-insensitive, as in CloudWatch. Each sample keeps
//! the statistic set (count, sum, min, max) and, when CloudWatch could compute percentiles from
//! it, the raw values with their counts.

use std::collections::HashMap;
use std::time::SystemTime;

/// How finely CloudWatch keeps a datapoint's timestamp (`StorageResolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageResolution {
    /// 60: standard resolution; timestamps are kept to the minute.
    #[default]
    Standard,
    /// 1: high resolution; timestamps are kept to the second.
    High,
}

impl StorageResolution {
    fn granularity_ms(self) -> i64 {
        match self {
            Self::Standard => 60_000,
            Self::High => 1_000,
        }
    }
}

/// The identity of a metric: namespace, name and the full, name-sorted dimension set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MetricKey {
    pub namespace: String,
    pub name: String,
    pub dimensions: Vec<(String, String)>,
}

impl MetricKey {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        mut dimensions: Vec<(String, String)>,
    ) -> Self {
        dimensions.sort();
        Self {
            namespace: namespace.into(),
            name: name.into(),
            dimensions,
        }
    }
}

/// The aggregate of what one PutMetricData datum (or one seeded point) contributed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Aggregate {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// `(value, count)` pairs when percentiles can be computed from this datum: always for single
    /// values and Values/Counts arrays; for statistic sets only when SampleCount is 1 or
    /// Minimum == Maximum (CloudWatch's documented rule).
    pub values: Option<Vec<(f64, f64)>>,
}

impl Aggregate {
    /// A single observed value.
    pub fn single(value: f64) -> Self {
        Self {
            count: 1.0,
            sum: value,
            min: value,
            max: value,
            values: Some(vec![(value, 1.0)]),
        }
    }

    /// `Values` with their `Counts` (each count defaults to 1). `pairs` must not be empty.
    pub fn from_values(pairs: Vec<(f64, f64)>) -> Self {
        let count = pairs.iter().map(|(_, c)| c).sum();
        let sum = pairs.iter().map(|(v, c)| v * c).sum();
        let min = pairs.iter().map(|(v, _)| *v).fold(f64::INFINITY, f64::min);
        let max = pairs
            .iter()
            .map(|(v, _)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        Self {
            count,
            sum,
            min,
            max,
            values: Some(pairs),
        }
    }

    /// A `StatisticValues` set.
    pub fn from_statistic_set(count: f64, sum: f64, min: f64, max: f64) -> Self {
        #[allow(clippy::float_cmp)] // the documented rule is exact equality
        let values = if count == 1.0 {
            Some(vec![(sum, 1.0)])
        } else if min == max {
            Some(vec![(min, count)])
        } else {
            None
        };
        Self {
            count,
            sum,
            min,
            max,
            values,
        }
    }
}

/// One stored datapoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Milliseconds since the epoch, already truncated to the storage resolution.
    pub timestamp_ms: i64,
    pub unit: String,
    pub aggregate: Aggregate,
}

#[derive(Debug, Default)]
struct Series {
    /// Sorted by timestamp.
    samples: Vec<Sample>,
    /// When a datapoint last arrived (for ListMetrics `RecentlyActive`).
    last_ingested: Option<SystemTime>,
}

/// Every metric the emulator knows.
#[derive(Debug, Default)]
pub(crate) struct Store {
    series: HashMap<MetricKey, Series>,
}

impl Store {
    /// Adds one datapoint.
    pub fn insert(
        &mut self,
        key: MetricKey,
        timestamp_ms: i64,
        resolution: StorageResolution,
        unit: Option<&str>,
        aggregate: Aggregate,
        now: SystemTime,
    ) {
        let granularity = resolution.granularity_ms();
        let sample = Sample {
            timestamp_ms: timestamp_ms.div_euclid(granularity) * granularity,
            unit: unit.unwrap_or("None").to_string(),
            aggregate,
        };
        let series = self.series.entry(key).or_default();
        let at = series
            .samples
            .partition_point(|s| s.timestamp_ms <= sample.timestamp_ms);
        series.samples.insert(at, sample);
        series.last_ingested = Some(now);
    }

    /// Samples of exactly this metric with `start_ms <= timestamp < end_ms`, oldest first.
    pub fn range(&self, key: &MetricKey, start_ms: i64, end_ms: i64) -> &[Sample] {
        let Some(series) = self.series.get(key) else {
            return &[];
        };
        let from = series
            .samples
            .partition_point(|s| s.timestamp_ms < start_ms);
        let to = series.samples.partition_point(|s| s.timestamp_ms < end_ms);
        if from >= to {
            &[]
        } else {
            &series.samples[from..to]
        }
    }

    /// Every metric with when it last received data.
    pub fn metrics(&self) -> impl Iterator<Item = (&MetricKey, Option<SystemTime>, usize)> {
        self.series
            .iter()
            .map(|(k, s)| (k, s.last_ingested, s.samples.len()))
    }

    /// Number of stored samples over all metrics.
    pub fn sample_count(&self) -> usize {
        self.series.values().map(|s| s.samples.len()).sum()
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(dims: &[(&str, &str)]) -> MetricKey {
        MetricKey::new(
            "NS",
            "M",
            dims.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn dimension_order_does_not_change_identity() {
        assert_eq!(
            key(&[("A", "1"), ("B", "2")]),
            key(&[("B", "2"), ("A", "1")])
        );
        assert_ne!(key(&[("A", "1")]), key(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn standard_resolution_truncates_to_the_minute_and_high_to_the_second() {
        let mut store = Store::default();
        let now = SystemTime::now();
        store.insert(
            key(&[]),
            60_500 + 59_000,
            StorageResolution::Standard,
            None,
            Aggregate::single(1.0),
            now,
        );
        store.insert(
            key(&[("A", "1")]),
            61_750,
            StorageResolution::High,
            Some("Count"),
            Aggregate::single(2.0),
            now,
        );
        assert_eq!(store.range(&key(&[]), 0, i64::MAX)[0].timestamp_ms, 60_000);
        let high = &store.range(&key(&[("A", "1")]), 0, i64::MAX)[0];
        assert_eq!(high.timestamp_ms, 61_000);
        assert_eq!(high.unit, "Count");
        assert_eq!(store.range(&key(&[]), 0, i64::MAX)[0].unit, "None");
    }

    #[test]
    fn range_is_start_inclusive_end_exclusive_and_sorted() {
        let mut store = Store::default();
        let now = SystemTime::now();
        for t in [180_000, 60_000, 120_000] {
            store.insert(
                key(&[]),
                t,
                StorageResolution::Standard,
                None,
                Aggregate::single(t as f64),
                now,
            );
        }
        let got: Vec<i64> = store
            .range(&key(&[]), 60_000, 180_000)
            .iter()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(got, vec![60_000, 120_000]);
        assert!(store.range(&key(&[("X", "y")]), 0, i64::MAX).is_empty());
        assert!(store.range(&key(&[]), 500_000, 100).is_empty());
    }

    #[test]
    fn statistic_sets_keep_values_only_when_percentiles_are_defined() {
        assert!(
            Aggregate::from_statistic_set(10.0, 55.0, 1.0, 10.0)
                .values
                .is_none()
        );
        assert_eq!(
            Aggregate::from_statistic_set(4.0, 20.0, 5.0, 5.0).values,
            Some(vec![(5.0, 4.0)])
        );
        assert_eq!(
            Aggregate::from_statistic_set(1.0, 7.0, 7.0, 7.0).values,
            Some(vec![(7.0, 1.0)])
        );
        let v = Aggregate::from_values(vec![(1.0, 2.0), (10.0, 4.0)]);
        assert_eq!((v.count, v.sum, v.min, v.max), (6.0, 42.0, 1.0, 10.0));
    }
}
