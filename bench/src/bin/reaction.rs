//! Reaction-time and cost benchmark: how long after a queue's depth changes at a real SQS (moto)
//! the adapter serves the new value, for a native SQS definition and for the CloudWatch
//! definition of the same queue, in one run; and what each costs per queue per month.
//!
//! CloudWatch's `AWS/SQS` metrics are modelled as AWS publishes them: the queue's depth is
//! sampled (every second here), the samples of each one-minute bucket are published together,
//! `--publish-delay` (default 60 s) after the bucket closes, into the CloudWatch emulator the
//! adapter reads. The CloudWatch definition is the example's (period 60, Average).
//!
//! Everything listens on 127.0.0.1 and stops by itself.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use clap::Parser;
use cloudwatch_emulator::{Datum, Emulator};
use cwma_bench::adapter::Adapter;
use cwma_bench::aggregator::{Caller, FrontProxy, HPA_USER};
use cwma_bench::kube::{AccessPolicy, FakeKube};
use tokio::process::{Child, Command};

/// Reaction time and cost: native SQS against CloudWatch's AWS/SQS metrics.
#[derive(Debug, Parser)]
struct Args {
    /// The adapter binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/cloudwatch-metrics-adapter")]
    adapter: PathBuf,
    /// moto_server (scripts/moto.sh installs it).
    #[arg(
        long,
        env = "MOTO_SERVER",
        default_value = ".venv-moto/bin/moto_server"
    )]
    moto_server: PathBuf,
    /// Queues, each changed once at a different moment of the minute.
    #[arg(long, default_value_t = 4)]
    queues: usize,
    /// How long after a one-minute bucket closes CloudWatch publishes it (seconds).
    #[arg(long, default_value_t = 60)]
    publish_delay: u64,
    /// Give up on a reaction after this many seconds.
    #[arg(long, default_value_t = 360)]
    timeout: u64,
}

/// A queue, and how long its native and CloudWatch definitions took to serve the new depth.
type Trial = (String, Option<Duration>, Option<Duration>);

const DEFINITIONS: &str = r#"
metrics:
  # Native: GetQueueAttributes, default refreshInterval (15s).
  - name: native
    sqs:
      queue: "${QueueName}"
  # CloudWatch: the AWS/SQS metric of the same queue, as in the examples.
  - name: cloudwatch
    window: 5m
    noDataValue: 0
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

async fn wait_http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_moto(path: &PathBuf) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let child = Command::new(path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} (run scripts/moto.sh)", path.display()))?;
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{endpoint}/moto-api/"), Duration::from_secs(20)).await?;
    Ok((child, endpoint))
}

/// The value the adapter at `base` serves for `metric` of `queue`, if it serves one.
async fn read_value(
    client: &reqwest::Client,
    base: &str,
    metric: &str,
    queue: &str,
) -> Option<f64> {
    let url = format!(
        "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=QueueName%3D{queue}"
    );
    let body: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    body["items"][0]["value"].as_str()?.parse().ok()
}

