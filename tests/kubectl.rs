//! The real kubectl (`get --raw`), as users debug with it, against the real server.
//! Needs ./tools from scripts/fetch-tools.sh; built only with `--features peer-tests`.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use cloudwatch_emulator::Emulator;
use common::{DEFINITIONS, TestCa, TestServer, minute, path_str, put, rfc3339, tool};
use fake_kube::FakeKube;
use tokio::process::Command;

async fn kubectl(server: &TestServer, path: &str) -> (i32, String, String) {
    kubectl_as(server, &["--token=test-token"], path).await
}

/// kubectl with the given credential flags.
async fn kubectl_as(
    server: &TestServer,
    credentials: &[&str],
    path: &str,
) -> (i32, String, String) {
    let ca = server.dir.path().join("kubectl-ca.pem");
    std::fs::write(&ca, &server.ca.pem).unwrap();
    let output = Command::new(tool("kubectl/kubectl"))
        .env("HOME", server.dir.path())
        .env("KUBECONFIG", server.dir.path().join("no-kubeconfig"))
        .arg(format!("--server={}", server.base()))
        .arg(format!("--certificate-authority={}", ca.display()))
        .args(credentials)
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
    // Computed once: a minute may turn during the test.
    let at = minute(2);
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        at,
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
    assert_eq!(body["items"][0]["timestamp"], rfc3339(at));

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

#[tokio::test]
async fn kubectl_with_a_client_certificate_and_with_a_token_is_authorized_by_the_cluster() {
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(2),
        7.0,
    );
    let fake = FakeKube::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client_ca = TestCa::new("kubernetes");
    let client_ca_file = path_str(&client_ca.write(dir.path(), "client-ca.pem"));
    let server = TestServer::start_with_auth(
        DEFINITIONS,
        &emulator,
        &[
            &fake.kubeconfig_arg(),
            "--authentication-skip-lookup",
            &format!("--client-ca-file={client_ca_file}"),
        ],
    )
    .await;
    fake.allow("alice", "sqs-visible");
    fake.add_token("bob-token", "bob", "uid-bob", &["devs"]);
    fake.allow("bob", "/apis/external.metrics.k8s.io/v1beta1");

    let (cert, key) = client_ca.client("alice", &["team-a"]);
    let cert_path = dir.path().join("alice.crt");
    let key_path = dir.path().join("alice.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let alice_cert = format!("--client-certificate={}", cert_path.display());
    let alice_key = format!("--client-key={}", key_path.display());
    let alice = [alice_cert.as_str(), alice_key.as_str()];
    let value = |metric: &str| {
        format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}?labelSelector=QueueName%3Dorders"
        )
    };

    let (code, stdout, stderr) = kubectl_as(&server, &alice, &value("sqs-visible")).await;
    assert_eq!(code, 0, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(body["items"][0]["value"], "7");
    let (code, _, stderr) = kubectl_as(&server, &alice, &value("sqs-backlog")).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            r#"Error from server (Forbidden): sqs-backlog.external.metrics.k8s.io is forbidden: User "alice" cannot list resource "sqs-backlog" in API group "external.metrics.k8s.io" in the namespace "default""#
        ),
        "{stderr}"
    );
    let review = fake.access_reviews().pop().unwrap();
    assert_eq!(review["spec"]["user"], "alice");
    assert_eq!(
        review["spec"]["groups"],
        serde_json::json!(["team-a", "system:authenticated"])
    );

    let bob = ["--token=bob-token"];
    let (code, stdout, stderr) =
        kubectl_as(&server, &bob, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("APIResourceList"), "{stdout}");
    let (code, _, stderr) = kubectl_as(&server, &bob, &value("sqs-visible")).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            r#"Error from server (Forbidden): sqs-visible.external.metrics.k8s.io is forbidden: User "bob" cannot list resource "sqs-visible" in API group "external.metrics.k8s.io" in the namespace "default""#
        ),
        "{stderr}"
    );
    let (code, _, stderr) = kubectl_as(&server, &bob, "/apis").await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            r#"Error from server (Forbidden): forbidden: User "bob" cannot get path "/apis""#
        ),
        "{stderr}"
    );
    assert_eq!(fake.token_reviews()[0]["spec"]["token"], "bob-token");

    // A token the cluster does not know: 401.
    let (code, _, stderr) = kubectl_as(
        &server,
        &["--token=forged"],
        "/apis/external.metrics.k8s.io/v1beta1",
    )
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    server.stop().await.unwrap();
}
