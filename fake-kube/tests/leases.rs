//! The Lease API answers as kube-apiserver does, through both transports, and its faults do
//! what they say. Time-dependent checks run on paused time through the in-process transport.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fake_kube::{ADAPTER_TOKEN, Down, FakeKube, LeaseVerb, Partition};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(1_800_000_000).unwrap())),
            ..LeaseSpec::default()
        }),
    }
}

/// The `metav1.Status` of a refused call.
fn status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected a Status, got {other:?}"),
    }
}

fn leases(client: kube::Client) -> Api<Lease> {
    Api::namespaced(client, "adapter")
}

#[tokio::test]
async fn leases_are_created_updated_and_deleted_with_optimistic_concurrency() {
    let fake = FakeKube::new();
    let api = leases(fake.client("replica-a"));
    let pp = PostParams::default();

    let created = api.create(&pp, &lease("lock", "a")).await.unwrap();
    let first = created.metadata.resource_version.clone().unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("adapter"));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    // Create of an existing name: 409 AlreadyExists.
    let exists = status(api.create(&pp, &lease("lock", "b")).await.unwrap_err());
    assert_eq!(
        (exists.code, exists.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        exists.message,
        "leases.coordination.k8s.io \"lock\" already exists"
    );

    // An update with the current version goes through and moves the version on.
    let mut next = created.clone();
    next.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let updated = api.replace("lock", &pp, &next).await.unwrap();
    let second = updated.metadata.resource_version.clone().unwrap();
    assert!(second.parse::<u64>().unwrap() > first.parse::<u64>().unwrap());

    // The same write again (a stale version): 409 Conflict.
    let stale = status(api.replace("lock", &pp, &next).await.unwrap_err());
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        stale.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"lock\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // No version at all: Leases refuse unconditional updates.
    let mut unversioned = updated.clone();
    unversioned.metadata.resource_version = None;
    let invalid = status(api.replace("lock", &pp, &unversioned).await.unwrap_err());
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        invalid.message,
        "leases.coordination.k8s.io \"lock\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );

    // An update that changes nothing is not a write: same version.
    let same = api.replace("lock", &pp, &updated).await.unwrap();
    assert_eq!(
        same.metadata.resource_version.as_deref(),
        Some(second.as_str())
    );

    // Validation: a lease duration of 0 is refused.
    let mut zero = same.clone();
    zero.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
    let refused = status(api.replace("lock", &pp, &zero).await.unwrap_err());
    assert_eq!(refused.code, 422);
    assert!(
        refused
            .message
            .contains("spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"),
        "{}",
        refused.message
    );

    // A PUT to a name that does not exist creates it (create-on-update).
    let other = api
        .replace("other", &pp, &lease("other", "c"))
        .await
        .unwrap();
    assert!(other.metadata.uid.is_some());

    // Delete, then it is gone.
    api.delete("lock", &DeleteParams::default()).await.unwrap();
    let gone = status(api.get("lock").await.unwrap_err());
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        gone.message,
        "leases.coordination.k8s.io \"lock\" not found"
    );

    // Every write was recorded with its caller and answer.
    let writes = fake.leases().writes();
    let summary: Vec<(LeaseVerb, u16)> = writes.iter().map(|w| (w.verb, w.code)).collect();
    assert_eq!(
        summary,
        vec![
            (LeaseVerb::Create, 201),
            (LeaseVerb::Create, 409),
            (LeaseVerb::Update, 200),
            (LeaseVerb::Update, 409),
            (LeaseVerb::Update, 422),
            (LeaseVerb::Update, 200),
            (LeaseVerb::Update, 422),
            (LeaseVerb::Create, 201),
            (LeaseVerb::Delete, 200),
        ]
    );
    assert!(writes.iter().all(|w| w.caller == "replica-a"));
    assert_eq!(
        writes[3].sent_resource_version.as_deref(),
        Some(first.as_str())
    );
    assert_eq!(writes[2].holder.as_deref(), Some("a2"));
}

