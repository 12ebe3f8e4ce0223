//! The real `aws-sdk-cloudwatch` client against the emulator over a real socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::operation::get_metric_data::{GetMetricDataError, GetMetricDataOutput};
use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
use aws_sdk_cloudwatch::types::{
    DimensionFilter, Metric, MetricDataQuery, MetricDatum, MetricStat, ScanBy, StandardUnit,
    StatisticSet, StatusCode,
};
use cloudwatch_emulator::{Datum, Emulator, FaultKind, Operation};
use common::{aligned_hour_ago, client, dim, dt, stat_query_in, unique_namespace};

const NS: &str = "App/Test";

type Points = Vec<(i64, f64)>;

fn stat_query(
    id: &str,
    name: &str,
    dims: &[(&str, &str)],
    stat: &str,
    period: i32,
) -> MetricDataQuery {
    stat_query_in(NS, id, name, dims, stat, period)
}

fn expr_query(id: &str, expression: &str) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(id)
        .expression(expression)
        .build()
}

/// `(seconds after t0, value)` per result, in response order.
fn series(out: &GetMetricDataOutput, t0: i64) -> Vec<Vec<(i64, f64)>> {
    out.metric_data_results()
        .iter()
        .map(|r| {
            r.timestamps()
                .iter()
                .map(|t| t.secs() - t0)
                .zip(r.values().iter().copied())
                .collect()
        })
        .collect()
}

async fn get(
    client: &Client,
    queries: Vec<MetricDataQuery>,
    start: i64,
    end: i64,
    scan: Option<ScanBy>,
) -> Result<GetMetricDataOutput, SdkError<GetMetricDataError>> {
    client
        .get_metric_data()
        .set_metric_data_queries(Some(queries))
        .start_time(dt(start))
        .end_time(dt(end))
        .set_scan_by(scan)
        .send()
        .await
        .map_err(|e| e.map_service_error(|s| s))
}

/// Puts 1 and 3 in the first minute, 5 in the second, 7 five minutes later, via the SDK.
async fn put_latency(client: &Client, t0: i64) {
    let datum = |offset: i64, value: f64| {
        MetricDatum::builder()
            .metric_name("Latency")
            .dimensions(dim("Api", "orders"))
            .timestamp(dt(t0 + offset))
            .value(value)
            .unit(StandardUnit::Milliseconds)
            .build()
    };
    client
        .put_metric_data()
        .namespace(NS)
        .metric_data(datum(0, 1.0))
        .metric_data(datum(10, 3.0))
        .metric_data(datum(60, 5.0))
        .metric_data(datum(300, 7.0))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn put_then_get_each_statistic_and_period() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    put_latency(&client, t0).await;
    let d = [("Api", "orders")];
    let cases: Vec<(&str, i32, Points)> = vec![
        ("Sum", 60, vec![(0, 4.0), (60, 5.0), (300, 7.0)]),
        ("Average", 60, vec![(0, 2.0), (60, 5.0), (300, 7.0)]),
        ("Minimum", 60, vec![(0, 1.0), (60, 5.0), (300, 7.0)]),
        ("Maximum", 60, vec![(0, 3.0), (60, 5.0), (300, 7.0)]),
        ("SampleCount", 60, vec![(0, 2.0), (60, 1.0), (300, 1.0)]),
        ("Sum", 300, vec![(0, 9.0), (300, 7.0)]),
        ("Average", 300, vec![(0, 3.0), (300, 7.0)]),
        ("p50", 300, vec![(0, 3.0), (300, 7.0)]),
        ("p99.9", 300, vec![(0, 5.0), (300, 7.0)]),
    ];
    for (stat, period, want) in cases {
        let out = get(
            &client,
            vec![stat_query("m", "Latency", &d, stat, period)],
            t0,
            t0 + 600,
            Some(ScanBy::TimestampAscending),
        )
        .await
        .unwrap();
        assert_eq!(series(&out, t0), vec![want], "{stat}/{period}");
        let r = &out.metric_data_results()[0];
        assert_eq!(r.status_code(), Some(&StatusCode::Complete));
        assert_eq!(r.label(), Some("Latency"));
    }
    // Default order is newest first; TimestampDescending says the same.
    for scan in [None, Some(ScanBy::TimestampDescending)] {
        let out = get(
            &client,
            vec![stat_query("m", "Latency", &d, "Sum", 60)],
            t0,
            t0 + 600,
            scan,
        )
        .await
        .unwrap();
        assert_eq!(
            series(&out, t0),
            vec![vec![(300, 7.0), (60, 5.0), (0, 4.0)]]
        );
    }
    // The unit filter selects data put with that unit only.
    let with_unit = |unit: StandardUnit| {
        let mut q = stat_query("m", "Latency", &d, "Sum", 60);
        q.metric_stat.as_mut().unwrap().unit = Some(unit);
        q
    };
    let out = get(
        &client,
        vec![with_unit(StandardUnit::Milliseconds)],
        t0,
        t0 + 600,
        None,
    )
    .await
    .unwrap();
    assert_eq!(series(&out, t0)[0].len(), 3);
    let out = get(
        &client,
        vec![with_unit(StandardUnit::Seconds)],
        t0,
        t0 + 600,
        None,
    )
    .await
    .unwrap();
    assert!(series(&out, t0)[0].is_empty());
    assert_eq!(
        out.metric_data_results()[0].status_code(),
        Some(&StatusCode::Complete)
    );
}

