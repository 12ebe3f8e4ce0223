//! ExternalMetric objects against the fake Kubernetes API server (`fake-kube`, in process): the
//! watch (list, watch events, relist after a watch error, retry of a failed list), status and
//! Events for good, bad and hostile objects, status driven by refresh outcomes, and the archived
//! adapter's sample manifest served end to end. Every wait is bounded.
//!
//! The tests that check that something does NOT happen (no second write, no write for an old
//! definition, no sync before the retried list) run on paused time: the clock only moves when
//! every task is idle, so whatever the adapter would do within the waited time has been done
//! before the assertion, on any machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use cloudwatch_emulator::Emulator;
use cloudwatch_metrics_adapter::controller::status::{self, StatusConfig, StatusWriter};
use cloudwatch_metrics_adapter::controller::{self, Reconciler};
use cloudwatch_metrics_adapter::definition::{self, Definition, DefinitionSet};
use cloudwatch_metrics_adapter::engine::OutcomeObserver;
use cloudwatch_metrics_adapter::provider::{BackendFailure, ProviderError, Reading};
use cloudwatch_metrics_adapter::series::Labels;
use common::{DEFINITIONS, TestServer, eventually, minute, put, rfc3339};
use fake_kube::{ADAPTER_TOKEN, FakeKube, external_metric};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A definitions file with one cluster-wide metric, to collide with.
const FILE: &str = r#"
metrics:
  - name: cluster-wide
    queries:
      - id: a
        metricStat:
          metric: {namespace: AWS/SQS, metricName: ApproximateNumberOfMessagesVisible}
          period: 60
          stat: Sum
"#;

fn sqs_spec(period: i64) -> Value {
    json!({
        "queries": [{
            "id": "visible",
            "metricStat": {
                "metric": {"namespace": "AWS/SQS", "metricName": "ApproximateNumberOfMessagesVisible",
                           "dimensions": [{"name": "QueueName", "value": "${QueueName}"}]},
                "period": period,
                "stat": "Average",
            },
        }],
    })
}

/// The watch and, optionally, the status writer, as `serve` wires them.
struct Controller {
    definitions: Arc<ArcSwap<DefinitionSet>>,
    sender: Option<status::StatusSender>,
    synced: Arc<AtomicBool>,
    /// How many list requests the API server had answered when the first list completed.
    lists_at_sync: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    fn start(client: kube::Client, fake: &FakeKube, with_status: Option<Duration>) -> Controller {
        let file = Arc::new(definition::parse(FILE).unwrap());
        let definitions = Arc::new(ArcSwap::new(file.clone()));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let sender = with_status.map(|interval| {
            let (sender, receiver) = status::channel();
            let config = StatusConfig {
                min_interval: interval,
                writes_per_second: 200.0,
                reporter: "cloudwatch-metrics-adapter".into(),
                leadership: cloudwatch_metrics_adapter::leader::Leadership::always(),
            };
            tasks.push(tokio::spawn(
                StatusWriter::new(client.clone(), config, receiver).run(stop.clone()),
            ));
            sender
        });
        let reconciler = Reconciler::new(file, definitions.clone(), sender.clone());
        let synced = Arc::new(AtomicBool::new(false));
        let lists_at_sync = Arc::new(AtomicUsize::new(0));
        let (flag, lists, fake) = (synced.clone(), lists_at_sync.clone(), fake.clone());
        tasks.push(tokio::spawn(controller::run(
            client,
            reconciler,
            move || {
                lists.store(fake.external_metrics().lists(), Ordering::SeqCst);
                flag.store(true, Ordering::SeqCst);
            },
            stop.clone(),
        )));
        Controller {
            definitions,
            sender,
            synced,
            lists_at_sync,
            stop,
            tasks,
        }
    }

    fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<Definition>> {
        self.definitions.load().lookup(namespace, name).cloned()
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

fn period_of(definition: &Definition) -> i64 {
    definition.cloudwatch().unwrap().period
}

#[tokio::test(start_paused = true)]
async fn the_watch_lists_follows_changes_and_relists_after_a_watch_error() {
    let fake = FakeKube::new();
    let (client, api) = (fake.client(ADAPTER_TOKEN), fake.external_metrics());
    api.fail_lists(1);
    api.apply(external_metric("team-a", "orders", sqs_spec(60)));
    api.apply(external_metric("team-c", "stable", sqs_spec(60)));
    let controller = Controller::start(client, &fake, None);

    // The first list fails: synced only by the watcher's retried list, never by the failed one
    // (read when the sync happened, so a sync after the first list would show as 1).
    eventually("the retried list", WAIT, || {
        controller.synced.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(controller.lists_at_sync.load(Ordering::SeqCst), 2);
    assert_eq!(api.lists(), 2);
    assert!(controller.lookup("team-a", "orders").is_some());
    assert!(
        controller.lookup("team-b", "orders").is_none(),
        "served only in its namespace"
    );
    assert!(
        controller.lookup("team-a", "cluster-wide").is_some(),
        "file definitions stay"
    );
    eventually("a watch", WAIT, || api.open_watches() == 1).await;

    // Added.
    api.apply(external_metric("team-b", "payments", sqs_spec(60)));
    eventually("the added object", WAIT, || {
        controller.lookup("team-b", "payments").is_some()
    })
    .await;

    // Modified: a new definition replaces the old one.
    let before = controller.lookup("team-a", "orders").unwrap();
    api.apply(external_metric("team-a", "orders", sqs_spec(300)));
    eventually("the edited object", WAIT, || {
        controller
            .lookup("team-a", "orders")
            .is_some_and(|d| period_of(&d) == 300)
    })
    .await;
    assert!(!Arc::ptr_eq(
        &before,
        &controller.lookup("team-a", "orders").unwrap()
    ));

    // Deleted.
    api.delete("team-b", "payments");
    eventually("the deleted object gone", WAIT, || {
        controller.lookup("team-b", "payments").is_none()
    })
    .await;

    // The watch expires (410 Gone) while a delete and an add were missed: the relist catches up,
    // and an unchanged object keeps its definition (so the cache keeps its cached values).
    let stable = controller.lookup("team-c", "stable").unwrap();
    api.delete_silently("team-a", "orders");
    api.expire_watches();
    api.apply(external_metric("team-d", "late", sqs_spec(60)));
    eventually("the relist", WAIT, || {
        api.lists() == 3
            && controller.lookup("team-a", "orders").is_none()
            && controller.lookup("team-d", "late").is_some()
    })
    .await;
    assert!(Arc::ptr_eq(
        &stable,
        &controller.lookup("team-c", "stable").unwrap()
    ));
    eventually("a new watch", WAIT, || api.open_watches() == 1).await;
    controller.stop().await;
}

// On paused time: the mocked API server is in-process, so tokio's clock only moves when every
// task is idle, and "nothing was written in 800 ms" means nothing was, not that a slow machine
// had not got to it yet.
#[tokio::test(start_paused = true)]
async fn bad_and_hostile_objects_get_a_clear_status_and_affect_nothing_else() {
    let fake = FakeKube::new();
    let (client, api) = (fake.client(ADAPTER_TOKEN), fake.external_metrics());
    api.apply(external_metric("team-a", "orders", sqs_spec(60)));
    // Objects stored before the CRD had a schema (the archived adapter's had none) can hold
    // anything: the watch must decode them one by one.
    api.apply(external_metric("team-a", "bad-period", sqs_spec(45)));
    api.apply(external_metric(
        "team-a",
        "malformed",
        json!({"queries": "oops"}),
    ));
    let huge: Vec<Value> = (0..3000)
        .map(|i| json!({"id": format!("q{i}"), "expression": "1", "returnData": i == 0}))
        .collect();
    api.apply(external_metric("team-a", "huge", json!({"queries": huge})));
    api.apply(external_metric("team-a", "cluster-wide", sqs_spec(60)));
    let mut renamed = sqs_spec(60);
    renamed["name"] = json!("old-name");
    api.apply(external_metric("team-a", "renamed", renamed));
    let controller = Controller::start(client, &fake, Some(Duration::from_millis(200)));
    eventually("synced", WAIT, || controller.synced.load(Ordering::SeqCst)).await;

    assert!(controller.lookup("team-a", "orders").is_some());
    assert!(controller.lookup("team-a", "renamed").is_some());
    for rejected in ["bad-period", "malformed", "huge"] {
        assert!(
            controller.lookup("team-a", rejected).is_none(),
            "{rejected}"
        );
    }
    // The file's definition wins over the namespaced one of the same name.
    assert!(
        controller
            .lookup("team-a", "cluster-wide")
            .unwrap()
            .namespace
            .is_none()
    );

    let names = [
        "orders",
        "bad-period",
        "malformed",
        "huge",
        "cluster-wide",
        "renamed",
    ];
    eventually("a status for every object", WAIT, || {
        names
            .iter()
            .all(|name| !api.status_patches("team-a", name).is_empty())
    })
    .await;
    let status = |name: &str| api.object("team-a", name).unwrap()["status"].clone();
    let condition = |name: &str, type_: &str| {
        status(name)["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap()
    };

    assert_eq!(status("orders")["state"], "Pending");
    assert_eq!(status("orders")["observedGeneration"], 1);
    assert_eq!(condition("orders", "Valid")["status"], "True");
    assert_eq!(condition("orders", "Ready")["reason"], "Pending");
    for (name, needle) in [
        ("bad-period", "45 is not a period CloudWatch accepts"),
        (
            "malformed",
            "spec.queries: invalid type: string \"oops\", expected a sequence",
        ),
        ("huge", "3000 queries, CloudWatch accepts at most 500"),
    ] {
        assert_eq!(status(name)["state"], "Invalid", "{name}");
        let valid = condition(name, "Valid");
        assert_eq!(valid["status"], "False");
        assert_eq!(valid["reason"], "InvalidDefinition");
        assert!(
            valid["message"].as_str().unwrap().contains(needle),
            "{name}: {valid}"
        );
        assert!(status(name)["message"].as_str().unwrap().len() <= 1003);
    }
    assert_eq!(status("cluster-wide")["state"], "Conflict");
    assert!(
        condition("cluster-wide", "Valid")["message"]
            .as_str()
            .unwrap()
            .contains("defined cluster-wide in the adapter's definitions file")
    );
    assert_eq!(condition("renamed", "Valid")["reason"], "SpecNameIgnored");

    eventually("the Events", WAIT, || api.events().len() >= 5).await;
    let events = api.events();
    let reasons: BTreeMap<String, (String, String)> = events
        .iter()
        .map(|(reason, type_, _, name)| (name.clone(), (reason.clone(), type_.clone())))
        .collect();
    for name in ["bad-period", "malformed", "huge"] {
        assert_eq!(
            reasons[name],
            ("InvalidDefinition".into(), "Warning".into()),
            "{events:?}"
        );
    }
    assert_eq!(
        reasons["cluster-wide"],
        ("NameConflict".into(), "Warning".into())
    );
    assert_eq!(
        reasons["renamed"],
        ("SpecNameIgnored".into(), "Warning".into())
    );
    assert!(
        !reasons.contains_key("orders"),
        "a valid new object is no news: {events:?}"
    );
    let event = &api.requests_to("POST", "/events")[0].body;
    assert_eq!(event["regarding"]["kind"], "ExternalMetric");
    assert_eq!(event["regarding"]["apiVersion"], "metrics.aws/v1alpha1");
    assert_eq!(event["reportingController"], "cloudwatch-metrics-adapter");

    // Each status write comes back as a MODIFIED watch event: that must not cause another write.
    // Paused time runs 25 status intervals, and only once every task is idle: a write the
    // echo caused would have been made by then.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in names {
        assert_eq!(
            api.status_patches("team-a", name).len(),
            1,
            "{name} was written again"
        );
    }

    // Fixing an object is picked up, served, and announced.
    api.apply(external_metric("team-a", "bad-period", sqs_spec(60)));
    eventually("the fixed object served", WAIT, || {
        controller.lookup("team-a", "bad-period").is_some()
    })
    .await;
    eventually("its status", WAIT, || {
        status("bad-period")["state"] == "Pending"
    })
    .await;
    assert_eq!(status("bad-period")["observedGeneration"], 2);
    eventually("DefinitionAccepted", WAIT, || {
        api.events().iter().any(|(reason, type_, _, name)| {
            reason == "DefinitionAccepted" && type_ == "Normal" && name == "bad-period"
        })
    })
    .await;
    // Fields the new status no longer has are removed (merge patch with nulls).
    let last = api.status_patches("team-a", "bad-period").pop().unwrap();
    assert!(last["status"]["lastError"].is_null() && last["status"].get("lastError").is_some());
    assert_eq!(last["metadata"]["uid"], "uid-team-a-bad-period");
    controller.stop().await;
}

fn outcome_value(value: f64, timestamp: SystemTime) -> Result<Reading, ProviderError> {
    Ok(Reading {
        timestamp,
        window: Some(Duration::from_secs(60)),
        value,
    })
}

#[tokio::test(start_paused = true)]
async fn refresh_outcomes_drive_ready_value_and_events_with_rate_limited_writes() {
    let fake = FakeKube::new();
    let (client, api) = (fake.client(ADAPTER_TOKEN), fake.external_metrics());
    api.apply(external_metric("team-a", "orders", sqs_spec(60)));
    let interval = Duration::from_millis(300);
    let controller = Controller::start(client, &fake, Some(interval));
    eventually("the first status", WAIT, || {
        api.status_patches("team-a", "orders").len() == 1
    })
    .await;
    let definition = controller.lookup("team-a", "orders").unwrap();
    let observer = controller.sender.clone().unwrap();
    let labels = Labels::new(&BTreeMap::from([(
        "QueueName".to_string(),
        "orders".to_string(),
    )]));
    let status = || api.object("team-a", "orders").unwrap()["status"].clone();

    // Started failing: Failing, the reason, the error and when, and a Warning Event.
    observer.observe(
        &definition,
        &labels,
        &Err(ProviderError::Backend {
            failure: BackendFailure::AccessDenied,
            message: "access denied reading metric orders from CloudWatch: check cloudwatch:GetMetricData".into(),
        }),
    );
    eventually("Failing", WAIT, || status()["state"] == "Failing").await;
    let ready = status()["conditions"][1].clone();
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "AccessDenied");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("1 of 1 series failing; latest (QueueName=orders): access denied")
    );
    assert!(
        status()["lastError"]
            .as_str()
            .unwrap()
            .starts_with("access denied")
    );
    assert!(status()["lastErrorTime"].as_str().unwrap().ends_with('Z'));
    eventually("FetchFailed", WAIT, || {
        api.events()
            .iter()
            .any(|(reason, type_, _, _)| reason == "FetchFailed" && type_ == "Warning")
    })
    .await;

    // Recovered: a burst of values coalesces into few writes, the newest wins.
    let patches_before = api.status_patches("team-a", "orders").len();
    let at = minute(1);
    for i in 0..50 {
        observer.observe(&definition, &labels, &outcome_value(f64::from(i) + 0.5, at));
    }
    eventually("Ready", WAIT, || {
        status()["state"] == "Ready" && status()["value"] == "49.5"
    })
    .await;
    assert_eq!(status()["valueTimestamp"], rfc3339(at));
    assert_eq!(status()["valueSelector"], "QueueName=orders");
    assert_eq!(status()["activeSeries"], 1);
    assert!(
        status()["lastError"].as_str().is_some(),
        "the last error stays readable"
    );
    assert!(api.status_patches("team-a", "orders").len() - patches_before <= 2);
    eventually("Recovered", WAIT, || {
        api.events()
            .iter()
            .any(|(reason, type_, _, _)| reason == "Recovered" && type_ == "Normal")
    })
    .await;

    // No data: its own state and Event.
    observer.observe(
        &definition,
        &labels,
        &Err(ProviderError::NoData(
            "no datapoints for metric orders in the last 5m".into(),
        )),
    );
    eventually("NoData", WAIT, || status()["state"] == "NoData").await;

    // Writes for one object are at least the interval apart.
    let times: Vec<_> = api
        .requests_to("PATCH", "/namespaces/team-a/externalmetrics/orders/status")
        .iter()
        .map(|r| r.at)
        .collect();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval - Duration::from_millis(50),
            "{times:?}"
        );
    }

