//! Statistics over the samples of one period: Sum, Average, Minimum, Maximum, SampleCount and
//! percentiles.
//!
//! Percentiles use the nearest-rank method over the raw values (weighted by their counts): the
//! p-th percentile is the smallest value such that at least p% of the samples are less than or
//! equal to it. CloudWatch documents no exact algorithm (it answers from approximate sketches),
//! so tests against the emulator should use datasets where nearest-rank is unambiguous. As AWS
//! documents, a percentile is unavailable (the period is omitted) when any value is negative or
//! when a statistic set with SampleCount > 1 and Minimum != Maximum contributed to the period.

use crate::store::Aggregate;

/// A statistic the emulator can compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stat {
    SampleCount,
    Sum,
    Average,
    Minimum,
    Maximum,
    /// `pNN` / `pNN.NN`: the percentile, 0..=100.
    Percentile(f64),
}

/// Why a `Stat` string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatError {
    /// Not a CloudWatch statistic at all.
    Invalid,
    /// A CloudWatch extended statistic (trimmed mean, IQM, ...) the emulator does not compute.
    Unsupported,
}

impl Stat {
    pub fn parse(s: &str) -> Result<Self, StatError> {
        match s {
            "SampleCount" => return Ok(Self::SampleCount),
            "Sum" => return Ok(Self::Sum),
            "Average" => return Ok(Self::Average),
            "Minimum" => return Ok(Self::Minimum),
            "Maximum" => return Ok(Self::Maximum),
            _ => {}
        }
        if let Some(rest) = s.strip_prefix('p') {
            return parse_percentile(rest).map(Self::Percentile);
        }
        // CloudWatch's other extended statistics: tm99, wm90, tc90, ts90, TM(10%:90%), WM(..),
        // PR(..), TC(..), TS(..), IQM.
        let lower = s.to_ascii_lowercase();
        let extended = ["tm", "wm", "tc", "ts", "pr("]
            .iter()
            .any(|prefix| lower.starts_with(prefix))
            || s == "IQM";
        if extended {
            Err(StatError::Unsupported)
        } else {
            Err(StatError::Invalid)
        }
    }
}

fn parse_percentile(rest: &str) -> Result<f64, StatError> {
    let (whole, fraction) = match rest.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || whole.len() > 3 || fraction.is_some_and(|f| !digits(f) || f.len() > 10) {
        return Err(StatError::Invalid);
    }
    let value: f64 = rest.parse().map_err(|_| StatError::Invalid)?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(StatError::Invalid)
    }
}

/// Computes `stat` over the aggregates that fell into one period. `None` when the statistic is
/// undefined for them (no samples, or a percentile CloudWatch cannot compute).
pub(crate) fn compute<'a>(
    stat: Stat,
    aggregates: impl IntoIterator<Item = &'a Aggregate>,
) -> Option<f64> {
    let aggregates: Vec<&Aggregate> = aggregates.into_iter().collect();
    if aggregates.is_empty() {
        return None;
    }
    let count: f64 = aggregates.iter().map(|a| a.count).sum();
    let sum: f64 = aggregates.iter().map(|a| a.sum).sum();
    let value = match stat {
        Stat::SampleCount => count,
        Stat::Sum => sum,
        Stat::Average => {
            if count <= 0.0 {
                return None;
            }
            sum / count
        }
        Stat::Minimum => aggregates
            .iter()
            .map(|a| a.min)
            .fold(f64::INFINITY, f64::min),
        Stat::Maximum => aggregates
            .iter()
            .map(|a| a.max)
            .fold(f64::NEG_INFINITY, f64::max),
        Stat::Percentile(p) => {
            let mut values = Vec::new();
            for aggregate in &aggregates {
                values.extend_from_slice(aggregate.values.as_deref()?);
            }
            percentile(&mut values, p)?
        }
    };
    value.is_finite().then_some(value)
}

