//! Scale benchmark (issue 16): one release adapter with 1,000 tenants and up to 100,000 active
//! series read by 10,000 simulated HPAs, against the in-process CloudWatch emulator; requests
//! sent as kube-apiserver's aggregator sends them (front-proxy client certificate, the HPA
//! controller's `X-Remote-*` headers, HTTP/2) with delegated authorization against a fake
//! Kubernetes API answering SubjectAccessReviews.
//!
//! Tenants are definitions-file metrics (`tenant-0000` ...), one per tenant namespace: the file
//! is the adapter's other tenant unit besides ExternalMetric namespaces, and it needs no fake
//! API server that lists and watches ExternalMetrics (the benchmark's fake answers reviews only).
//! See `fleet` for how series and HPAs are laid out.
//!
//! For each size of the curve (default 1k, 10k, 100k series), on a fresh adapter and emulator:
//!
//! 1. idle RSS and idle CPU rate, before any request;
//! 2. first fill: every series asked for at once (as after a restart), until every one has a
//!    value;
//! 3. the HPAs poll for a few refresh intervals: GetMetricData calls and metrics requested per
//!    refresh (counted by the emulator between two moments with no refresh under way) against
//!    ceil(series / 500), the served values' ages, RSS with every series active;
//! 4. latency at a fixed rate (2,000 req/s) from just before a refresh until it is done;
//! 5. a window of a few refresh intervals with no requests at all: the adapter's CPU time
//!    (utime + stime) per refresh cycle.
//!
//! The emulator gets a datapoint for every series at the start of each bucket, so every refresh
//! finds the newest complete bucket. Everything listens on 127.0.0.1, every phase has a
//! deadline, and the run stops by itself.

mod emulator;
mod fleet;
mod reads;
mod report;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use cwma_bench::adapter::Adapter;
use cwma_bench::aggregator::{Caller, FrontProxy, HPA_USER};
use cwma_bench::kube::{AccessPolicy, FakeKube};
use cwma_bench::load;
use tokio::time::Instant;

use emulator::EmulatorThread;
use fleet::{Fleet, epoch_secs, next_tick};
use reads::Reader;
use report::{Phases, SizeResult};

/// Scale benchmark: calls per refresh, value age, latency, memory and CPU per series.
#[derive(Debug, Parser)]
struct Args {
    /// The adapter binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/cloudwatch-metrics-adapter")]
    adapter: PathBuf,
    /// The sizes of the curve: active series.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Tenants (definitions-file metrics), each with an equal share of the series.
    #[arg(long, default_value_t = 1000)]
    tenants: usize,
    /// Simulated HPAs (a multiple of --tenants).
    #[arg(long, default_value_t = 10_000)]
    hpas: usize,
    /// The metrics' period, which is also their refresh interval, in seconds.
    #[arg(long, default_value_t = 30)]
    refresh_interval: u64,
    /// The adapter's --cloudwatch-calls-per-second.
    #[arg(long, default_value_t = 10.0)]
    calls_per_second: f64,
    /// Requests per second in the latency phase.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Refreshes counted for calls per refresh, and in the CPU window.
    #[arg(long, default_value_t = 2)]
    refreshes: u32,
    /// The HPA controller's sync period, in seconds.
    #[arg(long, default_value_t = 15)]
    hpa_sync_period: u64,
    /// HTTP/2 connections to the adapter (each carries up to its stream limit of reads).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Reads in flight during the first fill.
    #[arg(long, default_value_t = 3000)]
    fill_concurrency: usize,
    /// Where the JSON and Markdown results go.
    #[arg(long, default_value = "target/bench-scale")]
    out: PathBuf,
    /// Stop with an error after this many minutes, whatever is under way.
    #[arg(long, default_value_t = 40)]
    max_minutes: u64,
    /// A label for the results (e.g. the commit).
    #[arg(long, default_value = "")]
    label: String,
}

