//! A lane: one source's refresh loop, with its own budget. Lanes run side by side, so a slow or
//! throttled backend never delays another's series.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pacer::Pacer;
use super::{Core, Pacing, fair};
use crate::definition::Backend;
use crate::provider::ProviderError;
use crate::series::Series;
use crate::source::{Member, PlanItem, Profile, Source, backend_error};

/// What the engine needs of a lane, whatever its source.
pub(crate) trait Lane: Send + Sync + std::fmt::Debug {
    /// The backend it reads.
    fn backend(&self) -> Backend;
    /// A new series wants its first fetch.
    fn wake(&self);
    /// Refresh this backend's series until `stop`.
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
}

impl<S> std::fmt::Debug for SourceLane<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLane")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// A planned call with its members and their prepared requests.
type CallPlan<S> = (
    <S as Source>::Call,
    Vec<(Arc<Series>, <S as Source>::Request)>,
);

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
        }
    }

    async fn run_loop(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) {
        loop {
            let next_wake = self.cycle(&core).await;
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

    /// One cycle: fetch the due series of this backend that fit about a second of the budget
    /// (shared fairly between tenants), and return when the next falls due.
    async fn cycle(self: &Arc<Self>, core: &Arc<Core>) -> Instant {
        let (due, mut next_wake) = core.collect_due(self.profile.backend);
        if due.is_empty() {
            return next_wake;
        }
        let (admitted, deferred) = fair::share(due, self.items_per_cycle, |series| {
            // A series isolated after failing shared calls takes a call of its own: it costs
            // the tenant a whole call's worth of the budget, not its few items.
            let size = if series.lock().isolated {
                self.profile.max_items_per_call
            } else {
                self.source.size(&series.definition)
            };
            (series.tenant.clone(), size)
        });
        if !deferred.is_empty() {
            tracing::debug!(
                backend = %self.profile.backend,
                deferred = deferred.len(),
                "refresh budget spent for this cycle; the rest waits for the next"
            );
            // Still due: picked up by the next cycle, as soon as the budget allows.
            for series in deferred {
                series.lock().in_flight = false;
            }
            next_wake = Instant::now();
        }
        let wall = core.clock.wall_now();
        let mut prepared = Vec::with_capacity(admitted.len());
        for series in admitted {
            match self
                .source
                .prepare(&series.definition, &series.labels, wall)
            {
                Ok(request) => prepared.push((series, request)),
                // This series alone cannot be read (e.g. a label value its query cannot take).
                Err(error) => core.record(&series, Err(error), Instant::now(), false),
            }
        }
        for (call, members) in self.plan(prepared) {
            self.pacer.acquire().await;
            let Ok(permit) = self.calls.clone().acquire_owned().await else {
                break;
            };
            let lane = self.clone();
            let core = core.clone();
            tokio::spawn(async move {
                lane.execute(&core, call, members).await;
                drop(permit);
            });
        }
        next_wake
    }

    /// Plan the prepared series into calls, each with its members.
    fn plan(&self, prepared: Vec<(Arc<Series>, S::Request)>) -> Vec<CallPlan<S>> {
        let items: Vec<PlanItem<'_, S::Request>> = prepared
            .iter()
            .map(|(series, request)| PlanItem {
                request,
                alone: series.lock().isolated,
            })
            .collect();
        let planned = self.source.plan(&items);
        drop(items);
        let mut slots: Vec<Option<(Arc<Series>, S::Request)>> =
            prepared.into_iter().map(Some).collect();
        planned
            .into_iter()
            .map(|planned| {
                let members = planned
                    .members
                    .iter()
                    .filter_map(|&index| slots.get_mut(index).and_then(Option::take))
                    .collect();
                (planned.call, members)
            })
            .collect()
    }

    /// Make one call and record its outcome for every member. A call the backend rejects as a
    /// bad request is retried in halves until the member that causes it is found; that member
    /// gets a call of its own from then on, and the others are served as if nothing happened.
    fn execute<'a>(
        &'a self,
        core: &'a Core,
        call: S::Call,
        members: Vec<(Arc<Series>, S::Request)>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.execute_once(core, call, members))
    }

    async fn execute_once(
        &self,
        core: &Core,
        call: S::Call,
        members: Vec<(Arc<Series>, S::Request)>,
    ) {
        let refs: Vec<Member<'_, S::Request>> = members
            .iter()
            .map(|(series, request)| Member {
                definition: &series.definition,
                labels: &series.labels,
                request,
            })
            .collect();
        // The time of the call itself (a value read now is timestamped now).
        let fetched = self.source.fetch(&call, &refs, core.clock.wall_now()).await;
        drop(refs);
        let at = Instant::now();
        let outcome = match &fetched.outcome {
            Ok(_) => "ok",
            Err(error) => error.failure.describe(),
        };
        core.metrics.source_call(
            self.profile.backend,
            outcome,
            &fetched.usage,
            fetched.usage.billed as f64 * self.profile.dollars_per_unit,
        );
        match fetched.outcome {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (series, _) in &members {
                    let result = outcomes.next().unwrap_or_else(|| {
                        Err(backend_error(
                            &self.profile,
                            crate::provider::BackendFailure::ServiceError,
                            &series.definition.spec.name,
                        ))
                    });
                    let failed = matches!(result, Err(ProviderError::Backend { .. }));
                    core.record(series, result, at, failed);
                }
            }
            Err(error) if error.rejected && members.len() > 1 => {
                tracing::warn!(
                    backend = %self.profile.backend,
                    series = members.len(),
                    %error,
                    "{} call rejected as a bad request; retrying its series in halves to find the one that causes it",
                    self.profile.operation
                );
                core.metrics.call_bisected(self.profile.backend);
                let mut members = members;
                let right = members.split_off(members.len() / 2);
                for half in [members, right] {
                    for (call, part) in self.plan(half) {
                        self.pacer.acquire().await;
                        self.execute(core, call, part).await;
                    }
                }
            }
            Err(error) => {
                if error.rejected
                    && let [(series, _)] = members.as_slice()
                {
                    let mut state = series.lock();
                    if !state.isolated {
                        state.isolated = true;
                        tracing::warn!(
                            metric = %series.definition.spec.name,
                            labels = ?series.labels,
                            %error,
                            "this series makes {} reject the calls it is in: it gets a call of its own from now on",
                            self.profile.backend
                        );
                    }
                }
                let metrics: BTreeMap<&str, usize> =
                    members.iter().fold(BTreeMap::new(), |mut names, (s, _)| {
                        *names.entry(s.definition.spec.name.as_str()).or_default() += 1;
                        names
                    });
                tracing::warn!(
                    backend = %self.profile.backend,
                    series = members.len(),
                    metrics = ?metrics,
                    %error,
                    "{} call failed",
                    self.profile.operation
                );
                for (series, _) in &members {
                    let result = Err(backend_error(
                        &self.profile,
                        error.failure,
                        &series.definition.spec.name,
                    ));
                    core.record(series, result, at, true);
                }
            }
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

    fn run(self: Arc<Self>, core: Arc<Core>, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(self.run_loop(core, stop))
    }
}
