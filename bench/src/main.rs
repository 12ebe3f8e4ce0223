//! Benchmark of the cached query layer: starts the CloudWatch emulator (in process) and the
//! adapter (the release binary, as a process), simulates HPAs, and reports in one run:
//!
//! - GetMetricData calls and metrics requested per minute, from the emulator's counters, next to
//!   what a per-request design (one call per HPA poll, as the archived adapter and KEDA do) makes;
//! - request latency p50/p99 at a fixed rate, and peak throughput, over HTTPS keep-alive;
//! - the adapter's RSS idle and with many active series.
//!
//! Everything listens on 127.0.0.1 and every phase stops by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use cloudwatch_emulator::{Datum, Emulator};
use hdrhistogram::Histogram;
use tokio::process::{Child, Command};

/// Benchmark the adapter against the emulator.
#[derive(Debug, Parser)]
struct Args {
    /// The adapter binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/cloudwatch-metrics-adapter")]
    adapter: PathBuf,
    /// Simulated HPAs in the refresh phase.
    #[arg(long, default_value_t = 2000)]
    hpas: usize,
    /// Distinct series those HPAs ask for (HPAs share series).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// How long the HPA simulation runs (the call count is taken over its last minute).
    #[arg(long, default_value = "75", value_parser = parse_secs)]
    simulate: Duration,
    /// Fixed request rate for the latency phase.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Length of the latency and throughput phases.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    phase: Duration,
    /// Concurrent requests in the throughput phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Active series for the memory phase.
    #[arg(long, default_value_t = 10_000)]
    many_series: usize,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

const DEFINITIONS: &str = r#"
metrics:
  - name: sqs-depth
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Average
"#;

/// The HPA sync period.
const HPA_PERIOD: Duration = Duration::from_secs(15);

struct Adapter {
    child: Child,
    base: String,
    admin: String,
    pid: u32,
    _dir: PathBuf,
}

impl Adapter {
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kib / 1024.0)
    }

    /// (requests served in <= 1 ms, all requests) from the adapter's own latency histogram.
    async fn server_histogram(&self, client: &reqwest::Client) -> anyhow::Result<(u64, u64)> {
        let text = client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?
            .text()
            .await?;
        let sum = |needle: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("cloudwatch_adapter_request_duration_seconds_bucket")
                        && l.contains(needle)
                        && l.contains("code=\"200\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        Ok((sum("le=\"0.001\""), sum("le=\"+Inf\"")))
    }

    fn url(&self, queue: usize) -> String {
        format!(
            "{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-depth?labelSelector=QueueName%3Dq{queue}",
            self.base
        )
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_adapter(args: &Args, emulator: &Emulator) -> anyhow::Result<Adapter> {
    let dir = std::env::temp_dir().join(format!("cwma-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("metrics.yaml");
    std::fs::write(&config, DEFINITIONS)?;
    let (secure, admin) = (free_port()?, free_port()?);
    let child = Command::new(&args.adapter)
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--bind-address",
            "127.0.0.1",
            "--admin-bind-address",
            "127.0.0.1",
        ])
        .args([
            "--secure-port",
            &secure.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        .args(["--max-series", "200000"])
        .args(BENCH_FLAGS)
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", emulator.endpoint_url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with cargo build --release)",
                args.adapter.display()
            )
        })?;
    let pid = child.id().context("adapter exited")?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("adapter not ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Adapter {
        child,
        base: format!("https://127.0.0.1:{secure}"),
        admin: format!("http://127.0.0.1:{admin}"),
        pid,
        _dir: dir,
    })
}

/// Flags the adapter needs to run without a cluster (no delegated auth, no CRD watch).
const BENCH_FLAGS: &[&str] = &[
    "--authorization-mode=AlwaysAllow",
    "--anonymous-auth=true",
    "--authentication-skip-lookup",
    "--watch-external-metrics=false",
];

fn seed(emulator: &Emulator, series: usize) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
        * 60;
    for queue in 0..series {
        for minutes_ago in 1..=3u64 {
            emulator.put(Datum {
                namespace: "AWS/SQS".into(),
                metric_name: "ApproximateNumberOfMessagesVisible".into(),
                dimensions: vec![("QueueName".into(), format!("q{queue}"))],
                timestamp: UNIX_EPOCH + Duration::from_secs(now - minutes_ago * 60),
                value: (queue % 997) as f64 + 0.5,
                unit: Some("Count".into()),
            });
        }
    }
}

fn client(connections_hint: usize) -> anyhow::Result<reqwest::Client> {
    // The adapter serves a self-signed certificate; this measures the server, not PKI.
    Ok(reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(connections_hint)
        .build()?)
}

