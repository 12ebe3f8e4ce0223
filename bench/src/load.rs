//! The load generator: HTTPS keep-alive requests through one reqwest client, at a fixed rate
//! (latency) or closed loop (peak throughput). A [`Target`] says what to send, so the same
//! phases run for anonymous and aggregator-style requests alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use reqwest::header::HeaderMap;

/// What to request: the URLs, taken in turn, each with the same headers.
#[derive(Debug, Clone)]
pub struct Target {
    /// Request URLs.
    pub urls: Arc<Vec<String>>,
    /// Headers on every request (e.g. the aggregator's `X-Remote-*`).
    pub headers: HeaderMap,
}

impl Target {
    /// `urls` without extra headers.
    pub fn new(urls: Vec<String>) -> Target {
        Target {
            urls: Arc::new(urls),
            headers: HeaderMap::new(),
        }
    }

    /// The same URLs with `headers` on every request.
    pub fn with_headers(mut self, headers: HeaderMap) -> Target {
        self.headers = headers;
        self
    }

    async fn get(&self, client: &reqwest::Client, index: usize) -> bool {
        let url = &self.urls[index % self.urls.len()];
        match client.get(url).headers(self.headers.clone()).send().await {
            Ok(response) if response.status() == 200 => response.bytes().await.is_ok(),
            _ => false,
        }
    }
}

/// Which HTTP version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/2 by ALPN, all requests multiplexed on one connection (as kube-apiserver's
    /// aggregator talks to an aggregated API server).
    H2,
    /// HTTP/1.1 keep-alive, one connection per concurrent request (as `oha` or `wrk`).
    Http1,
}

impl Protocol {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::H2 => "HTTP/2",
            Protocol::Http1 => "HTTP/1.1",
        }
    }
}

/// An HTTPS client for the adapter. The adapter serves a self-signed certificate: this
/// measures the server, not PKI. With `identity`, it presents that client certificate.
pub fn client(
    identity: Option<reqwest::Identity>,
    connections_hint: usize,
) -> anyhow::Result<reqwest::Client> {
    client_speaking(identity, connections_hint, Protocol::H2)
}

/// [`client`], speaking `protocol`.
pub fn client_speaking(
    identity: Option<reqwest::Identity>,
    connections_hint: usize,
    protocol: Protocol,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(connections_hint);
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    if protocol == Protocol::Http1 {
        builder = builder.http1_only();
    }
    Ok(builder.build()?)
}

/// Send exactly `count` requests, `concurrency` at a time, cycling through the target's URLs;
/// any failure is an error. Returns how long they took.
pub async fn fixed_count(
    client: &reqwest::Client,
    target: &Target,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, target, next) = (client.clone(), target.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                if !target.get(&client, index as usize).await {
                    bail!("request {index} failed");
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// Request every URL of `target` once, `parallel` at a time; any non-200 is an error.
pub async fn warm(
    client: &reqwest::Client,
    target: &Target,
    parallel: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let (client, next, target) = (client.clone(), next.clone(), target.clone());
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                if index >= target.urls.len() {
                    return Ok::<_, anyhow::Error>(());
                }
                let url = &target.urls[index];
                let response = client
                    .get(url)
                    .headers(target.headers.clone())
                    .send()
                    .await?;
                if response.status() != 200 {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    bail!("warm-up request failed: {status} {body}");
                }
                response.bytes().await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// What a fixed-rate phase measured.
#[derive(Debug)]
pub struct Latency {
    /// Requests sent.
    pub sent: u64,
    /// Requests that failed or were not 200.
    pub errors: u64,
    /// Microseconds from each request's send to its full response.
    pub histogram: Histogram<u64>,
    /// Microseconds the generator fell behind its schedule (its own noise).
    pub lag: Histogram<u64>,
}

impl Latency {
    fn new() -> anyhow::Result<Latency> {
        Ok(Latency {
            sent: 0,
            errors: 0,
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            lag: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    /// Add another phase's samples (rounds of the same path).
    pub fn merge(&mut self, other: &Latency) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.errors += other.errors;
        self.histogram.add(&other.histogram)?;
        self.lag.add(&other.lag)?;
        Ok(())
    }

    /// Milliseconds at quantile `q`.
    pub fn ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// An empty result to merge rounds into.
    pub fn empty() -> anyhow::Result<Latency> {
        Latency::new()
    }
}

/// Send `rate` requests per second for `duration`, each in its own task. Tokio's timer ticks
/// every millisecond, so each tick sends the requests due by then (rate/1000 on average: 2 each
/// tick at 2,000/s, 1 every fifth tick at 200/s); latency is measured from each request's send,
/// and the generator's own lag behind the schedule is reported separately.
pub async fn fixed_rate(
    client: &reqwest::Client,
    target: &Target,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Latency> {
    let mut result = Latency::new()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, ()>>();
    let mut ticks: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let scheduled = ticker.tick().await;
        result
            .lag
            .record((scheduled.elapsed().as_micros() as u64).max(1))?;
        ticks += 1;
        let due = rate.saturating_mul(ticks) / 1000;
        while result.sent < due {
            let (client, target, tx) = (client.clone(), target.clone(), tx.clone());
            let index = result.sent as usize;
            result.sent += 1;
            tokio::spawn(async move {
                let start = Instant::now();
                let ok = target.get(&client, index).await;
                let micros = start.elapsed().as_micros() as u64;
                let _ = tx.send(if ok { Ok(micros) } else { Err(()) });
            });
        }
    }
    drop(tx);
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok(micros) => result.histogram.record(micros.max(1))?,
            Err(()) => result.errors += 1,
        }
    }
    Ok(result)
}

/// What a closed-loop phase measured.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Successful requests per second.
    pub per_second: f64,
    /// Failed requests.
    pub errors: u64,
}

/// `concurrency` workers, each sending its next request as soon as the last one is answered,
/// for `duration`. Worker `w` cycles through 16 of the target's URLs starting at `16 w`.
pub async fn closed_loop(
    client: &reqwest::Client,
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Throughput {
    let done = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (client, target, done, bad) =
            (client.clone(), target.clone(), done.clone(), bad.clone());
        workers.spawn(async move {
            let mut i = 0;
            while Instant::now() < end {
                if target.get(&client, worker * 16 + i % 16).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Throughput {
        per_second: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors: bad.load(Ordering::Relaxed),
    }
}
