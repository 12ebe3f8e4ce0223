//! The real binary as a process: flags and environment, `query`, readiness and SIGTERM drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudwatch_emulator::Emulator;
use common::{DEFINITIONS, minute, put};
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_cloudwatch-metrics-adapter");

fn adapter(emulator: &Emulator) -> Command {
    let mut command = Command::new(BINARY);
    configure(&mut command, emulator);
    command
}

/// The environment every adapter process here runs with.
fn configure(command: &mut Command, emulator: &Emulator) {
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret-test-key")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", emulator.endpoint_url())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // No cluster here: allow everyone (tests/auth.rs covers delegated auth) and serve the
        // definitions file only (tests/external_metrics.rs covers ExternalMetric objects).
        .env("AUTHORIZATION_MODE", "AlwaysAllow")
        .env("ANONYMOUS_AUTH", "true")
        .env("AUTHENTICATION_SKIP_LOOKUP", "true")
        .env("WATCH_EXTERNAL_METRICS", "false")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for(admin_port: u16, path: &str, status: u16, child: &mut Child) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(exit) = child.try_wait().unwrap() {
            panic!("adapter exited early: {exit}");
        }
        if let Ok(response) = client
            .get(format!("http://127.0.0.1:{admin_port}{path}"))
            .send()
            .await
            && response.status().as_u16() == status
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} did not answer {status} within 10 s");
}

