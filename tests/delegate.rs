//! Forwarding what we do not define to the cluster's previous external-metrics provider, over
//! real sockets on 127.0.0.1: the adapter (delegated authentication and authorization against a
//! fake Kubernetes API) in front of two delegates, a second real instance of this adapter and a
//! fake of KEDA's metrics server (tests/common/fake_keda.rs), each with its own CA. Requests
//! arrive as kube-apiserver's aggregator sends them: front-proxy client certificate, the HPA's
//! identity in X-Remote-* headers, an Audit-ID.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use cloudwatch_emulator::Emulator;
use common::fake_keda::{FakeKeda, SCALED_OBJECT_KEY};
use common::{DEFINITIONS, TestCa, TestServer, minute, path_str, put};
use fake_kube::{FakeKube, Served};
use serde_json::Value;

const HPA: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
/// This adapter's ServiceAccount: who the delegates see.
const FRONT_SA: &str =
    "system:serviceaccount:cloudwatch-metrics-adapter:cloudwatch-metrics-adapter";
const FRONT_TOKEN: &str = "front-sa-token-1";
const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";
const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";
const KEDA_METRIC: &str = "s0-rabbitmq-orders";
const AUDIT_ID: &str = "6d1b8a52-1f1e-4c8e-9b1a-5f0d2a7e9c31";
/// Bounded waits for background work (discovery refreshes, file re-reads, Secret watches).
const WAIT: Duration = Duration::from_secs(15);

/// What the second adapter instance (a delegate) defines: one name of its own, and one we define
/// too (discovery must list it once).
const OTHER_DEFINITIONS: &str = r#"
metrics:
  - name: theirs-depth
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "${QueueName}"}]
          period: 60
          stat: Average
  - name: sqs-visible
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

/// How the adapter reaches KEDA in a scenario.
#[derive(Clone, Copy, PartialEq)]
enum KedaCa {
    /// KEDA's CA as a file.
    File,
    /// A CA that did not sign KEDA's certificate.
    Wrong,
    /// KEDA's CA from Secret keda/kedaorg-certs through the API.
    Secret,
}

#[derive(Clone, Copy, PartialEq)]
enum KedaAuth {
    Token,
    ClientCertificate,
}

struct Options {
    ca: KedaCa,
    auth: KedaAuth,
    /// Extra YAML lines for KEDA's entry (indented 4 spaces).
    keda_extra: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ca: KedaCa::File,
            auth: KedaAuth::Token,
            keda_extra: "",
        }
    }
}