/// Samples every queue's depth each second and publishes each minute's samples to the emulator
/// `delay` after the minute ends, as AWS publishes `AWS/SQS` metrics.
async fn publish_like_aws(
    sqs: aws_sdk_sqs::Client,
    queues: Vec<(String, String)>,
    emulator: Arc<Emulator>,
    delay: Duration,
) {
    let mut pending: BTreeMap<u64, Vec<(String, SystemTime, f64)>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = SystemTime::now();
        for (name, url) in &queues {
            if let Ok(out) = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .send()
                .await
                && let Some(depth) = out
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    })
                    .and_then(|v| v.parse::<f64>().ok())
            {
                pending
                    .entry(epoch(now) / 60 * 60)
                    .or_default()
                    .push((name.clone(), now, depth));
            }
        }
        let due: Vec<u64> = pending
            .keys()
            .copied()
            .filter(|bucket| epoch(now) >= bucket + 60 + delay.as_secs())
            .collect();
        for bucket in due {
            for (name, at, depth) in pending.remove(&bucket).unwrap_or_default() {
                emulator.put(Datum {
                    namespace: "AWS/SQS".into(),
                    metric_name: "ApproximateNumberOfMessagesVisible".into(),
                    dimensions: vec![("QueueName".into(), name)],
                    timestamp: at,
                    value: depth,
                    unit: Some("Count".into()),
                });
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let (_moto, moto) = start_moto(&args.moto_server).await?;
    let emulator = Arc::new(Emulator::start().await?);
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&moto)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let mut queues = Vec::new();
    for i in 0..args.queues {
        let name = format!("bench-{i}");
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await?
            .queue_url()
            .context("no queue URL")?
            .to_string();
        queues.push((name, url));
    }
    let publisher = tokio::spawn(publish_like_aws(
        sqs.clone(),
        queues.clone(),
        emulator.clone(),
        Duration::from_secs(args.publish_delay),
    ));
    let dir = std::env::temp_dir().join(format!("cwma-reaction-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The path HPAs take: kube-apiserver's aggregator with its front-proxy client certificate
    // and the HPA controller's identity headers, authorized by SubjectAccessReview (a fake API
    // server answers them).
    let front_proxy = FrontProxy::new()?;
    let ca_file = dir.join("front-proxy-ca.pem");
    std::fs::write(&ca_file, &front_proxy.ca.pem)?;
    let kube = FakeKube::start(
        &dir,
        AccessPolicy::AllowUsers(HashSet::from([HPA_USER.to_string()])),
        Vec::new(),
    )
    .await?;
    let mut flags = front_proxy.adapter_flags(&ca_file);
    flags.extend([
        format!("--kubeconfig={}", kube.kubeconfig.display()),
        "--authorization-mode=Delegated".to_string(),
        "--watch-external-metrics=false".to_string(),
        "--sqs-endpoint-url".to_string(),
        moto.clone(),
    ]);
    let adapter = Adapter::start_with(
        &args.adapter,
        &dir,
        DEFINITIONS,
        &emulator.endpoint_url(),
        &flags,
    )
    .await?;
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .identity(front_proxy.client.identity()?)
        .default_headers(Caller::hpa_controller().headers()?)
        .build()?;
    println!(
        "# reaction time and cost: native SQS vs CloudWatch AWS/SQS ({} queues)",
        args.queues
    );
    println!();
    println!(
        "model: depth sampled every 1 s, each one-minute bucket published {} s after it closes; CloudWatch definition period 60 s, Average; native definition refreshInterval 15 s (default)",
        args.publish_delay
    );
    // Warm both series of every queue (empty: both read 0), as HPAs would.
    for (name, _) in &queues {
        for metric in ["native", "cloudwatch"] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while read_value(&client, &adapter.base, metric, name).await != Some(0.0) {
                if Instant::now() > deadline {
                    bail!("{metric} {name} never read 0");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let cost_start = (
        Instant::now(),
        adapter
            .metric_sum(
                &client,
                "cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"}",
            )
            .await?,
        adapter
            .metric_sum(
                &client,
                "cloudwatch_adapter_estimated_cost_dollars_total{source=\"cloudwatch\"}",
            )
            .await?,
    );
    // Each queue's depth changes at its own moment, spread over a minute, so the measurements
    // cover where a change falls relative to the refresh grid and the buckets.
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut trials = tokio::task::JoinSet::new();
    for (i, (name, url)) in queues.iter().cloned().enumerate() {
        let (sqs, client, results) = (sqs.clone(), client.clone(), results.clone());
        let base = adapter.base.clone();
        // Spread over the minute (CloudWatch's buckets) and over the 15 s refresh grid alike:
        // a spacing of a quarter minute alone would put every change at the same grid phase.
        let offset =
            Duration::from_millis((60_000 + 15_000) * i as u64 / args.queues as u64 + 7_300);
        let timeout = Duration::from_secs(args.timeout);
        trials.spawn(async move {
            tokio::time::sleep(offset).await;
            let messages = 10 * (i + 1);
            for m in 0..messages {
                sqs.send_message()
                    .queue_url(&url)
                    .message_body(format!("m{m}"))
                    .send()
                    .await?;
            }
            let changed = Instant::now();
            let mut native = None;
            let mut cloudwatch = None;
            while (native.is_none() || cloudwatch.is_none()) && changed.elapsed() < timeout {
                for (metric, slot) in [("native", &mut native), ("cloudwatch", &mut cloudwatch)] {
                    if slot.is_none()
                        && read_value(&client, &base, metric, &name).await == Some(messages as f64)
                    {
                        *slot = Some(changed.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name, native, cloudwatch));
            anyhow::Ok(())
        });
    }
    while let Some(done) = trials.join_next().await {
        done??;
    }
    let elapsed = cost_start.0.elapsed().as_secs_f64();
    let sqs_dollars = adapter
        .metric_sum(
            &client,
            "cloudwatch_adapter_estimated_cost_dollars_total{source=\"sqs\"}",
        )
        .await?
        - cost_start.1;
    let cw_dollars = adapter
        .metric_sum(
            &client,
            "cloudwatch_adapter_estimated_cost_dollars_total{source=\"cloudwatch\"}",
        )
        .await?
        - cost_start.2;
    publisher.abort();
    adapter.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);

    let mut results = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    results.sort();
    println!();
    println!("| queue | native SQS reaction | CloudWatch AWS/SQS reaction |");
    println!("|---|---|---|");
    let show = |d: &Option<Duration>| {
        d.map_or("timeout".to_string(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    for (name, native, cloudwatch) in &results {
        println!("| {name} | {} | {} |", show(native), show(cloudwatch));
    }
    let worst = |pick: fn(&Trial) -> Option<Duration>| {
        results
            .iter()
            .map(pick)
            .try_fold(Duration::ZERO, |acc, d| d.map(|d| acc.max(d)))
    };
    println!(
        "| worst | {} | {} |",
        show(&worst(|r| r.1)),
        show(&worst(|r| r.2))
    );
    // Cost per queue per month at the default cadence: measured over this run, extrapolated.
    let month = 30.0 * 86_400.0;
    let per_queue = |dollars: f64| dollars / elapsed * month / args.queues as f64;
    let (native_month, cw_month) = (per_queue(sqs_dollars), per_queue(cw_dollars));
    println!();
    println!("| per queue per month (measured over {elapsed:.0} s, default cadence) | dollars |");
    println!("|---|---|");
    println!("| native SQS, GetQueueAttributes every 15 s | ${native_month:.3} |");
    println!("| CloudWatch GetMetricData every 60 s | ${cw_month:.3} |");
    println!(
        "| ratio | {:.1}x cheaper natively (at the same 15 s cadence GetMetricData would cost 4x more again: {:.1}x) |",
        cw_month / native_month,
        cw_month * 4.0 / native_month
    );
    println!(
        "goal: native reaction <= refreshInterval + 1 s = 16 s: {}",
        if worst(|r| r.1).is_some_and(|d| d <= Duration::from_secs(16)) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
