//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics
//! (`tools/leaderelection`), so that of several replicas only one calls AWS and writes status.
//!
//! - Timing: lease 15 s, renew deadline 10 s, retry 2 s (a candidate waits 2 s to 4.4 s
//!   between attempts: jitter factor 1.2; a leader renews every retry period), validated as
//!   client-go does: lease > renew deadline > 1.2 x retry.
//! - Every write carries the resourceVersion last observed, so of two candidates racing for the
//!   same Lease one gets `409 Conflict`: never two winners.
//! - A candidate judges expiry on its own monotonic clock: the Lease is free when its record
//!   has not changed for `leaseDurationSeconds` since this replica first saw it. `renewTime` is
//!   written for people, never compared with this replica's clock, so clock skew between nodes
//!   does not matter.
//! - Leadership is a LOCAL deadline: `valid_until = (when the last successful renew request was
//!   sent) + renew deadline`. [`Leadership::is_leader`] compares it with the monotonic clock
//!   and nothing else, so a leader cut off from the API server stops leading at the deadline
//!   even if its renew request never returns. Since the renew deadline is shorter than the lease
//!   duration, and others start counting the lease duration no earlier than that request was
//!   sent, the old leader has stopped before anyone else can take over.
//! - On shutdown a leader stops leading, then releases the Lease (empty `holderIdentity`,
//!   `leaseDurationSeconds: 1`, client-go's `ReleaseOnCancel`), so another candidate takes over
//!   at its next retry instead of after the lease duration.
//! - The holder advertises where followers reach it (`--peer-advertise-address`) in the
//!   annotation [`PEER_ADDRESS_ANNOTATION`] of the Lease, written with the holder in the same
//!   object, so a follower never pairs one holder with another's address.
//!
//! The identity is the pod's name plus a random suffix (as kube-controller-manager does), so
//! a restarted process never mistakes its predecessor's Lease for its own.

mod elector;
mod record;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

pub use elector::Elector;

/// The Lease annotation in which the holder advertises its peer address (`HOST:PORT`).
pub const PEER_ADDRESS_ANNOTATION: &str = "metrics.aws/peer-address";

/// client-go's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's jitter factor: a candidate waits retry x (1 + up to 1.2) between attempts.
pub const JITTER_FACTOR: f64 = 1.2;

/// What to elect on, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity, unique among the candidates (see [`unique_identity`]).
    pub identity: String,
    /// Where followers reach this replica when it leads (`HOST:PORT`), if anywhere.
    pub peer_address: Option<String>,
    /// How long a Lease whose record has not changed stays held (whole seconds: it is written
    /// as `leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long a leader keeps leading after sending its last successful renew.
    pub renew_deadline: Duration,
    /// How often a leader renews; a candidate retries after this times 1 to 2.2.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// A configuration with client-go's default timing.
    pub fn new(namespace: &str, name: &str, identity: &str) -> ElectionConfig {
        ElectionConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            peer_address: None,
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// client-go's checks (lease > renew deadline > 1.2 x retry, all positive, an identity),
    /// plus a lease duration of whole seconds, since that is what the Lease can hold.
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        if self.identity.is_empty() {
            return Err(ElectionConfigError::EmptyIdentity);
        }
        if self.name.is_empty() || self.namespace.is_empty() {
            return Err(ElectionConfigError::NoLease);
        }
        if self.lease_duration < Duration::from_secs(1) || self.lease_duration.subsec_nanos() != 0 {
            return Err(ElectionConfigError::LeaseDuration(self.lease_duration));
        }
        if i32::try_from(self.lease_duration.as_secs()).is_err() {
            return Err(ElectionConfigError::LeaseDuration(self.lease_duration));
        }
        if self.retry_period.is_zero() {
            return Err(ElectionConfigError::RetryPeriod);
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ElectionConfigError::LeaseNotAboveRenewDeadline {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return Err(ElectionConfigError::RenewDeadlineNotAboveRetry {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }
}

/// Why an [`ElectionConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionConfigError {
    /// No identity: the holder could not be told apart.
    #[error("the candidate's identity is empty")]
    EmptyIdentity,
    /// No Lease name or namespace.
    #[error("the Lease's name and namespace must not be empty")]
    NoLease,
    /// The lease duration is not a whole, positive number of seconds.
    #[error(
        "the lease duration must be a whole number of seconds, at least 1s (it is written as leaseDurationSeconds), not {0:?}"
    )]
    LeaseDuration(Duration),
    /// The retry period is zero.
    #[error("the retry period must be positive")]
    RetryPeriod,
    /// lease duration <= renew deadline: a leader could still act after others took over.
    #[error(
        "the lease duration ({lease_duration:?}) must be greater than the renew deadline ({renew_deadline:?})"
    )]
    LeaseNotAboveRenewDeadline {
        /// The lease duration.
        lease_duration: Duration,
        /// The renew deadline.
        renew_deadline: Duration,
    },
    /// renew deadline <= 1.2 x retry: a leader would not get one jittered retry in.
    #[error(
        "the renew deadline ({renew_deadline:?}) must be greater than {JITTER_FACTOR} x the retry period ({retry_period:?})"
    )]
    RenewDeadlineNotAboveRetry {
        /// The renew deadline.
        renew_deadline: Duration,
        /// The retry period.
        retry_period: Duration,
    },
}