    // After an edit, outcomes of the old definition are ignored.
    api.apply(external_metric("team-a", "orders", sqs_spec(300)));
    eventually("the edit", WAIT, || {
        controller
            .lookup("team-a", "orders")
            .is_some_and(|d| period_of(&d) == 300)
    })
    .await;
    eventually("Pending again", WAIT, || status()["state"] == "Pending").await;
    assert!(
        status().get("value").is_none(),
        "the old spec's value is gone"
    );
    // Outcomes of the old definition (a value, and a failure of another queue), then a value of
    // the new one. They reach the writer in that order, so once the new value is written, the
    // old ones would show in the same status had they been applied: a second, failing series.
    let payments = Labels::new(&BTreeMap::from([(
        "QueueName".to_string(),
        "payments".to_string(),
    )]));
    observer.observe(&definition, &labels, &outcome_value(7.0, at));
    observer.observe(
        &definition,
        &payments,
        &Err(ProviderError::Backend {
            failure: BackendFailure::AccessDenied,
            message: "access denied".into(),
        }),
    );
    let edited = controller.lookup("team-a", "orders").unwrap();
    observer.observe(&edited, &labels, &outcome_value(8.0, at));
    eventually("the new definition's value", WAIT, || {
        status()["value"] == "8"
    })
    .await;
    assert_eq!(status()["state"], "Ready");
    assert_eq!(status()["activeSeries"], 1);
    assert!(
        status().get("lastError").is_none(),
        "the old definition's failure was ignored"
    );
    assert_eq!(observer.dropped(), 0);
    controller.stop().await;
}

