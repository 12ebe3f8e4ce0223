//! A fake Kubernetes API server for the adapter's tests and benchmarks (dev-only, never shipped).
//!
//! One axum [`Router`] over shared state answers like kube-apiserver for the APIs the adapter
//! calls, with the real request and response bodies and `metav1.Status` errors:
//! - Leases (`coordination.k8s.io/v1`): get, list, create, update, delete, with optimistic
//!   concurrency on `metadata.resourceVersion` ([`Leases`]);
//! - `TokenReview` and `SubjectAccessReview` creates;
//! - ConfigMaps of `kube-system` (list, get, watch with bookmarks and `410 Expired`) and
//!   Secrets (list and watch by name);
//! - `ExternalMetric` list, watch and status patch, and Events ([`ExternalMetrics`]).
//!
//! It is reachable two ways, over the same state:
//! - in process: [`FakeKube::client`] is a `kube::Client` whose transport is the router itself,
//!   so a test can run under `tokio::time::pause()` (no sockets, no TLS);
//! - over HTTPS on 127.0.0.1:0, with its own CA and a kubeconfig: [`FakeKube::serve`] (for tests
//!   that run the adapter as a process, and for benchmarks).
//!
//! Callers are told apart by their bearer token, as kube-apiserver tells service accounts
//! apart: every request must carry a known token ([`ADAPTER_TOKEN`] by default, or one given to
//! [`FakeKube::client`] or [`FakeKube::add_caller`]), and [`Faults`] can cut off one of them.
//!
//! Simplifications, each harmless for what the adapter does: resource versions are counted per
//! kind (etcd has one revision for the whole cluster), there is no admission, no field manager
//! (`managedFields`), no protobuf, and RBAC is the allow-list of [`FakeKube::allow`].

mod configmaps;
mod external_metrics;
mod faults;
mod https;
mod leases;
mod reviews;
mod secrets;
mod status;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post};
use serde_json::Value;

pub use external_metrics::{ExternalMetrics, Recorded, external_metric};
pub use faults::{Down, Faults, Partition};
pub use https::{Error, Served};
pub use leases::{LeaseVerb, LeaseWrite, Leases};

/// The bearer token of the adapter's own ServiceAccount: accepted from the start, and the one
/// in the kubeconfig that [`FakeKube::serve`] writes.
pub const ADAPTER_TOKEN: &str = "adapter-service-account-token";

/// The fake API server: shared state and the router over it. Clones share everything.
#[derive(Clone)]
pub struct FakeKube {
    state: Arc<State>,
    router: Router,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube").finish_non_exhaustive()
    }
}

/// Everything the fake knows and saw.
pub(crate) struct State {
    /// Bearer tokens the API server accepts (its ServiceAccounts).
    callers: Mutex<HashSet<String>>,
    /// Requests refused because they carried no known token.
    unauthenticated: AtomicUsize,
    pub(crate) reviews: reviews::Reviews,
    pub(crate) configmaps: configmaps::ConfigMaps,
    pub(crate) secrets: secrets::Secrets,
    pub(crate) leases: Leases,
    pub(crate) external_metrics: ExternalMetrics,
    pub(crate) faults: Faults,
}

/// The caller of a request, by its bearer token (put in the request's extensions once the
/// token is known).
#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) String);

