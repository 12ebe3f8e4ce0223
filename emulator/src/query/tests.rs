#![allow(clippy::unwrap_used)]
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::store::{Aggregate, StorageResolution};

/// A minute-aligned instant; `NOW` is an hour later.
const T0: i64 = 29_833_333 * 60_000;
const NOW: i64 = T0 + HOUR_MS;
const S: i64 = 1000;
const STD: StorageResolution = StorageResolution::Standard;
const HIGH: StorageResolution = StorageResolution::High;

type Points = Vec<(i64, f64)>;
type Entries = Vec<(&'static str, Value)>;

fn key(name: &str, dims: &[(&str, &str)]) -> MetricKey {
    MetricKey::new(
        "App",
        name,
        dims.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    )
}

fn put(
    store: &mut Store,
    key: &MetricKey,
    at: i64,
    value: f64,
    unit: Option<&str>,
    res: StorageResolution,
) {
    let now = UNIX_EPOCH + Duration::from_millis(NOW as u64);
    store.insert(key.clone(), at, res, unit, Aggregate::single(value), now);
}

fn int(v: i64) -> Value {
    Value::Integer(v.into())
}

struct Q(Vec<(&'static str, Value)>);

fn stat_q(id: &str, name: &str, dims: &[(&str, &str)], stat: &str, period: i64) -> Q {
    let dims = dims
        .iter()
        .map(|(n, v)| map(vec![("Name", text(*n)), ("Value", text(*v))]))
        .collect();
    let metric = map(vec![
        ("Namespace", text("App")),
        ("MetricName", text(name)),
        ("Dimensions", Value::Array(dims)),
    ]);
    Q(vec![
        ("Id", text(id)),
        (
            "MetricStat",
            map(vec![
                ("Metric", metric),
                ("Period", int(period)),
                ("Stat", text(stat)),
            ]),
        ),
    ])
}

fn expr_q(id: &str, expression: &str) -> Q {
    Q(vec![("Id", text(id)), ("Expression", text(expression))])
}

impl Q {
    fn with(mut self, key: &'static str, value: Value) -> Self {
        self.0.push((key, value));
        self
    }

    fn unit(mut self, unit: &str) -> Self {
        if let Some((_, Value::Map(ms))) = self.0.iter_mut().find(|(k, _)| *k == "MetricStat") {
            ms.push((text("Unit"), text(unit)));
        }
        self
    }
}

fn request(queries: Vec<Q>, start: i64, end: i64) -> Vec<(&'static str, Value)> {
    vec![
        (
            "MetricDataQueries",
            Value::Array(queries.into_iter().map(|q| map(q.0)).collect()),
        ),
        ("StartTime", wire::timestamp(start)),
        ("EndTime", wire::timestamp(end)),
    ]
}

fn run(store: &Store, entries: Vec<(&'static str, Value)>) -> Result<Outcome, ApiError> {
    get_metric_data(&map(entries), store, NOW)
}

fn err(store: &Store, entries: Vec<(&'static str, Value)>) -> ApiError {
    run(store, entries).unwrap_err()
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Map(entries) = value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

fn text_of(value: &Value, name: &str) -> String {
    field(value, name).unwrap().as_text().unwrap().to_string()
}

fn epoch_ms_of(value: &Value) -> i64 {
    let Value::Tag(1, inner) = value else {
        panic!("not a timestamp: {value:?}")
    };
    match inner.as_ref() {
        Value::Integer(i) => i64::try_from(i128::from(*i)).unwrap() * 1000,
        Value::Float(f) => (f * 1000.0).round() as i64,
        other => panic!("bad timestamp content {other:?}"),
    }
}

#[derive(Debug, PartialEq)]
struct R {
    id: String,
    label: String,
    /// Milliseconds relative to T0, and values.
    points: Vec<(i64, f64)>,
    status: String,
    messages: Vec<String>,
}

fn results(outcome: &Outcome) -> Vec<R> {
    let Some(Value::Array(items)) = field(&outcome.body, "MetricDataResults") else {
        panic!("no results")
    };
    items
        .iter()
        .map(|r| {
            let Some(Value::Array(times)) = field(r, "Timestamps") else {
                panic!()
            };
            let Some(Value::Array(values)) = field(r, "Values") else {
                panic!()
            };
            let messages = match field(r, "Messages") {
                Some(Value::Array(ms)) => ms
                    .iter()
                    .map(|m| format!("{}: {}", text_of(m, "Code"), text_of(m, "Value")))
                    .collect(),
                _ => vec![],
            };
            R {
                id: text_of(r, "Id"),
                label: text_of(r, "Label"),
                points: times
                    .iter()
                    .zip(values)
                    .map(|(t, v)| (epoch_ms_of(t) - T0, v.as_float().unwrap()))
                    .collect(),
                status: text_of(r, "StatusCode"),
                messages,
            }
        })
        .collect()
}

fn points(outcome: &Outcome) -> Vec<Vec<(i64, f64)>> {
    results(outcome).into_iter().map(|r| r.points).collect()
}

fn next_token(outcome: &Outcome) -> Option<String> {
    field(&outcome.body, "NextToken").map(|v| v.as_text().unwrap().to_string())
}

fn ascending(mut entries: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    entries.push(("ScanBy", text("TimestampAscending")));
    entries
}

/// Values 1 and 3 in the first minute, 5 in the second, 7 five minutes in.
fn sample_store() -> Store {
    let mut store = Store::default();
    let k = key("Latency", &[("Api", "orders")]);
    put(&mut store, &k, T0, 1.0, None, STD);
    put(&mut store, &k, T0 + 10 * S, 3.0, None, STD);
    put(&mut store, &k, T0 + 60 * S, 5.0, None, STD);
    put(&mut store, &k, T0 + 300 * S, 7.0, None, STD);
    store
}

#[test]
fn each_statistic_over_60_and_300_second_periods() {
    let store = sample_store();
    let dims = [("Api", "orders")];
    let cases: Vec<(&str, i64, Points)> = vec![
        ("Sum", 60, vec![(0, 4.0), (60 * S, 5.0), (300 * S, 7.0)]),
        ("Average", 60, vec![(0, 2.0), (60 * S, 5.0), (300 * S, 7.0)]),
        ("Minimum", 60, vec![(0, 1.0), (60 * S, 5.0), (300 * S, 7.0)]),
        ("Maximum", 60, vec![(0, 3.0), (60 * S, 5.0), (300 * S, 7.0)]),
        (
            "SampleCount",
            60,
            vec![(0, 2.0), (60 * S, 1.0), (300 * S, 1.0)],
        ),
        ("Sum", 300, vec![(0, 9.0), (300 * S, 7.0)]),
        ("Average", 300, vec![(0, 3.0), (300 * S, 7.0)]),
        ("SampleCount", 300, vec![(0, 3.0), (300 * S, 1.0)]),
        ("p50", 300, vec![(0, 3.0), (300 * S, 7.0)]),
        ("p100", 300, vec![(0, 5.0), (300 * S, 7.0)]),
    ];
    for (stat, period, want) in cases {
        let q = stat_q("m", "Latency", &dims, stat, period);
        let got = run(&store, ascending(request(vec![q], T0, T0 + 600 * S))).unwrap();
        assert_eq!(points(&got), vec![want], "{stat} {period}");
    }
}

#[test]
fn newest_first_by_default() {
    let store = sample_store();
    let q = stat_q("m", "Latency", &[("Api", "orders")], "Sum", 60);
    let got = run(&store, request(vec![q], T0, T0 + 600 * S)).unwrap();
    assert_eq!(
        points(&got),
        vec![vec![(300 * S, 7.0), (60 * S, 5.0), (0, 4.0)]]
    );
    let r = &results(&got)[0];
    assert_eq!(
        (r.id.as_str(), r.label.as_str(), r.status.as_str()),
        ("m", "Latency", "Complete")
    );
    assert_eq!(got.datapoints, 3);
    assert_eq!((got.queries, got.metrics_requested), (1, 1));
}

#[test]
fn start_time_is_rounded_down_and_end_time_is_exclusive() {
    let store = sample_store();
    let q = || stat_q("m", "Latency", &[("Api", "orders")], "Sum", 60);
    // 12:00:25 rounds down to 12:00:00, so the first minute is included and labelled 12:00.
    let got = run(
        &store,
        ascending(request(vec![q()], T0 + 25 * S, T0 + 60 * S)),
    )
    .unwrap();
    assert_eq!(points(&got), vec![vec![(0, 4.0)]]);
    // EndTime exactly at the second minute excludes its datapoint.
    let got = run(&store, ascending(request(vec![q()], T0, T0 + 300 * S))).unwrap();
    assert_eq!(points(&got), vec![vec![(0, 4.0), (60 * S, 5.0)]]);
    // With a period of 300 the buckets start at the rounded StartTime, not on a 5-minute boundary.
    let q300 = stat_q("m", "Latency", &[("Api", "orders")], "Sum", 300);
    let got = run(
        &store,
        ascending(request(vec![q300], T0 + 60 * S, T0 + 600 * S)),
    )
    .unwrap();
    assert_eq!(points(&got), vec![vec![(60 * S, 12.0)]]);
}

#[test]
fn high_resolution_periods_align_on_their_own_multiple() {
    let mut store = Store::default();
    let k = key("Hits", &[]);
    put(&mut store, &k, T0 + 21 * S, 1.0, None, HIGH);
    put(&mut store, &k, T0 + 29 * S + 900, 2.0, None, HIGH);
    put(&mut store, &k, T0 + 31 * S, 4.0, None, HIGH);
    // Standard-resolution data is kept to the minute, so it lands in the :00 bucket.
    let k2 = key("Slow", &[]);
    put(&mut store, &k2, T0 + 45 * S, 8.0, None, STD);
    let q = stat_q("h", "Hits", &[], "Sum", 10);
    let q2 = stat_q("s", "Slow", &[], "Sum", 30);
    let q5 = stat_q("f", "Hits", &[], "Sum", 5);
    let got = run(
        &store,
        ascending(request(vec![q, q2, q5], T0 + 25 * S, T0 + 60 * S)),
    )
    .unwrap();
    assert_eq!(
        points(&got),
        vec![
            vec![(20 * S, 3.0), (30 * S, 4.0)],
            // 12:00:25 rounds down to 12:00:00 for a 30 s period.
            vec![(0, 8.0)],
            vec![(25 * S, 2.0), (30 * S, 4.0)],
        ]
    );
    let got = run(
        &store,
        ascending(request(
            vec![stat_q("s", "Slow", &[], "Sum", 30)],
            T0,
            T0 + 60 * S,
        )),
    )
    .unwrap();
    assert_eq!(points(&got), vec![vec![(0, 8.0)]]);
}

#[test]
fn old_start_times_need_coarser_periods() {
    let five = (NOW - 20 * DAY_MS).div_euclid(5 * MINUTE_MS) * 5 * MINUTE_MS;
    assert_eq!(
        aligned_start(five + 7 * MINUTE_MS + 3 * S, 300, NOW),
        five + 5 * MINUTE_MS
    );
    assert_eq!(
        aligned_start(five + 7 * MINUTE_MS + 3 * S, 60, NOW),
        five + 5 * MINUTE_MS
    );
    let hour = (NOW - 70 * DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    assert_eq!(aligned_start(hour + 7 * MINUTE_MS, 3600, NOW), hour);
    assert_eq!(aligned_start(T0 + 17 * S, 5, NOW), T0 + 15 * S);
    assert_eq!(aligned_start(T0 + 17 * S + 400, 1, NOW), T0 + 17 * S);
    assert_eq!(aligned_start(T0 + 17 * S, 120, NOW), T0);
    let table = [
        (NOW - HOUR_MS, 10, true),
        (NOW - 4 * HOUR_MS, 10, false),
        (NOW - 4 * HOUR_MS, 60, true),
        (NOW - 16 * DAY_MS, 60, false),
        (NOW - 16 * DAY_MS, 300, true),
        (NOW - 64 * DAY_MS, 300, false),
        (NOW - 64 * DAY_MS, 3600, true),
    ];
    for (start, period, want) in table {
        assert_eq!(
            period_retained(period, start, NOW),
            want,
            "{start} {period}"
        );
    }
    let mut store = Store::default();
    let k = key("Old", &[]);
    put(&mut store, &k, NOW - 4 * HOUR_MS, 1.0, None, HIGH);
    let got = run(
        &store,
        request(
            vec![stat_q("o", "Old", &[], "Sum", 10)],
            NOW - 5 * HOUR_MS,
            NOW,
        ),
    )
    .unwrap();
    assert_eq!(points(&got), vec![vec![]]);
    let got = run(
        &store,
        request(
            vec![stat_q("o", "Old", &[], "Sum", 60)],
            NOW - 5 * HOUR_MS,
            NOW,
        ),
    )
    .unwrap();
    assert_eq!(points(&got)[0].len(), 1);
}

#[test]
fn dimensions_must_match_exactly() {
    let store = sample_store();
    let cases: Vec<(Vec<(&str, &str)>, usize)> = vec![
        (vec![("Api", "orders")], 3),
        (vec![], 0),
        (vec![("Api", "billing")], 0),
        (vec![("Api", "orders"), ("Env", "prod")], 0),
    ];
    for (dims, want) in cases {
        let got = run(
            &store,
            request(
                vec![stat_q("m", "Latency", &dims, "Sum", 60)],
                T0,
                T0 + 600 * S,
            ),
        )
        .unwrap();
        let r = &results(&got)[0];
        assert_eq!(r.points.len(), want, "{dims:?}");
        assert_eq!(r.status, "Complete");
    }
}

#[test]
fn unit_filter_and_multiple_units() {
    let mut store = Store::default();
    let k = key("Dur", &[]);
    put(&mut store, &k, T0, 60_000.0, Some("Milliseconds"), STD);
    put(&mut store, &k, T0, 60.0, Some("Seconds"), STD);
    put(&mut store, &k, T0, 5.0, None, STD);
    let q = |unit: Option<&str>| {
        let q = stat_q("m", "Dur", &[], "Sum", 60);
        match unit {
            Some(u) => q.unit(u),
            None => q,
        }
    };
    let got = run(&store, request(vec![q(Some("Seconds"))], T0, T0 + 60 * S)).unwrap();
    assert_eq!(points(&got), vec![vec![(0, 60.0)]]);
    let got = run(&store, request(vec![q(Some("Count"))], T0, T0 + 60 * S)).unwrap();
    assert_eq!(points(&got), vec![vec![]]);
    // Without a unit CloudWatch answers from one unit and says which ones it saw.
    let got = run(&store, request(vec![q(None)], T0, T0 + 60 * S)).unwrap();
    let r = &results(&got)[0];
    assert_eq!(r.points, vec![(0, 60_000.0)]);
    assert_eq!(
        r.messages,
        vec!["MultipleUnits: Multiple units returned: '[Milliseconds, None, Seconds]'"]
    );
}

#[test]
fn default_labels_follow_recorded_aws_behaviour() {
    let store = sample_store();
    let d = [("Api", "orders")];
    let label_sets: Vec<(Vec<Q>, Vec<&str>)> = vec![
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60),
                stat_q("b", "Latency", &d, "Minimum", 300),
            ],
            vec!["Latency Sum 60", "Latency Minimum 300"],
        ),
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60),
                stat_q("b", "Latency", &d, "Average", 60),
            ],
            vec!["Latency Sum", "Latency Average"],
        ),
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60),
                stat_q("b", "Latency", &d, "Sum", 300),
            ],
            vec!["Latency 60", "Latency 300"],
        ),
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60),
                stat_q("b", "Latency", &d, "Sum", 60).unit("Seconds"),
            ],
            vec!["Latency", "Latency"],
        ),
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60),
                stat_q("b", "Other", &d, "Average", 300),
            ],
            vec!["Latency", "Other"],
        ),
        (
            vec![
                stat_q("a", "Latency", &d, "Sum", 60).with("Label", text("orders latency")),
                stat_q("b", "Latency", &d, "Average", 60),
                expr_q("e", "a * 2"),
                expr_q("f", "a * 3").with("Label", text("tripled")),
            ],
            vec!["orders latency", "Latency Average", "e", "tripled"],
        ),
    ];
    for (queries, want) in label_sets {
        let got = run(&store, request(queries, T0, T0 + 600 * S)).unwrap();
        let labels: Vec<String> = results(&got).into_iter().map(|r| r.label).collect();
        assert_eq!(labels, want);
    }
}

