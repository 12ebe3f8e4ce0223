//! The adapter under test: the release binary started as a process on 127.0.0.1, with the
//! emulator as its CloudWatch and whatever authentication flags a benchmark needs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cloudwatch_emulator::{Datum, Emulator};
use tokio::process::{Child, Command};

/// Flags for running without a cluster: anonymous callers allowed everything, no ConfigMap
/// lookup, no ExternalMetric watch (the bare path).
pub const ANONYMOUS_FLAGS: &[&str] = &[
    "--authorization-mode=AlwaysAllow",
    "--anonymous-auth=true",
    "--authentication-skip-lookup",
    "--watch-external-metrics=false",
];

/// One definition every benchmark reads: SQS queue depth by queue name.
pub const DEFINITIONS: &str = r#"
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

/// Three minutes of `ApproximateNumberOfMessagesVisible` for queues `q0` to `q<series - 1>`,
/// what [`DEFINITIONS`] reads.
pub fn seed(emulator: &Emulator, series: usize) {
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

/// A running adapter process; killed when dropped.
#[derive(Debug)]
pub struct Adapter {
    child: Child,
    /// `https://127.0.0.1:<secure port>`.
    pub base: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
    pid: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Adapter {
    /// Start `binary` with [`DEFINITIONS`] (written into `dir`) against the CloudWatch at
    /// `cloudwatch_url`, with `flags`, and wait until `/readyz` answers 200.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        cloudwatch_url: &str,
        flags: &[String],
    ) -> anyhow::Result<Adapter> {
        Self::start_with(binary, dir, DEFINITIONS, cloudwatch_url, flags).await
    }

    /// [`Adapter::start`] with definitions of the benchmark's own.
    pub async fn start_with(
        binary: &Path,
        dir: &Path,
        definitions: &str,
        cloudwatch_url: &str,
        flags: &[String],
    ) -> anyhow::Result<Adapter> {
        Self::start_under(&[], binary, dir, definitions, cloudwatch_url, flags).await
    }

    /// [`Adapter::start_with`], run under `launcher` (a tool and its arguments, e.g.
    /// valgrind; empty: the binary itself). A launched adapter gets longer to become ready.
    pub async fn start_under(
        launcher: &[String],
        binary: &Path,
        dir: &Path,
        definitions: &str,
        cloudwatch_url: &str,
        flags: &[String],
    ) -> anyhow::Result<Adapter> {
        std::fs::create_dir_all(dir)?;
        let config: PathBuf = dir.join("metrics.yaml");
        std::fs::write(&config, definitions)?;
        let (secure, admin) = (free_port()?, free_port()?);
        let mut command = match launcher.split_first() {
            Some((tool, arguments)) => {
                let mut command = Command::new(tool);
                command.args(arguments).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&config)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--admin-bind-address",
                "127.0.0.1",
            ])
            .args(["--secure-port", &secure.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--max-series", "200000"])
            .args(flags)
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch_url)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with cargo build --release)",
                    binary.display()
                )
            })?;
        let pid = child.id().context("adapter exited")?;
        let mut adapter = Adapter {
            child,
            base: format!("https://127.0.0.1:{secure}"),
            admin: format!("http://127.0.0.1:{admin}"),
            pid,
        };
        let ready_within = if launcher.is_empty() {
            Duration::from_secs(20)
        } else {
            Duration::from_secs(180)
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + ready_within;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", adapter.admin)).send().await
                && response.status() == 200
            {
                return Ok(adapter);
            }
            if let Some(status) = adapter.child.try_wait()? {
                bail!("the adapter exited at start ({status}); its flags: {flags:?}");
            }
            if Instant::now() > deadline {
                bail!("adapter not ready within {} s", ready_within.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id (of the launcher, when there is one: valgrind runs the adapter in its
    /// own process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory, MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        Ok(kib / 1024.0)
    }

    /// CPU time the process has used so far (user + system, all threads), from
    /// `/proc/<pid>/stat` in clock ticks (USER_HZ, 100 per second on Linux).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .map(|&i| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        Ok(Duration::from_millis(ticks * 10))
    }

    /// The adapter's `/metrics` text.
    pub async fn metrics(&self, client: &reqwest::Client) -> anyhow::Result<String> {
        Ok(client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The sum of the samples of `/metrics` whose line starts with `series` (a name, or a name
    /// with its labels).
    pub async fn metric_sum(&self, client: &reqwest::Client, series: &str) -> anyhow::Result<f64> {
        Ok(self
            .metrics(client)
            .await?
            .lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// (value requests served in <= 1 ms, all value requests) from the adapter's own histogram.
    pub async fn server_histogram(&self, client: &reqwest::Client) -> anyhow::Result<(u64, u64)> {
        let text = self.metrics(client).await?;
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

    /// The value request an HPA makes for queue `q<queue>`.
    pub fn url(&self, queue: usize) -> String {
        self.value_url("sqs-depth", queue)
    }

    /// The value request an HPA makes for `metric` of queue `q<queue>`.
    pub fn value_url(&self, metric: &str, queue: usize) -> String {
        format!(
            "{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=QueueName%3Dq{queue}",
            self.base
        )
    }

    /// Stop the process.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
