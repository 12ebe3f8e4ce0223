//! Reading series as kube-apiserver's aggregator does (front-proxy client certificate, the HPA
//! controller's `X-Remote-*` headers, HTTP/2), and what the answers say: latency, status, and the
//! served value's age.
//!
//! A value's age is how long ago the CloudWatch bucket it was computed from ended: the time the
//! answer arrived minus (its `timestamp` + its `window`). The adapter reads the newest complete
//! bucket at each refresh, so right after a refresh the age is about the refresh's own delay, and
//! it grows to one refresh interval before the next one. A value within refreshInterval + 2 s is
//! therefore one that was refreshed on time, give or take 2 s.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::bail;
use hdrhistogram::Histogram;
use reqwest::header::HeaderMap;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fleet::{Fleet, epoch_ms, parse_rfc3339_ms};

/// What one read got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with a value, this many milliseconds old (negative: stamped in the future).
    Value {
        /// The value's age.
        age_ms: i64,
    },
    /// 200 without a value the benchmark could read.
    Unreadable,
    /// Another HTTP status.
    Status(u16),
    /// No answer (connection failure, reset stream).
    Failed,
}

/// Sends reads of the fleet's series to one adapter, spread over several HTTP/2 connections
/// (one per client) so that more than one connection's stream limit can be in flight.
#[derive(Debug)]
pub struct Reader {
    clients: Vec<reqwest::Client>,
    headers: HeaderMap,
    urls: Vec<String>,
    undefined: String,
}

impl Reader {
    /// Reads of every series of `fleet` at `base`, through `clients`, with `headers`.
    pub fn new(
        clients: Vec<reqwest::Client>,
        headers: HeaderMap,
        base: &str,
        fleet: &Fleet,
    ) -> anyhow::Result<Reader> {
        if clients.is_empty() {
            bail!("at least one client is needed");
        }
        let urls = (0..fleet.series)
            .map(|s| format!("{base}{}", fleet.path(s)))
            .collect();
        Ok(Reader {
            clients,
            headers,
            urls,
            undefined: format!(
                "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/undefined-metric"
            ),
        })
    }

    /// How many series it reads.
    pub fn series(&self) -> usize {
        self.urls.len()
    }

    /// Ask for a metric nobody defines over connection `connection` (the whole request path,
    /// authorization included, with a small answer): true if answered 404 as it should be.
    pub async fn ask_for_nothing(&self, connection: usize) -> bool {
        let client = &self.clients[connection % self.clients.len()];
        match client
            .get(&self.undefined)
            .headers(self.headers.clone())
            .send()
            .await
        {
            Ok(response) => response.status() == 404 && response.bytes().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Read series `series` over connection `connection` (modulo the number of clients).
    pub async fn read(&self, connection: usize, series: usize) -> (Outcome, Duration) {
        let client = &self.clients[connection % self.clients.len()];
        let started = Instant::now();
        let response = client
            .get(&self.urls[series % self.urls.len()])
            .headers(self.headers.clone())
            .send()
            .await;
        let outcome = match response {
            Ok(response) if response.status() == 200 => match response.bytes().await {
                Ok(body) => value_age(&body, SystemTime::now())
                    .map_or(Outcome::Unreadable, |age_ms| Outcome::Value { age_ms }),
                Err(_) => Outcome::Failed,
            },
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the body so the stream is finished cleanly.
                let _ = response.bytes().await;
                Outcome::Status(status)
            }
            Err(_) => Outcome::Failed,
        };
        (outcome, started.elapsed())
    }
}

/// The age of the first item of an `ExternalMetricValueList`, in milliseconds at `now`.
pub fn value_age(body: &[u8], now: SystemTime) -> Option<i64> {
    let list: serde_json::Value = serde_json::from_slice(body).ok()?;
    let item = list.get("items")?.get(0)?;
    let stamped = parse_rfc3339_ms(item.get("timestamp")?.as_str()?)?;
    let window = item.get("window").and_then(|w| w.as_i64()).unwrap_or(0);
    Some(epoch_ms(now) - (stamped + window * 1000))
}

/// What a phase's reads got.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Reads answered (whatever the answer).
    pub answered: u64,
    /// Reads that got a value.
    pub values: u64,
    /// Other answers: status code, `unreadable` or `failed`, and how many.
    pub errors: BTreeMap<String, u64>,
    /// Microseconds from send to the whole body.
    pub latency: Histogram<u64>,
    /// Milliseconds: the served values' ages (see the module docs).
    pub age: Histogram<u64>,
    /// Values stamped in the future (counted as age 0).
    pub ahead: u64,
    /// Microseconds a fixed-rate generator fell behind its schedule (its own noise).
    pub lag: Histogram<u64>,
}

