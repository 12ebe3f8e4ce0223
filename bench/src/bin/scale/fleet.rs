//! The simulated cluster: tenants, their series, the HPAs that read them, the definitions file
//! the adapter serves them from, and the CloudWatch data behind them.
//!
//! Series `s` (of `series`) belongs to tenant `s % tenants` and is that tenant's queue
//! `q<s / tenants>`, so consecutive series belong to different tenants. Tenant `t` is one
//! definitions-file metric, `tenant-<t>` (the adapter's unit of fair share for the file), read by
//! HPAs in namespace `tenant-<t>`. HPA `h` reads the series `s` with `s % hpas == h` (several
//! each when there are more series than HPAs, always of one tenant since `hpas` is a multiple of
//! `tenants`), or series `h % series` (HPAs share series when there are fewer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::ensure;
use cloudwatch_emulator::Datum;

/// The CloudWatch namespace the series live in.
const NAMESPACE: &str = "Bench/Scale";
/// Their metric name; the dimensions `Tenant` and `Queue` tell them apart.
const METRIC: &str = "Depth";

/// The shape of one size of the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    /// Distinct tenants (definitions-file metrics).
    pub tenants: usize,
    /// Active series.
    pub series: usize,
    /// Simulated HPAs.
    pub hpas: usize,
    /// The metric's period in seconds, which is also its refresh interval.
    pub period: u64,
}

impl Fleet {
    /// A fleet, checked.
    pub fn new(tenants: usize, series: usize, hpas: usize, period: u64) -> anyhow::Result<Fleet> {
        ensure!(
            tenants > 0 && series > 0 && hpas > 0,
            "--tenants, --hpas and every size must be at least 1"
        );
        ensure!(
            hpas.is_multiple_of(tenants),
            "--hpas ({hpas}) must be a multiple of --tenants ({tenants}), so each HPA reads one tenant's series"
        );
        ensure!(
            matches!(period, 1 | 5 | 10 | 20 | 30) || (period > 0 && period.is_multiple_of(60)),
            "--refresh-interval {period} is not a CloudWatch period (1, 5, 10, 20, 30 or a multiple of 60)"
        );
        Ok(Fleet {
            tenants,
            series,
            hpas,
            period,
        })
    }

    /// Tenants that have at least one series.
    pub fn active_tenants(&self) -> usize {
        self.tenants.min(self.series)
    }

    /// The refresh interval.
    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.period)
    }

    /// The definitions file: one metric per tenant, each reading its queues' `Depth`.
    pub fn definitions(&self) -> String {
        let mut yaml = String::from("metrics:\n");
        for tenant in 0..self.tenants {
            yaml.push_str(&format!(
                "  - name: tenant-{tenant:04}\n    queries:\n      - id: depth\n        metricStat:\n          metric:\n            namespace: {NAMESPACE}\n            metricName: {METRIC}\n            dimensions: [{{name: Tenant, value: \"t{tenant:04}\"}}, {{name: Queue, value: \"${{Queue}}\"}}]\n          period: {}\n          stat: Average\n",
                self.period
            ));
        }
        yaml
    }

    /// Series `s`'s tenant and queue number.
    fn place(&self, series: usize) -> (usize, usize) {
        (series % self.tenants, series / self.tenants)
    }

    /// The path and query an HPA asks for series `s` with (after the API server's address).
    pub fn path(&self, series: usize) -> String {
        let (tenant, queue) = self.place(series);
        format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/tenant-{tenant:04}/tenant-{tenant:04}?labelSelector=Queue%3Dq{queue}"
        )
    }

    /// The series HPA `h` reads, in the order it reads them.
    pub fn hpa_series(&self, hpa: usize) -> Vec<usize> {
        if self.series >= self.hpas {
            (hpa..self.series).step_by(self.hpas).collect()
        } else {
            vec![hpa % self.series]
        }
    }

    /// The datapoint of series `s` for the bucket starting at `bucket` (seconds since the epoch),
    /// stamped at the bucket's start.
    pub fn datum(&self, series: usize, bucket: u64) -> Datum {
        let (tenant, queue) = self.place(series);
        Datum {
            namespace: NAMESPACE.into(),
            metric_name: METRIC.into(),
            dimensions: vec![
                ("Tenant".into(), format!("t{tenant:04}")),
                ("Queue".into(), format!("q{queue}")),
            ],
            timestamp: UNIX_EPOCH + Duration::from_secs(bucket),
            value: (series % 997) as f64 + 0.5,
            unit: Some("Count".into()),
        }
    }

    /// GetMetricData calls one refresh of every series needs: ceil(series / 500).
    pub fn calls_per_refresh(&self) -> usize {
        self.series.div_ceil(500)
    }
}

