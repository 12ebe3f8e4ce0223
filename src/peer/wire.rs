//! What travels on the peer link: newline-delimited JSON frames from the leader, and demand
//! from followers. Times are wall-clock milliseconds since the Unix epoch (another node's
//! monotonic clock means nothing here), and a series carries a fingerprint of the definition it
//! was read with, so a replica never takes a value read under a definition it does not serve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::definition::Definition;
use crate::engine::replica::SeriesSnapshot;
use crate::provider::ProviderError;
use crate::series::{Labels, Reading, SeriesKey};

/// A series' identity on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    /// The `ExternalMetric`'s namespace; absent for the definitions file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The metric name.
    pub metric: String,
    /// The selector's labels, sorted by key.
    #[serde(default)]
    pub labels: Vec<(String, String)>,
}

impl WireKey {
    /// The key of `key`.
    pub fn of(key: &SeriesKey) -> Self {
        Self {
            namespace: key.namespace.clone(),
            metric: key.metric.clone(),
            labels: key
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// As the engine keys series (labels re-sorted: the wire is not trusted to be).
    pub fn to_key(&self) -> SeriesKey {
        let map = self.labels.iter().cloned().collect();
        SeriesKey {
            namespace: self.namespace.clone(),
            metric: self.metric.clone(),
            labels: Labels::new(&map),
        }
    }
}

/// A reading with when it was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WireReading {
    /// The datapoint's time (ms).
    pub timestamp: i64,
    /// The period it was aggregated over (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// The value.
    pub value: f64,
    /// When it was fetched (ms): max age runs from here, never from arrival.
    pub fetched: i64,
}

/// The latest outcome of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WireOutcome {
    /// A value.
    Value(WireReading),
    /// An answer that is not a value, with when it was fetched (ms).
    Error {
        /// The error, as the leader would answer it.
        error: ProviderError,
        /// When.
        fetched: i64,
    },
}

/// A series as the leader holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSeries {
    /// Which series.
    pub key: WireKey,
    /// The definition's fingerprint ([`fingerprint`]).
    pub spec: String,
    /// The latest outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<WireOutcome>,
    /// The last good reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<WireReading>,
    /// When it is due next (ms).
    pub due: i64,
    /// Consecutive failures.
    #[serde(default)]
    pub failures: u32,
}

/// One line of the leader's stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// When the leader sent it (ms): followers measure their lag with it.
    pub sent: i64,
    /// The frame is part of a snapshot of the whole table; `complete` marks its last frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// The last frame of a snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
    /// Series refreshed (or, in a snapshot, held).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<WireSeries>,
    /// Series no longer tracked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<WireKey>,
}

/// A follower's demand: series asked for there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandRequest {
    /// The series.
    pub series: Vec<WireKey>,
}

/// The leader's answer to a demand: the series it could not track, with why, and those it
/// already held with an answer (the follower takes them at once instead of waiting for their
/// next refresh).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DemandResponse {
    /// Refused series.
    #[serde(default)]
    pub refused: Vec<(WireKey, ProviderError)>,
    /// Series already held.
    #[serde(default)]
    pub held: Vec<WireSeries>,
}

/// Milliseconds since the Unix epoch (saturating; times before it are 0).
pub fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time of `ms` milliseconds since the Unix epoch (negative ones are the epoch).
pub fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn wire_reading(reading: &Reading, fetched: SystemTime) -> Option<WireReading> {
    // JSON has no NaN or infinity; such a value is never served anyway.
    reading.value.is_finite().then(|| WireReading {
        timestamp: millis(reading.timestamp),
        window: reading
            .window
            .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        value: reading.value,
        fetched: millis(fetched),
    })
}

fn reading(wire: &WireReading) -> (Reading, SystemTime) {
    (
        Reading {
            timestamp: time(wire.timestamp),
            window: wire.window.map(Duration::from_millis),
            value: wire.value,
        },
        time(wire.fetched),
    )
}

impl WireSeries {
    /// `snapshot` on the wire.
    pub fn of(snapshot: &SeriesSnapshot, fingerprints: &Fingerprints) -> Self {
        Self {
            key: WireKey::of(&snapshot.key),
            spec: fingerprints.of(&snapshot.definition),
            latest: snapshot
                .latest
                .as_ref()
                .and_then(|(result, at)| match result {
                    Ok(reading) => wire_reading(reading, *at).map(WireOutcome::Value),
                    Err(error) => Some(WireOutcome::Error {
                        error: error.clone(),
                        fetched: millis(*at),
                    }),
                }),
            good: snapshot
                .last_good
                .as_ref()
                .and_then(|(reading, at)| wire_reading(reading, *at)),
            due: millis(snapshot.next_refresh),
            failures: snapshot.failures,
        }
    }

