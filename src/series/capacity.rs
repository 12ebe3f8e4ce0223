//! Who holds how much of the table, and whose series goes first when it is full.
//!
//! Tenants are kept ordered by how many series they hold, and each tenant's series in a min-heap
//! by last request, so making room is O(log n). Requests do not touch the heap (they only update
//! the series' own `last_requested`): an entry found out of date when popped is pushed back with
//! the series' current time, and entries of series that left are dropped when popped or when the
//! heap is rebuilt, so it never holds more than about twice a tenant's live series.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Weak};

use tokio::time::Instant;

use super::Series;
use crate::definition::Tenant;

/// Why a series could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtCapacity {
    /// The table is full, and no tenant holds more than its share.
    Full,
    /// The table is full, and this tenant already holds its share.
    FairShare {
        /// The share.
        share: u64,
    },
}

/// A series in its tenant's eviction order: when it was last known to be requested.
#[derive(Debug)]
struct Entry {
    requested: Instant,
    id: u64,
    series: Weak<Series>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.requested, self.id) == (other.requested, other.id)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.requested, self.id).cmp(&(other.requested, other.id))
    }
}

#[derive(Debug, Default)]
struct Account {
    held: u64,
    /// Oldest request first.
    order: BinaryHeap<Reverse<Entry>>,
}

/// The table's accounts.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    total: u64,
    by_tenant: HashMap<Tenant, Account>,
    /// (series held, tenant), so the largest tenant is the last.
    by_size: BTreeSet<(u64, Tenant)>,
}

impl Accounts {
    /// Account a new series of `tenant`.
    pub(super) fn add(&mut self, tenant: Tenant, series: &Arc<Series>, now: Instant) {
        self.total += 1;
        let account = self.by_tenant.entry(tenant.clone()).or_default();
        self.by_size.remove(&(account.held, tenant.clone()));
        account.held += 1;
        self.by_size.insert((account.held, tenant));
        account.order.push(Reverse(Entry {
            requested: now,
            id: series.id,
            series: Arc::downgrade(series),
        }));
        // Entries of series that left stay until popped; rebuild before they pile up.
        if account.order.len() as u64 > account.held.saturating_mul(2) + 16 {
            let live: Vec<Reverse<Entry>> = std::mem::take(&mut account.order)
                .into_iter()
                .filter(|Reverse(entry)| {
                    entry
                        .series
                        .upgrade()
                        .is_some_and(|series| !series.lock().removed)
                })
                .collect();
            account.order = live.into();
        }
    }

    /// A series of `tenant` left.
    pub(super) fn forget(&mut self, tenant: &Tenant) {
        self.total = self.total.saturating_sub(1);
        let Some(account) = self.by_tenant.get_mut(tenant) else {
            return;
        };
        self.by_size.remove(&(account.held, tenant.clone()));
        account.held = account.held.saturating_sub(1);
        if account.held == 0 {
            self.by_tenant.remove(tenant);
        } else {
            self.by_size.insert((account.held, tenant.clone()));
        }
    }

    /// Below the bound, nothing to do; at it, pick (and forget) the series to drop for a tenant
    /// under its share, or refuse.
    pub(super) fn make_room(
        &mut self,
        max_series: u64,
        tenant: &Tenant,
    ) -> Result<Option<Arc<Series>>, AtCapacity> {
        if self.total < max_series {
            return Ok(None);
        }
        let holding = self.by_tenant.get(tenant).map_or(0, |account| account.held);
        let tenants = self.by_tenant.len() as u64 + u64::from(holding == 0);
        let share = (max_series / tenants.max(1)).max(1);
        if holding >= share {
            return Err(AtCapacity::FairShare { share });
        }
        let Some((held, largest)) = self.by_size.last().cloned() else {
            return Err(AtCapacity::Full);
        };
        if held <= share {
            return Err(AtCapacity::Full);
        }
        let Some(victim) = self.least_recently_requested(&largest) else {
            return Err(AtCapacity::Full);
        };
        self.forget(&largest);
        Ok(Some(victim))
    }

    /// Pop `tenant`'s least recently requested live series.
    fn least_recently_requested(&mut self, tenant: &Tenant) -> Option<Arc<Series>> {
        let account = self.by_tenant.get_mut(tenant)?;
        while let Some(Reverse(entry)) = account.order.pop() {
            let Some(series) = entry.series.upgrade() else {
                continue;
            };
            let state = series.lock();
            if state.removed {
                continue;
            }
            let requested = state.last_requested;
            drop(state);
            if requested > entry.requested {
                // Asked for since this entry was written: it goes back in its place.
                account.order.push(Reverse(Entry { requested, ..entry }));
                continue;
            }
            return Some(series);
        }
        None
    }
}

#[cfg(test)]
impl Accounts {
    /// Series `tenant` holds.
    pub(super) fn held(&self, tenant: &Tenant) -> u64 {
        self.by_tenant.get(tenant).map_or(0, |account| account.held)
    }

    /// Entries in every tenant's eviction order, live or not.
    pub(super) fn order_len(&self) -> usize {
        self.by_tenant.values().map(|a| a.order.len()).sum()
    }
}
