//! Benchmark of the adapter: starts the CloudWatch emulator (in process) and the adapter (the
//! release binary, as processes), and reports in one run:
//!
//! - GetMetricData calls and metrics requested per minute for simulated HPAs, from the
//!   emulator's counters, next to what a per-request design (one call per HPA poll, as the
//!   archived adapter and KEDA do) makes;
//! - latency at a fixed rate and peak throughput over HTTPS keep-alive for three request paths,
//!   side by side: anonymous (the bare path), and requests as kube-apiserver's aggregator sends
//!   them (front-proxy client certificate and `X-Remote-*` headers) with `AlwaysAllow`, and with
//!   delegated authorization against a fake Kubernetes API server answering
//!   SubjectAccessReviews (warm review cache);
//! - the adapter's RSS idle and with many active series.
//!
//! With `--baseline-adapter` it compares two builds instead (A/B; `scripts/bench.sh --baseline
//! REV` builds REV and passes it): both run side by side, the same request paths in interleaved
//! rounds (the build order alternating), and the report gives candidate/baseline ratios per
//! round, since absolute figures on a shared machine drift by a quarter within minutes. With
//! `--instructions N` it also counts instructions per request under callgrind, N requests per
//! build and path: work, not seconds, so it holds however busy the machine is.
//!
//! Everything listens on 127.0.0.1 and every phase stops by itself.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use cloudwatch_emulator::Emulator;
use cwma_bench::adapter::{ANONYMOUS_FLAGS, Adapter, seed};
use cwma_bench::aggregator::{Caller, FrontProxy, HPA_USER};
use cwma_bench::instructions;
use cwma_bench::kube::{AccessPolicy, FakeKube};
use cwma_bench::load::{self, Latency, Protocol, Target, Throughput};

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
    /// How long the HPA simulation runs (the call count is taken over its last minute); 0
    /// skips it (e.g. to profile the request paths alone).
    #[arg(long, default_value = "75", value_parser = parse_secs)]
    simulate: Duration,
    /// Fixed request rate for the latency phases.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Length of each latency and throughput phase.
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    phase: Duration,
    /// Rounds over the request paths (interleaved, so drift on a shared machine hits all paths
    /// alike): latencies are merged, throughput is the median round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent requests in the throughput phases.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Active series for the memory phase.
    #[arg(long, default_value_t = 10_000)]
    many_series: usize,
    /// HTTP version of the load on the request paths.
    #[arg(long, value_enum, default_value_t = Protocol::H2)]
    protocol: Protocol,
    /// Compare `--adapter` (the candidate) with this build (A/B) instead of the full benchmark:
    /// the request paths only, both builds side by side in interleaved rounds, with ratios.
    #[arg(long)]
    baseline_adapter: Option<PathBuf>,
    /// The baseline's name in the report (e.g. its commit).
    #[arg(long, default_value = "baseline")]
    baseline_name: String,
    /// The candidate's name in the report.
    #[arg(long, default_value = "candidate")]
    candidate_name: String,
    /// With --baseline-adapter: also count instructions per request under callgrind (valgrind),
    /// this many requests per build, path and concurrency (0: skip).
    #[arg(long, default_value_t = 0)]
    instructions: u64,
    /// Concurrent requests while counting instructions, one count per value: 1 is the work of a
    /// request on a lightly loaded server; more shows what batching saves at peak.
    #[arg(long, default_value = "1,32", value_delimiter = ',')]
    instructions_concurrency: Vec<usize>,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

/// The HPA sync period.
const HPA_PERIOD: Duration = Duration::from_secs(15);

fn urls(adapter: &Adapter, series: usize) -> Vec<String> {
    (0..series).map(|queue| adapter.url(queue)).collect()
}

/// N HPAs polling M series every 15 s: calls and metrics requested over the last minute.
async fn simulate_hpas(
    args: &Args,
    emulator: &Emulator,
    adapter: &Adapter,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
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
    Ok(())
}

/// One request path under test: an adapter configured for it, and how requests are sent.
struct RequestPath {
    name: &'static str,
    adapter: Adapter,
    client: reqwest::Client,
    target: Target,
    latency: Latency,
    throughput: Vec<Throughput>,
    /// (served in <= 1 ms, all) by the adapter during the latency phases.
    server: (u64, u64),
    /// The adapter's CPU time per request in the throughput phases, microseconds, per round.
    cpu_per_request: Vec<f64>,
}

