//! Definition validation, the set's precedence, and the file loader.
#![allow(clippy::unwrap_used)]

use super::*;

const SQS: &str = r#"
metrics:
  - name: sqs-visible
    window: 10m
    endOffset: 1m
    noDataValue: 0
    queries:
      - id: visible
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions:
              - name: QueueName
                value: "${QueueName}"
          period: 60
          stat: Average
          unit: Count
"#;

#[test]
fn parses_an_sqs_definition_with_placeholders() {
    let set = parse(SQS).unwrap();
    let definition = set.get("sqs-visible").unwrap();
    assert_eq!(definition.labels, BTreeSet::from(["QueueName".to_string()]));
    let read = definition.cloudwatch().unwrap();
    assert_eq!(read.value_query, "visible");
    assert_eq!(read.period, 60);
    assert_eq!(read.window, Duration::from_secs(600));
    assert_eq!(read.end_offset, Duration::from_secs(60));
    assert_eq!(definition.spec.no_data_value, Some(0.0));
}

#[test]
fn accepts_the_awslabs_sample_unchanged() {
    // The archived adapter's samples/sqs spec, as a definitions-file entry.
    let text = r#"
metrics:
  - name: sqs-helloworld-length
    resource:
      resource: "deployment"
    queries:
      - id: sqs_helloworld_length
        metricStat:
          metric:
            namespace: "AWS/SQS"
            metricName: "ApproximateNumberOfMessagesVisible"
            dimensions:
              - name: QueueName
                value: "helloworld"
          period: 60
          stat: Average
          unit: Count
        returnData: true
"#;
    let set = parse(text).unwrap();
    let definition = set.get("sqs-helloworld-length").unwrap();
    assert!(definition.labels.is_empty());
    assert_eq!(definition.cloudwatch().unwrap().window, DEFAULT_WINDOW);
}