impl Default for FakeKube {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeKube {
    /// A fake with no objects, accepting [`ADAPTER_TOKEN`].
    pub fn new() -> FakeKube {
        let state = Arc::new(State {
            callers: Mutex::new(HashSet::from([ADAPTER_TOKEN.to_string()])),
            unauthenticated: AtomicUsize::new(0),
            reviews: reviews::Reviews::default(),
            configmaps: configmaps::ConfigMaps::new(),
            secrets: secrets::Secrets::new(),
            leases: Leases::default(),
            external_metrics: ExternalMetrics::default(),
            faults: Faults::default(),
        });
        let router = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(reviews::token_review),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(reviews::access_review),
            )
            .route(
                "/api/v1/namespaces/kube-system/configmaps/{name}",
                get(configmaps::get_one),
            )
            .route(
                "/api/v1/namespaces/kube-system/configmaps",
                get(configmaps::list_or_watch),
            )
            .route(
                "/api/v1/namespaces/{namespace}/secrets",
                get(secrets::list_or_watch),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
                get(leases::list).post(leases::create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
                get(leases::get_one)
                    .put(leases::update)
                    .delete(leases::delete),
            )
            .route(
                "/apis/metrics.aws/v1alpha1/externalmetrics",
                get(external_metrics::list_or_watch),
            )
            .route(
                "/apis/metrics.aws/v1alpha1/namespaces/{namespace}/externalmetrics/{name}/status",
                patch(external_metrics::patch_status),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events",
                post(external_metrics::create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
                patch(external_metrics::patch_event),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(state.clone(), authenticate))
            .with_state(state.clone());
        FakeKube { state, router }
    }

    /// The router itself, for a test that wants to drive it with `oneshot` (no faults, no
    /// token added: the request must carry its own `Authorization` header).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// A `kube::Client` whose transport is this fake, in process, presenting `token` (accepted
    /// from now on). Faults apply to it as to a connection. Its default namespace is `default`.
    /// Call it inside a tokio runtime (the client spawns its request buffer there).
    pub fn client(&self, token: &str) -> kube::Client {
        self.add_caller(token);
        kube::Client::new(
            faults::Transport::new(self.clone(), Some(token.to_string())),
            "default",
        )
    }

    /// Accept requests carrying `token` (a ServiceAccount of the cluster).
    pub fn add_caller(&self, token: &str) {
        lock(&self.state.callers).insert(token.to_string());
    }

    /// The Lease API: its objects, what was written, and a gate to make writers race.
    pub fn leases(&self) -> &Leases {
        &self.state.leases
    }

    /// The faults: outage, latency, partitions of one caller.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// The `ExternalMetric` API and Events: objects, watches, and every request they received.
    pub fn external_metrics(&self) -> &ExternalMetrics {
        &self.state.external_metrics
    }

    /// Requests refused with 401 because they carried no known token.
    pub fn unauthenticated_calls(&self) -> usize {
        self.state.unauthenticated.load(Ordering::Relaxed)
    }

    /// TokenReview answers `token` as this user (`uid` empty: none).
    pub fn add_token(&self, token: &str, username: &str, uid: &str, groups: &[&str]) {
        self.state.reviews.add_token(token, username, uid, groups);
    }

    /// SubjectAccessReview allows `user` the metric (resource) or path `what`.
    pub fn allow(&self, user: &str, what: &str) {
        self.state.reviews.allow(user, what);
    }

    /// SubjectAccessReview allows `user` everything.
    pub fn allow_user(&self, user: &str) {
        self.state.reviews.allow(user, reviews::ANY);
    }

    /// SubjectAccessReview allows everyone everything.
    pub fn allow_all(&self) {
        self.state.reviews.allow(reviews::ANY, reviews::ANY);
    }

    /// While `true`, SubjectAccessReviews are recorded and left unanswered until a later
    /// `hold_reviews(false)`.
    pub fn hold_reviews(&self, held: bool) {
        self.state.reviews.hold(held);
    }

    /// Every SubjectAccessReview body received.
    pub fn access_reviews(&self) -> Vec<Value> {
        self.state.reviews.access_reviews()
    }

    /// How many SubjectAccessReviews were answered.
    pub fn access_review_count(&self) -> usize {
        self.state.reviews.access_review_count()
    }

    /// Every TokenReview body received.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.state.reviews.token_reviews()
    }

    /// Publish (or replace) the `kube-system/extension-apiserver-authentication` ConfigMap's
    /// data: an `ADDED` or `MODIFIED` event at a new resourceVersion.
    pub fn set_configmap(&self, data: &[(&str, &str)]) {
        self.state.configmaps.set(data);
    }

    /// Delete that ConfigMap: a `DELETED` event.
    pub fn delete_configmap(&self) {
        self.state.configmaps.delete();
    }

    /// Other objects of the cluster change: the ConfigMaps' revision moves on without an event.
    pub fn advance_revision(&self, by: u64) {
        self.state.configmaps.advance(by);
    }

    /// Send a `BOOKMARK` at the current revision to every ConfigMap watch that asked for
    /// bookmarks (the API server does so about once a minute).
    pub fn bookmark(&self) {
        self.state.configmaps.bookmark();
    }

    /// Forget ConfigMap history up to now (etcd compaction): watching from an older version is
    /// `410 Expired`.
    pub fn compact(&self) {
        self.state.configmaps.compact();
    }

    /// End every open ConfigMap watch with an `ERROR` event `410 Expired`, as the API server
    /// does when a watcher fell too far behind; history is compacted too, so clients must list
    /// again.
    pub fn expire_watches(&self) {
        self.state.configmaps.expire_watches();
    }

    /// End every open ConfigMap watch cleanly, as `timeoutSeconds` does: clients resume from
    /// the last version they saw.
    pub fn close_watches(&self) {
        self.state.configmaps.close_watches();
    }

    /// The ConfigMaps' current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.state.configmaps.revision()
    }

    /// `BOOKMARK` events sent on ConfigMap watches so far.
    pub fn bookmarks_sent(&self) -> usize {
        self.state.configmaps.bookmarks_sent()
    }

    /// Query strings of ConfigMap lists so far.
    pub fn configmap_lists(&self) -> Vec<String> {
        self.state.configmaps.lists()
    }

    /// Query strings of ConfigMap watches so far.
    pub fn configmap_watches(&self) -> Vec<String> {
        self.state.configmaps.watches()
    }

    /// Create or replace a Secret (watches see a `MODIFIED` event).
    pub fn set_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        self.state.secrets.set(namespace, name, data);
    }

    /// Query strings of Secret lists and watches so far.
    pub fn secret_requests(&self) -> Vec<String> {
        self.state.secrets.requests()
    }
}

/// A lock that survives a panicking holder: the fake's state stays usable for the assertions
/// that follow a failed one.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// kube-apiserver authenticates before anything else: an unknown or missing token is a 401,
/// whatever the path.
async fn authenticate(
    AxumState(state): AxumState<Arc<State>>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = bearer(request.headers())
        .filter(|token| lock(&state.callers).contains(*token))
        .map(str::to_string);
    let Some(caller) = caller else {
        state.unauthenticated.fetch_add(1, Ordering::Relaxed);
        return status::failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    request.extensions_mut().insert(Caller(caller));
    next.run(request).await
}

async fn not_found() -> Response {
    status::failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource",
    )
}

async fn method_not_allowed() -> Response {
    status::failure(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}
