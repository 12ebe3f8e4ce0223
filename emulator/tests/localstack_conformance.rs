//! Drives the same scenarios, with the real SDK, against the emulator and against LocalStack, and
//! asserts they answer alike: ids, timestamps, values and status codes.
//!
//! Run with `bash scripts/localstack.sh start` and then
//! `LOCALSTACK_ENDPOINT=http://127.0.0.1:4566 cargo test -p cloudwatch-emulator --features localstack-conformance`.
//!
//! Only what LocalStack implements the way AWS documents it is compared: PutMetricData,
//! ListMetrics, and MetricStat queries with Sum/Average/Minimum/Maximum/SampleCount, StartTime
//! aligned to the period, ScanBy, no-data results and exact dimension mismatches. LocalStack does
//! not validate, throttle, evaluate metric math, compute percentiles or align buckets, matches
//! dimension subsets, and paginates differently; see README.md for the list.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::operation::get_metric_data::GetMetricDataOutput;
use aws_sdk_cloudwatch::types::{
    DimensionFilter, MetricDataQuery, MetricDatum, ScanBy, StandardUnit, StatisticSet,
};
use cloudwatch_emulator::Emulator;
use common::{aligned_hour_ago, client, dim, dt, stat_query_in as query, unique_namespace};

fn localstack_endpoint() -> String {
    std::env::var("LOCALSTACK_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "LOCALSTACK_ENDPOINT is not set: start LocalStack with scripts/localstack.sh start \
             and export LOCALSTACK_ENDPOINT=http://127.0.0.1:4566"
        )
    })
}

/// The emulator and LocalStack, each with its own SDK client.
struct Peers {
    _emulator: Emulator,
    emulator: Client,
    localstack: Client,
}

async fn peers() -> Peers {
    let emulator = Emulator::start().await.unwrap();
    let emulator_client = client(&emulator.endpoint_url(), 1).await;
    let localstack = client(&localstack_endpoint(), 3).await;
    Peers {
        _emulator: emulator,
        emulator: emulator_client,
        localstack,
    }
}

fn datum(
    name: &str,
    dims: &[(&str, &str)],
    at: i64,
) -> aws_sdk_cloudwatch::types::builders::MetricDatumBuilder {
    MetricDatum::builder()
        .metric_name(name)
        .set_dimensions(Some(dims.iter().map(|(n, v)| dim(n, v)).collect()))
        .timestamp(dt(at))
        .unit(StandardUnit::Milliseconds)
}

/// The dataset every scenario reads: three metric identities, single values, a statistic set and
/// a Values/Counts array, spread over two 5-minute periods.
fn dataset(t0: i64) -> Vec<MetricDatum> {
    let orders = [("Api", "orders")];
    let billing = [("Api", "billing")];
    vec![
        datum("Latency", &orders, t0).value(1.0).build(),
        datum("Latency", &orders, t0 + 10).value(3.0).build(),
        datum("Latency", &orders, t0 + 60).value(5.0).build(),
        datum("Latency", &orders, t0 + 120)
            .statistic_values(
                StatisticSet::builder()
                    .sample_count(4.0)
                    .sum(20.0)
                    .minimum(2.0)
                    .maximum(8.0)
                    .build(),
            )
            .build(),
        datum("Latency", &orders, t0 + 300).value(7.0).build(),
        datum("Latency", &orders, t0 + 310).value(2.5).build(),
        datum("Latency", &orders, t0 + 540)
            .values(4.0)
            .values(6.0)
            .counts(1.0)
            .counts(3.0)
            .build(),
        datum("Latency", &billing, t0 + 60).value(100.0).build(),
        datum("Depth", &[], t0 + 180).value(42.0).build(),
        datum("Depth", &[], t0 + 420).value(0.0).build(),
    ]
}

async fn put_everywhere(peers: &Peers, namespace: &str, data: Vec<MetricDatum>) {
    for client in [&peers.emulator, &peers.localstack] {
        client
            .put_metric_data()
            .namespace(namespace)
            .set_metric_data(Some(data.clone()))
            .send()
            .await
            .unwrap();
    }
}

