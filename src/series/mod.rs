//! The series table: every series an HPA asked for, its last values, the first-value wait and
//! staleness.
//!
//! A series is a definition plus the selector's labels. It enters the table on its first request
//! and leaves when it goes idle or its definition changes (the engine decides both). Requests
//! are answered from the table only: memory, never a call. A first request waits for the first
//! fetch, and concurrent first requests share it, because they find the same series.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::definition::{Backend, Definition, HumanDuration, Tenant};
use crate::provider::{MetricValue, ProviderError};

/// Identity of a series: which definition (namespace-scoped or cluster-wide) and which labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The namespace of an `ExternalMetric` definition; `None` for the definitions file.
    pub namespace: Option<String>,
    /// The metric name.
    pub metric: String,
    /// The selector's labels.
    pub labels: BTreeMap<String, String>,
}

impl SeriesKey {
    /// The key of `definition` read with `labels`.
    pub fn new(definition: &Definition, labels: BTreeMap<String, String>) -> Self {
        Self {
            namespace: definition.namespace.clone(),
            metric: definition.spec.name.clone(),
            labels,
        }
    }
}

/// One active series.
#[derive(Debug)]
pub struct Series {
    /// The definition it was created for (an edited definition makes a new series).
    pub definition: Arc<Definition>,
    /// The selector's labels.
    pub labels: BTreeMap<String, String>,
    /// Who it is accounted to.
    pub tenant: Tenant,
    state: Mutex<SeriesState>,
    /// Bumped after every fetch, so waiters for a first value wake up.
    generation: watch::Sender<u64>,
}

/// A series' refresh state and values (the engine schedules; requests read).
#[derive(Debug)]
pub struct SeriesState {
    /// When an HPA last asked for it.
    pub last_requested: Instant,
    /// When the engine should refresh it next.
    pub next_refresh: Instant,
    /// A refresh is under way.
    pub in_flight: bool,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// The latest outcome and when it was fetched.
    pub latest: Option<(Result<MetricValue, ProviderError>, Instant)>,
    /// The last good value and when it was fetched, kept while refreshes fail.
    pub last_good: Option<(MetricValue, Instant)>,
}

impl Series {
    /// A new series, due for its first fetch at `now`.
    pub fn new(
        definition: Arc<Definition>,
        labels: BTreeMap<String, String>,
        now: Instant,
    ) -> Self {
        Self {
            tenant: definition.tenant(),
            definition,
            labels,
            state: Mutex::new(SeriesState {
                last_requested: now,
                next_refresh: now,
                in_flight: false,
                failures: 0,
                latest: None,
                last_good: None,
            }),
            generation: watch::Sender::new(0),
        }
    }

    /// Which backend its values come from.
    pub fn backend(&self) -> Backend {
        self.definition.backend()
    }

    /// Its state, locked (briefly: never across an await).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SeriesState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a fetch has completed (successfully or not).
    pub fn fetched_once(&self) -> bool {
        *self.generation.borrow() > 0
    }

