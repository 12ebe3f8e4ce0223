//! The `/_emulator/` admin API, malformed wire input, and the standalone binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
use ciborium::Value;
use cloudwatch_emulator::Emulator;
use common::{aligned_hour_ago, client, dt};
use serde_json::{Value as Json, json};
use tokio::io::AsyncBufReadExt;

const OPERATION: &str = "/service/GraniteServiceVersion20100801/operation/";

async fn admin(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Json>,
) -> (u16, Json) {
    let http = reqwest::Client::new();
    let mut request = http.request(method, format!("{}/_emulator/{path}", emu.endpoint_url()));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn sqs_visible_query() -> MetricDataQuery {
    MetricDataQuery::builder()
        .id("visible")
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace("AWS/SQS")
                        .metric_name("ApproximateNumberOfMessagesVisible")
                        .dimensions(
                            Dimension::builder()
                                .name("QueueName")
                                .value("orders")
                                .build(),
                        )
                        .build(),
                )
                .period(60)
                .stat("Maximum")
                .build(),
        )
        .build()
}

#[tokio::test]
async fn seeding_listing_and_clearing_data() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "data",
        Some(json!({
            "namespace": "AWS/SQS",
            "metricName": "ApproximateNumberOfMessagesVisible",
            "dimensions": {"QueueName": "orders"},
            "unit": "Count",
            "points": [{"timestamp": t0 + 60, "value": 1250}, {"timestamp": t0 + 120, "value": 1300.5}]
        })),
    )
    .await;
    assert_eq!((status, body), (200, json!({"stored": 2})));
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "data",
        Some(json!([
            {"namespace": "App", "metricName": "A", "points": [{"timestamp": t0, "value": 1}]},
            {"namespace": "App", "metricName": "B", "storageResolution": 1, "points": []}
        ])),
    )
    .await;
    assert_eq!((status, body), (200, json!({"stored": 1})));

    let client = client(&emu.endpoint_url(), 1).await;
    let out = client
        .get_metric_data()
        .metric_data_queries(sqs_visible_query())
        .start_time(dt(t0))
        .end_time(dt(t0 + 600))
        .send()
        .await
        .unwrap();
    assert_eq!(out.metric_data_results()[0].values(), &[1300.5, 1250.0]);

    let (status, listed) = admin(&emu, reqwest::Method::GET, "data", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["datapoints"], 3);
    assert_eq!(listed["metrics"].as_array().unwrap().len(), 2);

    for bad in [
        json!({"namespace": "App", "metricName": "A", "unit": "Parsecs", "points": []}),
        json!({"namespace": "App", "metricName": "A", "points": [{"timestamp": -5, "value": 1}]}),
        json!({"namespace": "App", "metricName": "A", "points": [{"timestamp": 1.0e30, "value": 1}]}),
        json!({"namespace": "App", "metricName": "A", "points": [{"timestamp": 1790000000000i64, "value": 1}]}),
        json!({"namespace": "App", "metricName": "A", "storageResolution": 5, "points": []}),
        json!({"namespace": "App", "metric": "A", "points": []}),
        json!("nonsense"),
    ] {
        let (status, body) = admin(&emu, reqwest::Method::POST, "data", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, _) = admin(&emu, reqwest::Method::DELETE, "data", None).await;
    assert_eq!(status, 200);
    let (_, listed) = admin(&emu, reqwest::Method::GET, "data", None).await;
    assert_eq!(listed["datapoints"], 0);
}

