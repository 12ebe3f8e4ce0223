//! The series table: every series an HPA asked for, its last values, the first-value wait and
//! staleness.
//!
//! A series is a definition plus the selector's labels. It enters the table on its first request
//! and leaves when it goes idle or its definition changes (the engine decides both). Requests
//! are answered from the table only: memory, never a call. A first request waits for the first
//! fetch, and concurrent first requests share it, because they find the same series.

use std::collections::{BTreeMap, HashMap};
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
    /// When the last refresh (or probe) finished.
    pub last_attempt: Option<Instant>,
    /// The backend rejected every call this series was in, and accepted the others: it gets a
    /// call of its own from now on, so it can only fail itself.
    pub isolated: bool,
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
                last_attempt: None,
                isolated: false,
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

    /// It was dropped to make room: whoever waits for its first value is told why.
    fn evicted(&self, max_series: u64) {
        let mut state = self.lock();
        if state.latest.is_none() {
            state.latest = Some((
                Err(ProviderError::AtCapacity(format!(
                    "metric {}: the adapter tracks its maximum of {max_series} series (--max-series), and this series was dropped to make room for another tenant's",
                    self.definition.spec.name
                ))),
                Instant::now(),
            ));
        }
        drop(state);
        self.publish();
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

/// The table: series by key, bounded by `max_series`, shared fairly between tenants.
///
/// Below the bound anyone may add series. At the bound, a tenant holding less than an equal
/// share (`max_series` / tenants) may still add one, in place of the least recently requested
/// series of the tenant holding the most, if that one holds more than its share; anyone else is
/// refused at once. So one caller asking for many selector values can fill the table only until
/// others need room, and never takes another tenant's fair share.
#[derive(Debug)]
pub struct SeriesTable {
    series: moka::sync::Cache<SeriesKey, Arc<Series>>,
    max_series: u64,
    /// Series per tenant, and every insert and removal, under one lock (the slow path only:
    /// requests for existing series never take it).
    accounts: Mutex<Accounts>,
}

#[derive(Debug, Default)]
struct Accounts {
    total: u64,
    by_tenant: HashMap<Tenant, u64>,
}

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
            series: moka::sync::Cache::builder().build(),
            max_series,
            accounts: Mutex::new(Accounts::default()),
        }
    }

    /// The bound.
    pub fn max_series(&self) -> u64 {
        self.max_series
    }

    fn accounts(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The series of `key` if it exists for `definition` itself.
    pub fn get(&self, key: &SeriesKey, definition: &Arc<Definition>) -> Option<Arc<Series>> {
        self.series
            .get(key)
            .filter(|series| Arc::ptr_eq(&series.definition, definition))
    }

    /// The series of `key` for `definition`, created if it is new, or replacing one left from
    /// an edited definition (whose values must not be served). Concurrent first requests agree
    /// on one series. Refused at once when the table is full for this tenant.
    pub fn get_or_insert(
        &self,
        key: &SeriesKey,
        definition: &Arc<Definition>,
        now: Instant,
    ) -> Result<Found, AtCapacity> {
        let mut accounts = self.accounts();
        let existing = self.series.get(key);
        if let Some(series) = &existing
            && Arc::ptr_eq(&series.definition, definition)
        {
            return Ok(Found::Existing(series.clone()));
        }
        let series = Arc::new(Series::new(definition.clone(), key.labels.clone(), now));
        if existing.is_none() {
            self.make_room(&mut accounts, &series.tenant)?;
            accounts.total += 1;
            *accounts.by_tenant.entry(series.tenant.clone()).or_default() += 1;
        }
        // A replaced series (same key, so same tenant) keeps its place in the accounts.
        self.series.insert(key.clone(), series.clone());
        Ok(Found::Created(series))
    }

    /// Below the bound, nothing to do; at it, evict for a tenant under its share, or refuse.
    fn make_room(&self, accounts: &mut Accounts, tenant: &Tenant) -> Result<(), AtCapacity> {
        if accounts.total < self.max_series {
            return Ok(());
        }
        let holding = accounts.by_tenant.get(tenant).copied().unwrap_or(0);
        let tenants = accounts.by_tenant.len() as u64 + u64::from(holding == 0);
        let share = (self.max_series / tenants.max(1)).max(1);
        if holding >= share {
            return Err(AtCapacity::FairShare { share });
        }
        let Some((largest, held)) = accounts
            .by_tenant
            .iter()
            .max_by_key(|(_, held)| **held)
            .map(|(tenant, held)| (tenant.clone(), *held))
        else {
            return Err(AtCapacity::Full);
        };
        if held <= share {
            return Err(AtCapacity::Full);
        }
        let victim = self
            .series
            .iter()
            .filter(|(_, series)| series.tenant == largest)
            .min_by_key(|(_, series)| series.lock().last_requested);
        let Some((key, series)) = victim else {
            return Err(AtCapacity::Full);
        };
        tracing::info!(
            metric = %series.definition.spec.name,
            tenant = %largest,
            "series table full: dropping the least recently requested series of the tenant holding the most, to make room for {tenant}"
        );
        self.series.invalidate(&*key);
        Self::forget(accounts, &largest);
        series.evicted(self.max_series);
        Ok(())
    }

    fn forget(accounts: &mut Accounts, tenant: &Tenant) {
        accounts.total = accounts.total.saturating_sub(1);
        if let Some(held) = accounts.by_tenant.get_mut(tenant) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                accounts.by_tenant.remove(tenant);
            }
        }
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: &SeriesKey) -> bool {
        self.series.contains_key(key)
    }

    /// Remove `series` from under `key`, unless a request replaced it meanwhile.
    pub fn remove(&self, key: &SeriesKey, series: &Arc<Series>) {
        let mut accounts = self.accounts();
        if self
            .series
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(&current, series))
        {
            self.series.invalidate(key);
            Self::forget(&mut accounts, &series.tenant);
        }
    }

    /// Every series (a snapshot iterator; concurrent changes may or may not show).
    pub fn iter(&self) -> impl Iterator<Item = (Arc<SeriesKey>, Arc<Series>)> + '_ {
        self.series.iter()
    }

    /// How many series there are.
    pub fn len(&self) -> usize {
        usize::try_from(self.accounts().total).unwrap_or(usize::MAX)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
