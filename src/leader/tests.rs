//! Candidates against the fake Lease API, in process and on paused time: every test lets the
//! clock run in small steps and fails at once if two candidates lead at the same instant (a
//! killed leader included: its handle keeps answering from its local deadline).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use fake_kube::{Down, FakeKube, LeaseVerb, LeaseWrite, Partition};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::*;

const NAMESPACE: &str = "adapter";
const NAME: &str = "cloudwatch-metrics-adapter";
const LEASE: Duration = DEFAULT_LEASE_DURATION;
const RENEW: Duration = DEFAULT_RENEW_DEADLINE;
/// The longest a candidate waits between attempts: retry x (1 + 1.2).
const MAX_RETRY: Duration = Duration::from_millis(4400);
/// How often the timeline is sampled.
const STEP: Duration = Duration::from_millis(50);

fn peer(name: &str) -> String {
    format!("{name}.adapter.pod:6443")
}

struct Candidate {
    name: String,
    leadership: Leadership,
    metrics: LeaderMetrics,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Candidate {
    /// A candidate named `name` (its identity and bearer token), running.
    fn start(fake: &FakeKube, name: &str) -> Candidate {
        let mut config = ElectionConfig::new(NAMESPACE, NAME, name);
        config.peer_address = Some(peer(name));
        let metrics = LeaderMetrics::default();
        let (elector, leadership) =
            Elector::new(fake.client(name), config, metrics.clone()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector.run(stop.clone()));
        Candidate {
            name: name.to_string(),
            leadership,
            metrics,
            stop,
            task: Some(task),
        }
    }

    /// Die without a word, as with SIGKILL.
    fn kill(&mut self) {
        self.task.take().unwrap().abort();
    }
}

/// Who led at each sampled instant.
type Timeline = Vec<(Instant, Option<String>)>;

/// Let paused time run for `duration`, sampling who leads every [`STEP`]; panics as soon as two
/// lead at once.
async fn run_for(duration: Duration, candidates: &[&Candidate]) -> Timeline {
    let end = Instant::now() + duration;
    let mut timeline = Vec::new();
    while Instant::now() < end {
        sleep(STEP).await;
        let leaders: Vec<&str> = candidates
            .iter()
            .filter(|c| c.leadership.is_leader())
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            leaders.len() <= 1,
            "two leaders at once: {leaders:?} at {:?}",
            Instant::now()
        );
        timeline.push((Instant::now(), leaders.first().map(|s| s.to_string())));
    }
    timeline
}

fn first_led(timeline: &Timeline, name: &str) -> Option<Instant> {
    timeline
        .iter()
        .find(|(_, who)| who.as_deref() == Some(name))
        .map(|(at, _)| *at)
}

fn last_led(timeline: &Timeline, name: &str) -> Option<Instant> {
    timeline
        .iter()
        .rev()
        .find(|(_, who)| who.as_deref() == Some(name))
        .map(|(at, _)| *at)
}

fn successful_writes(fake: &FakeKube, caller: &str) -> Vec<LeaseWrite> {
    fake.leases()
        .writes()
        .into_iter()
        .filter(|w| w.caller == caller && w.succeeded())
        .collect()
}

fn holder(name: &str) -> Option<Holder> {
    Some(Holder {
        identity: name.to_string(),
        peer_address: Some(peer(name)),
    })
}

/// `a` leads (it started first), `b` follows.
async fn leader_and_follower(fake: &FakeKube) -> (Candidate, Candidate) {
    let a = Candidate::start(fake, "a");
    run_for(Duration::from_secs(1), &[&a]).await;
    assert!(a.leadership.is_leader());
    let b = Candidate::start(fake, "b");
    run_for(Duration::from_secs(9), &[&a, &b]).await;
    assert!(a.leadership.is_leader() && !b.leadership.is_leader());
    assert_eq!(b.leadership.leader(), holder("a"));
    (a, b)
}

