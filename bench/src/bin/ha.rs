//! High-availability benchmark (issue 17): 1, 2 and 3 release replicas of the adapter with leader
//! election on a Lease of the fake Kubernetes API (over HTTPS, one ServiceAccount token and
//! kubeconfig per replica), against the CloudWatch emulator, read as kube-apiserver's aggregator
//! reads them (front-proxy client certificate, `X-Remote-*` headers, SubjectAccessReview), each
//! read sent to a random ready replica as the aggregator does with endpoint routing. Production
//! timing (lease 15 s, renew deadline 10 s, retry 2 s) unless told otherwise.
//!
//! Per replica count, over the same reads and the same window of refresh cycles, it measures:
//!
//! - GetMetricData calls and metrics requested (the emulator's totals; who called, from each
//!   replica's `cloudwatch_calls_total` and `fallback_refreshes_total`), with the leader sent
//!   SIGTERM and later SIGKILL inside the window, each replaced by a new pod a few seconds later;
//! - the new leader's first refresh after each signal, sent 1 s before a refresh falls due;
//! - every read: failed or not, right or wrong, and the age of the value it served;
//! - follower lag in steady state: the followers' `peer_stream_lag_seconds`, and when each
//!   replica first serves a new datapoint, followers against the leader;
//! - a leader cut off from the Lease API (every request with its token hangs): when it stops
//!   leading and calling, when another takes over, how long two replicas refresh at once, and
//!   the fallback refreshes counted apart.
//!
//! It prints a table with the goals, writes it under `target/bench-ha/` with the replicas' logs,
//! and stops by itself. Everything listens on 127.0.0.1.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use cloudwatch_emulator::{Datum, Emulator};
use cwma_bench::aggregator::Caller;
use cwma_bench::ha::{self, HaCluster, Replica, Timing};
use cwma_bench::load;
use cwma_bench::scrape::Buckets;
use fake_kube::Partition;
use reqwest::header::HeaderMap;
use tokio::task::JoinSet;

/// The benchmark's one metric: the depth of queue `q<n>`, refreshed on a wall-clock grid.
const METRIC: &str = "ha-depth";
const IS_LEADER: &str = "cloudwatch_adapter_leader_election_is_leader";
const CALLS: &str = "cloudwatch_adapter_cloudwatch_calls_total";
const FALLBACK: &str = "cloudwatch_adapter_fallback_refreshes_total";
const STREAM_UP: &str = "cloudwatch_adapter_peer_stream_up";
const LAG: &str = "cloudwatch_adapter_peer_stream_lag_seconds";
/// How long a read may take before it counts as failed (the adapter's own review timeout is
/// 10 s, so its answer comes first).
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How often every replica's `/metrics` is scraped.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How often the watcher asks every replica for the watched series around a refresh.
const WATCH_EVERY: Duration = Duration::from_millis(20);
/// After a failover, how long reads count as "through" it.
const FAILOVER_SPAN: f64 = 30.0;

/// High-availability benchmark: replicas with leader election against the emulator.
#[derive(Debug, Parser)]
struct Args {
    /// The adapter binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/cloudwatch-metrics-adapter")]
    adapter: PathBuf,
    /// Replica counts to run, one after the other (1 is the baseline the others are compared
    /// with).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    replicas: Vec<usize>,
    /// Series (queues) the simulated HPAs read.
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// The definition's refreshInterval, seconds (a multiple of the period).
    #[arg(long, default_value_t = 15)]
    refresh_interval: u64,
    /// The definition's period, seconds (high-resolution data: 1, 5, 10, 20 or 30).
    #[arg(long, default_value_t = 5)]
    period: u64,
    /// Each series is read once per this many seconds (the HPA sync period).
    #[arg(long, default_value_t = 15)]
    hpa_period: u64,
    /// Refresh cycles in the measured window: SIGTERM goes to the leader before cycle 2, SIGKILL
    /// before cycle 5, and cycles 0-1 and 7 onwards are steady state.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u64).range(8..=100))]
    cycles: u64,
    /// `--leader-elect-lease-duration`, whole seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// `--leader-elect-renew-deadline`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
    /// Seconds after a signal before the replacement pod starts.
    #[arg(long, default_value_t = 5)]
    restart_after: u64,
    /// Seconds the leader stays cut off from the Lease API (0 skips the partition).
    #[arg(long, default_value_t = 40)]
    partition: u64,
    /// Seconds observed after the partition heals.
    #[arg(long, default_value_t = 15)]
    after_heal: u64,
    /// Where results and logs go.
    #[arg(long, default_value = "target/bench-ha")]
    out: PathBuf,
}

impl Args {
    fn timing(&self) -> Timing {
        Timing {
            lease_duration: Duration::from_secs(self.lease_duration),
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        }
    }

    fn refresh(&self) -> f64 {
        self.refresh_interval as f64
    }

    /// How long before a due refresh the leader is signalled.
    fn lead(&self) -> f64 {
        (self.refresh() / 5.0).min(1.0)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            [1, 5, 10, 20, 30].contains(&self.period),
            "--period must be 1, 5, 10, 20 or 30 (high-resolution data)"
        );
        anyhow::ensure!(
            self.refresh_interval >= self.period
                && self.refresh_interval.is_multiple_of(self.period),
            "--refresh-interval must be a multiple of --period"
        );
        anyhow::ensure!(
            (1..=9999).contains(&self.series),
            "--series must be 1 to 9999"
        );
        anyhow::ensure!(self.hpa_period >= 1, "--hpa-period must be at least 1");
        anyhow::ensure!(!self.replicas.is_empty(), "--replicas is empty");
        anyhow::ensure!(
            self.replicas.iter().all(|n| (1..=5).contains(n)),
            "--replicas takes counts from 1 to 5"
        );
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn epoch(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Benchmark time: seconds since the run started, and the wall clock it corresponds to.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    wall: f64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall: epoch(SystemTime::now()),
        }
    }

    fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn wall_of(&self, t: f64) -> f64 {
        self.wall + t
    }

    /// The first refresh-grid point (a wall-clock multiple of `interval`) after `after`.
    fn next_grid(&self, after: f64, interval: f64) -> f64 {
        let wall = self.wall_of(after);
        (wall / interval).floor() * interval + interval - self.wall
    }

    async fn until(&self, t: f64) {
        tokio::time::sleep_until((self.start + Duration::from_secs_f64(t.max(0.0))).into()).await;
    }
}

/// The definitions: one metric, high-resolution, on a grid of `refresh` seconds.
fn definitions(period: u64, refresh: u64) -> String {
    format!(
        r#"
metrics:
  - name: {METRIC}
    refreshInterval: {refresh}s
    window: {window}s
    queries:
      - id: v
        metricStat:
          metric:
            namespace: BenchHA
            metricName: Depth
            dimensions: [{{name: Queue, value: "${{Queue}}"}}]
          period: {period}
          stat: Maximum
"#,
        window = period * 6
    )
}

/// The value of queue `q<series>` in the bucket starting at `bucket` (epoch seconds). It changes
/// with every bucket, so a read tells a value of another series or another bucket from the
/// right one.
fn expected_value(series: usize, bucket: u64, period: u64) -> f64 {
    (series as u64 * 1000 + (bucket / period) % 1000) as f64
}