/// A cluster: the fake API server, the two delegates, and this adapter in front of them.
struct Setup {
    _emulator: Emulator,
    kube: Served,
    keda: FakeKeda,
    other: TestServer,
    front: TestServer,
    front_proxy: TestCa,
    client_ca: TestCa,
    token_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start(options: Options) -> Setup {
        let emulator = Emulator::start().await.unwrap();
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", "orders")],
            minute(2),
            42.0,
        );
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", "billing")],
            minute(2),
            5.0,
        );
        let kube = FakeKube::start().await.unwrap();
        kube.add_token(
            FRONT_TOKEN,
            FRONT_SA,
            "uid-front",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:cloudwatch-metrics-adapter",
            ],
        );
        // What the chart's ClusterRole gives our ServiceAccount (list on external.metrics.k8s.io)
        // and system:discovery gives everyone; and what the HPA controller may read.
        for metric in [
            KEDA_METRIC,
            "s0-huge",
            "theirs-depth",
            "sqs-nowhere",
            DISCOVERY,
        ] {
            kube.allow(FRONT_SA, metric);
        }
        for metric in [
            KEDA_METRIC,
            "s0-huge",
            "s1-cron-nightly",
            "theirs-depth",
            "sqs-nowhere",
            "sqs-visible",
            "nope",
            "s0-x",
            DISCOVERY,
            "/apis",
        ] {
            kube.allow(HPA, metric);
        }
        let keda = FakeKeda::start(&kube).await;
        keda.add_scaled_object("default", "orders-so", &[(KEDA_METRIC, "7")]);

        let dir = tempfile::tempdir().unwrap();
        let front_proxy = TestCa::new("front-proxy-ca");
        let client_ca = TestCa::new("kubernetes");
        let auth_flags = |name: &str| {
            vec![
                kube.kubeconfig_arg(),
                "--authentication-skip-lookup".to_string(),
                format!(
                    "--requestheader-client-ca-file={}",
                    path_str(&front_proxy.write(dir.path(), &format!("{name}-front-proxy.pem")))
                ),
                "--requestheader-allowed-names=front-proxy-client".to_string(),
                format!(
                    "--client-ca-file={}",
                    path_str(&client_ca.write(dir.path(), &format!("{name}-client-ca.pem")))
                ),
            ]
        };

        // The second delegate: this adapter again, a real aggregated API server.
        let other_flags = auth_flags("other");
        let other_flags: Vec<&str> = other_flags.iter().map(String::as_str).collect();
        let other = TestServer::start_with_auth(OTHER_DEFINITIONS, &emulator, &other_flags).await;

        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{FRONT_TOKEN}\n")).unwrap();
        let keda_ca = match options.ca {
            KedaCa::File => format!(
                "{{file: {}}}",
                path_str(&write(dir.path(), "keda-ca.pem", &keda.ca_pem()))
            ),
            KedaCa::Wrong => format!(
                "{{file: {}}}",
                path_str(&TestCa::new("not-keda-ca").write(dir.path(), "wrong-ca.pem"))
            ),
            KedaCa::Secret => "{secret: {namespace: keda, name: kedaorg-certs}}".to_string(),
        };
        let keda_auth = match options.auth {
            KedaAuth::Token => format!("{{tokenFile: {}}}", path_str(&token_file)),
            KedaAuth::ClientCertificate => {
                let (cert, key) = keda.client_ca.client(FRONT_SA, &[]);
                format!(
                    "{{clientCertFile: {}, clientKeyFile: {}}}",
                    path_str(&write(dir.path(), "client.crt", &cert)),
                    path_str(&write(dir.path(), "client.key", &key))
                )
            }
        };
        let delegates = format!(
            r#"delegates:
  - name: keda
    url: {keda_url}
    ca: {keda_ca}
    auth: {keda_auth}
    match: {{namePattern: "^s[0-9]+-", selectorKey: {SCALED_OBJECT_KEY}}}
    timeout: 1s
{keda_extra}
  - name: second-adapter
    url: {other_url}
    ca: {{file: {other_ca}}}
    auth: {{tokenFile: {token}}}
    match: {{namePattern: "^(theirs-|sqs-)"}}
"#,
            keda_url = keda.url(),
            keda_extra = options.keda_extra,
            other_url = other.base(),
            other_ca = path_str(&other.ca.write(dir.path(), "other-ca.pem")),
            token = path_str(&token_file),
        );
        let delegates_file = write(dir.path(), "delegates.yaml", &delegates);
        let mut front_flags = auth_flags("front");
        front_flags.extend([
            format!("--delegates-config={}", path_str(&delegates_file)),
            "--delegate-discovery-interval=1s".to_string(),
        ]);
        let front_flags: Vec<&str> = front_flags.iter().map(String::as_str).collect();
        let front = TestServer::start_with_auth(DEFINITIONS, &emulator, &front_flags).await;
        Setup {
            _emulator: emulator,
            kube,
            keda,
            other,
            front,
            front_proxy,
            client_ca,
            token_file,
            dir,
        }
    }

    /// kube-apiserver's aggregator: front-proxy certificate, the HPA's identity, an audit ID.
    fn aggregator(&self) -> reqwest::Client {
        let (cert, key) = self.front_proxy.client("front-proxy-client", &[]);
        self.front.client_with_certificate(&cert, &key)
    }

    async fn get(&self, client: &reqwest::Client, path: &str) -> Answer {
        hpa_get(client, &self.front, path).await
    }

    /// A direct call to KEDA as this adapter would make it (its token), for comparisons.
    async fn keda_direct(&self, path: &str) -> Answer {
        let client = common::client_trusting(&self.keda.ca_pem())
            .build()
            .unwrap();
        let response = client
            .get(format!("{}{path}", self.keda.url()))
            .bearer_auth(FRONT_TOKEN)
            .header("Accept", "application/json, */*")
            .send()
            .await
            .unwrap();
        Answer::read(response).await
    }

    async fn front_metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.front.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.front.stop().await.unwrap();
        self.other.stop().await.unwrap();
    }
}

