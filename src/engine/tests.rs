//! Engine behaviour under tokio's paused clock, against a scripted CloudWatch.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use super::*;
use crate::definition::parse;
use crate::provider::{BackendFailure, Operator, Requirement, Selector};
use crate::source::cloudwatch::{
    CloudWatchSource, MetricDataRequest, MetricDataSource, QueryKind, QueryResult, ResultStatus,
};
use crate::source::{Blame, SourceError};

fn throttled() -> SourceError {
    SourceError::new(BackendFailure::Throttled, Blame::Request, "Rate exceeded")
}

fn unreachable() -> SourceError {
    SourceError::new(
        BackendFailure::Unreachable,
        Blame::Request,
        "connection refused",
    )
}

fn invalid(value: &str) -> SourceError {
    SourceError::new(
        BackendFailure::InvalidQuery,
        Blame::Members,
        format!("ValidationError, HTTP 400: The value {value} is not valid"),
    )
}

/// Answers every returned query with the number in its `QueueName` (`q17` -> 17), or fails.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(Instant, MetricDataRequest)>>,
    failure: Mutex<Option<SourceError>>,
    /// A call with a query on this queue is rejected as a whole, as CloudWatch rejects a call
    /// with one invalid query.
    poison: Mutex<Option<String>>,
    /// A call with a query on this metric name is rejected as a whole (a definition that is
    /// wrong whatever the selector).
    poison_metric: Mutex<Option<String>>,
}

impl Fake {
    fn calls(&self) -> Vec<(Instant, MetricDataRequest)> {
        self.calls.lock().unwrap().clone()
    }
    fn fail_with(&self, error: Option<SourceError>) {
        *self.failure.lock().unwrap() = error;
    }
}

impl MetricDataSource for Fake {
    async fn get_metric_data(
        &self,
        request: &MetricDataRequest,
    ) -> Result<Vec<QueryResult>, SourceError> {
        self.calls
            .lock()
            .unwrap()
            .push((Instant::now(), request.clone()));
        if let Some(error) = self.failure.lock().unwrap().clone() {
            return Err(error);
        }
        if let Some(poison) = self.poison.lock().unwrap().clone()
            && request.metric_data_queries.iter().any(|q| {
                matches!(&q.kind, QueryKind::MetricStat(s) if s.dimensions.iter().any(|d| d.value == poison))
            })
        {
            return Err(invalid(&poison));
        }
        if let Some(poison) = self.poison_metric.lock().unwrap().clone()
            && request
                .metric_data_queries
                .iter()
                .any(|q| matches!(&q.kind, QueryKind::MetricStat(s) if s.metric_name == poison))
        {
            return Err(invalid(&poison));
        }
        Ok(request
            .metric_data_queries
            .iter()
            .filter(|q| q.return_data)
            .map(|q| {
                let QueryKind::MetricStat(stat) = &q.kind else {
                    panic!("only metric stats in these tests");
                };
                let queue = &stat.dimensions[0].value;
                QueryResult {
                    id: q.id.clone(),
                    label: None,
                    points: vec![(request.start_time, queue[1..].parse().unwrap())],
                    status: ResultStatus::Complete,
                    messages: vec![],
                }
            })
            .collect())
    }
}

/// A fixed wall-clock time for the refresh grid: half a minute past a minute boundary, so the
/// first grid refresh comes 30 s after a test starts, whatever the time of day.
fn grid_anchor() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(29_833_333 * 60 + 30)
}

const SQS: &str = r#"
metrics:
  - name: depth
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

/// The fake as the engine's only source, at `calls_per_second`.
fn sources(fake: &Arc<Fake>, calls_per_second: f64) -> Sources {
    Sources::new().with(
        CloudWatchSource::new(fake.clone()),
        Pacing::per_second(calls_per_second),
    )
}

fn setup(config: EngineConfig) -> (Engine, Arc<Fake>, CancellationToken) {
    setup_paced(config, 10.0)
}

fn setup_paced(
    config: EngineConfig,
    calls_per_second: f64,
) -> (Engine, Arc<Fake>, CancellationToken) {
    let fake = Arc::new(Fake::default());
    let definitions = Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap()));
    let cache = Engine::with_wall_clock(
        definitions,
        sources(&fake, calls_per_second),
        config,
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    (cache, fake, stop)
}

fn request(queue: &str) -> MetricRequest {
    MetricRequest {
        namespace: "default".into(),
        metric: "depth".into(),
        selector: Selector {
            requirements: vec![Requirement {
                key: "QueueName".into(),
                operator: Operator::Equals,
                values: vec![queue.into()],
            }],
        },
    }
}

async fn value(cache: &Engine, queue: &str) -> Result<f64, ProviderError> {
    cache
        .get_values(request(queue))
        .await
        .map(|values| values[0].value)
}

