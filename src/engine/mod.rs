//! The refresh engine: HPA requests are answered from the series table; a lane per source keeps
//! every active series fresh with as few calls as the backend allows.
//!
//! - A series becomes active on its first request and idle after `idle_timeout` without one. A
//!   first request waits for the first fetch; concurrent first requests share it.
//! - Refreshes fall on a wall-clock grid of each series' refresh interval ([`schedule`]), so
//!   series asked for at different times are refreshed together. Each lane keeps its series in a
//!   timer queue by due time ([`queue`]), and each cycle packs the due ones into as few calls as
//!   its [`Source`] allows, paced under the source's calls-per-second budget ([`pacer`]) and
//!   shared fairly between tenants ([`fair`]).
//! - A call the backend rejects as a bad request is searched for the series that causes it,
//!   through the same fair planner ([`isolation`]).
//! - Failures back off exponentially with jitter. The last good value is served until it is
//!   older than its max age; then the request fails with a message saying why. Never a made-up
//!   value. Every series a lane takes gets an outcome or goes back to the queue ([`lane`]).

mod fair;
mod isolation;
mod lane;
pub mod metrics;
mod pacer;
mod queue;
pub mod replica;
mod schedule;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::definition::{Backend, Definition, DefinitionSet, HumanDuration, selector_labels};
use crate::metrics::AdapterMetrics;
use crate::provider::{
    ExternalMetricsProvider, MetricInfo, MetricRequest, MetricValue, ProviderError,
};
use crate::series::{self, Found, Reading, Series, SeriesKey, SeriesState, SeriesTable, Suspect};
use crate::source::Source;
use lane::{Lane, SourceLane};
use pacer::Pacer;
use replica::{Change, Role, Roles, SeriesSnapshot};
use schedule::Clock;

/// Changes kept for peers that read them late; a peer further behind starts over from a
/// snapshot.
const CHANGES_BUFFER: usize = 65_536;

/// Tuning of the engine (per-source budgets are given with each source, see [`Pacing`]).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A series nobody asked for this long stops being refreshed.
    pub idle_timeout: Duration,
    /// Default max age of a served value (since its fetch), at least three refresh intervals.
    pub max_age: Duration,
    /// Upper bound on tracked series, so hostile selectors cannot exhaust memory.
    pub max_series: u64,
    /// How long a first request waits for its first fetch.
    pub first_fetch_timeout: Duration,
    /// How long a lane lingers after a wake-up to gather a burst of new series into one call.
    pub batch_linger: Duration,
    /// First back-off after a failed refresh; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// The longest a call may take before its series are answered as failed (the SDK's own
    /// timeouts and retries come first; this bounds a source that never answers).
    pub call_timeout: Duration,
    /// Calls per second, across sources, a replica may make while it falls back to reading
    /// what it is asked for itself (no leader heard from).
    pub fallback_calls_per_second: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            max_age: Duration::from_secs(300),
            max_series: 100_000,
            first_fetch_timeout: Duration::from_secs(15),
            batch_linger: Duration::from_millis(5),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            call_timeout: Duration::from_secs(120),
            fallback_calls_per_second: 1.0,
        }
    }
}

/// A source's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// Never more calls per second than this.
    pub calls_per_second: f64,
    /// At most this many calls in flight at once.
    pub max_concurrent_calls: usize,
}

impl Pacing {
    /// `calls_per_second`, with up to four calls in flight.
    pub fn per_second(calls_per_second: f64) -> Self {
        Self {
            calls_per_second,
            max_concurrent_calls: 4,
        }
    }
}

/// Told about every refresh outcome (for `ExternalMetric` status and events). Called on the
/// refresh path, so it must not block: hand work off to a task.
pub trait OutcomeObserver: Send + Sync + std::fmt::Debug + 'static {
    /// One series of `definition` (with `labels`) was refreshed with `outcome`.
    fn observe(
        &self,
        definition: &Arc<Definition>,
        labels: &series::Labels,
        outcome: &Result<Reading, ProviderError>,
    );
}

