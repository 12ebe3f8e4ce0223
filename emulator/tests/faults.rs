//! The request-wide and per-call faults through the real `aws-sdk-cloudwatch` client: what the
//! SDK surfaces for each (error code, HTTP status, retries), and that a fault window ends by
//! itself.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::operation::get_metric_data::{GetMetricDataError, GetMetricDataOutput};
use aws_sdk_cloudwatch::types::MetricDataQuery;
use cloudwatch_emulator::{Datum, Emulator, FaultKind, Operation, PoisonCode};
use common::{aligned_hour_ago, client, dt, stat_query_in};

const NS: &str = "App/Faults";

fn queue_query(id: &str, queue: &str) -> MetricDataQuery {
    stat_query_in(NS, id, "Depth", &[("QueueName", queue)], "Maximum", 60)
}

fn expression(id: &str, expression: &str) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(id)
        .expression(expression)
        .build()
}

async fn get(
    client: &Client,
    queries: Vec<MetricDataQuery>,
    t0: i64,
) -> Result<GetMetricDataOutput, SdkError<GetMetricDataError>> {
    client
        .get_metric_data()
        .set_metric_data_queries(Some(queries))
        .start_time(dt(t0))
        .end_time(dt(t0 + 600))
        .send()
        .await
}

/// Seeds one datapoint per queue a minute after `t0`, so a successful call returns values.
fn seed(emu: &Emulator, t0: i64, queues: &[&str]) {
    let at = UNIX_EPOCH + Duration::from_secs((t0 + 60) as u64);
    for (i, queue) in queues.iter().enumerate() {
        emu.put(
            Datum::new(NS, "Depth", i as f64 + 1.0)
                .dimension("QueueName", *queue)
                .at(at),
        );
    }
}

fn status<E>(err: &SdkError<E>) -> u16 {
    err.raw_response().unwrap().status().as_u16()
}

/// Calls until one succeeds (bounded), returning how long that took.
async fn until_a_call_succeeds(client: &Client, t0: i64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if get(client, vec![queue_query("q", "orders")], t0)
            .await
            .is_ok()
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the fault window did not end within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_request_expired_window_fails_every_call_and_ends_by_itself() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    seed(&emu, t0, &["orders"]);
    // Three attempts: RequestExpired is a client error, which the SDK does not retry.
    let client = client(&emu.endpoint_url(), 3).await;
    emu.faults().inject(FaultKind::Throttling, 1);
    let window = Duration::from_millis(1500);
    emu.faults()
        .inject_window(FaultKind::RequestExpired, window);
    let injected = Instant::now();

    for _ in 0..3 {
        let err = get(&client, vec![queue_query("q", "orders")], t0)
            .await
            .unwrap_err();
        assert!(matches!(err, SdkError::ServiceError(_)), "{err:?}");
        assert_eq!(err.code(), Some("RequestExpired"));
        assert_eq!(err.message(), Some("Request has expired."));
        assert_eq!(status(&err), 400);
        assert_eq!(
            err.raw_response()
                .unwrap()
                .headers()
                .get("x-amzn-query-error"),
            Some("RequestExpired;Sender")
        );
    }
    let err = client.list_metrics().send().await.unwrap_err();
    assert_eq!(err.code(), Some("RequestExpired"), "every operation");
    let stats = emu.stats();
    assert_eq!(
        stats.get_metric_data.calls, 3,
        "one attempt per call: no retry"
    );
    assert_eq!(stats.get_metric_data.errors["RequestExpired"], 3);
    assert_eq!(stats.get_metric_data.queries, 0, "nothing was evaluated");
    assert_eq!(
        emu.faults().pending(),
        1,
        "the window consumed no counted fault"
    );
    assert_eq!(emu.faults().windows()[0].kind, FaultKind::RequestExpired);

    // Nobody clears it: the next call that succeeds comes after the window, by itself. The
    // counted Throttling left behind is absorbed by the client's retry on the way.
    let waited = until_a_call_succeeds(&client, t0, Duration::from_secs(10)).await;
    assert!(
        injected.elapsed() >= window,
        "succeeded {waited:?} in, before the window ended"
    );
    assert!(emu.faults().windows().is_empty());
    assert_eq!(emu.faults().pending(), 0);
    let out = get(&client, vec![queue_query("q", "orders")], t0)
        .await
        .unwrap();
    assert_eq!(out.metric_data_results()[0].values(), [1.0]);
}

#[tokio::test]
async fn a_proxy_html_page_surfaces_as_a_400_without_an_error_code() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    seed(&emu, t0, &["orders"]);
    let client = client(&emu.endpoint_url(), 3).await;
    let window = Duration::from_millis(1500);
    emu.faults()
        .inject_window_for(Operation::GetMetricData, FaultKind::HtmlBadRequest, window);
    let injected = Instant::now();

    let err = get(&client, vec![queue_query("q", "orders")], t0)
        .await
        .unwrap_err();
    // The SDK cannot read an error code out of HTML: a service error with no code or message.
    assert!(matches!(err, SdkError::ServiceError(_)), "{err:?}");
    assert_eq!(err.code(), None);
    assert_eq!(err.message(), None);
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.meta().code().is_none())
    );
    let raw = err.raw_response().unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    assert_eq!(raw.headers().get("content-type"), Some("text/html"));
    assert_eq!(raw.headers().get("x-amzn-query-error"), None);
    assert!(
        std::str::from_utf8(raw.body().bytes().unwrap())
            .unwrap()
            .contains("<h1>400 Bad Request</h1>")
    );
    let stats = emu.stats().get_metric_data;
    assert_eq!(stats.calls, 1, "a 400 is not retried");
    assert_eq!(stats.errors["HtmlBadRequest"], 1);
    client
        .list_metrics()
        .send()
        .await
        .expect("a window aimed at GetMetricData leaves ListMetrics alone");

    until_a_call_succeeds(&client, t0, Duration::from_secs(10)).await;
    assert!(injected.elapsed() >= window);
}