/// A GET as the aggregator sends the HPA's: identity headers, audit ID, Accept.
async fn hpa_get(client: &reqwest::Client, front: &TestServer, path: &str) -> Answer {
    hpa_get_url(client, format!("{}{path}", front.base())).await
}

/// [`hpa_get`] of a full URL, for requests spawned to run while the test goes on.
async fn hpa_get_url(client: &reqwest::Client, url: String) -> Answer {
    let response = client
        .get(url)
        .header("X-Remote-User", HPA)
        .header("X-Remote-Group", "system:serviceaccounts")
        .header("X-Remote-Group", "system:authenticated")
        .header("Audit-ID", AUDIT_ID)
        .header("Accept", "application/json, */*")
        .send()
        .await
        .unwrap();
    Answer::read(response).await
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Bytes,
}

impl Answer {
    async fn read(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Answer {
            status,
            content_type,
            body: response.bytes().await.unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn keda_path(scaled_object: &str) -> String {
    format!("{BASE}/{KEDA_METRIC}?labelSelector=scaledobject.keda.sh%2Fname%3D{scaled_object}")
}

async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn our_metric_is_served_here_and_never_leaves() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let answer = setup
        .get(
            &aggregator,
            &format!("{BASE}/sqs-visible?labelSelector=QueueName%3Dorders"),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["items"][0]["value"], "42");
    // Neither delegate saw a value request: the second adapter (which defines the same name, and
    // whose name pattern matches it) counted none, KEDA got none.
    assert!(setup.keda.value_requests().is_empty());
    let other_metrics = reqwest::get(format!("http://{}/metrics", setup.other.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !other_metrics.contains("cloudwatch_adapter_requests_total{"),
        "{other_metrics}"
    );
    assert!(
        !setup
            .front_metrics()
            .await
            .contains("cloudwatch_adapter_delegate_requests_total{")
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_keda_metric_is_forwarded_and_its_answer_returned_byte_for_byte() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let path = keda_path("orders-so");
    let answer = setup.get(&aggregator, &path).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let direct = setup.keda_direct(&path).await;
    assert_eq!(direct.status, 200);
    assert_eq!(
        answer.body, direct.body,
        "the answer is KEDA's, byte for byte"
    );
    assert_eq!(answer.content_type, direct.content_type);
    assert_eq!(
        answer.text(),
        "{\"kind\":\"ExternalMetricValueList\",\"apiVersion\":\"external.metrics.k8s.io/v1beta1\",\"metadata\":{},\"items\":[{\"metricName\":\"s0-rabbitmq-orders\",\"metricLabels\":null,\"timestamp\":\"2026-11-27T10:00:00Z\",\"value\":\"7\"}]}\n"
    );

    // KEDA saw the same path and query, this adapter's token (never the caller's identity: the
    // identity headers stay here), the audit ID, over HTTP/2.
    let seen = setup.keda.value_requests();
    let forwarded = &seen[0];
    assert_eq!(forwarded.path, format!("{BASE}/{KEDA_METRIC}"), "same path");
    assert_eq!(
        forwarded.query.as_deref(),
        Some("labelSelector=scaledobject.keda.sh%2Fname%3Dorders-so")
    );
    assert_eq!(forwarded.token.as_deref(), Some(FRONT_TOKEN));
    assert_eq!(forwarded.audit_id.as_deref(), Some(AUDIT_ID));
    assert_eq!(forwarded.accept.as_deref(), Some("application/json, */*"));
    assert!(forwarded.http2);
    // KEDA reviewed our token and asked whether our ServiceAccount may list the metric.
    assert!(
        setup
            .kube
            .token_reviews()
            .iter()
            .any(|r| r["spec"]["token"] == FRONT_TOKEN)
    );
    assert!(setup.kube.access_reviews().iter().any(|r| {
        r["spec"]["user"] == FRONT_SA
            && r["spec"]["resourceAttributes"]["resource"] == KEDA_METRIC
            && r["spec"]["resourceAttributes"]["namespace"] == "default"
    }));
    let metrics = setup.front_metrics().await;
    assert!(
        metrics.contains(
            "cloudwatch_adapter_delegate_requests_total{delegate=\"keda\",outcome=\"success\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("cloudwatch_adapter_delegate_request_duration_seconds_count{delegate=\"keda\",outcome=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cloudwatch_adapter_requests_total{metric=\"forwarded\",code=\"200\"} 1"),
        "{metrics}"
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_second_instance_of_this_adapter_serves_its_own_names_as_a_delegate() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let path = format!("{BASE}/theirs-depth?labelSelector=QueueName%3Dbilling");
    let answer = setup.get(&aggregator, &path).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["items"][0]["value"], "5");
    assert_eq!(answer.json()["items"][0]["metricName"], "theirs-depth");
    // The same bytes the second adapter gives this adapter's ServiceAccount directly.
    let direct = setup
        .other
        .client()
        .get(format!("{}{path}", setup.other.base()))
        .bearer_auth(FRONT_TOKEN)
        .send()
        .await
        .unwrap();
    let direct = Answer::read(direct).await;
    assert_eq!(direct.status, 200);
    assert_eq!(answer.body, direct.body);
    // It authenticated us by TokenReview and authorized our ServiceAccount, not the HPA.
    assert!(setup.kube.access_reviews().iter().any(|r| {
        r["spec"]["user"] == FRONT_SA
            && r["spec"]["resourceAttributes"]["resource"] == "theirs-depth"
    }));
    setup.stop().await;
}

#[tokio::test]
async fn a_name_no_delegate_takes_is_our_404() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    // No delegate's name pattern matches.
    let answer = setup.get(&aggregator, &format!("{BASE}/nope")).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(
        answer.json(),
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the metric nope for namespace default",
            "reason": "NotFound", "code": 404})
    );
    // KEDA's name, but not the selector key KEDA needs: KEDA's rule does not take it, and the
    // second adapter's pattern does not match it.
    let answer = setup
        .get(
            &aggregator,
            &format!("{BASE}/{KEDA_METRIC}?labelSelector=app%3Dorders"),
        )
        .await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.json()["reason"], "NotFound");
    // Names that cannot be put in a delegate's URL are ours to refuse.
    let answer = setup.get(&aggregator, "/apis/external.metrics.k8s.io/v1beta1/namespaces/Default/s0-x?labelSelector=scaledobject.keda.sh%2Fname%3Dx").await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert!(setup.keda.value_requests().is_empty());
    setup.stop().await;
}

#[tokio::test]
async fn discovery_lists_ours_and_the_delegates_once_each() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let names = |answer: &Answer| -> Vec<String> {
        answer.json()["resources"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| r["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    until("the second adapter's names in discovery", async || {
        names(&setup.get(&aggregator, DISCOVERY).await).contains(&"theirs-depth".to_string())
    })
    .await;
    let answer = setup.get(&aggregator, DISCOVERY).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        names(&answer),
        [
            "api-latency-p90",
            "sqs-backlog",
            "sqs-idle-is-zero",
            "sqs-visible",
            "theirs-depth"
        ],
        "ours first, then the delegates', sqs-visible once; KEDA's placeholder `externalmetric` is not a name a request would reach it by"
    );
    assert!(setup.keda.discovery_requests() > 0, "KEDA was asked too");
    // Aggregated discovery at /apis says the same.
    let response = aggregator
        .get(format!("{}/apis", setup.front.base()))
        .header("X-Remote-User", HPA)
        .header(
            "Accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        )
        .send()
        .await
        .unwrap();
    let aggregated: Value = response.json().await.unwrap();
    let resources: Vec<&str> = aggregated["items"][0]["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [
            "api-latency-p90",
            "sqs-backlog",
            "sqs-idle-is-zero",
            "sqs-visible",
            "theirs-depth"
        ]
    );
    let metrics = setup.front_metrics().await;
    assert!(
        metrics.contains("cloudwatch_adapter_delegate_discovery_refreshes_total{delegate=\"second-adapter\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "cloudwatch_adapter_delegate_discovered_metrics{delegate=\"second-adapter\"} 2"
        ),
        "{metrics}"
    );

    // A delegate that goes down keeps its last list; our discovery keeps answering.
    let Setup { front, other, .. } = setup;
    other.stop().await.unwrap();
    until("a failed refresh of the second adapter's list", async || {
        reqwest::get(format!("http://{}/metrics", front.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("cloudwatch_adapter_delegate_discovery_refreshes_total{delegate=\"second-adapter\",outcome=\"unreachable\"}")
    })
    .await;
    let answer = hpa_get(&aggregator, &front, DISCOVERY).await;
    assert_eq!(answer.status, 200);
    assert!(names(&answer).contains(&"theirs-depth".to_string()));
    front.stop().await.unwrap();
}

#[tokio::test]
async fn a_delegate_that_is_down_or_slow_is_a_503_naming_it_and_never_blocks_ours() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let ours = format!("{BASE}/sqs-visible?labelSelector=QueueName%3Dorders");

    // Down: nothing listens on its address.
    setup.keda.stop();
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["reason"], "ServiceUnavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "the external metric {KEDA_METRIC} is served by delegate \"keda\" ({}), which could not be reached",
            setup.keda.url()
        )),
        "{message}"
    );
    assert_eq!(setup.get(&aggregator, &ours).await.status, 200);
    assert_eq!(setup.get(&aggregator, DISCOVERY).await.status, 200);

    // Back: the pool reconnects on its own.
    setup.keda.restart().await;
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // Slow: KEDA holds the request past its 1s timeout. Meanwhile our own metric is answered.
    setup.keda.hold();
    let slow = {
        let aggregator = aggregator.clone();
        let url = format!("{}{}", setup.front.base(), keda_path("orders-so"));
        tokio::spawn(async move { hpa_get_url(&aggregator, url).await })
    };
    until("KEDA holding the forwarded request", async || {
        setup.keda.in_flight() == 1
    })
    .await;
    let answer = setup.get(&aggregator, &ours).await;
    assert_eq!(answer.status, 200, "ours is answered while KEDA hangs");
    assert!(!slow.is_finished());
    let answer = slow.await.unwrap();
    setup.keda.release();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("delegate \"keda\""),
    );
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("which did not answer within 1s"),
        "{}",
        answer.text()
    );
    let metrics = setup.front_metrics().await;
    for outcome in ["unreachable", "timeout", "success"] {
        assert!(
            metrics.contains(&format!(
                "cloudwatch_adapter_delegate_requests_total{{delegate=\"keda\",outcome=\"{outcome}\"}} 1"
            )),
            "{outcome}: {metrics}"
        );
    }
    setup.stop().await;
}

