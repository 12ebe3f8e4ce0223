//! Delegated authentication and authorization against the real server, with generated CAs and a
//! fake Kubernetes API server (TokenReview, SubjectAccessReview, the authentication ConfigMap).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cloudwatch_emulator::Emulator;
use common::fake_kube::FakeKube;
use common::{DEFINITIONS, TestCa, TestServer, minute, path_str, put};
use serde_json::{Value, json};

const VALUE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders";
const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";
const HPA: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

fn seeded_emulator_data(emulator: &Emulator) {
    put(
        emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(2),
        42.0,
    );
}

/// The CAs of a cluster: front proxy, client, and one nobody trusts.
struct Cas {
    front_proxy: TestCa,
    client: TestCa,
    wrong: TestCa,
    dir: tempfile::TempDir,
}

impl Cas {
    fn new() -> Cas {
        Cas {
            front_proxy: TestCa::new("front-proxy-ca"),
            client: TestCa::new("kubernetes"),
            wrong: TestCa::new("front-proxy-ca"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Flags giving both CAs as files (no ConfigMap lookup).
    fn flags(&self, fake: &FakeKube, anonymous: bool) -> Vec<String> {
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

async fn start(emulator: &Emulator, flags: &[String]) -> TestServer {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    TestServer::start_with_auth(DEFINITIONS, emulator, &flags).await
}

async fn send(
    client: &reqwest::Client,
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client.get(format!("{}{path}", server.base()));
    for (name, value) in headers {
        // `header` appends: repeated names become repeated lines, as the aggregator sends them.
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// The identity headers kube-apiserver's aggregator sends for the HPA controller.
const AGGREGATOR_HEADERS: [(&str, &str); 8] = [
    ("X-Remote-User", HPA),
    ("X-Remote-Group", "system:serviceaccounts"),
    ("X-Remote-Group", "system:serviceaccounts:kube-system"),
    ("X-Remote-Group", "system:authenticated"),
    ("X-Remote-Uid", "0c7b4a8e-hpa"),
    (
        "X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id",
        "JTI=7f1e",
    ),
    ("X-Remote-Extra-Scopes", "a"),
    ("X-Remote-Extra-Scopes", "b"),
];

/// Headers claiming to be a cluster admin.
const FORGED: [(&str, &str); 2] = [
    ("X-Remote-User", "system:admin"),
    ("X-Remote-Group", "system:masters"),
];

async fn with_token(server: &TestServer, token: &str) -> (u16, Value) {
    let header = format!("Bearer {token}");
    send(
        &server.client(),
        server,
        VALUE,
        &[("Authorization", &header)],
    )
    .await
    .unwrap()
}

fn value_attributes() -> Value {
    json!({"namespace": "default", "verb": "list", "group": "external.metrics.k8s.io",
           "version": "v1beta1", "resource": "sqs-visible"})
}

#[tokio::test]
async fn identity_headers_are_believed_only_from_the_front_proxy() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await;
    let cas = Cas::new();
    let server = start(&emulator, &cas.flags(&fake, true)).await;
    fake.allow(HPA, "sqs-visible");
    fake.allow("alice", "sqs-visible");

    // The aggregator: front-proxy certificate + identity headers. The SubjectAccessReview asks
    // about the user the headers name, with every group line, the UID and decoded extras.
    let (cert, key) = cas.front_proxy.client("front-proxy-client", &[]);
    let aggregator = server.client_with_certificate(&cert, &key);
    let (status, body) = send(&aggregator, &server, VALUE, &AGGREGATOR_HEADERS)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "42");
    let reviews = fake.access_reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(reviews[0]["kind"], "SubjectAccessReview");
    assert_eq!(
        reviews[0]["spec"],
        json!({
            "user": HPA,
            "uid": "0c7b4a8e-hpa",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                       "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": ["JTI=7f1e"],
                      "scopes": ["a", "b"]},
            "resourceAttributes": value_attributes(),
        })
    );

    // The availability probe arrives as system:masters through the front proxy: no review.
    let (status, body) = send(
        &aggregator,
        &server,
        DISCOVERY,
        &[
            ("X-Remote-User", "system:kube-aggregator"),
            ("X-Remote-Group", "system:masters"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.access_reviews().len(), 1);

    // Forged headers without a certificate: ignored. The caller is anonymous, and the cluster
    // says no (anonymous callers are allowed in, not allowed everything).
    let (status, body) = send(&server.client(), &server, VALUE, &FORGED)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "sqs-visible.external.metrics.k8s.io is forbidden: User \"system:anonymous\" cannot list resource \"sqs-visible\" in API group \"external.metrics.k8s.io\" in the namespace \"default\"",
            "reason": "Forbidden",
            "details": {"group": "external.metrics.k8s.io", "kind": "sqs-visible"},
            "code": 403})
    );
    let last = fake.access_reviews().pop().unwrap();
    assert_eq!(last["spec"]["user"], "system:anonymous");
    assert_eq!(last["spec"]["groups"], json!(["system:unauthenticated"]));

    // Forged headers with a certificate from a CA that merely has the same name: the handshake
    // itself is refused.
    let reviews_before = fake.access_reviews().len();
    let (cert, key) = cas.wrong.client("front-proxy-client", &[]);
    let impostor = server.client_with_certificate(&cert, &key);
    assert!(send(&impostor, &server, VALUE, &FORGED).await.is_err());

    // Forged headers with a front-proxy-CA certificate whose CN is not allowed: a credential
    // that proves no one is refused outright, even with anonymous access on.
    let (cert, key) = cas.front_proxy.client("not-the-aggregator", &[]);
    let stranger = server.client_with_certificate(&cert, &key);
    let (status, body) = send(&stranger, &server, VALUE, &FORGED).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "Unauthorized");
    assert_eq!(fake.access_reviews().len(), reviews_before);

    // A client-CA certificate is an identity (CN, O) of its own; its headers are ignored.
    let (cert, key) = cas.client.client("alice", &["team-a"]);
    let alice = server.client_with_certificate(&cert, &key);
    let (status, body) = send(&alice, &server, VALUE, &FORGED).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let last = fake.access_reviews().pop().unwrap();
    assert_eq!(
        last["spec"],
        json!({"user": "alice", "groups": ["team-a", "system:authenticated"],
               "resourceAttributes": value_attributes()})
    );
    assert!(
        fake.access_reviews()
            .iter()
            .all(|review| review["spec"]["user"] != "system:admin")
    );
    assert!(fake.token_reviews().is_empty());
    assert_eq!(*fake.state.unauthenticated_calls.lock().unwrap(), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_anonymous_access_forged_headers_get_401() {
    let emulator = Emulator::start().await.unwrap();
    let fake = FakeKube::start().await;
    let cas = Cas::new();
    let server = start(&emulator, &cas.flags(&fake, false)).await;
    for path in [VALUE, DISCOVERY, "/apis", "/no/such/path"] {
        let (status, body) = send(&server.client(), &server, path, &FORGED)
            .await
            .unwrap();
        assert_eq!(status, 401, "{path}");
        assert_eq!(
            body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
        );
    }
    assert!(fake.access_reviews().is_empty());
    assert!(fake.token_reviews().is_empty());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bearer_tokens_go_through_token_review_and_discovery_is_a_non_resource_get() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await;
    let cas = Cas::new();
    let server = start(&emulator, &cas.flags(&fake, true)).await;
    fake.add_token("bob-token", "bob", "uid-bob", &["devs"]);
    fake.allow("bob", DISCOVERY);
    let bob = [("Authorization", "Bearer bob-token")];

    let (status, body) = send(&server.client(), &server, DISCOVERY, &bob)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "APIResourceList");
    let token_reviews = fake.token_reviews();
    assert_eq!(token_reviews.len(), 1);
    assert_eq!(token_reviews[0]["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(token_reviews[0]["kind"], "TokenReview");
    assert_eq!(token_reviews[0]["spec"], json!({"token": "bob-token"}));
    assert_eq!(
        fake.access_reviews()[0]["spec"],
        json!({"user": "bob", "uid": "uid-bob", "groups": ["devs", "system:authenticated"],
               "nonResourceAttributes": {"path": DISCOVERY, "verb": "get"}})
    );

    // Not allowed: kube-apiserver's wording, for resources and for paths.
    let (status, body) = send(&server.client(), &server, VALUE, &bob).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "sqs-visible.external.metrics.k8s.io is forbidden: User \"bob\" cannot list resource \"sqs-visible\" in API group \"external.metrics.k8s.io\" in the namespace \"default\""
    );
    let (status, body) = send(&server.client(), &server, "/apis", &bob)
        .await
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        body["message"],
        "forbidden: User \"bob\" cannot get path \"/apis\""
    );
    // The token was reviewed once and its answer reused.
    assert_eq!(fake.token_reviews().len(), 1);

    // A token the cluster rejects is a 401, even with anonymous access on.
    let (status, body) = send(
        &server.client(),
        &server,
        DISCOVERY,
        &[("Authorization", "Bearer forged-token")],
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(fake.token_reviews().len(), 2);
    assert_eq!(*fake.state.unauthenticated_calls.lock().unwrap(), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fails_closed_while_the_api_server_is_down_and_recovers_by_itself() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await;
    let cas = Cas::new();
    let mut flags = cas.flags(&fake, false);
    // Long enough that the cached answers cannot expire during the test.
    flags.push("--authentication-token-webhook-cache-ttl=5m".into());
    flags.push("--authorization-webhook-cache-authorized-ttl=5m".into());
    let server = start(&emulator, &flags).await;
    for (token, user) in [("bob-token", "bob"), ("carol-token", "carol")] {
        fake.add_token(token, user, "", &[]);
        fake.allow(user, "sqs-visible");
    }
    fake.allow("alice", "sqs-visible");
    assert_eq!(with_token(&server, "bob-token").await.0, 200);

    fake.stop();
    // Decisions already made still apply...
    let (status, body) = with_token(&server, "bob-token").await;
    assert_eq!(status, 200, "{body}");
    // ...new ones fail closed: an unseen token, and an unseen caller needing a SubjectAccessReview.
    let (status, body) = with_token(&server, "carol-token").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert!(
        body["message"].as_str().unwrap().contains("TokenReview"),
        "{body}"
    );
    let (cert, key) = cas.client.client("alice", &[]);
    let alice = server.client_with_certificate(&cert, &key);
    let (status, body) = send(&alice, &server, VALUE, &[]).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("SubjectAccessReview"),
        "{body}"
    );

    // Back up: no restart of the adapter needed.
    fake.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = with_token(&server, "carol-token").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = send(&alice, &server, VALUE, &[]).await.unwrap();
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_configmap_is_read_at_start_and_followed_through_ca_rotation() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await;
    let first = TestCa::new("front-proxy-ca");
    let rotated = TestCa::new("front-proxy-ca");
    let client_ca = TestCa::new("kubernetes");
    // Non-default header names prove they come from the ConfigMap.
    let publish = |ca: &TestCa| {
        fake.set_configmap(&[
            ("client-ca-file", &client_ca.pem),
            ("requestheader-client-ca-file", &ca.pem),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Proxy-User"]"#),
            ("requestheader-group-headers", r#"["X-Proxy-Group"]"#),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Proxy-Extra-"]"#,
            ),
            ("requestheader-uid-headers", r#"["X-Proxy-Uid"]"#),
        ])
    };

    // No ConfigMap: the server refuses to start, saying what it needs.
    let dir = tempfile::tempdir().unwrap();
    let config = {
        let definitions = dir.path().join("metrics.yaml");
        std::fs::write(&definitions, DEFINITIONS).unwrap();
        let (cert, key) = first.leaf("serving");
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        common::serve_config_with_auth(
            &definitions,
            &cert_path,
            &key_path,
            &[&fake.kubeconfig_arg()],
        )
    };
    let listeners = cloudwatch_metrics_adapter::app::Listeners {
        secure: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let sdk = common::emulator_sdk_config(&emulator.endpoint_url()).await;
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        cloudwatch_metrics_adapter::app::serve(config, sdk, listeners, std::future::pending()),
    )
    .await
    .expect("serve should fail at start")
    .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("cannot read ConfigMap kube-system/extension-apiserver-authentication"),
        "{text}"
    );
    assert!(
        text.contains("extension-apiserver-authentication-reader"),
        "{text}"
    );

    publish(&first);
    let server = start(&emulator, &[fake.kubeconfig_arg()]).await;
    fake.allow(HPA, "sqs-visible");
    let headers = [
        ("X-Proxy-User", HPA),
        ("X-Proxy-Group", "system:serviceaccounts"),
        ("X-Proxy-Uid", "uid-7"),
        ("X-Proxy-Extra-Team", "autoscaling"),
    ];
    let (cert, key) = first.client("front-proxy-client", &[]);
    let (status, body) = send(
        &server.client_with_certificate(&cert, &key),
        &server,
        VALUE,
        &headers,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        fake.access_reviews().pop().unwrap()["spec"],
        json!({"user": HPA, "uid": "uid-7",
               "groups": ["system:serviceaccounts", "system:authenticated"],
               "extra": {"team": ["autoscaling"]}, "resourceAttributes": value_attributes()})
    );
    // The default header names mean nothing here: no identity, and the certificate is no
    // client-CA identity either.
    let (status, _) = send(
        &server.client_with_certificate(&cert, &key),
        &server,
        VALUE,
        &[("X-Remote-User", HPA)],
    )
    .await
    .unwrap();
    assert_eq!(status, 401);

    // kube-apiserver rotates its front-proxy CA: the adapter follows without a restart.
    publish(&rotated);
    let (new_cert, new_key) = rotated.client("front-proxy-client", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = send(
            &server.client_with_certificate(&new_cert, &new_key),
            &server,
            VALUE,
            &headers,
        )
        .await;
        if matches!(outcome, Ok((200, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotated CA not trusted: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old CA is no longer trusted.
    let outcome = send(
        &server.client_with_certificate(&cert, &key),
        &server,
        VALUE,
        &headers,
    )
    .await;
    assert!(!matches!(outcome, Ok((200, _))), "{outcome:?}");
    let watches = fake.state.watches.lock().unwrap().clone();
    assert!(!watches.is_empty());
    assert!(
        watches[0].contains("fieldSelector=metadata.name%3Dextension-apiserver-authentication"),
        "{watches:?}"
    );
    server.stop().await.unwrap();
}