#[tokio::test]
async fn query_prints_the_request_and_the_served_json() {
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(1),
        1.5,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics.yaml");
    std::fs::write(&config, DEFINITIONS).unwrap();

    let output = adapter(&emulator)
        .args(["query", "--config", config.to_str().unwrap()])
        .args(["--metric", "sqs-visible", "--selector", "QueueName=orders"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("# GetMetricData request (region us-east-1)"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""Value": "orders""#), "{stdout}");
    assert!(stdout.contains(r#""Stat": "Average""#), "{stdout}");
    assert!(stdout.contains(r#""value": "1500m""#), "{stdout}");

    // A selector the definition cannot honour fails, printing the Status the server would send.
    let output = adapter(&emulator)
        .args(["query", "--config", config.to_str().unwrap()])
        .args(["--metric", "sqs-visible", "--selector", "QueueName!=orders"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("uses operator \"!=\""), "{stderr}");

    // --dry-run never calls CloudWatch.
    let before = emulator.stats().get_metric_data.calls;
    let output = adapter(&emulator)
        .args(["query", "--dry-run", "--config", config.to_str().unwrap()])
        .args(["--metric", "sqs-visible", "--selector", "QueueName=orders"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    assert_eq!(emulator.stats().get_metric_data.calls, before);
}

#[tokio::test]
async fn invalid_flags_and_definitions_are_all_reported_before_listening() {
    let emulator = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics.yaml");
    std::fs::write(
        &config,
        "metrics:\n  - name: a\n    queries:\n      - id: A\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 45\n",
    )
    .unwrap();
    let output = adapter(&emulator)
        .args([
            "serve",
            "--tls-cert-file",
            "/nonexistent.pem",
            "--secure-port",
            "0",
            "--admin-port",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-cert-file is set without --tls-private-key-file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("/nonexistent.pem is not a readable file"),
        "{stderr}"
    );

    let output = adapter(&emulator)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--secure-port",
            "0",
            "--admin-port",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "has 3 problem(s)",
        "id \"A\" must start",
        "45 is not a period",
        "metricStat.stat is required",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?}: {stderr}");
    }
}

#[tokio::test]
async fn by_default_it_needs_a_cluster_and_says_how_to_run_without_one() {
    let emulator = Emulator::start().await.unwrap();
    let output = adapter(&emulator)
        .env_remove("AUTHORIZATION_MODE")
        .env_remove("ANONYMOUS_AUTH")
        .env_remove("AUTHENTICATION_SKIP_LOOKUP")
        .args([
            "serve",
            "--bind-address",
            "127.0.0.1",
            "--admin-bind-address",
            "127.0.0.1",
            "--secure-port",
            "0",
            "--admin-port",
            "0",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no in-cluster configuration"), "{stderr}");
    assert!(
        stderr.contains(
            "--authorization-mode=AlwaysAllow --anonymous-auth=true --authentication-skip-lookup"
        ),
        "{stderr}"
    );
}

/// A TCP relay in front of the emulator that holds CloudWatch's answers back while the test
/// says so: a value request waiting for its first fetch then stays in flight in the adapter for
/// exactly as long as the test wants, whatever the machine's speed.
struct HeldCloudWatch {
    /// The relay's `http://` endpoint, for `AWS_ENDPOINT_URL_CLOUDWATCH`.
    url: String,
    /// Bytes the adapter has sent through the relay.
    sent: tokio::sync::watch::Receiver<usize>,
    /// `true` lets answers through.
    open: tokio::sync::watch::Sender<bool>,
}

impl HeldCloudWatch {
    async fn start(emulator: &Emulator) -> HeldCloudWatch {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = emulator.addr();
        let (sent_tx, sent) = tokio::sync::watch::channel(0usize);
        let (open, open_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (sent_tx, mut open_rx) = (sent_tx.clone(), open_rx.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let requests = async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                            sent_tx.send_modify(|sent| *sent += n);
                            if server_write.write_all(&buffer[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let answers = async move {
                        let mut buffer = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                            if open_rx.wait_for(|open| *open).await.is_err()
                                || client_write.write_all(&buffer[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                    };
                    tokio::join!(requests, answers);
                });
            }
        });
        HeldCloudWatch { url, sent, open }
    }
}

#[tokio::test]
async fn sigterm_revokes_readiness_and_drains_in_flight_requests() {
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(1),
        3.0,
    );
    let mut cloudwatch = HeldCloudWatch::start(&emulator).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics.yaml");
    std::fs::write(&config, DEFINITIONS).unwrap();
    let (secure, admin) = (free_port(), free_port());
    let mut child = adapter(&emulator)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", &cloudwatch.url)
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args(["--admin-bind-address", "127.0.0.1"])
        .args([
            "--secure-port",
            &secure.to_string(),
            "--admin-port",
            &admin.to_string(),
        ])
        // The held call must outlive the drain's start by far, whatever the machine's load.
        .args(["--cloudwatch-timeout", "5m"])
        .args(["--shutdown-delay", "1s", "--shutdown-grace-period", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(admin, "/readyz", 200, &mut child).await;
    let before = *cloudwatch.sent.borrow();

    // A first request for a series waits for its first fetch, which CloudWatch holds.
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut in_flight = tokio::spawn(
        client
            .get(format!(
                "https://127.0.0.1:{secure}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders"
            ))
            .send(),
    );
    // The adapter has called CloudWatch for it: the request is in flight inside the adapter.
    tokio::time::timeout(
        Duration::from_secs(30),
        cloudwatch.sent.wait_for(|sent| *sent > before),
    )
    .await
    .expect("the request never reached CloudWatch")
    .unwrap();

    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    wait_for(admin, "/readyz", 503, &mut child).await;
    // After the shutdown delay the API port stops accepting: the drain has begun, with the
    // request still unanswered (its answer is held) and the process still there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", secure))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the API port never stopped accepting"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut in_flight)
            .await
            .is_err(),
        "answered while CloudWatch held its answer"
    );

    // CloudWatch answers: the drained request gets its value, and only then the process exits.
    cloudwatch.open.send(true).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["items"][0]["value"], "3");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("adapter did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn without_certificate_files_it_serves_a_self_signed_certificate() {
    let emulator = Emulator::start().await.unwrap();
    let (secure, admin) = (free_port(), free_port());
    let mut child = adapter(&emulator)
        .args([
            "serve",
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(admin, "/readyz", 200, &mut child).await;
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let response = client
        .get(format!(
            "https://127.0.0.1:{secure}/apis/external.metrics.k8s.io/v1beta1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["resources"], serde_json::json!([]));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn crd_prints_the_committed_custom_resource_definition() {
    let output = Command::new(BINARY).arg("crd").output().await.unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/cloudwatch-metrics-adapter/crds/externalmetrics.metrics.aws.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[tokio::test]
async fn watching_external_metrics_without_a_cluster_fails_saying_what_to_do() {
    let emulator = Emulator::start().await.unwrap();
    let output = adapter(&emulator)
        .env("WATCH_EXTERNAL_METRICS", "true")
        .args(["serve", "--secure-port", "0", "--admin-port", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the ExternalMetric watch needs the Kubernetes API"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--watch-external-metrics=false"),
        "{stderr}"
    );
}

#[tokio::test]
async fn out_of_range_flags_are_refused_naming_the_flag_and_the_range() {
    let emulator = Emulator::start().await.unwrap();
    for (flag, value) in [
        ("--max-value-age", "7000000000000000000s"),
        ("--cloudwatch-calls-per-second", "1e300"),
        ("--cloudwatch-calls-per-second", "NaN"),
        ("--shutdown-grace-period", "100000h"),
        ("--cloudwatch-timeout", "0s"),
        ("--tls-handshake-timeout", "3years"),
        ("--idle-timeout", "18446744073709551615s"),
        ("--max-connections", "0"),
        ("--http2-max-concurrent-streams", "4294967295"),
        ("--max-series", "99999999999999"),
    ] {
        let output = adapter(&emulator)
            .args([
                "serve",
                flag,
                value,
                "--secure-port",
                "0",
                "--admin-port",
                "0",
            ])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // clap's usage error: nothing was bound, nothing started.
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains("accepted range"),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Flags that are each in range but contradict each other are reported by validation.
    let output = adapter(&emulator)
        .args(["serve", "--request-timeout=2m", "--idle-timeout=1m"])
        .args(["--secure-port", "0", "--admin-port", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--request-timeout (2m) must be shorter than --idle-timeout (1m)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_connection_cap_above_the_open_files_limit_is_refused_at_start() {
    let emulator = Emulator::start().await.unwrap();
    let mut command = Command::new("sh");
    configure(&mut command, &emulator);
    // `ulimit -n` in sh sets the hard limit too, so the adapter cannot raise it.
    let output = command
        .args(["-c", "ulimit -n 600 && exec \"$0\" \"$@\"", BINARY])
        .args(["serve", "--max-connections", "1000"])
        .args(["--secure-port", "0", "--admin-port", "0"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-connections 1000 needs about 1256 open files"),
        "{stderr}"
    );
    assert!(stderr.contains("only 600"), "{stderr}");
    assert!(stderr.contains("at most 344"), "{stderr}");
}

/// Start the real binary serving a CA-signed certificate on free ports, with `extra` flags.
async fn start_serving(
    emulator: &Emulator,
    dir: &std::path::Path,
    extra: &[&str],
) -> (Child, u16, u16, common::TestCa) {
    let ca = common::TestCa::new("edge-ca");
    let (cert, key) = ca.leaf("adapter");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let config = dir.join("metrics.yaml");
    std::fs::write(&config, DEFINITIONS).unwrap();
    let (secure, admin) = (free_port(), free_port());
    let binary = std::env::var("ADAPTER_BINARY").unwrap_or_else(|_| BINARY.to_string());
    let mut command = Command::new(binary);
    configure(&mut command, emulator);
    let mut child = command
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--tls-cert-file", cert_path.to_str().unwrap()])
        .args(["--tls-private-key-file", key_path.to_str().unwrap()])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--admin-bind-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &secure.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .args(extra)
        // Connection spans and closes are logged at debug.
        .env("RUST_LOG", "info,cloudwatch_metrics_adapter::server=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(admin, "/readyz", 200, &mut child).await;
    (child, secure, admin, ca)
}

#[tokio::test]
async fn a_second_sigterm_aborts_the_drain() {
    let emulator = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, secure, admin, ca) =
        start_serving(&emulator, dir.path(), &["--shutdown-grace-period", "30m"]).await;
    // Requests whose responses can never be sent keep the drain busy for the whole 30 minutes.
    let address = format!("127.0.0.1:{secure}").parse().unwrap();
    let h2 = common::edge::connector(&ca.pem, &[b"h2"]);
    let holder = common::edge::zero_window_connection(
        address,
        &h2,
        5,
        "/apis/external.metrics.k8s.io/v1beta1",
    )
    .await;
    assert_eq!(holder.responses.len(), 5);

    let pid = child.id().unwrap().to_string();
    let term = || async {
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
    };
    term().await;
    // The admin port closes when the drain starts; the process stays, draining.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .get(format!("http://127.0.0.1:{admin}/livez"))
        .send()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "the drain did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before draining"
    );

    term().await;
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("a second SIGTERM did not stop the adapter promptly")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("a second signal aborted the drain"),
        "{stderr}"
    );
    // Connection logs carry the connection's id and peer address.
    assert!(stderr.contains("connection{id="), "{stderr}");
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

/// The issue's attack: 30 HTTP/2 connections opening 200 streams each and never opening their
/// receive window. The server's memory must stay bounded while they are open and come back
/// after they leave. `ADAPTER_BINARY` measures another build (e.g. target/release), and
/// `EDGE_FLOOD_FLAGS` adds flags (e.g. the pre-limits defaults) to compare; `--nocapture`
/// prints the numbers.
#[tokio::test]
async fn zero_window_http2_clients_do_not_grow_memory_without_bound() {
    let emulator = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = std::env::var("EDGE_FLOOD_FLAGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let (mut child, secure, admin, ca) = start_serving(&emulator, dir.path(), &extra).await;
    let pid = child.id().unwrap();
    let address = format!("127.0.0.1:{secure}").parse().unwrap();
    let h2 = common::edge::connector(&ca.pem, &[b"h2"]);
    // A real value request (answered from memory after the first fetch; noDataValue 0).
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-idle-is-zero?labelSelector=QueueName%3Dorders";
    // Warm up: one full request, so the baseline includes what serving itself needs.
    let warm = common::edge::zero_window_connection(address, &h2, 1, path).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_mib(pid);

    let mut flood = Vec::new();
    let mut streams = 0;
    for _ in 0..30 {
        let holder = common::edge::zero_window_connection(address, &h2, 200, path).await;
        streams += holder.responses.len();
        flood.push(holder);
    }
    let during = rss_mib(pid);
    drop(flood);
    // Wait until the server has seen every connection close.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = client
            .get(format!("http://127.0.0.1:{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // (A build from before the edge limits has no such metric: give it a moment instead.)
        if text.contains("cloudwatch_adapter_api_connections 0")
            || !text.contains("cloudwatch_adapter_api_connections")
        {
            break;
        }
        assert!(Instant::now() < deadline, "connections were not closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mib(pid);
    println!(
        "zero-window flood: {streams} streams held; RSS {baseline:.1} MiB before, {during:.1} MiB during, {after:.1} MiB after"
    );
    child.kill().await.unwrap();
    if extra.is_empty() {
        // With the default limits: 30 x 100 streams at most, each holding one small response.
        assert_eq!(streams, 3000);
        assert!(
            during - baseline < 64.0,
            "RSS grew from {baseline:.1} to {during:.1} MiB"
        );
        assert!(
            after - baseline < 24.0,
            "RSS stayed at {after:.1} MiB after the clients left (baseline {baseline:.1})"
        );
    }
}
