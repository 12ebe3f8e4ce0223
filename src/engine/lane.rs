//! A lane: one source's refresh loop, with its own timer queue, budget and isolation memory.
//! Lanes run side by side, so a slow or throttled backend never delays another's series.
//!
//! No series is ever lost: every series a cycle takes from the queue is, by the end, recorded
//! with an outcome, put back in the queue, or handed to a call task whose guard records an
//! outcome however the task ends (answered, timed out, panicked, cancelled). A source that
//! panics while preparing or planning fails only the series concerned, and a source that leaves
//! an item out of its plan gets that item answered with an internal error.

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::isolation::{Isolation, Route, Verdict};
use super::pacer::Pacer;
use super::queue::DueQueue;
use super::replica::Role;
use super::{Core, Next, Pacing, fair};
use crate::definition::Backend;
use crate::provider::{BackendFailure, ProviderError};
use crate::series::Series;
use crate::source::{Blame, Fetched, Member, Profile, Source, SourceError, Usage, backend_error};
use crate::telemetry::Chain;

/// How long a lane waits before restarting after its loop panicked.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// The longest a lane sleeps between looks at its queue.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often a following lane looks again while series it holds are past due (the leader's
/// values for them not yet in): it must not spin on a due time it leaves to the leader.
const FOLLOW_RECHECK: Duration = Duration::from_millis(100);
/// While the leader's stream is silent ([`Role::Waiting`]), first values asked for here are
/// gathered this long into one call, so a failover costs a few calls, not one per second.
const WAITING_GATHER: Duration = Duration::from_secs(3);

/// What the engine needs of a lane, whatever its source.
pub(crate) trait Lane: Send + Sync + std::fmt::Debug {
    /// The backend it reads.
    fn backend(&self) -> Backend;
    /// A series is due now: look at the queue soon.
    fn wake(&self);
    /// Its timer queue.
    fn queue(&self) -> &DueQueue;
    /// How late the oldest due series is (in the queue, in the backlog, or in a call not yet
    /// answered).
    fn lag(&self, now: Instant) -> Duration;
    /// Series due or waiting for budget (not yet in a call).
    fn queued(&self) -> usize;
    /// Definitions with something learned from rejected calls, and those rejected as a whole.
    fn isolation_counts(&self) -> (usize, usize);
    /// Refresh this backend's series until `stop`, restarting after a panic.
    fn run(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) -> BoxFuture<'static, ()>;
}

/// The lane of one [`Source`].
pub(crate) struct SourceLane<S> {
    source: S,
    profile: Profile,
    pacer: Pacer,
    /// Items a cycle may plan (about one second of the budget), shared fairly by tenants.
    items_per_cycle: usize,
    calls: Arc<Semaphore>,
    wake: Notify,
    queue: DueQueue,
    isolation: Isolation,
    /// Calls under way, by id, with the due time of their oldest member (for the lag).
    in_flight: Mutex<HashMap<u64, Instant>>,
    call_ids: AtomicU64,
    /// When the last cycle in [`Role::Waiting`] took first values (see [`WAITING_GATHER`]).
    waiting_taken: Mutex<Option<Instant>>,
    /// The role of the last cycle, to catch up once on becoming the leader.
    last_role: Mutex<Option<Role>>,
    /// Due series the budget has not reached yet (taken from the queue: in flight), by tenant.
    backlog: Mutex<fair::Backlog<Due>>,
}

impl<S> std::fmt::Debug for SourceLane<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLane")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// A due series taken for this cycle, and how it is read.
#[derive(Clone)]
struct Due {
    at: Instant,
    series: Arc<Series>,
    route: Route,
}

/// A prepared series: its labels as the source takes them, and its request.
struct Prepared<R> {
    due: Due,
    labels: BTreeMap<String, String>,
    request: R,
}

/// Series of one route, planned together.
type Class<R> = (Route, Vec<Prepared<R>>);

/// A call ready to go: how its members were routed, the call, its members.
struct Dispatch<S: Source> {
    route: Route,
    call: S::Call,
    members: Vec<Prepared<S::Request>>,
}

/// A call that did not finish: no answer within the engine's call timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
struct CallTimedOut(Duration);