#[test]
fn return_data_false_hides_a_result_but_not_its_use_in_math() {
    let store = sample_store();
    let d = [("Api", "orders")];
    let got = run(
        &store,
        ascending(request(
            vec![
                stat_q("m", "Latency", &d, "Sum", 60).with("ReturnData", Value::Bool(false)),
                expr_q("e", "m * 10"),
            ],
            T0,
            T0 + 120 * S,
        )),
    )
    .unwrap();
    let rs = results(&got);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].id, "e");
    assert_eq!(rs[0].points, vec![(0, 40.0), (60 * S, 50.0)]);
}

fn twenty_minutes() -> Store {
    let mut store = Store::default();
    let k = key("Seq", &[]);
    for i in 0..20 {
        put(&mut store, &k, T0 + i * 60 * S, i as f64, None, STD);
    }
    store
}

#[test]
fn pagination_with_max_datapoints() {
    let store = twenty_minutes();
    let base = || {
        let mut r = request(
            vec![stat_q("m", "Seq", &[], "Sum", 60)],
            T0,
            T0 + 20 * 60 * S,
        );
        r.push(("MaxDatapoints", int(10)));
        r
    };
    let first = run(&store, base()).unwrap();
    let r = &results(&first)[0];
    assert_eq!(r.points.len(), 10);
    assert_eq!(r.points[0], (19 * 60 * S, 19.0), "newest first");
    assert_eq!(r.status, "PartialData");
    let token = next_token(&first).unwrap();
    let mut again = base();
    again.push(("NextToken", text(token.clone())));
    let second = run(&store, again).unwrap();
    let r = &results(&second)[0];
    assert_eq!(r.points.len(), 10);
    assert_eq!(r.points[0], (9 * 60 * S, 9.0));
    assert_eq!(r.status, "Complete");
    assert_eq!(next_token(&second), None);

    // The token belongs to the request that produced it.
    let mut other = request(
        vec![stat_q("m", "Seq", &[], "Average", 60)],
        T0,
        T0 + 20 * 60 * S,
    );
    other.push(("MaxDatapoints", int(10)));
    other.push(("NextToken", text(token)));
    assert_eq!(err(&store, other).code, "InvalidNextToken");
    let mut garbage = base();
    garbage.push(("NextToken", text("not-a-token")));
    assert_eq!(err(&store, garbage).code, "InvalidNextToken");
}

