//! Several replicas as real processes: leader election on a Lease (the fake Kubernetes API,
//! faithful to kube-apiserver: 409 on a stale resourceVersion, outages, partitions), the peer
//! link between them, and the CloudWatch emulator. Timing is shortened (lease 2 s, renew
//! deadline 1.5 s, retry 0.5 s) and series refresh every second, so each scenario takes seconds.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloudwatch_emulator::Emulator;
use common::{TestCa, client_trusting, minute, put};
use fake_kube::{FakeKube, Partition, Served, external_metric};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_cloudwatch-metrics-adapter");
const NAMESPACE: &str = "ha";
/// The ServiceAccount the replicas run as.
const ADAPTER_USER: &str = "system:serviceaccount:ha:cloudwatch-metrics-adapter";

/// Series refreshed every second, so a test sees several refreshes in a few seconds.
const DEFINITIONS: &str = r#"
metrics:
  - name: depth
    queries:
      - id: v
        metricStat:
          metric:
            namespace: HA
            metricName: Depth
            dimensions: [{name: Queue, value: "${Queue}"}]
          period: 1
          stat: Maximum
"#;

/// The emulator, the fake API server, and what every replica shares.
struct Cluster {
    emulator: Emulator,
    kube: Served,
    ca: TestCa,
    dir: tempfile::TempDir,
    replicas: AtomicUsize,
}

