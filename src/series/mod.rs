//! The series table: every series an HPA asked for, its last values, the first-value wait and
//! staleness.
//!
//! A series is a definition plus the selector's labels. It enters the table on its first request
//! and leaves when it goes idle or its definition changes (the engine decides both). Requests
//! are answered from the table only: memory, never a call. A first request waits for the first
//! fetch, and concurrent first requests share it, because they find the same series.
//!
//! Memory is per active series, so a series holds its labels once (shared with its key) and its
//! values as bare readings; the label map and metric name of an answer are built when it is
//! served.

mod capacity;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::definition::{Backend, Definition, HumanDuration, Tenant};
pub use crate::provider::Reading;
use crate::provider::{MetricValue, ProviderError};
use capacity::Accounts;
pub use capacity::AtCapacity;

/// A series' labels (from the selector), sorted by key, shared by the series and its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<[(String, String)]>);

impl Labels {
    /// The labels of a selector's label map.
    pub fn new(map: &BTreeMap<String, String>) -> Self {
        Self(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// As a map (for sources and answers).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }

    /// The label pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Identity of a series: which definition (namespace-scoped or cluster-wide) and which labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The namespace of an `ExternalMetric` definition; `None` for the definitions file.
    pub namespace: Option<String>,
    /// The metric name.
    pub metric: String,
    /// The selector's labels.
    pub labels: Labels,
}

impl SeriesKey {
    /// The key of `definition` read with `labels`.
    pub fn new(definition: &Definition, labels: &BTreeMap<String, String>) -> Self {
        Self::of(definition, Labels::new(labels))
    }

    fn of(definition: &Definition, labels: Labels) -> Self {
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
    /// Unique for the life of the process: orders the engine's timer queue.
    pub id: u64,
    /// The definition it was created for (an edited definition makes a new series).
    pub definition: Arc<Definition>,
    /// The selector's labels.
    pub labels: Labels,
    state: Mutex<SeriesState>,
    /// Set, and waiters woken (see [`FIRST_FETCH`]), when the first fetch completes.
    fetched: AtomicBool,
}

/// Shards of [`FIRST_FETCH`].
const FIRST_FETCH_SHARDS: usize = 1024;

/// Who waits for a series' first value waits here, in the shard of the series' id. A `Notify`
/// in each series would cost 32 bytes on every one of them for a wait that happens once; a
/// waiter woken for another series of its shard looks at its own flag and waits again. With a
/// first fill of thousands of concurrent first requests, a shard holds a few waiters.
static FIRST_FETCH: [Notify; FIRST_FETCH_SHARDS] =
    [const { Notify::const_new() }; FIRST_FETCH_SHARDS];

fn first_fetch(id: u64) -> &'static Notify {
    // The remainder is below the shard count, so the cast cannot truncate.
    &FIRST_FETCH[(id % FIRST_FETCH_SHARDS as u64) as usize]
}

/// A group of series searched together after the backend rejected a call they shared (see the
/// engine's isolation). Plain data: the engine decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    /// The group: series with the same group share calls only with each other.
    pub group: u64,
    /// One member of the group's definition was already tried alone in this search.
    pub probed: bool,
    /// When the search put it in this group.
    pub since: Instant,
}

/// A series' refresh state and values (the engine schedules; requests read).
#[derive(Debug)]
pub struct SeriesState {
    /// When it was last known to be wanted: asked for here, or (with several replicas) on
    /// another replica.
    pub last_requested: Instant,
    /// When an HPA last asked for it on this replica.
    pub requested_here: Option<Instant>,
    /// When the engine should refresh it next.
    pub next_refresh: Instant,
    /// It waits in the engine's timer queue under `next_refresh`.
    pub queued: bool,
    /// A refresh is under way.
    pub in_flight: bool,
    /// It left the table: never scheduled again.
    pub removed: bool,
    /// Consecutive failed refreshes.
    pub failures: u32,
    /// The latest outcome and when it was fetched (an error boxed: most series hold a
    /// reading, which then needs no room for one).
    pub latest: Option<(Result<Reading, Box<ProviderError>>, Instant)>,
    /// The last good reading and when it was fetched, kept while refreshes fail.
    pub last_good: Option<(Reading, Instant)>,
    /// When the last refresh (or probe) finished.
    pub last_attempt: Option<Instant>,
    /// It is being searched for after a rejected shared call (rare: boxed, so the others do
    /// not carry its room).
    pub suspect: Option<Box<Suspect>>,
}

/// Ids for new series.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Series {
    /// A new series, due for its first fetch at `now`.
    pub fn new(definition: Arc<Definition>, labels: Labels, now: Instant) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            definition,
            labels,
            state: Mutex::new(SeriesState {
                last_requested: now,
                requested_here: None,
                next_refresh: now,
                queued: false,
                in_flight: false,
                removed: false,
                failures: 0,
                latest: None,
                last_good: None,
                last_attempt: None,
                suspect: None,
            }),
            fetched: AtomicBool::new(false),
        }
    }

    /// Which backend its values come from.
    pub fn backend(&self) -> Backend {
        self.definition.backend()
    }

    /// Who it is accounted to.
    pub fn tenant(&self) -> Tenant {
        self.definition.tenant()
    }

    /// Its key in the table.
    pub fn key(&self) -> SeriesKey {
        SeriesKey::of(&self.definition, self.labels.clone())
    }

    /// Its state, locked (briefly: never across an await).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SeriesState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a fetch has completed (successfully or not).
    pub fn fetched_once(&self) -> bool {
        self.fetched.load(Ordering::Acquire)
    }

    /// Wait until a first fetch has completed, at most `timeout`. False on timeout.
    pub async fn wait_first(&self, timeout: Duration) -> bool {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let notified = first_fetch(self.id).notified();
                if self.fetched_once() {
                    return;
                }
                notified.await;
            }
        });
        waited.await.is_ok()
    }

    /// A fetch outcome was stored (the engine has updated the schedule): wake waiters.
    pub fn publish(&self) {
        if !self.fetched.swap(true, Ordering::AcqRel) {
            first_fetch(self.id).notify_waiters();
        }
    }

    /// The value served for `reading`.
    pub fn value(&self, reading: &Reading) -> MetricValue {
        MetricValue {
            metric_name: self.definition.spec.name.clone(),
            labels: self.labels.to_map(),
            timestamp: reading.timestamp,
            window: reading.window,
            value: reading.value,
        }
    }

    /// It was dropped to make room: whoever waits for its first value is told why.
    fn evicted(&self, max_series: u64) {
        let mut state = self.lock();
        state.removed = true;
        if state.latest.is_none() {
            state.latest = Some((
                Err(Box::new(ProviderError::AtCapacity(format!(
                    "metric {}: the adapter tracks its maximum of {max_series} series (--max-series), and this series was dropped to make room for another tenant's",
                    self.definition.spec.name
                )))),
                Instant::now(),
            ));
        }
        drop(state);
        self.publish();
    }
}