#[tokio::test(start_paused = true)]
async fn more_than_500_cold_series_take_ceil_n_over_500_calls_and_map_back() {
    let (cache, fake, stop) = setup(EngineConfig::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1201 {
        let cache = cache.clone_handle();
        tasks.spawn(async move { (i, value(&cache, &format!("q{i}")).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        assert_eq!(
            result.unwrap(),
            f64::from(i),
            "series q{i} got another series' value"
        );
    }
    let calls = fake.calls();
    assert_eq!(calls.len(), 3, "expected ceil(1201/500) calls");
    let sizes: Vec<usize> = calls
        .iter()
        .map(|(_, r)| r.metric_data_queries.len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1201);
    assert!(sizes.iter().all(|&n| n <= 500), "{sizes:?}");
    assert_eq!(cache.active_series(), 1201);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_hundred_first_requests_for_one_series_make_one_call() {
    let (cache, fake, stop) = setup(EngineConfig::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone_handle();
        tasks.spawn(async move { value(&cache, "q7").await });
    }
    while let Some(joined) = tasks.join_next().await {
        assert_eq!(joined.unwrap().unwrap(), 7.0);
    }
    assert_eq!(fake.calls().len(), 1);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn warm_requests_are_answered_from_memory_while_the_refresher_keeps_them_fresh() {
    let (cache, fake, stop) = setup(EngineConfig::default());
    assert_eq!(value(&cache, "q3").await.unwrap(), 3.0);
    let before = Instant::now();
    for _ in 0..50 {
        assert_eq!(value(&cache, "q3").await.unwrap(), 3.0);
    }
    assert_eq!(Instant::now(), before, "a warm request waited");
    assert_eq!(fake.calls().len(), 1);
    // Refreshed in the background every period (60 s), with nobody waiting on it.
    tokio::time::sleep(Duration::from_secs(185)).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 4, "one refresh per period");
    assert!(
        calls[1].0 - calls[0].0 <= Duration::from_secs(60),
        "first refresh is on the grid"
    );
    for pair in calls[1..].windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_secs(60) && gap < Duration::from_millis(60_100),
            "{gap:?}"
        );
    }
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn series_first_asked_for_at_different_times_are_refreshed_in_one_call() {
    let (cache, fake, stop) = setup(EngineConfig::default());
    for i in 0..300 {
        value(&cache, &format!("q{i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let cold_calls = fake.calls().len();
    // Let every series pass its first grid point, then watch two refresh rounds.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let before = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let calls = fake.calls();
    assert_eq!(
        calls.len() - before,
        2,
        "two rounds, one call each ({cold_calls} cold calls)"
    );
    assert!(
        calls[before..]
            .iter()
            .all(|(_, r)| r.metric_data_queries.len() == 300)
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_serves_last_good_until_max_age_then_fails_and_recovers() {
    let config = EngineConfig::default();
    let (cache, fake, stop) = setup(config.clone());
    assert_eq!(value(&cache, "q5").await.unwrap(), 5.0);
    let good_at = Instant::now();
    fake.fail_with(Some(throttled()));

    // Within max age (5 min) the last good value is served while refreshes fail.
    tokio::time::sleep(Duration::from_secs(240)).await;
    assert_eq!(value(&cache, "q5").await.unwrap(), 5.0);

    // Back-off: gaps after the first failure grow (2 s base, doubling, jittered 50-100%),
    // capped at 4 refresh intervals.
    let calls = fake.calls();
    let failures: Vec<Instant> = calls.iter().skip(1).map(|(t, _)| *t).collect();
    assert!(failures.len() >= 4, "{} failed refreshes", failures.len());
    let gaps: Vec<Duration> = failures.windows(2).map(|w| w[1] - w[0]).collect();
    for (k, gap) in gaps.iter().enumerate() {
        let full = config.backoff_base * (1 << k.min(16));
        let full = full.min(Duration::from_secs(240));
        assert!(
            *gap >= full / 2 && *gap <= full + Duration::from_millis(10),
            "gap {k}: {gap:?} vs {full:?}"
        );
    }

    // Past max age: an error that says the value is stale and why, never the old number.
    tokio::time::sleep_until(good_at + Duration::from_secs(301)).await;
    let err = value(&cache, "q5").await.unwrap_err();
    let ProviderError::Stale { failure, message } = &err else {
        panic!("expected a stale-value error, got {err:?}");
    };
    assert_eq!(*failure, Some(BackendFailure::Throttled));
    assert!(message.contains("throttled"), "{message}");
    assert!(message.contains("past its max age of 5m"), "{message}");

    // Recovery without a restart.
    fake.fail_with(None);
    tokio::time::sleep(Duration::from_secs(241)).await;
    assert_eq!(value(&cache, "q5").await.unwrap(), 5.0);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn idle_series_stop_being_refreshed() {
    let config = EngineConfig {
        idle_timeout: Duration::from_secs(300),
        ..EngineConfig::default()
    };
    let (cache, fake, stop) = setup(config);
    value(&cache, "q1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(cache.active_series(), 0);
    let calls_after_idle = fake.calls().len();
    assert!(
        calls_after_idle <= 7,
        "refreshed {calls_after_idle} times in 5 idle minutes"
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        fake.calls().len(),
        calls_after_idle,
        "an idle series was refreshed"
    );
    // Asking again makes it active again.
    assert_eq!(value(&cache, "q1").await.unwrap(), 1.0);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_call_budget_is_never_exceeded() {
    let (cache, fake, stop) = setup_paced(EngineConfig::default(), 2.0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5000 {
        let cache = cache.clone_handle();
        tasks.spawn(async move { value(&cache, &format!("q{i}")).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
    // Two refresh rounds as well.
    tokio::time::sleep(Duration::from_secs(130)).await;
    let calls = fake.calls();
    assert!(calls.len() >= 30, "{} calls", calls.len());
    for pair in calls.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(500),
            "two calls {gap:?} apart at 2 calls/s"
        );
    }
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_edited_definition_is_never_answered_with_the_old_specs_value() {
    let fake = Arc::new(Fake::default());
    let definitions = Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap()));
    let cache = Engine::with_wall_clock(
        definitions.clone(),
        sources(&fake, 10.0),
        EngineConfig::default(),
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    assert_eq!(value(&cache, "q2").await.unwrap(), 2.0);
    definitions.store(Arc::new(parse(&SQS.replace("Average", "Maximum")).unwrap()));
    assert_eq!(value(&cache, "q2").await.unwrap(), 2.0);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "the edit must trigger a fresh fetch");
    let QueryKind::MetricStat(stat) = &calls[1].1.metric_data_queries[0].kind else {
        panic!("metric stat expected");
    };
    assert_eq!(stat.stat, "Maximum");
    // A deleted definition is not found, and its series is dropped.
    definitions.store(Arc::new(DefinitionSet::default()));
    assert!(matches!(
        value(&cache, "q2").await,
        Err(ProviderError::NotFound { .. })
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cache.active_series(), 0);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn no_data_is_an_answer_not_a_failure() {
    let fake = Arc::new(Fake::default());
    let text = SQS.replace("AWS/SQS", "Empty");
    let definitions = Arc::new(ArcSwap::from_pointee(parse(&text).unwrap()));
    struct Empty(Arc<Fake>);
    impl MetricDataSource for Empty {
        async fn get_metric_data(
            &self,
            request: &MetricDataRequest,
        ) -> Result<Vec<QueryResult>, SourceError> {
            self.0
                .calls
                .lock()
                .unwrap()
                .push((Instant::now(), request.clone()));
            Ok(vec![])
        }
    }
    let cache = Engine::with_wall_clock(
        definitions,
        Sources::new().with(
            CloudWatchSource::new(Empty(fake.clone())),
            Pacing::per_second(10.0),
        ),
        EngineConfig::default(),
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    let err = cache.get_values(request("q1")).await.unwrap_err();
    assert!(matches!(err, ProviderError::NoData(_)), "{err:?}");
    // Refreshed at the normal interval, not backed off.
    tokio::time::sleep(Duration::from_secs(125)).await;
    assert_eq!(fake.calls().len(), 3);
    stop.cancel();
}

/// The queue names the calls carried, per call.
fn queues_of(request: &MetricDataRequest) -> Vec<String> {
    request
        .metric_data_queries
        .iter()
        .filter_map(|q| match &q.kind {
            QueryKind::MetricStat(stat) => Some(stat.dimensions[0].value.clone()),
            QueryKind::Expression(_) => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_query_that_makes_shared_calls_fail_is_isolated_and_harms_no_other_series() {
    let (cache, fake, stop) = setup(EngineConfig::default());
    *fake.poison.lock().unwrap() = Some("q999999".into());
    // Ten good series and the poisoned one arrive together, so they share the first call.
    let mut tasks = tokio::task::JoinSet::new();
    for queue in (0..10)
        .map(|i| format!("q{i}"))
        .chain(["q999999".to_string()])
    {
        let cache = cache.clone_handle();
        tasks.spawn(async move { (queue.clone(), value(&cache, &queue).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (queue, result) = joined.unwrap();
        if queue == "q999999" {
            let err = result.unwrap_err();
            assert!(
                matches!(
                    err,
                    ProviderError::Backend {
                        failure: BackendFailure::InvalidQuery,
                        ..
                    }
                ),
                "{err:?}"
            );
        } else {
            assert_eq!(
                result.unwrap(),
                queue[1..].parse::<f64>().unwrap(),
                "{queue}"
            );
        }
    }
    // From then on the offender has calls of its own; every other series keeps its cadence:
    // exactly one call per minute on the grid, with all ten series in it, never failing.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let started = Instant::now() - Duration::from_secs(300);
    let calls = fake.calls();
    let shared: Vec<&(Instant, MetricDataRequest)> = calls
        .iter()
        .filter(|(at, r)| {
            *at > started + Duration::from_secs(1) && queues_of(r).contains(&"q3".to_string())
        })
        .collect();
    assert_eq!(shared.len(), 5, "one refresh a minute for five minutes");
    for (_, request) in &shared {
        let queues = queues_of(request);
        assert_eq!(queues.len(), 10, "{queues:?}");
        assert!(!queues.contains(&"q999999".to_string()));
    }
    for pair in shared.windows(2) {
        assert_eq!(pair[1].0 - pair[0].0, Duration::from_secs(60));
    }
    for i in 0..10 {
        assert_eq!(value(&cache, &format!("q{i}")).await.unwrap(), f64::from(i));
    }
    // The offender alone is retried (backing off), in calls that carry nothing else.
    let alone: Vec<&(Instant, MetricDataRequest)> = calls
        .iter()
        .filter(|(_, r)| queues_of(r).contains(&"q999999".to_string()))
        .collect();
    assert!(
        alone
            .iter()
            .filter(|(at, _)| *at > started + Duration::from_secs(1))
            .all(|(_, r)| queues_of(r).len() == 1)
    );
    assert!(alone.len() < 20, "{} calls for the offender", alone.len());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_label_value_that_breaks_its_query_is_refused_for_that_series_alone() {
    let text = r#"
metrics:
  - name: scaled
    queries:
      - id: m
        returnData: false
        metricStat:
          metric:
            namespace: AWS/SQS
            metricName: ApproximateNumberOfMessagesVisible
            dimensions: [{name: QueueName, value: "q${Queue}"}]
          period: 60
          stat: Average
      - id: e
        expression: "m * ${Factor}"
"#;
    let fake = Arc::new(Fake::default());
    let cache = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(parse(text).unwrap())),
        sources(&fake, 10.0),
        EngineConfig::default(),
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    let ask = |queue: &str, factor: &str| MetricRequest {
        namespace: "default".into(),
        metric: "scaled".into(),
        selector: Selector {
            requirements: [("Queue", queue), ("Factor", factor)]
                .into_iter()
                .map(|(key, value)| Requirement {
                    key: key.into(),
                    operator: Operator::Equals,
                    values: vec![value.into()],
                })
                .collect(),
        },
    };
    for (queue, factor, why) in [
        ("1", "1.2.3", "not a plain number"),
        ("1", "", "it is empty"),
        ("", "2", "it is empty"),
    ] {
        let err = cache.get_values(ask(queue, factor)).await.unwrap_err();
        let ProviderError::InvalidSelector(message) = &err else {
            panic!("expected a 400, got {err:?}");
        };
        assert!(message.contains(why), "{message}");
    }
    assert!(
        fake.calls().is_empty(),
        "a refused value never reaches CloudWatch"
    );
    stop.cancel();
}

/// An engine where each of `namespaces` defines the metric as an ExternalMetric, against a fake
/// paced at `calls_per_second`.
fn tenants(
    namespaces: &[&str],
    config: EngineConfig,
    calls_per_second: f64,
) -> (Engine, Arc<Fake>, CancellationToken) {
    let spec = parse(SQS).unwrap().get("depth").unwrap().spec.clone();
    let objects = namespaces.iter().map(|namespace| {
        let mut definition = Definition::new(spec.clone()).unwrap();
        definition.namespace = Some(namespace.to_string());
        Arc::new(definition)
    });
    let definitions = Arc::new(ArcSwap::from_pointee(
        DefinitionSet::default().with_namespaced(objects),
    ));
    let fake = Arc::new(Fake::default());
    let cache = Engine::with_wall_clock(
        definitions,
        sources(&fake, calls_per_second),
        config,
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    (cache, fake, stop)
}

/// A request for queue `queue` from an HPA in `namespace`.
fn in_namespace(namespace: &str, queue: &str) -> MetricRequest {
    MetricRequest {
        namespace: namespace.to_string(),
        ..request(queue)
    }
}

#[tokio::test(start_paused = true)]
async fn one_tenant_asking_for_many_new_series_does_not_delay_another_tenants_refresh() {
    // Two namespaces define the same metric; one asks for 20,000 new selector values at once.
    let start = Instant::now();
    let (cache, fake, stop) = tenants(&["flood", "victim"], EngineConfig::default(), 0.5);
    // The victim's series is warm.
    cache
        .get_values(in_namespace("victim", "q7"))
        .await
        .unwrap();
    // The flood: 20,000 first requests (40 calls at one call per 2 s: 80 s of budget).
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..20_000 {
        let cache = cache.clone_handle();
        let request = in_namespace("flood", &format!("q{i}"));
        flood.spawn(async move { cache.get_values(request).await.is_ok() });
    }
    // The victim's new series is fetched within a second or two, not after the flood's 20 s.
    let asked = Instant::now();
    let value = cache
        .get_values(in_namespace("victim", "q8"))
        .await
        .unwrap();
    assert_eq!(value[0].value, 8.0);
    assert!(
        Instant::now() - asked < Duration::from_secs(3),
        "waited {:?} behind another tenant",
        Instant::now() - asked
    );
    // And the victim's warm series is refreshed at its grid point (a minute boundary, 30 s in),
    // in the middle of the flood, not after it.
    let grid = start + Duration::from_secs(30);
    tokio::time::sleep_until(grid + Duration::from_secs(3)).await;
    let calls = fake.calls();
    let victim_refreshed = calls.iter().any(|(at, r)| {
        *at >= grid
            && *at <= grid + Duration::from_secs(3)
            && queues_of(r).contains(&"q7".to_string())
    });
    assert!(
        victim_refreshed,
        "the victim's refresh waited behind the flood"
    );
    assert!(
        calls.len() < 40,
        "the flood was still draining at the victim's grid point ({} calls so far)",
        calls.len()
    );
    while flood.join_next().await.is_some() {}
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_full_table_refuses_at_once_and_keeps_room_for_every_tenant() {
    let config = EngineConfig {
        max_series: 10,
        ..EngineConfig::default()
    };
    let (cache, _fake, stop) = tenants(&["greedy", "modest"], config, 10.0);
    // One tenant fills the table.
    for i in 0..10 {
        cache
            .get_values(in_namespace("greedy", &format!("q{i}")))
            .await
            .unwrap();
    }
    // Past the bound it is refused at once, without waiting for a fetch.
    let asked = Instant::now();
    let err = cache
        .get_values(in_namespace("greedy", "q10"))
        .await
        .unwrap_err();
    assert_eq!(Instant::now(), asked, "a refusal must not wait");
    let ProviderError::AtCapacity(message) = &err else {
        panic!("expected AtCapacity, got {err:?}");
    };
    assert!(message.contains("--max-series"), "{message}");
    // Another tenant still gets its fair share (half), in place of the greedy one's oldest.
    for i in 0..5 {
        let value = cache
            .get_values(in_namespace("modest", &format!("q{i}")))
            .await
            .unwrap();
        assert_eq!(value[0].value, f64::from(i));
    }
    let err = cache
        .get_values(in_namespace("modest", "q5"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::AtCapacity(m) if m.contains("fair share of 5")),
        "{err:?}"
    );
    assert_eq!(cache.active_series(), 10);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_longer_than_max_age_the_value_comes_back_promptly() {
    let config = EngineConfig {
        max_age: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let (cache, fake, stop) = setup(config);
    assert_eq!(value(&cache, "q4").await.unwrap(), 4.0);
    fake.fail_with(Some(unreachable()));
    // A ten-minute outage: past max age, requests fail (never the old number).
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(matches!(
        value(&cache, "q4").await,
        Err(ProviderError::Stale { .. })
    ));
    // The backend answers again: the next request (an HPA asks every 15 s) triggers a probe,
    // and the value is back within seconds, not after a back-off of minutes.
    fake.fail_with(None);
    let back = Instant::now();
    // Poll as an HPA would (more often, to time the recovery): the first good answer must come
    // within a few seconds, while a back-off would have waited minutes.
    let recovered = loop {
        if value(&cache, "q4").await.is_ok() {
            break Instant::now();
        }
        assert!(
            Instant::now() - back < Duration::from_secs(60),
            "no value a minute after the backend came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        recovered - back <= Duration::from_secs(3),
        "the value came back {:?} after the backend did",
        recovered - back
    );
    assert_eq!(value(&cache, "q4").await.unwrap(), 4.0);
    // Without requests too, the next grid point refreshes it: failures past max age never back
    // off beyond the refresh interval.
    fake.fail_with(Some(unreachable()));
    tokio::time::sleep(Duration::from_secs(600)).await;
    fake.fail_with(None);
    let calls = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        fake.calls().len() > calls,
        "not refreshed within one interval of recovery"
    );
    assert_eq!(value(&cache, "q4").await.unwrap(), 4.0);
    stop.cancel();
}

/// Calls that carry a query on metric `name`.
fn calls_with_metric(calls: &[(Instant, MetricDataRequest)], name: &str) -> usize {
    calls
        .iter()
        .filter(|(_, r)| {
            r.metric_data_queries
                .iter()
                .any(|q| matches!(&q.kind, QueryKind::MetricStat(s) if s.metric_name == name))
        })
        .count()
}

/// An engine over `definitions` against `fake`.
fn engine_over(
    definitions: DefinitionSet,
    fake: &Arc<Fake>,
    config: EngineConfig,
    calls_per_second: f64,
) -> (Engine, Arc<AdapterMetrics>, CancellationToken) {
    let metrics = Arc::new(AdapterMetrics::default());
    let cache = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(definitions)),
        sources(fake, calls_per_second),
        config,
        metrics.clone(),
        grid_anchor(),
    );
    cache.register_gauges();
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    (cache, metrics, stop)
}

/// The queue-depth definition as an ExternalMetric of `namespace`, reading `metric_name`.
fn namespaced(namespace: &str, metric_name: &str) -> Arc<Definition> {
    let text = SQS.replace("ApproximateNumberOfMessagesVisible", metric_name);
    let spec = parse(&text).unwrap().get("depth").unwrap().spec.clone();
    let mut definition = Definition::new(spec).unwrap();
    definition.namespace = Some(namespace.to_string());
    Arc::new(definition)
}

#[tokio::test(start_paused = true)]
async fn a_wholly_rejected_tenant_costs_a_few_calls_then_one_probe_per_interval_and_harms_no_one() {
    // Namespace "broken" defines a metric CloudWatch rejects whatever the selector (as for
    // `expression: "NOPE(m)"`); namespace "victim" a good one. Both are batched together.
    let fake = Arc::new(Fake::default());
    *fake.poison_metric.lock().unwrap() = Some("Broken".into());
    let definitions = DefinitionSet::default().with_namespaced([
        namespaced("broken", "Broken"),
        namespaced("victim", "ApproximateNumberOfMessagesVisible"),
    ]);
    let (cache, metrics, stop) = engine_over(definitions, &fake, EngineConfig::default(), 10.0);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let cache = cache.clone_handle();
        tasks.spawn(async move {
            (
                "broken",
                cache
                    .get_values(in_namespace("broken", &format!("q{i}")))
                    .await,
            )
        });
    }
    for i in 0..10 {
        let cache = cache.clone_handle();
        tasks.spawn(async move {
            (
                "victim",
                cache
                    .get_values(in_namespace("victim", &format!("q{i}")))
                    .await,
            )
        });
    }
    let mut victims = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            ("victim", result) => {
                result.unwrap();
                victims += 1;
            }
            (_, result) => {
                let err = result.unwrap_err();
                assert!(
                    matches!(
                        &err,
                        ProviderError::Backend {
                            failure: BackendFailure::InvalidQuery,
                            ..
                        }
                    ),
                    "{err:?}"
                );
            }
        }
    }
    assert_eq!(victims, 10);
    // Finding that the definition itself is the offender took a handful of calls, not one per
    // series (2,000) nor two per series as a plain bisection would.
    let search = calls_with_metric(&fake.calls(), "Broken");
    assert!(
        search <= 25,
        "{search} calls to learn the definition is rejected"
    );
    let broken = cache
        .get_values(in_namespace("broken", "q1"))
        .await
        .unwrap_err();
    assert!(
        broken.to_string().contains("whatever the selector"),
        "{broken}"
    );
    assert!(
        metrics
            .encode()
            .contains(r#"isolated_definitions{source="cloudwatch",scope="definition"} 1"#)
    );
    // Then one probe per refresh interval (60 s), alone; the victim keeps its cadence: one
    // shared call a minute with its ten series, never with a broken series.
    let before = fake.calls().len();
    let search_calls = calls_with_metric(&fake.calls(), "Broken");
    tokio::time::sleep_until(start + Duration::from_secs(300)).await;
    let calls = fake.calls();
    let later = &calls[before..];
    let probes: Vec<&(Instant, MetricDataRequest)> = later
        .iter()
        .filter(|(_, r)| calls_with_metric(&[(start, r.clone())], "Broken") > 0)
        .collect();
    assert_eq!(
        calls_with_metric(&calls, "Broken") - search_calls,
        probes.len()
    );
    assert!(
        (3..=5).contains(&probes.len()),
        "{} probes in about 4.5 minutes",
        probes.len()
    );
    assert!(probes.iter().all(|(_, r)| r.metric_data_queries.len() == 1));
    let victim_calls: Vec<&(Instant, MetricDataRequest)> = later
        .iter()
        .filter(|(_, r)| calls_with_metric(&[(start, r.clone())], "Broken") == 0)
        .collect();
    assert_eq!(
        victim_calls.len(),
        5,
        "one victim refresh a minute (30 s in, then every 60 s)"
    );
    for (_, request) in &victim_calls {
        assert_eq!(queues_of(request).len(), 10);
    }
    for i in 0..10 {
        assert_eq!(
            cache
                .get_values(in_namespace("victim", &format!("q{i}")))
                .await
                .unwrap()[0]
                .value,
            f64::from(i)
        );
    }
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn one_bad_selector_among_many_costs_logarithmic_calls_and_is_batched_again_once_fixed() {
    let fake = Arc::new(Fake::default());
    *fake.poison.lock().unwrap() = Some("q777".into());
    let (cache, _metrics, stop) =
        engine_over(parse(SQS).unwrap(), &fake, EngineConfig::default(), 10.0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let cache = cache.clone_handle();
        tasks.spawn(async move { (i, value(&cache, &format!("q{i}")).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        if i == 777 {
            assert!(result.unwrap_err().to_string().contains("this selector"));
        } else {
            assert_eq!(result.unwrap(), f64::from(i));
        }
    }
    // Two calls to start with (1,000 queries); finding the offender in the rejected one costs
    // about 3 log2(500) calls, not 500.
    let search = fake.calls().len();
    assert!(
        search <= 2 + 3 * 9 + 2,
        "{search} calls to find one offender"
    );
    // The fault passes (the value was fixed): after a few good calls alone, the series is
    // batched again, and a refresh is back to ceil(1000 / 500) = 2 calls.
    fake.poison.lock().unwrap().take();
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    let count = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = fake.calls();
    assert_eq!(
        calls.len() - count,
        2,
        "calls in one refresh after the fault passed"
    );
    assert!(
        calls[count..]
            .iter()
            .all(|(_, r)| r.metric_data_queries.len() == 500)
    );
    assert_eq!(value(&cache, "q777").await.unwrap(), 777.0);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_request_wide_rejection_isolates_nobody_and_batching_is_unchanged_after_it() {
    let fake = Arc::new(Fake::default());
    let (cache, _metrics, stop) =
        engine_over(parse(SQS).unwrap(), &fake, EngineConfig::default(), 10.0);
    for i in 0..50 {
        value(&cache, &format!("q{i}")).await.unwrap();
    }
    // 20 s of RequestExpired (clock skew) or a proxy's HTML 400: the request as a whole is
    // refused, and no series is to blame.
    let refused = SourceError::new(
        BackendFailure::RequestRefused,
        Blame::Request,
        "RequestExpired (HTTP 400): Request has expired",
    );
    tokio::time::sleep(Duration::from_secs(25)).await;
    fake.fail_with(Some(refused));
    let window = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    fake.fail_with(None);
    let during = &fake.calls()[window..];
    assert!(!during.is_empty(), "no call in the window");
    assert!(
        during
            .iter()
            .all(|(_, r)| r.metric_data_queries.len() == 50),
        "a request-wide failure was bisected: {:?}",
        during
            .iter()
            .map(|(_, r)| r.metric_data_queries.len())
            .collect::<Vec<_>>()
    );
    // Afterwards: one call of 50 per refresh, as before the fault.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let count = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(180)).await;
    let calls = &fake.calls()[count..];
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|(_, r)| r.metric_data_queries.len() == 50));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn another_tenant_keeps_its_cadence_while_two_thousand_of_a_tenants_series_are_rejected() {
    // Every selector of the broken tenant is bad for its own reason (a different bad value
    // each), so none of it can be settled by blaming the definition: the search must still
    // not take the budget or the cadence of the other tenant.
    let fake = Arc::new(Fake::default());
    *fake.poison_metric.lock().unwrap() = Some("Broken".into());
    let definitions = DefinitionSet::default().with_namespaced([
        namespaced("broken", "Broken"),
        namespaced("victim", "ApproximateNumberOfMessagesVisible"),
    ]);
    let (cache, _metrics, stop) = engine_over(definitions, &fake, EngineConfig::default(), 10.0);
    value_in(&cache, "victim", 5).await.unwrap();
    let start = Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let cache = cache.clone_handle();
        flood.spawn(async move {
            let _ = cache
                .get_values(in_namespace("broken", &format!("q{i}")))
                .await;
        });
    }
    // The victim reads every 15 s, as an HPA does, for five minutes: every read answers.
    let mut reads = 0;
    while Instant::now() - start < Duration::from_secs(300) {
        assert_eq!(value_in(&cache, "victim", 5).await.unwrap(), 5.0);
        reads += 1;
        tokio::time::sleep(Duration::from_secs(15)).await;
    }
    assert_eq!(reads, 20);
    // And its series was refreshed on every grid point (a minute boundary, 30 s in).
    let calls = fake.calls();
    for minute in 0..4u64 {
        let grid = start + Duration::from_secs(30 + 60 * minute);
        assert!(
            calls.iter().any(|(at, r)| *at >= grid
                && *at <= grid + Duration::from_secs(2)
                && queues_of(r).contains(&"q5".to_string())
                && calls_with_metric(&[(*at, r.clone())], "Broken") == 0),
            "the victim's refresh at minute {minute} was late or failed"
        );
    }
    while flood.join_next().await.is_some() {}
    stop.cancel();
}

async fn value_in(cache: &Engine, namespace: &str, queue: u32) -> Result<f64, ProviderError> {
    cache
        .get_values(in_namespace(namespace, &format!("q{queue}")))
        .await
        .map(|values| values[0].value)
}

/// How the flaky source treats a queue.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Panics,
    Hangs,
    Unplanned,
    PanicsPreparing,
    PanicsPlanning,
}

/// A source that misbehaves for chosen queues, and reads `q<n>` as n otherwise.
#[derive(Default)]
struct Flaky {
    modes: Mutex<BTreeMap<String, Mode>>,
    calls: Mutex<usize>,
}

impl Flaky {
    fn mode(&self, queue: &str) -> Option<Mode> {
        self.modes.lock().unwrap().get(queue).copied()
    }
}

impl Source for Arc<Flaky> {
    type Request = String;
    type Call = Vec<String>;

    fn profile(&self) -> crate::source::Profile {
        crate::source::cloudwatch::PROFILE
    }

    fn prepare(
        &self,
        _definition: &Definition,
        labels: &BTreeMap<String, String>,
        _now: SystemTime,
    ) -> Result<String, ProviderError> {
        let queue = labels["QueueName"].clone();
        assert!(
            self.mode(&queue) != Some(Mode::PanicsPreparing),
            "prepare panics"
        );
        Ok(queue)
    }

    fn size(&self, _definition: &Definition) -> usize {
        1
    }

    fn plan(&self, items: &[&String]) -> Vec<crate::source::Planned<Vec<String>>> {
        assert!(
            !items
                .iter()
                .any(|q| self.mode(q) == Some(Mode::PanicsPlanning)),
            "plan panics"
        );
        let members: Vec<usize> = (0..items.len())
            .filter(|&i| self.mode(items[i]) != Some(Mode::Unplanned))
            .collect();
        if members.is_empty() {
            return vec![];
        }
        vec![crate::source::Planned {
            call: members.iter().map(|&i| items[i].clone()).collect(),
            members,
        }]
    }

    async fn fetch(
        &self,
        call: &Vec<String>,
        members: &[crate::source::Member<'_, String>],
        now: SystemTime,
    ) -> crate::source::Fetched {
        *self.calls.lock().unwrap() += 1;
        if call.iter().any(|q| self.mode(q) == Some(Mode::Panics)) {
            panic!("fetch panics");
        }
        if call.iter().any(|q| self.mode(q) == Some(Mode::Hangs)) {
            std::future::pending::<()>().await;
        }
        crate::source::Fetched {
            usage: crate::source::Usage::default(),
            outcome: Ok(members
                .iter()
                .map(|m| {
                    Ok(Reading {
                        timestamp: now,
                        window: None,
                        value: m.request[1..].parse().unwrap(),
                    })
                })
                .collect()),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_that_panics_hangs_or_leaves_series_unplanned_loses_no_series() {
    let flaky = Arc::new(Flaky::default());
    let modes = [
        ("q2", Mode::Panics),
        ("q3", Mode::Hangs),
        ("q4", Mode::Unplanned),
        ("q5", Mode::PanicsPreparing),
        ("q6", Mode::PanicsPlanning),
    ];
    flaky
        .modes
        .lock()
        .unwrap()
        .extend(modes.iter().map(|(q, m)| (q.to_string(), *m)));
    let metrics = Arc::new(AdapterMetrics::default());
    let config = EngineConfig {
        call_timeout: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let cache = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap())),
        Sources::new().with(flaky.clone(), Pacing::per_second(10.0)),
        config,
        metrics.clone(),
        grid_anchor(),
    );
    cache.register_gauges();
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=6 {
        let cache = cache.clone_handle();
        tasks.spawn(async move { (i, value(&cache, &format!("q{i}")).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        match i {
            1 => assert_eq!(result.unwrap(), 1.0),
            3 => assert!(
                matches!(
                    &result,
                    Err(ProviderError::Backend {
                        failure: BackendFailure::Unreachable,
                        ..
                    })
                ),
                "q3: {result:?}"
            ),
            _ => assert!(
                matches!(
                    &result,
                    Err(ProviderError::Backend {
                        failure: BackendFailure::Internal,
                        ..
                    })
                ),
                "q{i}: {result:?}"
            ),
        }
    }
    // The source heals: every series is still tracked and scheduled, and gets its value.
    flaky.modes.lock().unwrap().clear();
    let healed = Instant::now();
    for i in 1..=6 {
        loop {
            if value(&cache, &format!("q{i}")).await == Ok(f64::from(i)) {
                break;
            }
            assert!(
                Instant::now() - healed < Duration::from_secs(120),
                "q{i} never came back"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_eq!(cache.active_series(), 6);
    let text = metrics.encode();
    assert!(
        text.contains(r#"queued_series{source="cloudwatch"} 6"#),
        "every series waits in the queue again:\n{text}"
    );
    stop.cancel();
}

/// `refresh_lag_seconds` of CloudWatch, from a scrape.
fn refresh_lag(metrics: &AdapterMetrics) -> f64 {
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with(r#"cloudwatch_adapter_refresh_lag_seconds{source="cloudwatch"}"#))
        .unwrap_or_else(|| panic!("no refresh lag in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn refresh_lag_tells_a_stalled_lane_from_a_healthy_one() {
    let flaky = Arc::new(Flaky::default());
    let metrics = Arc::new(AdapterMetrics::default());
    let config = EngineConfig {
        call_timeout: Duration::from_secs(3600),
        ..EngineConfig::default()
    };
    let cache = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap())),
        Sources::new().with(flaky.clone(), Pacing::per_second(10.0)),
        config,
        metrics.clone(),
        grid_anchor(),
    );
    cache.register_gauges();
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    for i in 1..=8 {
        value(&cache, &format!("q{i}")).await.unwrap();
    }
    // Healthy: refreshes start on time, so the oldest due series is never late.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(refresh_lag(&metrics) < 1.0, "{}", refresh_lag(&metrics));
    }
    // Every call now hangs: the lane stalls with four calls in flight, and the lag grows with
    // the wait, though no refresh completes to report it.
    flaky
        .modes
        .lock()
        .unwrap()
        .extend((1..=8).map(|i| (format!("q{i}"), Mode::Hangs)));
    tokio::time::sleep(Duration::from_secs(300)).await;
    let lag = refresh_lag(&metrics);
    assert!(lag > 200.0, "a stalled lane reports a lag of {lag} s");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn metrics_of_names_that_went_away_leave_the_scrape() {
    let fake = Arc::new(Fake::default());
    let metrics = Arc::new(AdapterMetrics::default());
    let definitions = Arc::new(ArcSwap::from_pointee(DefinitionSet::default()));
    let cache = Engine::with_wall_clock(
        definitions.clone(),
        sources(&fake, 100.0),
        EngineConfig::default(),
        metrics.clone(),
        grid_anchor(),
    );
    cache.register_gauges();
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    let baseline = metrics.encode().len();
    // 500 ExternalMetric names come, are read (and counted as the API counts them), and go.
    let spec = parse(SQS).unwrap().get("depth").unwrap().spec.clone();
    let objects: Vec<Arc<Definition>> = (0..500)
        .map(|i| {
            let mut spec = spec.clone();
            spec.name = format!("name-{i}");
            let mut definition = Definition::new(spec).unwrap();
            definition.namespace = Some("tenant".into());
            Arc::new(definition)
        })
        .collect();
    definitions.store(Arc::new(DefinitionSet::default().with_namespaced(objects)));
    for i in 0..500 {
        let mut request = in_namespace("tenant", "q1");
        request.metric = format!("name-{i}");
        cache.get_values(request).await.unwrap();
        metrics
            .api()
            .observe_request(&format!("name-{i}"), 200, Duration::from_millis(1));
    }
    let full = metrics.encode();
    assert!(full.contains("name-499"));
    assert!(full.len() > baseline + 500 * 100);
    definitions.store(Arc::new(DefinitionSet::default()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = metrics.encode();
    assert!(!after.contains("name-"), "names stayed in /metrics");
    assert_eq!(cache.active_series(), 0);
    // What remains is the fixed families (now with values such as the cache lookups).
    assert!(
        after.len() < baseline + 2000,
        "{} bytes, from {baseline} before",
        after.len()
    );
    stop.cancel();
}

/// A role a test sets by hand, as the election and the peer link would.
#[derive(Debug)]
struct SetRole(Mutex<Role>);

impl SetRole {
    fn set(&self, role: Role) {
        *self.0.lock().unwrap() = role;
    }
}

impl Roles for SetRole {
    fn role(&self) -> Role {
        *self.0.lock().unwrap()
    }
}

/// One number from the scrape text (0 when absent).
fn scraped(metrics: &AdapterMetrics, line_start: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(line_start))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_follower_neither_spins_on_due_series_nor_makes_first_reads_wait_out_a_failover() {
    let fake = Arc::new(Fake::default());
    let metrics = Arc::new(AdapterMetrics::default());
    let cache = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap())),
        sources(&fake, 10.0),
        EngineConfig::default(),
        metrics.clone(),
        grid_anchor(),
    );
    let roles = Arc::new(SetRole(Mutex::new(Role::Lead)));
    cache.set_roles(roles.clone());
    let stop = CancellationToken::new();
    tokio::spawn(cache.clone_handle().run(stop.clone()));
    let cycles = || {
        scraped(
            &metrics,
            r#"cloudwatch_adapter_lane_cycles_total{source="cloudwatch"} "#,
        )
    };
    let fallbacks = || {
        scraped(
            &metrics,
            r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"} "#,
        )
    };
    assert_eq!(value(&cache, "q1").await.unwrap(), 1.0);
    assert_eq!(fake.calls().len(), 1);

    // Following a leader that has gone silent: q1 falls due (on the grid, 30 s in) and stays
    // due, as no leader's value moves it. The lane must not look at it in a tight loop.
    // Time moves by hand here: a spinning lane would keep the paused clock from moving by
    // itself. Then the lane gets 1,000 chances to run with no time passing.
    roles.set(Role::Follow);
    tokio::time::advance(Duration::from_secs(40)).await;
    let before = cycles();
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    let looked = cycles() - before;
    assert!(
        looked <= 2.0,
        "{looked} looks at the queue with no time passing and a series past due: the lane spins"
    );
    assert_eq!(fake.calls().len(), 1, "a follower called CloudWatch");
    // A series never seen here waits for the leader while following...
    let pending = value(&cache, "q2").await;
    assert!(
        matches!(pending, Err(ProviderError::FirstFetchPending(_))),
        "{pending:?}"
    );
    assert_eq!(fake.calls().len(), 1);

    // ...and once the leader's stream is silent (Waiting), a series asked for here with no
    // value yet is read here, alone, within the fallback budget; what has a value still waits.
    roles.set(Role::Waiting);
    assert_eq!(value(&cache, "q3").await.unwrap(), 3.0);
    let calls = fake.calls();
    let fetched: Vec<Vec<String>> = calls[1..]
        .iter()
        .map(|(_, request)| {
            request
                .metric_data_queries
                .iter()
                .map(|q| match &q.kind {
                    QueryKind::MetricStat(stat) => stat.dimensions[0].value.clone(),
                    QueryKind::Expression(_) => String::new(),
                })
                .collect()
        })
        .collect();
    // q2 (asked for here, never answered) and q3 are first values; q1 is not.
    assert!(
        fetched.iter().flatten().all(|queue| queue != "q1"),
        "a series that has a value was refreshed while waiting for the leader: {fetched:?}"
    );
    assert!(fetched.iter().flatten().any(|queue| queue == "q3"));
    assert_eq!(fallbacks(), (calls.len() - 1) as f64);
    let waiting_calls = calls.len();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        fake.calls().len(),
        waiting_calls,
        "series with values were refreshed while waiting for the leader"
    );

    // A leader again: what fell due while waiting kept its due time, so it is refreshed at
    // once (a warm failover), then everything together on the grid.
    roles.set(Role::Lead);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_once: Vec<String> = fake.calls()[waiting_calls..]
        .iter()
        .flat_map(|(_, request)| request.metric_data_queries.clone())
        .filter_map(|q| match q.kind {
            QueryKind::MetricStat(stat) => Some(stat.dimensions[0].value.clone()),
            QueryKind::Expression(_) => None,
        })
        .collect();
    assert!(
        at_once.iter().any(|queue| queue == "q1"),
        "the overdue series waited for the grid after the failover: {at_once:?}"
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    let after: Vec<usize> = fake.calls()[waiting_calls..]
        .iter()
        .map(|(_, request)| request.metric_data_queries.len())
        .collect();
    assert!(after.contains(&3), "{after:?}");
    stop.cancel();
}

/// An engine on the fake with `roles`, started; its refreshes go to `fake`.
fn replica(fake: &Arc<Fake>, roles: Arc<SetRole>, stop: &CancellationToken) -> Engine {
    let engine = Engine::with_wall_clock(
        Arc::new(ArcSwap::from_pointee(parse(SQS).unwrap())),
        sources(fake, 10.0),
        EngineConfig::default(),
        Arc::new(AdapterMetrics::default()),
        grid_anchor(),
    );
    engine.set_roles(roles);
    tokio::spawn(engine.clone_handle().run(stop.clone()));
    engine
}

/// A leading replica (on a fake of its own) that has read q1.
async fn leader_holding_q1(stop: &CancellationToken) -> Engine {
    let leader = replica(
        &Arc::new(Fake::default()),
        Arc::new(SetRole(Mutex::new(Role::Lead))),
        stop,
    );
    assert_eq!(value(&leader, "q1").await.unwrap(), 1.0);
    leader
}

/// `leader`'s table as `follower` takes it from the stream: under its own definitions.
fn as_read_by(leader: &Engine, follower: &Engine) -> Vec<SeriesSnapshot> {
    leader
        .snapshot()
        .iter()
        .map(|snapshot| SeriesSnapshot {
            definition: follower.definition_of(&snapshot.key).unwrap(),
            ..(**snapshot).clone()
        })
        .collect()
}

/// The queues named in `fake`'s calls from the `from`th on.
fn queues_called(fake: &Fake, from: usize) -> Vec<String> {
    fake.calls()[from..]
        .iter()
        .flat_map(|(_, request)| request.metric_data_queries.clone())
        .filter_map(|q| match q.kind {
            QueryKind::MetricStat(stat) => Some(stat.dimensions[0].value.clone()),
            QueryKind::Expression(_) => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_falls_back_then_leads_refreshes_at_once_what_falling_back_put_off() {
    let stop = CancellationToken::new();
    let leader = leader_holding_q1(&stop).await;
    // A follower holds q1 as the leader streamed it; nobody asks for it here.
    let fake = Arc::new(Fake::default());
    let roles = Arc::new(SetRole(Mutex::new(Role::Follow)));
    let follower = replica(&fake, roles.clone(), &stop);
    for snapshot in as_read_by(&leader, &follower) {
        assert!(follower.apply(&snapshot));
    }
    // The leader is gone: falling back past q1's grid point (30 s in), the follower reads only
    // what is asked for here, so q1 waits ...
    roles.set(Role::Fallback);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert!(fake.calls().is_empty(), "{:?}", queues_called(&fake, 0));
    // ... and once it leads, q1 is refreshed at once, as the old leader would have done 10 s
    // ago: not at the next grid point, 50 s on (its value would then be 90 s old).
    roles.set(Role::Lead);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        queues_called(&fake, 0),
        vec!["q1".to_string()],
        "the new leader left a series past its grid point for the next one"
    );
    // Then on the grid as usual: the next refresh at 90 s, not before.
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(fake.calls().len(), 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(fake.calls().len(), 2);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_value_fetched_here_is_not_replaced_by_an_older_one_from_a_new_leaders_snapshot() {
    let stop = CancellationToken::new();
    // The new leader's value of q1 was fetched at the start ...
    let leader = leader_holding_q1(&stop).await;
    let fake = Arc::new(Fake::default());
    let follower = replica(&fake, Arc::new(SetRole(Mutex::new(Role::Fallback))), &stop);
    let old = as_read_by(&leader, &follower);
    let timestamp = |engine: &Engine| {
        let engine = engine.clone_handle();
        async move { engine.get_values(request("q1")).await.unwrap()[0].timestamp }
    };
    let leaders = timestamp(&leader).await;
    // ... while this replica, with no leader streaming to it, read q1 itself a minute later.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(value(&follower, "q1").await.unwrap(), 1.0);
    let own = timestamp(&follower).await;
    assert!(own > leaders);
    // The new leader's snapshot arrives: its older value must not replace the newer one.
    for snapshot in old {
        assert!(follower.apply(&snapshot));
    }
    assert_eq!(
        timestamp(&follower).await,
        own,
        "an older value from the leader's snapshot replaced a newer one fetched here"
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_change_stream_exists_only_once_a_peer_subscribes_and_then_carries_every_refresh() {
    let (cache, _fake, stop) = setup(EngineConfig::default());
    assert_eq!(value(&cache, "q7").await.unwrap(), 7.0);
    // A replica without followers holds no buffer for them.
    assert!(cache.core.changes.get().is_none());
    let mut changes = cache.subscribe();
    assert_eq!(value(&cache, "q8").await.unwrap(), 8.0);
    match changes.recv().await.unwrap() {
        Change::Updated(snapshot) => {
            assert_eq!(
                snapshot.key.labels.to_map()["QueueName"],
                "q8",
                "the first change after subscribing is the new series' refresh"
            );
        }
        Change::Removed(key) => panic!("unexpected removal of {key:?}"),
    }
    stop.cancel();
}