impl<S: Source> SourceLane<S> {
    pub(crate) fn new(source: S, pacing: Pacing) -> Self {
        let profile = source.profile();
        let calls_per_cycle = if pacing.calls_per_second.is_finite() {
            pacing.calls_per_second.ceil().clamp(1.0, 1e6) as usize
        } else {
            1
        };
        Self {
            source,
            profile,
            items_per_cycle: calls_per_cycle.saturating_mul(profile.max_items_per_call),
            pacer: Pacer::new(pacing.calls_per_second),
            calls: Arc::new(Semaphore::new(pacing.max_concurrent_calls.max(1))),
            wake: Notify::new(),
            queue: DueQueue::default(),
            isolation: Isolation::default(),
            in_flight: Mutex::new(HashMap::new()),
            call_ids: AtomicU64::new(0),
            waiting_taken: Mutex::new(None),
            last_role: Mutex::new(None),
            backlog: Mutex::new(fair::Backlog::default()),
        }
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, fair::Backlog<Due>> {
        self.backlog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn supervise(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) {
        loop {
            let task = tokio::spawn(self.clone().run_loop(core.clone(), stop.clone()));
            match task.await {
                Ok(()) => return,
                Err(error) if error.is_panic() => {
                    tracing::error!(
                        backend = %self.profile.backend,
                        "the refresh loop panicked; restarting it (its series were put back)"
                    );
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RESTART_DELAY) => {}
                    }
                }
                Err(_) => return,
            }
        }
    }