#[test]
fn pagination_spans_queries_in_order() {
    let store = twenty_minutes();
    let queries = || {
        vec![
            stat_q("a", "Seq", &[], "Sum", 60),
            stat_q("b", "Seq", &[], "Maximum", 300),
        ]
    };
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut r = ascending(request(queries(), T0, T0 + 20 * 60 * S));
        r.push(("MaxDatapoints", int(7)));
        if let Some(t) = &token {
            r.push(("NextToken", text(t.clone())));
        }
        let page = run(&store, r).unwrap();
        pages += 1;
        let rs = results(&page);
        assert_eq!(rs.len(), 2, "every page carries every result");
        all.push(
            rs.iter()
                .map(|r| (r.points.len(), r.status.clone()))
                .collect::<Vec<_>>(),
        );
        token = next_token(&page);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 4, "20 + 4 datapoints in pages of 7");
    assert_eq!(
        all,
        vec![
            vec![
                (7, "PartialData".to_string()),
                (0, "PartialData".to_string())
            ],
            vec![
                (7, "PartialData".to_string()),
                (0, "PartialData".to_string())
            ],
            vec![(6, "Complete".to_string()), (1, "PartialData".to_string())],
            vec![(0, "Complete".to_string()), (3, "Complete".to_string())],
        ]
    );
}