/// A stored outcome as sources and peers speak it (the error out of its box, without copying
/// the box first).
pub fn unboxed(outcome: &Result<Reading, Box<ProviderError>>) -> Result<Reading, ProviderError> {
    outcome.as_ref().copied().map_err(|error| (**error).clone())
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
    match latest.as_ref().map_err(|error| &**error) {
        Ok(reading) if now.saturating_duration_since(*fetched) <= max_age => {
            (Ok(series.value(reading)), false)
        }
        Ok(_) => (
            Err(ProviderError::Stale {
                failure: None,
                message: format!(
                    "the value of metric {} is {} old, past its max age of {} (refreshes are behind schedule)",
                    definition.spec.name,
                    HumanDuration(round_secs(now.saturating_duration_since(*fetched))),
                    HumanDuration(max_age)
                ),
            }),
            true,
        ),
        Err(ProviderError::Backend { failure, message }) => match &state.last_good {
            Some((reading, good_at)) if now.saturating_duration_since(*good_at) <= max_age => {
                (Ok(series.value(reading)), false)
            }
            Some((_, good_at)) => (
                Err(ProviderError::Stale {
                    failure: Some(*failure),
                    message: format!(
                        "{}; the last good value is {} old, past its max age of {}",
                        message,
                        HumanDuration(round_secs(now.saturating_duration_since(*good_at))),
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

/// The labels a series is looked up by: a request's selector, or the labels of a key, without
/// building a [`Labels`] (a lookup allocates nothing).
#[derive(Debug, Clone, Copy)]
pub enum LabelsRef<'a> {
    /// A selector's label map.
    Map(&'a BTreeMap<String, String>),
    /// A series' (or a key's) labels.
    Labels(&'a Labels),
}

impl<'a> From<&'a BTreeMap<String, String>> for LabelsRef<'a> {
    fn from(map: &'a BTreeMap<String, String>) -> Self {
        LabelsRef::Map(map)
    }
}

impl<'a> From<&'a Labels> for LabelsRef<'a> {
    fn from(labels: &'a Labels) -> Self {
        LabelsRef::Labels(labels)
    }
}

impl LabelsRef<'_> {
    fn hash_into(self, state: &mut impl Hasher) {
        match self {
            LabelsRef::Map(map) => map.iter().for_each(|(k, v)| {
                k.as_str().hash(state);
                v.as_str().hash(state);
            }),
            LabelsRef::Labels(labels) => labels.iter().for_each(|(k, v)| {
                k.hash(state);
                v.hash(state);
            }),
        }
    }

    fn matches(self, labels: &Labels) -> bool {
        match self {
            LabelsRef::Map(map) => map
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .eq(labels.iter()),
            LabelsRef::Labels(other) => other == labels,
        }
    }

    fn to_labels(self) -> Labels {
        match self {
            LabelsRef::Map(map) => Labels::new(map),
            LabelsRef::Labels(labels) => labels.clone(),
        }
    }
}

/// The table: series by key, bounded by `max_series`, shared fairly between tenants.
///
/// Below the bound anyone may add series. At the bound, a tenant holding less than an equal
/// share (`max_series` / tenants) may still add one, in place of the least recently requested
/// series of the tenant holding the most, if that one holds more than its share; anyone else is
/// refused at once. So one caller asking for many selector values can fill the table only until
/// others need room, and never takes another tenant's fair share. Making room costs O(log n):
/// the accounts keep tenants ordered by size and each tenant's series by last request.
///
/// The table holds the series themselves, hashed by their key (definition namespace, metric
/// name, labels) as the series knows it: a key is not stored beside each series, and looking
/// one up builds none.
#[derive(Debug)]
pub struct SeriesTable {
    series: RwLock<HashTable<Arc<Series>>>,
    /// Keyed (randomly seeded) SipHash: the labels are whatever callers ask for.
    hasher: RandomState,
    max_series: u64,
    /// Series per tenant and their eviction order, under one lock taken by inserts and
    /// removals only: requests for existing series never take it.
    accounts: Mutex<Accounts>,
}

/// How [`SeriesTable::get_or_insert`] found the series.
#[derive(Debug)]
pub enum Found {
    /// It existed for this very definition.
    Existing(Arc<Series>),
    /// It is new (or replaced one of an edited definition): the engine should fetch it.
    Created {
        /// The new series.
        series: Arc<Series>,
        /// A series dropped to make room, or the one of the edited definition it replaced:
        /// the engine stops refreshing it.
        dropped: Option<Arc<Series>>,
    },
}

/// Whether `series` has the key of `definition` read with `labels` (whatever the version of
/// the definition).
fn has_key(series: &Series, definition: &Definition, labels: LabelsRef<'_>) -> bool {
    // The same definition (the common case) has the same name and namespace.
    let same_name = std::ptr::eq(&*series.definition, definition)
        || (series.definition.spec.name == definition.spec.name
            && series.definition.namespace == definition.namespace);
    same_name && labels.matches(&series.labels)
}

impl SeriesTable {
    /// An empty table holding at most `max_series` series.
    pub fn new(max_series: u64) -> Self {
        Self {
            series: RwLock::new(HashTable::new()),
            hasher: RandomState::new(),
            max_series,
            accounts: Mutex::new(Accounts::default()),
        }
    }

    /// The bound.
    pub fn max_series(&self) -> u64 {
        self.max_series
    }

    fn hash_of(&self, definition: &Definition, labels: LabelsRef<'_>) -> u64 {
        let mut state = self.hasher.build_hasher();
        definition.namespace.as_deref().hash(&mut state);
        definition.spec.name.as_str().hash(&mut state);
        labels.hash_into(&mut state);
        state.finish()
    }

    fn hash_of_series(&self, series: &Series) -> u64 {
        self.hash_of(&series.definition, LabelsRef::Labels(&series.labels))
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashTable<Arc<Series>>> {
        self.series
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashTable<Arc<Series>>> {
        self.series
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Take `series` itself out of `map`, if it is there.
    fn take_out(&self, map: &mut HashTable<Arc<Series>>, series: &Arc<Series>) -> bool {
        match map.find_entry(self.hash_of_series(series), |s| Arc::ptr_eq(s, series)) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// The series of `definition` read with `labels`, if it exists for `definition` itself.
    pub fn get<'a>(
        &self,
        definition: &Arc<Definition>,
        labels: impl Into<LabelsRef<'a>>,
    ) -> Option<Arc<Series>> {
        let labels = labels.into();
        self.read()
            .find(self.hash_of(definition, labels), |s| {
                has_key(s, definition, labels)
            })
            .filter(|series| Arc::ptr_eq(&series.definition, definition))
            .cloned()
    }

    /// The series of `definition` read with `labels`, created if it is new, or replacing one
    /// left from an edited definition (whose values must not be served). Concurrent first
    /// requests agree on one series. Refused at once when the table is full for this tenant.
    pub fn get_or_insert<'a>(
        &self,
        definition: &Arc<Definition>,
        labels: impl Into<LabelsRef<'a>>,
        now: Instant,
    ) -> Result<Found, AtCapacity> {
        let labels = labels.into();
        let hash = self.hash_of(definition, labels);
        let mut accounts = self.accounts();
        let existing = self
            .read()
            .find(hash, |s| has_key(s, definition, labels))
            .cloned();
        if let Some(series) = &existing
            && Arc::ptr_eq(&series.definition, definition)
        {
            return Ok(Found::Existing(series.clone()));
        }
        let series = Arc::new(Series::new(definition.clone(), labels.to_labels(), now));
        let tenant = series.tenant();
        let dropped = match existing {
            // A replaced series (same key, so same tenant) gives its place to the new one.
            Some(old) => {
                accounts.forget(&tenant);
                old.lock().removed = true;
                Some(old)
            }
            None => match accounts.make_room(self.max_series, &tenant) {
                Ok(victim) => victim.inspect(|victim| {
                    self.take_out(&mut self.write(), victim);
                    tracing::info!(
                        metric = %victim.definition.spec.name,
                        tenant = %victim.tenant(),
                        "series table full: dropped the least recently requested series of the tenant holding the most, to make room for {tenant}"
                    );
                    victim.evicted(self.max_series);
                }),
                Err(refusal) => return Err(refusal),
            },
        };
        accounts.add(tenant, &series, now);
        let mut map = self.write();
        match map.find_entry(hash, |s| has_key(s, definition, labels)) {
            Ok(mut entry) => *entry.get_mut() = series.clone(),
            Err(_) => {
                map.insert_unique(hash, series.clone(), |s| self.hash_of_series(s));
            }
        }
        Ok(Found::Created { series, dropped })
    }

    /// Whether a series of `definition` read with `labels` is in the table (for this
    /// definition or an earlier version of it).
    pub fn contains<'a>(&self, definition: &Definition, labels: impl Into<LabelsRef<'a>>) -> bool {
        let labels = labels.into();
        self.read()
            .find(self.hash_of(definition, labels), |s| {
                has_key(s, definition, labels)
            })
            .is_some()
    }

    /// Remove `series`, unless a request replaced it meanwhile. Marks it removed either way, so
    /// it is never scheduled again.
    pub fn remove(&self, series: &Arc<Series>) {
        let mut accounts = self.accounts();
        let removed = self.take_out(&mut self.write(), series);
        if removed {
            accounts.forget(&series.tenant());
        }
        // Under the accounts lock, so making room never picks a series already gone.
        series.lock().removed = true;
        drop(accounts);
    }

    /// Every series, as of now.
    pub fn snapshot(&self) -> Vec<Arc<Series>> {
        self.read().iter().cloned().collect()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
