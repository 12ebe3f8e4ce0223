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
    command
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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metrics.yaml");
    std::fs::write(&config, DEFINITIONS).unwrap();
    let (secure, admin) = (free_port(), free_port());
    let mut child = adapter(&emulator)
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
        .args(["--shutdown-delay", "1s", "--shutdown-grace-period", "10s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(admin, "/readyz", 200, &mut child).await;

    // A slow CloudWatch makes the request still in flight when SIGTERM arrives.
    emulator.faults().set_latency(Duration::from_millis(1500));
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let in_flight = tokio::spawn(
        client
            .get(format!(
                "https://127.0.0.1:{secure}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders"
            ))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    wait_for(admin, "/readyz", 503, &mut child).await;
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
