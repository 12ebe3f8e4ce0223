//! ListMetrics: filter by namespace, name and dimensions, 500 metrics per page.

use std::time::{Duration, SystemTime};

use ciborium::Value;

use crate::error::{ApiError, code};
use crate::store::{MetricKey, Store};
use crate::wire::{self, Obj, map, text};

/// CloudWatch's page size for ListMetrics.
pub(crate) const PAGE_SIZE: usize = 500;
const MAX_DIMENSION_FILTERS: usize = 10;
/// `RecentlyActive=PT3H`: metrics that received data within the past three hours.
const RECENTLY_ACTIVE: Duration = Duration::from_secs(3 * 3600);
const TOKEN_PREFIX: &str = "lm1-";

struct DimensionFilter<'a> {
    name: &'a str,
    value: Option<&'a str>,
}

fn matches(
    key: &MetricKey,
    namespace: Option<&str>,
    name: Option<&str>,
    filters: &[DimensionFilter<'_>],
) -> bool {
    namespace.is_none_or(|ns| ns == key.namespace)
        && name.is_none_or(|n| n == key.name)
        && filters.iter().all(|f| {
            key.dimensions
                .iter()
                .any(|(n, v)| n == f.name && f.value.is_none_or(|want| want == v))
        })
}

/// Runs ListMetrics; returns the response body and the number of metrics in this page.
pub(crate) fn list_metrics(
    input: &Value,
    store: &Store,
    now: SystemTime,
) -> Result<(Value, u64), ApiError> {
    let root = Obj::root(input)?;
    let namespace = root.str("Namespace")?;
    let name = root.str("MetricName")?;
    let mut filters = Vec::new();
    if let Some(list) = root.list("Dimensions")? {
        if list.len() > MAX_DIMENSION_FILTERS {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value at 'dimensions' failed to satisfy constraint: \
                 Member must have length less than or equal to {MAX_DIMENSION_FILTERS}"
            )));
        }
        for (i, filter) in list.objs()?.into_iter().enumerate() {
            let Some(name) = filter.str("Name")? else {
                return Err(ApiError::new(
                    400,
                    code::INVALID_PARAMETER_VALUE,
                    format!(
                        "The parameter Dimensions.member.{}.Name is required.",
                        i + 1
                    ),
                ));
            };
            filters.push(DimensionFilter {
                name,
                value: filter.str("Value")?,
            });
        }
    }
    let recently_active = match root.str("RecentlyActive")? {
        None => false,
        Some("PT3H") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'recentlyActive' failed to satisfy \
                 constraint: Member must satisfy enum value set: [PT3H]"
            )));
        }
    };
    let include_linked = root.bool("IncludeLinkedAccounts")?.unwrap_or(false);
    let offset = match root.str("NextToken")? {
        None => 0,
        Some(token) => token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    code::INVALID_PARAMETER_VALUE,
                    "The value for parameter NextToken is invalid.",
                )
            })?,
    };

    let mut keys: Vec<&MetricKey> = store
        .metrics()
        .filter(|(key, last, _)| {
            matches(key, namespace, name, &filters)
                && (!recently_active
                    || last.is_some_and(|t| {
                        now.duration_since(t).unwrap_or_default() <= RECENTLY_ACTIVE
                    }))
        })
        .map(|(key, _, _)| key)
        .collect();
    // CloudWatch promises no order; a stable one keeps pagination consistent.
    keys.sort();
    let page: Vec<&MetricKey> = keys.iter().skip(offset).take(PAGE_SIZE).copied().collect();
    let next = offset + page.len();

    let metrics: Vec<Value> = page
        .iter()
        .map(|key| {
            let dims = key
                .dimensions
                .iter()
                .map(|(n, v)| map(vec![("Name", text(n.clone())), ("Value", text(v.clone()))]))
                .collect();
            map(vec![
                ("Namespace", text(key.namespace.clone())),
                ("MetricName", text(key.name.clone())),
                ("Dimensions", Value::Array(dims)),
            ])
        })
        .collect();
    let count = metrics.len() as u64;
    let mut body = vec![];
    if include_linked {
        // Every metric belongs to the one (emulated) account.
        body.push((
            "OwningAccounts",
            Value::Array(page.iter().map(|_| text("123456789012")).collect()),
        ));
    }
    body.insert(0, ("Metrics", Value::Array(metrics)));
    if next < keys.len() {
        body.push(("NextToken", text(format!("{TOKEN_PREFIX}{next:x}"))));
    }
    Ok((wire::map(body), count))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::{Aggregate, StorageResolution};

    type Dims<'a> = &'a [(&'a str, &'a str)];

    fn store_with(metrics: &[(&str, &str, Dims<'_>)], at: SystemTime) -> Store {
        let mut store = Store::default();
        for (ns, name, dims) in metrics {
            let dims = dims
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            store.insert(
                MetricKey::new(*ns, *name, dims),
                0,
                StorageResolution::Standard,
                None,
                Aggregate::single(1.0),
                at,
            );
        }
        store
    }

    fn names(body: &Value) -> Vec<String> {
        let root = Obj::root(body).unwrap();
        root.list("Metrics")
            .unwrap()
            .unwrap()
            .objs()
            .unwrap()
            .iter()
            .map(|m| {
                let dims: Vec<String> = m
                    .list("Dimensions")
                    .unwrap()
                    .unwrap()
                    .objs()
                    .unwrap()
                    .iter()
                    .map(|d| {
                        format!(
                            "{}={}",
                            d.str("Name").unwrap().unwrap(),
                            d.str("Value").unwrap().unwrap()
                        )
                    })
                    .collect();
                format!(
                    "{}/{}{:?}",
                    m.str("Namespace").unwrap().unwrap(),
                    m.str("MetricName").unwrap().unwrap(),
                    dims
                )
            })
            .collect()
    }

    #[test]
    fn filters_by_namespace_name_and_dimensions() {
        let now = SystemTime::now();
        let store = store_with(
            &[
                ("A", "x", &[("Q", "orders")]),
                ("A", "x", &[("Q", "billing"), ("Env", "prod")]),
                ("A", "y", &[]),
                ("B", "x", &[("Q", "orders")]),
            ],
            now,
        );
        let run = |input: Value| names(&list_metrics(&input, &store, now).unwrap().0);
        assert_eq!(run(map(vec![])).len(), 4);
        assert_eq!(run(map(vec![("Namespace", text("A"))])).len(), 3);
        assert_eq!(
            run(map(vec![
                ("Namespace", text("A")),
                ("MetricName", text("x"))
            ])),
            vec!["A/x[\"Env=prod\", \"Q=billing\"]", "A/x[\"Q=orders\"]"]
        );
        let by_dim_name = map(vec![(
            "Dimensions",
            Value::Array(vec![map(vec![("Name", text("Q"))])]),
        )]);
        assert_eq!(run(by_dim_name).len(), 3);
        let by_dim_value = map(vec![(
            "Dimensions",
            Value::Array(vec![map(vec![
                ("Name", text("Q")),
                ("Value", text("orders")),
            ])]),
        )]);
        assert_eq!(
            run(by_dim_value),
            vec!["A/x[\"Q=orders\"]", "B/x[\"Q=orders\"]"]
        );
    }

    #[test]
    fn paginates_by_500_and_rejects_bad_tokens() {
        let now = SystemTime::now();
        let mut store = Store::default();
        for i in 0..501 {
            store.insert(
                MetricKey::new("N", format!("m{i:04}"), vec![]),
                0,
                StorageResolution::Standard,
                None,
                Aggregate::single(1.0),
                now,
            );
        }
        let (first, n) = list_metrics(&map(vec![]), &store, now).unwrap();
        assert_eq!(n, 500);
        let token = Obj::root(&first)
            .unwrap()
            .str("NextToken")
            .unwrap()
            .unwrap()
            .to_string();
        let (second, n) =
            list_metrics(&map(vec![("NextToken", text(token))]), &store, now).unwrap();
        assert_eq!(n, 1);
        assert!(!Obj::root(&second).unwrap().has("NextToken"));
        let err =
            list_metrics(&map(vec![("NextToken", text("garbage"))]), &store, now).unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
    }

    #[test]
    fn recently_active_keeps_metrics_with_data_in_the_last_three_hours() {
        let now = SystemTime::now();
        let mut store = store_with(&[("A", "old", &[])], now - Duration::from_secs(4 * 3600));
        store.insert(
            MetricKey::new("A", "new", vec![]),
            0,
            StorageResolution::Standard,
            None,
            Aggregate::single(1.0),
            now,
        );
        let input = map(vec![("RecentlyActive", text("PT3H"))]);
        assert_eq!(
            names(&list_metrics(&input, &store, now).unwrap().0),
            vec!["A/new[]"]
        );
        let bad = map(vec![("RecentlyActive", text("PT1H"))]);
        assert_eq!(
            list_metrics(&bad, &store, now).unwrap_err().code,
            "ValidationError"
        );
    }
}
