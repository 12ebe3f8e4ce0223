#![allow(clippy::unwrap_used)]

use super::*;

fn key() -> ObjectKey {
    ObjectKey {
        namespace: "team-a".into(),
        name: "orders".into(),
    }
}

fn valid() -> Verdict {
    let spec = serde_json::json!({"queries": [{"id": "a", "metricStat": {
        "metric": {"namespace": "AWS/SQS", "metricName": "M"}, "period": 60, "stat": "Sum"}}]});
    Verdict::Valid {
        definition: crd::to_definition("team-a", "orders", Some(&spec), &[])
            .definition
            .unwrap(),
        note: None,
    }
}

fn tracked(verdict: Verdict) -> Tracked {
    Tracked::new(Some("uid".into()), Some(3), verdict, None)
}

fn seen(at: Instant, failure: Option<(&'static str, &str)>) -> SeriesSeen {
    SeriesSeen {
        at,
        failure: failure.map(|(reason, message)| (reason, message.to_string())),
    }
}

fn ready_condition(status: &ExternalMetricStatus) -> &Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .unwrap()
}

#[test]
fn the_state_follows_the_fresh_series() {
    let now = Instant::now();
    let mut object = tracked(valid());
    let status = object.desired(&key(), now);
    assert_eq!(status.state.as_deref(), Some("Pending"));
    assert_eq!(status.observed_generation, Some(3));
    assert_eq!(ready_condition(&status).reason, "Pending");

    object.series.insert("QueueName=a".into(), seen(now, None));
    let status = object.desired(&key(), now);
    assert_eq!(status.state.as_deref(), Some("Ready"));
    assert_eq!(ready_condition(&status).status, "True");
    assert_eq!(status.active_series, Some(1));

    object.series.insert(
        "QueueName=b".into(),
        seen(now, Some(("Throttled", "throttled by CloudWatch"))),
    );
    let status = object.desired(&key(), now);
    assert_eq!(status.state.as_deref(), Some("Failing"));
    let ready = ready_condition(&status);
    assert_eq!(ready.reason, "Throttled");
    assert_eq!(
        ready.message,
        "1 of 2 series failing; latest (QueueName=b): throttled by CloudWatch"
    );

    object.series.insert(
        "QueueName=b".into(),
        seen(now, Some(("NoData", "no datapoints"))),
    );
    assert_eq!(object.desired(&key(), now).state.as_deref(), Some("NoData"));

    // Series nobody asked for lately no longer count.
    let later = now + Duration::from_secs(301);
    assert_eq!(
        object.desired(&key(), later).state.as_deref(),
        Some("Pending")
    );
}

#[test]
fn rejected_objects_say_why() {
    let object = tracked(Verdict::Invalid {
        problems: vec!["a".into(), "b".into()],
    });
    let status = object.desired(&key(), Instant::now());
    assert_eq!(status.state.as_deref(), Some("Invalid"));
    assert_eq!(status.message.as_deref(), Some("invalid definition: a; b"));
    let conflict = tracked(Verdict::Conflict).desired(&key(), Instant::now());
    assert_eq!(conflict.state.as_deref(), Some("Conflict"));
    assert!(
        conflict
            .message
            .unwrap()
            .contains("rename this ExternalMetric")
    );
}

#[test]
fn events_are_sent_on_transitions_only() {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut object = tracked(Verdict::Invalid {
        problems: vec!["bad".into()],
    });
    let invalid = object.desired(&key(), now);
    let reasons = |before: Option<&ExternalMetricStatus>, after: &ExternalMetricStatus| {
        transitions(before, after)
            .into_iter()
            .map(|(_, reason, _, _)| reason)
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(None, &invalid), ["InvalidDefinition"]);
    assert!(reasons(Some(&invalid), &invalid).is_empty());

    object.verdict = valid();
    let pending = object.desired(&key(), now);
    assert_eq!(reasons(Some(&invalid), &pending), ["DefinitionAccepted"]);
    assert!(reasons(None, &pending).is_empty());

    object
        .series
        .insert(String::new(), seen(now, Some(("AccessDenied", "denied"))));
    let failing = object.desired(&key(), now);
    assert_eq!(reasons(Some(&pending), &failing), ["FetchFailed"]);

    object.series.insert(String::new(), seen(now, None));
    let mut ready = object.desired(&key(), now);
    assert_eq!(reasons(Some(&failing), &ready), ["Recovered"]);
    assert!(
        reasons(Some(&pending), &ready).is_empty(),
        "Pending to Ready is no news"
    );

    // Transition times move only when a condition's status changes.
    merge_transition_times(&mut ready, Some(&failing), wall);
    let valid_before = failing
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_VALID)
        .unwrap();
    let valid_after = ready
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_VALID)
        .unwrap();
    assert_eq!(
        valid_before.last_transition_time,
        valid_after.last_transition_time
    );
    assert_eq!(
        ready_condition(&ready).last_transition_time,
        Time(to_timestamp(wall))
    );
}

