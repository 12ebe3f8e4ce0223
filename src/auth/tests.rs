//! Decision logic and caches with a fake reviewer, on a paused clock.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use axum::routing::get;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo as KubeUser};
use k8s_openapi::api::authorization::v1::SubjectAccessReviewStatus;
use tokio::time::Instant;
use tower::ServiceExt;

use super::review::ReviewFuture;
use super::*;
use crate::metrics::AdapterMetrics;

#[derive(Debug, Default)]
struct FakeReviewer {
    users: Mutex<HashMap<String, String>>,
    allowed: Mutex<HashSet<String>>,
    down: AtomicBool,
    /// Reviews take 100 ms (of paused time), so concurrent callers overlap.
    slow: AtomicBool,
    /// Access reviews never answer.
    hang: AtomicBool,
    /// Token reviews never answer.
    tokens_hang: AtomicBool,
    token_calls: AtomicUsize,
    access_calls: AtomicUsize,
    /// Access reviews under way now, and the most there ever were.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    specs: Mutex<Vec<SubjectAccessReviewSpec>>,
}

impl FakeReviewer {
    fn with_token(self, token: &str, user: &str) -> Self {
        self.users
            .lock()
            .unwrap()
            .insert(token.to_string(), user.to_string());
        self
    }

    fn allow(&self, user: &str) {
        self.allowed.lock().unwrap().insert(user.to_string());
    }

    fn deny(&self, user: &str) {
        self.allowed.lock().unwrap().remove(user);
    }

    fn unreachable() -> ReviewError {
        ReviewError {
            review: "fake",
            detail: "connection refused".into(),
        }
    }
}

impl Reviewer for FakeReviewer {
    fn review_token<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenReviewStatus> {
        Box::pin(async move {
            self.token_calls.fetch_add(1, Ordering::SeqCst);
            if self.tokens_hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::unreachable());
            }
            Ok(match self.users.lock().unwrap().get(token) {
                Some(user) => TokenReviewStatus {
                    authenticated: Some(true),
                    user: Some(KubeUser {
                        username: Some(user.clone()),
                        groups: Some(vec!["devs".into()]),
                        ..KubeUser::default()
                    }),
                    ..TokenReviewStatus::default()
                },
                None => TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("token not found".into()),
                    ..TokenReviewStatus::default()
                },
            })
        })
    }

    fn review_access(
        &self,
        spec: SubjectAccessReviewSpec,
    ) -> ReviewFuture<'_, SubjectAccessReviewStatus> {
        Box::pin(async move {
            self.access_calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(Self::unreachable());
            }
            let allowed = self
                .allowed
                .lock()
                .unwrap()
                .contains(spec.user.as_deref().unwrap_or_default());
            self.specs.lock().unwrap().push(spec);
            Ok(SubjectAccessReviewStatus {
                allowed,
                reason: (!allowed).then(|| "no RBAC policy matched".to_string()),
                ..SubjectAccessReviewStatus::default()
            })
        })
    }
}

fn settings(anonymous: bool) -> AuthSettings {
    AuthSettings {
        anonymous,
        mode: AuthorizationMode::Delegated,
        token_ttl: Duration::from_secs(10),
        allowed_ttl: Duration::from_secs(300),
        denied_ttl: Duration::from_secs(30),
    }
}