/// `base` plus a random suffix, so that two processes (or one restarted process) never share
/// an identity: `adapter-7d9f_3fa85f64`.
pub fn unique_identity(base: &str) -> String {
    format!("{base}_{:08x}", fastrand::u32(..))
}

/// A holder of the Lease, as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its identity (`holderIdentity`).
    pub identity: String,
    /// Where followers reach it (the [`PEER_ADDRESS_ANNOTATION`]), if it advertised one.
    pub peer_address: Option<String>,
}

/// What [`Leadership::changes`] publishes: sent on every transition (acquired, lost, new
/// leader seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderState {
    /// Whether this replica leads. Published when it changes; [`Leadership::is_leader`], which
    /// reads the local deadline, is the one to check before acting.
    pub leading: bool,
    /// The last observed holder (this replica when it leads); `None` before the first
    /// observation, when the Lease has no holder, or with [`Leadership::always`].
    pub leader: Option<Holder>,
}

/// Whether this replica leads: a cheap, cloneable handle for every side effect to check right
/// before acting.
#[derive(Clone, Debug)]
pub struct Leadership {
    shared: Arc<Shared>,
}

/// `valid_until` as nanoseconds after `base`: 0 when not leading, [`ALWAYS`] for
/// [`Leadership::always`].
#[derive(Debug)]
struct Shared {
    base: Instant,
    valid_until: AtomicU64,
    state: watch::Sender<LeaderState>,
}

const ALWAYS: u64 = u64::MAX;

impl Leadership {
    /// A replica that always leads (`--leader-elect=false`): no Lease, no peers.
    pub fn always() -> Leadership {
        let leadership = Leadership::new();
        leadership
            .shared
            .valid_until
            .store(ALWAYS, Ordering::Release);
        leadership.shared.state.send_replace(LeaderState {
            leading: true,
            leader: None,
        });
        leadership
    }

    /// Not leading, nothing observed.
    fn new() -> Leadership {
        Leadership {
            shared: Arc::new(Shared {
                base: Instant::now(),
                valid_until: AtomicU64::new(0),
                state: watch::Sender::new(LeaderState {
                    leading: false,
                    leader: None,
                }),
            }),
        }
    }

    /// Whether this replica leads now: the monotonic clock is before the local deadline (the
    /// last successful renew's send time plus the renew deadline). An atomic load and a clock
    /// read: cheap enough for every call batch and status write.
    pub fn is_leader(&self) -> bool {
        self.valid_until()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Until when this replica leads unless it renews (`None` when it does not lead; far in the
    /// future with [`Leadership::always`]). For work that must finish while leading.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.shared.valid_until.load(Ordering::Acquire) {
            0 => None,
            // About 30 years: far enough, and no overflow.
            ALWAYS => Some(Instant::now() + Duration::from_secs(1 << 30)),
            nanos => Some(self.shared.base + Duration::from_nanos(nanos)),
        }
    }

    /// The last observed holder: identity and advertised peer address.
    pub fn leader(&self) -> Option<Holder> {
        self.shared.state.borrow().leader.clone()
    }

    /// Transitions (acquired, lost, new leader seen), for logs and the peer link.
    pub fn changes(&self) -> watch::Receiver<LeaderState> {
        self.shared.state.subscribe()
    }

    /// Lead until `until` (the elector, after a successful renew).
    fn lead_until(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.shared.base).as_nanos();
        // At least 1 (0 means not leading), below ALWAYS.
        let nanos = u64::try_from(nanos)
            .unwrap_or(ALWAYS - 1)
            .clamp(1, ALWAYS - 1);
        self.shared.valid_until.store(nanos, Ordering::Release);
    }

    /// Stop leading at once.
    fn stop_leading(&self) {
        self.shared.valid_until.store(0, Ordering::Release);
    }

    /// Publish `state` if it differs from the last one.
    fn publish(&self, state: LeaderState) {
        self.shared.state.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }
}

/// The election's metrics. Clones share their values.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    is_leader: Gauge,
    transitions: Counter,
}

/// Register the election's metrics (`leader_election_is_leader`,
/// `leader_election_transitions_total`) and return them for the [`Elector`].
pub fn register(registry: &mut Registry) -> LeaderMetrics {
    let metrics = LeaderMetrics::default();
    registry.register(
        "leader_election_is_leader",
        "1 while this replica leads (holds the Lease, within its renew deadline), else 0",
        metrics.is_leader.clone(),
    );
    registry.register(
        "leader_election_transitions",
        "Changes of the Lease's holder this replica observed (its own acquisitions included)",
        metrics.transitions.clone(),
    );
    metrics
}

impl LeaderMetrics {
    /// Set the gauge for a replica that leads without an election (`--leader-elect=false`):
    /// it always leads.
    pub fn set_always_leading(&self) {
        self.is_leader.set(1);
    }

    /// The gauge's value: 1 on the leader.
    pub fn is_leader(&self) -> i64 {
        self.is_leader.get()
    }

    /// Holder changes observed so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.get()
    }
}
