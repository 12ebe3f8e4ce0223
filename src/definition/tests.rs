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
    let Err(ParseError::Invalid(problems)) = parse(text) else {
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

#[test]
fn rejects_unknown_fields_naming_them() {
    let text = "metrics:\n  - name: x\n    widnow: 5m\n    queries: []\n";
    let Err(ParseError::Yaml(message)) = parse(text) else {
        panic!("expected a schema error");
    };
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
    let Err(ParseError::Invalid(problems)) = parse(text) else {
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
    let Err(ParseError::Invalid(problems)) = parse(text) else {
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