/// Seconds since the epoch.
pub fn epoch_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Milliseconds since the epoch.
pub fn epoch_ms(time: SystemTime) -> i64 {
    i64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// The first wall-clock multiple of `period` seconds strictly after `time`: when the adapter's
/// refresh grid (and a new CloudWatch bucket) next begins.
pub fn next_tick(time: SystemTime, period: u64) -> SystemTime {
    let period_ms = u128::from(period.max(1)) * 1000;
    let now_ms = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let next = (now_ms / period_ms + 1) * period_ms;
    UNIX_EPOCH + Duration::from_millis(u64::try_from(next).unwrap_or(u64::MAX))
}

/// An RFC 3339 UTC timestamp as the adapter writes them (`2026-11-21T12:44:00Z`, optionally
/// with a fraction), in milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: i64 = date.next()?.parse().ok()?;
    let day: i64 = date.next()?.parse().ok()?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut clock = clock.splitn(3, ':');
    let hour: i64 = clock.next()?.parse().ok()?;
    let minute: i64 = clock.next()?.parse().ok()?;
    let second: i64 = clock.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis = match fraction {
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            let padded = format!("{digits:0<3}");
            padded[..3].parse::<i64>().ok()?
        }
        Some(_) => return None,
        None => 0,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn timestamps_parse_to_the_epoch_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T12:44:00Z"),
            Some(1_795_265_040_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T23:59:59.5Z"),
            Some(1_709_251_199_500)
        );
        for bad in [
            "2026-11-21T12:44:00",
            "2026-13-01T00:00:00Z",
            "x",
            "2026-11-21T12:44:00.Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_series_is_read_by_exactly_one_hpa_of_its_own_tenant() {
        let fleet = Fleet::new(10, 1000, 100, 30).unwrap();
        let mut readers = vec![0; fleet.series];
        for hpa in 0..fleet.hpas {
            let series = fleet.hpa_series(hpa);
            assert_eq!(series.len(), 10);
            for s in series {
                readers[s] += 1;
                assert_eq!(
                    s % fleet.tenants,
                    hpa % fleet.tenants,
                    "HPA {hpa} reads another tenant's series {s}"
                );
            }
        }
        assert!(readers.iter().all(|&n| n == 1));
    }

    #[test]
    fn with_fewer_series_than_hpas_the_hpas_share_them_evenly() {
        let fleet = Fleet::new(10, 50, 100, 30).unwrap();
        let mut readers = vec![0; fleet.series];
        for hpa in 0..fleet.hpas {
            for s in fleet.hpa_series(hpa) {
                readers[s] += 1;
            }
        }
        assert!(readers.iter().all(|&n| n == 2));
    }

    #[test]
    fn series_are_distinct_and_spread_over_tenants() {
        let fleet = Fleet::new(1000, 100_000, 10_000, 30).unwrap();
        let paths: std::collections::HashSet<String> =
            (0..fleet.series).map(|s| fleet.path(s)).collect();
        assert_eq!(paths.len(), fleet.series);
        assert!(
            fleet
                .path(1)
                .contains("tenant-0001/tenant-0001?labelSelector=Queue%3Dq0")
        );
        assert!(
            fleet
                .path(1001)
                .contains("tenant-0001/tenant-0001?labelSelector=Queue%3Dq1")
        );
        assert_eq!(fleet.calls_per_refresh(), 200);
        let datum = fleet.datum(1001, 60);
        assert_eq!(
            datum.dimensions,
            [
                ("Tenant".to_string(), "t0001".to_string()),
                ("Queue".to_string(), "q1".to_string())
            ]
        );
    }

    #[test]
    fn bad_shapes_are_refused() {
        let refusal = |result: anyhow::Result<Fleet>| result.err().map(|e| e.to_string());
        assert!(
            refusal(Fleet::new(1000, 10, 1500, 30))
                .is_some_and(|e| e.contains("multiple of --tenants"))
        );
        assert!(refusal(Fleet::new(0, 10, 10, 30)).is_some_and(|e| e.contains("at least 1")));
        assert!(
            refusal(Fleet::new(10, 10, 10, 45))
                .is_some_and(|e| e.contains("not a CloudWatch period"))
        );
    }

    #[test]
    fn the_next_tick_is_strictly_later_and_on_the_grid() {
        let at = UNIX_EPOCH + Duration::from_secs(90);
        assert_eq!(next_tick(at, 30), UNIX_EPOCH + Duration::from_secs(120));
        let at = UNIX_EPOCH + Duration::from_millis(90_001);
        assert_eq!(next_tick(at, 30), UNIX_EPOCH + Duration::from_secs(120));
    }
}