    /// As the engine takes it over, read under `definition` (which the caller checked has the
    /// same fingerprint).
    pub fn to_snapshot(&self, definition: Arc<Definition>) -> SeriesSnapshot {
        SeriesSnapshot {
            key: self.key.to_key(),
            definition,
            latest: self.latest.as_ref().map(|outcome| match outcome {
                WireOutcome::Value(value) => {
                    let (reading, at) = reading(value);
                    (Ok(reading), at)
                }
                WireOutcome::Error { error, fetched } => (Err(error.clone()), time(*fetched)),
            }),
            last_good: self.good.as_ref().map(reading),
            next_refresh: time(self.due),
            failures: self.failures,
        }
    }
}

/// Fingerprints of definitions, computed once per definition: a digest of its namespace and
/// spec, the same on every replica that holds the same definition.
#[derive(Debug, Default)]
pub struct Fingerprints {
    known: Mutex<HashMap<usize, (Weak<Definition>, String)>>,
}

impl Fingerprints {
    /// The fingerprint of `definition`.
    pub fn of(&self, definition: &Arc<Definition>) -> String {
        let address = Arc::as_ptr(definition) as usize;
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((weak, fingerprint)) = known.get(&address)
            && weak.upgrade().is_some_and(|d| Arc::ptr_eq(&d, definition))
        {
            return fingerprint.clone();
        }
        if known.len() > 4096 {
            known.retain(|_, (weak, _)| weak.strong_count() > 0);
        }
        let fingerprint = compute(definition);
        known.insert(address, (Arc::downgrade(definition), fingerprint.clone()));
        fingerprint
    }
}

fn compute(definition: &Definition) -> String {
    let mut digest = Sha256::new();
    digest.update(definition.namespace.as_deref().unwrap_or("").as_bytes());
    digest.update([0]);
    // The spec as JSON: the same definition serializes the same way on every replica.
    digest.update(serde_json::to_vec(&definition.spec).unwrap_or_default());
    digest
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::definition::parse;

    #[test]
    fn a_series_survives_the_wire_and_a_changed_spec_changes_the_fingerprint() {
        let set = parse(
            "metrics:\n  - name: m\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M, dimensions: [{name: Q, value: \"${Q}\"}]}\n          period: 60\n          stat: Sum\n",
        )
        .unwrap();
        let definition = set.get("m").unwrap().clone();
        let fingerprints = Fingerprints::default();
        let key = SeriesKey::new(
            &definition,
            &[("Q".to_string(), "orders".to_string())]
                .into_iter()
                .collect(),
        );
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let reading = Reading {
            timestamp: at - Duration::from_secs(60),
            window: Some(Duration::from_secs(60)),
            value: 12.5,
        };
        let snapshot = SeriesSnapshot {
            key: key.clone(),
            definition: definition.clone(),
            latest: Some((Ok(reading), at)),
            last_good: Some((reading, at)),
            next_refresh: at + Duration::from_secs(60),
            failures: 0,
        };
        let wire = WireSeries::of(&snapshot, &fingerprints);
        let text = serde_json::to_string(&Frame {
            sent: millis(at),
            updated: vec![wire.clone()],
            ..Frame::default()
        })
        .unwrap();
        let back: Frame = serde_json::from_str(&text).unwrap();
        assert_eq!(back.updated[0], wire);
        let restored = back.updated[0].to_snapshot(definition.clone());
        assert_eq!(restored.key, key);
        assert_eq!(restored.latest.unwrap().0.unwrap(), reading);
        assert_eq!(restored.next_refresh, snapshot.next_refresh);
        // Another replica's copy of the same definition has the same fingerprint; an edit
        // does not.
        let same = parse(
            "metrics:\n  - name: m\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M, dimensions: [{name: Q, value: \"${Q}\"}]}\n          period: 60\n          stat: Sum\n",
        )
        .unwrap()
        .get("m")
        .unwrap()
        .clone();
        let edited = parse(
            "metrics:\n  - name: m\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M, dimensions: [{name: Q, value: \"${Q}\"}]}\n          period: 60\n          stat: Average\n",
        )
        .unwrap()
        .get("m")
        .unwrap()
        .clone();
        assert_eq!(fingerprints.of(&same), wire.spec);
        assert_ne!(fingerprints.of(&edited), wire.spec);
    }
}