    async fn run_loop(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) {
        loop {
            core.metrics.engine().lane_cycle(self.profile.backend);
            let next_wake = self.cycle(&core, &stop).await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next_wake) => {}
                () = self.wake.notified() => {
                    // Gather a burst of first requests into the same call.
                    tokio::time::sleep(core.config.batch_linger).await;
                }
            }
        }
    }

    /// One cycle: take the due series of this backend, route them (shared, searched, alone,
    /// answered without a call), keep what fits about a second of the budget (shared fairly
    /// between tenants), plan and start the calls. Returns when to look again.
    async fn cycle(self: &Arc<Self>, core: &Arc<Core>, stop: &CancellationToken) -> Instant {
        let now = Instant::now();
        let mut next_wake = self.queue.first_due().unwrap_or(now + MAX_SLEEP);
        core.sweep_orphans();
        let role = core.role();
        let last_role = self
            .last_role
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace(role);
        if last_role.is_some_and(|last| last != role) {
            // What waited for budget was taken under the old role (a follower must not hold
            // series in flight, a fallback reads only what is asked here): back to the queue.
            for due in self.backlog().drain() {
                core.requeue(&due.series, due.at);
            }
        }
        if role == Role::Lead && last_role.is_some_and(|last| last != Role::Lead) {
            self.catch_up(core, now);
        }
        if role == Role::Follow {
            // The leader refreshes; values arrive from it, and the queue keeps their due times
            // for when this replica leads. A due time already passed stays first in the queue
            // until the leader's value moves it: look again soon, not at once.
            return next_wake.clamp(now + FOLLOW_RECHECK, now + MAX_SLEEP);
        }
        if role == Role::Waiting {
            let mut taken_at = self
                .waiting_taken
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(at) = *taken_at
                && now < at + WAITING_GATHER
            {
                return at + WAITING_GATHER;
            }
            *taken_at = Some(now);
        }
        let fallback = matches!(role, Role::Fallback | Role::Waiting);
        self.isolation.tidy(now);
        let mut taken = Taken::new(core.clone());
        let definitions = core.definitions.load();
        for (at, series) in self.queue.pop_due(now) {
            // Hand the worker back now and then: thousands of due series must not hold up requests.
            tokio::task::consume_budget().await;
            let mut state = series.lock();
            if !state.queued || state.next_refresh != at {
                // Rescheduled since it was popped: its new entry is in the queue.
                continue;
            }
            state.queued = false;
            let idle =
                now.saturating_duration_since(state.last_requested) > core.config.idle_timeout;
            let definition = &series.definition;
            let current = definitions.lookup(
                definition.namespace.as_deref().unwrap_or_default(),
                &definition.spec.name,
            );
            let orphaned = !current.is_some_and(|d| Arc::ptr_eq(d, definition));
            if idle || orphaned || state.removed {
                drop(state);
                core.drop_series(&series);
                continue;
            }
            let asked_here = state
                .requested_here
                .is_some_and(|at| now.saturating_duration_since(at) <= core.config.idle_timeout);
            if role == Role::Waiting && (series.fetched_once() || !asked_here) {
                // The leader's stream is only silent: what has a value (or is not asked for
                // here) keeps its due time, so the next leader refreshes it at once, as it
                // would have; a failover costs no extra calls for it.
                core.schedule(&series, &mut state, at);
                continue;
            }
            if fallback && !asked_here {
                // Falling back, a replica reads only what it is asked for; the rest waits for
                // a leader (or a request here) until its next grid point.
                let next = core
                    .clock
                    .next_tick(now, series.definition.refresh_interval);
                core.schedule(&series, &mut state, next);
                continue;
            }
            let route = self.isolation.route(&series, &mut state.suspect, now);
            state.in_flight = true;
            drop(state);
            taken.take(Due { at, series, route });
        }
        let due = taken.pending();
        if due.is_empty() && self.backlog().is_empty() {
            return next_wake.min(now + MAX_SLEEP);
        }
        // Series of a definition rejected whatever the selector are answered without a call.
        let mut to_plan = Vec::with_capacity(due.len());
        for due in due {
            if due.route == Route::Rejected {
                let result = Err(rejection(&self.profile, &due.series, true));
                core.record(&due.series, result, now, Next::Tick);
                taken.done(&due.series);
            } else {
                to_plan.push(due);
            }
        }
        // A search group's call is charged to its members' tenants, a whole call among them;
        // a series alone costs its tenant a whole call.
        let mut group_sizes: HashMap<u64, usize> = HashMap::new();
        for due in &to_plan {
            if let Route::Group(suspect) = due.route {
                *group_sizes.entry(suspect.group).or_default() += 1;
            }
        }
        let whole_call = self.profile.max_items_per_call;
        let admitted = {
            let mut backlog = self.backlog();
            // Weighed once, as they join the backlog; taken out of `taken` (the backlog holds
            // them until the budget reaches them) ...
            for due in to_plan {
                let size = match due.route {
                    Route::Group(suspect) => {
                        whole_call.div_ceil(group_sizes.get(&suspect.group).copied().unwrap_or(1))
                    }
                    route if route.alone() => whole_call,
                    _ => self.source.size(&due.series.definition),
                };
                taken.done(&due.series);
                backlog.push(due.series.tenant(), size, due);
            }
            // A series that left the table while it waited takes no budget.
            let admitted = backlog.take(self.items_per_cycle, |due| {
                let mut state = due.series.lock();
                if state.removed {
                    state.in_flight = false;
                }
                !state.removed
            });
            if !backlog.is_empty() {
                tracing::debug!(
                    backend = %self.profile.backend,
                    waiting = backlog.len(),
                    "refresh budget spent for this cycle; the rest waits for the next"
                );
                // The next cycle, as soon as the budget allows.
                next_wake = now;
            }
            admitted
        };
        // ... and back in `taken` once admitted, so a cycle cut short requeues them.
        let mut live = Vec::with_capacity(admitted.len());
        for due in admitted {
            let mut state = due.series.lock();
            if state.removed {
                // Dropped from the table since the backlog let it through.
                state.in_flight = false;
                continue;
            }
            drop(state);
            taken.take(due.clone());
            live.push(due);
        }
        let admitted = live;
        let wall = core.clock.wall_now();
        let mut prepared = Vec::with_capacity(admitted.len());
        for due in admitted {
            tokio::task::consume_budget().await;
            let labels = due.series.labels.to_map();
            let definition = &due.series.definition;
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.source.prepare(definition, &labels, wall)
            }));
            match outcome {
                Ok(Ok(request)) => prepared.push(Prepared {
                    due,
                    labels,
                    request,
                }),
                // This series alone cannot be read (e.g. a label value its query cannot take).
                Ok(Err(error)) => {
                    core.record(&due.series, Err(error), Instant::now(), Next::Tick);
                    taken.done(&due.series);
                }
                Err(_) => {
                    tracing::error!(metric = %definition.spec.name, backend = %self.profile.backend, "the source panicked preparing a series");
                    self.internal_error(core, &due.series);
                    taken.done(&due.series);
                }
            }
        }
        for dispatch in self.plan(core, prepared, &mut taken) {
            if stop.is_cancelled() || !core.may_call() {
                // Leadership lost (or stopping) mid-cycle: what was not called waits.
                break;
            }
            self.pacer.acquire().await;
            if fallback {
                core.fallback.acquire().await;
            }
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
                break;
            };
            // Right before acting: a leader whose lease lapsed meanwhile makes no call (and a
            // change of role mid-cycle leaves the rest to the next cycle, planned for the new
            // role).
            if core.role() != role {
                break;
            }
            let guard = CallGuard::new(self.clone(), core.clone(), &dispatch.members);
            for member in &dispatch.members {
                taken.done(&member.due.series);
            }
            let lane = self.clone();
            tokio::spawn(async move {
                lane.execute(guard, dispatch, fallback).await;
                drop(permit);
            });
        }
        // Whatever was taken and not handed on goes back to the queue when `taken` drops.
        next_wake.min(now + MAX_SLEEP)
    }

    /// On becoming the leader: every series past the grid point after its last fetch is due
    /// now. Falling back put series nobody asked for here off to their next grid point, and the
    /// old leader would have refreshed them already; so would a replica that led all along.
    fn catch_up(&self, core: &Core, now: Instant) {
        let mut caught = 0usize;
        for (at, series) in self.queue.entries() {
            if at <= now {
                continue;
            }
            let mut state = series.lock();
            // One backing off after failures keeps its back-off.
            if !state.queued || state.in_flight || state.next_refresh != at || state.failures > 0 {
                continue;
            }
            let fetched = state
                .latest
                .as_ref()
                .map(|(_, fetched)| *fetched)
                .or(state.last_attempt);
            // Due where a leader all along would have put it: the grid point after its fetch.
            let interval = series.definition.refresh_interval;
            if fetched.is_none_or(|fetched| core.clock.next_tick(fetched, interval) <= now) {
                core.schedule(&series, &mut state, now);
                caught += 1;
            }
        }
        if caught > 0 {
            tracing::info!(backend = %self.profile.backend, series = caught, "leading: refreshing now what fell due while no replica led");
        }
    }

    /// Group the prepared series by route and plan each group into calls: shared series
    /// together, each search group apart, each series that must be alone by itself. Every
    /// series ends up in exactly one call or is answered with an internal error.
    fn plan(
        &self,
        core: &Core,
        prepared: Vec<Prepared<S::Request>>,
        taken: &mut Taken,
    ) -> Vec<Dispatch<S>> {
        let mut shared = Vec::new();
        let mut groups: BTreeMap<u64, Class<S::Request>> = BTreeMap::new();
        let mut alone = Vec::new();
        for item in prepared {
            match item.due.route {
                Route::Group(suspect) => {
                    groups
                        .entry(suspect.group)
                        .or_insert_with(|| (item.due.route, Vec::new()))
                        .1
                        .push(item);
                }
                route if route.alone() => alone.push((route, vec![item])),
                _ => shared.push(item),
            }
        }
        let mut classes = vec![(Route::Shared, shared)];
        classes.extend(groups.into_values());
        classes.extend(alone);
        let mut dispatches = Vec::new();
        for (route, items) in classes {
            if items.is_empty() {
                continue;
            }
            self.plan_class(core, route, items, taken, &mut dispatches);
        }
        dispatches
    }

    fn plan_class(
        &self,
        core: &Core,
        route: Route,
        items: Vec<Prepared<S::Request>>,
        taken: &mut Taken,
        dispatches: &mut Vec<Dispatch<S>>,
    ) {
        let requests: Vec<&S::Request> = items.iter().map(|item| &item.request).collect();
        let planned = catch_unwind(AssertUnwindSafe(|| self.source.plan(&requests)));
        drop(requests);
        let Ok(planned) = planned else {
            tracing::error!(backend = %self.profile.backend, series = items.len(), "the source panicked planning calls");
            if items.len() > 1 {
                // Plan each alone, so one series that makes planning panic fails alone.
                for item in items {
                    self.plan_class(core, route, vec![item], taken, dispatches);
                }
            } else {
                for item in items {
                    self.internal_error(core, &item.due.series);
                    taken.done(&item.due.series);
                }
            }
            return;
        };
        let mut slots: Vec<Option<Prepared<S::Request>>> = items.into_iter().map(Some).collect();
        let mut claimed = vec![false; slots.len()];
        for planned in planned {
            // A call whose members are out of range or already claimed is a source bug: drop
            // the call; its members are answered below if no other call carries them.
            let valid = planned
                .members
                .iter()
                .all(|&index| index < claimed.len() && !claimed[index])
                && {
                    let mut seen = planned.members.clone();
                    seen.sort_unstable();
                    seen.windows(2).all(|pair| pair[0] != pair[1])
                };
            if !valid || planned.members.is_empty() {
                tracing::error!(backend = %self.profile.backend, members = ?planned.members, "the source planned a call with members it could not serve; dropped");
                continue;
            }
            let mut members = Vec::with_capacity(planned.members.len());
            for &index in &planned.members {
                claimed[index] = true;
                if let Some(item) = slots[index].take() {
                    members.push(item);
                }
            }
            dispatches.push(Dispatch {
                route,
                call: planned.call,
                members,
            });
        }
        let unplanned: Vec<Prepared<S::Request>> = slots.into_iter().flatten().collect();
        if !unplanned.is_empty() {
            tracing::error!(backend = %self.profile.backend, series = unplanned.len(), "the source left series out of every call; they are answered with an internal error");
            for item in unplanned {
                self.internal_error(core, &item.due.series);
                taken.done(&item.due.series);
            }
        }
    }

    /// Answer `series` with an internal error, retried with back-off.
    fn internal_error(&self, core: &Core, series: &Arc<Series>) {
        let result = Err(backend_error(
            &self.profile,
            BackendFailure::Internal,
            &series.definition.spec.name,
        ));
        core.record(series, result, Instant::now(), Next::backoff());
    }

    /// Make one call and record its outcome for every member (see the module docs of
    /// `isolation` for what a rejected call leads to).
    async fn execute(self: Arc<Self>, mut guard: CallGuard, dispatch: Dispatch<S>, fallback: bool) {
        let Dispatch {
            route,
            call,
            members,
        } = dispatch;
        let core = guard.core.clone();
        let refs: Vec<Member<'_, S::Request>> = members
            .iter()
            .map(|item| Member {
                definition: &item.due.series.definition,
                labels: &item.labels,
                request: &item.request,
            })
            .collect();
        let timeout = core.config.call_timeout;
        // The time of the call itself (a value read now is timestamped now).
        let fetched = tokio::time::timeout(
            timeout,
            self.source.fetch(&call, &refs, core.clock.wall_now()),
        )
        .await
        .unwrap_or_else(|_| Fetched {
            usage: Usage::default(),
            outcome: Err(SourceError::new(
                BackendFailure::Unreachable,
                Blame::Request,
                CallTimedOut(timeout),
            )),
        });
        drop(refs);
        let at = Instant::now();
        let outcome = match &fetched.outcome {
            Ok(_) => "ok",
            Err(error) => error.failure.describe(),
        };
        if fallback {
            core.metrics.engine().fallback_refresh(self.profile.backend);
        }
        core.metrics.engine().source_call(
            self.profile.backend,
            outcome,
            &fetched.usage,
            fetched.usage.billed as f64 * self.profile.dollars_per_unit,
        );
        let series: Vec<Arc<Series>> = members.iter().map(|m| m.due.series.clone()).collect();
        // One jitter for the whole call: series that failed together retry together, in one
        // call, instead of each at its own moment in calls of their own.
        let backoff = Next::backoff();
        match fetched.outcome {
            Ok(outcomes) => {
                let answered = outcomes.len();
                let mut outcomes = outcomes.into_iter();
                for member in &series {
                    tokio::task::consume_budget().await;
                    let result = outcomes.next().unwrap_or_else(|| {
                        Err(backend_error(
                            &self.profile,
                            BackendFailure::Internal,
                            &member.definition.spec.name,
                        ))
                    });
                    member.lock().suspect = None;
                    core.record(member, result, at, backoff);
                }
                if answered != series.len() {
                    tracing::error!(backend = %self.profile.backend, answered, members = series.len(), "the source answered a call with the wrong number of outcomes");
                }
                self.isolation.passed(route, &series);
            }
            Err(error) if error.blames_members() => {
                core.metrics.engine().call_bisected(self.profile.backend);
                tracing::warn!(
                    backend = %self.profile.backend,
                    series = series.len(),
                    metrics = %CallMetrics::of(&series),
                    error = %Chain(&error),
                    "{} call rejected as a bad request",
                    self.profile.operation
                );
                let verdicts = self.isolation.rejected(route, &series, at);
                let mut retry = false;
                for (member, verdict) in series.iter().zip(verdicts) {
                    match verdict {
                        Verdict::Retry(suspect) => {
                            core.retry_as_suspect(member, suspect, at);
                            retry = true;
                        }
                        Verdict::Reject { whole } => {
                            member.lock().suspect = None;
                            let result = Err(rejection(&self.profile, member, whole));
                            let next = if whole { Next::Tick } else { backoff };
                            core.record(member, result, at, next);
                        }
                    }
                }
                if retry {
                    self.wake.notify_one();
                }
            }
            Err(error) => {
                tracing::warn!(
                    backend = %self.profile.backend,
                    series = series.len(),
                    metrics = %CallMetrics::of(&series),
                    error = %Chain(&error),
                    "{} call failed",
                    self.profile.operation
                );
                for member in &series {
                    let result = Err(backend_error(
                        &self.profile,
                        error.failure,
                        &member.definition.spec.name,
                    ));
                    core.record(member, result, at, backoff);
                }
            }
        }
        guard.answered();
    }
}