#[tokio::test]
async fn a_caller_we_refuse_is_never_forwarded() {
    let setup = Setup::start(Options::default()).await;
    let path = keda_path("orders-so");
    // No credential at all (anonymous access is off).
    let response = setup
        .front
        .client()
        .get(format!("{}{path}", setup.front.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A token the cluster does not know.
    let response = setup
        .front
        .client()
        .get(format!("{}{path}", setup.front.base()))
        .bearer_auth("stolen-or-made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // A real identity without the right to read that metric.
    let (cert, key) = setup.client_ca.client("mallory", &[]);
    let response = setup
        .front
        .client_with_certificate(&cert, &key)
        .get(format!("{}{path}", setup.front.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "s0-rabbitmq-orders.external.metrics.k8s.io is forbidden: User \"mallory\" cannot list resource \"s0-rabbitmq-orders\" in API group \"external.metrics.k8s.io\" in the namespace \"default\""
    );
    // Identity headers without the front-proxy certificate are not believed either.
    let response = setup
        .front
        .client()
        .get(format!("{}{path}", setup.front.base()))
        .header("X-Remote-User", HPA)
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(setup.keda.value_requests().is_empty(), "KEDA saw nothing");
    assert!(
        !setup
            .front_metrics()
            .await
            .contains("cloudwatch_adapter_delegate_requests_total{")
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_delegate_whose_ca_is_wrong_is_a_503_and_never_trusted() {
    let setup = Setup::start(Options {
        ca: KedaCa::Wrong,
        ..Options::default()
    })
    .await;
    let aggregator = setup.aggregator();
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("delegate \"keda\"") && message.contains("failed the TLS check"),
        "{message}"
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    // The handshake failed: no request (and so no token) ever reached it.
    assert!(setup.keda.seen().is_empty(), "{:?}", setup.keda.seen());
    setup.stop().await;
}

#[tokio::test]
async fn a_delegates_own_status_errors_are_passed_on_as_they_are() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    // KEDA: a ScaledObject it does not know is its 500, with its message, as it wrote it.
    let path = keda_path("no-such-so");
    let answer = setup.get(&aggregator, &path).await;
    let direct = setup.keda_direct(&path).await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.body, direct.body);
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(
        answer.text(),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"rpc error: code = Unknown desc = error when getting metric values error getting scalers scaledobjects.keda.sh \\\"no-such-so\\\" not found\",\"code\":500}\n"
    );
    // KEDA refusing this adapter's ServiceAccount (RBAC not granted for that metric): its 403
    // reaches the HPA's events and names who needs the grant.
    let answer = setup
        .get(
            &aggregator,
            &format!(
                "{BASE}/s1-cron-nightly?labelSelector=scaledobject.keda.sh%2Fname%3Dorders-so"
            ),
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(
        answer.json()["message"],
        format!(
            "s1-cron-nightly.external.metrics.k8s.io is forbidden: User \"{FRONT_SA}\" cannot list resource \"s1-cron-nightly\" in API group \"external.metrics.k8s.io\" in the namespace \"default\""
        )
    );
    // The second adapter: a name it does not define either is its own 404.
    let answer = setup.get(&aggregator, &format!("{BASE}/sqs-nowhere")).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(
        answer.json()["message"],
        "the server could not find the metric sqs-nowhere for namespace default"
    );
    let metrics = setup.front_metrics().await;
    assert!(
        metrics.contains(
            "cloudwatch_adapter_delegate_requests_total{delegate=\"keda\",outcome=\"error_status\"} 2"
        ),
        "{metrics}"
    );
    setup.stop().await;
}

#[tokio::test]
async fn an_answer_too_large_is_a_503() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    let answer = setup
        .get(
            &aggregator,
            &format!("{BASE}/s0-huge?labelSelector=scaledobject.keda.sh%2Fname%3Dorders-so"),
        )
        .await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.json()["message"]
            .as_str()
            .unwrap()
            .contains("larger than 1048576 bytes"),
        "{}",
        answer.text()
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_delegate_at_its_concurrency_bound_fails_fast() {
    let setup = Setup::start(Options {
        keda_extra: "    maxConcurrentRequests: 1",
        ..Options::default()
    })
    .await;
    let aggregator = setup.aggregator();
    setup.keda.hold();
    let first = {
        let aggregator = aggregator.clone();
        let url = format!("{}{}", setup.front.base(), keda_path("orders-so"));
        tokio::spawn(async move { hpa_get_url(&aggregator, url).await })
    };
    until("KEDA holding the first request", async || {
        setup.keda.in_flight() == 1
    })
    .await;
    let second = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(
        second
            .text()
            .contains("has too many requests in flight from this adapter"),
        "{}",
        second.text()
    );
    setup.keda.release();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        setup.keda.value_requests().len(),
        1,
        "the second never left"
    );
    setup.stop().await;
}

#[tokio::test]
async fn a_rotated_service_account_token_is_picked_up_from_disk() {
    let setup = Setup::start(Options::default()).await;
    let aggregator = setup.aggregator();
    assert_eq!(
        setup.get(&aggregator, &keda_path("orders-so")).await.status,
        200
    );
    assert_eq!(
        setup.keda.value_requests()[0].token.as_deref(),
        Some(FRONT_TOKEN)
    );
    // The kubelet writes the new token next to the old one and swaps it in atomically.
    setup.kube.add_token(
        "front-sa-token-2",
        FRONT_SA,
        "uid-front",
        &["system:serviceaccounts"],
    );
    let next = setup.dir.path().join("token.next");
    std::fs::write(&next, "front-sa-token-2\n").unwrap();
    std::fs::rename(&next, &setup.token_file).unwrap();
    until("a forwarded request carrying the new token", async || {
        let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
        answer.status == 200
            && setup.keda.value_requests().last().unwrap().token.as_deref()
                == Some("front-sa-token-2")
    })
    .await;
    setup.stop().await;
}

#[tokio::test]
async fn kedas_ca_is_read_from_its_secret_and_follows_its_rotation() {
    let setup = Setup::start(Options {
        ca: KedaCa::Secret,
        ..Options::default()
    })
    .await;
    let aggregator = setup.aggregator();
    // Before the Secret exists, KEDA cannot be called (and is not called without a CA).
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer
            .text()
            .contains("waiting for key ca.crt of Secret keda/kedaorg-certs"),
        "{}",
        answer.text()
    );
    assert!(setup.keda.value_requests().is_empty());
    setup.kube.set_secret(
        "keda",
        "kedaorg-certs",
        &[
            ("ca.crt", setup.keda.ca_pem().as_bytes()),
            ("tls.key", b"not for us"),
        ],
    );
    until("forwarding with the CA from the Secret", async || {
        setup.get(&aggregator, &keda_path("orders-so")).await.status == 200
    })
    .await;
    // Only that one Secret was asked for, by name (what RBAC resourceNames can allow).
    let queries = setup.kube.secret_requests();
    assert!(!queries.is_empty());
    assert!(
        queries
            .iter()
            .all(|q| q.contains("fieldSelector=metadata.name%3Dkedaorg-certs")),
        "{queries:?}"
    );

    // KEDA rotates its CA: new connections fail the TLS check until the Secret says so too.
    let rotated = setup.keda.rotate_ca();
    setup.keda.restart().await;
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.text().contains("failed the TLS check"),
        "{}",
        answer.text()
    );
    setup
        .kube
        .set_secret("keda", "kedaorg-certs", &[("ca.crt", rotated.as_bytes())]);
    until("forwarding with the rotated CA", async || {
        setup.get(&aggregator, &keda_path("orders-so")).await.status == 200
    })
    .await;
    setup.stop().await;
}

#[tokio::test]
async fn a_client_certificate_can_stand_in_for_the_token() {
    let setup = Setup::start(Options {
        auth: KedaAuth::ClientCertificate,
        ..Options::default()
    })
    .await;
    let aggregator = setup.aggregator();
    let answer = setup.get(&aggregator, &keda_path("orders-so")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = &setup.keda.value_requests()[0];
    assert_eq!(seen.client_cn.as_deref(), Some(FRONT_SA));
    assert_eq!(
        seen.token, None,
        "no token when a certificate is configured"
    );
    setup.stop().await;
}