/// What is compared: per result, id, status, and (timestamp, value) pairs; labels optionally.
#[derive(Debug, PartialEq)]
struct Comparable {
    id: String,
    label: Option<String>,
    status: String,
    points: Vec<(i64, String)>,
}

fn comparable(out: &GetMetricDataOutput, with_labels: bool) -> Vec<Comparable> {
    out.metric_data_results()
        .iter()
        .map(|r| Comparable {
            id: r.id().unwrap_or_default().to_string(),
            label: if with_labels {
                r.label().map(str::to_string)
            } else {
                None
            },
            status: r
                .status_code()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            // Twelve significant digits: equal up to float summation order.
            points: r
                .timestamps()
                .iter()
                .zip(r.values())
                .map(|(t, v)| (t.secs(), format!("{v:.12e}")))
                .collect(),
        })
        .collect()
}

async fn get(
    client: &Client,
    queries: &[MetricDataQuery],
    start: i64,
    end: i64,
    scan: Option<ScanBy>,
) -> GetMetricDataOutput {
    client
        .get_metric_data()
        .set_metric_data_queries(Some(queries.to_vec()))
        .start_time(dt(start))
        .end_time(dt(end))
        .set_scan_by(scan)
        .send()
        .await
        .unwrap()
}

/// Differences found, and how many datapoints agreed (so a run that compares nothing fails).
#[derive(Default)]
struct Tally {
    mismatches: Vec<String>,
    agreed_points: usize,
}

impl Tally {
    /// Runs one GetMetricData on both peers and records any difference.
    async fn compare(
        &mut self,
        peers: &Peers,
        what: &str,
        queries: &[MetricDataQuery],
        (start, end): (i64, i64),
        scan: Option<ScanBy>,
        with_labels: bool,
    ) {
        let ours = comparable(
            &get(&peers.emulator, queries, start, end, scan.clone()).await,
            with_labels,
        );
        let theirs = comparable(
            &get(&peers.localstack, queries, start, end, scan).await,
            with_labels,
        );
        if ours == theirs {
            self.agreed_points += ours.iter().map(|r| r.points.len()).sum::<usize>();
        } else {
            self.mismatches.push(format!(
                "{what}:\n  emulator:   {ours:?}\n  localstack: {theirs:?}"
            ));
        }
    }