#[tokio::test]
async fn no_data_dimension_mismatch_labels_and_return_data() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    put_latency(&client, t0).await;
    let d = [("Api", "orders")];
    let out = get(
        &client,
        vec![
            stat_query("mismatch", "Latency", &[("Api", "billing")], "Sum", 60),
            stat_query("subset", "Latency", &[], "Sum", 60),
            stat_query("missing", "Nope", &d, "Sum", 60),
            stat_query("sum", "Latency", &d, "Sum", 60),
            stat_query("avg", "Latency", &d, "Average", 60),
            MetricDataQuery::builder()
                .id("hidden")
                .return_data(false)
                .metric_stat(
                    stat_query("x", "Latency", &d, "Maximum", 60)
                        .metric_stat
                        .unwrap(),
                )
                .build(),
            MetricDataQuery::builder()
                .id("named")
                .label("orders p50")
                .metric_stat(
                    stat_query("x", "Latency", &d, "p50", 60)
                        .metric_stat
                        .unwrap(),
                )
                .build(),
        ],
        t0,
        t0 + 600,
        None,
    )
    .await
    .unwrap();
    let results = out.metric_data_results();
    let ids: Vec<&str> = results.iter().map(|r| r.id().unwrap()).collect();
    assert_eq!(
        ids,
        ["mismatch", "subset", "missing", "sum", "avg", "named"]
    );
    for r in &results[..3] {
        assert!(
            r.values().is_empty() && r.timestamps().is_empty(),
            "{:?}",
            r.id()
        );
        assert_eq!(r.status_code(), Some(&StatusCode::Complete));
    }
    let labels: Vec<&str> = results.iter().map(|r| r.label().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "Latency",
            "Latency",
            "Nope",
            "Latency Sum",
            "Latency Average",
            "orders p50"
        ]
    );
    assert_eq!(out.messages(), &[]);
}

#[tokio::test]
async fn high_resolution_datapoints_and_statistic_sets() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    // High-resolution data is only kept for three hours, so use the last few minutes.
    let t0 = (common::now_secs() - 600) / 60 * 60;
    let hi = |offset: i64, value: f64| {
        MetricDatum::builder()
            .metric_name("Hits")
            .timestamp(dt(t0 + offset))
            .value(value)
            .storage_resolution(1)
            .build()
    };
    let set = MetricDatum::builder()
        .metric_name("Batch")
        .timestamp(dt(t0))
        .statistic_values(
            StatisticSet::builder()
                .sample_count(10.0)
                .sum(55.0)
                .minimum(1.0)
                .maximum(10.0)
                .build(),
        )
        .build();
    let values = MetricDatum::builder()
        .metric_name("Sizes")
        .timestamp(dt(t0))
        .values(1.0)
        .values(10.0)
        .counts(2.0)
        .counts(4.0)
        .build();
    client
        .put_metric_data()
        .namespace(NS)
        .metric_data(hi(1, 1.0))
        .metric_data(hi(9, 2.0))
        .metric_data(hi(11, 4.0))
        .metric_data(set)
        .metric_data(values)
        .send()
        .await
        .unwrap();
    let out = get(
        &client,
        vec![
            stat_query("h", "Hits", &[], "Sum", 10),
            stat_query("h1", "Hits", &[], "SampleCount", 1),
            stat_query("bmin", "Batch", &[], "Minimum", 60),
            stat_query("bavg", "Batch", &[], "Average", 60),
            stat_query("bp50", "Batch", &[], "p50", 60),
            stat_query("scount", "Sizes", &[], "SampleCount", 60),
            stat_query("sp50", "Sizes", &[], "p50", 60),
        ],
        t0,
        t0 + 60,
        Some(ScanBy::TimestampAscending),
    )
    .await
    .unwrap();
    assert_eq!(
        series(&out, t0),
        vec![
            vec![(0, 3.0), (10, 4.0)],
            vec![(1, 1.0), (9, 1.0), (11, 1.0)],
            vec![(0, 1.0)],
            vec![(0, 5.5)],
            // CloudWatch cannot compute percentiles from a statistic set with Min != Max.
            vec![],
            vec![(0, 6.0)],
            vec![(0, 10.0)],
        ]
    );
}

