//! `ExternalMetric` status and Events, driven by validation verdicts (from the watcher) and
//! refresh outcomes (from the cache's [`OutcomeObserver`] hook).
//!
//! - The observer never blocks the refresher: outcomes go through a bounded channel and are
//!   dropped (and counted) when it is full; the next refresh brings another.
//! - The watcher never blocks either, and its updates are bounded without dropping any that
//!   matters: they wait in a queue that keeps only the newest update per object ([`queue`]), so
//!   it holds at most one entry per object however fast objects change.
//! - Writes are coalesced and rate-limited: at most one status patch per object per
//!   `min_interval` (the newest state wins), and at most `writes_per_second` patches and Events
//!   overall (paced by the crate's one [`Pacer`]), oldest-written objects first, so thousands of
//!   objects cannot flood the apiserver.
//! - A patch is only sent when the status differs from the last one written (or found on the
//!   object at start), and Events only on transitions: became invalid or conflicting, accepted
//!   again, started failing, recovered. An adapter restart re-reads the status already on the
//!   object, so it repeats neither writes nor Events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod queue;

use super::ObjectKey;
use crate::crd::{self, CONDITION_READY, CONDITION_VALID, ExternalMetricStatus};
use crate::definition::{Definition, HumanDuration};
use crate::engine::OutcomeObserver;
use crate::pacer::Pacer;
use crate::provider::{BackendFailure, ProviderError, Reading};
use crate::series::Labels;
use queue::ObjectQueue;

/// How many outcomes may wait for the status writer before new ones are dropped.
const OUTCOME_QUEUE: usize = 4096;
/// Series remembered per object for its status (a hostile flood of selectors stays bounded).
const MAX_SERIES_PER_OBJECT: usize = 100;
/// A series not refreshed for this long (or five refresh intervals, if longer) no longer counts:
/// the cache stops refreshing series no HPA asks for.
const SERIES_RETENTION: Duration = Duration::from_secs(300);
/// How often every object's status is recomputed, so series that went quiet are noticed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Longest message written to a condition or an Event note.
const MAX_MESSAGE: usize = 1000;

/// What the watcher concluded about an object.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Served, with an optional note for the `Valid` condition.
    Valid {
        /// The definition the cache serves.
        definition: Arc<Definition>,
        /// Something worth telling the user (an ignored `spec.name`).
        note: Option<String>,
    },
    /// Not served: every problem.
    Invalid {
        /// The problems, each a sentence.
        problems: Vec<String>,
    },
    /// Not served: the definitions file defines the same name cluster-wide, and wins.
    Conflict,
}

impl Verdict {
    /// One word for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Verdict::Valid { .. } => "valid",
            Verdict::Invalid { .. } => "invalid",
            Verdict::Conflict => "conflict",
        }
    }

    fn definition(&self) -> Option<&Arc<Definition>> {
        match self {
            Verdict::Valid { definition, .. } => Some(definition),
            _ => None,
        }
    }
}

/// A change to the set of objects, from the watcher.
#[derive(Debug)]
pub enum ObjectUpdate {
    /// An object appeared or its spec changed.
    Object {
        /// Which object.
        key: ObjectKey,
        /// Its uid (a recreated object starts afresh).
        uid: Option<String>,
        /// Its generation (written as `observedGeneration`).
        generation: Option<i64>,
        /// What it became.
        verdict: Verdict,
        /// The status already on the object (after a restart), so nothing is re-sent.
        existing_status: Option<Box<ExternalMetricStatus>>,
    },
    /// The object is gone.
    Deleted {
        /// Which object.
        key: ObjectKey,
    },
}

impl ObjectUpdate {
    /// The object it is about.
    pub fn key(&self) -> &ObjectKey {
        match self {
            ObjectUpdate::Object { key, .. } | ObjectUpdate::Deleted { key } => key,
        }
    }
}

/// One refresh outcome of a namespaced definition.
#[derive(Debug)]
struct Observation {
    definition: Arc<Definition>,
    selector: String,
    outcome: Observed,
    at: Instant,
    wall: SystemTime,
}

