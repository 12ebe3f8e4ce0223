//! Shared helpers for real-socket tests: generated certificates, the emulator, a running server.
//! The fake Kubernetes API server is the workspace's `fake-kube` crate.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod edge;
pub mod fake_keda;
pub mod sqs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use clap::Parser;
use cloudwatch_emulator::{Datum, Emulator};
use cloudwatch_metrics_adapter::app::{self, Listeners};
use cloudwatch_metrics_adapter::config::{Cli, Command, ServeConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Install the process-wide rustls provider, as `main` does.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A test CA that signs serving certificates for 127.0.0.1 / localhost.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and key (PEM) for localhost and 127.0.0.1, with `cn` as common name.
    pub fn leaf(&self, cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate and key (PEM) as kube issues them: CN = user, O = group, extended
    /// key usage clientAuth. (rcgen keeps one value per attribute type, so at most one group;
    /// several O attributes are covered by the subject parser's unit tests.)
    pub fn client(&self, cn: &str, groups: &[&str]) -> (String, String) {
        assert!(groups.len() <= 1, "rcgen writes at most one O");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate (CN `cn`, clientAuth) valid from `not_before` to `not_after`.
    pub fn client_valid(
        &self,
        cn: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (String, String) {
        let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(seconds(not_before)).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(seconds(not_after)).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Write the CA certificate to `dir/name` and return the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}

/// The CAs of a cluster: front proxy, client, and one nobody trusts.
pub struct Cas {
    pub front_proxy: TestCa,
    pub client: TestCa,
    pub wrong: TestCa,
    pub dir: tempfile::TempDir,
}

impl Cas {
    pub fn new() -> Cas {
        Cas {
            front_proxy: TestCa::new("front-proxy-ca"),
            client: TestCa::new("kubernetes"),
            wrong: TestCa::new("front-proxy-ca"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Flags giving both CAs as files (no ConfigMap lookup).
    pub fn flags(&self, fake: &fake_kube::Served, anonymous: bool) -> Vec<String> {
        vec![
            fake.kubeconfig_arg(),
            "--authentication-skip-lookup".to_string(),
            format!(
                "--requestheader-client-ca-file={}",
                path_str(
                    &self
                        .front_proxy
                        .write(self.dir.path(), "front-proxy-ca.pem")
                )
            ),
            "--requestheader-allowed-names=front-proxy-client".to_string(),
            format!(
                "--client-ca-file={}",
                path_str(&self.client.write(self.dir.path(), "client-ca.pem"))
            ),
            format!("--anonymous-auth={anonymous}"),
        ]
    }
}

/// SDK configuration pointing at the emulator with static test credentials.
pub async fn emulator_sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "AKIDTEST",
            "secret-test-key",
            None,
            None,
            "test",
        ))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(2)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(2))
                .build(),
        )
        .load()
        .await
}

/// The start of the current minute minus `minutes_ago` minutes.
pub fn minute(minutes_ago: u64) -> SystemTime {
    // One base minute per test process: a minute boundary passing between seeding and asserting
    // (or between two puts meant for one bucket) must not change what a test expects.
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    });
    UNIX_EPOCH + Duration::from_secs((base - minutes_ago) * 60)
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Seed one datapoint.
pub fn put(
    emulator: &Emulator,
    namespace: &str,
    metric: &str,
    dims: &[(&str, &str)],
    at: SystemTime,
    value: f64,
) {
    emulator.put(Datum {
        namespace: namespace.to_string(),
        metric_name: metric.to_string(),
        dimensions: dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timestamp: at,
        value,
        unit: Some("Count".to_string()),
    });
}

/// A running adapter on 127.0.0.1:0 with its certificates and a stop switch.
pub struct TestServer {
    pub secure: SocketAddr,
    pub admin: SocketAddr,
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Start with `definitions` (YAML) against `emulator`, serving a CA-signed certificate.
    pub async fn start(definitions: &str, emulator: &Emulator) -> TestServer {
        Self::start_with(definitions, emulator, &[]).await
    }

    /// As `start`, with extra `serve` flags (on top of [`LOCAL_AUTH`]).
    pub async fn start_with(definitions: &str, emulator: &Emulator, extra: &[&str]) -> TestServer {
        let mut flags = LOCAL_AUTH.to_vec();
        flags.extend_from_slice(extra);
        Self::start_with_auth(definitions, emulator, &flags).await
    }

    /// As `start`, with exactly these extra flags: the caller decides authentication and
    /// authorization.
    pub async fn start_with_auth(
        definitions: &str,
        emulator: &Emulator,
        extra: &[&str],
    ) -> TestServer {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test-ca");
        let (cert, key) = ca.leaf("first");
        let config_path = dir.path().join("metrics.yaml");
        std::fs::write(&config_path, definitions).unwrap();
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let config = serve_config_with_auth(&config_path, &cert_path, &key_path, extra);
        Self::run(config, emulator, ca, dir).await
    }

    /// Start with a prepared configuration.
    pub async fn run(
        config: ServeConfig,
        emulator: &Emulator,
        ca: TestCa,
        dir: tempfile::TempDir,
    ) -> TestServer {
        let server = Self::spawn(config, emulator, ca, dir, None).await;
        server.wait_ready().await;
        server
    }

    /// Start with `definitions` and `extra` flags, watching ExternalMetric objects through
    /// `kube` (a mocked API server); does not wait for readiness.
    pub async fn start_with_kube(
        definitions: &str,
        emulator: &Emulator,
        extra: &[&str],
        kube: kube::Client,
    ) -> TestServer {
        install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test-ca");
        let (cert, key) = ca.leaf("first");
        let config_path = dir.path().join("metrics.yaml");
        std::fs::write(&config_path, definitions).unwrap();
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let mut flags = vec!["--watch-external-metrics=true"];
        flags.extend_from_slice(extra);
        let config = serve_config(&config_path, &cert_path, &key_path, &flags);
        Self::spawn(config, emulator, ca, dir, Some(kube)).await
    }

    async fn spawn(
        config: ServeConfig,
        emulator: &Emulator,
        ca: TestCa,
        dir: tempfile::TempDir,
        kube: Option<kube::Client>,
    ) -> TestServer {
        let secure = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let secure_addr = secure.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let sdk = emulator_sdk_config(&emulator.endpoint_url()).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = Listeners { secure, admin };
        let shutdown = async {
            let _ = stopped.await;
        };
        // Without a given client, `serve` builds one from --kubeconfig when a flag needs it.
        let task = match kube {
            Some(kube) => tokio::spawn(app::serve_with_kube(
                config,
                sdk,
                Some(kube),
                listeners,
                shutdown,
            )),
            None => tokio::spawn(app::serve(config, sdk, listeners, shutdown)),
        };
        TestServer {
            secure: secure_addr,
            admin: admin_addr,
            ca,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `/readyz`: status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        let response = reqwest::Client::new()
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready within 5 s");
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.secure.port())
    }

    /// An HTTPS client trusting the test CA.
    pub fn client(&self) -> reqwest::Client {
        client_trusting(&self.ca.pem).build().unwrap()
    }

    /// The adapter's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample in `/metrics` (`name{labels}` exactly as exposed), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// An HTTPS client presenting a client certificate (a new one each time: a new handshake).
    pub fn client_with_certificate(&self, cert_pem: &str, key_pem: &str) -> reqwest::Client {
        let identity =
            reqwest::Identity::from_pem(format!("{cert_pem}{key_pem}").as_bytes()).unwrap();
        client_trusting(&self.ca.pem)
            .identity(identity)
            .build()
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client()
            .get(format!("{}{path}", self.base()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap();
        (status, body)
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

/// Wait (bounded) until `condition` holds, polling every 10 ms of tokio's clock (so it also
/// works on paused time).
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn client_trusting(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
}

/// Flags for a run without a cluster: every caller is allowed, credentials or not.
pub const LOCAL_AUTH: [&str; 3] = [
    "--authorization-mode=AlwaysAllow",
    "--anonymous-auth=true",
    "--authentication-skip-lookup",
];

/// A `serve` configuration without a cluster ([`LOCAL_AUTH`]) plus `extra` flags.
pub fn serve_config(config: &Path, cert: &Path, key: &Path, extra: &[&str]) -> ServeConfig {
    let mut flags = LOCAL_AUTH.to_vec();
    flags.extend_from_slice(extra);
    serve_config_with_auth(config, cert, key, &flags)
}

/// A `serve` configuration with exactly `extra` as further flags.
pub fn serve_config_with_auth(
    config: &Path,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> ServeConfig {
    let mut argv: Vec<String> = [
        "cloudwatch-metrics-adapter",
        "serve",
        "--aws-region",
        "us-east-1",
        "--tls-reload-interval",
        "200ms",
        "--shutdown-grace-period",
        "5s",
        // No cluster here: tests that need ExternalMetric objects pass a mocked client.
        "--watch-external-metrics=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(["--config".into(), path_str(config)]);
    argv.extend(["--tls-cert-file".into(), path_str(cert)]);
    argv.extend(["--tls-private-key-file".into(), path_str(key)]);
    argv.extend(extra.iter().map(|s| s.to_string()));
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(config) => config,
        _ => unreachable!(),
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// The path of a downloaded tool (scripts/fetch-tools.sh puts them in ./tools).
pub fn tool(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(relative);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-tools.sh (scripts/test.sh does it for you)",
        path.display()
    );
    path
}

/// The definitions most tests use: the SQS flagship with a placeholder, a math expression,
/// a percentile, and the two no-data behaviours.
pub const DEFINITIONS: &str = r#"
metrics:
  - name: sqs-visible
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions:
              - name: QueueName
                value: "${QueueName}"
          period: 60
          stat: Average
          unit: Count
  - name: sqs-backlog
    queries:
      - id: visible
        returnData: false
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Maximum
      - id: inflight
        returnData: false
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesNotVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Maximum
      - id: backlog
        expression: "visible + inflight"
        label: Backlog
  - name: api-latency-p90
    queries:
      - id: latency
        metricStat:
          metric:
            namespace: Shop/API
            metricName: Latency
          period: 60
          stat: p90
  - name: sqs-idle-is-zero
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