#[test]
fn a_restart_keeps_what_the_object_already_says() {
    let existing = ExternalMetricStatus {
        observed_generation: Some(3),
        value: Some("12".into()),
        value_timestamp: Some("2026-11-21T12:00:00Z".into()),
        last_error: Some("throttled".into()),
        last_error_time: Some("2026-11-21T11:00:00Z".into()),
        ..ExternalMetricStatus::default()
    };
    let object = Tracked::new(Some("uid".into()), Some(3), valid(), Some(existing.clone()));
    let status = object.desired(&key(), Instant::now());
    assert_eq!(status.value.as_deref(), Some("12"));
    assert_eq!(status.last_error.as_deref(), Some("throttled"));
    assert_eq!(object.written.as_ref(), Some(&existing));

    // A status about an older generation describes another spec: its value is not kept.
    let object = Tracked::new(Some("uid".into()), Some(4), valid(), Some(existing));
    assert_eq!(object.desired(&key(), Instant::now()).value, None);
}

#[test]
fn the_patch_removes_what_is_no_longer_set() {
    let status = ExternalMetricStatus {
        state: Some("Pending".into()),
        ..ExternalMetricStatus::default()
    };
    let patch = status_patch(&status, Some("uid-1"));
    assert_eq!(patch["status"]["state"], "Pending");
    assert!(patch["status"]["value"].is_null());
    assert!(
        patch["status"]
            .as_object()
            .unwrap()
            .contains_key("lastError")
    );
    assert_eq!(patch["metadata"]["uid"], "uid-1");
}

#[test]
fn values_read_naturally() {
    assert_eq!(format_value(1250.0), "1250");
    assert_eq!(format_value(1.5), "1.5");
    assert_eq!(format_value(0.0004), "0.0004");
    assert_eq!(format_value(-3.0), "-3");
    assert_eq!(truncate(&"é".repeat(1000)).len(), 1003);
}

fn update(name: &str, verdict: Option<Verdict>) -> ObjectUpdate {
    let key = ObjectKey {
        namespace: "team-a".into(),
        name: name.into(),
    };
    match verdict {
        Some(verdict) => ObjectUpdate::Object {
            key,
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            verdict,
            existing_status: None,
        },
        None => ObjectUpdate::Deleted { key },
    }
}

fn describe(update: &ObjectUpdate) -> (String, &'static str) {
    let what = match update {
        ObjectUpdate::Object { verdict, .. } => verdict.describe(),
        ObjectUpdate::Deleted { .. } => "deleted",
    };
    (update.key().name.clone(), what)
}

fn invalid() -> Verdict {
    Verdict::Invalid {
        problems: vec!["bad".into()],
    }
}

#[test]
fn the_queue_keeps_the_newest_update_per_object_in_its_first_place() {
    let queue = queue::ObjectQueue::default();
    queue.push(update("a", Some(invalid())));
    queue.push(update("b", Some(valid())));
    queue.push(update("a", Some(valid())));
    queue.push(update("c", Some(valid())));
    queue.push(update("b", None));
    queue.push(update("c", Some(Verdict::Conflict)));
    assert_eq!(queue.len(), 3);
    let batch: Vec<_> = queue.take_all().iter().map(describe).collect();
    assert_eq!(
        batch,
        [
            ("a".to_string(), "valid"),
            ("b".to_string(), "deleted"),
            ("c".to_string(), "conflict")
        ],
        "the last verdict and the Deleted survive, in first-arrival order"
    );
    assert_eq!(queue.len(), 0);

    // However many updates arrive while the writer is busy, one entry per object.
    for i in 0..10_000 {
        let verdict = if i % 2 == 0 { Some(valid()) } else { None };
        queue.push(update(&format!("o{}", i % 7), verdict));
    }
    assert_eq!(queue.len(), 7);
    let batch = queue.take_all();
    assert_eq!(batch.len(), 7);
    // The last update of each object decides: 9,993..9,999 are the last ones, for o4, o5, o6,
    // o0, o1, o2, o3, and the odd ones are deletions.
    let mut deleted: Vec<String> = batch
        .iter()
        .filter(|u| matches!(u, ObjectUpdate::Deleted { .. }))
        .map(|u| u.key().name.clone())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["o1", "o3", "o4", "o6"]);
}

#[tokio::test(start_paused = true)]
async fn the_writer_waits_for_updates_and_takes_them_all_at_once() {
    let queue = Arc::new(queue::ObjectQueue::default());
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.next_batch().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "nothing queued yet");
    queue.push(update("a", Some(valid())));
    queue.push(update("b", Some(valid())));
    let batch = waiting.await.unwrap();
    assert_eq!(batch.len(), 2);

    // A wait dropped by `select!` loses nothing: the next one takes what was pushed meanwhile.
    let dropped = tokio::time::timeout(Duration::from_millis(10), queue.next_batch()).await;
    assert!(dropped.is_err());
    queue.push(update("c", None));
    assert_eq!(queue.next_batch().await.len(), 1);
}