/// Feeds the emulator as CloudWatch fills: each bucket's datapoint of every series as the bucket
/// starts (the adapter reads only closed buckets).
async fn feed(emulator: Arc<Emulator>, series: usize, period: u64) {
    let mut written: Option<u64> = None;
    loop {
        let now = epoch(SystemTime::now()) as u64;
        let current = now / period * period;
        let mut bucket = written.map_or(current.saturating_sub(period * 8), |w| w + period);
        while bucket <= current {
            for queue in 0..series {
                emulator.put_high_resolution(
                    Datum::new("BenchHA", "Depth", expected_value(queue, bucket, period))
                        .dimension("Queue", format!("q{queue}"))
                        .at(UNIX_EPOCH + Duration::from_secs(bucket))
                        .unit("Count"),
                );
            }
            bucket += period;
        }
        written = Some(current);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Kubernetes quantity as the adapter writes it (`3`, `1500m`, `400u`, `12n`).
fn quantity(text: &str) -> Option<f64> {
    let (digits, divisor) = match text.as_bytes().last()? {
        b'm' => (&text[..text.len() - 1], 1e3),
        b'u' => (&text[..text.len() - 1], 1e6),
        b'n' => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    Some(digits.parse::<f64>().ok()? / divisor)
}

/// What one read got.
#[derive(Debug, Clone)]
enum Outcome {
    /// A value: its datapoint time (epoch seconds), whether it is the right value for that
    /// series and time, and its age when it arrived (now minus the end of its bucket).
    Served {
        timestamp: u64,
        correct: bool,
        age: f64,
    },
    /// Not a value: the HTTP status (0: no answer) and why.
    Failed { status: u16, message: String },
}

/// One read, as an HPA makes it.
#[derive(Debug, Clone)]
struct Read {
    sent: f64,
    done: f64,
    replica: usize,
    outcome: Outcome,
}

/// One scrape of one replica.
#[derive(Debug, Clone)]
struct Sample {
    tick: u64,
    t: f64,
    replica: usize,
    leader: bool,
    /// GetMetricData calls it made (every outcome).
    calls: f64,
    /// Of which fallback refreshes (counted when dispatched).
    fallback: f64,
    stream_up: bool,
    lag: Buckets,
}

impl Sample {
    /// Calls made as the leader.
    fn leading(&self) -> f64 {
        self.calls - self.fallback
    }
}

/// When a replica first served the datapoint of a refresh for a watched series.
#[derive(Debug, Clone)]
struct Seen {
    grid: f64,
    replica: usize,
    series: usize,
    t: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Term,
    Kill,
    Cut,
    Heal,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    t: f64,
    kind: EventKind,
    replica: usize,
}

/// What the tasks of one run share.
struct Shared {
    clock: Clock,
    client: reqwest::Client,
    scraper: reqwest::Client,
    headers: HeaderMap,
    series: usize,
    period: u64,
    /// Replicas reads go to (ready, not stopping): (id, base URL).
    pool: Mutex<Vec<(usize, String)>>,
    /// Replicas scraped: (id, admin URL).
    monitored: Mutex<Vec<(usize, String)>>,
    reads: Mutex<Vec<Read>>,
    samples: Mutex<Vec<Sample>>,
    /// The emulator's totals: (t, calls, metrics requested).
    aws: Mutex<Vec<(f64, u64, u64)>>,
    seen: Mutex<Vec<Seen>>,
    /// The replicas the watcher asked around each grid point: (grid, ids).
    rounds: Mutex<Vec<(f64, Vec<usize>)>>,
    /// The 1-minute load average: (t, load).
    load: Mutex<Vec<(f64, f64)>>,
}

impl Shared {
    fn add(&self, replica: &Replica) {
        lock(&self.pool).push((replica.id, replica.base.clone()));
        lock(&self.monitored).push((replica.id, replica.admin.clone()));
    }

    fn out_of_pool(&self, id: usize) {
        lock(&self.pool).retain(|(r, _)| *r != id);
    }

    fn unmonitor(&self, id: usize) {
        lock(&self.monitored).retain(|(r, _)| *r != id);
    }

    fn url(&self, base: &str, series: usize) -> String {
        format!(
            "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{METRIC}?labelSelector=Queue%3Dq{series}"
        )
    }

    /// Read `series` from the replica at `base`.
    async fn read(&self, base: &str, series: usize) -> Outcome {
        let response = match self
            .client
            .get(self.url(base, series))
            .headers(self.headers.clone())
            .timeout(READ_TIMEOUT)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Failed {
                    status: 0,
                    message: if error.is_timeout() {
                        "timeout".to_string()
                    } else if error.is_connect() {
                        "connection refused".to_string()
                    } else {
                        "request failed".to_string()
                    },
                };
            }
        };
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status != 200 {
            return Outcome::Failed {
                status,
                message: body["message"].as_str().unwrap_or("").to_string(),
            };
        }
        let item = &body["items"][0];
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .map(|t| epoch(t) as u64);
        let value = item["value"].as_str().and_then(quantity);
        let (Some(timestamp), Some(value)) = (timestamp, value) else {
            return Outcome::Failed {
                status,
                message: "no readable item".to_string(),
            };
        };
        let age = self.clock.wall_of(self.clock.now()) - (timestamp + self.period) as f64;
        Outcome::Served {
            timestamp,
            correct: value == expected_value(series, timestamp, self.period),
            age,
        }
    }

    fn pick(&self) -> Option<(usize, String)> {
        let pool = lock(&self.pool);
        if pool.is_empty() {
            return None;
        }
        Some(pool[fastrand::usize(..pool.len())].clone())
    }
}

/// The HPAs: every series read once per `hpa_period`, spread evenly, each read to a random
/// replica of the pool.
async fn hpa_reads(shared: Arc<Shared>, hpa_period: f64) {
    let start = shared.clock.now();
    let every = hpa_period / shared.series as f64;
    let mut k: u64 = 0;
    loop {
        shared.clock.until(start + k as f64 * every).await;
        let series = (k % shared.series as u64) as usize;
        k += 1;
        let Some((replica, base)) = shared.pick() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let sent = shared.clock.now();
            let outcome = shared.read(&base, series).await;
            let done = shared.clock.now();
            lock(&shared.reads).push(Read {
                sent,
                done,
                replica,
                outcome,
            });
        });
    }
}

/// Scrapes every monitored replica each [`SAMPLE_EVERY`], with the emulator's totals and the
/// load average. A replica that stops answering for a second is no longer scraped (its port may
/// be given to a new one).
async fn sample(shared: Arc<Shared>, emulator: Arc<Emulator>) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failures: HashMap<usize, u32> = HashMap::new();
    for tick in 0u64.. {
        ticker.tick().await;
        let targets = lock(&shared.monitored).clone();
        let mut scrapes = JoinSet::new();
        for (id, admin) in targets {
            let shared = shared.clone();
            scrapes.spawn(async move {
                let scrape = ha::scrape(&shared.scraper, &admin).await;
                (id, shared.clock.now(), scrape)
            });
        }
        let stats = emulator.stats().get_metric_data;
        lock(&shared.aws).push((shared.clock.now(), stats.calls, stats.metrics_requested));
        while let Some(Ok((id, t, scrape))) = scrapes.join_next().await {
            match scrape {
                Ok(scrape) => {
                    failures.remove(&id);
                    lock(&shared.samples).push(Sample {
                        tick,
                        t,
                        replica: id,
                        leader: scrape.value(IS_LEADER) == 1.0,
                        calls: scrape.sum(CALLS),
                        fallback: scrape.sum(FALLBACK),
                        stream_up: scrape.value(STREAM_UP) == 1.0,
                        lag: scrape.histogram(LAG),
                    });
                }
                Err(_) => {
                    let count = failures.entry(id).or_default();
                    *count += 1;
                    if *count >= 10 {
                        shared.unmonitor(id);
                    }
                }
            }
        }
        if tick % 10 == 0
            && let Ok(text) = std::fs::read_to_string("/proc/loadavg")
            && let Some(load) = text.split_whitespace().next().and_then(|v| v.parse().ok())
        {
            lock(&shared.load).push((shared.clock.now(), load));
        }
    }
}

