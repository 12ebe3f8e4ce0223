//! The cached query layer: HPA requests are answered from memory; a background refresher keeps
//! every active series fresh with as few `GetMetricData` calls as CloudWatch allows.
//!
//! - A series (definition + selector labels) becomes active on its first request and idle after
//!   `idle_timeout` without one. A first request waits for the first fetch; concurrent first
//!   requests share it.
//! - Refreshes fall on a wall-clock grid of each series' refresh interval, so series asked for at
//!   different times are refreshed together, and each cycle packs every due series into calls of
//!   at most 500 queries (see [`crate::cloudwatch::batch`]), paced so the global
//!   calls-per-second budget is never exceeded.
//! - Failures back off exponentially with jitter. The last good value is served until it is older
//!   than its max age; then the request fails with a message saying why. Never a made-up value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cloudwatch::batch::{self, MAX_QUERIES_PER_CALL};
use crate::cloudwatch::evaluate::{backend_error, evaluate, failure_of};
use crate::cloudwatch::translate::{build_request, selector_labels};
use crate::cloudwatch::{CloudWatchError, MetricDataRequest, MetricDataSource, QueryKind};
use crate::definition::{Definition, DefinitionSet, HumanDuration};
use crate::metrics::AdapterMetrics;
use crate::provider::{
    BackendFailure, ExternalMetricsProvider, MetricInfo, MetricRequest, MetricValue, ProviderError,
};

/// Tuning of the cached query layer.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// A series nobody asked for this long stops being refreshed.
    pub idle_timeout: Duration,
    /// Default max age of a served value (since its fetch), at least three refresh intervals.
    pub max_age: Duration,
    /// The refresher never makes more `GetMetricData` calls per second than this.
    pub calls_per_second: f64,
    /// At most this many calls in flight at once.
    pub max_concurrent_calls: usize,
    /// Upper bound on tracked series, so hostile selectors cannot exhaust memory.
    pub max_series: u64,
    /// How long a first request waits for its first fetch.
    pub first_fetch_timeout: Duration,
    /// How long the refresher lingers after a wake-up to gather a burst of new series into one call.
    pub batch_linger: Duration,
    /// First back-off after a failed refresh; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            max_age: Duration::from_secs(300),
            calls_per_second: 10.0,
            max_concurrent_calls: 4,
            max_series: 100_000,
            first_fetch_timeout: Duration::from_secs(15),
            batch_linger: Duration::from_millis(5),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// Told about every refresh outcome (for `ExternalMetric` status and events). Called on the
/// refresher's path, so it must not block: hand work off to a task.
pub trait OutcomeObserver: Send + Sync + std::fmt::Debug + 'static {
    /// One series of `definition` (with `labels`) was refreshed with `outcome`.
    fn observe(
        &self,
        definition: &Arc<Definition>,
        labels: &BTreeMap<String, String>,
        outcome: &Result<MetricValue, ProviderError>,
    );
}

/// Identity of a series: which definition (namespace-scoped or cluster-wide) and which labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    namespace: Option<String>,
    metric: String,
    labels: BTreeMap<String, String>,
}

/// One active series.
#[derive(Debug)]
struct Series {
    definition: Arc<Definition>,
    labels: BTreeMap<String, String>,
    state: Mutex<SeriesState>,
    /// Bumped after every fetch, so waiters for a first value wake up.
    generation: watch::Sender<u64>,
}

#[derive(Debug)]
struct SeriesState {
    last_requested: Instant,
    next_refresh: Instant,
    in_flight: bool,
    failures: u32,
    /// The latest outcome and when it was fetched.
    latest: Option<(Result<MetricValue, ProviderError>, Instant)>,
    /// The last good value and when it was fetched, kept while refreshes fail.
    last_good: Option<(MetricValue, Instant)>,
}

