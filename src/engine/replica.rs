//! Several replicas, one caller: the engine's side of high availability.
//!
//! Every replica answers every request from its own table. Only the replica whose [`Roles`] say
//! [`Role::Lead`] calls backends; it publishes every change to a series ([`Change`]) for the
//! other replicas, which [`apply`](super::Engine::apply) them to their tables. So a follower
//! holds every active series, its value and its due time, and becomes a warm leader. A follower
//! that hears from no leader for long enough falls back to reading what it is asked for itself
//! ([`Role::Fallback`]), within a small budget; while the leader's stream is merely silent
//! ([`Role::Waiting`]), it reads only first values asked for here, within the same budget.
//!
//! The engine knows nothing of Leases or of the peer link: `leader` decides the role, `peer`
//! carries the changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::definition::Definition;
use crate::provider::ProviderError;
use crate::series::{Reading, SeriesKey};

/// What this replica does about refreshes, decided right before every call batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Refresh every active series (the only replica, or the leader while its lease holds).
    Lead,
    /// Leave refreshes to the leader; values arrive from it.
    Follow,
    /// Following, but the leader's stream has been silent for a few seconds (a leader killed,
    /// a reconnect, a pod that started during a failover): what is held waits for the leader,
    /// and only a series asked for here that has no value yet is read here, within the
    /// fallback budget, so its first read does not wait out the failover.
    Waiting,
    /// No leader has been heard from for too long: refresh the series asked for here, within
    /// the fallback budget.
    Fallback,
}

/// Decides this replica's role. Called before every call batch, so it must be cheap and must
/// answer from a local deadline (a leader that cannot renew stops at once).
pub trait Roles: Send + Sync + std::fmt::Debug + 'static {
    /// The role now.
    fn role(&self) -> Role;
}

/// A series as one replica holds it, with times as wall-clock times, so another replica can
/// take it over.
#[derive(Debug, Clone)]
pub struct SeriesSnapshot {
    /// Which series.
    pub key: SeriesKey,
    /// The definition it was read with (a replica applies it only if it has the same one).
    pub definition: Arc<Definition>,
    /// The latest outcome and when it was fetched.
    pub latest: Option<(Result<Reading, ProviderError>, SystemTime)>,
    /// The last good reading and when it was fetched.
    pub last_good: Option<(Reading, SystemTime)>,
    /// When it is due for its next refresh.
    pub next_refresh: SystemTime,
    /// Consecutive failed refreshes.
    pub failures: u32,
}

/// A change to the table, as the leader publishes it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A series was refreshed (or newly tracked).
    Updated(Arc<SeriesSnapshot>),
    /// A series is no longer tracked (idle, its definition gone, or dropped for room).
    Removed(SeriesKey),
}

/// A series asked for here that its labels alone identify (for demand sent to the leader).
pub type Demand = (Option<String>, String, BTreeMap<String, String>);
