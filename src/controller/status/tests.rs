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
