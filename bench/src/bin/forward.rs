//! Benchmark of forwarding to a delegate (issue 11), on the path users really take: requests sent
//! as kube-apiserver's aggregator sends them (front-proxy client certificate, the HPA
//! controller's `X-Remote-*` headers, HTTP/2), with delegated authorization by
//! SubjectAccessReview against a fake Kubernetes API.
//!
//! Two release adapters run as processes: the delegate (a real aggregated API server serving
//! `theirs-depth`) and the front (serving `ours-depth`, forwarding `theirs-*` to the delegate with
//! its ServiceAccount token, which the delegate checks by TokenReview). Everything listens on
//! 127.0.0.1 and stops by itself. The building blocks (certificates, the aggregator's requests,
//! the fake API server, the adapter process, the load generator) are the crate's shared modules.
//! In one run it reports:
//!
//! 1. Overhead: the same request for `theirs-depth`, direct to the delegate and through the
//!    front, as two streams at a fixed rate in the same seconds; p50/p99 of each, the difference
//!    and the ratio. Goal: forwarding adds at most 2 ms at p99.
//! 2. Isolation: p99 of our own metric at a fixed rate, alone, beside 1,000 requests/s of
//!    forwarded traffic through the same front, and (the control) beside as many requests for
//!    our own metric, with the front's CPU per request. Goal: forwarded traffic does not move
//!    our p99 more than any traffic of the same rate would.
//!
//! The machine is shared, so each comparison runs in rounds and the medians are reported.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use cloudwatch_emulator::Emulator;
use cwma_bench::adapter::{self, Adapter};
use cwma_bench::aggregator::{Caller, FrontProxy};
use cwma_bench::certs::Ca;
use cwma_bench::kube::{AccessPolicy, FakeKube};
use cwma_bench::load::{self, Latency, Target};

