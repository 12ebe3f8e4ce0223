//! Benchmark of forwarding to a delegate (issue 11), on the path users really take: requests sent
//! as kube-apiserver's aggregator sends them (front-proxy client certificate, X-Remote-* headers,
//! HTTP/2), with delegated authorization by SubjectAccessReview against a fake Kubernetes API.
//!
//! Two release adapters run as processes: the delegate (a real aggregated API server serving
//! `theirs-depth`) and the front (serving `ours-depth`, forwarding `theirs-*` to the delegate with
//! its ServiceAccount token, which the delegate checks by TokenReview). Everything listens on
//! 127.0.0.1 and stops by itself. In one run it reports:
//!
//! 1. Overhead: the same request for `theirs-depth`, direct to the delegate and through the
//!    front, as two streams at a fixed rate in the same seconds; p50/p99 of each, the difference
//!    and the ratio. Goal: forwarding adds at most 2 ms at p99.
//! 2. Isolation: p99 of our own metric at a fixed rate, alone, beside 1,000 requests/s of
//!    forwarded traffic through the same front, and (the control) beside as many requests for
//!    another of our own metrics, with the front's CPU per request. Goal: forwarded traffic does
//!    not move our p99 more than any traffic of the same rate would.
//!
//! The machine is shared, so each comparison runs in rounds and the medians are reported.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use cloudwatch_emulator::{Datum, Emulator};
use hdrhistogram::Histogram;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

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

const HPA: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
const FRONT_SA: &str =
    "system:serviceaccount:cloudwatch-metrics-adapter:cloudwatch-metrics-adapter";
const FRONT_TOKEN: &str = "front-service-account-token";
const ADAPTER_TOKEN: &str = "adapter-kubeconfig-token";
const QUEUES: usize = 50;

fn definitions(name: &str) -> String {
    format!(
        r#"
metrics:
  - name: {name}
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{{name: QueueName, value: "${{QueueName}}"}}]
          period: 60
          stat: Average
"#
    )
}

/// A CA that signs serving and client certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// (certificate, key) PEM for 127.0.0.1, or a client certificate with `cn`.
    fn sign(&self, cn: &str, client: bool) -> anyhow::Result<(String, String)> {
        let names = if client {
            Vec::new()
        } else {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        };
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if client {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The Kubernetes API as an aggregated server sees it: TokenReview and SubjectAccessReview
/// (everything allowed; the adapters cache the answers, as kube's delegating servers do).
async fn start_fake_kube(ca: &Ca) -> anyhow::Result<SocketAddr> {
    let (cert, key) = ca.sign("kube-apiserver", false)?;
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(access_review),
        );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                        .await;
                }
            });
        }
    });
    Ok(addr)
}

fn review_answer(body: &Bytes, headers: &HeaderMap, status: Value) -> Response {
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {ADAPTER_TOKEN}"))
    {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let mut review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    review["status"] = status;
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        review.to_string(),
    )
        .into_response()
}

async fn token_review(headers: HeaderMap, body: Bytes) -> Response {
    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = if review["spec"]["token"] == FRONT_TOKEN {
        json!({"authenticated": true, "user": {"username": FRONT_SA, "uid": "uid-front",
               "groups": ["system:serviceaccounts", "system:authenticated"]}})
    } else {
        json!({"user": {}, "error": "invalid bearer token"})
    };
    review_answer(&body, &headers, status)
}

async fn access_review(headers: HeaderMap, body: Bytes) -> Response {
    review_answer(&body, &headers, json!({"allowed": true, "reason": "bench"}))
}

struct Adapter {
    child: Child,
    base: String,
    admin: String,
    pid: u32,
}