/// The sources the engine reads from, each with its budget.
#[derive(Debug, Default)]
pub struct Sources {
    lanes: Vec<Arc<dyn Lane>>,
}

impl Sources {
    /// No sources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read `source`'s backend from it, paced by `pacing`. A later source for the same backend
    /// replaces an earlier one.
    pub fn with<S: Source>(mut self, source: S, pacing: Pacing) -> Self {
        let lane: Arc<dyn Lane> = Arc::new(SourceLane::new(source, pacing));
        self.lanes.retain(|l| l.backend() != lane.backend());
        self.lanes.push(lane);
        self
    }
}

/// The cached provider: the series table, and the lanes that refresh it. Clones share it.
#[derive(Debug, Clone)]
pub struct Engine {
    core: Arc<Core>,
}

/// What the request path and the lanes share.
#[derive(Debug)]
pub(crate) struct Core {
    definitions: Arc<ArcSwap<DefinitionSet>>,
    table: SeriesTable,
    config: EngineConfig,
    metrics: Arc<AdapterMetrics>,
    observer: OnceLock<Arc<dyn OutcomeObserver>>,
    clock: Clock,
    lanes: Vec<Arc<dyn Lane>>,
    /// The definitions the table was last swept against (see [`Core::sweep_orphans`]).
    swept: std::sync::Mutex<Option<Arc<DefinitionSet>>>,
    /// Who may call backends (always this replica, unless set).
    roles: OnceLock<Arc<dyn Roles>>,
    /// Every change to the table, for peers (cheap when nobody listens). Made by the first
    /// subscriber: its buffer of [`CHANGES_BUFFER`] slots is 5.8 MB, committed up front, which
    /// a replica without followers never needs.
    changes: OnceLock<broadcast::Sender<Change>>,
    /// Series first asked for here, for the leader (set on replicas that may follow).
    demand: OnceLock<mpsc::Sender<SeriesKey>>,
    /// The budget of calls made while falling back.
    fallback: Pacer,
}

impl Engine {
    /// An engine over `definitions` reading from `sources`. Call [`Engine::run`] to refresh.
    pub fn new(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        sources: Sources,
        config: EngineConfig,
        metrics: Arc<AdapterMetrics>,
    ) -> Self {
        Self::with_clock(definitions, sources, config, metrics, Clock::system())
    }

    /// As [`Engine::new`], with `now` as the wall-clock time of this moment, and wall-clock time
    /// following tokio's clock from there: the refresh grid and the requests' time windows do
    /// not depend on when a test runs, and follow its paused clock.
    pub fn with_wall_clock(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        sources: Sources,
        config: EngineConfig,
        metrics: Arc<AdapterMetrics>,
        now: SystemTime,
    ) -> Self {
        Self::with_clock(definitions, sources, config, metrics, Clock::fixed(now))
    }

    fn with_clock(
        definitions: Arc<ArcSwap<DefinitionSet>>,
        sources: Sources,
        config: EngineConfig,
        metrics: Arc<AdapterMetrics>,
        clock: Clock,
    ) -> Self {
        let fallback_rate = config.fallback_calls_per_second;
        let core = Arc::new(Core {
            definitions,
            table: SeriesTable::new(config.max_series),
            observer: OnceLock::new(),
            clock,
            lanes: sources.lanes,
            swept: std::sync::Mutex::new(None),
            roles: OnceLock::new(),
            changes: OnceLock::new(),
            demand: OnceLock::new(),
            fallback: Pacer::new(fallback_rate),
            config,
            metrics,
        });
        Self { core }
    }

    /// Install the observer told about every refresh outcome (once).
    pub fn set_observer(&self, observer: Arc<dyn OutcomeObserver>) {
        if self.core.observer.set(observer).is_err() {
            tracing::warn!("an outcome observer is already installed");
        }
    }

    /// Decide this replica's role with `roles` from now on (once). Without it, the replica
    /// leads.
    pub fn set_roles(&self, roles: Arc<dyn Roles>) {
        if self.core.roles.set(roles).is_err() {
            tracing::warn!("the replica roles are already set");
        }
    }