impl Series {
    fn new(definition: Arc<Definition>, labels: BTreeMap<String, String>, now: Instant) -> Self {
        Self {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, SeriesState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Spaces calls at least `1 / rate` apart, so no one-second window holds more than `rate` calls.
#[derive(Debug)]
struct Pacer {
    spacing: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(calls_per_second: f64) -> Self {
        let rate = if calls_per_second.is_finite() && calls_per_second > 0.0 {
            calls_per_second
        } else {
            1.0
        };
        Self {
            spacing: Duration::from_secs_f64(1.0 / rate),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = Instant::now().max(*next) + self.spacing;
    }
}

/// The cached provider.
#[derive(Debug)]
pub struct QueryCache<S> {
    inner: Arc<Inner<S>>,
}

#[derive(Debug)]
struct Inner<S> {
    definitions: Arc<ArcSwap<DefinitionSet>>,
    source: S,
    config: CacheConfig,
    metrics: Arc<AdapterMetrics>,
    series: moka::sync::Cache<SeriesKey, Arc<Series>>,
    wake: Notify,
    pacer: Pacer,
    calls: Arc<Semaphore>,
    observer: std::sync::OnceLock<Arc<dyn OutcomeObserver>>,
    /// An instant and the wall-clock time it corresponds to, to put refreshes on a wall-clock
    /// grid: every series with the same interval falls due at the same moment, so one refresh
    /// cycle batches them all, however their first requests were spread.
    anchor: (Instant, SystemTime),
}

impl<S: MetricDataSource> QueryCache<S> {
    /// A cache over `definitions` reading from `source`. Call [`QueryCache::run`] to refresh.
    pub fn new(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        source: S,
        config: CacheConfig,
        metrics: Arc<AdapterMetrics>,
    ) -> Self {
        Self::with_wall_clock(definitions, source, config, metrics, SystemTime::now())
    }

    /// As [`QueryCache::new`], with `now` as the wall-clock time of this moment: the refresh
    /// grid is laid out from it (tests pass a fixed time so the grid does not depend on when
    /// they run).
    pub fn with_wall_clock(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        source: S,
        config: CacheConfig,
        metrics: Arc<AdapterMetrics>,
        now: SystemTime,
    ) -> Self {
        let inner = Arc::new(Inner {
            definitions,
            source,
            series: moka::sync::Cache::builder()
                .max_capacity(config.max_series)
                .build(),
            wake: Notify::new(),
            pacer: Pacer::new(config.calls_per_second),
            calls: Arc::new(Semaphore::new(config.max_concurrent_calls.max(1))),
            observer: std::sync::OnceLock::new(),
            anchor: (Instant::now(), now),
            config,
            metrics,
        });
        Self { inner }
    }

    /// Install the observer told about every refresh outcome (once).
    pub fn set_observer(&self, observer: Arc<dyn OutcomeObserver>) {
        if self.inner.observer.set(observer).is_err() {
            tracing::warn!("a cache outcome observer is already installed");
        }
    }

    /// A handle for the refresher task (and to share the cache).
    pub fn clone_handle(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }

    /// Install the scrape-time collector for value ages and active series.
    pub fn register_gauges(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.metrics.set_collector(Box::new(move |metrics| {
            if let Some(inner) = weak.upgrade() {
                let now = SystemTime::now();
                let mut ages: BTreeMap<String, f64> = BTreeMap::new();
                let mut count = 0;
                for (_, series) in inner.series.iter() {
                    count += 1;
                    let state = series.lock();
                    if let Some((value, _)) = &state.last_good {
                        let age = now
                            .duration_since(value.timestamp)
                            .unwrap_or_default()
                            .as_secs_f64();
                        let entry = ages.entry(series.definition.spec.name.clone()).or_default();
                        *entry = entry.max(age);
                    }
                }
                metrics.set_active_series(count);
                metrics.set_value_ages(&ages.into_iter().collect::<Vec<_>>());
            }
        }));
    }

    /// The number of active series.
    pub fn active_series(&self) -> usize {
        self.inner.series.run_pending_tasks();
        usize::try_from(self.inner.series.entry_count()).unwrap_or(usize::MAX)
    }

    /// Refresh series until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let inner = self.inner;
        loop {
            let next_wake = inner.refresh_due().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next_wake) => {}
                () = inner.wake.notified() => {
                    // Gather a burst of first requests into the same call.
                    tokio::time::sleep(inner.config.batch_linger).await;
                }
            }
        }
    }

    async fn values(&self, request: &MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        let inner = &self.inner;
        let definitions = inner.definitions.load();
        let Some(definition) = definitions.lookup(&request.namespace, &request.metric) else {
            return Err(ProviderError::NotFound {
                metric: request.metric.clone(),
                namespace: request.namespace.clone(),
            });
        };
        let labels = selector_labels(definition, &request.selector)?;
        let key = SeriesKey {
            namespace: definition.namespace.clone(),
            metric: definition.spec.name.clone(),
            labels: labels.clone(),
        };
        let now = Instant::now();
        // Fast path: the series exists for this very definition.
        let series = match inner.series.get(&key) {
            Some(series) if Arc::ptr_eq(&series.definition, definition) => series,
            // New, or left from an edited definition, whose values must not be served: replace it
            // atomically, so concurrent first requests agree on one series.
            _ => {
                let outcome = inner
                    .series
                    .entry_by_ref(&key)
                    .and_compute_with(|existing| match existing {
                        Some(entry) if Arc::ptr_eq(&entry.value().definition, definition) => {
                            moka::ops::compute::Op::Nop
                        }
                        _ => moka::ops::compute::Op::Put(Arc::new(Series::new(
                            definition.clone(),
                            labels.clone(),
                            now,
                        ))),
                    });
                match outcome {
                    moka::ops::compute::CompResult::Inserted(entry)
                    | moka::ops::compute::CompResult::ReplacedWith(entry) => {
                        inner.wake.notify_one();
                        entry.into_value()
                    }
                    moka::ops::compute::CompResult::Unchanged(entry) => entry.into_value(),
                    moka::ops::compute::CompResult::Removed(_)
                    | moka::ops::compute::CompResult::StillNone(_) => {
                        return Err(capacity_error(definition, inner.config.max_series));
                    }
                }
            }
        };
        series.lock().last_requested = now;

        let mut generation = series.generation.subscribe();
        if *generation.borrow_and_update() == 0 {
            inner.metrics.cache_lookup("miss");
            let first = tokio::time::timeout(
                inner.config.first_fetch_timeout,
                generation.wait_for(|g| *g > 0),
            )
            .await;
            if first.is_err() {
                if !inner.series.contains_key(&key) {
                    // Evicted before its first fetch: the cache is at --max-series.
                    return Err(capacity_error(definition, inner.config.max_series));
                }
                return Err(ProviderError::Backend {
                    failure: BackendFailure::Unreachable,
                    message: format!(
                        "unable to fetch metric {}: no answer from CloudWatch within {}; it will be retried",
                        definition.spec.name,
                        HumanDuration(inner.config.first_fetch_timeout)
                    ),
                });
            }
        } else {
            inner.metrics.cache_lookup("hit");
        }
        let (answer, stale) = answer(&series, &inner.config, Instant::now());
        if stale {
            inner.metrics.cache_lookup("stale");
        }
        answer.map(|value| vec![value])
    }
}

fn capacity_error(definition: &Definition, max_series: u64) -> ProviderError {
    ProviderError::Backend {
        failure: BackendFailure::ServiceError,
        message: format!(
            "unable to serve metric {}: the adapter already tracks its maximum of {max_series} series (--max-series); too many distinct selectors are being asked for",
            definition.spec.name
        ),
    }
}

/// The answer a series gives now: the latest value if fresh, else the last good one within its
/// max age, else an error that says why. The flag says whether a value was refused as too old.
fn answer(
    series: &Series,
    config: &CacheConfig,
    now: Instant,
) -> (Result<MetricValue, ProviderError>, bool) {
    let definition = &series.definition;
    let max_age = max_age(definition, config);
    let state = series.lock();
    let Some((latest, fetched)) = &state.latest else {
        return (
            Err(backend_error(
                BackendFailure::Unreachable,
                &definition.spec.name,
            )),
            false,
        );
    };
    match latest {
        Ok(value) if now.duration_since(*fetched) <= max_age => (Ok(value.clone()), false),
        Ok(_) => (
            Err(stale(
                definition,
                now.duration_since(*fetched),
                max_age,
                "refreshes are behind schedule",
            )),
            true,
        ),
        Err(ProviderError::Backend { failure, message }) => match &state.last_good {
            Some((value, good_at)) if now.duration_since(*good_at) <= max_age => {
                (Ok(value.clone()), false)
            }
            Some((_, good_at)) => (
                Err(ProviderError::Backend {
                    failure: *failure,
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

fn stale(definition: &Definition, age: Duration, max_age: Duration, why: &str) -> ProviderError {
    ProviderError::Backend {
        failure: BackendFailure::ServiceError,
        message: format!(
            "the value of metric {} is {} old, past its max age of {} ({why})",
            definition.spec.name,
            HumanDuration(round_secs(age)),
            HumanDuration(max_age)
        ),
    }
}

fn round_secs(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

/// A definition's own `maxAge` (validated to be at least one refresh interval) is used as
/// written; the global default is raised to three refresh intervals, so a slow metric's value
/// does not expire between two normal refreshes.
fn max_age(definition: &Definition, config: &CacheConfig) -> Duration {
    definition
        .max_age
        .unwrap_or_else(|| config.max_age.max(definition.refresh_interval * 3))
}

impl<S: MetricDataSource> Inner<S> {
    /// One refresher cycle: drop idle or orphaned series, fetch every due one, and return when
    /// the next series falls due.
    async fn refresh_due(self: &Arc<Self>) -> Instant {
        let now = Instant::now();
        let mut next_wake = now + Duration::from_secs(1);
        let definitions = self.definitions.load();
        let mut due: Vec<Arc<Series>> = Vec::new();
        let mut expired = Vec::new();
        for (key, series) in self.series.iter() {
            let current =
                definitions.lookup(key.namespace.as_deref().unwrap_or_default(), &key.metric);
            let mut state = series.lock();
            let idle = now.duration_since(state.last_requested) > self.config.idle_timeout;
            let orphaned = !current.is_some_and(|d| Arc::ptr_eq(d, &series.definition));
            if idle || orphaned {
                drop(state);
                expired.push((key, series));
                continue;
            }
            if state.in_flight {
                continue;
            }
            if state.next_refresh <= now {
                let lag = now.duration_since(state.next_refresh);
                self.metrics
                    .set_refresh_lag(&series.definition.spec.name, lag);
                state.in_flight = true;
                drop(state);
                due.push(series);
            } else {
                next_wake = next_wake.min(state.next_refresh);
            }
        }
        for (key, series) in expired {
            // Remove only this series: a request may have replaced it meanwhile.
            self.series
                .entry_by_ref(key.as_ref())
                .and_compute_with(|entry| match entry {
                    Some(entry) if Arc::ptr_eq(entry.value(), &series) => {
                        moka::ops::compute::Op::Remove
                    }
                    _ => moka::ops::compute::Op::Nop,
                });
        }
        if due.is_empty() {
            return next_wake;
        }

        let wall = SystemTime::now();
        let mut requests = Vec::with_capacity(due.len());
        let mut members = Vec::with_capacity(due.len());
        for series in due {
            match build_request(&series.definition, &series.labels, wall) {
                Ok(request) => {
                    requests.push(request);
                    members.push(series);
                }
                Err(error) => self.record(&series, Err(error), Instant::now(), false),
            }
        }
        let refs: Vec<&MetricDataRequest> = requests.iter().collect();
        for planned in batch::plan(&refs, MAX_QUERIES_PER_CALL) {
            self.pacer.acquire().await;
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
                break;
            };
            let batch_members: Vec<(Arc<Series>, MetricDataRequest)> = planned
                .members
                .iter()
                .map(|&i| (members[i].clone(), requests[i].clone()))
                .collect();
            let inner = self.clone();
            tokio::spawn(async move {
                inner.call(planned, batch_members, wall).await;
                drop(permit);
            });
        }
        next_wake
    }

    async fn call(
        &self,
        planned: batch::Batch,
        members: Vec<(Arc<Series>, MetricDataRequest)>,
        wall: SystemTime,
    ) {
        let queries = planned.request.metric_data_queries.len();
        let metrics_requested = planned
            .request
            .metric_data_queries
            .iter()
            .filter(|q| matches!(q.kind, QueryKind::MetricStat(_)))
            .count();
        let outcome = self.source.get_metric_data(&planned.request).await;
        let fetched = Instant::now();
        match &outcome {
            Ok(results) => {
                let datapoints = results.iter().map(|r| r.points.len()).sum();
                self.metrics.cloudwatch_call("ok", queries);
                self.metrics.cloudwatch_usage(metrics_requested, datapoints);
            }
            Err(error) => {
                self.metrics
                    .cloudwatch_call(failure_of(error).describe(), queries);
                self.metrics.cloudwatch_usage(metrics_requested, 0);
            }
        }
        let mut split = match outcome {
            Ok(results) => Ok(planned.distribute(results)),
            Err(error) => Err(error),
        };
        for (slot, (series, request)) in members.iter().enumerate() {
            let index = planned.members[slot];
            let result = match &mut split {
                Ok(by_member) => {
                    let results = by_member.remove(&index).unwrap_or_default();
                    evaluate(
                        &series.definition,
                        &series.labels,
                        request,
                        Ok(&results),
                        wall,
                    )
                }
                Err(error) => evaluate(
                    &series.definition,
                    &series.labels,
                    request,
                    Err::<&[_], &CloudWatchError>(error),
                    wall,
                ),
            };
            let failed = matches!(result, Err(ProviderError::Backend { .. }));
            self.record(series, result, fetched, failed);
        }
    }

    fn record(
        &self,
        series: &Series,
        result: Result<MetricValue, ProviderError>,
        fetched: Instant,
        failed: bool,
    ) {
        let mut state = series.lock();
        state.in_flight = false;
        if failed {
            state.failures = state.failures.saturating_add(1);
            state.next_refresh = fetched + self.backoff(state.failures, &series.definition);
        } else {
            state.failures = 0;
            state.next_refresh = self.next_tick(fetched, series.definition.refresh_interval);
            state.last_good = result.as_ref().ok().map(|value| (value.clone(), fetched));
        }
        if let Some(observer) = self.observer.get() {
            observer.observe(&series.definition, &series.labels, &result);
        }
        state.latest = Some((result, fetched));
        drop(state);
        series.generation.send_modify(|g| *g += 1);
    }

    /// The first grid point after `after` for `interval`: a wall-clock multiple of the interval.
    fn next_tick(&self, after: Instant, interval: Duration) -> Instant {
        let (anchor, wall) = self.anchor;
        let interval_ms = interval.as_millis().max(1);
        let wall_ms = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            + after.saturating_duration_since(anchor).as_millis();
        let wait_ms = interval_ms - wall_ms % interval_ms;
        after + Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX))
    }

    /// Jittered exponential back-off, never past the refresh interval's schedule by much and
    /// never beyond `backoff_max`.
    fn backoff(&self, failures: u32, definition: &Definition) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let ceiling = self
            .config
            .backoff_max
            .min(definition.refresh_interval.max(self.config.backoff_base) * 4);
        let delay = self
            .config
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(ceiling);
        // Full jitter in [50%, 100%] spreads retries of many series apart.
        delay.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

impl<S: MetricDataSource> ExternalMetricsProvider for QueryCache<S> {
    fn is_defined(&self, namespace: &str, metric: &str) -> bool {
        self.inner
            .definitions
            .load()
            .lookup(namespace, metric)
            .is_some()
    }

    fn list_metrics(&self) -> Vec<MetricInfo> {
        // Discovery has no namespace: each name once, whichever namespaces define it.
        self.inner
            .definitions
            .load()
            .names()
            .into_iter()
            .map(|name| MetricInfo {
                name: name.to_string(),
            })
            .collect()
    }

    async fn get_values(&self, request: MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        self.values(&request).await
    }
}

#[cfg(test)]
mod tests;