#[test]
fn reports_every_problem_at_once() {
    let text = r#"
metrics:
  - name: broken
    queries:
      - id: Bad-Id
        metricStat:
          metric: {namespace: AWS/SQS, metricName: "${oops}"}
          period: 7
      - id: e1
        expression: "SUM(METRICS())"
        metricStat:
          metric: {namespace: AWS/SQS, metricName: X}
          period: 60
          stat: Avg
      - id: e2
        expression: "SUM(METRICS()) / ${Replicas"
  - name: broken
    queries: []
"#;
    let Err(ParseError::Invalid { problems }) = parse(text) else {
        panic!("expected validation problems");
    };
    let all = problems.join("\n");
    for needle in [
        "id \"Bad-Id\" must start with a lowercase letter",
        "metricName contains a ${...} placeholder",
        "7 is not a period CloudWatch accepts",
        "metricStat.stat is required",
        "set either expression or metricStat, not both",
        "unclosed ${ placeholder",
        "\"Avg\" is not a CloudWatch statistic",
        "queries Bad-Id, e1, e2 all return data",
        "name is defined more than once",
        "at least one query is required",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// An error and its causes, as `{err:#}` prints them at startup.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const ONE_QUERY: &str = "metrics:\n  - name: x\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          stat: Sum\n";

#[test]
fn strings_where_numbers_or_booleans_belong_are_refused_naming_the_field_line_and_column() {
    let with = |line: &str| format!("{ONE_QUERY}{line}\n");
    let cases = [
        (
            with("          period: \"60\""),
            "at metrics[0].queries[0].metricStat.period: invalid type: string \"60\", expected an integer (not a quoted string) at line 8, column 11",
        ),
        (
            with("          period: 60\n        returnData: \"no\""),
            "at metrics[0].queries[0].returnData: invalid type: string \"no\", expected true or false (not a quoted string) at line 9, column 9",
        ),
        (
            with("          period: 60\n        returnData: \"true\""),
            "at metrics[0].queries[0].returnData: invalid type: string \"true\", expected true or false",
        ),
        (
            // YAML 1.1's `no` is text in YAML 1.2, and text is no boolean.
            with("          period: 60\n        returnData: no"),
            "at metrics[0].queries[0].returnData: invalid type: string \"no\", expected true or false",
        ),
        (
            with("          period: 60\n        period: \"300\""),
            "at metrics[0].queries[0].period: invalid type: string \"300\", expected an integer",
        ),
        (
            format!("{}    noDataValue: \"0\"\n", with("          period: 60")),
            "at metrics[0].noDataValue: invalid type: string \"0\", expected a number (not a quoted string) at line 9, column 5",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, ParseError::Yaml { .. }), "{err:?}");
        let message = chain(&err);
        assert!(message.starts_with(expected), "{message}\nin:\n{text}");
    }
    // As written, they are what they say.
    let set = parse(&format!(
        "{}        returnData: true\n    noDataValue: 0\n",
        with("          period: 60.0")
    ))
    .unwrap();
    let definition = set.get("x").unwrap();
    assert_eq!(definition.cloudwatch().unwrap().period, 60);
    assert_eq!(definition.spec.no_data_value, Some(0.0));
}

#[test]
fn a_file_over_the_node_budget_names_the_limit_and_what_to_do() {
    let mut text = String::from("metrics:\n");
    let mut index = 0;
    while text.len() < 4_000_000 {
        text.push_str(&format!(
            "  - name: m{index}\n    queries:\n      - id: a\n        metricStat:\n          metric: {{namespace: N, metricName: M}}\n          period: 60\n          stat: Sum\n"
        ));
        index += 1;
    }
    let err = parse(&text).unwrap_err();
    let ParseError::TooLarge { limit } = &err else {
        panic!("expected the budget to refuse it: {err:?}");
    };
    assert_eq!(
        limit,
        "more than 250000 YAML nodes (values, lists and maps)"
    );
    let message = err.to_string();
    assert!(
        !message.contains("budget breached"),
        "not the parser's own text: {message}"
    );
    assert!(message.contains("ExternalMetric objects"), "{message}");
    assert!(message.contains("placeholders"), "{message}");
}

#[test]
fn an_empty_file_is_no_metrics_and_a_warning() {
    for text in ["", "# nothing yet\n", "metrics: []\n", "metrics:\n"] {
        assert!(parse(text).unwrap().is_empty(), "{text:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "metrics: []\n").unwrap();
    let full = dir.path().join("full.yaml");
    std::fs::write(&full, SQS).unwrap();
    let logs = captured_logs(|| {
        assert!(load_file(&empty).unwrap().is_empty());
        assert_eq!(load_file(&full).unwrap().len(), 1);
    });
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("defines no metrics") && warnings[0].contains("empty.yaml"),
        "{logs}"
    );
}

/// What `f` logs, as text.
fn captured_logs(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn load_errors_name_the_file_and_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let err = load_file(&missing).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    let message = chain(&err);
    assert!(
        message.starts_with(&format!(
            "cannot read definitions file {}: ",
            missing.display()
        )),
        "{message}"
    );

    let quoted = dir.path().join("quoted.yaml");
    std::fs::write(&quoted, format!("{ONE_QUERY}          period: \"60\"\n")).unwrap();
    let err = load_file(&quoted).unwrap_err();
    assert!(matches!(err, LoadError::Parse { .. }));
    let message = chain(&err);
    assert_eq!(
        message,
        format!(
            "definitions file {} is not valid: at metrics[0].queries[0].metricStat.period: invalid type: string \"60\", expected an integer (not a quoted string) at line 8, column 11",
            quoted.display()
        )
    );
    assert_eq!(message.matches("invalid type").count(), 1);

    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(&invalid, format!("{ONE_QUERY}          period: 45\n")).unwrap();
    let err = load_file(&invalid).unwrap_err();
    let LoadError::Invalid { problems, .. } = &err else {
        panic!("expected problems: {err:?}");
    };
    assert_eq!(problems.len(), 1);
    assert!(err.to_string().contains("has 1 problem(s):\n  - metrics[0] (x): queries[0] (a): metricStat.period: 45 is not a period"));
    assert!(std::error::Error::source(&err).is_none());
}

#[test]
fn rejects_unknown_fields_naming_them() {
    let text = "metrics:\n  - name: x\n    widnow: 5m\n    queries: []\n";
    let err = parse(text).unwrap_err();
    assert!(matches!(err, ParseError::Yaml { .. }), "{err:?}");
    let message = chain(&err);
    assert!(message.contains("widnow"), "{message}");
}

#[test]
fn periods_follow_cloudwatch() {
    for ok in [1, 5, 10, 30, 60, 120, 300, 3600] {
        assert!(check_period(ok).is_ok(), "{ok}");
    }
    for bad in [0, -60, 2, 15, 45, 90, 61] {
        assert!(check_period(bad).is_err(), "{bad}");
    }
}

#[test]
fn window_defaults_to_three_periods_for_long_periods() {
    let text = "metrics:\n  - name: x\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 300\n          stat: Sum\n";
    let set = parse(text).unwrap();
    assert_eq!(
        set.get("x").unwrap().cloudwatch().unwrap().window,
        Duration::from_secs(900)
    );
}

#[test]
fn window_shorter_than_period_is_refused() {
    let text = "metrics:\n  - name: x\n    window: 30s\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 60\n          stat: Sum\n";
    let Err(ParseError::Invalid { problems }) = parse(text) else {
        panic!("expected a problem");
    };
    assert!(
        problems[0].contains("shorter than the period"),
        "{problems:?}"
    );
}

#[test]
fn cluster_wide_definitions_win_and_namespaced_ones_stay_in_their_namespace() {
    let file = parse(SQS).unwrap();
    let namespaced = |namespace: &str, name: &str| {
        let mut spec = file.get("sqs-visible").unwrap().spec.clone();
        spec.name = name.to_string();
        let mut definition = Definition::new(spec).unwrap();
        definition.namespace = Some(namespace.to_string());
        Arc::new(definition)
    };
    let set = file.with_namespaced([
        namespaced("team-a", "orders"),
        namespaced("team-b", "orders"),
        namespaced("team-a", "sqs-visible"),
    ]);
    assert_eq!(set.len(), 3);
    assert_eq!(
        set.lookup("team-a", "orders").unwrap().namespace.as_deref(),
        Some("team-a")
    );
    assert!(set.lookup("team-c", "orders").is_none());
    assert!(
        set.lookup("team-a", "sqs-visible")
            .unwrap()
            .namespace
            .is_none()
    );
    assert!(set.lookup("anywhere", "sqs-visible").is_some());
    assert_eq!(
        set.names().into_iter().collect::<Vec<_>>(),
        ["orders", "sqs-visible"]
    );
    assert_eq!(set.cluster_wide().count(), 1);
    assert!(
        set.get("orders").is_none(),
        "get() is the definitions file only"
    );
}

#[test]
fn sqs_definitions_read_a_queue_every_15s_by_default() {
    let text = r#"
metrics:
  - name: orders-backlog
    sqs:
      queue: "${QueueName}"
      accountId: "123456789012"
      count: [inFlight, visible]
  - name: fast
    refreshInterval: 1s
    sqs: {queue: orders}
"#;
    let set = parse(text).unwrap();
    let backlog = set.get("orders-backlog").unwrap();
    assert_eq!(backlog.backend(), Backend::Sqs);
    assert_eq!(backlog.labels, BTreeSet::from(["QueueName".to_string()]));
    assert_eq!(backlog.refresh_interval, Duration::from_secs(15));
    let (_, read) = backlog.sqs().unwrap();
    assert_eq!(read.counts, [QueueCount::Visible, QueueCount::InFlight]);
    assert!(backlog.cloudwatch().is_none());
    assert_eq!(
        set.get("fast").unwrap().refresh_interval,
        Duration::from_secs(1)
    );
}

#[test]
fn sqs_definitions_refuse_what_does_not_apply_to_them() {
    let text = r#"
metrics:
  - name: both
    sqs: {queue: orders}
    queries:
      - id: a
        metricStat:
          metric: {namespace: N, metricName: M}
          period: 60
          stat: Sum
  - name: cloudwatch-fields
    window: 5m
    endOffset: 1m
    noDataValue: 0
    sqs: {queue: orders}
  - name: too-fast
    refreshInterval: 500ms
    sqs: {queue: orders}
  - name: bad-names
    sqs:
      queue: "orders queue"
      accountId: "12345"
      count: [visible, visible]
  - name: url-and-account
    sqs:
      queue: "https://sqs.eu-west-1.amazonaws.com/123456789012/orders"
      accountId: "123456789012"
  - name: bad-placeholder
    sqs: {queue: "${Queue"}
"#;
    let Err(ParseError::Invalid { problems }) = parse(text) else {
        panic!("expected validation problems");
    };
    let all = problems.join("\n");
    for needle in [
        "metrics[0] (both): set either queries (CloudWatch) or sqs",
        "metrics[1] (cloudwatch-fields): window applies to CloudWatch queries only",
        "metrics[1] (cloudwatch-fields): endOffset applies to CloudWatch queries only",
        "metrics[1] (cloudwatch-fields): noDataValue applies to CloudWatch queries only",
        "metrics[2] (too-fast): refreshInterval 500ms is shorter than the 1s minimum",
        "metrics[3] (bad-names): sqs: queue \"orders queue\" is not an SQS queue name",
        "metrics[3] (bad-names): sqs: accountId \"12345\" must be a 12-digit AWS account id",
        "metrics[3] (bad-names): sqs: count: each count may be listed once",
        "metrics[4] (url-and-account): sqs: accountId is set, but the queue URL already names",
        "metrics[5] (bad-placeholder): sqs: queue: unclosed ${ placeholder",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn every_limit_counts_the_batch_prefix_and_the_filled_in_values() {
    let long_id = format!("a{}", "b".repeat(250));
    let long_expression = format!("m * {} + ${{Factor}}", "1".repeat(1980));
    let text = format!(
        r#"
metrics:
  - name: limits
    queries:
      - id: {long_id}
        returnData: false
        metricStat:
          metric: {{namespace: N, metricName: M}}
          period: 60
          stat: Sum
      - id: m
        returnData: false
        metricStat:
          metric:
            namespace: N
            metricName: M
            dimensions: [{{name: D, value: "{}${{Queue}}"}}]
          period: 60
          stat: Sum
      - id: e
        expression: "{long_expression}"
"#,
        "x".repeat(970)
    );
    let Err(ParseError::Invalid { problems }) = parse(&text) else {
        panic!("expected problems");
    };
    let all = problems.join("\n");
    for needle in [
        "id is 251 characters; CloudWatch allows 255, and batching prefixes up to 5 (s499_), so at most 250",
        "expression can be 2055 characters in a call",
        "dimension D can be 1033 characters once its placeholders are filled",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn huge_durations_and_periods_are_refused_naming_the_field_not_a_panic() {
    let text = r#"
metrics:
  - name: huge
    refreshInterval: 7000000000000000000s
    maxAge: 7000000000000000000s
    window: 7000000000000000000s
    endOffset: 7000000000000000000s
    queries:
      - id: a
        metricStat:
          metric: {namespace: N, metricName: M}
          period: 9223372036854775800
          stat: Sum
  - name: huge-sqs
    refreshInterval: 100000h
    sqs: {queue: orders}
"#;
    let Err(ParseError::Invalid { problems }) = parse(text) else {
        panic!("expected problems");
    };
    let all = problems.join("\n");
    for needle in [
        "metricStat.period: 9223372036854775800 is longer than the 86400 s (one day) maximum",
        "refreshInterval 7000000000000000000s is longer than the 24h maximum",
        "maxAge 7000000000000000000s is longer than the 7d maximum",
        "window 7000000000000000000s is longer than the 24h maximum",
        "endOffset 7000000000000000000s is longer than the 1h maximum",
        "metrics[1] (huge-sqs): refreshInterval 11years 4months 27days 3h 45m 36s is longer than the 24h maximum",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// The loader, fed anything a file or an object could hold: it never panics, and every rejection
/// names the field (or, for text that is not YAML at all, the line).
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    const FIELDS: &[&str] = &[
        "name",
        "region",
        "roleArn",
        "externalId",
        "window",
        "endOffset",
        "refreshInterval",
        "maxAge",
        "noDataValue",
        "queries",
        "sqs",
        "id",
        "expression",
        "metricStat",
        "period",
        "accountId",
        "dimension",
        "queue",
        "count",
        "label",
        "returnData",
        "unit",
        "stat",
        "namespace",
        "metricName",
        "resource",
    ];

    fn names_a_field(message: &str) -> bool {
        FIELDS.iter().any(|field| message.contains(field)) || message.contains("line ")
    }

    fn duration() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("5m")),
            Just(json!("0s")),
            Just(json!("500ms")),
            Just(json!("1h 30m")),
            Just(json!("7000000000000000000s")),
            Just(json!("99999999999999999999s")),
            Just(json!("18446744073709551615ns 9999999999h")),
            Just(json!("-1s")),
            Just(json!("five minutes")),
            Just(json!("")),
            any::<i64>().prop_map(Value::from),
        ]
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!(20)),
            Just(json!(60)),
            Just(json!(0)),
            Just(json!(-60)),
            Just(json!(86400)),
            Just(json!(i64::MAX)),
            Just(json!(9223372036854775800_i64)),
            Just(json!(u64::MAX)),
            Just(json!(1e300)),
            Just(json!(-9.3e15)),
            Just(json!("60")),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
        ]
    }

    fn text() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("${QueueName}")),
            Just(json!("orders-${Env}")),
            Just(json!("${")),
            Just(json!("${bad name}")),
            Just(json!("")),
            Just(json!("visible")),
            Just(json!("m * ${Factor}")),
            Just(json!("SUM(METRICS())")),
            Just(json!(
                "https://sqs.eu-west-1.amazonaws.com/123456789012/${Q}"
            )),
            Just(json!("x".repeat(3000))),
            Just(json!(123)),
            any::<String>().prop_map(Value::from),
        ]
    }

    fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
        let mut map = Map::new();
        for (key, value) in fields {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        }
        Value::Object(map)
    }

    fn query() -> impl Strategy<Value = Value> {
        let stat = (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(proptest::collection::vec((text(), text()), 0..3)),
            proptest::option::of(number()),
            proptest::option::of(prop_oneof![
                Just(json!("Average")),
                Just(json!("Avg")),
                text()
            ]),
            proptest::option::of(prop_oneof![Just(json!("Count")), text()]),
        )
            .prop_map(|(namespace, metric_name, dimensions, period, stat, unit)| {
                let dimensions = dimensions.map(|list| {
                    Value::Array(
                        list.into_iter()
                            .map(|(name, value)| json!({"name": name, "value": value}))
                            .collect(),
                    )
                });
                object(vec![
                    (
                        "metric",
                        Some(object(vec![
                            ("namespace", namespace),
                            ("metricName", metric_name),
                            ("dimensions", dimensions),
                        ])),
                    ),
                    ("period", period),
                    ("stat", stat),
                    ("unit", unit),
                ])
            });
        (
            prop_oneof![Just(json!("visible")), Just(json!("e")), text()],
            proptest::option::of(text()),
            proptest::option::of(stat),
            proptest::option::of(number()),
            proptest::option::of(prop_oneof![Just(json!(true)), Just(json!(false)), text()]),
            proptest::option::of(text()),
        )
            .prop_map(
                |(id, expression, metric_stat, period, return_data, account)| {
                    object(vec![
                        ("id", Some(id)),
                        ("expression", expression),
                        ("metricStat", metric_stat),
                        ("period", period),
                        ("returnData", return_data),
                        ("accountId", account),
                    ])
                },
            )
    }

    fn spec() -> impl Strategy<Value = Value> {
        let sqs = (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(proptest::collection::vec(
                prop_oneof![
                    Just(json!("visible")),
                    Just(json!("inFlight")),
                    Just(json!("delayed")),
                    text()
                ],
                0..4,
            )),
        )
            .prop_map(|(queue, account, count)| {
                object(vec![
                    ("queue", queue),
                    ("accountId", account),
                    ("count", count.map(Value::Array)),
                ])
            });
        (
            (
                prop_oneof![Just(json!("metric")), text()],
                proptest::option::of(prop_oneof![Just(json!("eu-west-1")), text()]),
                proptest::option::of(text()),
                proptest::option::of(duration()),
                proptest::option::of(duration()),
            ),
            (
                proptest::option::of(duration()),
                proptest::option::of(duration()),
                proptest::option::of(number()),
                proptest::option::of(proptest::collection::vec(query(), 0..3)),
                proptest::option::of(sqs),
            ),
        )
            .prop_map(
                |(
                    (name, region, role, window, end_offset),
                    (refresh, max_age, no_data, queries, sqs),
                )| {
                    object(vec![
                        ("name", Some(name)),
                        ("region", region),
                        ("roleArn", role),
                        ("window", window),
                        ("endOffset", end_offset),
                        ("refreshInterval", refresh),
                        ("maxAge", max_age),
                        ("noDataValue", no_data),
                        ("queries", queries.map(Value::Array)),
                        ("sqs", sqs),
                    ])
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_file_loader_never_panics_and_names_the_field(specs in proptest::collection::vec(spec(), 0..3)) {
            // JSON is YAML: the file text is the specs as a JSON document.
            let text = json!({"metrics": specs}).to_string();
            match parse(&text) {
                Ok(set) => {
                    for definition in set.iter() {
                        prop_assert!(definition.refresh_interval <= MAX_REFRESH_INTERVAL);
                    }
                }
                Err(err @ ParseError::Yaml { .. }) => {
                    let message = chain(&err);
                    prop_assert!(names_a_field(&message), "{message}");
                }
                Err(ParseError::TooLarge { limit }) => prop_assert!(false, "a small file is too large: {limit}"),
                Err(ParseError::Invalid { problems }) => {
                    for problem in problems {
                        let (_, what) = problem.split_once("): ").unwrap_or(("", &problem));
                        prop_assert!(names_a_field(what), "{problem}");
                    }
                }
            }
        }

        #[test]
        fn the_object_loader_never_panics_and_names_the_field(spec in spec()) {
            let converted = crate::crd::to_definition("team-a", "metric", Some(&spec), &["*".to_string()]);
            if let Err(invalid) = converted.definition {
                for problem in invalid.problems {
                    prop_assert!(names_a_field(&problem), "{problem}");
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics_the_loader(text in any::<String>()) {
            let _ = parse(&text);
        }
    }
}