/// One adapter process.
struct Replica {
    name: String,
    child: Child,
    secure: u16,
    admin: u16,
    token: String,
    token_file: PathBuf,
    client: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of sample `name` in a scrape (0 when absent).
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Wait until `condition` holds, at most `timeout`; returns how long it took.
async fn until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    async fn start(queues: usize) -> Cluster {
        common::install_crypto();
        let emulator = Emulator::start().await.unwrap();
        for i in 0..queues {
            put(
                &emulator,
                "HA",
                "Depth",
                &[("Queue", &format!("q{i}"))],
                minute(1),
                i as f64,
            );
        }
        let kube = FakeKube::start().await.unwrap();
        // Only the adapter's ServiceAccount may update its Lease.
        kube.allow(ADAPTER_USER, "leases");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.yaml"), DEFINITIONS).unwrap();
        let ca = TestCa::new("serving-ca");
        ca.write(dir.path(), "ca.pem");
        let (cert, key) = ca.leaf("adapter");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        Cluster {
            emulator,
            kube,
            ca,
            dir,
            replicas: AtomicUsize::new(0),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// Start a replica named `name` with `extra` flags, and wait until it is ready.
    async fn replica(&self, name: &str, extra: &[&str]) -> Replica {
        let mut replica = self.start_replica(name, extra).await;
        replica.wait_ready().await;
        replica
    }

    /// Start a replica named `name` with `extra` flags, and wait until its admin port answers.
    async fn start_replica(&self, name: &str, extra: &[&str]) -> Replica {
        let n = self.replicas.fetch_add(1, Ordering::Relaxed);
        let token = format!("{name}-token-{n}");
        // Its ServiceAccount token: the Lease API accepts it, and TokenReview says who it is.
        self.kube.add_token(
            &token,
            ADAPTER_USER,
            "uid-adapter",
            &["system:serviceaccounts", "system:serviceaccounts:ha"],
        );
        let kubeconfig = self.kube.kubeconfig_for(&token).unwrap();
        let token_file = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, &token).unwrap();
        let (secure, admin) = (free_port(), free_port());
        let mut command = Command::new(BINARY);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "secret-test-key")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL_CLOUDWATCH", self.emulator.endpoint_url())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AUTHORIZATION_MODE", "AlwaysAllow")
            .env("ANONYMOUS_AUTH", "true")
            .env("AUTHENTICATION_SKIP_LOOKUP", "true")
            .env("WATCH_EXTERNAL_METRICS", "false")
            .env("POD_NAME", name)
            .env("RUST_LOG", "info")
            .args(["serve", "--config", &self.path("metrics.yaml")])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &secure.to_string(),
            ])
            .args([
                "--admin-bind-address",
                "127.0.0.1",
                "--admin-port",
                &admin.to_string(),
            ])
            .args(["--tls-cert-file", &self.path("tls.crt")])
            .args(["--tls-private-key-file", &self.path("tls.key")])
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .args([
                "--leader-elect",
                "--leader-elect-resource-namespace",
                NAMESPACE,
            ])
            .args(["--leader-elect-retry-period", "500ms"])
            .args(["--peer-advertise-address", &format!("127.0.0.1:{secure}")])
            .args(["--peer-server-name", "localhost"])
            .args(["--peer-token-file", token_file.to_str().unwrap()])
            .args(["--shutdown-grace-period", "2s"])
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // A short lease, unless a test sets its own.
        if !extra.contains(&"--leader-elect-lease-duration") {
            command
                .args(["--leader-elect-lease-duration", "2s"])
                .args(["--leader-elect-renew-deadline", "1500ms"]);
        }
        if !extra.contains(&"--peer-ca-file") {
            command.args(["--peer-ca-file", &self.path("ca.pem")]);
        }
        let child = command.spawn().unwrap();
        let client = client_trusting(&self.ca.pem).build().unwrap();
        let replica = Replica {
            name: name.to_string(),
            child,
            secure,
            admin,
            token,
            token_file,
            client,
        };
        until("the admin port", Duration::from_secs(15), || async {
            replica.readyz().await.is_some()
        })
        .await;
        replica
    }

    /// The replica that leads, once exactly one of `replicas` does.
    async fn leader<'a>(&self, replicas: &[&'a Replica]) -> &'a Replica {
        let started = Instant::now();
        loop {
            let mut leaders = Vec::new();
            for replica in replicas {
                if replica.is_leader().await {
                    leaders.push(*replica);
                }
            }
            if let [leader] = leaders.as_slice() {
                return leader;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{} leaders after 15 s",
                leaders.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn calls(&self) -> u64 {
        self.emulator.stats().get_metric_data.calls
    }
}

impl Replica {
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("{} exited early: {exit}", self.name);
            }
            if let Ok(response) =
                reqwest::get(format!("http://127.0.0.1:{}/readyz", self.admin)).await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{} not ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `/readyz`: its status and body, once the admin port answers.
    async fn readyz(&self) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}/readyz", self.admin))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// The value of queue `q<n>`, or the error status.
    async fn value(&self, queue: usize) -> Result<f64, (u16, Value)> {
        ReadTarget::of(self).value(queue).await
    }

    async fn metrics(&self) -> String {
        match reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin)).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// A sample's value (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name)
    }

    async fn is_leader(&self) -> bool {
        self.metric("cloudwatch_adapter_leader_election_is_leader")
            .await
            == 1.0
    }

    /// GetMetricData calls this replica made (successful ones).
    async fn own_calls(&self) -> f64 {
        self.metric(r#"cloudwatch_adapter_cloudwatch_calls_total{outcome="ok"}"#)
            .await
    }

    /// Calls it made as the leader (not falling back).
    async fn leading_calls(&self) -> f64 {
        let metrics = self.metrics().await;
        sample(
            &metrics,
            r#"cloudwatch_adapter_cloudwatch_calls_total{outcome="ok"}"#,
        ) - sample(
            &metrics,
            r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#,
        )
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// Reads every queue in `queues` from `replica` every 100 ms until stopped, counting failures.
fn keep_reading(
    replica: Arc<tokio::sync::Mutex<Option<ReadTarget>>>,
    queues: std::ops::Range<usize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut reads = 0;
        loop {
            let Some(target) = replica.lock().await.clone() else {
                return reads;
            };
            for queue in queues.clone() {
                match target.value(queue).await {
                    Ok(value) if value == queue as f64 => {}
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("q{queue}: {other:?}")),
                }
                reads += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// What a reader needs of a replica (cloneable, so the replica itself can be killed).
#[derive(Clone)]
struct ReadTarget {
    secure: u16,
    client: reqwest::Client,
}

impl ReadTarget {
    fn of(replica: &Replica) -> Self {
        Self {
            secure: replica.secure,
            client: replica.client.clone(),
        }
    }

    async fn value(&self, queue: usize) -> Result<f64, (u16, Value)> {
        let url = format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/depth?labelSelector=Queue%3Dq{queue}",
            self.secure
        );
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| (0, json!(e.to_string())))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 {
            return Err((status, body));
        }
        Ok(body["items"][0]["value"].as_str().unwrap().parse().unwrap())
    }
}

#[tokio::test]
async fn every_replica_serves_every_series_and_only_the_leader_calls_cloudwatch() {
    let cluster = Cluster::start(30).await;
    let a = cluster.replica("replica-a", &[]).await;
    let b = cluster.replica("replica-b", &[]).await;
    let leader = cluster.leader(&[&a, &b]).await;
    let follower = if std::ptr::eq(leader, &a) { &b } else { &a };
    // A series first asked for on the follower becomes active on the leader at once, and its
    // value reaches the follower through the stream.
    for i in 0..10 {
        assert_eq!(follower.value(i).await.unwrap(), i as f64, "follower q{i}");
    }
    for i in 5..20 {
        assert_eq!(leader.value(i).await.unwrap(), i as f64, "leader q{i}");
    }
    // And the follower holds what was asked only of the leader, without asking anyone.
    until(
        "the follower holds the leader's series",
        Duration::from_secs(5),
        || async { follower.metric("cloudwatch_adapter_active_series").await == 20.0 },
    )
    .await;
    for i in 10..20 {
        assert_eq!(follower.value(i).await.unwrap(), i as f64, "follower q{i}");
    }
    // Steady state: the 20 series are refreshed every second in one call, by the leader alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cluster.calls();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = cluster.calls() - before;
    assert!(
        (3..=7).contains(&calls),
        "{calls} calls in 5 s: one replica's refreshes are about 5"
    );
    assert_eq!(
        follower.own_calls().await,
        0.0,
        "the follower called CloudWatch"
    );
    assert!(leader.own_calls().await > 0.0);
    assert_eq!(
        follower
            .metric(r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#)
            .await,
        0.0
    );
    assert_eq!(
        follower.metric("cloudwatch_adapter_peer_stream_up").await,
        1.0
    );
    assert_eq!(
        leader.metric("cloudwatch_adapter_peer_followers").await,
        1.0
    );
}

async fn handover(kill: &str) -> (Duration, Vec<String>, usize) {
    let cluster = Cluster::start(10).await;
    let a = cluster.replica("replica-a", &[]).await;
    let b = cluster.replica("replica-b", &[]).await;
    let leader = cluster.leader(&[&a, &b]).await;
    let (leader, survivor) = if std::ptr::eq(leader, &a) {
        (a, b)
    } else {
        (b, a)
    };
    for i in 0..10 {
        leader.value(i).await.unwrap();
    }
    until(
        "the survivor holds every series",
        Duration::from_secs(5),
        || async { survivor.metric("cloudwatch_adapter_active_series").await == 10.0 },
    )
    .await;
    // An HPA keeps reading the survivor (every 100 ms here, every 15 s for real).
    let target = Arc::new(tokio::sync::Mutex::new(Some(ReadTarget::of(&survivor))));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = keep_reading(target.clone(), 0..10, failures.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls_before = survivor.leading_calls().await;
    leader.signal(kill);
    // The survivor's first refresh as the new leader (a fallback refresh before it took the
    // Lease does not count).
    let took = until(
        "the new leader's first refresh",
        Duration::from_secs(30),
        || async { survivor.leading_calls().await > calls_before },
    )
    .await;
    assert!(survivor.is_leader().await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    *target.lock().await = None;
    let reads = reader.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    drop(leader);
    (took, failures, reads)
}

#[tokio::test]
async fn sigterm_hands_leadership_over_in_seconds_and_no_read_fails() {
    let (took, failures, reads) = handover("-TERM").await;
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {failures:?}",
        failures.len()
    );
    // The leader releases the Lease on SIGTERM: the survivor takes it at its next retry.
    assert!(
        took <= Duration::from_secs(5),
        "first refresh {took:?} after SIGTERM"
    );
}

#[tokio::test]
async fn sigkill_of_the_leader_is_survived_without_a_failed_read() {
    let (took, failures, reads) = handover("-KILL").await;
    assert!(
        failures.is_empty(),
        "{} of {reads} reads failed: {failures:?}",
        failures.len()
    );
    // Nothing is released: the survivor waits out the lease (2 s) from when it last saw a
    // renewal, then takes over.
    assert!(
        took <= Duration::from_secs(10),
        "first refresh {took:?} after SIGKILL"
    );
}

#[tokio::test]
async fn a_leader_cut_off_from_the_lease_api_stops_calling_within_its_renew_deadline() {
    let cluster = Cluster::start(5).await;
    let a = cluster.replica("replica-a", &[]).await;
    let b = cluster.replica("replica-b", &[]).await;
    let leader = cluster.leader(&[&a, &b]).await;
    let other = if std::ptr::eq(leader, &a) { &b } else { &a };
    for i in 0..5 {
        leader.value(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster
        .kube
        .faults()
        .partition(&leader.token, Partition::Hang);
    let cut = Instant::now();
    // Sample both replicas every 50 ms: how long both claim to lead, and when the cut-off one
    // stops.
    let mut both = Duration::ZERO;
    let mut stopped = None;
    let mut previous = Instant::now();
    while cut.elapsed() < Duration::from_secs(8) {
        let (old, new) = (leader.is_leader().await, other.is_leader().await);
        let now = Instant::now();
        if old && new {
            both += now - previous;
        }
        if !old && stopped.is_none() {
            stopped = Some(cut.elapsed());
        }
        previous = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = stopped.expect("the cut-off leader kept leading");
    assert!(
        stopped <= Duration::from_millis(1500 + 500),
        "stopped leading {stopped:?} after the cut (renew deadline 1.5 s)"
    );
    assert!(other.is_leader().await, "nobody took over");
    assert!(both < Duration::from_millis(100), "both led for {both:?}");
    // Cut off from the Lease, it cannot know who leads. It serves what it holds, and after
    // the lease and a retry (2.5 s) without hearing from a leader falls back to reading what
    // HPAs ask of it, within the fallback budget (1 call/s): degraded, never failing.
    let fallback = r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#;
    let (leading, fallbacks) = (leader.leading_calls().await, leader.metric(fallback).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        leader.leading_calls().await,
        leading,
        "calls after losing the lease that were not fallback refreshes"
    );
    let made = leader.metric(fallback).await - fallbacks;
    assert!(
        made <= 5.0,
        "{made} fallback calls in 4 s, over the 1 call/s budget"
    );
    for i in 0..5 {
        assert_eq!(leader.value(i).await.unwrap(), i as f64);
    }
    // Healed, it finds the new leader through the Lease and stops falling back.
    cluster.kube.faults().heal(&leader.token);
    until(
        "the healed replica follows the new leader",
        Duration::from_secs(10),
        || async { leader.metric("cloudwatch_adapter_peer_stream_up").await == 1.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = leader.own_calls().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leader.own_calls().await, calls, "a follower kept calling");
}

/// Whether `/readyz` names the warm-up as what keeps the replica from being ready.
fn waits_for_leader(readyz: &Option<(u16, String)>) -> bool {
    matches!(readyz, Some((503, body)) if body.contains("no leader's values yet"))
}

#[tokio::test]
async fn a_pod_replacing_a_killed_leader_turns_ready_with_the_new_leaders_values_not_its_own_calls()
{
    let lease = [
        "--leader-elect-lease-duration",
        "5s",
        "--leader-elect-renew-deadline",
        "3s",
    ];
    let cluster = Cluster::start(3).await;
    let a = cluster.replica("replica-a", &lease).await;
    let leader = cluster.leader(&[&a]).await;
    let b = cluster.replica("replica-b", &lease).await;
    for queue in 0..3 {
        assert_eq!(leader.value(queue).await, Ok(queue as f64));
    }
    until(
        "the follower holds the values",
        Duration::from_secs(10),
        || async { b.value(2).await == Ok(2.0) },
    )
    .await;
    a.signal("-KILL");
    // The pod that replaces it starts while the Lease still names the dead leader: were it
    // ready now, the aggregator would send it reads it could answer only by calling AWS beside
    // the leader-to-be (or not at all), while the survivor answers them from memory.
    let c = cluster.start_replica("replica-c", &lease).await;
    let readyz = c.readyz().await;
    assert!(
        waits_for_leader(&readyz),
        "a replica started mid-failover is ready before it holds any leader's values: {readyz:?}"
    );
    until(
        "the new pod turns ready",
        Duration::from_secs(20),
        || async { c.readyz().await.is_some_and(|(status, _)| status == 200) },
    )
    .await;
    // Ready because a new leader holds the Lease: the survivor, which then streamed it the table
    // (or the new pod itself, when its first look at the Lease came after the survivor's last).
    // Either way it serves the values, and fetched none of them outside a leader's budget.
    let leader = cluster.leader(&[&b, &c]).await;
    for queue in 0..3 {
        assert_eq!(c.value(queue).await, Ok(queue as f64));
    }
    assert_eq!(
        c.metric(r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#)
            .await,
        0.0
    );
    if leader.name == b.name {
        assert_eq!(c.own_calls().await, 0.0, "the new pod called AWS itself");
    }
    drop(a);
}

#[tokio::test]
async fn a_replica_started_while_the_killed_leader_still_holds_the_lease_is_not_ready_yet_serves_first_reads()
 {
    // A lease long enough that the whole test runs while the killed leader's record stands.
    let lease = [
        "--leader-elect-lease-duration",
        "60s",
        "--leader-elect-renew-deadline",
        "40s",
    ];
    let cluster = Cluster::start(5).await;
    let a = cluster.replica("replica-a", &lease).await;
    let leader = cluster.leader(&[&a]).await;
    assert_eq!(leader.value(0).await.unwrap(), 0.0);
    a.signal("-KILL");
    // A new pod (as a Deployment replaces the killed one): the Lease names a leader that is
    // gone, so no stream comes, and none will for a minute. It says it is not ready (for at
    // most the lease duration plus three retry periods) ...
    let b = cluster.start_replica("replica-b", &lease).await;
    let readyz = b.readyz().await;
    assert!(waits_for_leader(&readyz), "{readyz:?}");
    // ... yet a read sent to it anyway (no other replica is left) is answered: a series it has
    // never seen is read here once the stream has been silent a few seconds, within the
    // fallback budget, not a 503 after the 15 s first-value wait.
    let read = b.value(3).await;
    assert_eq!(read, Ok(3.0), "a first read on a pod started mid-failover");
    assert!(
        !b.is_leader().await,
        "took the Lease of a leader not expired"
    );
    assert!(
        b.metric(r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#)
            .await
            >= 1.0
    );
    // What it now holds waits for a leader: no second call while the stream stays silent.
    let calls = b.own_calls().await;
    assert_eq!(b.value(3).await, Ok(3.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(b.own_calls().await, calls, "refreshed a series it holds");
    assert!(waits_for_leader(&b.readyz().await));
    drop(a);
}

#[tokio::test]
async fn the_peer_link_refuses_forged_peers() {
    let cluster = Cluster::start(1).await;
    let a = cluster.replica("replica-a", &[]).await;
    let leader = cluster.leader(&[&a]).await;
    cluster.kube.add_token(
        "intruder-token",
        "system:serviceaccount:other:reader",
        "",
        &["system:serviceaccounts"],
    );
    let stream = |token: Option<&str>| {
        let mut request = leader.client.get(format!(
            "https://127.0.0.1:{}/peer/v1/stream",
            leader.secure
        ));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // No token, a token the cluster does not know, a ServiceAccount without the Lease permission.
    assert_eq!(stream(None).await.unwrap().status(), 401);
    assert_eq!(stream(Some("forged")).await.unwrap().status(), 401);
    let response = stream(Some("intruder-token")).await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    // The adapter's own token: a stream whose first line is a snapshot.
    let mut response = stream(Some(&leader.token)).await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    let frame: Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(frame["snapshot"], true);
    // Demand is refused the same way, and bounded once admitted.
    let demand = leader
        .client
        .post(format!(
            "https://127.0.0.1:{}/peer/v1/demand",
            leader.secure
        ))
        .bearer_auth("intruder-token")
        .json(&json!({"series": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(demand.status(), 403);
    let huge = leader
        .client
        .post(format!(
            "https://127.0.0.1:{}/peer/v1/demand",
            leader.secure
        ))
        .bearer_auth(&leader.token)
        .body(vec![b' '; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 400);
    // The API itself still refuses bodies: the peer paths are the only exception.
    let api = leader
        .client
        .post(format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1",
            leader.secure
        ))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 413);
}

#[tokio::test]
async fn a_follower_that_cannot_verify_the_leader_never_takes_its_values_and_falls_back() {
    let cluster = Cluster::start(3).await;
    let a = cluster.replica("replica-a", &[]).await;
    let leader = cluster.leader(&[&a]).await;
    leader.value(0).await.unwrap();
    // This follower trusts another CA: whoever answers at the leader's address is not believed.
    let wrong = TestCa::new("someone-else");
    wrong.write(cluster.dir.path(), "wrong-ca.pem");
    let follower = cluster
        .replica(
            "replica-b",
            &["--peer-ca-file", &cluster.path("wrong-ca.pem")],
        )
        .await;
    assert_eq!(
        follower.metric("cloudwatch_adapter_peer_stream_up").await,
        0.0
    );
    // Degrade, never fail: after the lease and a retry without a leader's stream, it reads what
    // it is asked for itself, within its small budget.
    assert_eq!(follower.value(2).await.unwrap(), 2.0);
    assert!(
        follower
            .metric(r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#)
            .await
            >= 1.0
    );
    assert_eq!(
        follower.metric("cloudwatch_adapter_peer_stream_up").await,
        0.0
    );
    assert!(!follower.is_leader().await);
}

#[tokio::test]
async fn a_rotated_peer_token_is_read_again_without_a_restart() {
    let cluster = Cluster::start(5).await;
    let a = cluster.replica("replica-a", &[]).await;
    let b = cluster.replica("replica-b", &[]).await;
    let leader = cluster.leader(&[&a, &b]).await;
    let follower = if std::ptr::eq(leader, &a) { &b } else { &a };
    assert_eq!(follower.value(0).await.unwrap(), 0.0);
    // Kubelet rewrites the projected token; the old one stops authenticating.
    let rotated = format!("{}-rotated", follower.token);
    cluster.kube.add_token(
        &rotated,
        ADAPTER_USER,
        "uid-adapter",
        &["system:serviceaccounts"],
    );
    std::fs::write(&follower.token_file, &rotated).unwrap();
    cluster
        .kube
        .add_token(&follower.token, "system:serviceaccount:ha:revoked", "", &[]);
    // A series first asked for on the follower now: its demand carries the new token, the
    // leader fetches it at once, and the value streams back (well before the 15 s a first
    // request would wait in vain, or a fallback).
    let asked = Instant::now();
    assert_eq!(follower.value(4).await.unwrap(), 4.0);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        follower
            .metric(r#"cloudwatch_adapter_fallback_refreshes_total{source="cloudwatch"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn only_the_leader_writes_status_and_events() {
    let cluster = Cluster::start(3).await;
    let spec = json!({
        "queries": [{"id": "v", "metricStat": {
            "metric": {"namespace": "HA", "metricName": "Depth",
                       "dimensions": [{"name": "Queue", "value": "${Queue}"}]},
            "period": 1, "stat": "Maximum"}}]
    });
    let api = cluster.kube.external_metrics();
    api.apply(external_metric("default", "team-depth", spec));
    let flags = [
        "--watch-external-metrics=true",
        "--status-update-interval",
        "200ms",
    ];
    let a = cluster.replica("replica-a", &flags).await;
    let b = cluster.replica("replica-b", &flags).await;
    let leader = cluster.leader(&[&a, &b]).await;
    let url = |replica: &Replica, queue: usize| {
        format!(
            "https://127.0.0.1:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/team-depth?labelSelector=Queue%3Dq{queue}",
            replica.secure
        )
    };
    for (replica, queue) in [(&a, 0), (&b, 1), (&a, 2), (&b, 2)] {
        let response = replica
            .client
            .get(url(replica, queue))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    until("a status write", Duration::from_secs(10), || async {
        !api.requests_to("PATCH", "/status").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writers: std::collections::BTreeSet<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| r.caller)
        .collect();
    assert_eq!(
        writers,
        [leader.token.clone()].into_iter().collect(),
        "status and Events written by more than the leader"
    );
    for event in api.requests_to("POST", "/events") {
        assert_eq!(event.body["reportingInstance"], json!(leader.name));
    }
}