/// The tokio instant at wall-clock time `time` (now if it has passed).
fn instant_at(time: SystemTime) -> Instant {
    Instant::now() + time.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// GetMetricData calls and metrics requested as the emulator counted them, sampled often
/// enough to see when each refresh's last call arrived.
#[derive(Debug, Default)]
struct CallLog {
    /// (when the count changed, calls, metrics requested), oldest first.
    points: Mutex<Vec<(SystemTime, u64, u64)>>,
}

impl CallLog {
    fn record(&self, calls: u64, metrics: u64) {
        let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        if points
            .last()
            .is_none_or(|&(_, c, m)| (c, m) != (calls, metrics))
        {
            points.push((SystemTime::now(), calls, metrics));
        }
    }

    /// Calls and metrics requested counted by `time`.
    fn at(&self, time: SystemTime) -> (u64, u64) {
        let points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        points
            .iter()
            .take_while(|(at, _, _)| *at <= time)
            .last()
            .map_or((0, 0), |&(_, c, m)| (c, m))
    }

    /// The refresh that began at `tick`: its calls, metrics, and how long after the tick its
    /// last call arrived (looking until `until`).
    fn refresh(&self, tick: SystemTime, until: SystemTime) -> (u64, u64, Option<Duration>) {
        let from = tick - Duration::from_millis(500);
        let (calls_before, metrics_before) = self.at(from);
        let (calls_after, metrics_after) = self.at(until);
        let points = self.points.lock().unwrap_or_else(|p| p.into_inner());
        let last = points
            .iter()
            .filter(|(at, _, _)| *at > from && *at <= until)
            .map(|(at, _, _)| *at)
            .next_back();
        (
            calls_after - calls_before,
            metrics_after - metrics_before,
            last.map(|at| at.duration_since(tick).unwrap_or_default()),
        )
    }
}

/// Put every series' datapoint for the bucket starting at `bucket` (off the async threads:
/// 100,000 puts take a while).
async fn put_bucket(
    emulator: Arc<cloudwatch_emulator::Emulator>,
    fleet: Fleet,
    bucket: u64,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        for series in 0..fleet.series {
            emulator.put_high_resolution(fleet.datum(series, bucket));
        }
    })
    .await
    .context("seeding the emulator")
}