/// A writer whose client is never called (these tests only apply updates and outcomes).
fn writer() -> StatusWriter {
    let client: Client = fake_kube::FakeKube::new().client(fake_kube::ADAPTER_TOKEN);
    let config = StatusConfig {
        min_interval: Duration::from_secs(1),
        writes_per_second: 10.0,
        reporter: "test".into(),
        leadership: crate::leader::Leadership::always(),
    };
    let (_, receiver) = channel();
    StatusWriter::new(client, config, receiver)
}

#[tokio::test]
async fn coalesced_updates_leave_the_writer_where_every_update_would() {
    use crate::controller::Reconciler;
    use kube::runtime::watcher::Event;

    // Two watchers fed the same events: the writer of one applies every update as it comes,
    // the other's only the coalesced batch at the end.
    let file = Arc::new(crate::definition::DefinitionSet::default());
    let spec = |period: i64| {
        serde_json::json!({"queries": [{"id": "a", "metricStat": {
            "metric": {"namespace": "AWS/SQS", "metricName": "M"}, "period": period, "stat": "Sum"}}]})
    };
    let object = |name: &str, uid: &str, generation: i64, period: i64| {
        serde_json::from_value::<DynamicObject>(serde_json::json!({
            "apiVersion": "metrics.aws/v1alpha1", "kind": "ExternalMetric",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid,
                         "generation": generation, "resourceVersion": "1"},
            "spec": spec(period),
        }))
        .unwrap()
    };
    let start = || {
        let definitions = Arc::new(arc_swap::ArcSwap::new(file.clone()));
        let (sender, receiver) = channel();
        (
            Reconciler::new(file.clone(), definitions.clone(), Some(sender)),
            definitions,
            receiver,
            writer(),
        )
    };
    let (mut one_by_one, defs_one, mut receiver_one, mut writer_one) = start();
    let (mut batched, defs_batched, mut receiver_batched, mut writer_batched) = start();
    let drain = |receiver: &mut StatusReceiver, writer: &mut StatusWriter| {
        while let Some(update) = receiver.try_recv_object() {
            writer.apply_object(update);
        }
    };

    // Both start from the same served objects with values.
    for name in ["a", "b"] {
        let event = || Event::Apply(object(name, &format!("uid-{name}"), 1, 60));
        one_by_one.apply(event());
        batched.apply(event());
    }
    drain(&mut receiver_one, &mut writer_one);
    drain(&mut receiver_batched, &mut writer_batched);
    let labels = BTreeMap::from([("QueueName".to_string(), "orders".to_string())]);
    for (definitions, writer) in [
        (&defs_one, &mut writer_one),
        (&defs_batched, &mut writer_batched),
    ] {
        for name in ["a", "b"] {
            let definition = definitions.load().lookup("team-a", name).cloned().unwrap();
            writer.apply_outcome(Observation {
                definition,
                selector: selector_text(&Labels::new(&labels)),
                outcome: Observed::Value {
                    value: 12.0,
                    timestamp: SystemTime::UNIX_EPOCH,
                },
                at: Instant::now(),
                wall: SystemTime::UNIX_EPOCH,
            });
        }
    }

    // Then a burst: a edited, broken, fixed; b deleted and recreated; c created and deleted;
    // d created; a status-only echo of b.
    let events = [
        Event::Apply(object("a", "uid-a", 2, 120)),
        Event::Apply(object("a", "uid-a", 3, 45)),
        Event::Apply(object("a", "uid-a", 4, 60)),
        Event::Delete(object("b", "uid-b", 1, 60)),
        Event::Apply(object("b", "uid-b2", 1, 300)),
        Event::Apply(object("c", "uid-c", 1, 60)),
        Event::Delete(object("c", "uid-c", 1, 60)),
        Event::Apply(object("d", "uid-d", 1, 60)),
        Event::Apply(object("b", "uid-b2", 1, 300)),
    ];
    for event in events {
        one_by_one.apply(event.clone());
        drain(&mut receiver_one, &mut writer_one);
        batched.apply(event);
    }
    assert_eq!(
        receiver_batched.objects.len(),
        4,
        "one entry each for a, b, c (its Deleted) and d"
    );
    for update in receiver_batched.objects.take_all() {
        writer_batched.apply_object(update);
    }

    let now = Instant::now();
    let keys = |writer: &StatusWriter| writer.tracked.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&writer_one), keys(&writer_batched));
    assert_eq!(keys(&writer_one).len(), 3, "a, b, d");
    for key in keys(&writer_one) {
        let one = &writer_one.tracked[&key];
        let other = &writer_batched.tracked[&key];
        assert_eq!(one.uid, other.uid, "{key}");
        assert_eq!(one.generation, other.generation, "{key}");
        assert_eq!(one.desired(&key, now), other.desired(&key, now), "{key}");
        assert_eq!(
            one.last_value.is_some(),
            other.last_value.is_some(),
            "{key}"
        );
        assert!(one.dirty && other.dirty, "{key}");
    }
}
