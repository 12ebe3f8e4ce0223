//! The real kubectl (`get --raw`), as users debug with it, against the real server.
//! Needs ./tools from scripts/fetch-tools.sh; built only with `--features peer-tests`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use cloudwatch_emulator::Emulator;
use common::{DEFINITIONS, TestServer, minute, put, rfc3339, tool};
use tokio::process::Command;

async fn kubectl(server: &TestServer, path: &str) -> (i32, String, String) {
    let ca = server.dir.path().join("kubectl-ca.pem");
    std::fs::write(&ca, &server.ca.pem).unwrap();
    let output = Command::new(tool("kubectl/kubectl"))
        .env("HOME", server.dir.path())
        .env("KUBECONFIG", server.dir.path().join("no-kubeconfig"))
        .arg(format!("--server={}", server.base()))
        .arg(format!("--certificate-authority={}", ca.display()))
        .arg("--token=test-token")
        .args(["get", "--raw", path])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_get_raw_reads_values_discovery_and_errors() {
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(2),
        1250.0,
    );
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (code, stdout, stderr) = kubectl(
        &server,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders",
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["kind"], "ExternalMetricValueList");
    assert_eq!(body["items"][0]["value"], "1250");
    assert_eq!(body["items"][0]["timestamp"], rfc3339(minute(2)));

    let (code, stdout, stderr) = kubectl(&server, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(code, 0, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["resources"].as_array().unwrap().len(), 4);

    let (code, _, stderr) = kubectl(
        &server,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-orders",
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "Error from server (NotFound): the server could not find the metric sqs-orders for namespace default"
        ),
        "{stderr}"
    );

    let (code, _, stderr) = kubectl(
        &server,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%21%3Dorders",
    )
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Error from server (BadRequest):"),
        "{stderr}"
    );
    assert!(stderr.contains("QueueName"), "{stderr}");
    server.stop().await.unwrap();
}