#[tokio::test]
async fn large_put_is_gzipped_by_the_sdk_and_accepted() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    let data: Vec<MetricDatum> = (0..1000)
        .map(|i| {
            MetricDatum::builder()
                .metric_name("Requests")
                .dimensions(dim("Queue", &format!("queue-{:03}", i % 100)))
                .dimensions(dim("Environment", "production-eu-west-1"))
                .timestamp(dt(t0 + (i % 10) * 60))
                .value(i as f64)
                .unit(StandardUnit::Count)
                .build()
        })
        .collect();
    client
        .put_metric_data()
        .namespace(NS)
        .set_metric_data(Some(data))
        .send()
        .await
        .unwrap();
    let stats = emu.stats().put_metric_data;
    assert_eq!(
        stats.gzipped_requests, 1,
        "the SDK compresses bodies over 10 KiB"
    );
    assert_eq!(stats.datapoints_received, 1000);
    let q = stat_query(
        "q",
        "Requests",
        &[
            ("Queue", "queue-007"),
            ("Environment", "production-eu-west-1"),
        ],
        "SampleCount",
        600,
    );
    let out = get(&client, vec![q], t0, t0 + 600, None).await.unwrap();
    assert_eq!(series(&out, t0), vec![vec![(0, 10.0)]]);
}

#[tokio::test]
async fn pagination_through_the_sdk_paginator() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    for i in 0..20 {
        emu.put(
            Datum::new(NS, "Seq", i as f64)
                .at(UNIX_EPOCH + Duration::from_secs((t0 + i * 60) as u64)),
        );
    }
    let mut pages = client
        .get_metric_data()
        .metric_data_queries(stat_query("a", "Seq", &[], "Sum", 60))
        .metric_data_queries(stat_query("b", "Seq", &[], "Maximum", 300))
        .start_time(dt(t0))
        .end_time(dt(t0 + 1200))
        .max_datapoints(7)
        .into_paginator()
        .send();
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut statuses = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        let rs = page.metric_data_results();
        a.extend(rs[0].values().iter().copied());
        b.extend(rs[1].values().iter().copied());
        statuses.push((
            rs[0].status_code().cloned().unwrap(),
            rs[1].status_code().cloned().unwrap(),
        ));
    }
    assert_eq!(
        a,
        (0..20).rev().map(f64::from).collect::<Vec<_>>(),
        "newest first across pages"
    );
    assert_eq!(b, vec![19.0, 14.0, 9.0, 4.0]);
    assert_eq!(statuses.len(), 4);
    assert_eq!(
        statuses[0],
        (StatusCode::PartialData, StatusCode::PartialData)
    );
    assert_eq!(statuses[3], (StatusCode::Complete, StatusCode::Complete));
    let s = emu.stats().get_metric_data;
    assert_eq!(
        (
            s.calls,
            s.queries,
            s.metrics_requested,
            s.datapoints_returned
        ),
        (4, 8, 8, 24)
    );
}

