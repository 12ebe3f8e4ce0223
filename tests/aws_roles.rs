//! Per-metric `roleArn` (+ `externalId`) and cross-account `accountId` reach AWS as intended: the
//! adapter assumes the role through STS once and reuses the cached credentials, signs CloudWatch
//! calls with them, and the CloudWatch endpoint override does not redirect STS. STS is a small
//! fake speaking the SDK's awsQuery protocol; CloudWatch is the emulator behind a recording proxy.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::any;
use cloudwatch_emulator::Emulator;
use cloudwatch_metrics_adapter::definition;
use cloudwatch_metrics_adapter::source::cloudwatch::MetricDataSource;
use cloudwatch_metrics_adapter::source::cloudwatch::client::AwsCloudWatch;
use cloudwatch_metrics_adapter::source::cloudwatch::translate::build_request;
use common::{minute, put};

#[derive(Default)]
struct Seen {
    sts_bodies: Vec<String>,
    cloudwatch: Vec<(String, String, Bytes)>,
}

type Shared = Arc<Mutex<Seen>>;

const ASSUMED: &str = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAASSUMED</AccessKeyId>
      <SecretAccessKey>assumed-secret</SecretAccessKey>
      <SessionToken>assumed-session-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEXAMPLE:cloudwatch-metrics-adapter</AssumedRoleId>
      <Arn>arn:aws:sts::210987654321:assumed-role/reader/cloudwatch-metrics-adapter</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#;

async fn fake_sts(
    State(seen): State<Shared>,
    body: String,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    seen.lock().unwrap().sts_bodies.push(body);
    (StatusCode::OK, [("content-type", "text/xml")], ASSUMED)
}

/// Forward to the emulator, remembering who signed each call and what it asked.
async fn recording_proxy(
    State((seen, upstream)): State<(Shared, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    seen.lock().unwrap().cloudwatch.push((
        header("authorization"),
        header("x-amz-security-token"),
        body.clone(),
    ));
    let mut request = reqwest::Client::new().request(method, format!("{upstream}{uri}"));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = request.body(body).send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (name, value) in response.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            out.insert(name, value.clone());
        }
    }
    (status, out, response.bytes().await.unwrap())
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

const DEFINITIONS: &str = r#"
metrics:
  - name: cross-account
    roleArn: arn:aws:iam::210987654321:role/reader
    externalId: tenant-42
    queries:
      - id: visible
        accountId: "210987654321"
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: orders}]
          period: 60
          stat: Average
  - name: own-account
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: orders}]
          period: 60
          stat: Average
"#;

#[tokio::test]
async fn a_role_is_assumed_once_and_its_credentials_sign_cloudwatch_calls() {
    common::install_crypto();
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(1),
        4.0,
    );
    let seen: Shared = Arc::default();
    let sts = serve(
        Router::new()
            .fallback(any(fake_sts))
            .with_state(seen.clone()),
    )
    .await;
    let proxy = serve(
        Router::new()
            .fallback(any(recording_proxy))
            .with_state((seen.clone(), emulator.endpoint_url())),
    )
    .await;

    // The SDK-wide endpoint is the fake STS; only CloudWatch is overridden, as
    // --cloudwatch-endpoint-url does: a leak would send AssumeRole to the proxy.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&sts)
        .credentials_provider(Credentials::new(
            "AKIDBASE",
            "base-secret",
            None,
            None,
            "test",
        ))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await;
    let cloudwatch = AwsCloudWatch::new(sdk).with_endpoint_url(Some(proxy));
    let definitions = definition::parse(DEFINITIONS).unwrap();
    let labels = BTreeMap::new();
    let request = |name: &str| {
        build_request(definitions.get(name).unwrap(), &labels, SystemTime::now()).unwrap()
    };

    for _ in 0..2 {
        let results = cloudwatch
            .get_metric_data(&request("cross-account"))
            .await
            .unwrap();
        assert_eq!(results[0].points[0].1, 4.0);
    }
    cloudwatch
        .get_metric_data(&request("own-account"))
        .await
        .unwrap();

    let seen = seen.lock().unwrap();
    // One AssumeRole for two calls: the credentials are cached with the client.
    assert_eq!(seen.sts_bodies.len(), 1, "{:?}", seen.sts_bodies);
    let form: BTreeMap<String, String> = form_urlencoded::parse(seen.sts_bodies[0].as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["Action"], "AssumeRole");
    assert_eq!(form["RoleArn"], "arn:aws:iam::210987654321:role/reader");
    assert_eq!(form["ExternalId"], "tenant-42");
    assert_eq!(form["RoleSessionName"], "cloudwatch-metrics-adapter");

    assert_eq!(seen.cloudwatch.len(), 3);
    for (authorization, token, body) in &seen.cloudwatch[..2] {
        assert!(
            authorization.contains("Credential=ASIAASSUMED/"),
            "{authorization}"
        );
        assert_eq!(token, "assumed-session-token");
        // CBOR text strings are plain UTF-8: the cross-account AccountId is in the query.
        let text = String::from_utf8_lossy(body);
        assert!(text.contains("AccountId") && text.contains("210987654321"));
    }
    let (authorization, token, _) = &seen.cloudwatch[2];
    assert!(
        authorization.contains("Credential=AKIDBASE/"),
        "{authorization}"
    );
    assert!(token.is_empty());
}