#[tokio::test]
async fn micro_times_are_strict_and_served_in_utc_with_six_digits() {
    let fake = FakeKube::new();
    let router = fake.router();
    let send = |body: serde_json::Value| {
        let router = router.clone();
        async move {
            use tower::ServiceExt;
            let request = http::Request::post("/apis/coordination.k8s.io/v1/namespaces/ns/leases")
                .header("authorization", format!("Bearer {ADAPTER_TOKEN}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let code = response.status().as_u16();
            let bytes = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                code,
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            )
        }
    };
    let (code, body) = send(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "nanos"},
        "spec": {"renewTime": "2026-11-21T12:00:00.123456789Z"}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["reason"], "BadRequest");
    let (code, body) = send(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "offset"},
        "spec": {"renewTime": "2026-11-21T14:00:00.123456+02:00", "holderIdentity": "x"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["renewTime"], "2026-11-21T12:00:00.123456Z");
    // Without a token: 401 before anything else.
    let request = http::Request::get("/apis/coordination.k8s.io/v1/namespaces/ns/leases/offset")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(fake.unauthenticated_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn faults_cut_one_caller_or_everyone_until_cleared() {
    let fake = FakeKube::new();
    let a = leases(fake.client("replica-a"));
    let b = leases(fake.client("replica-b"));
    a.create(&PostParams::default(), &lease("lock", "a"))
        .await
        .unwrap();

    // Down, 503: every caller gets a ServiceUnavailable Status.
    fake.faults().set_down(Some(Down::Unavailable));
    let unavailable = status(b.get("lock").await.unwrap_err());
    assert_eq!(
        (unavailable.code, unavailable.reason.as_str()),
        (503, "ServiceUnavailable")
    );
    // Down, refused: a transport error, no Status.
    fake.faults().set_down(Some(Down::Refused));
    assert!(matches!(
        b.get("lock").await.unwrap_err(),
        kube::Error::Service(_)
    ));
    fake.faults().set_down(None);
    b.get("lock").await.unwrap();

    // Latency: each answer takes that long.
    fake.faults().set_latency(Duration::from_secs(3));
    let started = tokio::time::Instant::now();
    b.get("lock").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(3));
    fake.faults().set_latency(Duration::ZERO);

    // A partition of one caller: its request hangs while the other is served, and goes on
    // when healed.
    fake.faults().partition("replica-a", Partition::Hang);
    let hung = tokio::spawn({
        let a = a.clone();
        async move { a.get("lock").await }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!hung.is_finished());
    b.get("lock").await.unwrap();
    fake.faults().heal("replica-a");
    hung.await.unwrap().unwrap();

    // Failing: at once.
    fake.faults().partition("replica-a", Partition::Fail);
    assert!(matches!(
        a.get("lock").await.unwrap_err(),
        kube::Error::Service(_)
    ));

    // Lost answers: the write happens, the caller never hears of it.
    fake.faults().partition("replica-a", Partition::LoseAnswers);
    let current = b.get("lock").await.unwrap();
    let mut renewed = current.clone();
    renewed.spec.as_mut().unwrap().holder_identity = Some("a-renewed".into());
    let lost = tokio::spawn({
        let a = a.clone();
        async move { a.replace("lock", &PostParams::default(), &renewed).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!lost.is_finished());
    assert_eq!(
        fake.leases().holder("adapter", "lock").as_deref(),
        Some("a-renewed")
    );
    fake.faults().clear();
    assert!(matches!(
        lost.await.unwrap().unwrap_err(),
        kube::Error::Service(_)
    ));
}

#[tokio::test]
async fn held_writes_race_and_exactly_one_wins() {
    let fake = FakeKube::new();
    let a = leases(fake.client("replica-a"));
    let b = leases(fake.client("replica-b"));
    let seen = a
        .create(&PostParams::default(), &lease("lock", "old"))
        .await
        .unwrap();
    fake.leases().hold_writes(2);
    let write = |api: Api<Lease>, holder: &str| {
        let mut mine = seen.clone();
        mine.spec.as_mut().unwrap().holder_identity = Some(holder.to_string());
        tokio::spawn(async move { api.replace("lock", &PostParams::default(), &mine).await })
    };
    let (first, second) = (write(a, "a"), write(b, "b"));
    let results = [first.await.unwrap(), second.await.unwrap()];
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    let writes = fake.leases().writes();
    let race: Vec<u16> = writes[1..].iter().map(|w| w.code).collect();
    assert!(race == [200, 409] || race == [409, 200], "{race:?}");
    assert!(
        writes[1..]
            .iter()
            .all(|w| w.sent_resource_version == seen.metadata.resource_version)
    );
}

#[tokio::test]
async fn the_https_transport_serves_the_same_api_with_a_kubeconfig() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let served = FakeKube::start().await.unwrap();
    let client = |path: &std::path::Path| {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
        async move {
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .unwrap();
            kube::Client::try_from(config).unwrap()
        }
    };
    let adapter = leases(client(&served.kubeconfig).await);
    adapter
        .create(&PostParams::default(), &lease("lock", "adapter"))
        .await
        .unwrap();
    // Another identity, from its own kubeconfig, sees the same object.
    let other = leases(client(&served.kubeconfig_for("replica-b").unwrap()).await);
    assert_eq!(
        other
            .get("lock")
            .await
            .unwrap()
            .spec
            .unwrap()
            .holder_identity
            .as_deref(),
        Some("adapter")
    );
    // Its partition does not touch the adapter.
    served.faults().partition("replica-b", Partition::Fail);
    assert!(other.get("lock").await.is_err());
    adapter.get("lock").await.unwrap();
    served.faults().clear();
    // Refused: connections are cut; back when cleared.
    served.faults().set_down(Some(Down::Refused));
    assert!(adapter.get("lock").await.is_err());
    served.faults().set_down(None);
    adapter.get("lock").await.unwrap();
    // Stopped and restarted on the same address.
    served.stop();
    assert!(adapter.get("lock").await.is_err());
    served.restart().await.unwrap();
    adapter.get("lock").await.unwrap();
    let callers: Vec<String> = served
        .leases()
        .writes()
        .iter()
        .map(|w| w.caller.clone())
        .collect();
    assert_eq!(callers, vec![ADAPTER_TOKEN.to_string()]);
}