    /// Send the key of every series first asked for here to `demand` (once), so the leader
    /// starts refreshing it.
    pub fn set_demand(&self, demand: mpsc::Sender<SeriesKey>) {
        if self.core.demand.set(demand).is_err() {
            tracing::warn!("the demand channel is already set");
        }
    }

    /// Every change to the table from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.core
            .changes
            .get_or_init(|| broadcast::channel(CHANGES_BUFFER).0)
            .subscribe()
    }

    /// Every series, as of now, with wall-clock times.
    pub fn snapshot(&self) -> Vec<Arc<SeriesSnapshot>> {
        self.core
            .table
            .snapshot()
            .iter()
            .map(|series| Arc::new(self.core.snapshot_of(series, &series.lock())))
            .collect()
    }

    /// The definition this replica serves under `key` (to check a peer's snapshot was read
    /// with the same one).
    pub fn definition_of(&self, key: &SeriesKey) -> Option<Arc<Definition>> {
        let definitions = self.core.definitions.load();
        let definition = match &key.namespace {
            None => definitions.get(&key.metric),
            Some(namespace) => definitions
                .lookup(namespace, &key.metric)
                .filter(|d| d.namespace.as_deref() == Some(namespace.as_str())),
        };
        definition.cloned()
    }

    /// Take over a series as another replica holds it: its values, failures and due time. Its
    /// definition must be the one this replica serves under its key. False if it was not
    /// applied (no room). A value fetched here later than the other replica's (falling back
    /// while no leader streamed, then a new leader's snapshot) is kept: newer fetches win.
    pub fn apply(&self, snapshot: &SeriesSnapshot) -> bool {
        let core = &self.core;
        let now = Instant::now();
        let series = match core
            .table
            .get_or_insert(&snapshot.definition, &snapshot.key.labels, now)
        {
            Ok(Found::Existing(series)) => series,
            Ok(Found::Created { series, dropped }) => {
                if let Some(dropped) = dropped {
                    core.unschedule(&dropped);
                }
                series
            }
            Err(_) => return false,
        };
        let mut state = series.lock();
        // The leader refreshes only what is wanted somewhere: it stays active here too.
        state.last_requested = now;
        let theirs = snapshot
            .latest
            .clone()
            .map(|(result, at)| (result.map_err(Box::new), core.clock.instant_of(at)));
        let ours_newer = match (&state.latest, &theirs) {
            (Some((_, ours)), Some((_, theirs))) => ours > theirs,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !ours_newer {
            state.failures = snapshot.failures;
            state.latest = theirs;
        }
        let their_good = snapshot
            .last_good
            .map(|(reading, at)| (reading, core.clock.instant_of(at)));
        if their_good.as_ref().map(|(_, at)| *at) > state.last_good.as_ref().map(|(_, at)| *at) {
            state.last_good = their_good;
        }
        if !state.in_flight && !ours_newer {
            let due = core.clock.instant_of(snapshot.next_refresh);
            core.schedule(&series, &mut state, due);
        }
        // The status writer learns what the leader learned, so it is warm when this replica
        // leads (it writes only then).
        if let (Some(observer), Some((result, _))) = (core.observer.get(), &state.latest) {
            let result = series::unboxed(result);
            observer.observe(&series.definition, &series.labels, &result);
        }
        let answered = state.latest.is_some();
        drop(state);
        if answered {
            series.publish();
        }
        true
    }

    /// Stop tracking the series of `key`, as the leader did.
    pub fn remove(&self, key: &SeriesKey) {
        let Some(definition) = self.definition_of(key) else {
            return;
        };
        if let Some(series) = self.core.table.get(&definition, &key.labels) {
            self.core.drop_series(&series);
        }
    }

    /// Series another replica was asked for: track them (new ones are due at once) and keep
    /// them active. Returns the keys that could not be tracked, with why, and the series
    /// already answered (the asker may have missed them: it needs no wait for the next refresh).
    pub fn activate(&self, keys: &[SeriesKey]) -> Activated {
        let core = &self.core;
        let now = Instant::now();
        let mut refused = Vec::new();
        let mut held = Vec::new();
        for key in keys {
            let Some(definition) = self.definition_of(key) else {
                refused.push((
                    key.clone(),
                    ProviderError::NotFound {
                        metric: key.metric.clone(),
                        namespace: key.namespace.clone().unwrap_or_default(),
                    },
                ));
                continue;
            };
            match core.table.get_or_insert(&definition, &key.labels, now) {
                Ok(Found::Existing(series)) => {
                    let mut state = series.lock();
                    state.last_requested = now;
                    if state.latest.is_some() {
                        held.push(Arc::new(core.snapshot_of(&series, &state)));
                    }
                }
                Ok(Found::Created { series, dropped }) => {
                    if let Some(dropped) = dropped {
                        core.unschedule(&dropped);
                    }
                    core.schedule_now(&series);
                }
                Err(refusal) => refused.push((
                    key.clone(),
                    capacity_error(&definition, core.table.max_series(), &refusal),
                )),
            }
        }
        Activated { refused, held }
    }

    /// The keys of every series held.
    pub fn keys(&self) -> Vec<SeriesKey> {
        self.core
            .table
            .snapshot()
            .iter()
            .map(|series| series.key())
            .collect()
    }

    /// The leader could not track the series of `key` (`error` says why, e.g. its table is
    /// full): whoever waits for its first value here gets that answer, and it is dropped.
    pub fn refuse(&self, key: &SeriesKey, error: ProviderError) {
        let Some(definition) = self.definition_of(key) else {
            return;
        };
        let Some(series) = self.core.table.get(&definition, &key.labels) else {
            return;
        };
        {
            let mut state = series.lock();
            if state.latest.is_none() {
                state.latest = Some((Err(Box::new(error)), Instant::now()));
            }
        }
        series.publish();
        self.core.drop_series(&series);
    }

    /// Series asked for here since `since`.
    pub fn requested_here_since(&self, since: Instant) -> Vec<SeriesKey> {
        self.core
            .table
            .snapshot()
            .into_iter()
            .filter(|series| series.lock().requested_here.is_some_and(|at| at >= since))
            .map(|series| series.key())
            .collect()
    }

    /// A handle for the refresh task (and to share the engine).
    pub fn clone_handle(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }

    /// Install the scrape-time collector: active series, value ages by metric and refresh lag by
    /// backend, all computed from the live table and queues, so a name that goes away leaves
    /// `/metrics` with it.
    pub fn register_gauges(&self) {
        let weak = Arc::downgrade(&self.core);
        self.core.metrics.set_collector(Box::new(move |metrics| {
            if let Some(core) = weak.upgrade() {
                let now = SystemTime::now();
                let mut ages: BTreeMap<String, f64> = BTreeMap::new();
                let series = core.table.snapshot();
                for series in &series {
                    let state = series.lock();
                    if let Some((reading, _)) = &state.last_good {
                        let age = now
                            .duration_since(reading.timestamp)
                            .unwrap_or_default()
                            .as_secs_f64();
                        let entry = ages.entry(series.definition.spec.name.clone()).or_default();
                        *entry = entry.max(age);
                    }
                }
                metrics.engine().set_active_series(series.len());
                metrics
                    .engine()
                    .set_value_ages(&ages.into_iter().collect::<Vec<_>>());
                let definitions = core.definitions.load();
                let names = definitions.names();
                metrics.api().retain_request_metrics(|name| {
                    names.contains(name) || matches!(name, "unknown" | "forwarded")
                });
                let instant = Instant::now();
                for lane in &core.lanes {
                    let (learned, whole) = lane.isolation_counts();
                    metrics.engine().set_lane(
                        lane.backend(),
                        lane.lag(instant),
                        lane.queued(),
                        learned,
                        whole,
                    );
                }
            }
        }));
    }

    /// The number of active series.
    pub fn active_series(&self) -> usize {
        self.core.table.len()
    }

    /// Refresh series until `stop` is cancelled: one task per source (each restarts itself
    /// after a panic). Returns early if a lane ends otherwise, so the caller can treat that as
    /// fatal.
    pub async fn run(self, stop: CancellationToken) {
        let mut lanes = JoinSet::new();
        for lane in &self.core.lanes {
            lanes.spawn(lane.clone().run(self.core.clone(), stop.clone()));
        }
        while let Some(joined) = lanes.join_next().await {
            if let Err(error) = joined {
                tracing::error!("a refresh lane stopped: {error}");
                return;
            }
        }
    }

    async fn values(&self, request: &MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        let core = &self.core;
        let definitions = core.definitions.load();
        let Some(definition) = definitions.lookup(&request.namespace, &request.metric) else {
            return Err(ProviderError::NotFound {
                metric: request.metric.clone(),
                namespace: request.namespace.clone(),
            });
        };
        let labels = selector_labels(definition, &request.selector)?;
        let now = Instant::now();
        // Fast path: the series exists for this very definition.
        let series = match core.table.get(definition, &labels) {
            Some(series) => series,
            None => match core.table.get_or_insert(definition, &labels, now) {
                Ok(Found::Created { series, dropped }) => {
                    if let Some(dropped) = dropped {
                        core.unschedule(&dropped);
                    }
                    core.schedule_now(&series);
                    if let Some(demand) = core.demand.get() {
                        // Full: the next keep-alive of series asked for here carries it.
                        let _ = demand.try_send(series.key());
                    }
                    series
                }
                Ok(Found::Existing(series)) => series,
                Err(refusal) => {
                    return Err(capacity_error(
                        definition,
                        core.table.max_series(),
                        &refusal,
                    ));
                }
            },
        };
        {
            let mut state = series.lock();
            state.last_requested = now;
            state.requested_here = Some(now);
        }

        if series.fetched_once() {
            core.metrics.engine().cache_lookup("hit");
        } else {
            core.metrics.engine().cache_lookup("miss");
            if !series.wait_first(core.config.first_fetch_timeout).await {
                if !core.table.contains(definition, &labels) {
                    // Dropped before its first fetch to make room for another tenant.
                    return Err(capacity_error(
                        definition,
                        core.table.max_series(),
                        &series::AtCapacity::Full,
                    ));
                }
                return Err(ProviderError::FirstFetchPending(format!(
                    "unable to fetch metric {}: no answer from {} within {}; it will be retried",
                    definition.spec.name,
                    definition.backend(),
                    HumanDuration(core.config.first_fetch_timeout)
                )));
            }
        }
        let (answer, stale) = series::answer(&series, core.config.max_age, Instant::now());
        if stale {
            core.metrics.engine().cache_lookup("stale");
        }
        // Nothing to serve after an outage: probe now rather than at the end of a long
        // back-off, so the value comes back as soon as the backend does. A failure that asking
        // again cannot fix (a rejected query, access denied) keeps its back-off: otherwise every
        // HPA poll would make a call for it.
        let worth_probing = match &answer {
            Err(ProviderError::Stale { .. }) => true,
            Err(ProviderError::Backend { failure, .. }) => failure.is_transient(),
            _ => false,
        };
        if worth_probing {
            core.probe(&series);
        }
        answer.map(|value| vec![value])
    }
}