#[tokio::test]
async fn metric_math_through_the_sdk() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    for (i, (errors, requests)) in [(1.0, 10.0), (0.0, 20.0), (5.0, 0.0)]
        .into_iter()
        .enumerate()
    {
        let at = UNIX_EPOCH + Duration::from_secs((t0 + i as i64 * 60) as u64);
        emu.put(Datum::new(NS, "Errors", errors).at(at));
        emu.put(Datum::new(NS, "Requests", requests).at(at));
    }
    let base = || {
        vec![
            stat_query("errors", "Errors", &[], "Sum", 60),
            stat_query("requests", "Requests", &[], "Sum", 60),
        ]
    };
    let mut queries = base();
    queries.push(expr_query("rate", "100 * errors / requests"));
    queries.push(expr_query("total", "SUM(METRICS())"));
    queries.push(
        MetricDataQuery::builder()
            .id("spread")
            .expression("requests - AVG(requests)")
            .label("spread")
            .build(),
    );
    let out = get(
        &client,
        queries,
        t0,
        t0 + 600,
        Some(ScanBy::TimestampAscending),
    )
    .await
    .unwrap();
    let got = series(&out, t0);
    assert_eq!(
        got[2],
        vec![(0, 10.0), (60, 0.0)],
        "division by zero leaves no datapoint"
    );
    assert_eq!(got[3], vec![(0, 11.0), (60, 20.0), (120, 5.0)]);
    assert_eq!(got[4], vec![(0, 0.0), (60, 10.0), (120, -10.0)]);
    let labels: Vec<&str> = out
        .metric_data_results()
        .iter()
        .map(|r| r.label().unwrap())
        .collect();
    assert_eq!(labels[2..], ["rate", "total", "spread"]);

    let mut refused = base();
    refused.push(expr_query("f", "FILL(errors, 0)"));
    let err = get(&client, refused, t0, t0 + 600, None).await.unwrap_err();
    assert_eq!(err.code(), Some("EmulatorUnsupported"));
    assert!(err.message().unwrap().contains("FILL"));

    let mut unknown = base();
    unknown.push(expr_query("e", "errors + m9"));
    let err = get(&client, unknown, t0, t0 + 600, None).await.unwrap_err();
    assert_eq!(err.code(), Some("ValidationError"));
    assert!(err.message().unwrap().contains("m9"));
}

#[tokio::test]
async fn list_metrics_filters_and_paginates() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    for i in 0..501 {
        emu.put(Datum::new("Bulk", format!("m{i:03}"), 1.0));
    }
    emu.put(
        Datum::new("AWS/SQS", "ApproximateNumberOfMessagesVisible", 3.0)
            .dimension("QueueName", "orders"),
    );
    emu.put(
        Datum::new("AWS/SQS", "ApproximateNumberOfMessagesVisible", 4.0)
            .dimension("QueueName", "billing"),
    );
    let first = client
        .list_metrics()
        .namespace("Bulk")
        .send()
        .await
        .unwrap();
    assert_eq!(first.metrics().len(), 500);
    assert!(first.next_token().is_some());
    let pages: Vec<_> = client
        .list_metrics()
        .namespace("Bulk")
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert_eq!(
        pages.iter().map(|p| p.metrics().len()).collect::<Vec<_>>(),
        vec![500, 1]
    );
    let orders = client
        .list_metrics()
        .namespace("AWS/SQS")
        .dimensions(
            DimensionFilter::builder()
                .name("QueueName")
                .value("orders")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(orders.metrics().len(), 1);
    let m = &orders.metrics()[0];
    assert_eq!(m.metric_name(), Some("ApproximateNumberOfMessagesVisible"));
    assert_eq!(m.dimensions()[0].value(), Some("orders"));
    let by_name = client
        .list_metrics()
        .dimensions(DimensionFilter::builder().name("QueueName").build())
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.metrics().len(), 2);
    assert_eq!(emu.stats().list_metrics.calls, 5);
}