/// Around every refresh-grid point, asks every replica for the `watched` series each
/// [`WATCH_EVERY`] and records when each first serves the datapoint that refresh reads.
async fn watch(shared: Arc<Shared>, refresh: f64, watched: Vec<usize>) {
    let window = (refresh / 2.0).min(3.0);
    loop {
        let grid = shared.clock.next_grid(shared.clock.now() + 0.5, refresh);
        shared.clock.until(grid - 0.3).await;
        // The newest closed bucket at the grid point: what the refresh there reads.
        let expected = shared.clock.wall_of(grid).round() as u64 - shared.period;
        let targets = lock(&shared.pool).clone();
        lock(&shared.rounds).push((grid, targets.iter().map(|(id, _)| *id).collect()));
        let mut pending: HashSet<(usize, usize)> = targets
            .iter()
            .flat_map(|(id, _)| watched.iter().map(move |s| (*id, *s)))
            .collect();
        let bases: HashMap<usize, String> = targets.into_iter().collect();
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !pending.is_empty() && shared.clock.now() < grid + window {
            ticker.tick().await;
            let mut polls = JoinSet::new();
            for &(id, series) in &pending {
                let (shared, base) = (shared.clone(), bases[&id].clone());
                polls.spawn(async move {
                    let outcome = shared.read(&base, series).await;
                    (id, series, shared.clock.now(), outcome)
                });
            }
            while let Some(Ok((id, series, t, outcome))) = polls.join_next().await {
                if let Outcome::Served { timestamp, .. } = outcome
                    && timestamp >= expected
                    && pending.remove(&(id, series))
                {
                    lock(&shared.seen).push(Seen {
                        grid,
                        replica: id,
                        series,
                        t,
                    });
                }
            }
        }
    }
}