fn capacity_error(
    definition: &Definition,
    max_series: u64,
    refusal: &series::AtCapacity,
) -> ProviderError {
    let name = &definition.spec.name;
    ProviderError::AtCapacity(match refusal {
        series::AtCapacity::Full => format!(
            "unable to serve metric {name}: the adapter already tracks its maximum of {max_series} series (--max-series); too many distinct selectors are being asked for"
        ),
        series::AtCapacity::FairShare { share } => format!(
            "unable to serve metric {name}: the adapter tracks its maximum of {max_series} series (--max-series), and {} already holds its fair share of {share}; too many distinct selectors are being asked for",
            definition.tenant()
        ),
    })
}

/// What [`Engine::activate`] did with the series another replica asked for.
#[derive(Debug, Default)]
pub struct Activated {
    /// Keys that could not be tracked, with why.
    pub refused: Vec<(SeriesKey, ProviderError)>,
    /// Series already held with an answer, as they are now.
    pub held: Vec<Arc<SeriesSnapshot>>,
}

/// When a failed refresh is tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Next {
    /// After a growing back-off (a failure that may pass), jittered by the factor in [0, 1).
    Backoff(f64),
    /// At the next grid point (an answer, or a failure that back-off would not change).
    Tick,
}

impl Next {
    /// A back-off with a fresh jitter (share one among series that should retry together).
    pub(crate) fn backoff() -> Self {
        Next::Backoff(fastrand::f64())
    }
}

