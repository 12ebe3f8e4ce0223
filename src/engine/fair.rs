//! Sharing a source's call budget fairly between tenants.
//!
//! Each lane cycle may spend about one second of its source's budget. When the due series need
//! more, the budget is divided max-min fairly between tenants (an `ExternalMetric` namespace, or
//! a definitions-file metric): every tenant gets what it needs up to an equal share, and what
//! small tenants leave is shared among the big ones. Series past the share stay due for the
//! next cycle, so a tenant asking for thousands of new selector values delays only its own
//! series. The admitted series are interleaved tenant by tenant, smallest first, so the first
//! call of a cycle carries every small tenant's series.

use std::collections::BTreeMap;

use crate::definition::Tenant;

/// Split `items` (oldest due first) into what fits `budget` fairly, in the order to plan them,
/// and what waits for the next cycle. `weigh` gives an item's tenant and its size in budget
/// units.
pub(crate) fn share<T>(
    items: Vec<T>,
    budget: usize,
    weigh: impl Fn(&T) -> (Tenant, usize),
) -> (Vec<T>, Vec<T>) {
    let mut by_tenant: BTreeMap<Tenant, (usize, Vec<(usize, T)>)> = BTreeMap::new();
    for item in items {
        let (tenant, size) = weigh(&item);
        let entry = by_tenant.entry(tenant).or_default();
        entry.0 += size;
        entry.1.push((size, item));
    }
    // Water-filling: tenants by demand, smallest first, each taking at most an equal share of
    // what is left.
    let mut tenants: Vec<(usize, Vec<(usize, T)>)> = by_tenant.into_values().collect();
    tenants.sort_by_key(|(demand, _)| *demand);
    let count = tenants.len();
    let mut left = budget;
    let mut admitted: Vec<std::vec::IntoIter<T>> = Vec::with_capacity(count);
    let mut deferred = Vec::new();
    for (index, (demand, items)) in tenants.into_iter().enumerate() {
        let allowance = demand.min(left / (count - index)).max(1);
        let mut used = 0;
        let mut mine = Vec::new();
        for (size, item) in items {
            // A tenant's first item always goes, even if larger than its allowance: a series
            // is never split, and every tenant must make progress.
            if mine.is_empty() || used + size <= allowance {
                used += size;
                mine.push(item);
            } else {
                deferred.push(item);
            }
        }
        left = left.saturating_sub(used);
        admitted.push(mine.into_iter());
    }
    // Round-robin across tenants, smallest demand first.
    let mut order = Vec::new();
    loop {
        let before = order.len();
        for tenant in &mut admitted {
            if let Some(item) = tenant.next() {
                order.push(item);
            }
        }
        if order.len() == before {
            break;
        }
    }
    (order, deferred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Tenant {
        Tenant::Namespace(name.to_string())
    }

    #[test]
    fn within_budget_everything_goes_interleaved_smallest_first() {
        let items = vec![("big", 1), ("big", 2), ("big", 3), ("small", 4)];
        let (admitted, deferred) = share(items, 100, |(t, _)| (tenant(t), 1));
        assert!(deferred.is_empty());
        let order: Vec<i32> = admitted.iter().map(|(_, n)| *n).collect();
        assert_eq!(order, [4, 1, 2, 3]);
    }

    #[test]
    fn a_flooding_tenant_waits_while_small_tenants_get_all_they_need() {
        let mut items: Vec<(&str, usize)> = (0..1000).map(|i| ("flood", i)).collect();
        items.extend((0..3).map(|i| ("victim", i)));
        items.extend((0..5).map(|i| ("other", i)));
        let (admitted, deferred) = share(items, 10, |(t, _)| (tenant(t), 1));
        let count =
            |name: &str, list: &[(&str, usize)]| list.iter().filter(|(t, _)| *t == name).count();
        assert_eq!(count("victim", &admitted), 3);
        assert_eq!(
            count("other", &admitted),
            3,
            "an equal share of what is left"
        );
        assert_eq!(count("flood", &admitted), 4, "what the others left");
        assert_eq!(deferred.len(), (1000 - 4) + (5 - 3));
        // Oldest first within a tenant: the flood's first items went.
        assert!(admitted.iter().any(|(t, i)| *t == "flood" && *i == 0));
        // The first call of the cycle carries the small tenants.
        assert_eq!(admitted[0].0, "victim");
    }

    #[test]
    fn sizes_count_and_a_large_first_item_still_goes() {
        let items = vec![("a", 400), ("a", 400), ("b", 300)];
        let (admitted, deferred) = share(items, 500, |(t, size)| (tenant(t), *size));
        let sizes: Vec<usize> = admitted.iter().map(|(_, s)| *s).collect();
        assert_eq!(sizes, [300, 400]);
        assert_eq!(deferred, [("a", 400)]);
    }
}
