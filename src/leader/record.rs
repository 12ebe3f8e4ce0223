//! The leader election record (client-go's `LeaderElectionRecord`) and the Lease that holds
//! it: pure code.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::{Holder, PEER_ADDRESS_ANNOTATION};

/// What a Lease says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    /// `spec.holderIdentity`; empty when nobody holds it (after a release).
    pub holder: String,
    /// `spec.leaseDurationSeconds`, as the holder wrote it (`None` if absent).
    pub lease_duration_seconds: Option<i32>,
    /// `spec.acquireTime`: for people only, never compared with a clock.
    pub acquire_time: Option<MicroTime>,
    /// `spec.renewTime`: for people only, never compared with a clock.
    pub renew_time: Option<MicroTime>,
    /// `spec.leaseTransitions`.
    pub transitions: i32,
    /// The holder's advertised peer address.
    pub peer_address: Option<String>,
}

impl Record {
    /// The record a Lease holds.
    pub(super) fn from_lease(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
            peer_address: lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(PEER_ADDRESS_ANNOTATION))
                .cloned(),
        }
    }

    /// The holder, if there is one.
    pub(super) fn holder(&self) -> Option<Holder> {
        (!self.holder.is_empty()).then(|| Holder {
            identity: self.holder.clone(),
            peer_address: self.peer_address.clone(),
        })
    }

    /// `lease` (its metadata, resourceVersion included) holding this record instead. Other
    /// annotations and labels are kept; the peer address annotation is this record's.
    pub(super) fn written_into(&self, lease: &Lease) -> Lease {
        let mut lease = lease.clone();
        let annotations = lease.metadata.annotations.get_or_insert_default();
        match &self.peer_address {
            Some(address) => {
                annotations.insert(PEER_ADDRESS_ANNOTATION.to_string(), address.clone());
            }
            None => {
                annotations.remove(PEER_ADDRESS_ANNOTATION);
            }
        }
        if annotations.is_empty() {
            lease.metadata.annotations = None;
        }
        let spec = lease.spec.get_or_insert_default();
        spec.holder_identity = Some(self.holder.clone());
        spec.lease_duration_seconds = self.lease_duration_seconds;
        spec.acquire_time = self.acquire_time.clone();
        spec.renew_time = self.renew_time.clone();
        spec.lease_transitions = Some(self.transitions);
        lease
    }

    /// A new Lease `namespace/name` holding this record.
    pub(super) fn new_lease(&self, namespace: &str, name: &str) -> Lease {
        self.written_into(&Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        })
    }
}

/// The wall clock as a `MicroTime` (microseconds, as the API server keeps them). Only ever
/// written into `acquireTime` and `renewTime` for people to read.
pub(super) fn now() -> MicroTime {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(0);
    let micros = i32::try_from(since_epoch.subsec_micros()).unwrap_or(0);
    MicroTime(Timestamp::new(seconds, micros * 1_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The wall clock, or one microsecond after `previous` if the wall clock is not past it.
pub(super) fn later_than(previous: Option<&MicroTime>) -> MicroTime {
    let now = now();
    match previous {
        Some(previous) if now.0 <= previous.0 => previous
            .0
            .checked_add(k8s_openapi::jiff::SignedDuration::from_micros(1))
            .map_or(now, MicroTime),
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use super::*;

    fn record(holder: &str, peer: Option<&str>) -> Record {
        Record {
            holder: holder.to_string(),
            lease_duration_seconds: Some(15),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            transitions: 3,
            peer_address: peer.map(str::to_string),
        }
    }

    #[test]
    fn a_record_round_trips_through_a_lease_with_its_peer_address() {
        let written = record("a_1", Some("10.0.0.7:6443")).new_lease("ns", "lock");
        assert_eq!(written.metadata.name.as_deref(), Some("lock"));
        assert_eq!(
            written.metadata.annotations.as_ref().unwrap()[PEER_ADDRESS_ANNOTATION],
            "10.0.0.7:6443"
        );
        let read = Record::from_lease(&written);
        assert_eq!(read, record("a_1", Some("10.0.0.7:6443")).with_times(&read));
        assert_eq!(
            read.holder(),
            Some(Holder {
                identity: "a_1".into(),
                peer_address: Some("10.0.0.7:6443".into())
            })
        );
    }

    #[test]
    fn a_new_holder_replaces_the_address_and_keeps_other_metadata() {
        let mut lease = record("a_1", Some("10.0.0.7:6443")).new_lease("ns", "lock");
        lease.metadata.resource_version = Some("42".into());
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("team".into(), "platform".into());
        lease.metadata.labels = Some(BTreeMap::from([("app".into(), "adapter".into())]));
        // A holder without an address removes the old holder's: no stale pairing.
        let released = Record {
            holder: String::new(),
            lease_duration_seconds: Some(1),
            peer_address: None,
            ..record("", None)
        };
        let written = released.written_into(&lease);
        assert_eq!(written.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(written.metadata.labels, lease.metadata.labels);
        let annotations = written.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(PEER_ADDRESS_ANNOTATION));
        assert_eq!(annotations["team"], "platform");
        let spec = written.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(
            Record::from_lease(&released.new_lease("ns", "x")).holder(),
            None
        );
    }

    #[test]
    fn renew_times_always_move_forward() {
        let ahead = MicroTime(
            now()
                .0
                .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(1))
                .unwrap(),
        );
        let next = later_than(Some(&ahead));
        assert_eq!(next.0.as_microsecond(), ahead.0.as_microsecond() + 1);
        let behind = MicroTime(Timestamp::UNIX_EPOCH);
        assert!(
            later_than(Some(&behind)).0
                > ahead
                    .0
                    .checked_sub(k8s_openapi::jiff::SignedDuration::from_hours(2))
                    .unwrap()
        );
        assert!(later_than(None).0 > behind.0);
    }

    #[test]
    fn a_lease_without_spec_reads_as_free() {
        let record = Record::from_lease(&Lease::default());
        assert_eq!(record.holder(), None);
        assert_eq!(record.transitions, 0);
        assert_eq!(record.lease_duration_seconds, None);
    }

    impl Record {
        /// This record with `other`'s times (times are the wall clock's, not comparable).
        fn with_times(mut self, other: &Record) -> Record {
            self.acquire_time = other.acquire_time.clone();
            self.renew_time = other.renew_time.clone();
            self
        }
    }
}
