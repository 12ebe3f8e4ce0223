//! Several adapter replicas as processes with leader election, for the high-availability
//! benchmark: the fake Kubernetes API served over HTTPS (Leases, TokenReview and
//! SubjectAccessReview), one ServiceAccount token and kubeconfig per replica (as each pod has its
//! own projected token, and so a fault can cut off one replica), a serving CA the replicas' peer
//! links verify each other with, and the aggregator's front-proxy CA for requests as
//! kube-apiserver sends them (authorized by SubjectAccessReview against the fake).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::aggregator::{FrontProxy, HPA_USER};
use crate::certs::Ca;
use crate::scrape::Scrape;

/// The namespace of the Lease (and of the adapter's ServiceAccount).
pub const NAMESPACE: &str = "bench-ha";
/// The ServiceAccount every replica runs as: TokenReview names it, and it may update the Lease.
pub const ADAPTER_USER: &str = "system:serviceaccount:bench-ha:cloudwatch-metrics-adapter";
/// The name the replicas' serving certificate carries (`--peer-server-name`).
const SERVER_NAME: &str = "localhost";

/// Leader-election timing, as the `--leader-elect-*` flags take it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--leader-elect-lease-duration` (whole seconds).
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's defaults, which the adapter's flags default to: 15 s, 10 s, 2 s.
    pub fn production() -> Timing {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The cluster around the replicas: the fake API server, certificates, and the definitions.
#[derive(Debug)]
pub struct HaCluster {
    /// The fake Kubernetes API (its faults cut off one replica's token).
    pub kube: fake_kube::Served,
    /// The aggregator's CA and client certificate.
    pub front_proxy: FrontProxy,
    dir: PathBuf,
    binary: PathBuf,
    cloudwatch_url: String,
    timing: Timing,
    extra_flags: Vec<String>,
    next: AtomicUsize,
}

/// A running replica; killed when dropped.
#[derive(Debug)]
pub struct Replica {
    /// Unique within the cluster, in start order.
    pub id: usize,
    /// Its pod name (`POD_NAME`), `ha-<id>`.
    pub name: String,
    /// Its ServiceAccount token (what a partition cuts off).
    pub token: String,
    /// `https://127.0.0.1:<secure port>`.
    pub base: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Child,
    pid: u32,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn path_arg(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

impl HaCluster {
    /// Start the fake API server and write certificates and `definitions` into `dir`. Replicas
    /// run `binary` against the CloudWatch at `cloudwatch_url` with `timing`, and `extra_flags`.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        definitions: &str,
        cloudwatch_url: &str,
        timing: Timing,
        extra_flags: &[String],
    ) -> anyhow::Result<HaCluster> {
        std::fs::create_dir_all(dir)?;
        let fake = fake_kube::FakeKube::new();
        // Only the adapter's ServiceAccount may update its Lease (what a peer must prove), and the
        // HPA controller may read external metrics.
        fake.allow(ADAPTER_USER, "leases");
        fake.allow_user(HPA_USER);
        let kube = fake
            .serve()
            .await
            .context("starting the fake Kubernetes API server")?;
        let serving = Ca::new("adapter-serving-ca")?;
        let certificate = serving.server(SERVER_NAME)?;
        std::fs::write(dir.join("serving-ca.pem"), &serving.pem)?;
        std::fs::write(dir.join("tls.crt"), &certificate.cert)?;
        std::fs::write(dir.join("tls.key"), &certificate.key)?;
        let front_proxy = FrontProxy::new()?;
        std::fs::write(dir.join("front-proxy-ca.pem"), &front_proxy.ca.pem)?;
        std::fs::write(dir.join("metrics.yaml"), definitions)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(HaCluster {
            kube,
            front_proxy,
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            cloudwatch_url: cloudwatch_url.to_string(),
            timing,
            extra_flags: extra_flags.to_vec(),
            next: AtomicUsize::new(0),
        })
    }

    /// Start a new replica (a new pod: new name, new token) and wait until `/readyz` is 200.
    pub async fn replica(&self) -> anyhow::Result<Replica> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let name = format!("ha-{id}");
        let token = format!("{name}-service-account-token");
        self.kube.add_token(
            &token,
            ADAPTER_USER,
            "uid-cloudwatch-metrics-adapter",
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{NAMESPACE}"),
                "system:authenticated",
            ],
        );
        let kubeconfig = self
            .kube
            .kubeconfig_for(&token)
            .context("writing a replica's kubeconfig")?;
        let token_file = self.dir.join(format!("{name}.token"));
        std::fs::write(&token_file, &token)?;
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let (secure, admin) = (free_port()?, free_port()?);
        let file = |name: &str| self.dir.join(name);
        let duration = |d: Duration| format!("{}ms", d.as_millis());
        let child = Command::new(&self.binary)
            .args(["serve", "--config", path_arg(&file("metrics.yaml"))?])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &secure.to_string()])
            .args(["--admin-bind-address", "127.0.0.1"])
            .args(["--admin-port", &admin.to_string()])
            .args(["--tls-cert-file", path_arg(&file("tls.crt"))?])
            .args(["--tls-private-key-file", path_arg(&file("tls.key"))?])
            .args(["--kubeconfig", path_arg(&kubeconfig)?])
            // The aggregator's path: its front-proxy certificate is trusted from a file (as
            // from the ConfigMap, without needing one), every request is authorized by a
            // SubjectAccessReview.
            .args([
                "--authentication-skip-lookup",
                &format!(
                    "--requestheader-client-ca-file={}",
                    path_arg(&file("front-proxy-ca.pem"))?
                ),
                "--requestheader-allowed-names=front-proxy-client",
                "--authorization-mode=Delegated",
                "--watch-external-metrics=false",
            ])
            .args([
                "--leader-elect",
                "--leader-elect-resource-namespace",
                NAMESPACE,
            ])
            .args([
                "--leader-elect-lease-duration",
                &format!("{}s", self.timing.lease_duration.as_secs()),
            ])
            .args([
                "--leader-elect-renew-deadline",
                &duration(self.timing.renew_deadline),
            ])
            .args([
                "--leader-elect-retry-period",
                &duration(self.timing.retry_period),
            ])
            .args(["--peer-advertise-address", &format!("127.0.0.1:{secure}")])
            .args(["--peer-server-name", SERVER_NAME])
            .args(["--peer-ca-file", path_arg(&file("serving-ca.pem"))?])
            .args(["--peer-token-file", path_arg(&token_file)?])
            .args(&self.extra_flags)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_CLOUDWATCH", &self.cloudwatch_url)
            .env("POD_NAME", &name)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with cargo build --release)",
                    self.binary.display()
                )
            })?;
        let pid = child.id().context("the replica exited at once")?;
        let mut replica = Replica {
            id,
            name,
            token,
            base: format!("https://127.0.0.1:{secure}"),
            admin: format!("http://127.0.0.1:{admin}"),
            log,
            child,
            pid,
        };
        replica.wait_ready(Duration::from_secs(30)).await?;
        Ok(replica)
    }
}

impl Replica {
    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.admin)).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "replica {} exited at start ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("replica {} not ready within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Send SIGTERM: the replica resigns (releases the Lease) and drains.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.pid);
        Ok(())
    }

    /// Send SIGKILL: nothing is released.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill().context("SIGKILL")
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Its `/metrics`, parsed.
    pub async fn scrape(&self, client: &reqwest::Client) -> anyhow::Result<Scrape> {
        scrape(client, &self.admin).await
    }
}

/// The `/metrics` of the admin port at `admin` (`http://host:port`), parsed.
pub async fn scrape(client: &reqwest::Client, admin: &str) -> anyhow::Result<Scrape> {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Scrape::parse(&text))
}