#[test]
fn math_is_not_paginated() {
    let store = twenty_minutes();
    let mut r = request(
        vec![stat_q("m", "Seq", &[], "Sum", 60), expr_q("e", "m + 1")],
        T0,
        T0 + 20 * 60 * S,
    );
    r.push(("MaxDatapoints", int(5)));
    let got = run(&store, r).unwrap();
    assert_eq!(next_token(&got), None);
    assert!(
        results(&got)
            .iter()
            .all(|r| r.points.len() == 20 && r.status == "Complete")
    );
}

#[test]
fn metric_math_end_to_end() {
    let mut store = Store::default();
    let (errors, requests) = (key("Errors", &[]), key("Requests", &[]));
    for (i, (e, r)) in [(1.0, 10.0), (0.0, 20.0), (5.0, 0.0)]
        .into_iter()
        .enumerate()
    {
        put(&mut store, &errors, T0 + i as i64 * 60 * S, e, None, STD);
        put(&mut store, &requests, T0 + i as i64 * 60 * S, r, None, STD);
    }
    put(&mut store, &requests, T0 + 3 * 60 * S, 40.0, None, STD);
    let base = || {
        vec![
            stat_q("errors", "Errors", &[], "Sum", 60),
            stat_q("requests", "Requests", &[], "Sum", 60),
        ]
    };
    let cases: Vec<(&str, Vec<(i64, f64)>)> = vec![
        // Only common timestamps; the division by zero in the third minute leaves no datapoint.
        ("100 * errors / requests", vec![(0, 10.0), (60 * S, 0.0)]),
        (
            "errors + requests",
            vec![(0, 11.0), (60 * S, 20.0), (120 * S, 5.0)],
        ),
        (
            "SUM(METRICS())",
            vec![(0, 11.0), (60 * S, 20.0), (120 * S, 5.0), (180 * S, 40.0)],
        ),
        (
            "MAX([errors, requests])",
            vec![(0, 10.0), (60 * S, 20.0), (120 * S, 5.0), (180 * S, 40.0)],
        ),
        (
            "SUM(METRICS(\"err\"))",
            vec![(0, 1.0), (60 * S, 0.0), (120 * S, 5.0)],
        ),
        (
            "requests - AVG(requests)",
            vec![(0, -7.5), (60 * S, 2.5), (120 * S, -17.5), (180 * S, 22.5)],
        ),
        (
            "-(errors)",
            vec![(0, -1.0), (60 * S, -0.0), (120 * S, -5.0)],
        ),
    ];
    for (expression, want) in cases {
        let mut queries = base();
        queries.push(expr_q("e", expression));
        let got = run(&store, ascending(request(queries, T0, T0 + 10 * 60 * S))).unwrap();
        assert_eq!(results(&got)[2].points, want, "{expression}");
    }
    // Expressions may build on expressions.
    let mut queries = base();
    queries.push(expr_q("total", "errors + requests").with("ReturnData", Value::Bool(false)));
    queries.push(expr_q("doubled", "total * 2"));
    let got = run(&store, ascending(request(queries, T0, T0 + 10 * 60 * S))).unwrap();
    assert_eq!(
        results(&got)[2].points,
        vec![(0, 22.0), (60 * S, 40.0), (120 * S, 10.0)]
    );
}

