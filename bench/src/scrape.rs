//! The adapter's `/metrics` text (Prometheus exposition, as prometheus-client writes it), parsed
//! once per scrape: samples by name and labels, sums over a family, and histogram buckets with
//! the quantile bounds a benchmark reports.

use std::collections::BTreeMap;

/// One scrape: every sample line, `name{labels}` -> value.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parse exposition text; comment lines and lines without a number are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse::<f64>().ok()?))
            })
            .collect();
        Scrape { samples }
    }

    /// The sample named exactly `series` (`name` or `name{labels}` as written), 0 when absent.
    pub fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of every sample of metric `name` (whatever its labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .range(name.to_string()..)
            .take_while(|(series, _)| series.starts_with(name))
            .filter(|(series, _)| {
                let rest = &series[name.len()..];
                rest.is_empty() || rest.starts_with('{')
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The buckets of histogram `name` (without the `_bucket` suffix).
    pub fn histogram(&self, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{");
        let mut bounds: Vec<(f64, u64)> = self
            .samples
            .range(prefix.clone()..)
            .take_while(|(series, _)| series.starts_with(&prefix))
            .filter_map(|(series, count)| {
                let le = series.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, *count as u64))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets { bounds }
    }
}

/// A histogram's cumulative buckets: (upper bound, observations at or below it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Sorted by bound; the last is `+Inf` (all observations).
    pub bounds: Vec<(f64, u64)>,
}

impl Buckets {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.bounds.last().map_or(0, |(_, count)| *count)
    }

    /// What was observed since `earlier` (a scrape of the same process).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let bounds = self
            .bounds
            .iter()
            .map(|(bound, count)| {
                let before = earlier
                    .bounds
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0, |(_, c)| *c);
                (*bound, count.saturating_sub(before))
            })
            .collect();
        Buckets { bounds }
    }

    /// Add another process's observations (same bucket layout).
    pub fn add(&mut self, other: &Buckets) {
        if self.bounds.is_empty() {
            self.bounds = other.bounds.clone();
            return;
        }
        for (bound, count) in &mut self.bounds {
            if let Some((_, more)) = other.bounds.iter().find(|(b, _)| b == bound) {
                *count += more;
            }
        }
    }

    /// The upper bound of the bucket holding quantile `q`: at least a fraction `q` of the
    /// observations were at or below it (`None` without observations).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let needed = (q * total as f64).ceil() as u64;
        self.bounds
            .iter()
            .find(|(_, count)| *count >= needed)
            .map(|(bound, _)| *bound)
    }

    /// Observations above `bound` (which must be one of the bucket bounds).
    pub fn above(&self, bound: f64) -> u64 {
        let at_or_below = self
            .bounds
            .iter()
            .find(|(b, _)| *b == bound)
            .map_or(0, |(_, c)| *c);
        self.count().saturating_sub(at_or_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP cloudwatch_adapter_cloudwatch_calls GetMetricData calls by outcome\n\
# TYPE cloudwatch_adapter_cloudwatch_calls counter\n\
cloudwatch_adapter_cloudwatch_calls_total{outcome=\"ok\"} 7\n\
cloudwatch_adapter_cloudwatch_calls_total{outcome=\"throttled\"} 2\n\
cloudwatch_adapter_cloudwatch_calls_per_second 9\n\
cloudwatch_adapter_leader_election_is_leader 1\n\
cloudwatch_adapter_peer_stream_lag_seconds_sum 0.5\n\
cloudwatch_adapter_peer_stream_lag_seconds_count 100\n\
cloudwatch_adapter_peer_stream_lag_seconds_bucket{le=\"0.01\"} 90\n\
cloudwatch_adapter_peer_stream_lag_seconds_bucket{le=\"0.1\"} 98\n\
cloudwatch_adapter_peer_stream_lag_seconds_bucket{le=\"1.0\"} 99\n\
cloudwatch_adapter_peer_stream_lag_seconds_bucket{le=\"+Inf\"} 100\n\
# EOF\n";

    #[test]
    fn samples_are_found_by_exact_name_and_summed_by_family_only() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(
            scrape.value("cloudwatch_adapter_leader_election_is_leader"),
            1.0
        );
        assert_eq!(
            scrape.value("cloudwatch_adapter_cloudwatch_calls_total{outcome=\"ok\"}"),
            7.0
        );
        // The family's samples, not another metric whose name merely starts the same way.
        assert_eq!(scrape.sum("cloudwatch_adapter_cloudwatch_calls_total"), 9.0);
        assert_eq!(scrape.value("absent"), 0.0);
    }

    #[test]
    fn quantile_bounds_come_from_the_cumulative_buckets() {
        let buckets = Scrape::parse(TEXT).histogram("cloudwatch_adapter_peer_stream_lag_seconds");
        assert_eq!(buckets.count(), 100);
        assert_eq!(buckets.quantile_bound(0.5), Some(0.01));
        assert_eq!(buckets.quantile_bound(0.98), Some(0.1));
        assert_eq!(buckets.quantile_bound(0.99), Some(1.0));
        assert_eq!(buckets.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(buckets.above(1.0), 1);
        assert_eq!(Buckets::default().quantile_bound(0.99), None);
    }

    #[test]
    fn deltas_and_sums_of_buckets() {
        let later = Scrape::parse(TEXT).histogram("cloudwatch_adapter_peer_stream_lag_seconds");
        let earlier = Scrape::parse(
            "x_bucket{le=\"0.01\"} 40\nx_bucket{le=\"0.1\"} 40\nx_bucket{le=\"1.0\"} 40\nx_bucket{le=\"+Inf\"} 40\n",
        )
        .histogram("x");
        let delta = later.since(&earlier);
        assert_eq!(delta.count(), 60);
        // 50 of the 60 new observations were at most 10 ms, 58 at most 100 ms.
        assert_eq!(delta.quantile_bound(0.8), Some(0.01));
        assert_eq!(delta.quantile_bound(0.9), Some(0.1));
        let mut total = Buckets::default();
        total.add(&delta);
        total.add(&delta);
        assert_eq!(total.count(), 120);
    }
}