/// The replica that leads now (a fresh scrape of the pool), waiting up to 20 s for exactly one.
async fn current_leader(shared: &Shared) -> anyhow::Result<usize> {
    let started = Instant::now();
    loop {
        let targets = lock(&shared.monitored).clone();
        let pool: HashSet<usize> = lock(&shared.pool).iter().map(|(id, _)| *id).collect();
        let mut leaders = Vec::new();
        for (id, admin) in targets {
            if pool.contains(&id)
                && let Ok(scrape) = ha::scrape(&shared.scraper, &admin).await
                && scrape.value(IS_LEADER) == 1.0
            {
                leaders.push(id);
            }
        }
        if let [leader] = leaders.as_slice() {
            return Ok(*leader);
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{} leaders after 20 s", leaders.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything one run recorded.
struct Recorded {
    replicas: usize,
    names: BTreeMap<usize, String>,
    w0: f64,
    end: f64,
    grids: Vec<f64>,
    aws_window: (u64, u64),
    events: Vec<Event>,
    reads: Vec<Read>,
    samples: Vec<Sample>,
    aws: Vec<(f64, u64, u64)>,
    seen: Vec<Seen>,
    rounds: Vec<(f64, Vec<usize>)>,
    load: Vec<(f64, f64)>,
    partition_end: f64,
}

/// One run with `n` replicas.
async fn run(
    args: &Args,
    emulator: &Arc<Emulator>,
    n: usize,
    dir: &Path,
) -> anyhow::Result<Recorded> {
    let cluster = Arc::new(
        HaCluster::start(
            &args.adapter,
            dir,
            &definitions(args.period, args.refresh_interval),
            &emulator.endpoint_url(),
            args.timing(),
            &[],
        )
        .await?,
    );
    let client = load::client(Some(cluster.front_proxy.client.identity()?), 64)?;
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        client,
        scraper: reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?,
        headers: Caller::hpa_controller().headers()?,
        series: args.series,
        period: args.period,
        pool: Mutex::new(Vec::new()),
        monitored: Mutex::new(Vec::new()),
        reads: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        aws: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
        rounds: Mutex::new(Vec::new()),
        load: Mutex::new(Vec::new()),
    });
    let clock = shared.clock;
    let replicas: Arc<Mutex<Vec<Replica>>> = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..n {
        let replica = cluster.replica().await?;
        shared.add(&replica);
        lock(&replicas).push(replica);
    }
    current_leader(&shared).await?;
    let mut tasks = JoinSet::new();
    tasks.spawn(sample(shared.clone(), emulator.clone()));
    tasks.spawn(hpa_reads(shared.clone(), args.hpa_period as f64));
    let watched = vec![0, args.series / 2, args.series - 1];
    tasks.spawn(watch(shared.clone(), args.refresh(), watched));

    // Warm-up: every series read once (one HPA period), then the window starts half a cycle
    // after a grid point, so it holds exactly `cycles` refreshes of one replica.
    let refresh = args.refresh();
    let first = clock.next_grid(clock.now() + args.hpa_period as f64, refresh);
    let w0 = first + refresh / 2.0;
    let grids: Vec<f64> = (0..args.cycles)
        .map(|k| w0 + refresh / 2.0 + k as f64 * refresh)
        .collect();
    let end = w0 + args.cycles as f64 * refresh;
    println!(
        "  {n} replica(s) started; window {:.0} s from t={w0:.1} s",
        end - w0
    );
    clock.until(w0).await;
    let aws0 = emulator.stats().get_metric_data;
    let mut events = Vec::new();
    let mut restarts = JoinSet::new();
    if n >= 2 {
        for (cycle, kind) in [(2, EventKind::Term), (5, EventKind::Kill)] {
            clock.until(grids[cycle] - args.lead()).await;
            let victim = current_leader(&shared).await?;
            // Endpoints drop a terminating pod at once; reads already sent to it go on.
            shared.out_of_pool(victim);
            {
                let mut replicas = lock(&replicas);
                let replica = replicas
                    .iter_mut()
                    .find(|r| r.id == victim)
                    .context("the leader is not a replica")?;
                match kind {
                    EventKind::Kill => {
                        replica.kill()?;
                        shared.unmonitor(victim);
                    }
                    _ => replica.terminate()?,
                }
            }
            events.push(Event {
                t: clock.now(),
                kind,
                replica: victim,
            });
            println!(
                "  {} to the leader ha-{victim} at t={:.1} s",
                if kind == EventKind::Kill {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                },
                clock.now()
            );
            let (cluster, shared, replicas) = (cluster.clone(), shared.clone(), replicas.clone());
            let after = Duration::from_secs(args.restart_after);
            restarts.spawn(async move {
                tokio::time::sleep(after).await;
                let replica = cluster.replica().await?;
                shared.add(&replica);
                lock(&replicas).push(replica);
                anyhow::Ok(())
            });
        }
    }
    clock.until(end).await;
    let aws1 = emulator.stats().get_metric_data;
    while let Some(done) = restarts.join_next().await {
        done??;
    }
    let mut partition_end = end;
    if n >= 2 && args.partition > 0 {
        // Cut a third of a cycle before a refresh falls due: the leader still makes that one, and
        // must not make the next.
        let cut = clock.next_grid(clock.now() + refresh / 3.0 + 1.0, refresh) - refresh / 3.0;
        clock.until(cut).await;
        let leader = current_leader(&shared).await?;
        let token = lock(&replicas)
            .iter()
            .find(|r| r.id == leader)
            .map(|r| r.token.clone())
            .context("the leader is not a replica")?;
        cluster.kube.faults().partition(&token, Partition::Hang);
        events.push(Event {
            t: clock.now(),
            kind: EventKind::Cut,
            replica: leader,
        });
        println!(
            "  leader ha-{leader} cut off from the Lease API at t={:.1} s",
            clock.now()
        );
        clock.until(cut + args.partition as f64).await;
        cluster.kube.faults().heal(&token);
        events.push(Event {
            t: clock.now(),
            kind: EventKind::Heal,
            replica: leader,
        });
        partition_end = clock.now() + args.after_heal as f64;
        clock.until(partition_end).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    // Reads still in flight finish (or time out) before the replicas go.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names = lock(&replicas)
        .iter()
        .map(|r| (r.id, r.name.clone()))
        .collect();
    for replica in lock(&replicas).iter_mut() {
        let _ = replica.kill();
    }
    let recorded = Recorded {
        replicas: n,
        names,
        w0,
        end,
        grids,
        aws_window: (
            aws1.calls - aws0.calls,
            aws1.metrics_requested - aws0.metrics_requested,
        ),
        events,
        reads: std::mem::take(&mut *lock(&shared.reads)),
        samples: std::mem::take(&mut *lock(&shared.samples)),
        aws: std::mem::take(&mut *lock(&shared.aws)),
        seen: std::mem::take(&mut *lock(&shared.seen)),
        rounds: std::mem::take(&mut *lock(&shared.rounds)),
        load: std::mem::take(&mut *lock(&shared.load)),
        partition_end,
    };
    Ok(recorded)
}

/// The raw records of a run as CSV files in `dir`, to look into what the tables summarise.
fn dump(recorded: &Recorded, dir: &Path) -> anyhow::Result<()> {
    let mut reads = String::from("sent,done,replica,status,timestamp,correct,age,message\n");
    for read in &recorded.reads {
        let _ = match &read.outcome {
            Outcome::Served {
                timestamp,
                correct,
                age,
            } => writeln!(
                reads,
                "{:.3},{:.3},{},200,{timestamp},{correct},{age:.3},",
                read.sent, read.done, read.replica
            ),
            Outcome::Failed { status, message } => writeln!(
                reads,
                "{:.3},{:.3},{},{status},,,,\"{}\"",
                read.sent,
                read.done,
                read.replica,
                message.replace('"', "'")
            ),
        };
    }
    std::fs::write(dir.join("reads.csv"), reads)?;
    let mut samples = String::from("tick,t,replica,leader,calls,fallback,stream_up,lag_frames\n");
    for s in &recorded.samples {
        let _ = writeln!(
            samples,
            "{},{:.3},{},{},{},{},{},{}",
            s.tick,
            s.t,
            s.replica,
            s.leader,
            s.calls,
            s.fallback,
            s.stream_up,
            s.lag.count()
        );
    }
    std::fs::write(dir.join("samples.csv"), samples)?;
    let mut seen = String::from("grid,replica,series,t\n");
    for s in &recorded.seen {
        let _ = writeln!(seen, "{:.3},{},{},{:.3}", s.grid, s.replica, s.series, s.t);
    }
    std::fs::write(dir.join("seen.csv"), seen)?;
    let mut aws = String::from("t,calls,metrics_requested\n");
    for (t, calls, metrics) in &recorded.aws {
        let _ = writeln!(aws, "{t:.3},{calls},{metrics}");
    }
    std::fs::write(dir.join("aws.csv"), aws)?;
    let mut events = format!(
        "window {:.3} {:.3}\ngrids {}\n",
        recorded.w0,
        recorded.end,
        recorded
            .grids
            .iter()
            .map(|g| format!("{g:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for e in &recorded.events {
        let _ = writeln!(events, "{:.3} {:?} ha-{}", e.t, e.kind, e.replica);
    }
    std::fs::write(dir.join("events.txt"), events)?;
    Ok(())
}

// ---- analysis -------------------------------------------------------------------------------

/// The value at quantile `q` of `values` (nearest rank), `None` when empty.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Replica `id`'s last sample at or before `t`.
fn at(samples: &[Sample], id: usize, t: f64) -> Option<&Sample> {
    samples
        .iter()
        .filter(|s| s.replica == id && s.t <= t)
        .max_by(|a, b| a.t.total_cmp(&b.t))
}

/// Total time, from `from` to `to`, during which the scrapes of one tick saw more than one
/// replica leading.
fn both_leading(samples: &[Sample], from: f64, to: f64) -> f64 {
    let mut ticks: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.t >= from && s.t <= to) {
        let entry = ticks.entry(s.tick).or_insert((s.t, 0));
        entry.0 = entry.0.min(s.t);
        if s.leader {
            entry.1 += 1;
        }
    }
    let ticks: Vec<(f64, usize)> = ticks.into_values().collect();
    ticks
        .windows(2)
        .filter(|pair| pair[0].1 > 1)
        .map(|pair| pair[1].0 - pair[0].0)
        .sum()
}

/// The first sample after `from` (and at most at `to`) at which a replica other than `except`
/// satisfies `condition` given its sample at `from`: (time after `from`, replica).
fn first_after(
    samples: &[Sample],
    from: f64,
    to: f64,
    except: usize,
    condition: impl Fn(&Sample, Option<&Sample>) -> bool,
) -> Option<(f64, usize)> {
    let mut candidates: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.replica != except && s.t > from && s.t <= to)
        .collect();
    candidates.sort_by(|a, b| a.t.total_cmp(&b.t));
    candidates
        .into_iter()
        .find(|s| condition(s, at(samples, s.replica, from)))
        .map(|s| (s.t - from, s.replica))
}

/// Fallback refreshes replica `id` made between `from` and `to`.
fn fallback_of(samples: &[Sample], id: usize, from: f64, to: f64) -> f64 {
    let before = at(samples, id, from).map_or(0.0, |s| s.fallback);
    at(samples, id, to).map_or(before, |s| s.fallback) - before
}

/// Fallback refreshes every replica made between `from` and `to`.
fn fallbacks(samples: &[Sample], from: f64, to: f64) -> f64 {
    let ids: HashSet<usize> = samples.iter().map(|s| s.replica).collect();
    ids.into_iter()
        .map(|id| fallback_of(samples, id, from, to))
        .sum()
}

/// The replica leading at `t` (in the tick nearest before it), if exactly one.
fn leader_at(samples: &[Sample], t: f64) -> Option<usize> {
    let tick = samples
        .iter()
        .filter(|s| s.t <= t)
        .max_by(|a, b| a.t.total_cmp(&b.t))?
        .tick;
    let leaders: Vec<usize> = samples
        .iter()
        .filter(|s| s.tick == tick && s.leader)
        .map(|s| s.replica)
        .collect();
    match leaders.as_slice() {
        [leader] => Some(*leader),
        _ => None,
    }
}

/// Reads in `[from, to)` (by send time), split by what they got.
#[derive(Debug, Default, Clone)]
struct ReadStats {
    total: usize,
    failed: usize,
    wrong: usize,
    max_age: f64,
    latencies: Vec<f64>,
    /// Failure messages and how often.
    reasons: BTreeMap<String, usize>,
}

impl ReadStats {
    fn of<'a>(reads: impl Iterator<Item = &'a Read>) -> ReadStats {
        let mut stats = ReadStats::default();
        for read in reads {
            stats.total += 1;
            stats.latencies.push(read.done - read.sent);
            match &read.outcome {
                Outcome::Served { correct, age, .. } => {
                    if *correct {
                        stats.max_age = stats.max_age.max(*age);
                    } else {
                        stats.wrong += 1;
                    }
                }
                Outcome::Failed { status, message } => {
                    stats.failed += 1;
                    let short: String = message.chars().take(100).collect();
                    *stats
                        .reasons
                        .entry(format!("{status} {short}"))
                        .or_default() += 1;
                }
            }
        }
        stats
    }

    fn bad(&self) -> usize {
        self.failed + self.wrong
    }

    fn describe(&self) -> String {
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count}x `{reason}`"))
            .collect();
        let slow = self.latencies.iter().filter(|l| **l > 1.0).count();
        let mut text = format!(
            "{} failed + {} wrong of {} ({slow} took over 1 s)",
            self.failed, self.wrong, self.total
        );
        if !reasons.is_empty() {
            let _ = write!(text, " ({})", reasons.join("; "));
        }
        text
    }
}