#[tokio::test]
async fn the_archived_sample_manifest_is_served_in_its_namespace_with_live_status() {
    let emulator = Emulator::start().await.unwrap();
    // Computed once: a minute may turn during the test.
    let at = minute(1);
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "helloworld")],
        at,
        7.0,
    );
    let fake = FakeKube::new();
    let (client, api) = (fake.client(ADAPTER_TOKEN), fake.external_metrics());
    let mut sample: Value =
        serde_saphyr::from_str(include_str!("fixtures/awslabs-sqs-externalmetric.yaml")).unwrap();
    sample["metadata"]["namespace"] = json!("default");
    api.apply(sample);
    api.fail_lists(1);
    let server = TestServer::start_with_kube(
        DEFINITIONS,
        &emulator,
        &["--status-update-interval", "100ms"],
        client,
    )
    .await;

    // Not ready until the objects are listed (the first list fails; the watcher retries).
    let mut seen_not_ready = false;
    for _ in 0..100 {
        let (code, body) = server.readyz().await;
        if code == 503 {
            assert!(
                body.contains("ExternalMetric objects not listed yet"),
                "{body}"
            );
            seen_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen_not_ready);
    server.wait_ready().await;

    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-helloworld-length";
    let (code, body) = server.get(path).await;
    assert_eq!(code, 200, "{body}");
    let item = &body["items"][0];
    assert_eq!(item["metricName"], "sqs-helloworld-length");
    assert_eq!(item["value"], "7");
    assert_eq!(item["timestamp"], rfc3339(at));

    // Only HPAs in its own namespace see it.
    let (code, body) = server
        .get("/apis/external.metrics.k8s.io/v1beta1/namespaces/other/sqs-helloworld-length")
        .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(
        body["message"],
        "the server could not find the metric sqs-helloworld-length for namespace other"
    );

    // Discovery lists it beside the file's metrics.
    let (_, body) = server.get("/apis/external.metrics.k8s.io/v1beta1").await;
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"sqs-helloworld-length") && names.contains(&"sqs-visible"),
        "{names:?}"
    );

    // The status says it works, with the value and its datapoint's time.
    let status = || api.object("default", "sqs-helloworld-length").unwrap()["status"].clone();
    eventually("Ready", WAIT, || status()["state"] == "Ready").await;
    assert_eq!(status()["value"], "7");
    assert_eq!(status()["valueTimestamp"], rfc3339(at));
    assert!(status().get("valueSelector").is_none());

    // Deleted while in use: gone within seconds, nothing else affected.
    api.delete("default", "sqs-helloworld-length");
    let mut code = 200;
    for _ in 0..200 {
        code = server.get(path).await.0;
        if code == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(code, 404);
    put(
        &emulator,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        &[("QueueName", "orders")],
        minute(1),
        3.0,
    );
    let (code, body) = server
        .get("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders")
        .await;
    assert_eq!(code, 200, "{body}");
    server.stop().await.unwrap();
}