fn auth(reviewer: &Arc<FakeReviewer>, settings: AuthSettings) -> Auth {
    let reviewer: Arc<dyn Reviewer> = reviewer.clone();
    Auth::new(
        Arc::new(TrustStore::new(None, None)),
        Some(reviewer),
        settings,
        AdapterMetrics::default().auth().clone(),
    )
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

fn value_request(metric: &str) -> Arc<Attributes> {
    Arc::new(Attributes::from_request(
        &axum::http::Method::GET,
        &format!("/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{metric}"),
        None,
    ))
}

fn user(name: &str) -> Arc<UserInfo> {
    Arc::new(UserInfo {
        name: name.into(),
        groups: vec![AUTHENTICATED.into()],
        ..UserInfo::default()
    })
}

#[tokio::test(start_paused = true)]
async fn token_answers_are_cached_for_the_ttl_and_errors_are_not() {
    let reviewer = Arc::new(FakeReviewer::default().with_token("good", "alice"));
    let auth = auth(&reviewer, settings(true));
    let calls = || reviewer.token_calls.load(Ordering::SeqCst);

    let answer = auth.authenticate(&bearer("good"), None).await.unwrap();
    let Authentication::User(alice, via) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(via, Method::Token);
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.groups, ["devs", AUTHENTICATED]);
    tokio::time::advance(Duration::from_millis(9_999)).await;
    auth.authenticate(&bearer("good"), None).await.unwrap();
    assert_eq!(calls(), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    auth.authenticate(&bearer("good"), None).await.unwrap();
    assert_eq!(calls(), 2);

    // A rejected token is refused even though anonymous access is on, and that answer is
    // cached too.
    for _ in 0..3 {
        let answer = auth.authenticate(&bearer("bad"), None).await.unwrap();
        assert_eq!(answer, Authentication::Refused(Some(Method::Token)));
    }
    assert_eq!(calls(), 3);

    // Unreachable: an error each time (never cached), until the API server is back.
    reviewer.down.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(auth.authenticate(&bearer("good"), None).await.is_err());
    assert!(auth.authenticate(&bearer("good"), None).await.is_err());
    assert_eq!(calls(), 5);
    reviewer.down.store(false, Ordering::SeqCst);
    assert!(matches!(
        auth.authenticate(&bearer("good"), None).await.unwrap(),
        Authentication::User(..)
    ));
}

#[tokio::test(start_paused = true)]
async fn allowed_and_denied_decisions_have_their_own_ttls() {
    let reviewer = Arc::new(FakeReviewer::default());
    let auth = auth(&reviewer, settings(false));
    let calls = || reviewer.access_calls.load(Ordering::SeqCst);
    let alice = user("alice");
    let request = value_request("sqs-visible");

    reviewer.allow("alice");
    assert_eq!(
        auth.authorize(&alice, &request).await.unwrap(),
        Decision::Allow
    );
    // RBAC changes; the allowed answer stands for its 5 minutes.
    reviewer.deny("alice");
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(
        auth.authorize(&alice, &request).await.unwrap(),
        Decision::Allow
    );
    assert_eq!(calls(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        auth.authorize(&alice, &request).await.unwrap(),
        Decision::Deny("no RBAC policy matched".into())
    );
    assert_eq!(calls(), 2);
    // The denied answer stands for 30 seconds only.
    reviewer.allow("alice");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(matches!(
        auth.authorize(&alice, &request).await.unwrap(),
        Decision::Deny(_)
    ));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        auth.authorize(&alice, &request).await.unwrap(),
        Decision::Allow
    );
    assert_eq!(calls(), 3);

    // Each metric is its own decision.
    auth.authorize(&alice, &value_request("other"))
        .await
        .unwrap();
    assert_eq!(calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn unreachable_api_server_fails_closed_but_cached_decisions_still_apply() {
    let reviewer = Arc::new(FakeReviewer::default());
    let auth = auth(&reviewer, settings(false));
    reviewer.allow("alice");
    let request = value_request("sqs-visible");
    auth.authorize(&user("alice"), &request).await.unwrap();

    reviewer.down.store(true, Ordering::SeqCst);
    assert_eq!(
        auth.authorize(&user("alice"), &request).await.unwrap(),
        Decision::Allow
    );
    assert!(auth.authorize(&user("bob"), &request).await.is_err());
    // Once the cached answer expires, alice fails closed too.
    tokio::time::advance(Duration::from_secs(300)).await;
    assert!(auth.authorize(&user("alice"), &request).await.is_err());
    reviewer.down.store(false, Ordering::SeqCst);
    assert_eq!(
        auth.authorize(&user("alice"), &request).await.unwrap(),
        Decision::Allow
    );
}

#[tokio::test]
async fn masters_and_always_allow_skip_the_review() {
    let reviewer = Arc::new(FakeReviewer::default());
    let delegated = auth(&reviewer, settings(false));
    let master = Arc::new(UserInfo {
        groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        ..(*user("system:kube-aggregator")).clone()
    });
    let request = value_request("sqs-visible");
    assert_eq!(
        delegated.authorize(&master, &request).await.unwrap(),
        Decision::Allow
    );
    let always = auth(
        &reviewer,
        AuthSettings {
            mode: AuthorizationMode::AlwaysAllow,
            ..settings(false)
        },
    );
    assert_eq!(
        always.authorize(&user("bob"), &request).await.unwrap(),
        Decision::Allow
    );
    assert_eq!(reviewer.access_calls.load(Ordering::SeqCst), 0);
    // Without a cluster, delegated authorization refuses (except system:masters).
    let offline = Auth::new(
        Arc::new(TrustStore::new(None, None)),
        None,
        settings(true),
        AdapterMetrics::default().auth().clone(),
    );
    assert!(matches!(
        offline.authorize(&user("bob"), &request).await.unwrap(),
        Decision::Deny(_)
    ));
}

#[tokio::test]
async fn the_review_spec_is_what_kubes_webhook_authorizer_sends() {
    let caller = UserInfo {
        name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
        uid: "uid-1".into(),
        groups: vec!["system:serviceaccounts".into(), AUTHENTICATED.into()],
        extra: [(
            "authentication.kubernetes.io/credential-id".to_string(),
            vec!["JTI=x".to_string()],
        )]
        .into_iter()
        .collect(),
    };
    let spec = access_review_spec(&caller, &value_request("sqs-visible"));
    assert_eq!(
        serde_json::to_value(&spec).unwrap(),
        serde_json::json!({
            "user": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            "uid": "uid-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": ["JTI=x"]},
            "resourceAttributes": {"namespace": "default", "verb": "list",
                "group": "external.metrics.k8s.io", "version": "v1beta1", "resource": "sqs-visible"}
        })
    );
    let discovery = access_review_spec(
        &UserInfo::anonymous(),
        &Attributes::from_request(
            &axum::http::Method::GET,
            "/apis/external.metrics.k8s.io/v1beta1",
            None,
        ),
    );
    assert_eq!(
        serde_json::to_value(&discovery).unwrap(),
        serde_json::json!({
            "user": "system:anonymous",
            "groups": ["system:unauthenticated"],
            "nonResourceAttributes": {"path": "/apis/external.metrics.k8s.io/v1beta1", "verb": "get"}
        })
    );
}

#[test]
fn bearer_tokens_are_read_as_kube_reads_them() {
    let headers = |value: &str| {
        let mut map = HeaderMap::new();
        map.insert(header::AUTHORIZATION, value.parse().unwrap());
        map
    };
    assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
    assert_eq!(bearer_token(&headers("bearer abc extra")), Some("abc"));
    assert_eq!(bearer_token(&headers("Bearer ")), None);
    assert_eq!(bearer_token(&headers("Basic abc")), None);
    assert_eq!(bearer_token(&HeaderMap::new()), None);
}

async fn call(auth: Arc<Auth>, request: HttpRequest<Body>) -> (StatusCode, serde_json::Value) {
    let router = Router::new()
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}",
            get(|request: Request| async move {
                // The handler sees neither the token nor identity headers.
                assert!(request.headers().get(header::AUTHORIZATION).is_none());
                let caller = request.extensions().get::<Caller>().cloned().unwrap();
                axum::Json(
                    serde_json::json!({"user": caller.user.name, "method": caller.method.as_str()}),
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(auth, middleware));
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn the_middleware_answers_401_403_and_503_as_status_objects() {
    let reviewer = Arc::new(FakeReviewer::default().with_token("good", "alice"));
    reviewer.allow("alice");
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible";
    let request = |token: Option<&str>| {
        let mut builder = HttpRequest::get(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(Body::empty()).unwrap()
    };

    let closed = Arc::new(auth(&reviewer, settings(false)));
    let (status, body) = call(closed.clone(), request(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Unauthorized");
    let (status, body) = call(closed.clone(), request(Some("good"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["method"], "token");

    let open = Arc::new(auth(&reviewer, settings(true)));
    let (status, body) = call(open.clone(), request(None)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["message"],
        "sqs-visible.external.metrics.k8s.io is forbidden: User \"system:anonymous\" cannot list resource \"sqs-visible\" in API group \"external.metrics.k8s.io\" in the namespace \"default\": no RBAC policy matched"
    );
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(body["details"]["kind"], "sqs-visible");

    reviewer.down.store(true, Ordering::SeqCst);
    let (status, body) = call(open.clone(), request(Some("unseen-token"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert!(
        !body["message"].as_str().unwrap().contains("unseen-token"),
        "{body}"
    );
}

/// `count` concurrent authorizations of alice, each for another metric (so none share a review).
fn distinct_reviews(
    auth: &Arc<Auth>,
    count: usize,
) -> tokio::task::JoinSet<Result<Decision, Unavailable>> {
    let mut requests = tokio::task::JoinSet::new();
    for metric in 0..count {
        let auth = auth.clone();
        requests.spawn(async move {
            auth.authorize(&user("alice"), &value_request(&format!("metric-{metric}")))
                .await
        });
    }
    requests
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_distinct_reviews_holds_at_most_32_calls_open_and_each_is_answered() {
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.slow.store(true, Ordering::SeqCst);
    reviewer.allow("alice");
    let auth = Arc::new(auth(&reviewer, settings(false)));
    let mut requests = distinct_reviews(&auth, 200);
    while let Some(decision) = requests.join_next().await {
        assert_eq!(decision.unwrap().unwrap(), Decision::Allow);
    }
    assert_eq!(reviewer.access_calls.load(Ordering::SeqCst), 200);
    assert_eq!(
        reviewer.most_in_flight.load(Ordering::SeqCst),
        MAX_REVIEWS_IN_FLIGHT
    );
}

#[tokio::test(start_paused = true)]
async fn a_review_that_finds_no_slot_while_the_api_server_hangs_is_unavailable_and_made_up_tokens_hold_only_token_slots()
 {
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.hang.store(true, Ordering::SeqCst);
    reviewer.allow("alice");
    let auth = Arc::new(auth(&reviewer, settings(false)));
    let mut hung = distinct_reviews(&auth, MAX_REVIEWS_IN_FLIGHT);
    tokio::task::yield_now().await;
    let started = Instant::now();
    let refused = auth
        .authorize(&user("alice"), &value_request("one-more"))
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), REVIEW_SLOT_WAIT);
    assert!(
        refused.to_string().contains("no slot within 10 s"),
        "{refused}"
    );
    assert_eq!(
        reviewer.access_calls.load(Ordering::SeqCst),
        MAX_REVIEWS_IN_FLIGHT
    );
    // Made-up tokens, which anyone can send, hold only the TokenReview slots.
    reviewer.tokens_hang.store(true, Ordering::SeqCst);
    let mut tokens = tokio::task::JoinSet::new();
    for n in 0..2 * MAX_REVIEWS_IN_FLIGHT {
        let auth = auth.clone();
        tokens.spawn(async move {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::AUTHORIZATION,
                format!("Bearer made-up-{n}").parse().unwrap(),
            );
            auth.authenticate(&headers, None).await.map(|_| ())
        });
    }
    tokio::task::yield_now().await;
    assert_eq!(
        reviewer.token_calls.load(Ordering::SeqCst),
        MAX_REVIEWS_IN_FLIGHT
    );
    // The hung reviews give their slots back when their requests go away.
    hung.shutdown().await;
    reviewer.hang.store(false, Ordering::SeqCst);
    // An access review goes ahead while every TokenReview slot is held.
    assert_eq!(
        auth.authorize(&user("alice"), &value_request("another"))
            .await
            .unwrap(),
        Decision::Allow
    );
    tokens.shutdown().await;
    assert_eq!(
        auth.authorize(&user("alice"), &value_request("one-more"))
            .await
            .unwrap(),
        Decision::Allow
    );
}

#[tokio::test(start_paused = true)]
async fn identical_concurrent_reviews_make_one_call_and_every_attribute_is_part_of_the_key() {
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.slow.store(true, Ordering::SeqCst);
    reviewer.allow("alice");
    let auth = Arc::new(auth(&reviewer, settings(false)));
    let calls = || reviewer.access_calls.load(Ordering::SeqCst);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let auth = auth.clone();
        // Equal identities in distinct allocations: the key compares contents.
        requests.spawn(async move {
            auth.authorize(&user("alice"), &value_request("sqs-visible"))
                .await
        });
    }
    while let Some(decision) = requests.join_next().await {
        assert_eq!(decision.unwrap().unwrap(), Decision::Allow);
    }
    assert_eq!(calls(), 1);

    let alice = (*user("alice")).clone();
    let variants = [
        UserInfo {
            uid: "uid-2".into(),
            ..alice.clone()
        },
        UserInfo {
            groups: vec!["other".into(), AUTHENTICATED.into()],
            ..alice.clone()
        },
        UserInfo {
            extra: [("scopes".to_string(), vec!["x".to_string()])].into(),
            ..alice.clone()
        },
    ];
    for (index, variant) in variants.into_iter().enumerate() {
        auth.authorize(&Arc::new(variant), &value_request("sqs-visible"))
            .await
            .unwrap();
        assert_eq!(calls(), 2 + index);
    }
    auth.authorize(&user("alice"), &value_request("other-metric"))
        .await
        .unwrap();
    let other_namespace = Arc::new(Attributes::from_request(
        &axum::http::Method::GET,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/sqs-visible",
        None,
    ));
    auth.authorize(&user("alice"), &other_namespace)
        .await
        .unwrap();
    assert_eq!(calls(), 6);
    // And the first answer is still cached.
    auth.authorize(&user("alice"), &value_request("sqs-visible"))
        .await
        .unwrap();
    assert_eq!(calls(), 6);
}

#[tokio::test]
async fn the_middleware_counts_outcomes_by_method_and_decision() {
    let reviewer = Arc::new(FakeReviewer::default().with_token("good", "alice"));
    reviewer.allow("alice");
    let metrics = AdapterMetrics::default();
    let auth = Arc::new(Auth::new(
        Arc::new(TrustStore::new(None, None)),
        Some(reviewer.clone() as Arc<dyn Reviewer>),
        settings(true),
        metrics.auth().clone(),
    ));
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible";
    let request = |token: Option<&str>| {
        let mut builder = HttpRequest::get(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(Body::empty()).unwrap()
    };
    assert_eq!(
        call(auth.clone(), request(Some("good"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(auth.clone(), request(Some("good"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(auth.clone(), request(Some("bad"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(auth.clone(), request(None)).await.0,
        StatusCode::FORBIDDEN
    );
    let text = metrics.encode();
    for line in [
        r#"authentications_total{method="token",result="success"} 2"#,
        r#"authentications_total{method="token",result="failure"} 1"#,
        r#"authentications_total{method="anonymous",result="success"} 1"#,
        r#"authorization_decisions_total{decision="allowed"} 2"#,
        r#"authorization_decisions_total{decision="denied"} 1"#,
        r#"reviews_total{review="TokenReview",outcome="authenticated"} 1"#,
        r#"reviews_total{review="TokenReview",outcome="rejected"} 1"#,
        r#"reviews_total{review="SubjectAccessReview",outcome="allowed"} 1"#,
        r#"reviews_total{review="SubjectAccessReview",outcome="denied"} 1"#,
        r#"review_cache_lookups_total{review="TokenReview",result="hit"} 1"#,
        r#"review_cache_lookups_total{review="SubjectAccessReview",result="hit"} 1"#,
        r#"review_cache_lookups_total{review="SubjectAccessReview",result="miss"} 2"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