/// Metric names in a call and how many series each has there, for logs: the
/// [`CallMetrics::SHOWN`] with the most series, then how many more. A call holds up to 500
/// series of as many metrics, and during an outage one line per failed call listing them all
/// was 10 KB a line, 2 MB a refresh.
struct CallMetrics<'a>(Vec<(&'a str, usize)>);

impl<'a> CallMetrics<'a> {
    const SHOWN: usize = 5;

    fn of(series: &'a [Arc<Series>]) -> Self {
        Self::counted(
            series
                .iter()
                .map(|member| member.definition.spec.name.as_str()),
        )
    }

    fn counted(members: impl Iterator<Item = &'a str>) -> Self {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for name in members {
            *names.entry(name).or_default() += 1;
        }
        let mut names: Vec<(&str, usize)> = names.into_iter().collect();
        // The most series first; names in order among equals (the map gave them sorted).
        names.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        Self(names)
    }
}

impl std::fmt::Display for CallMetrics<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, (name, count)) in self.0.iter().take(Self::SHOWN).enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name} ({count})")?;
        }
        if let Some(more) = self.0.len().checked_sub(Self::SHOWN).filter(|n| *n > 0) {
            write!(f, " and {more} more metrics")?;
        }
        Ok(())
    }
}

/// The error a rejected series gets: for one label set, or (`whole`) for its whole definition.
fn rejection(profile: &Profile, series: &Series, whole: bool) -> ProviderError {
    let metric = &series.definition.spec.name;
    let backend = profile.backend;
    let message = if whole {
        format!(
            "unable to fetch metric {metric} from {backend}: {backend} rejects this metric's queries whatever the selector; it is tried again once per refresh interval; check the definition with `cloudwatch-metrics-adapter query`"
        )
    } else {
        format!(
            "unable to fetch metric {metric} from {backend}: {backend} rejects the query this selector makes (other selectors of the metric are served); check the definition and the selector's values with `cloudwatch-metrics-adapter query`"
        )
    };
    ProviderError::Backend {
        failure: BackendFailure::InvalidQuery,
        message,
    }
}