    /// Wait until a first fetch has completed, at most `timeout`. False on timeout.
    pub async fn wait_first(&self, timeout: Duration) -> bool {
        let mut generation = self.generation.subscribe();
        tokio::time::timeout(timeout, generation.wait_for(|g| *g > 0))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Store a fetch outcome (the engine has updated the schedule) and wake waiters.
    pub fn publish(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// The answer a series gives now: the latest value if fresh, else the last good one within its
/// max age, else an error that says why. The flag says whether a value was refused as too old.
pub fn answer(
    series: &Series,
    default_max_age: Duration,
    now: Instant,
) -> (Result<MetricValue, ProviderError>, bool) {
    let definition = &series.definition;
    let max_age = max_age(definition, default_max_age);
    let state = series.lock();
    let Some((latest, fetched)) = &state.latest else {
        return (
            Err(ProviderError::FirstFetchPending(format!(
                "metric {}: no value has been fetched from {} yet; it will be",
                definition.spec.name,
                definition.backend()
            ))),
            false,
        );
    };
    match latest {
        Ok(value) if now.duration_since(*fetched) <= max_age => (Ok(value.clone()), false),
        Ok(_) => (
            Err(ProviderError::Stale {
                failure: None,
                message: format!(
                    "the value of metric {} is {} old, past its max age of {} (refreshes are behind schedule)",
                    definition.spec.name,
                    HumanDuration(round_secs(now.duration_since(*fetched))),
                    HumanDuration(max_age)
                ),
            }),
            true,
        ),
        Err(ProviderError::Backend { failure, message }) => match &state.last_good {
            Some((value, good_at)) if now.duration_since(*good_at) <= max_age => {
                (Ok(value.clone()), false)
            }
            Some((_, good_at)) => (
                Err(ProviderError::Stale {
                    failure: Some(*failure),
                    message: format!(
                        "{}; the last good value is {} old, past its max age of {}",
                        message,
                        HumanDuration(round_secs(now.duration_since(*good_at))),
                        HumanDuration(max_age)
                    ),
                }),
                true,
            ),
            None => (
                Err(ProviderError::Backend {
                    failure: *failure,
                    message: message.clone(),
                }),
                false,
            ),
        },
        // No data, an untranslatable value: these are answers, not failures.
        Err(other) => (Err(other.clone()), false),
    }
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// A definition's own `maxAge` (validated to be at least one refresh interval) is used as
/// written; the global default is raised to three refresh intervals, so a slow metric's value
/// does not expire between two normal refreshes.
pub fn max_age(definition: &Definition, default_max_age: Duration) -> Duration {
    definition
        .max_age
        .unwrap_or_else(|| default_max_age.max(definition.refresh_interval.saturating_mul(3)))
}

/// The table: series by key, bounded by `max_series`.
#[derive(Debug)]
pub struct SeriesTable {
    series: moka::sync::Cache<SeriesKey, Arc<Series>>,
    max_series: u64,
}

/// Why a series could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtCapacity;

/// How [`SeriesTable::get_or_insert`] found the series.
#[derive(Debug)]
pub enum Found {
    /// It existed for this very definition.
    Existing(Arc<Series>),
    /// It is new (or replaced one of an edited definition): the engine should fetch it.
    Created(Arc<Series>),
}

impl SeriesTable {
    /// An empty table holding at most `max_series` series.
    pub fn new(max_series: u64) -> Self {
        Self {
            series: moka::sync::Cache::builder()
                .max_capacity(max_series)
                .build(),
            max_series,
        }
    }

    /// The bound.
    pub fn max_series(&self) -> u64 {
        self.max_series
    }

    /// The series of `key` if it exists for `definition` itself.
    pub fn get(&self, key: &SeriesKey, definition: &Arc<Definition>) -> Option<Arc<Series>> {
        self.series
            .get(key)
            .filter(|series| Arc::ptr_eq(&series.definition, definition))
    }

    /// The series of `key` for `definition`, created if it is new, or replacing one left from
    /// an edited definition (whose values must not be served). Atomic, so concurrent first
    /// requests agree on one series.
    pub fn get_or_insert(
        &self,
        key: &SeriesKey,
        definition: &Arc<Definition>,
        now: Instant,
    ) -> Result<Found, AtCapacity> {
        let outcome = self
            .series
            .entry_by_ref(key)
            .and_compute_with(|existing| match existing {
                Some(entry) if Arc::ptr_eq(&entry.value().definition, definition) => {
                    moka::ops::compute::Op::Nop
                }
                _ => moka::ops::compute::Op::Put(Arc::new(Series::new(
                    definition.clone(),
                    key.labels.clone(),
                    now,
                ))),
            });
        match outcome {
            moka::ops::compute::CompResult::Inserted(entry)
            | moka::ops::compute::CompResult::ReplacedWith(entry) => {
                Ok(Found::Created(entry.into_value()))
            }
            moka::ops::compute::CompResult::Unchanged(entry) => {
                Ok(Found::Existing(entry.into_value()))
            }
            moka::ops::compute::CompResult::Removed(_)
            | moka::ops::compute::CompResult::StillNone(_) => Err(AtCapacity),
        }
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: &SeriesKey) -> bool {
        self.series.contains_key(key)
    }

    /// Remove `series` from under `key`, unless a request replaced it meanwhile.
    pub fn remove(&self, key: &SeriesKey, series: &Arc<Series>) {
        self.series
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(entry) if Arc::ptr_eq(entry.value(), series) => moka::ops::compute::Op::Remove,
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Every series (a snapshot iterator; concurrent changes may or may not show).
    pub fn iter(&self) -> impl Iterator<Item = (Arc<SeriesKey>, Arc<Series>)> + '_ {
        self.series.iter()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        self.series.run_pending_tasks();
        usize::try_from(self.series.entry_count()).unwrap_or(usize::MAX)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