impl Tally {
    /// Nothing yet.
    pub fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            answered: 0,
            values: 0,
            errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            age: Histogram::new_with_bounds(1, 86_400_000, 3)?,
            ahead: 0,
            lag: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        })
    }

    /// Count one read.
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        self.answered += 1;
        let _ = self
            .latency
            .record((latency.as_micros() as u64).clamp(1, 120_000_000));
        match outcome {
            Outcome::Value { age_ms } => {
                self.values += 1;
                if age_ms < 0 {
                    self.ahead += 1;
                }
                let _ = self.age.record((age_ms.max(1) as u64).min(86_400_000));
            }
            Outcome::Unreadable => *self.errors.entry("unreadable".into()).or_default() += 1,
            Outcome::Status(code) => *self.errors.entry(code.to_string()).or_default() += 1,
            Outcome::Failed => *self.errors.entry("failed".into()).or_default() += 1,
        }
    }

    /// Add another phase's reads (for ages over several phases).
    pub fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.answered += other.answered;
        self.values += other.values;
        for (key, count) in &other.errors {
            *self.errors.entry(key.clone()).or_default() += count;
        }
        self.latency.add(&other.latency)?;
        self.age.add(&other.age)?;
        self.ahead += other.ahead;
        self.lag.add(&other.lag)?;
        Ok(())
    }

    /// Reads that got no value.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at quantile `q`, milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Age at quantile `q`, seconds.
    pub fn age_s(&self, q: f64) -> f64 {
        self.age.value_at_quantile(q) as f64 / 1000.0
    }
}

fn shared_tally() -> anyhow::Result<Arc<Mutex<Tally>>> {
    Ok(Arc::new(Mutex::new(Tally::new()?)))
}

fn record(tally: &Mutex<Tally>, outcome: Outcome, latency: Duration) {
    tally
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .record(outcome, latency);
}