/// Series a cycle took from the queue and has not yet handed on: if the cycle ends early (a
/// panic, leadership lost, stop), they go back to the queue.
struct Taken {
    core: Arc<Core>,
    pending: HashMap<u64, Due>,
}

impl Taken {
    fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            pending: HashMap::new(),
        }
    }

    fn take(&mut self, due: Due) {
        self.pending.insert(due.series.id, due);
    }

    /// The taken series, oldest due first (they stay pending until [`Taken::done`]).
    fn pending(&self) -> Vec<Due> {
        let mut due: Vec<Due> = self
            .pending
            .values()
            .map(|due| Due {
                at: due.at,
                series: due.series.clone(),
                route: due.route,
            })
            .collect();
        due.sort_by_key(|due| (due.at, due.series.id));
        due
    }

    fn done(&mut self, series: &Series) {
        self.pending.remove(&series.id);
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        for (_, due) in self.pending.drain() {
            self.core.requeue(&due.series, due.at);
        }
    }
}

/// Owns a call's members from the moment the call is started: if the call task ends without
/// answering them (a panic in the source, the task cancelled), they are answered with an
/// internal error and scheduled again, so no series stays "in flight".
struct CallGuard {
    lane: Arc<dyn GuardLane>,
    core: Arc<Core>,
    id: u64,
    members: Vec<Arc<Series>>,
    answered: bool,
}

