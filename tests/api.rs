//! The real server on 127.0.0.1:0 against the CloudWatch emulator, over HTTPS.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cloudwatch_emulator::{Emulator, FaultKind};
use common::{DEFINITIONS, TestServer, minute, put, rfc3339};
use serde_json::json;

const VALUES: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";

#[tokio::test]
async fn discovery_documents_are_exactly_what_the_aggregator_expects() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (status, body) = server.get("/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, 200);
    let resource = |name: &str| {
        json!({"name": name, "singularName": "", "namespaced": true,
               "kind": "ExternalMetricValueList", "verbs": ["get"]})
    };
    assert_eq!(
        body,
        json!({"kind": "APIResourceList", "apiVersion": "v1",
               "groupVersion": "external.metrics.k8s.io/v1beta1",
               "resources": [resource("api-latency-p90"), resource("sqs-backlog"),
                             resource("sqs-idle-is-zero"), resource("sqs-visible")]})
    );

    let (status, body) = server.get("/apis/external.metrics.k8s.io").await;
    assert_eq!(status, 200);
    let version = json!({"groupVersion": "external.metrics.k8s.io/v1beta1", "version": "v1beta1"});
    assert_eq!(
        body,
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": "external.metrics.k8s.io",
               "preferredVersion": version, "versions": [version]})
    );

    let (status, body) = server.get("/apis").await;
    assert_eq!(status, 200);
    assert_eq!(body["kind"], "APIGroupList");
    assert_eq!(body["groups"][0]["name"], "external.metrics.k8s.io");

    // Aggregated discovery, with the Accept header kube-aggregator sends.
    let response = server
        .client()
        .get(format!("{}/apis", server.base()))
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    let resources = &body["items"][0]["versions"][0]["resources"];
    assert_eq!(resources.as_array().unwrap().len(), 4);
    assert_eq!(resources[3]["resource"], "sqs-visible");
    assert_eq!(resources[3]["scope"], "Namespaced");

    for path in ["/openapi/v2", "/openapi/v3"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body["paths"].is_object(), "{path}: {body}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn serves_the_newest_datapoint_with_its_timestamp_labels_and_window() {
    let emulator = Emulator::start().await.unwrap();
    let dims = [("QueueName", "orders")];
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &dims,
        minute(3),
        900.0,
    );
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &dims,
        minute(2),
        1250.0,
    );
    // Another queue must not leak in.
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "billing")],
        minute(1),
        7.0,
    );
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-visible?labelSelector=QueueName%3Dorders"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"kind": "ExternalMetricValueList", "apiVersion": "external.metrics.k8s.io/v1beta1",
               "metadata": {},
               "items": [{"metricName": "sqs-visible", "metricLabels": {"QueueName": "orders"},
                          "timestamp": rfc3339(minute(2)), "window": 60, "value": "1250"}]})
    );
    let (_, billing) = server
        .get(&format!(
            "{VALUES}/sqs-visible?labelSelector=QueueName%3Dbilling"
        ))
        .await;
    assert_eq!(billing["items"][0]["value"], "7");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fractions_math_expressions_and_percentiles() {
    let emulator = Emulator::start().await.unwrap();
    let dims = [("QueueName", "orders")];
    // Average of 1 and 2 in one minute is 1.5.
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &dims,
        minute(1),
        1.0,
    );
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &dims,
        minute(1) + Duration::from_secs(10),
        2.0,
    );
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesNotVisible",
        &dims,
        minute(1),
        40.0,
    );
    for value in 1..=10 {
        put(
            &emulator,
            "Shop/API",
            "Latency",
            &[],
            minute(1),
            f64::from(value) / 1000.0,
        );
    }
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-visible?labelSelector=QueueName%3Dorders"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "1500m");

    // visible (Maximum 2) + inflight (Maximum 40)
    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-backlog?labelSelector=QueueName%3Dorders"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "42");
    assert_eq!(body["items"][0]["timestamp"], rfc3339(minute(1)));

    // p90 of 1..10 ms is 9 ms.
    let (status, body) = server.get(&format!("{VALUES}/api-latency-p90")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "9m");
    assert_eq!(body["items"][0]["metricLabels"], serde_json::Value::Null);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn no_data_is_an_error_by_default_and_the_configured_value_otherwise() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-visible?labelSelector=QueueName%3Didle"
        ))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["reason"], "NotFound");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "no datapoints for AWS/SQS ApproximateNumberOfMessagesVisible QueueName=idle in the last 5m"
        ),
        "{message}"
    );

    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-idle-is-zero?labelSelector=QueueName%3Didle"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "0");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn errors_are_status_objects_with_actionable_messages() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start(DEFINITIONS, &emulator).await;

    let (status, body) = server.get(&format!("{VALUES}/sqs-orders")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "the server could not find the metric sqs-orders for namespace default",
               "reason": "NotFound", "code": 404})
    );

    let cases = [
        ("sqs-visible", "", "needs label \"QueueName\""),
        (
            "sqs-visible",
            "QueueName%21%3Dorders",
            "uses operator \"!=\"",
        ),
        (
            "sqs-visible",
            "QueueName%3Dorders%2Cenv%3Dprod",
            "label \"env\" in the selector is not used by metric sqs-visible",
        ),
        (
            "sqs-visible",
            "QueueName+in+%28a%2Cb%29",
            "with several values",
        ),
        ("sqs-visible", "QueueName+in+%28a", "invalid label selector"),
    ];
    for (metric, selector, needle) in cases {
        let (status, body) = server
            .get(&format!("{VALUES}/{metric}?labelSelector={selector}"))
            .await;
        assert_eq!(status, 400, "{selector}: {body}");
        assert_eq!(body["reason"], "BadRequest");
        assert_eq!(body["kind"], "Status");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "{selector}: {message}");
    }

    // An unknown metric is a 404 whatever its selector, and an encoded '/' never reaches a
    // cluster-wide definition under another name.
    let (status, body) = server
        .get(&format!(
            "{VALUES}/sqs-orders?labelSelector=QueueName+in+%28a"
        ))
        .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("NotFound")),
        "{body}"
    );
    let (status, _) = server
        .get("/apis/external.metrics.k8s.io/v1beta1/namespaces/a%2Fb/sqs-visible?labelSelector=QueueName%3Dorders")
        .await;
    assert_eq!(status, 404);

    // Unknown paths and methods are Status objects too.
    let (status, body) = server.get("/apis/other.group/v1").await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("NotFound")));
    let response = server
        .client()
        .post(format!("{}{VALUES}/sqs-visible", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn cloudwatch_failures_are_5xx_without_aws_details() {
    let emulator = Emulator::start().await.unwrap();
    for queue in ["denied", "throttled", "broken", "down", "fine"] {
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", queue)],
            minute(1),
            5.0,
        );
    }
    let server = TestServer::start(DEFINITIONS, &emulator).await;
    // Each case is a different series, so each request is its series' first fetch.
    let path = |queue: &str| format!("{VALUES}/sqs-visible?labelSelector=QueueName%3D{queue}");

    emulator.faults().inject(FaultKind::AccessDenied, 10);
    let (status, body) = server.get(&path("denied")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (500, Some("InternalError")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("sqs-visible") && message.contains("access denied"),
        "{message}"
    );
    assert!(
        !message.contains("AKIDTEST") && !message.contains("not authorized"),
        "{message}"
    );
    emulator.faults().clear();

    emulator.faults().inject(FaultKind::Throttling, 10);
    let (status, body) = server.get(&path("throttled")).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("ServiceUnavailable")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("throttled"),
        "{body}"
    );
    emulator.faults().clear();

    emulator.faults().inject(FaultKind::InternalFailure, 10);
    let (status, body) = server.get(&path("broken")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("server error"),
        "{body}"
    );
    emulator.faults().clear();

    emulator.set_down(true).await.unwrap();
    let (status, body) = server.get(&path("down")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    emulator.set_down(false).await.unwrap();

    // Back up: the real value, not a remembered or made-up one.
    let (status, body) = server.get(&path("fine")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"][0]["value"], "5");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn serves_http2_and_http1() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start(DEFINITIONS, &emulator).await;
    let url = format!("{}/apis/external.metrics.k8s.io/v1beta1", server.base());

    let h2 = server.client().get(&url).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    assert_eq!(h2.status(), 200);

    let h1 = common::client_trusting(&server.ca.pem)
        .http1_only()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn admin_port_serves_health_and_prometheus_metrics() {
    let emulator = Emulator::start().await.unwrap();
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(1),
        5.0,
    );
    let server = TestServer::start(DEFINITIONS, &emulator).await;
    server
        .get(&format!(
            "{VALUES}/sqs-visible?labelSelector=QueueName%3Dorders"
        ))
        .await;
    server.get(&format!("{VALUES}/no-such-metric")).await;

    let client = reqwest::Client::new();
    for path in ["/healthz", "/livez", "/readyz"] {
        let response = client
            .get(format!("http://{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let text = client
        .get(format!("http://{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"cloudwatch_adapter_requests_total{metric="sqs-visible",code="200"} 1"#),
        "{text}"
    );
    // Unknown names are pooled so a scanner cannot blow up cardinality.
    assert!(
        text.contains(r#"cloudwatch_adapter_requests_total{metric="unknown",code="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"cloudwatch_adapter_cloudwatch_calls_total{outcome="ok"} 1"#),
        "{text}"
    );
    for needle in [
        r#"cloudwatch_adapter_cache_lookups_total{result="miss"} 1"#,
        "cloudwatch_adapter_active_series 1",
        r#"cloudwatch_adapter_value_age_seconds{metric="sqs-visible"}"#,
        "cloudwatch_adapter_cloudwatch_metrics_requested_total 1",
        r#"cloudwatch_adapter_estimated_cost_dollars_total{source="cloudwatch"} 0.00001"#,
        "cloudwatch_adapter_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
    assert_eq!(emulator.stats().get_metric_data.calls, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_query_cloudwatch_rejects_fails_alone_while_the_series_it_was_batched_with_are_served() {
    let emulator = Emulator::start().await.unwrap();
    for (queue, value) in [("a", 1.0), ("b", 2.0), ("c", 3.0), ("poisoned", 4.0)] {
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", queue)],
            minute(1),
            value,
        );
    }
    // CloudWatch rejects a whole call when one of its queries is invalid.
    emulator.faults().poison(Some("poisoned"));
    let server = TestServer::start(DEFINITIONS, &emulator).await;
    let path = |queue: &str| format!("{VALUES}/sqs-visible?labelSelector=QueueName%3D{queue}");
    // Four first requests at once: one shared call.
    let paths = [path("a"), path("b"), path("c"), path("poisoned")];
    let (a, b, c, poisoned) = tokio::join!(
        server.get(&paths[0]),
        server.get(&paths[1]),
        server.get(&paths[2]),
        server.get(&paths[3]),
    );
    for ((status, body), expected) in [(a, "1"), (b, "2"), (c, "3")] {
        assert_eq!(
            (status, body["items"][0]["value"].clone()),
            (200, json!(expected))
        );
    }
    assert_eq!(poisoned.0, 500, "{}", poisoned.1);
    assert!(
        poisoned.1["message"]
            .as_str()
            .unwrap()
            .contains("rejects the query this selector makes"),
        "{}",
        poisoned.1
    );
    let stats = emulator.stats().get_metric_data;
    assert!(stats.calls >= 3, "the rejected call was split: {stats:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"cloudwatch_adapter_rejected_calls_searched_total{source="cloudwatch"}"#),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_wide_refusal_through_the_sdk_isolates_nobody_and_passes_with_its_window() {
    // What the real SDK makes of RequestExpired (clock skew) and of a proxy's HTML 400 page:
    // the request as a whole is refused, no query is to blame, so no series is searched or
    // isolated, and values come back as soon as the window ends.
    let emulator = Emulator::start().await.unwrap();
    for (queue, value) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", queue)],
            minute(1),
            value,
        );
    }
    let server = TestServer::start(DEFINITIONS, &emulator).await;
    let path = |queue: &str| format!("{VALUES}/sqs-visible?labelSelector=QueueName%3D{queue}");
    for kind in [FaultKind::RequestExpired, FaultKind::HtmlBadRequest] {
        emulator
            .faults()
            .inject_window(kind, Duration::from_secs(3600));
        let queue = if kind == FaultKind::RequestExpired {
            "a"
        } else {
            "b"
        };
        let (status, body) = server.get(&path(queue)).await;
        assert_eq!(status, 503, "{kind:?}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("refused the request as a whole"),
            "{kind:?}: {message}"
        );
        assert!(
            !message.contains("nginx") && !message.contains("expired"),
            "{message}"
        );
        emulator.faults().clear();
    }
    let metrics = server.metrics().await;
    assert!(
        !metrics.contains("rejected_calls_searched_total{"),
        "a request-wide refusal was searched:\n{metrics}"
    );
    assert!(
        metrics.contains(
            r#"cloudwatch_adapter_isolated_definitions{source="cloudwatch",scope="series"} 0"#
        ),
        "{metrics}"
    );
    // The windows are over: the next request probes, and the real value comes back within
    // seconds (the HPA asks every 15 s; here, every 200 ms).
    let started = std::time::Instant::now();
    loop {
        let (status, body) = server.get(&path("a")).await;
        if status == 200 {
            assert_eq!(body["items"][0]["value"], "1");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no value after the window: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await.unwrap();
}