/// What a failover measured.
#[derive(Debug, Clone)]
struct Failover {
    kind: EventKind,
    t: f64,
    victim: usize,
    /// Seconds until another replica led.
    lease: Option<f64>,
    /// Seconds until another replica made a call as the leader.
    refresh: Option<f64>,
    fallback: f64,
    /// Reads to the other replicas within [`FAILOVER_SPAN`].
    survivors: ReadStats,
    /// Reads to the victim answered after the signal.
    victim_reads: ReadStats,
}

/// What the cut-off leader and the others did.
#[derive(Debug, Clone)]
struct PartitionResult {
    cut: f64,
    heal: f64,
    leader: usize,
    /// Seconds after the cut until it reported not leading.
    stopped: Option<f64>,
    /// Seconds after the cut of its last call as the leader (None: none after the cut).
    last_call: Option<f64>,
    /// Calls it made as the leader after it reported not leading.
    calls_after_stop: f64,
    /// Seconds until another replica led.
    successor: Option<(f64, usize)>,
    /// Seconds until another replica made a call as the leader.
    successor_call: Option<f64>,
    /// Time both were seen leading.
    both_leading: f64,
    /// Time both made calls as leaders: from the successor's first to the cut-off one's last.
    both_calling: f64,
    /// Fallback refreshes during the partition and after it: by replica.
    fallback: Vec<(usize, f64)>,
    /// Calls to AWS from the cut to the end, and what one leader alone would have made.
    calls: u64,
    /// Reads to the cut-off replica and to the others, from the cut to the end.
    to_cut: ReadStats,
    to_others: ReadStats,
    /// After healing: whether it follows again, and its calls in the last half of the wait.
    follows_again: bool,
    calls_at_end: f64,
}

/// The analysis of one run.
#[derive(Debug, Clone)]
struct Run {
    replicas: usize,
    calls: u64,
    metrics: u64,
    /// (replica, leading calls, fallback calls) in the window.
    by_replica: Vec<(String, f64, f64)>,
    failovers: Vec<Failover>,
    window_reads: ReadStats,
    /// Reads to the replicas started with the run, except a signalled victim, in the window.
    survivor_reads: ReadStats,
    /// Reads to the pods that replaced the victims.
    replacement_reads: ReadStats,
    warmup_reads: ReadStats,
    lag_histogram: Buckets,
    lag_seen: Vec<f64>,
    lag_missing: usize,
    /// Followers without a stream at a steady-state refresh (not in `lag_seen`).
    lag_unstreamed: Vec<String>,
    partition: Option<PartitionResult>,
    load: (f64, f64),
    window: f64,
}

fn analyse(args: &Args, recorded: &Recorded) -> Run {
    let samples = &recorded.samples;
    let reads = &recorded.reads;
    let (w0, end) = (recorded.w0, recorded.end);
    let signals: Vec<&Event> = recorded
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Term | EventKind::Kill))
        .collect();
    let victim_after = |read: &Read| {
        signals
            .iter()
            .any(|e| e.replica == read.replica && read.done >= e.t)
    };
    let name = |id: usize| {
        recorded
            .names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("ha-{id}"))
    };

    // Who called in the window.
    let ids: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.replica).collect();
    let by_replica = ids
        .iter()
        .filter_map(|&id| {
            let before = at(samples, id, w0);
            // A replica killed in the window: its last scrape.
            let after = at(samples, id, end)?;
            let (leading0, fallback0) = before.map_or((0.0, 0.0), |s| (s.leading(), s.fallback));
            Some((
                name(id),
                after.leading() - leading0,
                after.fallback - fallback0,
            ))
        })
        .filter(|(_, leading, fallback)| *leading > 0.0 || *fallback > 0.0)
        .collect();

    let failovers =
        signals
            .iter()
            .map(|event| {
                let span = event.t + FAILOVER_SPAN;
                Failover {
                    kind: event.kind,
                    t: event.t,
                    victim: event.replica,
                    lease: first_after(samples, event.t, span, event.replica, |s, _| s.leader)
                        .map(|(dt, _)| dt),
                    refresh: first_after(samples, event.t, span, event.replica, |s, before| {
                        s.leading() > before.map_or(0.0, Sample::leading)
                    })
                    .map(|(dt, _)| dt),
                    fallback: fallbacks(samples, event.t, span),
                    survivors: ReadStats::of(reads.iter().filter(|r| {
                        r.sent >= event.t && r.sent < span && r.replica != event.replica
                    })),
                    victim_reads: ReadStats::of(
                        reads
                            .iter()
                            .filter(|r| r.replica == event.replica && r.done >= event.t),
                    ),
                }
            })
            .collect();

    let in_window = |r: &&Read| r.sent >= w0 && r.sent < end;
    let window_reads = ReadStats::of(reads.iter().filter(in_window));
    // The replicas started with the run, not signalled (or before their signal).
    let survivor_reads = ReadStats::of(
        reads
            .iter()
            .filter(in_window)
            .filter(|r| r.replica < recorded.replicas && !victim_after(r)),
    );
    // New pods started in the window to replace the victims.
    let replacement_reads = ReadStats::of(
        reads
            .iter()
            .filter(in_window)
            .filter(|r| r.replica >= recorded.replicas && !victim_after(r)),
    );
    let warmup_reads = ReadStats::of(reads.iter().filter(|r| r.sent < w0));

    // Lag in steady state: cycles 0-1 and from 7 on.
    let refresh = args.refresh();
    let steady: Vec<(f64, f64)> = {
        let grids = &recorded.grids;
        let mut periods = vec![(w0, grids[2] - args.lead())];
        if grids.len() > 7 {
            periods.push((grids[7] - refresh / 2.0, end));
        }
        periods
    };
    let mut lag_histogram = Buckets::default();
    for &(from, to) in &steady {
        for &id in &ids {
            let (Some(before), Some(after)) = (at(samples, id, from), at(samples, id, to)) else {
                continue;
            };
            // A follower throughout: it streamed from the leader the whole period.
            let followed = samples
                .iter()
                .filter(|s| s.replica == id && s.t >= from && s.t <= to)
                .all(|s| !s.leader);
            if followed && after.t > to - 1.0 {
                lag_histogram.add(&after.lag.since(&before.lag));
            }
        }
    }
    let mut lag_seen = Vec::new();
    let mut lag_missing = 0;
    let mut lag_unstreamed = Vec::new();
    let window = (refresh / 2.0).min(3.0);
    for &grid in &recorded.grids {
        if !steady.iter().any(|&(from, to)| grid > from && grid < to) {
            continue;
        }
        let Some(leader) = leader_at(samples, grid) else {
            continue;
        };
        let at_grid: Vec<&Seen> = recorded
            .seen
            .iter()
            .filter(|s| (s.grid - grid).abs() < 0.01)
            .collect();
        let series: HashSet<usize> = at_grid.iter().map(|s| s.series).collect();
        for series in series {
            let Some(leader_t) = at_grid
                .iter()
                .find(|s| s.series == series && s.replica == leader)
                .map(|s| s.t)
            else {
                continue;
            };
            let asked = recorded
                .rounds
                .iter()
                .find(|(g, _)| (g - grid).abs() < 0.01)
                .map(|(_, ids)| ids.clone())
                .unwrap_or_default();
            for follower in asked.into_iter().filter(|id| *id != leader) {
                // A replica without a stream from the leader is not following (it waits, or
                // falls back): counted apart.
                if !at(samples, follower, grid).is_some_and(|s| s.stream_up) {
                    lag_unstreamed.push(format!("{} at t={grid:.0} s", name(follower)));
                    continue;
                }
                match at_grid
                    .iter()
                    .find(|s| s.series == series && s.replica == follower)
                {
                    Some(seen) => lag_seen.push(seen.t - leader_t),
                    None => {
                        lag_missing += 1;
                        lag_seen.push(grid + window - leader_t);
                    }
                }
            }
        }
    }

    let partition = partition_result(args, recorded);
    let loads: Vec<f64> = recorded.load.iter().map(|(_, l)| *l).collect();
    let load = (
        loads.iter().sum::<f64>() / loads.len().max(1) as f64,
        loads.iter().copied().fold(0.0, f64::max),
    );
    Run {
        replicas: recorded.replicas,
        calls: recorded.aws_window.0,
        metrics: recorded.aws_window.1,
        by_replica,
        failovers,
        window_reads,
        survivor_reads,
        replacement_reads,
        warmup_reads,
        lag_histogram,
        lag_seen,
        lag_missing,
        lag_unstreamed,
        partition,
        load,
        window: end - w0,
    }
}