#[tokio::test(start_paused = true)]
async fn of_two_candidates_exactly_one_leads_and_the_other_follows_it() {
    let fake = FakeKube::new();
    let a = Candidate::start(&fake, "a");
    let b = Candidate::start(&fake, "b");
    let timeline = run_for(Duration::from_secs(60), &[&a, &b]).await;

    let leader = fake.leases().holder(NAMESPACE, NAME).unwrap();
    assert!(
        timeline
            .iter()
            .all(|(_, who)| who.as_deref() == Some(&leader)),
        "one leader from the first attempt to the end"
    );
    let (leading, following) = if leader == "a" { (&a, &b) } else { (&b, &a) };
    // Both know who leads and where to reach it, through the Lease.
    assert_eq!(following.leadership.leader(), holder(&leader));
    assert_eq!(leading.leadership.leader(), holder(&leader));
    assert!(leading.leadership.changes().borrow().leading);
    assert!(!following.leadership.changes().borrow().leading);
    assert_eq!(
        (leading.metrics.is_leader(), following.metrics.is_leader()),
        (1, 0)
    );
    // Only the leader wrote, renewing every retry period.
    let writes: Vec<LeaseWrite> = fake.leases().writes();
    let ok: Vec<&LeaseWrite> = writes.iter().filter(|w| w.succeeded()).collect();
    assert!(ok.iter().all(|w| w.caller == leader), "{writes:?}");
    assert!(
        (29..=31).contains(&ok.len()),
        "{} renewals in 60 s",
        ok.len()
    );
    let lease = fake.leases().get(NAMESPACE, NAME).unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(
        lease.metadata.annotations.unwrap()[PEER_ADDRESS_ANNOTATION],
        peer(&leader)
    );
}

#[tokio::test(start_paused = true)]
async fn three_candidates_racing_to_create_the_lease_get_one_winner() {
    let fake = FakeKube::new();
    // All three creates reach the API server together: one 201, two 409 AlreadyExists.
    fake.leases().hold_writes(3);
    let candidates = [
        Candidate::start(&fake, "a"),
        Candidate::start(&fake, "b"),
        Candidate::start(&fake, "c"),
    ];
    let all: Vec<&Candidate> = candidates.iter().collect();
    let timeline = run_for(Duration::from_secs(30), &all).await;

    let creates: Vec<LeaseWrite> = fake
        .leases()
        .writes()
        .into_iter()
        .filter(|w| w.verb == LeaseVerb::Create)
        .collect();
    assert_eq!(creates.len(), 3, "{creates:?}");
    let winners: Vec<&LeaseWrite> = creates.iter().filter(|w| w.succeeded()).collect();
    assert_eq!(winners.len(), 1, "{creates:?}");
    assert!(
        creates
            .iter()
            .filter(|w| !w.succeeded())
            .all(|w| w.code == 409 && w.reason.as_deref() == Some("AlreadyExists"))
    );
    let winner = winners[0].caller.clone();
    assert!(
        timeline
            .iter()
            .all(|(_, who)| who.as_deref() == Some(winner.as_str()))
    );
    for candidate in &candidates {
        assert_eq!(candidate.leadership.leader(), holder(&winner));
    }
}

#[tokio::test(start_paused = true)]
async fn two_followers_racing_for_an_expired_lease_get_a_conflict_and_one_leader() {
    let fake = FakeKube::new();
    let (mut a, b) = leader_and_follower(&fake).await;
    let c = Candidate::start(&fake, "c");
    run_for(Duration::from_secs(10), &[&a, &b, &c]).await;
    // The leader dies; both followers' takeovers reach the API server with the same version.
    fake.leases().hold_writes(2);
    a.kill();
    let timeline = run_for(Duration::from_secs(40), &[&a, &b, &c]).await;

    let last_a = successful_writes(&fake, "a").pop().unwrap();
    let race: Vec<LeaseWrite> = fake
        .leases()
        .writes()
        .into_iter()
        .filter(|w| w.caller != "a")
        .take(2)
        .collect();
    assert_eq!(race.len(), 2);
    assert!(
        race.iter()
            .all(|w| w.sent_resource_version == last_a.resource_version),
        "{race:?}"
    );
    let codes: Vec<(u16, Option<&str>)> =
        race.iter().map(|w| (w.code, w.reason.as_deref())).collect();
    assert!(
        codes == [(200, None), (409, Some("Conflict"))]
            || codes == [(409, Some("Conflict")), (200, None)],
        "{codes:?}"
    );
    let takeover = race.iter().find(|w| w.succeeded()).unwrap();
    let winner = takeover.caller.clone();
    // Taken over only once the lease duration passed on the followers' clocks, and soon after.
    assert!(takeover.at >= last_a.at + LEASE);
    assert!(takeover.at <= last_a.at + LEASE + MAX_RETRY * 2);
    // The dead leader's own handle said so from its deadline on.
    assert!(last_led(&timeline, "a").is_none_or(|at| at <= last_a.at + RENEW));
    assert_eq!(timeline.last().unwrap().1.as_deref(), Some(winner.as_str()));
    let (leader, other) = if winner == "b" { (&b, &c) } else { (&c, &b) };
    assert_eq!(other.leadership.leader(), holder(&winner));
    assert_eq!(leader.metrics.transitions(), 1);
    assert_eq!(other.metrics.transitions(), 1);
    let spec = fake.leases().get(NAMESPACE, NAME).unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1));
}