#[derive(Debug)]
enum Observed {
    Value {
        value: f64,
        timestamp: SystemTime,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// The sending side: the watcher's updates and the cache's outcomes.
#[derive(Debug, Clone)]
pub struct StatusSender {
    objects: Arc<ObjectQueue>,
    outcomes: mpsc::Sender<Observation>,
    dropped: Arc<AtomicU64>,
}

impl StatusSender {
    /// Report an object's verdict or its deletion. Never blocks: an update still waiting for
    /// the writer is replaced by a newer one for the same object.
    pub fn object(&self, update: ObjectUpdate) {
        self.objects.push(update);
    }

    /// How many outcomes were dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl OutcomeObserver for StatusSender {
    fn observe(
        &self,
        definition: &Arc<Definition>,
        labels: &Labels,
        outcome: &Result<Reading, ProviderError>,
    ) {
        if definition.namespace.is_none() {
            return; // a definitions-file metric has no object to report on
        }
        let outcome = match outcome {
            Ok(value) => Observed::Value {
                value: value.value,
                timestamp: value.timestamp,
            },
            Err(error) => Observed::Failed {
                reason: reason_of(error),
                message: error.to_string(),
            },
        };
        let observation = Observation {
            definition: definition.clone(),
            selector: selector_text(labels),
            outcome,
            at: Instant::now(),
            wall: SystemTime::now(),
        };
        if self.outcomes.try_send(observation).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving side, turned into a task by [`StatusWriter::run`].
#[derive(Debug)]
pub struct StatusReceiver {
    objects: Arc<ObjectQueue>,
    outcomes: mpsc::Receiver<Observation>,
}

#[cfg(test)]
impl StatusReceiver {
    /// The next queued object update, if any.
    pub(crate) fn try_recv_object(&mut self) -> Option<ObjectUpdate> {
        self.objects.try_take()
    }
}

/// A connected sender and receiver.
pub fn channel() -> (StatusSender, StatusReceiver) {
    let objects = Arc::new(ObjectQueue::default());
    let (outcomes_tx, outcomes) = mpsc::channel(OUTCOME_QUEUE);
    (
        StatusSender {
            objects: objects.clone(),
            outcomes: outcomes_tx,
            dropped: Arc::new(AtomicU64::new(0)),
        },
        StatusReceiver { objects, outcomes },
    )
}

/// How often status may be written.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// At most one status patch per object per this interval.
    pub min_interval: Duration,
    /// At most this many status patches and Events per second, overall.
    pub writes_per_second: f64,
    /// Who the Events say reported them.
    pub reporter: Reporter,
    /// Status and Events are written only while this says this replica leads (checked right
    /// before every write), so several replicas write once.
    pub leadership: crate::leader::Leadership,
}

/// What the writer remembers about one object.
#[derive(Debug)]
struct Tracked {
    uid: Option<String>,
    generation: Option<i64>,
    verdict: Verdict,
    series: BTreeMap<String, SeriesSeen>,
    last_value: Option<LastValue>,
    last_error: Option<(String, String)>,
    /// The status last written, or found on the object.
    written: Option<ExternalMetricStatus>,
    last_write: Option<Instant>,
    dirty: bool,
}

#[derive(Debug)]
struct SeriesSeen {
    at: Instant,
    failure: Option<(&'static str, String)>,
}

#[derive(Debug, Clone)]
struct LastValue {
    value: String,
    timestamp: String,
    selector: String,
}

impl Tracked {
    fn new(
        uid: Option<String>,
        generation: Option<i64>,
        verdict: Verdict,
        existing: Option<ExternalMetricStatus>,
    ) -> Self {
        // Keep what an earlier run reported about this same spec, so a restart does not blank it.
        let same_spec = existing.as_ref().is_some_and(|s| {
            s.observed_generation.is_some() && s.observed_generation == generation
        });
        let (last_value, last_error) = match existing.as_ref().filter(|_| same_spec) {
            Some(status) => (
                match (&status.value, &status.value_timestamp) {
                    (Some(value), Some(timestamp)) => Some(LastValue {
                        value: value.clone(),
                        timestamp: timestamp.clone(),
                        selector: status.value_selector.clone().unwrap_or_default(),
                    }),
                    _ => None,
                },
                status
                    .last_error
                    .clone()
                    .zip(status.last_error_time.clone()),
            ),
            None => (None, None),
        };
        Self {
            uid,
            generation,
            verdict,
            series: BTreeMap::new(),
            last_value,
            last_error,
            written: existing,
            last_write: None,
            dirty: true,
        }
    }

    fn retention(&self) -> Duration {
        self.verdict.definition().map_or(SERIES_RETENTION, |d| {
            SERIES_RETENTION.max(d.refresh_interval * 5)
        })
    }

    /// The status this object should have now (condition times not yet merged).
    fn desired(&self, key: &ObjectKey, now: Instant) -> ExternalMetricStatus {
        let mut status = ExternalMetricStatus {
            observed_generation: self.generation,
            ..ExternalMetricStatus::default()
        };
        if let Some(last) = &self.last_value {
            status.value = Some(last.value.clone());
            status.value_timestamp = Some(last.timestamp.clone());
            status.value_selector = Some(last.selector.clone()).filter(|s| !s.is_empty());
        }
        if let Some((message, time)) = &self.last_error {
            status.last_error = Some(message.clone());
            status.last_error_time = Some(time.clone());
        }
        let (valid, ready, state, message) = match &self.verdict {
            Verdict::Invalid { problems } => {
                let message = truncate(&format!("invalid definition: {}", problems.join("; ")));
                (
                    ("False", "InvalidDefinition", message.clone()),
                    (
                        "False",
                        "InvalidDefinition",
                        "not served: the definition is invalid".to_string(),
                    ),
                    "Invalid",
                    message,
                )
            }
            Verdict::Conflict => {
                let message = format!(
                    "metric name {} is defined cluster-wide in the adapter's definitions file, which takes precedence: HPAs in namespace {} get that definition; rename this ExternalMetric",
                    key.name, key.namespace
                );
                (
                    ("False", "NameConflict", message.clone()),
                    (
                        "False",
                        "NameConflict",
                        "not served: the name is taken cluster-wide".to_string(),
                    ),
                    "Conflict",
                    message,
                )
            }
            Verdict::Valid { note, definition } => {
                let backend = definition.backend();
                status.source = Some(backend.name().to_string());
                let valid = match note {
                    Some(note) => ("True", "SpecNameIgnored", truncate(note)),
                    None => ("True", "Valid", "the definition is valid".to_string()),
                };
                let retention = self.retention();
                let fresh: Vec<(&String, &SeriesSeen)> = self
                    .series
                    .iter()
                    .filter(|(_, seen)| now.saturating_duration_since(seen.at) <= retention)
                    .collect();
                status.active_series = Some(i64::try_from(fresh.len()).unwrap_or(i64::MAX));
                let failing: Vec<(&String, &(&'static str, String))> = fresh
                    .iter()
                    .filter_map(|(selector, seen)| seen.failure.as_ref().map(|f| (*selector, f)))
                    .collect();
                let (ready, state) = match failing.first() {
                    _ if fresh.is_empty() => (
                        (
                            "False",
                            "Pending",
                            format!(
                                "no HPA has requested this metric in the last {}: it is read from {backend} while an HPA uses it",
                                HumanDuration(retention)
                            ),
                        ),
                        "Pending",
                    ),
                    None => (
                        (
                            "True",
                            "DataReturned",
                            format!("{} series served from {backend}", fresh.len()),
                        ),
                        "Ready",
                    ),
                    Some((selector, (reason, message))) => {
                        let which = if selector.is_empty() {
                            String::new()
                        } else {
                            format!(" ({selector})")
                        };
                        (
                            (
                                "False",
                                *reason,
                                truncate(&format!(
                                    "{} of {} series failing; latest{which}: {message}",
                                    failing.len(),
                                    fresh.len()
                                )),
                            ),
                            if *reason == "NoData" {
                                "NoData"
                            } else {
                                "Failing"
                            },
                        )
                    }
                };
                let message = ready.2.clone();
                (valid, ready, state, message)
            }
        };
        status.state = Some(state.to_string());
        status.message = Some(message);
        status.conditions = vec![
            condition(CONDITION_VALID, valid, self.generation),
            condition(CONDITION_READY, ready, self.generation),
        ];
        status
    }
}

fn condition(
    type_: &str,
    (status, reason, message): (&str, &str, String),
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// Keep each condition's transition time from `previous` when its status did not change, and
/// stamp `now` on the ones that did.
fn merge_transition_times(
    desired: &mut ExternalMetricStatus,
    previous: Option<&ExternalMetricStatus>,
    now: SystemTime,
) {
    let now = Time(to_timestamp(now));
    for condition in &mut desired.conditions {
        let before =
            previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_));
        condition.last_transition_time = match before {
            Some(before) if before.status == condition.status => {
                before.last_transition_time.clone()
            }
            _ => now.clone(),
        };
    }
}

fn to_timestamp(time: SystemTime) -> k8s_openapi::jiff::Timestamp {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// An Event to publish: type, reason, action, note.
type Transition = (EventType, &'static str, &'static str, String);

/// The Events a change from `before` to `after` deserves.
fn transitions(
    before: Option<&ExternalMetricStatus>,
    after: &ExternalMetricStatus,
) -> Vec<Transition> {
    let state_of =
        |s: Option<&ExternalMetricStatus>| s.and_then(|s| s.state.clone()).unwrap_or_default();
    let valid_reason = |s: Option<&ExternalMetricStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_VALID))
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    let (was, now) = (state_of(before), state_of(Some(after)));
    let message = after.message.clone().unwrap_or_default();
    let rejected = |state: &str| matches!(state, "Invalid" | "Conflict");
    let failing = |state: &str| matches!(state, "Failing" | "NoData");
    let mut events = Vec::new();
    if was != now {
        match now.as_str() {
            "Invalid" => events.push((
                EventType::Warning,
                "InvalidDefinition",
                "Validate",
                message.clone(),
            )),
            "Conflict" => events.push((
                EventType::Warning,
                "NameConflict",
                "Validate",
                message.clone(),
            )),
            _ if rejected(&was) => events.push((
                EventType::Normal,
                "DefinitionAccepted",
                "Validate",
                "the definition is valid and served".to_string(),
            )),
            _ => {}
        }
        if failing(&now) && !failing(&was) {
            let reason = if now == "NoData" {
                "NoData"
            } else {
                "FetchFailed"
            };
            events.push((EventType::Warning, reason, "Refresh", message.clone()));
        }
        if now == "Ready" && failing(&was) {
            events.push((EventType::Normal, "Recovered", "Refresh", message.clone()));
        }
    }
    if valid_reason(Some(after)) == "SpecNameIgnored" && valid_reason(before) != "SpecNameIgnored" {
        let note = after
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_VALID)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        events.push((EventType::Warning, "SpecNameIgnored", "Validate", note));
    }
    events
}

/// The status as a merge patch: fields this adapter owns but no longer sets become `null`, so
/// they are removed rather than left stale.
fn status_patch(status: &ExternalMetricStatus, uid: Option<&str>) -> Value {
    const FIELDS: &[&str] = &[
        "observedGeneration",
        "state",
        "source",
        "message",
        "value",
        "valueTimestamp",
        "valueSelector",
        "activeSeries",
        "lastError",
        "lastErrorTime",
        "conditions",
    ];
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = body.as_object_mut() {
        for field in FIELDS {
            map.entry(*field).or_insert(Value::Null);
        }
    }
    let mut patch = json!({ "status": body });
    if let Some(uid) = uid {
        // A precondition: never write one object's status onto a recreated namesake.
        patch["metadata"] = json!({ "uid": uid });
    }
    patch
}

/// The status writer task.
pub struct StatusWriter {
    config: StatusConfig,
    client: Client,
    recorder: Recorder,
    receiver: StatusReceiver,
    tracked: BTreeMap<ObjectKey, Tracked>,
    /// Status patches and Events together stay under `writes_per_second`.
    pacer: Pacer,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("config", &self.config)
            .field("tracked", &self.tracked.len())
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// A writer patching status and publishing Events through `client`.
    pub fn new(client: Client, config: StatusConfig, receiver: StatusReceiver) -> Self {
        let recorder = Recorder::new(client.clone(), config.reporter.clone());
        let pacer = Pacer::new(config.writes_per_second);
        Self {
            config,
            client,
            recorder,
            receiver,
            tracked: BTreeMap::new(),
            pacer,
        }
    }

    /// Apply updates and write statuses until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let tick = self.config.min_interval.min(Duration::from_secs(1));
        let mut next_flush = Instant::now() + tick;
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            // The flush comes before the queues, so a stream of outcomes cannot starve writes.
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next_flush) => {
                    let now = Instant::now();
                    if now >= next_sweep {
                        self.sweep(now);
                        next_sweep = now + SWEEP_INTERVAL;
                    }
                    self.flush().await;
                    next_flush = Instant::now() + tick;
                }
                updates = self.receiver.objects.next_batch() => {
                    for update in updates {
                        self.apply_object(update);
                    }
                }
                Some(observation) = self.receiver.outcomes.recv() => self.apply_outcome(observation),
            }
        }
    }

    /// Forget series that went quiet, and recompute every status (the quiet ones may change).
    fn sweep(&mut self, now: Instant) {
        for tracked in self.tracked.values_mut() {
            let retention = tracked.retention();
            tracked
                .series
                .retain(|_, seen| now.saturating_duration_since(seen.at) <= retention);
            tracked.dirty = true;
        }
    }

    fn apply_object(&mut self, update: ObjectUpdate) {
        match update {
            ObjectUpdate::Deleted { key } => {
                self.tracked.remove(&key);
            }
            ObjectUpdate::Object {
                key,
                uid,
                generation,
                verdict,
                existing_status,
            } => match self.tracked.get_mut(&key) {
                Some(tracked) if tracked.uid == uid => {
                    let same = match (tracked.verdict.definition(), verdict.definition()) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        _ => false,
                    };
                    if !same {
                        // Values and errors of the old spec say nothing about the new one.
                        tracked.series.clear();
                        tracked.last_value = None;
                        tracked.last_error = None;
                    }
                    tracked.generation = generation;
                    tracked.verdict = verdict;
                    tracked.dirty = true;
                }
                _ => {
                    let existing = existing_status.map(|status| *status);
                    self.tracked
                        .insert(key, Tracked::new(uid, generation, verdict, existing));
                }
            },
        }
    }

    fn apply_outcome(&mut self, observation: Observation) {
        let Some(namespace) = observation.definition.namespace.clone() else {
            return;
        };
        let key = ObjectKey {
            namespace,
            name: observation.definition.spec.name.clone(),
        };
        let Some(tracked) = self.tracked.get_mut(&key) else {
            return; // deleted meanwhile
        };
        if !tracked
            .verdict
            .definition()
            .is_some_and(|d| Arc::ptr_eq(d, &observation.definition))
        {
            return; // an outcome of a spec that has since changed
        }
        let failure = match observation.outcome {
            Observed::Value { value, timestamp } => {
                tracked.last_value = Some(LastValue {
                    value: format_value(value),
                    timestamp: humantime::format_rfc3339_seconds(timestamp).to_string(),
                    selector: observation.selector.clone(),
                });
                None
            }
            Observed::Failed { reason, message } => {
                tracked.last_error = Some((
                    truncate(&message),
                    humantime::format_rfc3339_seconds(observation.wall).to_string(),
                ));
                Some((reason, message))
            }
        };
        tracked.series.insert(
            observation.selector,
            SeriesSeen {
                at: observation.at,
                failure,
            },
        );
        if tracked.series.len() > MAX_SERIES_PER_OBJECT
            && let Some(oldest) = tracked
                .series
                .iter()
                .min_by_key(|(_, seen)| seen.at)
                .map(|(selector, _)| selector.clone())
        {
            tracked.series.remove(&oldest);
        }
        tracked.dirty = true;
    }

    /// Write the due statuses, oldest-written first, within this second's budget. Only the
    /// leader writes; a follower keeps what it learns, so it writes at once when it leads.
    async fn flush(&mut self) {
        if !self.config.leadership.is_leader() {
            return;
        }
        let now = Instant::now();
        let interval = self.config.min_interval;
        let mut due: Vec<(Option<Instant>, ObjectKey)> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.dirty && t.last_write.is_none_or(|at| now >= at + interval))
            .map(|(key, t)| (t.last_write, key.clone()))
            .collect();
        due.sort();
        let mut budget = self.config.writes_per_second.ceil().max(1.0) as usize;
        for (_, key) in due {
            if budget == 0 {
                break;
            }
            let Some(tracked) = self.tracked.get_mut(&key) else {
                continue;
            };
            tracked.dirty = false;
            let wall = SystemTime::now();
            let mut desired = tracked.desired(&key, now);
            merge_transition_times(&mut desired, tracked.written.as_ref(), wall);
            if tracked.written.as_ref() == Some(&desired) {
                continue;
            }
            let events = transitions(tracked.written.as_ref(), &desired);
            let patch = status_patch(&desired, tracked.uid.as_deref());
            let uid = tracked.uid.clone();
            budget -= 1;
            self.pacer.acquire().await;
            // Right before acting: a leader whose lease lapsed meanwhile writes nothing.
            if !self.config.leadership.is_leader() {
                if let Some(tracked) = self.tracked.get_mut(&key) {
                    tracked.dirty = true;
                }
                return;
            }
            // The interval runs from the write itself, not from when it was planned.
            if let Some(tracked) = self.tracked.get_mut(&key) {
                tracked.last_write = Some(Instant::now());
            }
            match self.patch(&key, &patch).await {
                Ok(()) => {
                    if let Some(tracked) = self.tracked.get_mut(&key) {
                        tracked.written = Some(desired);
                    }
                }
                Err(error) => {
                    tracing::warn!(object = %key, "cannot write ExternalMetric status: {error}");
                    if let Some(tracked) = self.tracked.get_mut(&key) {
                        tracked.dirty = true; // retry after the interval
                    }
                    continue;
                }
            }
            for (type_, reason, action, note) in events {
                self.pacer.acquire().await;
                if !self.config.leadership.is_leader() {
                    return;
                }
                self.publish(&key, uid.as_deref(), type_, reason, action, note)
                    .await;
            }
        }
    }

    async fn patch(&self, key: &ObjectKey, patch: &Value) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &key.namespace, &crd::api_resource());
        let params = PatchParams::default();
        let patch = Patch::Merge(patch);
        let write = api.patch_status(&key.name, &params, &patch);
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(kube::Error::Service(
                "status patch timed out after 10s".into(),
            )),
        }
    }

    async fn publish(
        &self,
        key: &ObjectKey,
        uid: Option<&str>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let resource = crd::api_resource();
        let reference = ObjectReference {
            api_version: Some(resource.api_version),
            kind: Some(resource.kind),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: uid.map(str::to_string),
            ..ObjectReference::default()
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(&note)),
            action: action.to_string(),
            secondary: None,
        };
        let publish = self.recorder.publish(&event, &reference);
        match tokio::time::timeout(Duration::from_secs(10), publish).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(object = %key, reason, "cannot publish Event: {error}")
            }
            Err(_) => tracing::warn!(object = %key, reason, "publishing an Event timed out"),
        }
    }
}