#[test]
fn math_errors_and_refusals() {
    let store = sample_store();
    let d = [("Api", "orders")];
    let cases: Vec<(Vec<Q>, &str, &str)> = vec![
        (
            vec![
                stat_q("m", "Latency", &d, "Sum", 60),
                expr_q("e", "m + nope"),
            ],
            "ValidationError",
            "Error in expression e: nope is not the Id of a query",
        ),
        (
            vec![expr_q("a", "b + 1"), expr_q("b", "a * 2")],
            "ValidationError",
            "circular reference",
        ),
        (
            vec![expr_q("a", "a + 1")],
            "ValidationError",
            "circular reference a -> a",
        ),
        (
            vec![expr_q("e", "m +")],
            "ValidationError",
            "Error in expression e:",
        ),
        (
            vec![expr_q("e", "FOO(m)")],
            "ValidationError",
            "unknown function FOO",
        ),
        (
            vec![
                stat_q("m", "Latency", &d, "Sum", 60),
                expr_q("e", "FILL(m, 0)"),
            ],
            "EmulatorUnsupported",
            "FILL",
        ),
        (
            vec![expr_q(
                "e",
                "SEARCH('{App} MetricName=\"Latency\"', 'Sum', 60)",
            )],
            "EmulatorUnsupported",
            "SEARCH",
        ),
        (
            vec![stat_q("m", "Latency", &d, "Sum", 60), expr_q("e", "MAX(m)")],
            "EmulatorUnsupported",
            "single number",
        ),
        (
            vec![
                stat_q("m", "Latency", &d, "Sum", 60),
                expr_q("e", "METRICS()"),
            ],
            "EmulatorUnsupported",
            "several time series",
        ),
        (
            vec![expr_q("q", "SELECT AVG(Latency) FROM App")],
            "EmulatorUnsupported",
            "Metrics Insights",
        ),
        (
            vec![
                expr_q("q", "SELECT AVG(Latency) FROM App"),
                expr_q("r", "select SUM(Latency) FROM App"),
            ],
            "ValidationError",
            "Only one Metrics Insights query",
        ),
    ];
    for (queries, code, fragment) in cases {
        let e = err(&store, request(queries, T0, T0 + 600 * S));
        assert_eq!(e.code, code, "{}", e.message);
        assert!(
            e.message.contains(fragment),
            "{:?} does not contain {fragment:?}",
            e.message
        );
    }
    // A scalar expression that is not returned is fine.
    let queries = vec![
        stat_q("m", "Latency", &d, "Sum", 60),
        expr_q("peak", "MAX(m)").with("ReturnData", Value::Bool(false)),
        expr_q("share", "m / peak"),
    ];
    let got = run(&store, ascending(request(queries, T0, T0 + 600 * S))).unwrap();
    assert_eq!(
        results(&got)[1].points,
        vec![(0, 4.0 / 7.0), (60 * S, 5.0 / 7.0), (300 * S, 1.0)]
    );
}