#[tokio::test]
async fn faults_latency_stats_and_reset_over_http() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "faults",
        Some(json!({"kind": "AccessDenied", "count": 2})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"pending": 2})));
    let (_, body) = admin(
        &emu,
        reqwest::Method::POST,
        "faults",
        Some(json!({"kind": "Throttling", "count": 1, "operation": "PutMetricData"})),
    )
    .await;
    assert_eq!(body, json!({"pending": 3}));
    let err = client.list_metrics().send().await.unwrap_err();
    assert_eq!(err.code(), Some("AccessDenied"));
    let (status, _) = admin(
        &emu,
        reqwest::Method::POST,
        "faults",
        Some(json!({"kind": "Meteor", "count": 1})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, body) = admin(&emu, reqwest::Method::DELETE, "faults", None).await;
    assert_eq!(body, json!({"pending": 0}));
    client.list_metrics().send().await.unwrap();

    let (status, _) = admin(
        &emu,
        reqwest::Method::POST,
        "latency",
        Some(json!({"millis": 200})),
    )
    .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    client.list_metrics().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    admin(&emu, reqwest::Method::DELETE, "faults", None).await;

    let (status, stats) = admin(&emu, reqwest::Method::GET, "stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["list_metrics"]["calls"], 3);
    assert_eq!(stats["list_metrics"]["errors"]["AccessDenied"], 1);
    assert_eq!(stats["get_metric_data"]["calls"], 0);
    let (status, _) = admin(&emu, reqwest::Method::POST, "reset", None).await;
    assert_eq!(status, 200);
    let (_, stats) = admin(&emu, reqwest::Method::GET, "stats", None).await;
    assert_eq!(stats["list_metrics"]["calls"], 0);
    let (_, health) = admin(&emu, reqwest::Method::GET, "health", None).await;
    assert_eq!(health, json!({"status": "ok"}));
}

#[tokio::test]
async fn fault_windows_and_poison_markers_over_http() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    let get = || {
        client
            .get_metric_data()
            .metric_data_queries(sqs_visible_query())
            .start_time(dt(t0))
            .end_time(dt(t0 + 600))
            .send()
    };

    // A window: every GetMetricData call fails until it ends by itself.
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "faults",
        Some(json!({"kind": "RequestExpired", "seconds": 1.5, "operation": "GetMetricData"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"], 0);
    assert_eq!(body["windows"][0]["kind"], "RequestExpired");
    assert_eq!(body["windows"][0]["operation"], "GetMetricData");
    assert!(body["windows"][0]["remainingSeconds"].as_f64().unwrap() > 1.0);
    assert_eq!(get().await.unwrap_err().code(), Some("RequestExpired"));
    client.list_metrics().send().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || get().await.is_ok()).await,
        "the window ends by itself"
    );
    let (_, body) = admin(&emu, reqwest::Method::GET, "faults", None).await;
    assert_eq!(body["windows"], json!([]));

    // A marker: calls mentioning it are refused; listed, then removed.
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "poison",
        Some(json!({"marker": "orders"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["poison"],
        json!([{"marker": "orders", "code": "InvalidParameterValue"}])
    );
    admin(
        &emu,
        reqwest::Method::POST,
        "poison",
        Some(json!({"marker": "other", "code": "ValidationError"})),
    )
    .await;
    let err = get().await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    let (_, body) = admin(&emu, reqwest::Method::GET, "faults", None).await;
    assert_eq!(body["poison"].as_array().unwrap().len(), 2);
    assert_eq!(body["latencyMillis"], 0);
    let (status, _) = admin(&emu, reqwest::Method::DELETE, "poison", None).await;
    assert_eq!(status, 200);
    get().await.unwrap();

    // DELETE /faults ends windows and removes markers too.
    for body in [
        json!({"kind": "HtmlBadRequest", "seconds": 3600}),
        json!({"kind": "Throttling", "count": 2}),
    ] {
        assert_eq!(
            admin(&emu, reqwest::Method::POST, "faults", Some(body))
                .await
                .0,
            200
        );
    }
    admin(
        &emu,
        reqwest::Method::POST,
        "poison",
        Some(json!({"marker": "orders"})),
    )
    .await;
    let err = get().await.unwrap_err();
    assert_eq!(err.code(), None, "the HTML page carries no code");
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
    admin(&emu, reqwest::Method::DELETE, "faults", None).await;
    get().await.unwrap();

    // Refused requests say why and change nothing.
    for (path, body, needle) in [
        (
            "faults",
            json!({"kind": "RequestExpired", "count": 1, "seconds": 5}),
            "either count",
        ),
        ("faults", json!({"kind": "RequestExpired"}), "either count"),
        (
            "faults",
            json!({"kind": "RequestExpired", "seconds": 0}),
            "more than 0",
        ),
        (
            "faults",
            json!({"kind": "RequestExpired", "seconds": 100000}),
            "at most 86400",
        ),
        ("poison", json!({"marker": ""}), "must not be empty"),
        (
            "poison",
            json!({"marker": "x", "code": "Throttling"}),
            "invalid JSON body",
        ),
    ] {
        let (status, answer) = admin(&emu, reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    let (_, body) = admin(&emu, reqwest::Method::GET, "faults", None).await;
    assert_eq!(
        body,
        json!({"pending": 0, "windows": [], "poison": [], "latencyMillis": 0})
    );
}

/// Polls `condition` every 20 ms for up to `limit`.
async fn eventually(limit: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn admin_down_goes_away_and_comes_back() {
    let emu = Emulator::start().await.unwrap();
    let addr = emu.addr();
    let (status, _) = admin(
        &emu,
        reqwest::Method::POST,
        "down",
        Some(json!({"seconds": 0})),
    )
    .await;
    assert_eq!(status, 400, "an outage needs an end");
    let (status, body) = admin(
        &emu,
        reqwest::Method::POST,
        "down",
        Some(json!({"seconds": 0.5})),
    )
    .await;
    assert_eq!((status, body), (202, json!({"downForSeconds": 0.5})));
    assert!(
        eventually(Duration::from_secs(3), async || {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await,
        "goes down"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "comes back"
    );
    let client = client(&emu.endpoint_url(), 1).await;
    client.list_metrics().send().await.unwrap();
}

async fn raw_post(
    emu: &Emulator,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", emu.endpoint_url()))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

const CBOR_HEADERS: &[(&str, &str)] = &[
    ("smithy-protocol", "rpc-v2-cbor"),
    ("content-type", "application/cbor"),
    ("x-amzn-query-mode", "true"),
];

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    let header = response.headers()["x-amzn-query-error"]
        .to_str()
        .unwrap()
        .to_string();
    let fault = if status >= 500 { "Receiver" } else { "Sender" };
    assert_eq!(header, format!("{code};{fault}"));
    assert_eq!(response.headers()["content-type"], "application/cbor");
    let body: Value = ciborium::de::from_reader(&response.bytes().await.unwrap()[..]).unwrap();
    let Value::Map(entries) = body else {
        panic!("error body is not a map")
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .and_then(|(_, v)| v.as_text())
            .unwrap()
            .to_string()
    };
    assert!(field("__type").ends_with(&format!("#{code}")));
    field("message")
}

fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn malformed_requests_get_clean_errors() {
    let emu = Emulator::start().await.unwrap();
    let get = format!("{OPERATION}GetMetricData");
    let put = format!("{OPERATION}PutMetricData");

    let msg = expect_error(
        raw_post(&emu, &get, CBOR_HEADERS, vec![0xff, 0xfe, 0x00]).await,
        400,
        "SerializationException",
    )
    .await;
    assert!(msg.contains("not valid CBOR"), "{msg}");

    let wrong_type = Value::Map(vec![
        (
            Value::Text("MetricDataQueries".into()),
            Value::Array(vec![]),
        ),
        (
            Value::Text("StartTime".into()),
            Value::Text("yesterday".into()),
        ),
    ]);
    let msg = expect_error(
        raw_post(&emu, &get, CBOR_HEADERS, cbor(&wrong_type)).await,
        400,
        "SerializationException",
    )
    .await;
    assert!(msg.contains("StartTime"), "{msg}");

    let msg = expect_error(
        raw_post(
            &emu,
            &get,
            &[("content-type", "application/cbor")],
            cbor(&wrong_type),
        )
        .await,
        400,
        "SerializationException",
    )
    .await;
    assert!(msg.contains("smithy-protocol"), "{msg}");

    let missing = Value::Map(vec![]);
    let msg = expect_error(
        raw_post(&emu, &get, CBOR_HEADERS, cbor(&missing)).await,
        400,
        "ValidationError",
    )
    .await;
    assert!(msg.contains("metricDataQueries"), "{msg}");

    let mut gzip_headers = CBOR_HEADERS.to_vec();
    gzip_headers.push(("content-encoding", "gzip"));
    let msg = expect_error(
        raw_post(&emu, &put, &gzip_headers, b"not gzip at all".to_vec()).await,
        400,
        "SerializationException",
    )
    .await;
    assert!(msg.contains("gzip"), "{msg}");
    // A valid gzip body is accepted.
    let datum = Value::Map(vec![
        (Value::Text("MetricName".into()), Value::Text("m".into())),
        (Value::Text("Value".into()), Value::Integer(3.into())),
    ]);
    let input = Value::Map(vec![
        (Value::Text("Namespace".into()), Value::Text("App".into())),
        (Value::Text("MetricData".into()), Value::Array(vec![datum])),
    ]);
    let ok = raw_post(&emu, &put, &gzip_headers, gzip(&cbor(&input))).await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["smithy-protocol"], "rpc-v2-cbor");

    let huge = vec![0u8; 1024 * 1024 + 1];
    expect_error(
        raw_post(&emu, &put, CBOR_HEADERS, huge).await,
        413,
        "RequestEntityTooLarge",
    )
    .await;

    let msg = expect_error(
        raw_post(
            &emu,
            &format!("{OPERATION}DescribeAlarms"),
            CBOR_HEADERS,
            vec![],
        )
        .await,
        404,
        "UnknownOperationException",
    )
    .await;
    assert!(msg.contains("DescribeAlarms"), "{msg}");

    // Deep nesting and assorted garbage never crash the server.
    let deep = [vec![0x81u8; 100_000], vec![0x00]].concat();
    expect_error(
        raw_post(&emu, &get, CBOR_HEADERS, deep).await,
        400,
        "SerializationException",
    )
    .await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        let len = (seed % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let response = raw_post(&emu, &get, CBOR_HEADERS, bytes).await;
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let s = emu.stats();
    assert_eq!(s.unknown_operations, 1);
    assert_eq!(s.put_metric_data.gzipped_requests, 1);
    assert!(s.get_metric_data.errors["SerializationException"] >= 4);
    // Still serving.
    let client = client(&emu.endpoint_url(), 1).await;
    assert_eq!(
        client.list_metrics().send().await.unwrap().metrics().len(),
        1
    );
}

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudwatch-emulator"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the binary prints its endpoint")
        .unwrap()
        .unwrap();
    let endpoint = line
        .strip_prefix("AWS_ENDPOINT_URL_CLOUDWATCH=")
        .expect(&line)
        .to_string();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let health: Json = reqwest::get(format!("{endpoint}/_emulator/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let client = client(&endpoint, 1).await;
    client.list_metrics().send().await.unwrap();

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