    fn assert_agreed_on(self, points: usize) {
        assert!(
            self.mismatches.is_empty(),
            "{} mismatches:\n{}",
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
        assert!(
            self.agreed_points >= points,
            "only {} datapoints compared",
            self.agreed_points
        );
    }
}

/// LocalStack ingests asynchronously in some versions; wait (bounded) until it shows the data.
async fn wait_for_localstack(peers: &Peers, q: &MetricDataQuery, start: i64, end: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = get(&peers.localstack, std::slice::from_ref(q), start, end, None).await;
        if !out.metric_data_results()[0].values().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "LocalStack never showed the datapoints that were put"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn statistics_periods_and_ordering_match() {
    let peers = peers().await;
    let ns = unique_namespace("Conformance");
    let t0 = aligned_hour_ago();
    put_everywhere(&peers, &ns, dataset(t0)).await;
    let orders = [("Api", "orders")];
    wait_for_localstack(
        &peers,
        &query(&ns, "w", "Latency", &orders, "Sum", 60),
        t0,
        t0 + 600,
    )
    .await;

    let mut tally = Tally::default();
    let scans = [
        None,
        Some(ScanBy::TimestampAscending),
        Some(ScanBy::TimestampDescending),
    ];
    for stat in ["Sum", "Average", "Minimum", "Maximum", "SampleCount"] {
        for period in [60, 300] {
            for scan in &scans {
                let queries = [
                    query(&ns, "orders", "Latency", &orders, stat, period),
                    query(
                        &ns,
                        "billing",
                        "Latency",
                        &[("Api", "billing")],
                        stat,
                        period,
                    ),
                    query(&ns, "depth", "Depth", &[], stat, period),
                ];
                let what = format!("{stat} period {period} scan {scan:?}");
                tally
                    .compare(&peers, &what, &queries, (t0, t0 + 600), scan.clone(), false)
                    .await;
                // A window that starts mid-dataset, still aligned to the period.
                let later = t0 + i64::from(period);
                let what = format!("{what} from +{period}s");
                tally
                    .compare(
                        &peers,
                        &what,
                        &queries,
                        (later, t0 + 600),
                        scan.clone(),
                        false,
                    )
                    .await;
            }
        }
    }
    // Per statistic and order: 60 s gives 5+1+2 buckets from t0 and 4+1+2 from t0+60; 300 s
    // gives 2+1+2 from t0 and 1+0+1 from t0+300 (orders + billing + depth).
    tally.assert_agreed_on(5 * 3 * (8 + 7 + 5 + 2));
}

#[tokio::test]
async fn high_resolution_periods_match() {
    let peers = peers().await;
    let ns = unique_namespace("Conformance");
    let t0 = (common::now_secs() - 900) / 60 * 60;
    let data: Vec<MetricDatum> = [
        (1, 1.0),
        (4, 2.0),
        (9, 4.0),
        (12, 8.0),
        (29, 16.0),
        (31, 32.0),
    ]
    .into_iter()
    .map(|(offset, value)| {
        datum("Hits", &[], t0 + offset)
            .value(value)
            .storage_resolution(1)
            .build()
    })
    .collect();
    put_everywhere(&peers, &ns, data).await;
    wait_for_localstack(
        &peers,
        &query(&ns, "w", "Hits", &[], "Sum", 10),
        t0,
        t0 + 60,
    )
    .await;
    let mut tally = Tally::default();
    for period in [1, 5, 10, 30] {
        for stat in ["Sum", "SampleCount", "Maximum"] {
            let queries = [query(&ns, "hits", "Hits", &[], stat, period)];
            let what = format!("high resolution {stat} period {period}");
            tally
                .compare(
                    &peers,
                    &what,
                    &queries,
                    (t0, t0 + 60),
                    Some(ScanBy::TimestampAscending),
                    false,
                )
                .await;
        }
    }
    // Periods 1, 5, 10, 30 give 6, 5, 4, 2 non-empty buckets, for each of 3 statistics.
    tally.assert_agreed_on(3 * (6 + 5 + 4 + 2));
}

#[tokio::test]
async fn no_data_and_dimension_mismatches_match() {
    let peers = peers().await;
    let ns = unique_namespace("Conformance");
    let t0 = aligned_hour_ago();
    put_everywhere(&peers, &ns, dataset(t0)).await;
    let orders = [("Api", "orders")];
    wait_for_localstack(
        &peers,
        &query(&ns, "w", "Latency", &orders, "Sum", 60),
        t0,
        t0 + 600,
    )
    .await;

    let queries = [
        query(&ns, "unknown_metric", "Nope", &orders, "Sum", 60),
        query(
            &ns,
            "unknown_value",
            "Latency",
            &[("Api", "nope")],
            "Sum",
            60,
        ),
        query(&ns, "no_dimensions", "Latency", &[], "Sum", 60),
        query(
            &ns,
            "extra_dimension",
            "Latency",
            &[("Api", "orders"), ("Env", "prod")],
            "Sum",
            60,
        ),
        query(
            &ns,
            "dimension_on_plain",
            "Depth",
            &[("Api", "orders")],
            "Sum",
            60,
        ),
        query(&ns, "other_namespace", "Latency", &orders, "Sum", 60),
    ];
    let mut queries = queries.to_vec();
    queries[5] = query(
        &format!("{ns}-other"),
        "other_namespace",
        "Latency",
        &orders,
        "Sum",
        60,
    );
    let mut tally = Tally::default();
    tally
        .compare(&peers, "mismatches", &queries, (t0, t0 + 600), None, false)
        .await;
    // A window with no datapoints at all.
    let empty = [query(&ns, "before", "Latency", &orders, "Sum", 60)];
    tally
        .compare(
            &peers,
            "empty window",
            &empty,
            (t0 - 3000, t0 - 600),
            None,
            false,
        )
        .await;
    tally.assert_agreed_on(0);

    // And the emulator really returned nothing for each, as AWS does (Complete, no values).
    let ours = get(&peers.emulator, &queries, t0, t0 + 600, None).await;
    for r in ours.metric_data_results() {
        assert!(r.values().is_empty(), "{:?}", r.id());
        assert_eq!(r.status_code().map(|s| s.as_str()), Some("Complete"));
    }
}

#[tokio::test]
async fn labels_for_one_metric_with_several_statistics_match() {
    let peers = peers().await;
    let ns = unique_namespace("Conformance");
    let t0 = aligned_hour_ago();
    put_everywhere(&peers, &ns, dataset(t0)).await;
    let orders = [("Api", "orders")];
    wait_for_localstack(
        &peers,
        &query(&ns, "w", "Latency", &orders, "Sum", 60),
        t0,
        t0 + 600,
    )
    .await;
    let mut tally = Tally::default();
    let same_period: Vec<MetricDataQuery> = ["Sum", "Average", "Minimum", "Maximum", "SampleCount"]
        .iter()
        .map(|stat| {
            query(
                &ns,
                &format!("q_{}", stat.to_lowercase()),
                "Latency",
                &orders,
                stat,
                300,
            )
        })
        .collect();
    tally
        .compare(
            &peers,
            "five statistics",
            &same_period,
            (t0, t0 + 600),
            None,
            true,
        )
        .await;
    let periods = [
        query(&ns, "sum60", "Latency", &orders, "Sum", 60),
        query(&ns, "sum300", "Latency", &orders, "Sum", 300),
    ];
    tally
        .compare(&peers, "two periods", &periods, (t0, t0 + 600), None, true)
        .await;
    let single = [query(&ns, "only", "Latency", &orders, "Average", 60)];
    tally
        .compare(&peers, "one query", &single, (t0, t0 + 600), None, true)
        .await;
    tally.assert_agreed_on(5 * 2 + (5 + 2) + 5);
}

#[tokio::test]
async fn list_metrics_matches() {
    let peers = peers().await;
    let ns = unique_namespace("Conformance");
    let t0 = aligned_hour_ago();
    put_everywhere(&peers, &ns, dataset(t0)).await;

    async fn listed(
        client: &Client,
        ns: &str,
        name: Option<&str>,
        filter: Option<DimensionFilter>,
    ) -> BTreeSet<String> {
        let out = client
            .list_metrics()
            .namespace(ns)
            .set_metric_name(name.map(str::to_string))
            .set_dimensions(filter.map(|f| vec![f]))
            .send()
            .await
            .unwrap();
        out.metrics()
            .iter()
            .map(|m| {
                let mut dims: Vec<String> = m
                    .dimensions()
                    .iter()
                    .map(|d| {
                        format!(
                            "{}={}",
                            d.name().unwrap_or_default(),
                            d.value().unwrap_or_default()
                        )
                    })
                    .collect();
                dims.sort();
                format!(
                    "{}/{}{:?}",
                    m.namespace().unwrap_or_default(),
                    m.metric_name().unwrap_or_default(),
                    dims
                )
            })
            .collect()
    }

    let cases: Vec<(&str, Option<&str>, Option<DimensionFilter>)> = vec![
        ("whole namespace", None, None),
        ("by name", Some("Latency"), None),
        (
            "by dimension value",
            None,
            Some(
                DimensionFilter::builder()
                    .name("Api")
                    .value("billing")
                    .build(),
            ),
        ),
        (
            "by name and dimension",
            Some("Depth"),
            Some(DimensionFilter::builder().name("Api").build()),
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    while listed(&peers.localstack, &ns, None, None).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "LocalStack never listed the metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut mismatches = Vec::new();
    for (what, name, filter) in cases {
        let ours = listed(&peers.emulator, &ns, name, filter.clone()).await;
        let theirs = listed(&peers.localstack, &ns, name, filter).await;
        if ours != theirs {
            mismatches.push(format!(
                "{what}:\n  emulator:   {ours:?}\n  localstack: {theirs:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(listed(&peers.emulator, &ns, None, None).await.len(), 3);
}