fn partition_result(args: &Args, recorded: &Recorded) -> Option<PartitionResult> {
    let samples = &recorded.samples;
    let cut = recorded.events.iter().find(|e| e.kind == EventKind::Cut)?;
    let heal = recorded.events.iter().find(|e| e.kind == EventKind::Heal)?;
    let leader = cut.replica;
    let end = recorded.partition_end;
    let own: Vec<&Sample> = {
        let mut own: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.replica == leader && s.t > cut.t && s.t <= end)
            .collect();
        own.sort_by(|a, b| a.t.total_cmp(&b.t));
        own
    };
    let stopped = own.iter().find(|s| !s.leader).map(|s| s.t - cut.t);
    let at_cut = at(samples, leader, cut.t).map_or(0.0, Sample::leading);
    let mut previous = at_cut;
    let mut last_call = None;
    for s in &own {
        if s.leading() > previous {
            last_call = Some(s.t - cut.t);
        }
        previous = previous.max(s.leading());
    }
    // Until the partition heals (after that it may rightly lead again).
    let calls_after_stop = stopped.map_or(0.0, |stopped| {
        let at_stop = at(samples, leader, cut.t + stopped).map_or(0.0, Sample::leading);
        at(samples, leader, heal.t).map_or(at_stop, Sample::leading) - at_stop
    });
    let successor = first_after(samples, cut.t, end, leader, |s, _| s.leader);
    let successor_call = first_after(samples, cut.t, end, leader, |s, before| {
        s.leading() > before.map_or(0.0, Sample::leading)
    })
    .map(|(dt, _)| dt);
    let both_calling = match (last_call, successor_call) {
        (Some(last), Some(first)) => (last - first).max(0.0),
        _ => 0.0,
    };
    let ids: std::collections::BTreeSet<usize> = samples.iter().map(|s| s.replica).collect();
    let fallback = ids
        .iter()
        .map(|&id| (id, fallback_of(samples, id, cut.t, end)))
        .filter(|(_, count)| *count > 0.0)
        .collect();
    let aws_at = |t: f64| {
        recorded
            .aws
            .iter()
            .filter(|(at, _, _)| *at <= t)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(0, |(_, calls, _)| *calls)
    };
    let in_partition = |r: &&Read| r.sent >= cut.t && r.sent < end;
    let quiet_from = heal.t + args.after_heal as f64 / 2.0;
    let last_sample = own.last();
    Some(PartitionResult {
        cut: cut.t,
        heal: heal.t,
        leader,
        stopped,
        last_call,
        calls_after_stop,
        successor,
        successor_call,
        both_leading: both_leading(samples, cut.t, end),
        both_calling,
        fallback,
        calls: aws_at(end) - aws_at(cut.t),
        to_cut: ReadStats::of(
            recorded
                .reads
                .iter()
                .filter(in_partition)
                .filter(|r| r.replica == leader),
        ),
        to_others: ReadStats::of(
            recorded
                .reads
                .iter()
                .filter(in_partition)
                .filter(|r| r.replica != leader),
        ),
        follows_again: last_sample.is_some_and(|s| s.stream_up && !s.leader),
        calls_at_end: last_sample.map_or(0.0, |s| s.calls)
            - at(samples, leader, quiet_from).map_or(0.0, |s| s.calls),
    })
}

// ---- report ---------------------------------------------------------------------------------