impl RequestPath {
    fn median_throughput(&self) -> Throughput {
        let mut rounds = self.throughput.clone();
        rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        rounds[rounds.len() / 2]
    }

    fn median_cpu_per_request(&self) -> f64 {
        let mut rounds = self.cpu_per_request.clone();
        rounds.sort_by(f64::total_cmp);
        rounds[rounds.len() / 2]
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    if let Some(baseline) = &args.baseline_adapter {
        return compare(&args, baseline).await;
    }
    let dir = tempfile::tempdir()?;
    let emulator = Emulator::start().await?;
    seed(&emulator, args.series.max(args.many_series));
    let anonymous_flags: Vec<String> = ANONYMOUS_FLAGS.iter().map(|f| f.to_string()).collect();
    let bare = Adapter::start(
        &args.adapter,
        &dir.path().join("anonymous"),
        &emulator.endpoint_url(),
        &anonymous_flags,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = bare.rss_mib()?;
    println!(
        "# cloudwatch-metrics-adapter benchmark ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("idle RSS: {idle_rss:.1} MiB");

    let anonymous_client = load::client_speaking(None, args.concurrency, args.protocol)?;
    let anonymous_target = Target::new(urls(&bare, args.series));
    load::warm(&anonymous_client, &anonymous_target, 64).await?;
    if !args.simulate.is_zero() {
        simulate_hpas(&args, &emulator, &bare, &anonymous_client).await?;
    }

    // The aggregator's path: the front proxy's CA trusted from a file (as with the ConfigMap,
    // without needing one), its client certificate on every connection, the HPA controller's
    // identity in headers.
    let front_proxy = FrontProxy::new()?;
    let ca_file = dir.path().join("front-proxy-ca.pem");
    std::fs::write(&ca_file, &front_proxy.ca.pem)?;
    let kube = FakeKube::start(
        dir.path(),
        AccessPolicy::AllowUsers(HashSet::from([HPA_USER.to_string()])),
        Vec::new(),
    )
    .await?;
    let mut allow_all = front_proxy.adapter_flags(&ca_file);
    allow_all.extend([
        "--authorization-mode=AlwaysAllow".to_string(),
        "--watch-external-metrics=false".to_string(),
    ]);
    let mut delegated = front_proxy.adapter_flags(&ca_file);
    delegated.extend([
        format!("--kubeconfig={}", kube.kubeconfig.display()),
        "--authorization-mode=Delegated".to_string(),
        "--watch-external-metrics=false".to_string(),
    ]);
    let headers = Caller::hpa_controller().headers()?;
    let mut paths = vec![RequestPath {
        name: "anonymous (bare path)",
        client: anonymous_client.clone(),
        target: anonymous_target.clone(),
        adapter: bare,
        latency: Latency::empty()?,
        throughput: Vec::new(),
        server: (0, 0),
        cpu_per_request: Vec::new(),
    }];
    for (name, flags, subdirectory) in [
        ("front-proxy, AlwaysAllow", &allow_all, "front-proxy"),
        (
            "front-proxy, delegated (SubjectAccessReview)",
            &delegated,
            "delegated",
        ),
    ] {
        let adapter = Adapter::start(
            &args.adapter,
            &dir.path().join(subdirectory),
            &emulator.endpoint_url(),
            flags,
        )
        .await?;
        let client = load::client_speaking(
            Some(front_proxy.client.identity()?),
            args.concurrency,
            args.protocol,
        )?;
        let target = Target::new(urls(&adapter, args.series)).with_headers(headers.clone());
        load::warm(&client, &target, 64).await?;
        paths.push(RequestPath {
            name,
            adapter,
            client,
            target,
            latency: Latency::empty()?,
            throughput: Vec::new(),
            server: (0, 0),
            cpu_per_request: Vec::new(),
        });
    }

    // Rounds over the paths, interleaved: the same phases for each, in the same conditions.
    let reviews_before = kube.access_reviews();
    for _ in 0..args.rounds {
        for path in &mut paths {
            let before = path.adapter.server_histogram(&path.client).await?;
            let latency =
                load::fixed_rate(&path.client, &path.target, args.rate, args.phase).await?;
            let after = path.adapter.server_histogram(&path.client).await?;
            path.latency.merge(&latency)?;
            path.server.0 += after.0 - before.0;
            path.server.1 += after.1 - before.1;
            let cpu_before = path.adapter.cpu_time()?;
            let throughput =
                load::closed_loop(&path.client, &path.target, args.concurrency, args.phase).await;
            let cpu = path.adapter.cpu_time()? - cpu_before;
            let requests = throughput.per_second * args.phase.as_secs_f64();
            path.cpu_per_request
                .push(cpu.as_secs_f64() * 1e6 / requests.max(1.0));
            path.throughput.push(throughput);
        }
    }
    let reviews = kube.access_reviews() - reviews_before;

    println!();
    println!(
        "## request paths ({}): {} req/s for {} s, then closed loop with {} concurrent requests for {} s; {} interleaved rounds",
        args.protocol.name(),
        args.rate,
        args.phase.as_secs(),
        args.concurrency,
        args.phase.as_secs(),
        args.rounds
    );
    println!(
        "| path | p50 ms | p99 ms | max ms | server-side <= 1 ms | errors | peak req/s (median round) | peak vs anonymous | p99 vs anonymous | adapter CPU µs/request at peak | vs anonymous |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let base_peak = paths[0].median_throughput().per_second;
    let base_p99 = paths[0].latency.ms(0.99);
    let base_cpu = paths[0].median_cpu_per_request();
    for path in &paths {
        let peak = path.median_throughput();
        let errors = path.latency.errors + path.throughput.iter().map(|t| t.errors).sum::<u64>();
        let cpu = path.median_cpu_per_request();
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2}% | {} | {:.0} | {:.2}x | {:.2}x | {:.1} | {:+.1} |",
            path.name,
            path.latency.ms(0.5),
            path.latency.ms(0.99),
            path.latency.histogram.max() as f64 / 1000.0,
            100.0 * path.server.0 as f64 / path.server.1.max(1) as f64,
            errors,
            peak.per_second,
            peak.per_second / base_peak,
            path.latency.ms(0.99) / base_p99,
            cpu,
            cpu - base_cpu,
        );
    }
    let rounds: Vec<String> = paths
        .iter()
        .map(|p| {
            let each: Vec<String> = p
                .throughput
                .iter()
                .map(|t| format!("{:.0}", t.per_second))
                .collect();
            format!("{}: {}", p.name, each.join(", "))
        })
        .collect();
    println!("peak req/s per round: {}", rounds.join("; "));
    println!(
        "generator lag p99 (its own scheduling noise): {}",
        paths
            .iter()
            .map(|p| format!(
                "{} {:.3} ms",
                p.name,
                p.latency.lag.value_at_quantile(0.99) as f64 / 1000.0
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let delegated_requests = paths[2].latency.sent;
    println!(
        "SubjectAccessReviews during the rounds: {reviews} (for {delegated_requests}+ delegated requests: the review cache was warm)"
    );

    // Memory with many active series, on the bare adapter.
    let mut paths = paths.into_iter();
    let bare = paths.next().map(|p| p.adapter).expect("the bare path");
    for other in paths {
        other.adapter.stop().await?;
    }
    load::warm(
        &anonymous_client,
        &Target::new(urls(&bare, args.many_series)),
        64,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!();
    println!("## memory");
    println!(
        "RSS idle: {idle_rss:.1} MiB; with {} active series: {:.1} MiB",
        args.many_series,
        bare.rss_mib()?
    );
    bare.stop().await?;
    Ok(())
}

/// A request path as both builds are run for it: the adapter's flags, and how requests are sent.
struct PathSpec {
    name: &'static str,
    flags: Vec<String>,
    /// Requests carry the front proxy's certificate and the HPA controller's headers.
    aggregator: bool,
}

/// The request paths: anonymous, and the aggregator's with AlwaysAllow and with delegated
/// authorization (SubjectAccessReviews against `kube`, warm cache).
fn path_specs(
    front_proxy: &FrontProxy,
    ca_file: &std::path::Path,
    kube: &FakeKube,
) -> Vec<PathSpec> {
    let mut allow_all = front_proxy.adapter_flags(ca_file);
    allow_all.extend([
        "--authorization-mode=AlwaysAllow".to_string(),
        "--watch-external-metrics=false".to_string(),
    ]);
    let mut delegated = front_proxy.adapter_flags(ca_file);
    delegated.extend([
        format!("--kubeconfig={}", kube.kubeconfig.display()),
        "--authorization-mode=Delegated".to_string(),
        "--watch-external-metrics=false".to_string(),
    ]);
    vec![
        PathSpec {
            name: "anonymous (bare path)",
            flags: ANONYMOUS_FLAGS.iter().map(|f| f.to_string()).collect(),
            aggregator: false,
        },
        PathSpec {
            name: "front-proxy, AlwaysAllow",
            flags: allow_all,
            aggregator: true,
        },
        PathSpec {
            name: "front-proxy, delegated (SubjectAccessReview)",
            flags: delegated,
            aggregator: true,
        },
    ]
}

/// One build serving one path in the A/B.
struct Side {
    adapter: Adapter,
    client: reqwest::Client,
    target: Target,
    latency: Latency,
    throughput: Vec<f64>,
    cpu_per_request: Vec<f64>,
    errors: u64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A client and target for `spec` on `adapter`, over `urls` series.
fn side_client(
    args: &Args,
    spec: &PathSpec,
    front_proxy: &FrontProxy,
    adapter: &Adapter,
    series: usize,
) -> anyhow::Result<(reqwest::Client, Target)> {
    let identity = if spec.aggregator {
        Some(front_proxy.client.identity()?)
    } else {
        None
    };
    let client = load::client_speaking(identity, args.concurrency, args.protocol)?;
    let mut target = Target::new(urls(adapter, series));
    if spec.aggregator {
        target = target.with_headers(Caller::hpa_controller().headers()?);
    }
    Ok((client, target))
}

/// The A/B of two builds (see the module documentation).
async fn compare(args: &Args, baseline: &std::path::Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let emulator = Emulator::start().await?;
    seed(&emulator, args.series);
    let front_proxy = FrontProxy::new()?;
    let ca_file = dir.path().join("front-proxy-ca.pem");
    std::fs::write(&ca_file, &front_proxy.ca.pem)?;
    let kube = FakeKube::start(
        dir.path(),
        AccessPolicy::AllowUsers(HashSet::from([HPA_USER.to_string()])),
        Vec::new(),
    )
    .await?;
    let specs = path_specs(&front_proxy, &ca_file, &kube);
    let builds = [
        (args.candidate_name.as_str(), args.adapter.as_path()),
        (args.baseline_name.as_str(), baseline),
    ];
    println!(
        "# A/B: {} ({}) vs {} ({}), {}, {} cores",
        builds[0].0,
        builds[0].1.display(),
        builds[1].0,
        builds[1].1.display(),
        args.protocol.name(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    if args.instructions > 0 {
        count_instructions(args, &emulator, &front_proxy, &specs, &builds, dir.path()).await?;
    }

    // Every build serving every path, all at once, so each round measures them all in the same
    // minutes.
    let mut sides: Vec<[Side; 2]> = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let mut pair = Vec::new();
        for (build, (_, binary)) in builds.iter().enumerate() {
            let adapter = Adapter::start(
                binary,
                &dir.path().join(format!("ab-{index}-{build}")),
                &emulator.endpoint_url(),
                &spec.flags,
            )
            .await?;
            let (client, target) = side_client(args, spec, &front_proxy, &adapter, args.series)?;
            load::warm(&client, &target, 64).await?;
            pair.push(Side {
                adapter,
                client,
                target,
                latency: Latency::empty()?,
                throughput: Vec::new(),
                cpu_per_request: Vec::new(),
                errors: 0,
            });
        }
        let [candidate, baseline]: [Side; 2] = pair
            .try_into()
            .map_err(|_| anyhow::anyhow!("two builds per path"))?;
        sides.push([candidate, baseline]);
    }
    for round in 0..args.rounds {
        for pair in &mut sides {
            // Alternate which build goes first, so neither always gets the fresher minute.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for build in order {
                let side = &mut pair[build];
                let latency =
                    load::fixed_rate(&side.client, &side.target, args.rate, args.phase).await?;
                side.errors += latency.errors;
                side.latency.merge(&latency)?;
                let cpu_before = side.adapter.cpu_time()?;
                let throughput =
                    load::closed_loop(&side.client, &side.target, args.concurrency, args.phase)
                        .await;
                let cpu = side.adapter.cpu_time()? - cpu_before;
                let requests = throughput.per_second * args.phase.as_secs_f64();
                side.cpu_per_request
                    .push(cpu.as_secs_f64() * 1e6 / requests.max(1.0));
                side.throughput.push(throughput.per_second);
                side.errors += throughput.errors;
            }
        }
    }

    println!();
    println!(
        "## wall clock: {} req/s for {} s, then closed loop with {} concurrent requests for {} s; {} interleaved rounds",
        args.rate,
        args.phase.as_secs(),
        args.concurrency,
        args.phase.as_secs(),
        args.rounds
    );
    println!(
        "| path | build | p50 ms | p99 ms | errors | peak req/s (median round) | CPU µs/request (median round) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (spec, pair) in specs.iter().zip(&sides) {
        for ((name, _), side) in builds.iter().zip(pair) {
            println!(
                "| {} | {} | {:.3} | {:.3} | {} | {:.0} | {:.1} |",
                spec.name,
                name,
                side.latency.ms(0.5),
                side.latency.ms(0.99),
                side.errors,
                median(&side.throughput),
                median(&side.cpu_per_request),
            );
        }
    }
    println!();
    println!(
        "## ratios, {} / {} (each round compares the two builds measured minutes apart; the median round is shown)",
        builds[0].0, builds[1].0
    );
    println!("| path | peak req/s | CPU µs/request | p99 (all rounds) | peak ratio per round |");
    println!("|---|---|---|---|---|");
    for (spec, [candidate, baseline]) in specs.iter().zip(&sides) {
        let peak: Vec<f64> = candidate
            .throughput
            .iter()
            .zip(&baseline.throughput)
            .map(|(c, b)| c / b)
            .collect();
        let cpu: Vec<f64> = candidate
            .cpu_per_request
            .iter()
            .zip(&baseline.cpu_per_request)
            .map(|(c, b)| c / b)
            .collect();
        println!(
            "| {} | {:.2}x | {:.2}x | {:.2}x | {} |",
            spec.name,
            median(&peak),
            median(&cpu),
            candidate.latency.ms(0.99) / baseline.latency.ms(0.99),
            peak.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    for pair in sides {
        for side in pair {
            side.adapter.stop().await?;
        }
    }
    Ok(())
}

/// Instructions per request for every build and path, one adapter at a time under callgrind.
async fn count_instructions(
    args: &Args,
    emulator: &Emulator,
    front_proxy: &FrontProxy,
    specs: &[PathSpec],
    builds: &[(&str, &std::path::Path); 2],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        instructions::available().await,
        "--instructions needs valgrind and callgrind_control on PATH"
    );
    // Few series, all warm: the requests measured are answered from the table.
    const SERIES: usize = 16;
    const IDLE: Duration = Duration::from_secs(3);
    let mut rows = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        for &concurrency in &args.instructions_concurrency {
            let mut counts = Vec::new();
            for (build, (_, binary)) in builds.iter().enumerate() {
                let run = dir.join(format!("callgrind-{index}-{build}-{concurrency}"));
                std::fs::create_dir_all(&run)?;
                let adapter = Adapter::start_under(
                    &instructions::launcher(&run),
                    binary,
                    &run,
                    cwma_bench::adapter::DEFINITIONS,
                    &emulator.endpoint_url(),
                    &spec.flags,
                )
                .await?;
                let (client, target) = side_client(args, spec, front_proxy, &adapter, SERIES)?;
                // Warm: series fetched, connections and (delegated) review answers in place.
                load::warm(&client, &target, 1).await?;
                load::fixed_count(&client, &target, 200, concurrency).await?;
                let mut counter = instructions::Counter::new(adapter.pid(), &run);
                counter.take().await?;
                tokio::time::sleep(IDLE).await;
                let idle = counter.take().await?;
                let elapsed =
                    load::fixed_count(&client, &target, args.instructions, concurrency).await?;
                let total = counter.take().await?;
                adapter.stop().await?;
                counts.push(instructions::per_request(
                    total,
                    args.instructions,
                    elapsed,
                    idle,
                    IDLE,
                ));
            }
            rows.push((spec.name, concurrency, counts));
        }
    }
    println!();
    println!(
        "## instructions per request (callgrind, {} requests per build, path and concurrency; idle work subtracted)",
        args.instructions
    );
    println!(
        "| path | concurrency | {} | {} | ratio | idle instructions/s ({} / {}) |",
        builds[0].0, builds[1].0, builds[0].0, builds[1].0
    );
    println!("|---|---|---|---|---|---|");
    for (name, concurrency, counts) in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3}x | {:.0} / {:.0} |",
            name,
            concurrency,
            counts[0].instructions,
            counts[1].instructions,
            counts[0].instructions / counts[1].instructions,
            counts[0].idle_per_second,
            counts[1].idle_per_second,
        );
    }
    Ok(())
}
