//! The peer link between replicas: the leader streams every series' values to the followers,
//! and followers tell the leader what they are asked for.
//!
//! With several replicas, kube-apiserver sends each request to any of them, so every replica
//! must answer every metric, while AWS should be called once. So every replica answers from its
//! own table; only the leader (see [`crate::leader`]) calls AWS, and streams each change
//! ([`server`]) to the followers, which apply it ([`client`]). A follower therefore holds every
//! active series, its value and its due time, and is a warm leader the moment it is elected.
//!
//! Degrade, never fail: a follower whose stream breaks keeps serving what it holds until max
//! age and reconnects; if no leader streams to it for the lease duration plus the retry period,
//! its role becomes [`Role::Fallback`] and it reads what it is asked for itself, within a small
//! budget ([`PeerRoles`]). Before that, once the stream has been silent for [`SILENT_STREAM`]
//! ([`Role::Waiting`]), it reads only the first value of a series asked for here, so a read of a
//! series it has never seen does not wait out a failover. Readiness depends on this only at start
//! (a starting replica waits, within bounds, for a leader's snapshot: see `app::warm_up`).

pub mod client;
pub mod server;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::replica::{Role, Roles};
use crate::leader::Leadership;
pub use client::{ClientConfig, Follower, Link};
pub use server::PeerServer;

/// The leader's stream of changes.
pub const STREAM_PATH: &str = "/peer/v1/stream";
/// Where followers send demand.
pub const DEMAND_PATH: &str = "/peer/v1/demand";
/// The most series one demand may name.
pub const MAX_DEMAND_SERIES: usize = 1000;
/// The largest demand body accepted (1,000 keys of labels well within CloudWatch's limits).
pub const MAX_DEMAND_BYTES: usize = 2 * 1024 * 1024;

/// How long the leader's stream (a heartbeat each second) may be silent before a follower reads
/// first values itself ([`Role::Waiting`]): long enough for a starting replica to connect and
/// take the leader's snapshot.
pub const SILENT_STREAM: Duration = Duration::from_secs(3);

/// This replica's role from the election and the link: the leader leads (checked against its
/// local deadline); a follower follows while it hears from a leader, and falls back when it has
/// heard nothing for `patience` (the lease duration plus the retry period).
#[derive(Debug)]
pub struct PeerRoles {
    leadership: Leadership,
    link: Arc<Link>,
    patience: Duration,
    /// The role last given (as `role_code`), to log each change once.
    last: std::sync::atomic::AtomicU8,
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Lead => 0,
        Role::Follow => 1,
        Role::Fallback => 2,
        Role::Waiting => 3,
    }
}

impl PeerRoles {
    /// Roles from `leadership` and `link`.
    pub fn new(leadership: Leadership, link: Arc<Link>, patience: Duration) -> Self {
        Self {
            leadership,
            link,
            patience,
            // Starting as a follower: only a change from that is news.
            last: std::sync::atomic::AtomicU8::new(role_code(Role::Follow)),
        }
    }

    fn decide(&self) -> Role {
        if self.leadership.is_leader() {
            // A leader that loses the Lease starts its patience then, not from its last stream.
            self.link.heard_now();
            Role::Lead
        } else if self.link.heard_within(SILENT_STREAM.min(self.patience)) {
            Role::Follow
        } else if self.link.heard_within(self.patience) {
            Role::Waiting
        } else {
            Role::Fallback
        }
    }
}

impl Roles for PeerRoles {
    fn role(&self) -> Role {
        let role = self.decide();
        let code = role_code(role);
        let last = self.last.swap(code, std::sync::atomic::Ordering::AcqRel);
        if last != code {
            match role {
                Role::Lead => tracing::info!("calling AWS for every active series (leading)"),
                Role::Follow => {
                    tracing::info!("leaving AWS calls to the leader; serving its values")
                }
                Role::Waiting => tracing::info!(
                    silent = ?SILENT_STREAM,
                    "the leader's stream is silent: reading here only first values asked for here, within the fallback budget"
                ),
                Role::Fallback => tracing::warn!(
                    patience = ?self.patience,
                    "no leader heard from: reading what is asked here, within the fallback budget"
                ),
            }
        }
        role
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The peer link's metrics. Clones share their values.
#[derive(Clone, Debug)]
pub struct PeerMetrics {
    stream_up: Gauge,
    streams: Counter,
    lag: Histogram,
    followers: Gauge,
    skipped: Counter,
    demanded: Counter,
    demand_failures: Counter,
    refused: Family<ReasonLabels, Counter>,
}

impl Default for PeerMetrics {
    fn default() -> Self {
        Self {
            stream_up: Gauge::default(),
            streams: Counter::default(),
            lag: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            followers: Gauge::default(),
            skipped: Counter::default(),
            demanded: Counter::default(),
            demand_failures: Counter::default(),
            refused: Family::default(),
        }
    }
}

/// Register the peer link's metrics.
pub fn register(registry: &mut Registry) -> PeerMetrics {
    let metrics = PeerMetrics::default();
    registry.register(
        "peer_stream_up",
        "1 while this replica follows a leader's stream of values, else 0 (the leader, or a follower between connections)",
        metrics.stream_up.clone(),
    );
    registry.register(
        "peer_streams_started",
        "Streams from a leader this replica started following",
        metrics.streams.clone(),
    );
    registry.register(
        "peer_stream_lag_seconds",
        "How long after the leader sent a change this follower applied it",
        metrics.lag.clone(),
    );
    registry.register(
        "peer_followers",
        "Followers this replica streams values to (on the leader)",
        metrics.followers.clone(),
    );
    registry.register(
        "peer_series_skipped",
        "Series from the leader not applied: read under a definition this replica does not serve (an edit not yet seen by both), or no room",
        metrics.skipped.clone(),
    );
    registry.register(
        "peer_series_demanded",
        "Series followers asked this leader to keep fresh",
        metrics.demanded.clone(),
    );
    registry.register(
        "peer_demand_failures",
        "Demands this follower could not deliver to the leader (retried with the next keep-alive)",
        metrics.demand_failures.clone(),
    );
    registry.register(
        "peer_requests_refused",
        "Peer requests refused, by reason: unauthenticated, forbidden, unavailable",
        metrics.refused.clone(),
    );
    metrics
}

/// Decrements the follower gauge when a stream ends.
#[derive(Debug)]
pub(crate) struct Connected(Gauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl PeerMetrics {
    fn set_stream_up(&self, up: bool) {
        self.stream_up.set(i64::from(up));
    }

    fn stream_started(&self) {
        self.streams.inc();
    }

    fn observe_lag(&self, lag: Duration) {
        self.lag.observe(lag.as_secs_f64());
    }

    fn follower_connected(&self) -> Connected {
        self.followers.inc();
        Connected(self.followers.clone())
    }

    fn skipped(&self) {
        self.skipped.inc();
    }

    fn demanded(&self, series: usize) {
        self.demanded.inc_by(series as u64);
    }

    fn demand_failed(&self) {
        self.demand_failures.inc();
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Whether this replica follows a stream now (for tests).
    pub fn stream_up(&self) -> bool {
        self.stream_up.get() == 1
    }
}
