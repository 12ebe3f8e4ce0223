//! CloudWatch's `StandardUnit` values.

/// Every valid unit, in the order of the CloudWatch model.
pub(crate) const UNITS: [&str; 27] = [
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

/// When a GetMetricData query without `Unit` finds data in several units, CloudWatch answers from
/// one unit only, the first of this list, and says so in a `MultipleUnits` message. The order was
/// recorded against AWS by LocalStack's snapshot tests (Count beats Milliseconds beats Seconds).
const PREFERENCE: [&str; 27] = [
    "Megabits",
    "Terabits",
    "Gigabits",
    "Count",
    "Bytes",
    "Gigabytes",
    "Gigabytes/Second",
    "Kilobytes",
    "Kilobits/Second",
    "Terabytes",
    "Terabits/Second",
    "Bytes/Second",
    "Percent",
    "Megabytes",
    "Megabits/Second",
    "Milliseconds",
    "Microseconds",
    "Kilobytes/Second",
    "Gigabits/Second",
    "Megabytes/Second",
    "Bits",
    "Bits/Second",
    "Count/Second",
    "Seconds",
    "Kilobits",
    "Terabytes/Second",
    "None",
];

/// Whether `unit` is a `StandardUnit`.
pub(crate) fn is_valid(unit: &str) -> bool {
    UNITS.contains(&unit)
}

/// The enum list as CloudWatch prints it in validation messages.
pub(crate) fn enum_list() -> String {
    format!("[{}]", UNITS.join(", "))
}

/// The unit CloudWatch answers from when data exists in all of `units`.
pub(crate) fn preferred<'a>(units: &[&'a str]) -> Option<&'a str> {
    units.iter().copied().min_by_key(|u| {
        PREFERENCE
            .iter()
            .position(|p| p == u)
            .unwrap_or(PREFERENCE.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_matches_recorded_aws_answers() {
        assert_eq!(
            preferred(&["Seconds", "Milliseconds"]),
            Some("Milliseconds")
        );
        assert_eq!(
            preferred(&["Seconds", "Milliseconds", "Count"]),
            Some("Count")
        );
        assert_eq!(preferred(&["None", "Seconds"]), Some("Seconds"));
        assert_eq!(preferred(&[]), None);
    }

    #[test]
    fn every_preferred_unit_is_valid() {
        assert!(PREFERENCE.iter().all(|u| is_valid(u)));
        assert!(!is_valid("seconds"));
        assert!(enum_list().starts_with("[Seconds, Microseconds"));
    }
}
