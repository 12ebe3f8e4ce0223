//! Sharing a source's call budget fairly between tenants.
//!
//! Each lane cycle may spend about one second of its source's budget. When the due series need
//! more, the budget is divided max-min fairly between tenants (an `ExternalMetric` namespace, or
//! a definitions-file metric): every tenant gets what it needs up to an equal share, and what
//! small tenants leave is shared among the big ones. Series past the share wait in the
//! [`Backlog`] for the next cycle, so a tenant asking for thousands of new selector values delays
//! only its own series. The admitted series are interleaved tenant by tenant, smallest first, so the first
//! call of a cycle carries every small tenant's series.

use std::collections::{BTreeMap, VecDeque};

use crate::definition::Tenant;

/// Due items waiting for budget, by tenant, oldest first within each. A lane cycle admits what
/// its budget allows and the rest waits here, each item weighed once, so the next cycle looks at
/// tenants, not again at every waiting item: with 100,000 series due at once and 5,000 admitted
/// per cycle, going through the whole backlog every cycle cost more CPU than the calls.
#[derive(Debug)]
pub(crate) struct Backlog<T> {
    tenants: BTreeMap<Tenant, Waiting<T>>,
    len: usize,
}

/// One tenant's waiting items and the sum of their sizes.
#[derive(Debug)]
struct Waiting<T> {
    demand: usize,
    items: VecDeque<(usize, T)>,
}

impl<T> Default for Backlog<T> {
    fn default() -> Self {
        Self {
            tenants: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> Backlog<T> {
    /// Add `item` of `tenant`, `size` budget units, behind that tenant's waiting items.
    pub(crate) fn push(&mut self, tenant: Tenant, size: usize, item: T) {
        let waiting = self.tenants.entry(tenant).or_insert_with(|| Waiting {
            demand: 0,
            items: VecDeque::new(),
        });
        waiting.demand += size;
        waiting.items.push_back((size, item));
        self.len += 1;
    }

    /// How many items wait.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each tenant's first (oldest) waiting item.
    pub(crate) fn firsts(&self) -> impl Iterator<Item = &T> {
        self.tenants
            .values()
            .filter_map(|waiting| waiting.items.front().map(|(_, item)| item))
    }

    /// Everything waiting, emptying the backlog.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        std::mem::take(&mut self.tenants)
            .into_values()
            .flat_map(|waiting| waiting.items.into_iter().map(|(_, item)| item))
            .collect()
    }

    /// Take what fits `budget`, max-min fairly between tenants, in the order to plan it: every
    /// tenant gets what it waits for up to an equal share, what small tenants leave goes to the
    /// big ones (water-filling, smallest demand first), and each tenant's items leave oldest
    /// first. A tenant's first item always goes, even if larger than its allowance: an item is
    /// never split, and every tenant makes progress. The admitted items are interleaved tenant
    /// by tenant, smallest demand first. Items no longer `live` (their series left the table
    /// while they waited) are dropped as they come up, taking no budget. Costs
    /// O(tenants log tenants + admitted + dropped).
    pub(crate) fn take(&mut self, budget: usize, mut live: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut tenants: Vec<(usize, Tenant)> = self
            .tenants
            .iter()
            .map(|(tenant, waiting)| (waiting.demand, tenant.clone()))
            .collect();
        // Stable: equal demands keep the tenants' order.
        tenants.sort_by_key(|(demand, _)| *demand);
        let count = tenants.len();
        let mut left = budget;
        let mut admitted: Vec<std::vec::IntoIter<T>> = Vec::with_capacity(count);
        for (index, (demand, tenant)) in tenants.into_iter().enumerate() {
            let allowance = demand.min(left / (count - index)).max(1);
            let Some(waiting) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            let mut used = 0;
            let mut mine = Vec::new();
            let mut dropped = 0;
            while let Some((size, item)) = waiting.items.front() {
                let gone = !live(item);
                if !gone && !mine.is_empty() && used + size > allowance {
                    break;
                }
                let Some((size, item)) = waiting.items.pop_front() else {
                    break;
                };
                waiting.demand -= size;
                if gone {
                    dropped += 1;
                    continue;
                }
                used += size;
                mine.push(item);
            }
            self.len -= mine.len() + dropped;
            if waiting.items.is_empty() {
                self.tenants.remove(&tenant);
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
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split `items` (oldest due first) into what fits `budget` fairly, in the order to plan them,
    /// and what waits (see `Backlog::take`). `weigh` gives an item's tenant and its size in budget
    /// units.
    fn share<T>(
        items: Vec<T>,
        budget: usize,
        weigh: impl Fn(&T) -> (Tenant, usize),
    ) -> (Vec<T>, Vec<T>) {
        let mut backlog = Backlog::default();
        for item in items {
            let (tenant, size) = weigh(&item);
            backlog.push(tenant, size, item);
        }
        let admitted = backlog.take(budget, |_| true);
        (admitted, backlog.drain())
    }

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

    #[test]
    fn a_backlog_admits_a_new_small_tenant_ahead_of_a_flood_that_waits_from_earlier_cycles() {
        let mut backlog = Backlog::default();
        for i in 0..1000 {
            backlog.push(tenant("flood"), 1, ("flood", i));
        }
        let first = backlog.take(10, |_| true);
        assert_eq!(
            first,
            (0..10).map(|i| ("flood", i)).collect::<Vec<_>>(),
            "oldest first"
        );
        assert_eq!(backlog.len(), 990);
        // A tenant whose series fall due while the flood waits gets all it needs at the next
        // cycle, first; the flood gets what is left, continuing where it stopped.
        for i in 0..3 {
            backlog.push(tenant("victim"), 1, ("victim", i));
        }
        let second = backlog.take(10, |_| true);
        assert_eq!(&second[..2], &[("victim", 0), ("flood", 10)]);
        assert_eq!(second.iter().filter(|(t, _)| *t == "victim").count(), 3);
        assert_eq!(second.iter().filter(|(t, _)| *t == "flood").count(), 7);
        assert_eq!(second.last(), Some(&("flood", 16)));
        assert_eq!(backlog.len(), 983);
        assert_eq!(
            backlog.firsts().copied().collect::<Vec<_>>(),
            [("flood", 17)]
        );
        let rest = backlog.drain();
        assert_eq!(rest.len(), 983);
        assert!(backlog.is_empty());
        assert!(backlog.take(10, |_| true).is_empty());
    }

    #[test]
    fn items_that_left_while_they_waited_take_no_budget_and_leave_the_backlog() {
        let mut backlog = Backlog::default();
        for i in 0..100 {
            backlog.push(tenant("deleted"), 1, ("deleted", i));
        }
        for i in 0..5 {
            backlog.push(tenant("live"), 1, ("live", i));
        }
        // The deleted tenant's items are dropped as they come up, all in this cycle, taking none
        // of the budget; the live tenant had its equal share of it (2 of 4) ...
        let admitted = backlog.take(4, |(tenant, _)| *tenant != "deleted");
        assert_eq!(admitted, [("live", 0), ("live", 1)]);
        assert_eq!(backlog.len(), 3);
        assert_eq!(backlog.firsts().copied().collect::<Vec<_>>(), [("live", 2)]);
        // ... and from the next cycle on, all of it.
        let admitted = backlog.take(4, |(tenant, _)| *tenant != "deleted");
        assert_eq!(admitted, [("live", 2), ("live", 3), ("live", 4)]);
        assert!(backlog.is_empty());
    }
}