#[tokio::test]
async fn validation_errors_decode_with_their_codes() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    let ok = || stat_query("m", "Latency", &[], "Sum", 60);
    let no_stat = MetricDataQuery::builder()
        .id("m")
        .metric_stat(
            MetricStat::builder()
                .metric(Metric::builder().namespace(NS).metric_name("L").build())
                .period(60)
                .build(),
        )
        .build();
    let no_period = MetricDataQuery::builder()
        .id("m")
        .metric_stat(
            MetricStat::builder()
                .metric(Metric::builder().namespace(NS).metric_name("L").build())
                .stat("Sum")
                .build(),
        )
        .build();
    let cases: Vec<(Vec<MetricDataQuery>, i64, &str, &str)> = vec![
        (
            vec![stat_query("sqs-visible", "L", &[], "Sum", 60)],
            600,
            "ValidationError",
            "is not matching the expected pattern ^[a-z][a-zA-Z0-9_]*$",
        ),
        (vec![ok(), ok()], 600, "ValidationError", "are not unique"),
        (
            (0..501)
                .map(|i| stat_query(&format!("m{i}"), "L", &[], "Sum", 60))
                .collect(),
            600,
            "ValidationError",
            "less than or equal to 500",
        ),
        (
            vec![no_stat],
            600,
            "ValidationError",
            "MetricStat.Stat is required",
        ),
        (
            vec![no_period],
            600,
            "ValidationError",
            "MetricStat.Period is required",
        ),
        (
            vec![stat_query("m", "L", &[], "Sum", 45)],
            600,
            "ValidationError",
            "The value 45 for parameter",
        ),
        (
            vec![stat_query("m", "L", &[], "Mean", 60)],
            600,
            "ValidationError",
            "is not a valid statistic",
        ),
        (
            vec![ok()],
            0,
            "ValidationError",
            "StartTime must be less than the parameter EndTime",
        ),
        (
            vec![stat_query("m", "L", &[], "IQM", 60)],
            600,
            "EmulatorUnsupported",
            "IQM",
        ),
    ];
    for (queries, span, code, fragment) in cases {
        let err = get(&client, queries, t0, t0 + span, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code), "{err:?}");
        assert!(
            err.message().unwrap().contains(fragment),
            "{:?}",
            err.message()
        );
        assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
    }
    // The modelled error decodes into its typed variant.
    let err = client
        .get_metric_data()
        .metric_data_queries(ok())
        .start_time(dt(t0))
        .end_time(dt(t0 + 600))
        .next_token("bogus")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(GetMetricDataError::InvalidNextToken(_))
        ),
        "{err:?}"
    );

    let put = |datum: MetricDatum, ns: &str| {
        client
            .put_metric_data()
            .namespace(ns)
            .metric_data(datum)
            .send()
    };
    let both = MetricDatum::builder()
        .metric_name("x")
        .value(1.0)
        .values(2.0)
        .build();
    let err = put(both, NS).await.unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(PutMetricDataError::InvalidParameterCombinationException(_))
        ),
        "{err:?}"
    );
    assert_eq!(
        err.message(),
        Some(
            "The parameters MetricData.member.1.Value and MetricData.member.1.Values are mutually exclusive and you have specified both."
        )
    );
    let reserved = MetricDatum::builder().metric_name("x").value(1.0).build();
    let err = put(reserved, "AWS/SQS").await.unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(PutMetricDataError::InvalidParameterValueException(_))
        ),
        "{err:?}"
    );
    let nameless = MetricDatum::builder().value(1.0).build();
    let err = put(nameless, NS).await.unwrap_err();
    assert!(
        matches!(
            err.as_service_error(),
            Some(PutMetricDataError::MissingRequiredParameterException(_))
        ),
        "{err:?}"
    );
    let stats = emu.stats();
    assert_eq!(
        stats.get_metric_data.errors.get("ValidationError"),
        Some(&8)
    );
    assert_eq!(
        stats.get_metric_data.errors.get("InvalidNextToken"),
        Some(&1)
    );
    assert_eq!(stats.put_metric_data.errors.values().sum::<u64>(), 3);
    assert_eq!(stats.put_metric_data.datapoints_received, 0);
}

