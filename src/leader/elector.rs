//! The election loop: client-go's `acquire`, `renew` and `release` (`tryAcquireOrRenew` with
//! its optimistic fast path), with leadership held against a local deadline.

use std::error::Error as StdError;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::record::{self, Record};
use super::{
    ElectionConfig, ElectionConfigError, JITTER_FACTOR, LeaderMetrics, LeaderState, Leadership,
};

/// At most this long for the release at shutdown (less if the renew deadline is shorter): the
/// process is going away, and if the release fails the Lease simply expires.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// One candidate for the Lease. [`Elector::run`] it in a task; read the outcome through the
/// [`Leadership`] that [`Elector::new`] returns.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    leadership: Leadership,
    metrics: LeaderMetrics,
    /// The Lease as last read or written, and when its record was first seen (monotonic).
    observed: Option<Observed>,
    /// The last non-empty holder observed, to count transitions and log new leaders.
    last_holder: Option<String>,
    /// Whether this replica was last said to lead (transitions are logged once).
    leading: bool,
    /// Whether the last attempt failed (a failing streak is logged once, at its start).
    failing: bool,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.lease_name())
            .field("identity", &self.config.identity)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct Observed {
    /// The object, for its resourceVersion and metadata.
    lease: Lease,
    record: Record,
    /// When this record (this resourceVersion) was first seen, on this replica's clock.
    at: Instant,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} Lease {lease}")]
struct AttemptError {
    action: &'static str,
    lease: String,
    #[source]
    source: kube::Error,
}

impl AttemptError {
    fn conflict(&self) -> bool {
        matches!(&self.source, kube::Error::Api(status) if status.code == 409)
    }
}

