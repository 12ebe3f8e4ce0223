//! A lane's timer queue: its series ordered by due time, so a cycle takes the due ones without
//! looking at the rest.
//!
//! The queue mirrors each series' `next_refresh` and `queued` flag: both change together, with
//! the series locked (see `Core::schedule`). A cycle pops due entries with only the queue locked,
//! then locks each series; one rescheduled in between no longer matches its popped entry and is
//! skipped (its new entry is in the queue).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::series::Series;

/// Series by (due time, id).
#[derive(Debug, Default)]
pub(crate) struct DueQueue {
    entries: Mutex<BTreeMap<(Instant, u64), Arc<Series>>>,
}

impl DueQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Instant, u64), Arc<Series>>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue `series` under `due`.
    pub(crate) fn insert(&self, due: Instant, series: Arc<Series>) {
        self.lock().insert((due, series.id), series);
    }

    /// Take `series`' entry under `due` out, if it is there.
    pub(crate) fn remove(&self, due: Instant, id: u64) {
        self.lock().remove(&(due, id));
    }

    /// Every entry due at `now` or earlier, oldest first.
    pub(crate) fn pop_due(&self, now: Instant) -> Vec<(Instant, Arc<Series>)> {
        let mut entries = self.lock();
        let later = entries.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut *entries, later);
        drop(entries);
        due.into_iter()
            .map(|((at, _), series)| (at, series))
            .collect()
    }

    /// Every entry, soonest first (a copy: the queue is not held while the caller looks).
    pub(crate) fn entries(&self) -> Vec<(Instant, Arc<Series>)> {
        self.lock()
            .iter()
            .map(|((at, _), series)| (*at, series.clone()))
            .collect()
    }

    /// When the next entry falls due.
    pub(crate) fn first_due(&self) -> Option<Instant> {
        self.lock().first_key_value().map(|((at, _), _)| *at)
    }

    /// How many series wait.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