#[tokio::test]
async fn a_call_mentioning_a_marker_is_rejected_whole_naming_the_member() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    seed(&emu, t0, &["a", "b", "poisoned-queue"]);
    let client = client(&emu.endpoint_url(), 3).await;
    emu.faults()
        .reject_marker("poisoned", PoisonCode::InvalidParameterValue);

    // One query of three mentions it, as a dimension value: the whole call fails.
    let err = get(
        &client,
        vec![
            queue_query("a", "a"),
            queue_query("p", "poisoned-queue"),
            queue_query("b", "b"),
        ],
        t0,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SdkError::ServiceError(_)), "{err:?}");
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    assert_eq!(status(&err), 400);
    assert_eq!(
        err.raw_response()
            .unwrap()
            .headers()
            .get("x-amzn-query-error"),
        Some("InvalidParameterValue;Sender")
    );
    assert_eq!(
        err.message(),
        Some(
            "The value poisoned-queue for parameter MetricDataQueries.member.2.MetricStat.Metric.Dimensions.member.1.Value is not valid."
        )
    );
    assert_eq!(emu.stats().get_metric_data.calls, 1, "a 400 is not retried");

    // In an expression, or a metric name.
    let err = get(
        &client,
        vec![
            queue_query("a", "a"),
            expression("e", "a * 2 + 0 * LEN_poisoned"),
        ],
        t0,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    assert!(
        err.message()
            .unwrap()
            .contains("parameter MetricDataQueries.member.2.Expression"),
        "{:?}",
        err.message()
    );
    let named = stat_query_in(NS, "n", "poisoned_metric", &[], "Sum", 60);
    let err = get(&client, vec![named], t0).await.unwrap_err();
    assert!(
        err.message()
            .unwrap()
            .contains("MetricDataQueries.member.1.MetricStat.Metric.MetricName"),
        "{:?}",
        err.message()
    );

    // The same call without the marker is served.
    let out = get(
        &client,
        vec![queue_query("a", "a"), queue_query("b", "b")],
        t0,
    )
    .await
    .unwrap();
    assert_eq!(out.metric_data_results()[1].values(), [2.0]);

    // The compatible form refuses with ValidationError; clearing serves every call again.
    emu.faults().poison(Some("b"));
    let err = get(&client, vec![queue_query("b", "b")], t0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationError"));
    emu.faults().poison(None);
    get(
        &client,
        vec![queue_query("p", "poisoned-queue"), queue_query("b", "b")],
        t0,
    )
    .await
    .unwrap();
    let stats = emu.stats().get_metric_data;
    assert_eq!(stats.errors["InvalidParameterValue"], 3);
    assert_eq!(stats.errors["ValidationError"], 1);
}

#[tokio::test]
async fn an_unknown_function_fails_the_whole_call_as_cloudwatch_does() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    seed(&emu, t0, &["a", "b"]);
    let client = client(&emu.endpoint_url(), 3).await;
    for bad in ["NOPE(m)", "m + NOPE(m) * 2", "SUM([m, NOPE(b)])"] {
        let err = get(
            &client,
            vec![
                queue_query("m", "a"),
                queue_query("b", "b"),
                expression("e", bad),
            ],
            t0,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SdkError::ServiceError(_)), "{bad}: {err:?}");
        assert_eq!(err.code(), Some("ValidationError"), "{bad}");
        assert_eq!(status(&err), 400, "{bad}");
        assert!(
            err.message().unwrap().contains("NOPE"),
            "{:?}",
            err.message()
        );
    }
    let stats = emu.stats().get_metric_data;
    assert_eq!(stats.calls, 3, "a validation error is not retried");
    assert_eq!(stats.errors["ValidationError"], 3);
    assert_eq!(stats.queries, 0, "no query of a rejected call is answered");
    // A known function the emulator does not implement is a different answer: never a guess.
    let err = get(
        &client,
        vec![queue_query("m", "a"), expression("e", "RATE(m)")],
        t0,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("EmulatorUnsupported"));
    let out = get(
        &client,
        vec![queue_query("m", "a"), expression("e", "m * 2")],
        t0,
    )
    .await
    .unwrap();
    assert_eq!(out.metric_data_results()[1].values(), [2.0]);
}

#[tokio::test]
async fn access_denied_is_not_retried_and_throttling_is() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 3).await;
    emu.faults().inject(FaultKind::AccessDenied, 1);
    let err = client.list_metrics().send().await.unwrap_err();
    assert_eq!((err.code(), status(&err)), (Some("AccessDenied"), 403));
    assert_eq!(emu.stats().list_metrics.calls, 1);
    emu.faults().inject(FaultKind::Throttling, 2);
    client.list_metrics().send().await.unwrap();
    assert_eq!(
        emu.stats().list_metrics.calls,
        4,
        "two throttled attempts, then success"
    );
}