impl Adapter {
    /// CPU seconds the process has used (user + system), from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// The adapter's own counters for forwarded requests, one line each.
    async fn delegate_counters(&self) -> Vec<String> {
        let text = match reqwest::get(format!("{}/metrics", self.admin)).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|l| l.starts_with("cloudwatch_adapter_delegate_requests_total"))
            .map(str::to_string)
            .collect()
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Start the adapter with delegated authentication against the fake API server.
async fn start_adapter(
    binary: &Path,
    dir: &Path,
    name: &str,
    emulator: &Emulator,
    serving: &Ca,
    extra: &[String],
) -> anyhow::Result<Adapter> {
    let (cert, key) = serving.sign(name, false)?;
    let config = write(
        dir,
        &format!("{name}.yaml"),
        &definitions(&format!("{name}-depth")),
    )?;
    let (secure, admin) = (free_port()?, free_port()?);
    let mut command = Command::new(binary);
    command
        .args(["serve", "--config"])
        .arg(&config)
        .arg(format!(
            "--tls-cert-file={}",
            write(dir, &format!("{name}.crt"), &cert)?.display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            write(dir, &format!("{name}.key"), &key)?.display()
        ))
        .args(["--bind-address=127.0.0.1", "--admin-bind-address=127.0.0.1"])
        .arg(format!("--secure-port={secure}"))
        .arg(format!("--admin-port={admin}"))
        .arg(format!("--kubeconfig={}", dir.join("kubeconfig").display()))
        .arg("--authentication-skip-lookup")
        .arg(format!(
            "--requestheader-client-ca-file={}",
            dir.join("front-proxy-ca.pem").display()
        ))
        .arg("--requestheader-allowed-names=front-proxy-client")
        .arg("--watch-external-metrics=false")
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", emulator.endpoint_url())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let child = command.spawn().with_context(|| {
        format!(
            "cannot start {} (build it with cargo build --release)",
            binary.display()
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
            bail!("adapter {name} not ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Adapter {
        child,
        base: format!("https://127.0.0.1:{secure}"),
        admin: format!("http://127.0.0.1:{admin}"),
        pid,
    })
}

fn seed(emulator: &Emulator) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 60
        * 60;
    for queue in 0..QUEUES {
        for minutes_ago in 1..=3u64 {
            emulator.put(Datum {
                namespace: "AWS/SQS".into(),
                metric_name: "ApproximateNumberOfMessagesVisible".into(),
                dimensions: vec![("QueueName".into(), format!("q{queue}"))],
                timestamp: UNIX_EPOCH + Duration::from_secs(now - minutes_ago * 60),
                value: queue as f64,
                unit: Some("Count".into()),
            });
        }
    }
}

fn url(base: &str, metric: &str, queue: usize) -> String {
    format!(
        "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=QueueName%3Dq{queue}"
    )
}

/// The aggregator's request for the HPA.
async fn aggregator_get(client: &reqwest::Client, url: &str) -> bool {
    match client
        .get(url)
        .header("X-Remote-User", HPA)
        .header("X-Remote-Group", "system:serviceaccounts")
        .header("X-Remote-Group", "system:serviceaccounts:kube-system")
        .header("X-Remote-Group", "system:authenticated")
        .header("Accept", "application/vnd.kubernetes.protobuf, */*")
        .send()
        .await
    {
        Ok(response) if response.status() == 200 => response.bytes().await.is_ok(),
        _ => false,
    }
}