/// What the guard needs of its lane, whatever its source.
trait GuardLane: Send + Sync {
    fn call_ended(&self, id: u64);
    fn unanswered(&self, core: &Core, series: &Arc<Series>);
}

impl<S: Source> GuardLane for SourceLane<S> {
    fn call_ended(&self, id: u64) {
        self.in_flight().remove(&id);
    }

    fn unanswered(&self, core: &Core, series: &Arc<Series>) {
        self.internal_error(core, series);
    }
}

impl CallGuard {
    fn new<S: Source, R>(
        lane: Arc<SourceLane<S>>,
        core: Arc<Core>,
        members: &[Prepared<R>],
    ) -> Self {
        let id = lane.call_ids.fetch_add(1, Ordering::Relaxed);
        if let Some(oldest) = members.iter().map(|m| m.due.at).min() {
            lane.in_flight().insert(id, oldest);
        }
        Self {
            lane,
            core,
            id,
            members: members.iter().map(|m| m.due.series.clone()).collect(),
            answered: false,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.lane.call_ended(self.id);
        if self.answered {
            return;
        }
        tracing::error!(
            series = self.members.len(),
            "a refresh call ended without an answer (it panicked or was cancelled); its series are retried"
        );
        for series in &self.members {
            self.lane.unanswered(&self.core, series);
        }
    }
}

impl<S: Source> Lane for SourceLane<S> {
    fn backend(&self) -> Backend {
        self.profile.backend
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    fn queue(&self) -> &DueQueue {
        &self.queue
    }

    fn lag(&self, now: Instant) -> Duration {
        let queued = self.queue.first_due();
        let waiting = self.backlog().firsts().map(|due| due.at).min();
        let calling = self.in_flight().values().min().copied();
        [queued, waiting, calling]
            .into_iter()
            .flatten()
            .min()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    fn queued(&self) -> usize {
        self.queue.len() + self.backlog().len()
    }

    fn isolation_counts(&self) -> (usize, usize) {
        self.isolation.counts()
    }

    fn run(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(self.supervise(core, stop))
    }
}

#[cfg(test)]
mod tests {
    use super::CallMetrics;

    #[test]
    fn a_failed_call_logs_the_metrics_with_the_most_series_and_counts_the_rest() {
        let names: Vec<String> = (0..500).map(|n| format!("tenant-{n:04}")).collect();
        let members = names
            .iter()
            .map(String::as_str)
            .chain(["orders"; 3])
            .chain(["jobs"; 2]);
        assert_eq!(
            CallMetrics::counted(members).to_string(),
            "orders (3), jobs (2), tenant-0000 (1), tenant-0001 (1), tenant-0002 (1) and 497 more metrics"
        );
        assert_eq!(
            CallMetrics::counted(["b", "a", "b"].into_iter()).to_string(),
            "b (2), a (1)"
        );
    }
}