#[tokio::test]
async fn injected_faults_decode_with_their_codes() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let cases = [
        (FaultKind::Throttling, 400, "Throttling", "Rate exceeded"),
        (
            FaultKind::InternalFailure,
            500,
            "InternalFailure",
            "unknown error",
        ),
        (
            FaultKind::ServiceUnavailable,
            503,
            "ServiceUnavailable",
            "temporary failure",
        ),
        (
            FaultKind::AccessDenied,
            403,
            "AccessDenied",
            "is not authorized to perform: cloudwatch:ListMetrics",
        ),
    ];
    for (kind, status, code, fragment) in cases {
        emu.faults().inject(kind, 1);
        let err = client.list_metrics().send().await.unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert!(
            err.message().unwrap().contains(fragment),
            "{:?}",
            err.message()
        );
        assert_eq!(err.raw_response().unwrap().status().as_u16(), status);
        client
            .list_metrics()
            .send()
            .await
            .expect("the fault is used up");
    }
    // Faults aimed at one operation leave the others alone.
    emu.faults()
        .inject_for(Operation::GetMetricData, FaultKind::Throttling, 1);
    client.list_metrics().send().await.unwrap();
    assert_eq!(emu.faults().pending(), 1);
    let s = emu.stats().list_metrics;
    assert_eq!((s.calls, s.throttled), (9, 1));
    assert_eq!(s.errors.values().sum::<u64>(), 4);
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_until_attempts_run_out() {
    let emu = Emulator::start().await.unwrap();
    let t0 = aligned_hour_ago();
    let retrying = client(&emu.endpoint_url(), 3).await;
    emu.faults().inject(FaultKind::Throttling, 1);
    get(
        &retrying,
        vec![stat_query("m", "L", &[], "Sum", 60)],
        t0,
        t0 + 600,
        None,
    )
    .await
    .expect("one throttle is absorbed by a retry");
    let s = emu.stats().get_metric_data;
    assert_eq!((s.calls, s.throttled, s.queries), (2, 1, 1));

    emu.reset();
    let two_attempts = client(&emu.endpoint_url(), 2).await;
    emu.faults().inject(FaultKind::Throttling, 5);
    let err = get(
        &two_attempts,
        vec![stat_query("m", "L", &[], "Sum", 60)],
        t0,
        t0 + 600,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("Throttling"));
    assert_eq!(emu.stats().get_metric_data.calls, 2);
    assert_eq!(emu.faults().pending(), 3);

    // 5xx faults are transient errors for the SDK, retried the same way.
    emu.faults().clear();
    emu.faults().inject(FaultKind::ServiceUnavailable, 1);
    retrying
        .list_metrics()
        .send()
        .await
        .expect("a 503 is retried");
    assert_eq!(emu.stats().list_metrics.calls, 2);
}

#[tokio::test]
async fn latency_is_added_to_every_call() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    client.list_metrics().send().await.unwrap();
    emu.faults().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    client.list_metrics().send().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    emu.faults().clear();
    assert_eq!(emu.faults().latency(), Duration::ZERO);
}

#[tokio::test]
async fn going_down_refuses_connections_and_coming_back_serves_again() {
    let emu = Emulator::start().await.unwrap();
    let addr = emu.addr();
    let client = client(&emu.endpoint_url(), 1).await;
    emu.put(Datum::new(NS, "Up", 1.0));
    client.list_metrics().send().await.unwrap();

    emu.set_down(true).await.unwrap();
    assert!(!emu.is_up());
    let err = client.list_metrics().send().await.unwrap_err();
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "connections are refused"
    );
    emu.set_down(true).await.unwrap();

    emu.set_down(false).await.unwrap();
    assert!(emu.is_up());
    assert_eq!(emu.addr(), addr);
    let out = client.list_metrics().send().await.unwrap();
    assert_eq!(out.metrics().len(), 1, "data survives an outage");
    emu.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn seeded_aws_namespaces_are_readable() {
    let emu = Emulator::start().await.unwrap();
    let client = client(&emu.endpoint_url(), 1).await;
    let t0 = aligned_hour_ago();
    let ns = unique_namespace("AWS/SQS");
    emu.put(
        Datum::new(&ns, "ApproximateNumberOfMessagesVisible", 1250.0)
            .dimension("QueueName", "orders")
            .unit("Count")
            .at(UNIX_EPOCH + Duration::from_secs((t0 + 60) as u64)),
    );
    let q = stat_query_in(
        &ns,
        "visible",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        "Maximum",
        60,
    );
    let out = get(&client, vec![q], t0, t0 + 300, None).await.unwrap();
    assert_eq!(series(&out, t0), vec![vec![(60, 1250.0)]]);
    emu.reset();
    let q = stat_query_in(
        &ns,
        "visible",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        "Maximum",
        60,
    );
    let out = get(&client, vec![q], t0, t0 + 300, None).await.unwrap();
    assert!(series(&out, t0)[0].is_empty());
    assert_eq!(
        emu.stats().get_metric_data.calls,
        1,
        "reset clears the counters too"
    );
}