fn secs(value: Option<f64>) -> String {
    value.map_or("none".to_string(), |v| format!("{v:.1} s"))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn report(args: &Args, runs: &[Run], started: SystemTime, elapsed: Duration) -> String {
    let mut out = String::new();
    let refresh = args.refresh();
    let timing = args.timing();
    let _ = writeln!(
        out,
        "# High availability: {} replicas against the emulator ({} cores, {})",
        args.replicas
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        humantime::format_rfc3339_seconds(started)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{} series, refreshInterval {} s (period {} s), each read every {} s by an HPA as the aggregator sends it (front-proxy certificate, X-Remote-*, SubjectAccessReview), to a random ready replica. Lease {} s, renew deadline {:?}, retry {:?}. Window: {} refresh cycles ({:.0} s); with 2+ replicas the leader gets SIGTERM 1 s before cycle 2 is due and SIGKILL 1 s before cycle 5, each replaced by a new pod {} s later. Then the leader is cut off from the Lease API for {} s. Took {:.0} s.",
        args.series,
        args.refresh_interval,
        args.period,
        args.hpa_period,
        timing.lease_duration.as_secs(),
        timing.renew_deadline,
        timing.retry_period,
        args.cycles,
        args.cycles as f64 * refresh,
        args.restart_after,
        args.partition,
        elapsed.as_secs_f64(),
    );
    let _ = writeln!(out);
    let base = runs.iter().find(|r| r.replicas == 1);
    let ha: Vec<&Run> = runs.iter().filter(|r| r.replicas >= 2).collect();
    let cols = |f: &dyn Fn(&Run) -> String| -> String {
        runs.iter().map(f).collect::<Vec<_>>().join(" | ")
    };
    let _ = writeln!(
        out,
        "| goal | target | {} | result |",
        runs.iter()
            .map(|r| format!(
                "{} replica{}",
                r.replicas,
                if r.replicas > 1 { "s" } else { "" }
            ))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|---|{}---|", "---|".repeat(runs.len()));
    // Cost.
    let ratio = |value: u64, of: u64| value as f64 / of.max(1) as f64;
    let calls_met = base.is_some_and(|b| ha.iter().all(|r| ratio(r.calls, b.calls) <= 1.05));
    let metrics_met = base.is_some_and(|b| ha.iter().all(|r| ratio(r.metrics, b.metrics) <= 1.05));
    let _ = writeln!(
        out,
        "| GetMetricData calls in the window, kills included | <= 1.05x one replica's | {} | {} |",
        cols(&|r| match base {
            Some(b) => format!("{} ({:.2}x)", r.calls, ratio(r.calls, b.calls)),
            None => r.calls.to_string(),
        }),
        if base.is_some() {
            verdict(calls_met)
        } else {
            "no baseline"
        }
    );
    let _ = writeln!(
        out,
        "| metrics requested in the window | <= 1.05x one replica's | {} | {} |",
        cols(&|r| match base {
            Some(b) => format!("{} ({:.2}x)", r.metrics, ratio(r.metrics, b.metrics)),
            None => r.metrics.to_string(),
        }),
        if base.is_some() {
            verdict(metrics_met)
        } else {
            "no baseline"
        }
    );
    for (kind, goal, label) in [
        (EventKind::Term, 5.0, "SIGTERM"),
        (EventKind::Kill, 20.0, "SIGKILL"),
    ] {
        let first = |r: &Run| r.failovers.iter().find(|f| f.kind == kind).cloned();
        let met = ha
            .iter()
            .all(|r| first(r).and_then(|f| f.refresh).is_some_and(|t| t <= goal));
        let _ = writeln!(
            out,
            "| new leader's first refresh after {label} to the leader | <= {goal:.0} s | {} | {} |",
            cols(&|r| first(r).map_or("-".to_string(), |f| format!(
                "{} (led after {})",
                secs(f.refresh),
                secs(f.lease)
            ))),
            verdict(met)
        );
    }
    let failed_met = runs.iter().all(|r| r.survivor_reads.bad() == 0);
    let _ = writeln!(
        out,
        "| failed or wrong reads on surviving replicas, through SIGTERM and SIGKILL (whole window) | 0 | {} | {} |",
        cols(&|r| format!("{} of {}", r.survivor_reads.bad(), r.survivor_reads.total)),
        verdict(failed_met)
    );
    let _ = writeln!(
        out,
        "| failed or wrong reads on the pods that replaced the victims (no goal set; an HPA read fails the same) | 0 | {} | {} |",
        cols(&|r| if r.replicas == 1 {
            "-".to_string()
        } else {
            format!(
                "{} of {}",
                r.replacement_reads.bad(),
                r.replacement_reads.total
            )
        }),
        verdict(ha.iter().all(|r| r.replacement_reads.bad() == 0))
    );
    let age_goal = refresh + 20.0;
    let age_met = runs.iter().all(|r| r.window_reads.max_age <= age_goal);
    let _ = writeln!(
        out,
        "| oldest value served in the window, any replica (now - end of its {} s bucket) | <= refreshInterval + 20 s = {age_goal:.0} s | {} | {} |",
        args.period,
        cols(&|r| format!("{:.1} s", r.window_reads.max_age)),
        verdict(age_met)
    );
    let histogram_p99 = |r: &Run| r.lag_histogram.quantile_bound(0.99);
    let lag_met = ha
        .iter()
        .all(|r| histogram_p99(r).is_some_and(|p| p <= 1.0));
    let _ = writeln!(
        out,
        "| follower lag p99, steady state: followers' peer_stream_lag_seconds (bucket bound) | <= 1 s | {} | {} |",
        cols(&|r| match histogram_p99(r) {
            Some(p) => format!("<= {p} s ({} frames)", r.lag_histogram.count()),
            None if r.replicas == 1 => "-".to_string(),
            None => "no frames".to_string(),
        }),
        verdict(lag_met)
    );
    let seen_met = ha
        .iter()
        .all(|r| quantile(&r.lag_seen, 0.99).is_some_and(|p| p <= 1.0));
    let _ = writeln!(
        out,
        "| follower lag p99, steady state: a new datapoint first served by a follower after the leader | <= 1 s | {} | {} |",
        cols(&|r| match quantile(&r.lag_seen, 0.99) {
            Some(p) =>
                format!(
                    "{p:.3} s (max {:.3} s, {} samples{})",
                    quantile(&r.lag_seen, 1.0).unwrap_or(0.0),
                    r.lag_seen.len(),
                    if r.lag_missing > 0 {
                        format!(", {} not seen in time", r.lag_missing)
                    } else {
                        String::new()
                    }
                ) + &if r.lag_unstreamed.is_empty() {
                    String::new()
                } else {
                    format!("; not streaming, left out: {}", r.lag_unstreamed.join(", "))
                },
            None if r.replicas == 1 => "-".to_string(),
            None => "no samples".to_string(),
        }),
        verdict(seen_met)
    );
    let deadline = timing.renew_deadline.as_secs_f64();
    let stop_met = ha.iter().all(|r| {
        r.partition
            .as_ref()
            .is_some_and(|p| p.stopped.is_some_and(|s| s <= deadline) && p.calls_after_stop == 0.0)
    });
    let _ = writeln!(
        out,
        "| leader cut off from the Lease API stops leading (and calling AWS) | <= renew deadline {deadline:.0} s | {} | {} |",
        cols(
            &|r| r.partition.as_ref().map_or("-".to_string(), |p| format!(
                "stopped after {}, last call as leader {}, {} calls after",
                secs(p.stopped),
                p.last_call
                    .map_or("before the cut".to_string(), |c| format!(
                        "{c:.1} s after the cut"
                    )),
                p.calls_after_stop
            ))
        ),
        verdict(stop_met)
    );
    let both_met = ha.iter().all(|r| {
        r.partition
            .as_ref()
            .is_some_and(|p| p.both_leading < 5.0 && p.both_calling < 5.0)
    });
    let _ = writeln!(
        out,
        "| two replicas refreshing at once | < 5 s | {} | {} |",
        cols(
            &|r| r.partition.as_ref().map_or("-".to_string(), |p| format!(
                "{:.1} s both leading, {:.1} s both calling",
                p.both_leading.max(0.0),
                p.both_calling
            ))
        ),
        verdict(both_met)
    );
    let _ = writeln!(
        out,
        "| fallback refreshes (counted apart; by design when no leader streams) | reported | {} | |",
        cols(&|r| {
            let window: f64 = r.by_replica.iter().map(|(_, _, f)| f).sum();
            let partition: f64 = r
                .partition
                .as_ref()
                .map_or(0.0, |p| p.fallback.iter().map(|(_, f)| f).sum());
            if r.replicas == 1 {
                format!("{window}")
            } else {
                format!("{window} in the window, {partition} in the partition")
            }
        })
    );
    let _ = writeln!(
        out,
        "| load average (1 min) during the run | | {} | |",
        cols(&|r| format!("mean {:.1}, max {:.1}", r.load.0, r.load.1))
    );

    for run in runs {
        let _ = writeln!(out);
        let _ = writeln!(out, "## {} replica(s)", run.replicas);
        let _ = writeln!(out);
        let by: Vec<String> = run
            .by_replica
            .iter()
            .map(|(name, leading, fallback)| {
                format!("{name} {leading} as leader + {fallback} fallback")
            })
            .collect();
        let _ = writeln!(
            out,
            "- window {:.0} s: {} GetMetricData calls, {} metrics requested (emulator); by replica (their own counters): {}",
            run.window,
            run.calls,
            run.metrics,
            by.join(", ")
        );
        let mut latencies = run.window_reads.latencies.clone();
        latencies.retain(|l| l.is_finite());
        let _ = writeln!(
            out,
            "- reads in the window: {}; on survivors {}; on replacements {}; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; warm-up: {}",
            run.window_reads.describe(),
            run.survivor_reads.describe(),
            run.replacement_reads.describe(),
            quantile(&latencies, 0.5).unwrap_or(0.0) * 1000.0,
            quantile(&latencies, 0.99).unwrap_or(0.0) * 1000.0,
            quantile(&latencies, 1.0).unwrap_or(0.0) * 1000.0,
            run.warmup_reads.describe()
        );
        for failover in &run.failovers {
            let _ = writeln!(
                out,
                "- {} to ha-{} at t={:.1} s: another replica led after {}, first refresh as leader after {}; fallback refreshes in the next {FAILOVER_SPAN:.0} s: {}; reads to the others in that span: {}, oldest value {:.1} s; reads to the victim answered after the signal: {}",
                if failover.kind == EventKind::Kill {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                },
                failover.victim,
                failover.t,
                secs(failover.lease),
                secs(failover.refresh),
                failover.fallback,
                failover.survivors.describe(),
                failover.survivors.max_age,
                failover.victim_reads.describe()
            );
        }
        if let Some(p) = &run.partition {
            let _ = writeln!(
                out,
                "- partition of ha-{} from t={:.1} s to t={:.1} s: stopped leading after {}, last call as leader {}, {} calls as leader after it stopped; ha-{} led after {}, first call as leader after {}; both leading {:.1} s, both calling {:.1} s; {} GetMetricData calls from the cut to {} s after healing; fallback refreshes {}; reads to the cut-off replica: {}; to the others: {}; after healing it {} and made {} calls in the last {:.0} s",
                p.leader,
                p.cut,
                p.heal,
                secs(p.stopped),
                secs(p.last_call),
                p.calls_after_stop,
                p.successor
                    .map_or("?".to_string(), |(_, id)| id.to_string()),
                secs(p.successor.map(|(dt, _)| dt)),
                secs(p.successor_call),
                p.both_leading,
                p.both_calling,
                p.calls,
                args.after_heal,
                p.fallback
                    .iter()
                    .map(|(id, f)| format!("ha-{id} {f}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                p.to_cut.describe(),
                p.to_others.describe(),
                if p.follows_again {
                    "follows the leader again"
                } else {
                    "does NOT follow a leader"
                },
                p.calls_at_end,
                args.after_heal as f64 / 2.0
            );
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    args.check()?;
    anyhow::ensure!(
        args.adapter.exists(),
        "{} does not exist: build it with cargo build --release",
        args.adapter.display()
    );
    let started = SystemTime::now();
    let clock = Instant::now();
    let stamp = epoch(started) as u64;
    let out = args.out.join(format!("ha-{stamp}"));
    std::fs::create_dir_all(&out)?;
    let emulator = Arc::new(Emulator::start().await?);
    let feeder = tokio::spawn(feed(emulator.clone(), args.series, args.period));
    // The feeder's first buckets are in before any replica starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut runs = Vec::new();
    for &n in &args.replicas {
        println!("run with {n} replica(s)");
        let dir = out.join(format!("replicas-{n}"));
        let recorded = run(&args, &emulator, n, &dir).await?;
        dump(&recorded, &dir)?;
        runs.push(analyse(&args, &recorded));
    }
    feeder.abort();
    let text = report(&args, &runs, started, clock.elapsed());
    println!();
    println!("{text}");
    let file = out.join("result.md");
    std::fs::write(&file, &text)?;
    println!("written to {} (replicas' logs beside it)", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(tick: u64, t: f64, replica: usize, leader: bool, calls: f64) -> Sample {
        Sample {
            tick,
            t,
            replica,
            leader,
            calls,
            fallback: 0.0,
            stream_up: !leader,
            lag: Buckets::default(),
        }
    }

    #[test]
    fn quantities_as_the_adapter_writes_them() {
        assert_eq!(quantity("1000123"), Some(1_000_123.0));
        assert_eq!(quantity("1500m"), Some(1.5));
        assert_eq!(quantity("400u"), Some(0.0004));
        assert_eq!(quantity("m"), None);
        assert_eq!(quantity(""), None);
    }

    #[test]
    fn values_differ_by_series_and_bucket() {
        assert_ne!(expected_value(1, 100, 5), expected_value(2, 100, 5));
        assert_ne!(expected_value(1, 100, 5), expected_value(1, 105, 5));
        // Bucket starts inside one period give the same value.
        assert_eq!(expected_value(3, 100, 5), expected_value(3, 104, 5));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.99), Some(99.0));
        assert_eq!(quantile(&values, 1.0), Some(100.0));
        assert_eq!(quantile(&[0.2], 0.99), Some(0.2));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_first_refresh_is_a_call_by_another_replica_after_the_signal() {
        let samples = vec![
            sample(0, 0.0, 0, true, 5.0),
            sample(0, 0.0, 1, false, 0.0),
            // The victim's own later call does not count.
            sample(1, 1.0, 0, true, 6.0),
            sample(1, 1.0, 1, true, 0.0),
            sample(2, 2.0, 1, true, 1.0),
        ];
        let led = first_after(&samples, 0.5, 10.0, 0, |s, _| s.leader);
        assert_eq!(led, Some((0.5, 1)));
        let refreshed = first_after(&samples, 0.5, 10.0, 0, |s, before| {
            s.leading() > before.map_or(0.0, Sample::leading)
        });
        assert_eq!(refreshed, Some((1.5, 1)));
    }

    #[test]
    fn time_with_two_leaders_is_counted_between_ticks() {
        let samples = vec![
            sample(0, 0.0, 0, true, 0.0),
            sample(0, 0.0, 1, false, 0.0),
            sample(1, 0.1, 0, true, 0.0),
            sample(1, 0.1, 1, true, 0.0),
            sample(2, 0.3, 0, false, 0.0),
            sample(2, 0.3, 1, true, 0.0),
        ];
        assert!((both_leading(&samples, 0.0, 1.0) - 0.2).abs() < 1e-9);
        assert_eq!(leader_at(&samples, 0.05), Some(0));
        assert_eq!(leader_at(&samples, 0.2), None);
        assert_eq!(leader_at(&samples, 0.4), Some(1));
    }

    #[test]
    fn the_clock_finds_wall_clock_grid_points() {
        let clock = Clock {
            start: Instant::now(),
            wall: 1_000_003.0,
        };
        // Wall 1,000,003 + 1 = 1,000,004: the next multiple of 15 is 1,000,005, at t = 2.
        assert!((clock.next_grid(1.0, 15.0) - 2.0).abs() < 1e-9);
        assert!((clock.next_grid(2.0, 15.0) - 17.0).abs() < 1e-9);
    }
}