/// Weighted nearest-rank percentile of `(value, count)` pairs.
fn percentile(values: &mut [(f64, f64)], p: f64) -> Option<f64> {
    if values.iter().any(|(v, _)| *v < 0.0) {
        return None;
    }
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = values.iter().map(|(_, c)| c).sum();
    if total <= 0.0 {
        return None;
    }
    if p <= 0.0 {
        return values.first().map(|(v, _)| *v);
    }
    // The rank is computed in f64; the small tolerance keeps e.g. p50 of 10 samples at rank 5
    // instead of rounding up to 6 through representation error.
    let rank = ((p / 100.0) * total - 1e-9).ceil().max(1.0);
    let mut cumulative = 0.0;
    for (value, count) in values.iter() {
        cumulative += count;
        if cumulative + 1e-9 >= rank {
            return Some(*value);
        }
    }
    values.last().map(|(v, _)| *v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_standard_and_percentile_statistics() {
        let table = [
            ("Sum", Ok(Stat::Sum)),
            ("Average", Ok(Stat::Average)),
            ("Minimum", Ok(Stat::Minimum)),
            ("Maximum", Ok(Stat::Maximum)),
            ("SampleCount", Ok(Stat::SampleCount)),
            ("p99", Ok(Stat::Percentile(99.0))),
            ("p99.9", Ok(Stat::Percentile(99.9))),
            ("p0", Ok(Stat::Percentile(0.0))),
            ("p100", Ok(Stat::Percentile(100.0))),
            ("p50.25", Ok(Stat::Percentile(50.25))),
            ("p101", Err(StatError::Invalid)),
            ("p", Err(StatError::Invalid)),
            ("p9x", Err(StatError::Invalid)),
            ("p.5", Err(StatError::Invalid)),
            ("sum", Err(StatError::Invalid)),
            ("Avg", Err(StatError::Invalid)),
            ("", Err(StatError::Invalid)),
            ("tm99", Err(StatError::Unsupported)),
            ("TM(10%:90%)", Err(StatError::Unsupported)),
            ("IQM", Err(StatError::Unsupported)),
            ("wm90", Err(StatError::Unsupported)),
            ("PR(:300)", Err(StatError::Unsupported)),
        ];
        for (input, want) in table {
            assert_eq!(Stat::parse(input), want, "{input}");
        }
    }

    fn singles(values: &[f64]) -> Vec<Aggregate> {
        values.iter().map(|v| Aggregate::single(*v)).collect()
    }

    #[test]
    fn standard_statistics() {
        let data = singles(&[0.0, 2.0, 4.0, 3.5, 7.0, 100.0]);
        assert_eq!(compute(Stat::Sum, &data), Some(116.5));
        assert_eq!(compute(Stat::SampleCount, &data), Some(6.0));
        assert_eq!(compute(Stat::Minimum, &data), Some(0.0));
        assert_eq!(compute(Stat::Maximum, &data), Some(100.0));
        let avg = compute(Stat::Average, &data).unwrap();
        assert!((avg - 19.416_666_666_666_668).abs() < 1e-12);
        assert_eq!(compute(Stat::Sum, &[]), None);
    }

    #[test]
    fn statistic_sets_combine_with_single_values() {
        // AWS-recorded: 11 plus {SampleCount 10, Sum 55, Min 1, Max 10} gives these.
        let data = vec![
            Aggregate::single(11.0),
            Aggregate::from_statistic_set(10.0, 55.0, 1.0, 10.0),
        ];
        assert_eq!(compute(Stat::Sum, &data), Some(66.0));
        assert_eq!(compute(Stat::SampleCount, &data), Some(11.0));
        assert_eq!(compute(Stat::Minimum, &data), Some(1.0));
        assert_eq!(compute(Stat::Maximum, &data), Some(11.0));
        assert_eq!(compute(Stat::Average, &data), Some(6.0));
        // A mixed statistic set makes percentiles unavailable.
        assert_eq!(compute(Stat::Percentile(50.0), &data), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let data = singles(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!(compute(Stat::Percentile(50.0), &data), Some(50.0));
        assert_eq!(compute(Stat::Percentile(90.0), &data), Some(90.0));
        assert_eq!(compute(Stat::Percentile(99.0), &data), Some(99.0));
        assert_eq!(compute(Stat::Percentile(99.5), &data), Some(100.0));
        assert_eq!(compute(Stat::Percentile(100.0), &data), Some(100.0));
        assert_eq!(compute(Stat::Percentile(0.0), &data), Some(1.0));
        assert_eq!(compute(Stat::Percentile(0.5), &data), Some(1.0));
        let ten = singles(&[10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]);
        assert_eq!(compute(Stat::Percentile(50.0), &ten), Some(5.0));
        assert_eq!(compute(Stat::Percentile(51.0), &ten), Some(6.0));
    }

    #[test]
    fn weighted_percentiles_use_counts() {
        // Values [1, 10] with Counts [2, 4]: 1,1,10,10,10,10.
        let data = vec![Aggregate::from_values(vec![(1.0, 2.0), (10.0, 4.0)])];
        assert_eq!(compute(Stat::Percentile(33.0), &data), Some(1.0));
        assert_eq!(compute(Stat::Percentile(34.0), &data), Some(10.0));
        // A statistic set whose min equals max counts as that many equal values.
        let data = vec![
            Aggregate::from_statistic_set(3.0, 15.0, 5.0, 5.0),
            Aggregate::single(100.0),
        ];
        assert_eq!(compute(Stat::Percentile(75.0), &data), Some(5.0));
        assert_eq!(compute(Stat::Percentile(76.0), &data), Some(100.0));
    }

    #[test]
    fn percentiles_of_negative_values_are_unavailable() {
        let data = singles(&[-1.0, 2.0]);
        assert_eq!(compute(Stat::Percentile(50.0), &data), None);
        assert_eq!(compute(Stat::Minimum, &data), Some(-1.0));
    }
}