/// A CamelCase reason for a failed refresh (also the `Ready` condition's reason).
fn reason_of(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::NotFound { .. } => "NotFound",
        ProviderError::InvalidSelector(_) => "InvalidSelector",
        ProviderError::NoData(_) => "NoData",
        ProviderError::Unrepresentable(_) => "Unrepresentable",
        ProviderError::Stale { .. } => "Stale",
        ProviderError::ResourceNotFound(_) => "ResourceNotFound",
        ProviderError::FirstFetchPending(_) => "Pending",
        ProviderError::AtCapacity(_) => "AtCapacity",
        ProviderError::Backend { failure, .. } => match failure {
            BackendFailure::AccessDenied => "AccessDenied",
            BackendFailure::Throttled => "Throttled",
            BackendFailure::Unreachable => "Unreachable",
            BackendFailure::ServiceError => "ServiceError",
            BackendFailure::InvalidQuery => "QueryRejected",
            BackendFailure::NoCredentials => "NoCredentials",
            BackendFailure::RequestRefused => "RequestRefused",
            BackendFailure::Internal => "InternalError",
        },
    }
}

/// `k=v,k2=v2`, as an HPA's `matchLabels` would be written in a selector.
fn selector_text(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A value as people read it: `1250`, `1.5`, `0.0004`.
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

fn truncate(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests;