/// One open-loop stream: `rate` requests per second to `urls` (round robin) for `length`,
/// latency measured from each send. Returns (latencies in µs, errors).
async fn stream(
    client: reqwest::Client,
    urls: Vec<String>,
    rate: u64,
    length: Duration,
    record: bool,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    // Tokio's timer resolution is 1 ms: send rate/1000 per tick, or one every few ticks.
    let (tick, per_tick) = if rate >= 1000 {
        (Duration::from_millis(1), rate / 1000)
    } else {
        (Duration::from_micros(1_000_000 / rate.max(1)), 1)
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + length;
    let mut sent = 0usize;
    while Instant::now() < end {
        ticker.tick().await;
        for _ in 0..per_tick {
            let (client, url, tx) = (client.clone(), urls[sent % urls.len()].clone(), tx.clone());
            sent += 1;
            tokio::spawn(async move {
                let start = Instant::now();
                let ok = aggregator_get(&client, &url).await;
                let micros = start.elapsed().as_micros() as u64;
                let _ = tx.send(ok.then_some(micros));
            });
        }
    }
    drop(tx);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    while let Some(result) = rx.recv().await {
        match result {
            Some(micros) if record => histogram.record(micros.max(1))?,
            Some(_) => {}
            None => errors += 1,
        }
    }
    Ok((histogram, errors))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("cwma-bench-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let emulator = Emulator::start().await?;
    seed(&emulator);

    let kube_ca = Ca::new("fake-kube-ca")?;
    let front_proxy = Ca::new("front-proxy-ca")?;
    let serving = Ca::new("serving-ca")?;
    let kube = start_fake_kube(&kube_ca).await?;
    let kube_ca_path = write(&dir, "kube-ca.pem", &kube_ca.pem)?;
    write(
        &dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://{kube}\n    certificate-authority: {}\nusers:\n- name: adapter\n  user:\n    token: {ADAPTER_TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\ncurrent-context: fake\n",
            kube_ca_path.display()
        ),
    )?;
    write(&dir, "front-proxy-ca.pem", &front_proxy.pem)?;
    let serving_ca = write(&dir, "serving-ca.pem", &serving.pem)?;
    let token = write(&dir, "token", FRONT_TOKEN)?;

    let delegate = start_adapter(&args.adapter, &dir, "theirs", &emulator, &serving, &[]).await?;
    let front = start_adapter(
        &args.adapter,
        &dir,
        "ours",
        &emulator,
        &serving,
        &[
            format!("--delegate-url={}", delegate.base),
            "--delegate-name=delegate".to_string(),
            format!("--delegate-ca-file={}", serving_ca.display()),
            format!("--delegate-token-file={}", token.display()),
            "--delegate-name-pattern=^theirs-".to_string(),
        ],
    )
    .await?;

    // The aggregator: front-proxy client certificate, HTTP/2, trusting the serving CA.
    let (cert, key) = front_proxy.sign("front-proxy-client", true)?;
    let aggregator = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(serving.pem.as_bytes())?])
        .identity(reqwest::Identity::from_pem(
            format!("{cert}{key}").as_bytes(),
        )?)
        .timeout(Duration::from_secs(10))
        .build()?;

    let direct_urls: Vec<String> = (0..QUEUES)
        .map(|q| url(&delegate.base, "theirs-depth", q))
        .collect();
    let forwarded_urls: Vec<String> = (0..QUEUES)
        .map(|q| url(&front.base, "theirs-depth", q))
        .collect();
    let own_urls: Vec<String> = (0..QUEUES)
        .map(|q| url(&front.base, "ours-depth", q))
        .collect();
    // Warm every series on both adapters, and every review cache.
    for url in direct_urls.iter().chain(&forwarded_urls).chain(&own_urls) {
        if !aggregator_get(&aggregator, url).await {
            bail!("warm-up request failed: {url}");
        }
    }
    let (_, warm_errors) = stream(
        aggregator.clone(),
        forwarded_urls.clone(),
        args.forwarded_rate,
        Duration::from_secs(3),
        false,
    )
    .await?;
    if warm_errors > 0 {
        bail!("{warm_errors} errors while warming up");
    }

    println!(
        "# forwarding benchmark ({} cores; both adapters, the load generator and the fake API server share them)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "Requests as the aggregator sends them: front-proxy client certificate, X-Remote-User/Group, HTTP/2; delegated authorization (SubjectAccessReview, cached). The front forwards with its ServiceAccount token (TokenReview at the delegate, cached)."
    );

    // Phase 1: overhead. Both paths in the same seconds (interleaved streams), in rounds.
    println!();
    println!(
        "## overhead: {} req/s direct to the delegate and {} req/s through the front at the same time, {} rounds of {} s",
        args.overhead_rate,
        args.overhead_rate,
        args.rounds,
        args.phase.as_secs()
    );
    println!(
        "| round | direct p50 ms | direct p99 ms | forwarded p50 ms | forwarded p99 ms | added at p99 ms | p99 ratio | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut added = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let (direct, forwarded) = tokio::join!(
            stream(
                aggregator.clone(),
                direct_urls.clone(),
                args.overhead_rate,
                args.phase,
                true
            ),
            stream(
                aggregator.clone(),
                forwarded_urls.clone(),
                args.overhead_rate,
                args.phase,
                true
            ),
        );
        let ((direct, direct_errors), (forwarded, forwarded_errors)) = (direct?, forwarded?);
        let delta = ms(&forwarded, 0.99) - ms(&direct, 0.99);
        let ratio = ms(&forwarded, 0.99) / ms(&direct, 0.99);
        added.push(delta);
        ratios.push(ratio);
        println!(
            "| {round} | {:.3} | {:.3} | {:.3} | {:.3} | {delta:+.3} | {ratio:.2}x | {} |",
            ms(&direct, 0.5),
            ms(&direct, 0.99),
            ms(&forwarded, 0.5),
            ms(&forwarded, 0.99),
            direct_errors + forwarded_errors
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
    // own metrics (the control: what any 1,000 req/s on the shared connection costs), in rounds.
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
        "| round | alone p99 ms | beside forwarded p99 ms | beside own (control) p99 ms | forwarded traffic p99 ms | front CPU us/request: forwarded / own | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    let other_own: Vec<String> = (0..QUEUES)
        .map(|q| url(&front.base, "ours-depth", (q + QUEUES / 2) % QUEUES))
        .collect();
    let requests = (args.own_rate + args.forwarded_rate) as f64 * args.phase.as_secs_f64();
    let (mut vs_alone, mut vs_control) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (alone, alone_errors) = stream(
            aggregator.clone(),
            own_urls.clone(),
            args.own_rate,
            args.phase,
            true,
        )
        .await?;
        let cpu_before = front.cpu_seconds();
        let (beside, background) = tokio::join!(
            stream(
                aggregator.clone(),
                own_urls.clone(),
                args.own_rate,
                args.phase,
                true
            ),
            stream(
                aggregator.clone(),
                forwarded_urls.clone(),
                args.forwarded_rate,
                args.phase,
                true
            ),
        );
        let forwarded_cpu = front.cpu_seconds() - cpu_before;
        let ((beside, beside_errors), (background, background_errors)) = (beside?, background?);
        let cpu_before = front.cpu_seconds();
        let (control, control_background) = tokio::join!(
            stream(
                aggregator.clone(),
                own_urls.clone(),
                args.own_rate,
                args.phase,
                true
            ),
            stream(
                aggregator.clone(),
                other_own.clone(),
                args.forwarded_rate,
                args.phase,
                false
            ),
        );
        let own_cpu = front.cpu_seconds() - cpu_before;
        let ((control, control_errors), (_, control_background_errors)) =
            (control?, control_background?);
        vs_alone.push(ms(&beside, 0.99) / ms(&alone, 0.99));
        vs_control.push(ms(&beside, 0.99) / ms(&control, 0.99));
        println!(
            "| {round} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} / {:.0} | {} |",
            ms(&alone, 0.99),
            ms(&beside, 0.99),
            ms(&control, 0.99),
            ms(&background, 0.99),
            forwarded_cpu * 1e6 / requests,
            own_cpu * 1e6 / requests,
            alone_errors
                + beside_errors
                + background_errors
                + control_errors
                + control_background_errors
        );
    }
    println!(
        "median ratio of our p99 beside {} req/s forwarded: {:.2}x vs alone, {:.2}x vs beside as many requests for our own metric",
        args.forwarded_rate,
        median(&mut vs_alone),
        median(&mut vs_control)
    );

    println!();
    println!("front's forwarding counters after the run:");
    for line in front.delegate_counters().await {
        println!("  {line}");
    }
    let (mut front, mut delegate) = (front, delegate);
    front.child.kill().await?;
    delegate.child.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