/// `a` leads and `b` follows; `fault` cuts `a` off from the API server. `a` must stop leading
/// within the renew deadline of its last renewal and `b` take over once the lease duration has
/// passed since `a`'s last write; when `heal` ends the fault, `a` follows `b`.
async fn leader_cut_off(partition: Partition) {
    let fake = FakeKube::new();
    let (a, b) = leader_and_follower(&fake).await;
    fake.faults().partition("a", partition);
    let cut = Instant::now();
    let timeline = run_for(Duration::from_secs(40), &[&a, &b]).await;

    let a_stopped = last_led(&timeline, "a").unwrap();
    assert!(
        a_stopped <= cut + RENEW,
        "{partition:?}: led until {:?} after the cut",
        a_stopped - cut
    );
    let takeover = successful_writes(&fake, "b").first().cloned().unwrap();
    let last_a = successful_writes(&fake, "a")
        .into_iter()
        .rfind(|w| w.at <= takeover.at)
        .unwrap();
    assert!(takeover.at >= last_a.at + LEASE, "{partition:?}");
    assert!(
        takeover.at <= last_a.at + LEASE + MAX_RETRY * 2,
        "{partition:?}"
    );
    assert!(first_led(&timeline, "b").is_some());
    assert_eq!(timeline.last().unwrap().1.as_deref(), Some("b"));

    fake.faults().heal("a");
    let timeline = run_for(Duration::from_secs(15), &[&a, &b]).await;
    assert!(timeline.iter().all(|(_, who)| who.as_deref() == Some("b")));
    assert_eq!(a.leadership.leader(), holder("b"), "{partition:?}");
    assert!(!a.leadership.changes().borrow().leading);
    assert_eq!(a.metrics.is_leader(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_whose_requests_hang_stops_within_the_renew_deadline() {
    leader_cut_off(Partition::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_leader_whose_requests_fail_stops_within_the_renew_deadline() {
    leader_cut_off(Partition::Fail).await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewals_land_but_whose_answers_are_lost_stops_leading() {
    leader_cut_off(Partition::LoseAnswers).await;
}

/// The whole API goes down for 30 s: the leader stops within the renew deadline, nobody leads
/// during the outage, and one replica leads again soon after it ends.
async fn api_down(down: Down) {
    let fake = FakeKube::new();
    let (a, b) = leader_and_follower(&fake).await;
    fake.faults().set_down(Some(down));
    let cut = Instant::now();
    let timeline = run_for(Duration::from_secs(30), &[&a, &b]).await;
    assert!(last_led(&timeline, "a").unwrap() <= cut + RENEW, "{down:?}");
    assert!(
        timeline
            .iter()
            .filter(|(at, _)| *at > cut + RENEW)
            .all(|(_, who)| who.is_none()),
        "{down:?}: nobody can renew during an outage"
    );
    fake.faults().set_down(None);
    let back = Instant::now();
    let timeline = run_for(Duration::from_secs(15), &[&a, &b]).await;
    let first = timeline.iter().find(|(_, who)| who.is_some()).unwrap();
    assert!(first.0 <= back + MAX_RETRY + STEP, "{down:?}");
    let leader = first.1.clone().unwrap();
    assert!(
        timeline
            .iter()
            .skip_while(|(at, _)| *at < first.0)
            .all(|(_, who)| who.as_ref() == Some(&leader))
    );
}

#[tokio::test(start_paused = true)]
async fn when_the_api_answers_503_the_leader_stops_within_the_renew_deadline() {
    api_down(Down::Unavailable).await;
}

#[tokio::test(start_paused = true)]
async fn when_the_api_refuses_connections_the_leader_stops_within_the_renew_deadline() {
    api_down(Down::Refused).await;
}

#[tokio::test(start_paused = true)]
async fn slow_answers_keep_the_leader_until_they_are_slower_than_the_renew_deadline() {
    let fake = FakeKube::new();
    let (a, b) = leader_and_follower(&fake).await;
    // 3 s per request: renewals are late but well within the deadline.
    fake.faults().set_latency(Duration::from_secs(3));
    let timeline = run_for(Duration::from_secs(60), &[&a, &b]).await;
    assert!(timeline.iter().all(|(_, who)| who.as_deref() == Some("a")));
    // 12 s per request: no renewal can succeed within the deadline; nobody may lead.
    fake.faults().set_latency(Duration::from_secs(12));
    let slow = Instant::now();
    let timeline = run_for(Duration::from_secs(60), &[&a, &b]).await;
    assert!(last_led(&timeline, "a").unwrap() <= slow + RENEW);
    assert!(
        timeline
            .iter()
            .filter(|(at, _)| *at > slow + RENEW)
            .all(|(_, who)| who.is_none())
    );
    fake.faults().set_latency(Duration::ZERO);
    let timeline = run_for(Duration::from_secs(15), &[&a, &b]).await;
    assert!(timeline.last().unwrap().1.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_leader_shutting_down_stops_leading_then_releases_and_the_follower_takes_over_at_its_next_retry()
 {
    let fake = FakeKube::new();
    let (mut a, b) = leader_and_follower(&fake).await;
    // Hold the release in flight to see that `a` stopped leading before sending it.
    fake.faults().partition("a", Partition::Hang);
    a.stop.cancel();
    run_for(Duration::from_millis(500), &[&a, &b]).await;
    assert!(!a.leadership.is_leader());
    assert!(!a.leadership.changes().borrow().leading);
    assert_eq!(a.metrics.is_leader(), 0);
    fake.faults().heal("a");
    a.task.take().unwrap().await.unwrap();

    let release = successful_writes(&fake, "a").pop().unwrap();
    assert_eq!(release.holder.as_deref(), Some(""));
    assert_eq!(release.lease_duration_seconds, Some(1));
    let timeline = run_for(Duration::from_secs(10), &[&a, &b]).await;
    let takeover = successful_writes(&fake, "b").first().cloned().unwrap();
    assert!(takeover.at >= release.at);
    assert!(
        takeover.at <= release.at + MAX_RETRY,
        "at the next retry, not after the lease duration: {:?}",
        takeover.at - release.at
    );
    assert_eq!(timeline.last().unwrap().1.as_deref(), Some("b"));
    assert_eq!(b.leadership.leader(), holder("b"));
    assert_eq!(b.metrics.transitions(), 1);
    let lease = fake.leases().get(NAMESPACE, NAME).unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}

/// A Lease written by `ghost` with this `renewTime` (as a holder whose clock is wrong would
/// write it).
fn ghost_lease(renew_time: Timestamp, resource_version: Option<String>) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(NAME.to_string()),
            resource_version,
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("ghost".to_string()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(renew_time)),
            renew_time: Some(MicroTime(renew_time)),
            ..LeaseSpec::default()
        }),
    }
}

/// The wall clock plus `seconds` and whatever paused time has run since `start` (the real
/// wall clock hardly moves while paused time runs for minutes).
fn wall_clock_plus(start: Instant, seconds: i64) -> Timestamp {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let elapsed = i64::try_from(start.elapsed().as_secs()).unwrap();
    Timestamp::from_second(i64::try_from(wall).unwrap() + elapsed + seconds).unwrap()
}

#[tokio::test(start_paused = true)]
async fn expiry_is_judged_on_the_local_clock_whatever_renew_time_says() {
    let year = 365 * 24 * 3600;
    let now = Instant::now();
    for renew_time in [
        wall_clock_plus(now, year),
        wall_clock_plus(now, -year),
        Timestamp::UNIX_EPOCH,
    ] {
        let fake = FakeKube::new();
        let ghost = Api::<Lease>::namespaced(fake.client("ghost"), NAMESPACE);
        ghost
            .create(&PostParams::default(), &ghost_lease(renew_time, None))
            .await
            .unwrap();
        let start = Instant::now();
        let a = Candidate::start(&fake, "a");
        let timeline = run_for(Duration::from_secs(25), &[&a]).await;
        let first = first_led(&timeline, "a").unwrap();
        // A renewTime in the past does not make it free early, nor one in the future late.
        assert!(first >= start + LEASE, "{renew_time}: took over early");
        assert!(
            first <= start + LEASE + MAX_RETRY + STEP,
            "{renew_time}: took over late"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_live_holder_whose_clock_is_an_hour_off_is_never_deposed() {
    let fake = FakeKube::new();
    let start = Instant::now();
    let ghost = Api::<Lease>::namespaced(fake.client("ghost"), NAMESPACE);
    ghost
        .create(
            &PostParams::default(),
            &ghost_lease(wall_clock_plus(start, -3600), None),
        )
        .await
        .unwrap();
    // The ghost renews every 2 s, its clock an hour behind, then an hour ahead.
    let renewing = tokio::spawn(async move {
        for round in 0.. {
            sleep(Duration::from_secs(2)).await;
            let current = ghost.get(NAME).await.unwrap();
            let skew = if round < 15 { -3600 } else { 3600 };
            let renewed = ghost_lease(
                wall_clock_plus(start, skew),
                current.metadata.resource_version,
            );
            ghost
                .replace(NAME, &PostParams::default(), &renewed)
                .await
                .unwrap();
        }
    });
    let a = Candidate::start(&fake, "a");
    let timeline = run_for(Duration::from_secs(60), &[&a]).await;
    assert!(timeline.iter().all(|(_, who)| who.is_none()));
    assert_eq!(a.leadership.leader().unwrap().identity, "ghost");

    renewing.abort();
    let timeline = run_for(Duration::from_secs(25), &[&a]).await;
    let last_ghost = successful_writes(&fake, "ghost").pop().unwrap();
    let first = first_led(&timeline, "a").unwrap();
    assert!(first >= last_ghost.at + LEASE);
    assert!(first <= last_ghost.at + LEASE + MAX_RETRY * 2);
}

#[test]
fn timings_are_checked_as_client_go_checks_them() {
    let good = ElectionConfig::new("ns", "lock", "me");
    assert_eq!(good.validate(), Ok(()));
    let with = |change: fn(&mut ElectionConfig)| {
        let mut config = good.clone();
        change(&mut config);
        config.validate().unwrap_err()
    };
    assert!(matches!(
        with(|c| c.renew_deadline = Duration::from_secs(15)),
        ElectionConfigError::LeaseNotAboveRenewDeadline { .. }
    ));
    // 1.2 x 2 s = 2.4 s: a renew deadline of 2.4 s is not enough.
    assert!(matches!(
        with(|c| c.renew_deadline = Duration::from_millis(2400)),
        ElectionConfigError::RenewDeadlineNotAboveRetry { .. }
    ));
    assert!(matches!(
        with(|c| c.lease_duration = Duration::from_millis(15_500)),
        ElectionConfigError::LeaseDuration(_)
    ));
    assert!(matches!(
        with(|c| c.retry_period = Duration::ZERO),
        ElectionConfigError::RetryPeriod
    ));
    assert_eq!(
        with(|c| c.identity.clear()),
        ElectionConfigError::EmptyIdentity
    );
    assert_eq!(with(|c| c.name.clear()), ElectionConfigError::NoLease);
    let a = unique_identity("pod");
    let b = unique_identity("pod");
    assert!(a.starts_with("pod_") && a.len() == "pod_".len() + 8);
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn always_leads_without_a_lease() {
    let leadership = Leadership::always();
    sleep(Duration::from_secs(3600 * 24 * 365)).await;
    assert!(leadership.is_leader());
    assert!(leadership.clone().is_leader());
    assert_eq!(
        *leadership.changes().borrow(),
        LeaderState {
            leading: true,
            leader: None
        }
    );
    assert!(leadership.valid_until().unwrap() > Instant::now());
}