impl Core {
    /// The lane of `backend`, if a source reads it.
    fn lane(&self, backend: Backend) -> Option<&Arc<dyn Lane>> {
        self.lanes.iter().find(|l| l.backend() == backend)
    }

    /// Wake the lane of `backend` (a series is due now).
    fn wake(&self, backend: Backend) {
        if let Some(lane) = self.lane(backend) {
            lane.wake();
        }
    }

    /// Once per change of the definitions, drop every series whose definition was edited or
    /// deleted, so they leave the table (and `/metrics`) at once rather than when next due.
    fn sweep_orphans(&self) {
        let definitions = self.definitions.load_full();
        {
            let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if swept
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, &definitions))
            {
                return;
            }
            *swept = Some(definitions.clone());
        }
        for series in self.table.snapshot() {
            let definition = &series.definition;
            let current = definitions.lookup(
                definition.namespace.as_deref().unwrap_or_default(),
                &definition.spec.name,
            );
            if !current.is_some_and(|d| Arc::ptr_eq(d, definition)) {
                self.drop_series(&series);
            }
        }
    }

    /// This replica's role now.
    fn role(&self) -> Role {
        self.roles.get().map_or(Role::Lead, |roles| roles.role())
    }

    /// Whether this replica may call backends now (leading, or falling back).
    fn may_call(&self) -> bool {
        self.role() != Role::Follow
    }

    /// The change stream, if anyone listens to it now.
    fn listened_changes(&self) -> Option<&broadcast::Sender<Change>> {
        self.changes
            .get()
            .filter(|changes| changes.receiver_count() > 0)
    }

    /// Drop `series` from the table and its queue, and tell peers.
    fn drop_series(&self, series: &Arc<Series>) {
        self.table.remove(series);
        self.unschedule(series);
        if let Some(changes) = self.listened_changes() {
            let _ = changes.send(Change::Removed(series.key()));
        }
    }

    /// `series` as peers take it over.
    fn snapshot_of(&self, series: &Series, state: &SeriesState) -> SeriesSnapshot {
        SeriesSnapshot {
            key: series.key(),
            definition: series.definition.clone(),
            latest: state
                .latest
                .as_ref()
                .map(|(result, at)| (series::unboxed(result), self.clock.wall_of(*at))),
            last_good: state
                .last_good
                .map(|(reading, at)| (reading, self.clock.wall_of(at))),
            next_refresh: self.clock.wall_of(state.next_refresh),
            failures: state.failures,
        }
    }

    /// Put `series` in its lane's queue under `due` (the series is locked by the caller, so
    /// its state and the queue change together).
    fn schedule(&self, series: &Arc<Series>, state: &mut SeriesState, due: Instant) {
        let Some(lane) = self.lane(series.backend()) else {
            state.next_refresh = due;
            return;
        };
        let queue = lane.queue();
        if state.queued {
            queue.remove(state.next_refresh, series.id);
        }
        state.next_refresh = due;
        state.queued = !state.removed;
        if state.queued {
            queue.insert(due, series.clone());
        }
    }

    /// A new series: due now.
    fn schedule_now(&self, series: &Arc<Series>) {
        let mut state = series.lock();
        self.schedule(series, &mut state, Instant::now());
        drop(state);
        self.wake(series.backend());
    }

    /// A series left the table: take it out of its queue.
    fn unschedule(&self, series: &Arc<Series>) {
        let mut state = series.lock();
        state.removed = true;
        if state.queued
            && let Some(lane) = self.lane(series.backend())
        {
            lane.queue().remove(state.next_refresh, series.id);
        }
        state.queued = false;
    }

    /// A series taken for a refresh that was not made (budget spent, cycle cut short): back in
    /// the queue under its due time.
    fn requeue(&self, series: &Arc<Series>, due: Instant) {
        let mut state = series.lock();
        state.in_flight = false;
        self.schedule(series, &mut state, due);
    }

    /// A member of a rejected call, to be read again at once with its search group only.
    fn retry_as_suspect(&self, series: &Arc<Series>, suspect: Suspect, now: Instant) {
        let mut state = series.lock();
        state.in_flight = false;
        state.suspect = Some(Box::new(suspect));
        self.schedule(series, &mut state, now);
    }

    /// Refresh `series` as soon as its lane can, unless it is being refreshed or was tried in
    /// the last `backoff_base` (a flood of requests makes at most one probe per interval).
    fn probe(&self, series: &Arc<Series>) {
        let now = Instant::now();
        let mut state = series.lock();
        let recently = state
            .last_attempt
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.backoff_base);
        if state.in_flight || recently || state.next_refresh <= now {
            return;
        }
        self.schedule(series, &mut state, now);
        drop(state);
        self.wake(series.backend());
    }

    /// Store a refresh outcome, schedule the next refresh, and wake waiters. A backend failure
    /// keeps the last good value and is retried as `next` says; anything else is an answer,
    /// refreshed at the next grid point.
    fn record(
        &self,
        series: &Arc<Series>,
        result: Result<Reading, ProviderError>,
        fetched: Instant,
        next: Next,
    ) {
        let definition = &series.definition;
        let failed = matches!(result, Err(ProviderError::Backend { .. }));
        let mut state = series.lock();
        state.in_flight = false;
        state.last_attempt = Some(fetched);
        let due = if failed {
            state.failures = state.failures.saturating_add(1);
            match next {
                Next::Tick => self.clock.next_tick(fetched, definition.refresh_interval),
                Next::Backoff(jitter) => self.backoff_until(&state, definition, fetched, jitter),
            }
        } else {
            state.failures = 0;
            if let Ok(value) = &result {
                state.last_good = Some((*value, fetched));
            }
            self.clock.next_tick(fetched, definition.refresh_interval)
        };
        self.schedule(series, &mut state, due);
        if let Some(observer) = self.observer.get() {
            observer.observe(definition, &series.labels, &result);
        }
        state.latest = Some((result.map_err(Box::new), fetched));
        if let Some(changes) = self.listened_changes() {
            let snapshot = self.snapshot_of(series, &state);
            let _ = changes.send(Change::Updated(Arc::new(snapshot)));
        }
        drop(state);
        series.publish();
    }

    /// When a failing series is tried next: after its back-off, but once its last good value is
    /// past its max age (so requests fail), no later than the next grid point, so recovery
    /// after a long outage is prompt.
    fn backoff_until(
        &self,
        state: &SeriesState,
        definition: &Definition,
        fetched: Instant,
        jitter: f64,
    ) -> Instant {
        let backoff = schedule::backoff(
            state.failures,
            definition.refresh_interval,
            self.config.backoff_base,
            self.config.backoff_max,
            jitter,
        );
        let next = fetched + backoff;
        let stale_at = match &state.last_good {
            Some((_, good_at)) => *good_at + series::max_age(definition, self.config.max_age),
            None => fetched,
        };
        if next > stale_at {
            next.min(
                self.clock
                    .next_tick(stale_at.max(fetched), definition.refresh_interval),
            )
        } else {
            next
        }
    }
}

impl ExternalMetricsProvider for Engine {
    fn is_defined(&self, namespace: &str, metric: &str) -> bool {
        self.core
            .definitions
            .load()
            .lookup(namespace, metric)
            .is_some()
    }

    fn list_metrics(&self) -> Vec<MetricInfo> {
        // Discovery has no namespace: each name once, whichever namespaces define it.
        self.core
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