/// What one size needs that does not change between sizes.
struct Bench {
    args: Args,
    kube: FakeKube,
    flags: Vec<String>,
    clients: Vec<reqwest::Client>,
    headers: reqwest::header::HeaderMap,
    admin: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Bench {
    async fn run_size(&self, fleet: Fleet) -> anyhow::Result<SizeResult> {
        let args = &self.args;
        let period = fleet.refresh_interval();
        let margin = Duration::from_secs(2);
        let refreshes = args.refreshes.max(1);
        let load_before = load_average();
        eprintln!(
            "== {} series, {} tenants, {} HPAs, refresh interval {} s",
            fleet.series,
            fleet.active_tenants(),
            fleet.hpas,
            fleet.period
        );

        // The emulator: the buckets a first read looks at, then a new bucket as each begins.
        let emulator_thread = EmulatorThread::start(2)?;
        let emulator = emulator_thread.emulator.clone();
        let current = epoch_secs(SystemTime::now()) / fleet.period * fleet.period;
        for back in (0..=4).rev() {
            put_bucket(emulator.clone(), fleet, current - back * fleet.period).await?;
        }
        let feeder = {
            let emulator = emulator.clone();
            tokio::spawn(async move {
                loop {
                    let tick = next_tick(SystemTime::now(), fleet.period);
                    tokio::time::sleep_until(instant_at(tick) + Duration::from_millis(100)).await;
                    if let Err(error) = put_bucket(emulator.clone(), fleet, epoch_secs(tick)).await
                    {
                        eprintln!("feeding the emulator failed: {error:#}");
                    }
                }
            })
        };
        let calls = Arc::new(CallLog::default());
        let watcher = {
            let (emulator, calls) = (emulator.clone(), calls.clone());
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(50));
                loop {
                    ticker.tick().await;
                    let stats = emulator.stats().get_metric_data;
                    calls.record(stats.calls, stats.metrics_requested);
                }
            })
        };

        // 1. Idle.
        let adapter = Adapter::start_with(
            &args.adapter,
            &self.dir.path().join(fleet.series.to_string()),
            &fleet.definitions(),
            &emulator.endpoint_url(),
            &self.flags,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = adapter.rss_mib()?;
        // Idle with the connections open and as many streams used as the first fill will.
        let reader = Arc::new(Reader::new(
            self.clients.clone(),
            self.headers.clone(),
            &adapter.base,
            &fleet,
        )?);
        reads::warm_connections(reader.clone(), args.fill_concurrency).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_connected = adapter.rss_mib()?;
        let idle_window = Duration::from_secs(10);
        let cpu_before = adapter.cpu_time()?;
        tokio::time::sleep(idle_window).await;
        let idle_cpu_per_second =
            (adapter.cpu_time()? - cpu_before).as_secs_f64() / idle_window.as_secs_f64();
        let reviews_before = self.kube.access_reviews();

        // 2. First fill.
        eprintln!("   first fill");
        let calls_before_fill = emulator.stats().get_metric_data.calls;
        let fill = reads::first_fill(
            reader.clone(),
            args.fill_concurrency,
            Duration::from_millis(100),
            Instant::now() + Duration::from_secs(600),
        )
        .await?;
        let fill_calls = emulator.stats().get_metric_data.calls - calls_before_fill;

        // 3. HPAs poll; count between two moments with no refresh under way (2 s before ticks).
        let now = SystemTime::now();
        let mut counted_from = next_tick(now, fleet.period) - margin;
        if counted_from < now + Duration::from_secs(1) {
            counted_from += period;
        }
        let counted_to = counted_from + period * refreshes;
        eprintln!(
            "   HPAs poll for {:.0} s",
            counted_to
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64()
        );
        let simulation = tokio::spawn(reads::simulate_hpas(
            reader.clone(),
            fleet,
            Duration::from_secs(args.hpa_sync_period),
            instant_at(counted_from + margin),
            instant_at(counted_to),
        ));
        tokio::time::sleep_until(instant_at(counted_from)).await;
        let emulator_cpu_from = emulator_thread.cpu_time();
        tokio::time::sleep_until(instant_at(counted_to)).await;
        let emulator_cpu = emulator_thread.cpu_time() - emulator_cpu_from;
        let rss_active = adapter.rss_mib()?;
        let hpas = simulation.await??;
        let hpa_seconds = counted_to
            .duration_since(now)
            .unwrap_or_default()
            .as_secs_f64();

        // 4. Latency at a fixed rate across the next refresh.
        eprintln!("   {} req/s across a refresh", args.rate);
        let server_before = adapter.server_histogram(&self.admin).await?;
        let expected = fleet.calls_per_refresh() as f64 / args.calls_per_second;
        let latency_window =
            Duration::from_secs_f64((expected + 6.0).clamp(10.0, fleet.period as f64 - 4.0));
        let latency = reads::fixed_rate(reader.clone(), args.rate, latency_window).await?;
        let server_after = adapter.server_histogram(&self.admin).await?;

        // 5. No requests: CPU per refresh cycle.
        let now = SystemTime::now();
        let mut cpu_from = next_tick(now, fleet.period) - margin;
        if cpu_from < now + Duration::from_millis(500) {
            cpu_from += period;
        }
        let cpu_to = cpu_from + period * refreshes;
        eprintln!(
            "   no requests for {:.0} s (CPU per refresh)",
            cpu_to.duration_since(now).unwrap_or_default().as_secs_f64()
        );
        tokio::time::sleep_until(instant_at(cpu_from)).await;
        let cpu_start = adapter.cpu_time()?;
        tokio::time::sleep_until(instant_at(cpu_to)).await;
        let cpu = adapter.cpu_time()? - cpu_start;
        let rss_after = adapter.rss_mib()?;
        // Let the call log see the last moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reviews = self.kube.access_reviews() - reviews_before;
        adapter.stop().await?;
        feeder.abort();
        watcher.abort();
        drop(emulator);
        drop(emulator_thread);

        // Every refresh from the first counted one to the end of the CPU window.
        let mut ticks = Vec::new();
        let mut tick = counted_from + margin;
        while tick < cpu_to {
            let until = (tick + period - margin).min(cpu_to);
            ticks.push(calls.refresh(tick, until));
            tick += period;
        }
        let (counted_calls_from, counted_metrics_from) = calls.at(counted_from);
        let (counted_calls_to, counted_metrics_to) = calls.at(counted_to);
        let (cpu_calls_from, cpu_metrics_from) = calls.at(cpu_from);
        let (cpu_calls_to, cpu_metrics_to) = calls.at(cpu_to);

        Ok(SizeResult {
            fleet,
            calls_per_second: args.calls_per_second,
            rate: args.rate,
            phases: Phases {
                first_fill: fill,
                first_fill_calls: fill_calls,
                refreshes,
                counted_calls: counted_calls_to - counted_calls_from,
                counted_metrics: counted_metrics_to - counted_metrics_from,
                ticks,
                hpas,
                hpa_seconds,
                latency,
                latency_window,
                server: (
                    server_after.0 - server_before.0,
                    server_after.1 - server_before.1,
                ),
                rss_idle,
                rss_connected,
                rss_active,
                rss_after,
                idle_cpu_per_second,
                cpu,
                cpu_window: period * refreshes,
                cpu_window_calls: cpu_calls_to - cpu_calls_from,
                cpu_window_metrics: cpu_metrics_to - cpu_metrics_from,
                access_reviews: reviews,
                emulator_cpu,
                load_before,
                load_after: load_average(),
            },
        })
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let fleets = args
        .sizes
        .iter()
        .map(|&series| Fleet::new(args.tenants, series, args.hpas, args.refresh_interval))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for fleet in &fleets {
        let needed = fleet.calls_per_refresh() as f64 / args.calls_per_second;
        if needed > fleet.period as f64 - 4.0 {
            eprintln!(
                "warning: {} series need {} calls per refresh, {needed:.0} s at {} calls/s: more than the {} s refresh interval allows",
                fleet.series,
                fleet.calls_per_refresh(),
                args.calls_per_second,
                fleet.period
            );
        }
    }
    let dir = tempfile::tempdir()?;
    let front_proxy = FrontProxy::new()?;
    let ca_file = dir.path().join("front-proxy-ca.pem");
    std::fs::write(&ca_file, &front_proxy.ca.pem)?;
    let kube = FakeKube::start(
        dir.path(),
        AccessPolicy::AllowUsers(HashSet::from([HPA_USER.to_string()])),
        Vec::new(),
    )
    .await?;
    let mut flags = front_proxy.adapter_flags(&ca_file);
    flags.extend([
        format!("--kubeconfig={}", kube.kubeconfig.display()),
        "--authorization-mode=Delegated".to_string(),
        "--watch-external-metrics=false".to_string(),
        format!("--cloudwatch-calls-per-second={}", args.calls_per_second),
    ]);
    let clients = (0..args.connections.max(1))
        .map(|_| load::client(Some(front_proxy.client.identity()?), 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bench = Bench {
        kube,
        flags,
        clients,
        headers: Caller::hpa_controller().headers()?,
        admin: reqwest::Client::new(),
        dir,
        args,
    };
    let started = SystemTime::now();
    let mut results = Vec::new();
    for fleet in fleets {
        let result = bench.run_size(fleet).await?;
        eprintln!("{}", result.summary_line());
        results.push(result);
    }
    let report = report::Report {
        started,
        label: bench.args.label.clone(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        results,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    std::fs::create_dir_all(&bench.args.out)?;
    let stem = bench
        .args
        .out
        .join(format!("scale-{}", epoch_secs(started)));
    let json = serde_json::to_string_pretty(&report.json())?;
    for (path, text) in [
        (stem.with_extension("json"), &json),
        (stem.with_extension("md"), &markdown),
        (bench.args.out.join("latest.json"), &json),
        (bench.args.out.join("latest.md"), &markdown),
    ] {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("results: {}.{{json,md}}", stem.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let limit = Duration::from_secs(args.max_minutes.max(1) * 60);
    match tokio::time::timeout(limit, run(args)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the benchmark did not finish within {limit:?} (--max-minutes)"),
    }
}