fn take(tally: Arc<Mutex<Tally>>) -> Tally {
    match Arc::try_unwrap(tally) {
        Ok(mutex) => mutex.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(shared) => shared.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Open every connection and use as many streams as the first fill will, with requests for an
/// undefined metric (no series), so that the idle baseline already holds what connections and
/// concurrent streams cost.
pub async fn warm_connections(reader: Arc<Reader>, concurrency: usize) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let reader = reader.clone();
        workers.spawn(async move {
            for _ in 0..3 {
                if !reader.ask_for_nothing(worker).await {
                    bail!("a request for an undefined metric was not answered 404 while warming the connections");
                }
            }
            Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// How the first fill went.
#[derive(Debug, Clone, Copy)]
pub struct FirstFill {
    /// From the first request until every series had answered with a value.
    pub elapsed: Duration,
    /// Reads answered without a value (typically 503 while a first fetch waits for the budget)
    /// and asked again.
    pub retried: u64,
}

/// Ask for every series at once, `concurrency` reads in flight, as HPAs do after the adapter
/// restarts; a read answered without a value is asked again after `retry_after`. Returns when
/// every series has answered with a value, or fails at `deadline`.
pub async fn first_fill(
    reader: Arc<Reader>,
    concurrency: usize,
    retry_after: Duration,
    deadline: Instant,
) -> anyhow::Result<FirstFill> {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let (reader, next, retried) = (reader.clone(), next.clone(), retried.clone());
        workers.spawn(async move {
            loop {
                let series = next.fetch_add(1, Ordering::Relaxed);
                if series >= reader.series() {
                    return Ok(());
                }
                loop {
                    match reader.read(worker, series).await.0 {
                        Outcome::Value { .. } => break,
                        outcome => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            if Instant::now() > deadline {
                                bail!(
                                    "series {series} had no value by the first fill's deadline (last answer: {outcome:?})"
                                );
                            }
                            tokio::time::sleep(retry_after).await;
                        }
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(FirstFill {
        elapsed: started.elapsed(),
        retried: retried.load(Ordering::Relaxed),
    })
}

/// How long reads under way when the HPAs stop get to finish.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// What the HPAs' reads got: before the first refresh after the first fill, and after it.
#[derive(Debug, Clone)]
pub struct Polls {
    /// Reads answered before `steady_from` (values from the first fill).
    pub settling: Tally,
    /// Reads answered from then on.
    pub steady: Tally,
}

/// The fleet's HPAs, each reading its series one after another every `sync_period`, their
/// syncs spread evenly over the period (as the HPA controller's resyncs are), until `until`.
/// Returns what the reads got, split at `steady_from`, at most 1.5 s after `until` (reads still
/// under way then are dropped, not counted).
pub async fn simulate_hpas(
    reader: Arc<Reader>,
    fleet: Fleet,
    sync_period: Duration,
    steady_from: Instant,
    until: Instant,
) -> anyhow::Result<Polls> {
    let settling = shared_tally()?;
    let steady = shared_tally()?;
    let start = Instant::now();
    let mut hpas = JoinSet::new();
    for hpa in 0..fleet.hpas {
        let series = fleet.hpa_series(hpa);
        let (reader, settling, steady) = (reader.clone(), settling.clone(), steady.clone());
        let first = start + sync_period.mul_f64(hpa as f64 / fleet.hpas as f64);
        hpas.spawn(async move {
            let mut ticker = tokio::time::interval_at(first, sync_period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if Instant::now() >= until {
                    return;
                }
                for &s in &series {
                    if Instant::now() >= until {
                        return;
                    }
                    let (outcome, latency) = reader.read(hpa, s).await;
                    let tally = if Instant::now() < steady_from {
                        &settling
                    } else {
                        &steady
                    };
                    record(tally, outcome, latency);
                }
            }
        });
    }
    tokio::time::sleep_until(until).await;
    // No new syncs start from now on; reads under way get a moment to finish (aborting
    // thousands of streams at once would only make the adapter log resets), then stop.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while hpas.join_next().await.is_some() {}
    })
    .await;
    hpas.abort_all();
    while hpas.join_next().await.is_some() {}
    Ok(Polls {
        settling: take(settling),
        steady: take(steady),
    })
}

/// `rate` reads per second for `duration`, each in its own task, over every series in turn.
/// Tokio's timer ticks every millisecond, so each tick sends the reads due by then; the
/// generator's own lag behind its schedule is recorded apart.
pub async fn fixed_rate(
    reader: Arc<Reader>,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Tally> {
    let tally = shared_tally()?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut reads = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    let (mut ticks, mut sent) = (0u64, 0u64);
    while Instant::now() < end {
        let scheduled = ticker.tick().await;
        let _ = lag.record((scheduled.elapsed().as_micros() as u64).max(1));
        ticks += 1;
        let due = rate.saturating_mul(ticks) / 1000;
        while sent < due {
            let (reader, tally) = (reader.clone(), tally.clone());
            let index = sent as usize;
            sent += 1;
            reads.spawn(async move {
                let (outcome, latency) = reader.read(index, index).await;
                record(&tally, outcome, latency);
            });
        }
        // Keep the set from growing with finished reads.
        while reads.try_join_next().is_some() {}
    }
    while reads.join_next().await.is_some() {}
    let mut tally = take(tally);
    tally.lag = lag;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn age_is_measured_from_the_end_of_the_bucket() {
        let body = br#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},
            "items":[{"metricName":"tenant-0001","metricLabels":{"Queue":"q1"},"timestamp":"1970-01-01T00:01:00Z","window":30,"value":"1500m"}]}"#;
        let now = UNIX_EPOCH + Duration::from_millis(95_500);
        assert_eq!(value_age(body, now), Some(5_500));
        assert_eq!(value_age(br#"{"items":[]}"#, now), None);
        assert_eq!(value_age(b"not json", now), None);
    }

    #[test]
    fn a_tally_counts_values_errors_and_values_from_the_future() {
        let mut tally = Tally::new().unwrap();
        tally.record(
            Outcome::Value { age_ms: 31_000 },
            Duration::from_micros(700),
        );
        tally.record(Outcome::Value { age_ms: -5 }, Duration::from_micros(300));
        tally.record(Outcome::Status(503), Duration::from_millis(15));
        tally.record(Outcome::Failed, Duration::from_millis(1));
        assert_eq!((tally.answered, tally.values, tally.ahead), (4, 2, 1));
        assert_eq!(tally.error_count(), 2);
        assert_eq!(tally.errors.get("503"), Some(&1));
        assert!((tally.age_s(1.0) - 31.0).abs() < 0.1);
        let mut total = Tally::new().unwrap();
        total.merge(&tally).unwrap();
        total.merge(&tally).unwrap();
        assert_eq!((total.answered, total.error_count()), (8, 4));
    }
}
