//! Kubernetes quantity strings for metric values.
//!
//! The HPA parses the value as a `resource.Quantity` and reads its milli-value as int64, so the
//! value must stay below ~9.2e15 and fractions must survive (`1.5` -> `1500m`). Smaller fractions
//! use `u` or `n` so a rate of 0.0004 is not rounded to zero.

use crate::definition::MAX_HPA_VALUE;

/// Why a value has no quantity the HPA can read.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Unrepresentable {
    /// NaN or an infinity.
    #[error("value {0} is not a number the HPA can use")]
    NotANumber(f64),
    /// At or beyond what an int64 of milli-units holds.
    #[error(
        "value {0} is too large for the HPA, which reads values as int64 milli-units (|value| < 9.2e15)"
    )]
    TooLarge(f64),
}

/// Format `value` in the canonical Kubernetes form with the largest suffix that represents it to
/// nano precision: `3`, `1500m`, `400u`, `12n`. Fails on NaN, infinities and values the HPA
/// cannot hold.
pub fn format(value: f64) -> Result<String, Unrepresentable> {
    if !value.is_finite() {
        return Err(Unrepresentable::NotANumber(value));
    }
    if value.abs() >= MAX_HPA_VALUE {
        return Err(Unrepresentable::TooLarge(value));
    }
    // Values too large for nano precision in an i64 are rounded to milli precision.
    let (units, scale) = if value.abs() < 9.2e9 {
        ((value * 1e9).round() as i64, 9u32)
    } else {
        ((value * 1e3).round() as i64, 3u32)
    };
    if units == 0 {
        return Ok("0".to_string());
    }
    let mut units = units;
    let mut scale = scale;
    // Drop trailing groups of three zeros: n -> u -> m -> none.
    while scale > 0 && units % 1000 == 0 {
        units /= 1000;
        scale -= 3;
    }
    let suffix = match scale {
        0 => "",
        3 => "m",
        6 => "u",
        _ => "n",
    };
    Ok(format!("{units}{suffix}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_fractions_in_canonical_form() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1250.0, "1250"),
            (1.5, "1500m"),
            (0.25, "250m"),
            (2.0 / 3.0, "666666667n"),
            (0.0004, "400u"),
            (-3.5, "-3500m"),
            (1e12, "1000000000000"),
            (1e12 + 0.5, "1000000000000500m"),
            (9.1e15, "9100000000000000"),
        ];
        for (value, expected) in cases {
            assert_eq!(format(value).unwrap(), expected, "{value}");
        }
    }

    #[test]
    fn refuses_what_the_hpa_cannot_read() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 9.3e15, -1e16] {
            assert!(format(value).is_err(), "{value}");
        }
    }
}
