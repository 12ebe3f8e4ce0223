#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

use super::status::{self, ObjectUpdate, StatusReceiver};
use super::{ObjectKey, Reconciler};
use crate::definition::{self, DefinitionSet};

const FILE: &str = "metrics:\n  - name: cluster-wide\n    queries:\n      - id: a\n        metricStat:\n          metric: {namespace: N, metricName: M}\n          period: 60\n          stat: Sum\n";

fn spec(period: i64) -> Value {
    json!({"queries": [{"id": "a", "metricStat": {
        "metric": {"namespace": "AWS/SQS", "metricName": "M"}, "period": period, "stat": "Sum"}}]})
}

fn object(namespace: &str, name: &str, generation: i64, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "metrics.aws/v1alpha1",
        "kind": "ExternalMetric",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "generation": generation, "resourceVersion": "1"},
        "spec": spec,
    }))
    .unwrap()
}

fn reconciler() -> (Reconciler, Arc<ArcSwap<DefinitionSet>>, StatusReceiver) {
    let file = Arc::new(definition::parse(FILE).unwrap());
    let definitions = Arc::new(ArcSwap::new(file.clone()));
    let (sender, receiver) = status::channel();
    (
        Reconciler::new(file, definitions.clone(), Some(sender)),
        definitions,
        receiver,
    )
}

fn drain(receiver: &mut StatusReceiver) -> Vec<ObjectUpdate> {
    std::iter::from_fn(|| receiver.try_recv_object()).collect()
}

#[test]
fn a_list_is_applied_whole_when_it_completes() {
    let (mut reconciler, definitions, mut receiver) = reconciler();
    assert!(!reconciler.apply(Event::Init));
    assert!(!reconciler.apply(Event::InitApply(object("a", "one", 1, spec(60)))));
    assert!(
        definitions.load().lookup("a", "one").is_none(),
        "not before the list completes"
    );
    assert!(!reconciler.synced());
    assert!(reconciler.apply(Event::InitDone));
    assert!(reconciler.synced());
    let one = definitions.load().lookup("a", "one").cloned().unwrap();
    assert_eq!(one.namespace.as_deref(), Some("a"));
    assert!(definitions.load().lookup("b", "one").is_none());
    assert_eq!(drain(&mut receiver).len(), 1);

    // A relist that no longer has the object deletes it; an unchanged one keeps its Arc.
    reconciler.apply(Event::Apply(object("a", "two", 1, spec(60))));
    let two = definitions.load().lookup("a", "two").cloned().unwrap();
    drain(&mut receiver);
    reconciler.apply(Event::Init);
    reconciler.apply(Event::InitApply(object("a", "two", 1, spec(60))));
    reconciler.apply(Event::InitDone);
    assert!(definitions.load().lookup("a", "one").is_none());
    assert!(Arc::ptr_eq(
        &two,
        definitions.load().lookup("a", "two").unwrap()
    ));
    let updates = drain(&mut receiver);
    assert!(
        matches!(updates.as_slice(), [ObjectUpdate::Deleted { key }] if *key == ObjectKey { namespace: "a".into(), name: "one".into() }),
        "{updates:?}"
    );
}

#[test]
fn a_status_only_change_is_no_change() {
    let (mut reconciler, definitions, mut receiver) = reconciler();
    reconciler.apply(Event::Apply(object("a", "one", 1, spec(60))));
    let before = definitions.load().lookup("a", "one").cloned().unwrap();
    drain(&mut receiver);
    let mut again = object("a", "one", 1, spec(60));
    again.metadata.resource_version = Some("2".into());
    again.data["status"] = json!({"state": "Pending"});
    reconciler.apply(Event::Apply(again));
    assert!(Arc::ptr_eq(
        &before,
        definitions.load().lookup("a", "one").unwrap()
    ));
    assert!(
        drain(&mut receiver).is_empty(),
        "our own status writes must not echo"
    );

    reconciler.apply(Event::Apply(object("a", "one", 2, spec(120))));
    assert_eq!(
        definitions
            .load()
            .lookup("a", "one")
            .unwrap()
            .cloudwatch()
            .unwrap()
            .period,
        120
    );
    assert_eq!(drain(&mut receiver).len(), 1);
}

#[test]
fn verdicts_cover_invalid_conflicting_and_deleted_objects() {
    let (mut reconciler, definitions, mut receiver) = reconciler();
    reconciler.apply(Event::Apply(object("a", "bad", 1, spec(45))));
    reconciler.apply(Event::Apply(object("a", "cluster-wide", 1, spec(60))));
    reconciler.apply(Event::Apply(object("a", "good", 1, spec(60))));
    let set = definitions.load();
    assert!(set.lookup("a", "bad").is_none());
    assert!(set.lookup("a", "cluster-wide").unwrap().namespace.is_none());
    assert!(set.lookup("a", "good").is_some());
    assert_eq!(
        set.names().into_iter().collect::<Vec<_>>(),
        ["cluster-wide", "good"]
    );
    let verdicts: Vec<&str> = drain(&mut receiver)
        .iter()
        .map(|u| match u {
            ObjectUpdate::Object { verdict, .. } => verdict.describe(),
            ObjectUpdate::Deleted { .. } => "deleted",
        })
        .collect();
    assert_eq!(verdicts, ["invalid", "conflict", "valid"]);

    reconciler.apply(Event::Delete(object("a", "good", 1, spec(60))));
    assert!(definitions.load().lookup("a", "good").is_none());
    assert!(matches!(
        drain(&mut receiver).as_slice(),
        [ObjectUpdate::Deleted { .. }]
    ));
}