#[test]
fn validation_table() {
    let store = sample_store();
    let d = [("Api", "orders")];
    let ok = || stat_q("m", "Latency", &d, "Sum", 60);
    let no_stat = Q(vec![
        ("Id", text("m")),
        (
            "MetricStat",
            map(vec![
                (
                    "Metric",
                    map(vec![
                        ("Namespace", text("App")),
                        ("MetricName", text("Latency")),
                    ]),
                ),
                ("Period", int(60)),
            ]),
        ),
    ]);
    let no_period = Q(vec![
        ("Id", text("m")),
        (
            "MetricStat",
            map(vec![
                (
                    "Metric",
                    map(vec![
                        ("Namespace", text("App")),
                        ("MetricName", text("Latency")),
                    ]),
                ),
                ("Stat", text("Sum")),
            ]),
        ),
    ]);
    let both = ok().with("Expression", text("1"));
    let neither = Q(vec![("Id", text("m"))]);
    let cases: Vec<(Entries, &str, &str)> = vec![
        (
            request(
                vec![stat_q("5xx", "Latency", &d, "Sum", 60)],
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "The value 5xx for parameter MetricDataQueries.member.1.Id is not matching the expected pattern ^[a-z][a-zA-Z0-9_]*$.",
        ),
        (
            request(
                vec![stat_q("sqs-visible", "Latency", &d, "Sum", 60)],
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "The value sqs-visible for parameter MetricDataQueries.member.1.Id",
        ),
        (
            request(
                vec![stat_q("Upper", "Latency", &d, "Sum", 60)],
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "is not matching the expected pattern",
        ),
        (
            request(vec![ok(), ok()], T0, T0 + 60 * S),
            "ValidationError",
            "The values for parameter id in MetricDataQueries are not unique.",
        ),
        (
            request(
                (0..501)
                    .map(|i| stat_q(&format!("m{i}"), "Latency", &d, "Sum", 60))
                    .collect(),
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "Member must have length less than or equal to 500",
        ),
        (
            request(vec![no_stat], T0, T0 + 60 * S),
            "ValidationError",
            "The parameter MetricDataQueries.member.1.MetricStat.Stat is required.",
        ),
        (
            request(vec![no_period], T0, T0 + 60 * S),
            "ValidationError",
            "The parameter MetricDataQueries.member.1.MetricStat.Period is required.",
        ),
        (
            request(vec![stat_q("m", "Latency", &d, "Sum", 7)], T0, T0 + 60 * S),
            "ValidationError",
            "The value 7 for parameter MetricDataQueries.member.1.MetricStat.Period is not valid.",
        ),
        (
            request(vec![stat_q("m", "Latency", &d, "Sum", 90)], T0, T0 + 60 * S),
            "ValidationError",
            "The value 90 for parameter",
        ),
        (
            request(
                vec![stat_q("m", "Latency", &d, "Sum", 60 * (1 << 40))],
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "is not valid",
        ),
        (
            request(
                vec![stat_q("m", "Latency", &d, "Median", 60)],
                T0,
                T0 + 60 * S,
            ),
            "ValidationError",
            "The value for parameter MetricDataQueries.member.1.MetricStat.Stat is not a valid statistic.",
        ),
        (
            request(vec![both], T0, T0 + 60 * S),
            "ValidationError",
            "are mutually exclusive",
        ),
        (
            request(vec![neither], T0, T0 + 60 * S),
            "ValidationError",
            "Exactly one of the parameters MetricDataQueries.member.1.MetricStat and MetricDataQueries.member.1.Expression",
        ),
        (
            request(vec![ok()], T0 + 60 * S, T0 + 60 * S),
            "ValidationError",
            "The parameter StartTime must be less than the parameter EndTime.",
        ),
        (
            {
                let mut r = request(vec![ok()], T0, T0 + 60 * S);
                r.push(("ScanBy", text("Sideways")));
                r
            },
            "ValidationError",
            "Value 'Sideways' at 'scanBy'",
        ),
        (
            request(vec![ok().unit("Parsecs")], T0, T0 + 60 * S),
            "ValidationError",
            "The value Parsecs for parameter MetricDataQueries.member.1.MetricStat.Unit is not valid.",
        ),
        (
            vec![
                ("MetricDataQueries", Value::Array(vec![map(ok().0)])),
                ("EndTime", wire::timestamp(T0)),
            ],
            "ValidationError",
            "Value null at 'startTime'",
        ),
        (
            request(
                vec![stat_q("m", "Latency", &d, "tm99", 60)],
                T0,
                T0 + 60 * S,
            ),
            "EmulatorUnsupported",
            "tm99",
        ),
        (
            request(vec![ok().with("Label", text("${LAST}"))], T0, T0 + 60 * S),
            "EmulatorUnsupported",
            "dynamic labels",
        ),
        (
            vec![
                ("MetricDataQueries", text("m1")),
                ("StartTime", wire::timestamp(T0)),
                ("EndTime", wire::timestamp(T0)),
            ],
            "SerializationException",
            "expected an array for MetricDataQueries",
        ),
    ];
    for (entries, code, fragment) in cases {
        let e = err(&store, entries);
        assert_eq!(e.code, code, "{}", e.message);
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains(fragment),
            "{:?} does not contain {fragment:?}",
            e.message
        );
    }
}

#[test]
fn every_validation_problem_is_reported_one_per_line() {
    let store = sample_store();
    let d = [("Api", "orders")];
    let e = err(
        &store,
        request(
            vec![
                stat_q("A", "Latency", &d, "Sum", 60),
                stat_q("b-1", "Latency", &d, "Avg", 7),
            ],
            T0,
            T0 + 60 * S,
        ),
    );
    let lines: Vec<&str> = e.message.lines().collect();
    assert_eq!(lines.len(), 4, "{}", e.message);
    assert!(lines[0].contains("member.1.Id"));
    assert!(lines[1].contains("member.2.Id"));
}

#[test]
fn accepted_edge_cases() {
    let store = sample_store();
    let d = [("Api", "orders")];
    // Period 20 is a valid high-resolution period; AccountId and LabelOptions are accepted.
    let mut r = request(
        vec![stat_q("m", "Latency", &d, "Sum", 20).with("AccountId", text("123456789012"))],
        T0,
        T0 + 60 * S,
    );
    r.push(("LabelOptions", map(vec![("Timezone", text("+0130"))])));
    assert!(run(&store, r).is_ok());
    // No queries at all is an empty answer.
    let got = run(&store, request(vec![], T0, T0 + 60 * S)).unwrap();
    assert!(results(&got).is_empty());
    // A metric that does not exist is Complete with no values.
    let got = run(
        &store,
        request(
            vec![stat_q("x", "Nothing", &[], "Sum", 60)],
            T0,
            T0 + 60 * S,
        ),
    )
    .unwrap();
    let r = &results(&got)[0];
    assert_eq!(
        (r.points.len(), r.status.as_str(), r.label.as_str()),
        (0, "Complete", "Nothing")
    );
}

/// The scale benchmark's shape: a full call of 500 queries against a store of 100,000 metrics
/// (each with a few points) finds each query's own metric and nothing else.
#[test]
fn a_full_call_against_100k_metrics_answers_each_query_from_its_own_metric() {
    let mut store = Store::default();
    let metrics = 100_000;
    let name = |i: usize| (format!("t{:04}", i % 1000), format!("q{}", i / 1000));
    for i in 0..metrics {
        let (tenant, queue) = name(i);
        let k = key("Depth", &[("Tenant", &tenant), ("Queue", &queue)]);
        for minute in 0..3 {
            put(
                &mut store,
                &k,
                T0 + minute * 60 * S,
                (i * 10) as f64 + minute as f64,
                None,
                STD,
            );
        }
    }
    // Spread over the store, as a refresh of every 200th series would be.
    let chosen: Vec<usize> = (0..500).map(|n| n * 199 + 7).collect();
    let queries = chosen
        .iter()
        .map(|&i| {
            let (tenant, queue) = name(i);
            stat_q(
                &format!("s{i}"),
                "Depth",
                &[("Tenant", &tenant), ("Queue", &queue)],
                "Average",
                60,
            )
        })
        .collect();
    let got = run(&store, request(queries, T0, T0 + 180 * S)).unwrap();
    assert_eq!(got.metrics_requested, 500);
    let results = results(&got);
    assert_eq!(results.len(), 500);
    for (result, &i) in results.iter().zip(&chosen) {
        assert_eq!(result.id, format!("s{i}"));
        let newest_first: Vec<(i64, f64)> = (0..3)
            .rev()
            .map(|minute| (minute * 60 * S, (i * 10) as f64 + minute as f64))
            .collect();
        assert_eq!(result.points, newest_first, "{}", result.id);
    }
}