async fn warm(client: &reqwest::Client, adapter: &Adapter, series: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, next) = (client.clone(), next.clone());
        let urls: Arc<Vec<String>> = Arc::new((0..series).map(|q| adapter.url(q)).collect());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(url) = urls.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let response = client.get(url).send().await?;
                if response.status() != 200 {
                    bail!("warm-up request failed: {}", response.status());
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let emulator = Emulator::start().await?;
    seed(&emulator, args.series.max(args.many_series));
    let adapter = start_adapter(&args, &emulator).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = adapter.rss_mib()?;
    println!(
        "# cloudwatch-metrics-adapter benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("idle RSS: {idle_rss:.1} MiB");

    // Phase 1: N HPAs polling M series every 15 s.
    let client = client(args.concurrency)?;
    warm(&client, &adapter, args.series).await?;
    let started = Instant::now();
    let mut hpas = tokio::task::JoinSet::new();
    let failures = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    for hpa in 0..args.hpas {
        let (client, url, failures, polls) = (
            client.clone(),
            adapter.url(hpa % args.series),
            failures.clone(),
            polls.clone(),
        );
        let offset = HPA_PERIOD.mul_f64(hpa as f64 / args.hpas as f64);
        let end = started + args.simulate;
        hpas.spawn(async move {
            tokio::time::sleep(offset).await;
            let mut ticker = tokio::time::interval(HPA_PERIOD);
            while Instant::now() < end {
                ticker.tick().await;
                polls.fetch_add(1, Ordering::Relaxed);
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // Count calls over exactly the last minute of the simulation.
    let measure_from = args.simulate.saturating_sub(Duration::from_secs(60));
    tokio::time::sleep(measure_from).await;
    let before = emulator.stats();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = emulator.stats();
    hpas.abort_all();
    while hpas.join_next().await.is_some() {}
    let calls = (after.get_metric_data.calls - before.get_metric_data.calls) as f64;
    let metrics =
        (after.get_metric_data.metrics_requested - before.get_metric_data.metrics_requested) as f64;
    let per_request_calls = args.hpas as f64 * 60.0 / HPA_PERIOD.as_secs_f64();
    println!();
    println!(
        "## {} HPAs over {} series, polling every 15 s ({} polls, {} failed)",
        args.hpas,
        args.series,
        polls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed)
    );
    println!("| design | GetMetricData calls/min | metrics requested/min | est. cost/month |");
    println!("|---|---|---|---|");
    let month = 60.0 * 24.0 * 30.0 * 0.01 / 1000.0;
    println!(
        "| this adapter (measured) | {calls:.1} | {metrics:.0} | ${:.2} |",
        metrics * month
    );
    println!(
        "| per-request (one call per poll) | {per_request_calls:.0} | {per_request_calls:.0} | ${:.2} |",
        per_request_calls * month
    );
    println!(
        "expected calls per refresh: ceil({} / 500) = {}",
        args.series,
        args.series.div_ceil(500)
    );

    // Phase 2: fixed rate on warm series. Tokio's timer ticks every millisecond, so each tick
    // sends rate/1000 requests; latency is measured from each request's send, and the generator's
    // own lag behind the schedule is reported separately.
    let server_before = adapter.server_histogram(&client).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, ()>>();
    let per_tick = (args.rate / 1000).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + args.phase;
    let mut sent = 0u64;
    while Instant::now() < end {
        let scheduled = ticker.tick().await;
        lag.record((scheduled.elapsed().as_micros() as u64).max(1))?;
        for _ in 0..per_tick {
            let (client, url, tx) = (
                client.clone(),
                adapter.url(sent as usize % args.series),
                tx.clone(),
            );
            sent += 1;
            tokio::spawn(async move {
                let start = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                let micros = start.elapsed().as_micros() as u64;
                let _ = tx.send(if ok { Ok(micros) } else { Err(()) });
            });
        }
    }
    drop(tx);
    let mut errors = 0;
    while let Some(result) = rx.recv().await {
        match result {
            Ok(micros) => histogram.record(micros.max(1))?,
            Err(()) => errors += 1,
        }
    }
    let server_after = adapter.server_histogram(&client).await?;
    let (under_1ms, total) = (
        server_after.0 - server_before.0,
        server_after.1 - server_before.1,
    );
    println!();
    println!(
        "## latency at {} requests/s for {} s (HTTPS keep-alive, warm series)",
        args.rate,
        args.phase.as_secs()
    );
    println!(
        "client-side: requests {sent}, errors {errors}, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (generator lag p99 {:.3} ms)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "server-side (adapter's own histogram): {:.2}% of {} requests took <= 1 ms",
        100.0 * under_1ms as f64 / total.max(1) as f64,
        total
    );

    // Phase 3: peak throughput, closed loop.
    let done = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + args.phase;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let (client, done, bad) = (client.clone(), done.clone(), bad.clone());
        let urls: Vec<String> = (0..16)
            .map(|i| adapter.url((worker * 16 + i) % args.series))
            .collect();
        workers.spawn(async move {
            let mut i = 0;
            while Instant::now() < end {
                match client.get(&urls[i % urls.len()]).send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    println!();
    println!(
        "## peak throughput ({} concurrent requests, {} s)",
        args.concurrency,
        args.phase.as_secs()
    );
    println!(
        "{:.0} requests/s, {} errors",
        done.load(Ordering::Relaxed) as f64 / args.phase.as_secs_f64(),
        bad.load(Ordering::Relaxed)
    );

    // Phase 4: memory with many active series.
    warm(&client, &adapter, args.many_series).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!();
    println!("## memory");
    println!(
        "RSS idle: {idle_rss:.1} MiB; with {} active series: {:.1} MiB",
        args.many_series,
        adapter.rss_mib()?
    );
    let mut adapter = adapter;
    adapter.child.kill().await?;
    Ok(())
}