/// Benchmark forwarding to a delegate.
#[derive(Debug, Parser)]
struct Args {
    /// The adapter binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/cloudwatch-metrics-adapter")]
    adapter: PathBuf,
    /// Requests per second on each of the two paths in the overhead phase.
    #[arg(long, default_value_t = 200)]
    overhead_rate: u64,
    /// Requests per second for our own metric in the isolation phase.
    #[arg(long, default_value_t = 200)]
    own_rate: u64,
    /// Forwarded requests per second running beside it.
    #[arg(long, default_value_t = 1000)]
    forwarded_rate: u64,
    /// Length of each measured stream, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    phase: Duration,
    /// Rounds of each comparison (the medians are reported: the machine is shared).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

/// The front's ServiceAccount, as the delegate's TokenReview names it.
const FRONT_SA: &str =
    "system:serviceaccount:cloudwatch-metrics-adapter:cloudwatch-metrics-adapter";
/// The front's projected ServiceAccount token (a file, as in the pod).
const FRONT_TOKEN: &str = "front-service-account-token";
/// Queues (series) each metric is asked about, in turn.
const QUEUES: usize = 50;

/// One metric named `name` over the seeded queue depths.
fn definitions(name: &str) -> String {
    adapter::DEFINITIONS.replace("name: sqs-depth", &format!("name: {name}"))
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The front's CPU time while `work` runs, in seconds.
async fn with_cpu<T>(front: &Adapter, work: impl Future<Output = T>) -> anyhow::Result<(T, f64)> {
    let before = front.cpu_time()?;
    let result = work.await;
    Ok((result, (front.cpu_time()? - before).as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let emulator = Emulator::start().await?;
    adapter::seed(&emulator, QUEUES);

    // The cluster: reviews allowed; the front's token is a ServiceAccount token.
    let kube = FakeKube::start(
        dir.path(),
        AccessPolicy::AllowAll,
        vec![(
            FRONT_TOKEN.to_string(),
            FRONT_SA.to_string(),
            vec![
                "system:serviceaccounts".to_string(),
                "system:authenticated".to_string(),
            ],
        )],
    )
    .await?;
    let front_proxy = FrontProxy::new()?;
    let front_proxy_ca = write(dir.path(), "front-proxy-ca.pem", &front_proxy.ca.pem)?;
    // The delegate's serving CA, which the front verifies it against (as KEDA's kedaorg-certs).
    let serving = Ca::new("serving-ca")?;
    let serving_ca = write(dir.path(), "serving-ca.pem", &serving.pem)?;
    let token = write(dir.path(), "token", FRONT_TOKEN)?;
    let flags = |name: &str| -> anyhow::Result<Vec<String>> {
        let pair = serving.server(name)?;
        let mut flags = front_proxy.adapter_flags(&front_proxy_ca);
        flags.extend([
            format!("--kubeconfig={}", kube.kubeconfig.display()),
            "--authorization-mode=Delegated".to_string(),
            "--watch-external-metrics=false".to_string(),
            format!(
                "--tls-cert-file={}",
                write(dir.path(), &format!("{name}.crt"), &pair.cert)?.display()
            ),
            format!(
                "--tls-private-key-file={}",
                write(dir.path(), &format!("{name}.key"), &pair.key)?.display()
            ),
        ]);
        Ok(flags)
    };

    let cloudwatch = emulator.endpoint_url();
    let delegate = Adapter::start_with(
        &args.adapter,
        &dir.path().join("theirs"),
        &definitions("theirs-depth"),
        &cloudwatch,
        &flags("theirs")?,
    )
    .await?;
    let mut front_flags = flags("ours")?;
    front_flags.extend([
        format!("--delegate-url={}", delegate.base),
        "--delegate-name=delegate".to_string(),
        format!("--delegate-ca-file={}", serving_ca.display()),
        format!("--delegate-token-file={}", token.display()),
        "--delegate-name-pattern=^theirs-".to_string(),
    ]);
    let front = Adapter::start_with(
        &args.adapter,
        &dir.path().join("ours"),
        &definitions("ours-depth"),
        &cloudwatch,
        &front_flags,
    )
    .await?;

    let aggregator = load::client(Some(front_proxy.client.identity()?), 64)?;
    let headers = Caller::hpa_controller().headers()?;
    let target = |adapter: &Adapter, metric: &str, offset: usize| {
        Target::new(
            (0..QUEUES)
                .map(|q| adapter.value_url(metric, (q + offset) % QUEUES))
                .collect(),
        )
        .with_headers(headers.clone())
    };
    let direct = target(&delegate, "theirs-depth", 0);
    let forwarded = target(&front, "theirs-depth", 0);
    let own = target(&front, "ours-depth", 0);
    let other_own = target(&front, "ours-depth", QUEUES / 2);
    // Every series on both adapters, every review cache, the front's connection to the delegate.
    for target in [&direct, &forwarded, &own] {
        load::warm(&aggregator, target, 8).await?;
    }
    let warm = load::fixed_rate(
        &aggregator,
        &forwarded,
        args.forwarded_rate,
        Duration::from_secs(3),
    )
    .await?;
    if warm.errors > 0 {
        bail!("{} errors while warming up", warm.errors);
    }

    println!(
        "# forwarding benchmark ({} cores; both adapters, the load generator and the fake API server share them)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "Requests as the aggregator sends them: front-proxy client certificate, the HPA controller's X-Remote-* headers, HTTP/2; delegated authorization (SubjectAccessReview, cached). The front forwards with its ServiceAccount token (TokenReview at the delegate, cached) and verifies the delegate against its CA."
    );

    // Phase 1: overhead. Both paths in the same seconds (two streams at once), in rounds.
    println!();
    println!(
        "## overhead: {} req/s direct to the delegate and {} req/s through the front at the same time, {} rounds of {} s",
        args.overhead_rate,
        args.overhead_rate,
        args.rounds,
        args.phase.as_secs()
    );
    println!(
        "| round | direct p50 ms | direct p99 ms | forwarded p50 ms | forwarded p99 ms | added at p99 ms | p99 ratio | generator lag p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut added, mut ratios) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (straight, through) = tokio::join!(
            load::fixed_rate(&aggregator, &direct, args.overhead_rate, args.phase),
            load::fixed_rate(&aggregator, &forwarded, args.overhead_rate, args.phase),
        );
        let (straight, through) = (straight?, through?);
        let delta = through.ms(0.99) - straight.ms(0.99);
        let ratio = through.ms(0.99) / straight.ms(0.99);
        added.push(delta);
        ratios.push(ratio);
        println!(
            "| {round} | {:.3} | {:.3} | {:.3} | {:.3} | {delta:+.3} | {ratio:.2}x | {:.3} | {} |",
            straight.ms(0.5),
            straight.ms(0.99),
            through.ms(0.5),
            through.ms(0.99),
            lag_ms(&[&straight, &through]),
            straight.errors + through.errors
        );
    }
    let median_added = median(&mut added);
    println!(
        "median: forwarding adds {median_added:+.3} ms at p99 (ratio {:.2}x); goal: at most 2 ms -> {}",
        median(&mut ratios),
        if median_added <= 2.0 {
            "met"
        } else {
            "NOT met"
        }
    );

    // Phase 2: our own metric alone, beside forwarded traffic, and beside as much traffic for our
    // own metric (the control: what any such load costs on two shared cores), in rounds.
    println!();
    println!(
        "## isolation: p99 of our own metric at {} req/s, alone / beside {} req/s forwarded / beside {} req/s of our own metric (control), {} rounds of {} s each",
        args.own_rate,
        args.forwarded_rate,
        args.forwarded_rate,
        args.rounds,
        args.phase.as_secs()
    );
    println!(
        "| round | alone p99 ms | beside forwarded p99 ms | beside own (control) p99 ms | forwarded traffic p99 ms | front CPU µs/request, forwarded run / control run | generator lag p99 ms | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let requests = (args.own_rate + args.forwarded_rate) as f64 * args.phase.as_secs_f64();
    let (mut vs_alone, mut vs_control) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let alone = load::fixed_rate(&aggregator, &own, args.own_rate, args.phase).await?;
        let ((beside, background), forwarded_cpu) = with_cpu(&front, async {
            tokio::join!(
                load::fixed_rate(&aggregator, &own, args.own_rate, args.phase),
                load::fixed_rate(&aggregator, &forwarded, args.forwarded_rate, args.phase),
            )
        })
        .await?;
        let ((control, control_background), own_cpu) = with_cpu(&front, async {
            tokio::join!(
                load::fixed_rate(&aggregator, &own, args.own_rate, args.phase),
                load::fixed_rate(&aggregator, &other_own, args.forwarded_rate, args.phase),
            )
        })
        .await?;
        let (beside, background, control, control_background) =
            (beside?, background?, control?, control_background?);
        vs_alone.push(beside.ms(0.99) / alone.ms(0.99));
        vs_control.push(beside.ms(0.99) / control.ms(0.99));
        let runs = [&alone, &beside, &background, &control, &control_background];
        println!(
            "| {round} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} / {:.0} | {:.3} | {} |",
            alone.ms(0.99),
            beside.ms(0.99),
            control.ms(0.99),
            background.ms(0.99),
            forwarded_cpu * 1e6 / requests,
            own_cpu * 1e6 / requests,
            lag_ms(&runs),
            runs.iter().map(|run| run.errors).sum::<u64>()
        );
    }
    println!(
        "median ratio of our p99 beside {} req/s forwarded: {:.2}x vs alone, {:.2}x vs beside as many requests for our own metric",
        args.forwarded_rate,
        median(&mut vs_alone),
        median(&mut vs_control)
    );

    println!();
    println!("the front's forwarding counters after the run:");
    let plain = reqwest::Client::new();
    for line in front
        .metrics(&plain)
        .await?
        .lines()
        .filter(|l| l.starts_with("cloudwatch_adapter_delegate_requests_total"))
    {
        println!("  {line}");
    }
    front.stop().await?;
    delegate.stop().await?;
    drop(kube);
    Ok(())
}

/// The worst p99 of the load generator's own lag behind its schedule across `runs`: when it is
/// large, the generator (not the adapters) was starved of CPU.
fn lag_ms(runs: &[&Latency]) -> f64 {
    runs.iter()
        .map(|run| run.lag.value_at_quantile(0.99) as f64 / 1000.0)
        .fold(0.0, f64::max)
}
