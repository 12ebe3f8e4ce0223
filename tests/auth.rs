//! Delegated authentication and authorization against the real server, with generated CAs and a
//! fake Kubernetes API server (TokenReview, SubjectAccessReview, the authentication ConfigMap).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use cloudwatch_emulator::Emulator;
use common::{Cas, DEFINITIONS, TestCa, TestServer, minute, put};
use fake_kube::FakeKube;
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
    let fake = FakeKube::start().await.unwrap();
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
    assert_eq!(fake.unauthenticated_calls(), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_anonymous_access_forged_headers_get_401() {
    let emulator = Emulator::start().await.unwrap();
    let fake = FakeKube::start().await.unwrap();
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
    let fake = FakeKube::start().await.unwrap();
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
    assert_eq!(fake.unauthenticated_calls(), 0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fails_closed_while_the_api_server_is_down_and_recovers_by_itself() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await.unwrap();
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
    fake.restart().await.unwrap();
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
    let fake = FakeKube::start().await.unwrap();
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
        text.contains(
            "cannot read ConfigMap kube-system/extension-apiserver-authentication: it does not exist"
        ),
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
    let watches = fake.configmap_watches();
    assert!(!watches.is_empty());
    assert!(
        watches[0].contains("fieldSelector=metadata.name%3Dextension-apiserver-authentication"),
        "{watches:?}"
    );
    server.stop().await.unwrap();
}

/// Publish the authentication ConfigMap as kube-apiserver writes it, with the default headers.
fn publish(fake: &FakeKube, front_proxy: &TestCa, client: &TestCa) {
    fake.set_configmap(&[
        ("client-ca-file", &client.pem),
        ("requestheader-client-ca-file", &front_proxy.pem),
        ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
        ("requestheader-username-headers", r#"["X-Remote-User"]"#),
        ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        (
            "requestheader-extra-headers-prefix",
            r#"["X-Remote-Extra-"]"#,
        ),
        ("requestheader-uid-headers", r#"["X-Remote-Uid"]"#),
    ]);
}

const VERIFICATIONS: &str = "cloudwatch_adapter_client_certificate_verifications_total";

/// Send a value request as the aggregator; the status and the HTTP version it went over.
async fn aggregator_get(
    client: &reqwest::Client,
    server: &TestServer,
) -> Result<(u16, reqwest::Version), reqwest::Error> {
    let mut request = client.get(format!("{}{VALUE}", server.base()));
    for (name, value) in AGGREGATOR_HEADERS {
        request = request.header(name, value);
    }
    let response = request.send().await?;
    let answer = (response.status().as_u16(), response.version());
    response.bytes().await?;
    Ok(answer)
}

/// Wait (bounded, polling the real clock: the adapter's watchers run on it) for `condition`.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn certificates_are_verified_once_per_connection_and_a_ca_rotation_reaches_open_connections()
{
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await.unwrap();
    let first = TestCa::new("front-proxy-ca");
    let rotated = TestCa::new("front-proxy-ca");
    let client_ca = TestCa::new("kubernetes");
    publish(&fake, &first, &client_ca);
    let server = start(&emulator, &[fake.kubeconfig_arg()]).await;
    fake.allow(HPA, "sqs-visible");

    // One HTTP/2 connection, as the aggregator keeps: the chain is verified on its first
    // request only, and the SubjectAccessReview answer is reused.
    let (cert, key) = first.client("front-proxy-client", &[]);
    let aggregator = server.client_with_certificate(&cert, &key);
    for _ in 0..20 {
        let (status, version) = aggregator_get(&aggregator, &server).await.unwrap();
        assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    }
    assert_eq!(server.metric(VERIFICATIONS).await, 1.0);
    assert_eq!(fake.access_reviews().len(), 1);
    // HTTP/1.1 keep-alive: once per connection too.
    let identity = reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
    let http1 = common::client_trusting(&server.ca.pem)
        .identity(identity)
        .http1_only()
        .build()
        .unwrap();
    for _ in 0..10 {
        let (status, version) = aggregator_get(&http1, &server).await.unwrap();
        assert_eq!((status, version), (200, reqwest::Version::HTTP_11));
    }
    assert_eq!(server.metric(VERIFICATIONS).await, 2.0);

    // kube-apiserver rotates its front-proxy CA while the aggregator's connection stays open:
    // the next request on that same connection is judged by the new CA. (A new connection
    // with this certificate would not even complete the handshake, so every answer below came
    // over the open connection.)
    publish(&fake, &rotated, &client_ca);
    eventually("the rotation to reach the open connection", || async {
        let (status, version) = aggregator_get(&aggregator, &server)
            .await
            .expect("the open connection keeps being served");
        assert!(status == 200 || status == 401, "{status}");
        assert_eq!(version, reqwest::Version::HTTP_2);
        status == 401
    })
    .await;
    assert_eq!(server.metric(VERIFICATIONS).await, 3.0);
    // Refused for good on that connection, without verifying again.
    for _ in 0..5 {
        assert_eq!(aggregator_get(&aggregator, &server).await.unwrap().0, 401);
    }
    assert_eq!(server.metric(VERIFICATIONS).await, 3.0);
    let fresh = server.client_with_certificate(&cert, &key);
    assert!(aggregator_get(&fresh, &server).await.is_err());
    let (new_cert, new_key) = rotated.client("front-proxy-client", &[]);
    let renewed = server.client_with_certificate(&new_cert, &new_key);
    assert_eq!(aggregator_get(&renewed, &server).await.unwrap().0, 200);
    assert_eq!(
        server
            .metric(
                r#"cloudwatch_adapter_authentications_total{method="front-proxy",result="success"}"#
            )
            .await,
        server
            .metric(r#"cloudwatch_adapter_authorization_decisions_total{decision="allowed"}"#)
            .await
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused_even_mid_connection() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await.unwrap();
    let cas = Cas::new();
    // Anonymous access on: a certificate that no longer proves anyone must still be a refusal.
    let server = start(&emulator, &cas.flags(&fake, true)).await;
    fake.allow(HPA, "sqs-visible");
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    for (not_before, not_after) in [(now - 2 * hour, now - hour), (now + hour, now + 2 * hour)] {
        let (cert, key) = cas
            .front_proxy
            .client_valid("front-proxy-client", not_before, not_after);
        let client = server.client_with_certificate(&cert, &key);
        assert!(
            aggregator_get(&client, &server).await.is_err(),
            "valid {not_before:?} to {not_after:?}"
        );
    }

    // A certificate that expires while its connection is open stops counting at its notAfter.
    let expires = now + Duration::from_secs(4);
    let (cert, key) = cas
        .front_proxy
        .client_valid("front-proxy-client", now - hour, expires);
    let aggregator = server.client_with_certificate(&cert, &key);
    assert_eq!(aggregator_get(&aggregator, &server).await.unwrap().0, 200);
    eventually("the certificate to expire", || async {
        let (status, _) = aggregator_get(&aggregator, &server).await.unwrap();
        assert!(status == 200 || status == 401, "{status}");
        status == 401
    })
    .await;
    // notAfter is inclusive and checked in whole seconds.
    assert!(SystemTime::now() >= expires, "refused before it expired");
    assert_eq!(
        server
            .metric(r#"cloudwatch_adapter_authentications_total{method="client-certificate",result="failure"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn identical_concurrent_reviews_reach_the_cluster_once() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await.unwrap();
    let cas = Cas::new();
    let server = start(&emulator, &cas.flags(&fake, false)).await;
    fake.allow(HPA, "sqs-visible");
    // The cluster holds every review unanswered until every request below waits for one.
    fake.hold_reviews(true);
    let (cert, key) = cas.front_proxy.client("front-proxy-client", &[]);
    let aggregator = server.client_with_certificate(&cert, &key);
    const REQUESTS: usize = 16;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let (client, url) = (aggregator.clone(), format!("{}{VALUE}", server.base()));
        requests.spawn(async move {
            let mut request = client.get(url);
            for (name, value) in AGGREGATOR_HEADERS {
                request = request.header(name, value);
            }
            request.send().await.unwrap().status().as_u16()
        });
    }
    let waiting = r#"cloudwatch_adapter_review_waiting{review="SubjectAccessReview"}"#;
    eventually(
        "every request to wait for a SubjectAccessReview",
        || async { server.metric(waiting).await == REQUESTS as f64 },
    )
    .await;
    // All of them are waiting at once, on the one review the cluster was asked.
    fake.hold_reviews(false);
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(fake.access_reviews().len(), 1);
    let lookups = |result: &'static str| {
        format!(
            r#"cloudwatch_adapter_review_cache_lookups_total{{review="SubjectAccessReview",result="{result}"}}"#
        )
    };
    assert_eq!(server.metric(&lookups("miss")).await, 1.0);
    // None found an answer in the cache: each waited for the one under way.
    assert_eq!(
        server.metric(&lookups("shared")).await,
        (REQUESTS - 1) as f64
    );
    assert_eq!(server.metric(&lookups("hit")).await, 0.0);
    assert_eq!(server.metric(waiting).await, 0.0);
    assert_eq!(
        server
            .metric(r#"cloudwatch_adapter_reviews_total{review="SubjectAccessReview",outcome="allowed"}"#)
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_configmap_watch_resumes_from_bookmarks_and_relists_after_410() {
    let emulator = Emulator::start().await.unwrap();
    seeded_emulator_data(&emulator);
    let fake = FakeKube::start().await.unwrap();
    let client_ca = TestCa::new("kubernetes");
    let cas: Vec<TestCa> = (0..3).map(|_| TestCa::new("front-proxy-ca")).collect();
    publish(&fake, &cas[0], &client_ca);
    let server = start(&emulator, &[fake.kubeconfig_arg()]).await;
    fake.allow(HPA, "sqs-visible");
    let lists = || fake.configmap_lists();
    let watches = || fake.configmap_watches();
    let trusted = |ca: &TestCa| {
        let (cert, key) = ca.client("front-proxy-client", &[]);
        let client = server.client_with_certificate(&cert, &key);
        let server = &server;
        async move { matches!(aggregator_get(&client, server).await, Ok((200, _))) }
    };
    assert!(trusted(&cas[0]).await);
    // kube-runtime's watcher: one list with the field selector, then a watch with bookmarks.
    assert_eq!(lists().len(), 1);
    assert!(
        lists()[0].contains("fieldSelector=metadata.name%3Dextension-apiserver-authentication"),
        "{:?}",
        lists()
    );
    eventually("the watch", || async { !watches().is_empty() }).await;
    assert!(
        watches()[0].contains("allowWatchBookmarks=true"),
        "{:?}",
        watches()
    );

    // Other objects change, a bookmark arrives, etcd compacts, the watch times out: the
    // watcher resumes from the bookmark, without a list.
    fake.advance_revision(10);
    let bookmarked = fake.revision();
    fake.bookmark();
    eventually("the bookmark to be sent", || async {
        fake.bookmarks_sent() == 1
    })
    .await;
    fake.compact();
    fake.close_watches();
    eventually("the watch to resume", || async { watches().len() == 2 }).await;
    let resumed_from = form_urlencoded::parse(watches()[1].as_bytes())
        .find(|(key, _)| key == "resourceVersion")
        .map(|(_, value)| value.into_owned());
    assert_eq!(
        resumed_from,
        Some(bookmarked.to_string()),
        "{:?}",
        watches()
    );
    assert_eq!(lists().len(), 1);
    publish(&fake, &cas[1], &client_ca);
    eventually("the second CA", || trusted(&cas[1])).await;

    // The API server gives up on the watch (410 Expired): the watcher lists again.
    fake.expire_watches();
    eventually("the relist", || async { lists().len() == 2 }).await;
    publish(&fake, &cas[2], &client_ca);
    eventually("the third CA", || trusted(&cas[2])).await;
    assert!(!trusted(&cas[1]).await);

    // Deleted, and then missing from a relist: the CAs in use stay.
    fake.delete_configmap();
    let before = watches().len();
    fake.expire_watches();
    eventually("the relist after the deletion to complete", || async {
        lists().len() == 3 && watches().len() > before
    })
    .await;
    assert!(trusted(&cas[2]).await);
    server.stop().await.unwrap();
}