impl Elector {
    /// A candidate for `config`'s Lease through `client`, and the handle that says whether it
    /// leads (not yet: until [`Elector::run`] acquires the Lease).
    pub fn new(
        client: kube::Client,
        config: ElectionConfig,
        metrics: LeaderMetrics,
    ) -> Result<(Elector, Leadership), ElectionConfigError> {
        config.validate()?;
        let leadership = Leadership::new();
        metrics.is_leader.set(0);
        let elector = Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            leadership: leadership.clone(),
            metrics,
            observed: None,
            last_holder: None,
            leading: false,
            failing: false,
        };
        Ok((elector, leadership))
    }

    /// Take part in the election until `shutdown`; then stop leading and release the Lease if
    /// this replica holds it. A leader renews every retry period; a candidate retries every
    /// retry period times 1 to 2.2. Never returns early: a failing API server is retried.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            lease = %self.lease_name(),
            identity = %self.config.identity,
            "leader election: attempting to acquire the Lease"
        );
        'election: loop {
            // A leader's attempt may take until its deadline; a candidate's, a renew deadline.
            let deadline = self
                .leadership
                .valid_until()
                .unwrap_or_else(|| Instant::now() + self.config.renew_deadline);
            let budget = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::select! {
                biased;
                () = shutdown.cancelled() => break 'election,
                attempt = timeout_at(deadline, self.try_acquire_or_renew()) => attempt,
            };
            match attempt {
                Ok(Ok(())) => self.succeeded(),
                Ok(Err(err)) => self.failed(&chain(&err), err.conflict()),
                Err(_) => self.failed(
                    &format!(
                        "no answer about Lease {} within {budget:?}",
                        self.lease_name()
                    ),
                    false,
                ),
            }
            self.check_deadline();
            let pause = if self.leading {
                self.config.retry_period
            } else {
                jittered(self.config.retry_period)
            };
            let wake = Instant::now() + pause;
            // Sleep, but stop leading the moment the deadline passes without a renewal.
            loop {
                let lapse = self.leadership.valid_until().filter(|until| *until < wake);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break 'election,
                    () = sleep_until(wake) => break,
                    () = sleep_until(lapse.unwrap_or(wake)), if lapse.is_some() => self.check_deadline(),
                }
            }
        }
        self.release().await;
    }

    /// client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<(), AttemptError> {
        let pp = PostParams::default();
        // 1. A leader renews optimistically with the version it wrote last.
        if self.leadership.is_leader()
            && let Some(observed) = self
                .observed
                .clone()
                .filter(|observed| observed.record.holder == self.config.identity)
        {
            let record = self.renewal_of(&observed.record);
            let lease = record.written_into(&observed.lease);
            let sent = Instant::now();
            match self.api.replace(&self.config.name, &pp, &lease).await {
                Ok(stored) => {
                    self.written(stored, sent);
                    return Ok(());
                }
                Err(err) => tracing::debug!(
                    lease = %self.lease_name(),
                    error = %chain(&err),
                    "optimistic renewal failed; reading the Lease"
                ),
            }
        }
        // 2. Read the Lease, or create it.
        let read = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|source| self.error("reading", source))?;
        let Some(lease) = read else {
            let record = self.acquisition_of(None);
            let lease = record.new_lease(&self.config.namespace, &self.config.name);
            let sent = Instant::now();
            let stored = self
                .api
                .create(&pp, &lease)
                .await
                .map_err(|source| self.error("creating", source))?;
            self.written(stored, sent);
            return Ok(());
        };
        // 3. Held by another and not expired on this replica's clock: follow.
        let observed = self.observe(lease);
        let ours = observed.record.holder == self.config.identity;
        if !observed.record.holder.is_empty() && !ours && !self.expired(&observed) {
            return Ok(());
        }
        // 4. Acquire (or renew) with the version just read: a race is a 409 for the loser.
        let record = if ours {
            self.renewal_of(&observed.record)
        } else {
            self.acquisition_of(Some(&observed.record))
        };
        let lease = record.written_into(&observed.lease);
        let sent = Instant::now();
        let stored = self
            .api
            .replace(&self.config.name, &pp, &lease)
            .await
            .map_err(|source| self.error("updating", source))?;
        self.written(stored, sent);
        Ok(())
    }

    /// Whether the observed record has been unchanged for its `leaseDurationSeconds` on this
    /// replica's clock (client-go: a missing duration is 0, so such a Lease is free).
    fn expired(&self, observed: &Observed) -> bool {
        let seconds = observed
            .record
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .unwrap_or(0);
        Instant::now() >= observed.at + Duration::from_secs(seconds)
    }

    /// This replica's record, keeping the acquire time and transitions of `current` (its own).
    /// Its renew time is later than the current one even if the wall clock stood still or went
    /// back, so that every renewal changes the record (an unchanged record is a dead holder's).
    fn renewal_of(&self, current: &Record) -> Record {
        Record {
            renew_time: Some(record::later_than(current.renew_time.as_ref())),
            acquire_time: current.acquire_time.clone().or_else(|| Some(record::now())),
            transitions: current.transitions,
            ..self.acquisition_of(None)
        }
    }

    /// This replica's record for taking over from `previous` (one more transition).
    fn acquisition_of(&self, previous: Option<&Record>) -> Record {
        let now = record::now();
        Record {
            holder: self.config.identity.clone(),
            // Validated to fit.
            lease_duration_seconds: i32::try_from(self.config.lease_duration.as_secs()).ok(),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            transitions: previous.map_or(0, |previous| previous.transitions.saturating_add(1)),
            peer_address: self.config.peer_address.clone(),
        }
    }

    /// Note a Lease read from the API server: its record's clock starts when it changes.
    fn observe(&mut self, lease: Lease) -> Observed {
        let record = Record::from_lease(&lease);
        let at = match &self.observed {
            Some(old)
                if old.lease.metadata.resource_version == lease.metadata.resource_version
                    && old.record == record =>
            {
                old.at
            }
            _ => Instant::now(),
        };
        let observed = Observed { lease, record, at };
        self.observed = Some(observed.clone());
        if self.leading && observed.record.holder != self.config.identity {
            self.lose("another replica holds the Lease");
        }
        self.saw(&observed.record);
        observed
    }

    /// Note a successful write sent at `sent`: this replica leads until `sent` + renew deadline
    /// (if it wrote itself as holder, which it always does outside of the release).
    fn written(&mut self, stored: Lease, sent: Instant) {
        let record = Record::from_lease(&stored);
        let until = sent + self.config.renew_deadline;
        let mine = record.holder == self.config.identity;
        self.observed = Some(Observed {
            lease: stored,
            record: record.clone(),
            at: Instant::now(),
        });
        // An answer that came after the deadline it would have given is no leadership at all.
        if mine && Instant::now() < until {
            self.leadership.lead_until(until);
            if !self.leading {
                self.leading = true;
                self.metrics.is_leader.set(1);
                tracing::info!(
                    lease = %self.lease_name(),
                    identity = %self.config.identity,
                    transitions = record.transitions,
                    "acquired the Lease: leading"
                );
            }
        }
        self.saw(&record);
    }

    /// Count and log a change of holder, and publish the state.
    fn saw(&mut self, record: &Record) {
        if !record.holder.is_empty() && self.last_holder.as_deref() != Some(record.holder.as_str())
        {
            if self.last_holder.is_some() {
                self.metrics.transitions.inc();
            }
            if record.holder != self.config.identity {
                tracing::info!(
                    lease = %self.lease_name(),
                    leader = %record.holder,
                    peer_address = record.peer_address.as_deref().unwrap_or(""),
                    "new leader seen"
                );
            }
            self.last_holder = Some(record.holder.clone());
        }
        self.publish();
    }

    fn publish(&self) {
        self.leadership.publish(LeaderState {
            leading: self.leading,
            leader: self
                .observed
                .as_ref()
                .and_then(|observed| observed.record.holder()),
        });
    }

    /// Stop leading at once (the deadline passed, or another holds the Lease).
    fn lose(&mut self, reason: &str) {
        self.leadership.stop_leading();
        if self.leading {
            self.leading = false;
            self.metrics.is_leader.set(0);
            tracing::warn!(lease = %self.lease_name(), identity = %self.config.identity, "stopped leading: {reason}");
        }
        self.publish();
    }

    /// Stop leading if the local deadline has passed.
    fn check_deadline(&mut self) {
        if self.leading && !self.leadership.is_leader() {
            self.lose(&format!(
                "the Lease was not renewed within the renew deadline ({:?})",
                self.config.renew_deadline
            ));
        }
    }

    fn succeeded(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!(lease = %self.lease_name(), "the Lease API answers again");
        }
    }

    /// Log a failed attempt: a leader's every failure, a candidate's first of a streak (a 409
    /// is a lost race, which is normal).
    fn failed(&mut self, error: &str, conflict: bool) {
        let first = !self.failing;
        if !conflict {
            self.failing = true;
        }
        if self.leading {
            tracing::warn!(lease = %self.lease_name(), error, "renewing the Lease failed; retrying");
        } else if first && !conflict {
            tracing::warn!(lease = %self.lease_name(), error, "leader election attempt failed; retrying");
        } else {
            tracing::debug!(lease = %self.lease_name(), error, "leader election attempt failed");
        }
    }

    /// client-go's `ReleaseOnCancel`: stop leading first, then hand the Lease back so another
    /// candidate takes it at its next retry (an empty holder and a 1 s lease).
    async fn release(&mut self) {
        self.leadership.stop_leading();
        if self.leading {
            self.leading = false;
            self.metrics.is_leader.set(0);
            tracing::info!(lease = %self.lease_name(), "stopped leading: shutting down");
        }
        self.publish();
        let Some(observed) = self
            .observed
            .clone()
            .filter(|observed| observed.record.holder == self.config.identity)
        else {
            return;
        };
        let now = record::now();
        let released = Record {
            holder: String::new(),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            transitions: observed.record.transitions,
            peer_address: None,
        };
        let lease = released.written_into(&observed.lease);
        let limit = self.config.renew_deadline.min(RELEASE_TIMEOUT);
        let pp = PostParams::default();
        let write = self.api.replace(&self.config.name, &pp, &lease);
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(stored)) => {
                self.observed = Some(Observed {
                    record: Record::from_lease(&stored),
                    lease: stored,
                    at: Instant::now(),
                });
                self.publish();
                tracing::info!(lease = %self.lease_name(), "released the Lease");
            }
            Ok(Err(err)) => tracing::warn!(
                lease = %self.lease_name(),
                error = %chain(&err),
                "could not release the Lease; another replica takes over when it expires"
            ),
            Err(_) => tracing::warn!(
                lease = %self.lease_name(),
                "no answer to the release within {limit:?}; another replica takes over when the Lease expires"
            ),
        }
    }

    fn error(&self, action: &'static str, source: kube::Error) -> AttemptError {
        AttemptError {
            action,
            lease: self.lease_name(),
            source,
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }
}

/// client-go's `wait.Jitter`: `period` plus up to `JITTER_FACTOR` times more.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + fastrand::f64() * JITTER_FACTOR)
}

/// An error and its causes on one line, each said once (kube's errors repeat their source in
/// their own text).
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
