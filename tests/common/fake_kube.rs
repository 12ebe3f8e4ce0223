//! A fake Kubernetes API server on 127.0.0.1 over HTTPS: just the parts an aggregated API server
//! calls, with the real request and response bodies:
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` (TokenReview),
//! - `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` (SubjectAccessReview),
//! - list and watch of ConfigMaps in `kube-system` (where
//!   `extension-apiserver-authentication` lives), as kube-apiserver answers a kube-runtime
//!   watcher: a list carries the current resourceVersion; a watch from a version streams every
//!   later event, `BOOKMARK`s when `allowWatchBookmarks` asks for them, ends after
//!   `timeoutSeconds`, and answers a version older than the compaction point (or a watch the
//!   server gives up on) with an `ERROR` event `410 Expired`, after which clients list again.
//! - list and `?watch=true` of one Secret by field selector (a delegate's CA, e.g. KEDA's
//!   `kedaorg-certs`), as kube's watcher asks for them.
//!
//! It checks what a real one checks (the caller's bearer token, JSON, apiVersion/kind, the
//! field selector) and records every review body it receives. `stop` drops the listener and
//! every open connection; `start` brings it back on the same address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::TestCa;

/// The token the adapter's kubeconfig carries (its service account's, in a cluster).
pub const ADAPTER_TOKEN: &str = "adapter-service-account-token";
const CONFIGMAP: &str = "extension-apiserver-authentication";

/// What the fake knows and what it saw.
#[derive(Default)]
pub struct FakeState {
    /// token -> `status.user` of a successful TokenReview.
    tokens: Mutex<HashMap<String, Value>>,
    /// (user, resource or non-resource path) pairs that SubjectAccessReview allows.
    allowed: Mutex<HashSet<(String, String)>>,
    /// Every TokenReview body received.
    pub token_reviews: Mutex<Vec<Value>>,
    /// Every SubjectAccessReview body received.
    pub access_reviews: Mutex<Vec<Value>>,
    /// Query strings of ConfigMap watches.
    pub watches: Mutex<Vec<String>>,
    /// Query strings of ConfigMap lists.
    pub lists: Mutex<Vec<String>>,
    /// Requests refused because the caller did not present the adapter's token.
    pub unauthenticated_calls: Mutex<usize>,
    /// Secret list and watch requests (query strings).
    pub secret_requests: Mutex<Vec<String>>,
    /// While `true`, each SubjectAccessReview is recorded and then left unanswered until it
    /// turns `false`: a review stays under way for exactly as long as a test says.
    pub hold_reviews: tokio::sync::watch::Sender<bool>,
    /// `BOOKMARK` events sent on ConfigMap watches.
    pub bookmarks_sent: Mutex<usize>,
}

/// Secrets by (namespace, name): their `data` (raw bytes), under one version counter.
type Secrets = (u64, BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>);

/// The fake API server.
pub struct FakeKube {
    pub addr: SocketAddr,
    pub ca: TestCa,
    pub state: Arc<FakeState>,
    pub kubeconfig: PathBuf,
    configmaps: watch::Sender<ConfigMaps>,
    secrets: watch::Sender<Secrets>,
    tls: Arc<rustls::ServerConfig>,
    running: Mutex<Option<JoinHandle<()>>>,
    _dir: tempfile::TempDir,
}

impl FakeKube {
    /// Start on 127.0.0.1:0, writing a kubeconfig that reaches it with [`ADAPTER_TOKEN`].
    pub async fn start() -> FakeKube {
        super::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fake-kube-apiserver-ca");
        let (cert, key) = ca.leaf("kube-apiserver");
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ca_path = dir.path().join("kube-ca.pem");
        std::fs::write(&ca_path, &ca.pem).unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: adapter\n  user:\n    token: {ADAPTER_TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\ncurrent-context: fake\n",
                addr.port(),
                ca_path.display()
            ),
        )
        .unwrap();
        let (configmaps, _) = watch::channel(ConfigMaps {
            revision: 1,
            ..ConfigMaps::default()
        });
        let (secrets, _) = watch::channel((1, BTreeMap::new()));
        let fake = FakeKube {
            addr,
            ca,
            state: Arc::new(FakeState::default()),
            kubeconfig,
            configmaps,
            secrets,
            tls: Arc::new(tls),
            running: Mutex::new(None),
            _dir: dir,
        };
        fake.serve(listener);
        fake
    }

    pub fn kubeconfig_arg(&self) -> String {
        format!("--kubeconfig={}", self.kubeconfig.display())
    }

    /// TokenReview answers `token` with this user.
    pub fn add_token(&self, token: &str, username: &str, uid: &str, groups: &[&str]) {
        self.state.tokens.lock().unwrap().insert(
            token.to_string(),
            json!({"username": username, "uid": uid, "groups": groups}),
        );
    }

    /// SubjectAccessReview allows `user` the metric (resource) or path `what`.
    pub fn allow(&self, user: &str, what: &str) {
        self.state
            .allowed
            .lock()
            .unwrap()
            .insert((user.to_string(), what.to_string()));
    }

    /// Publish (or replace) the authentication ConfigMap's data: an `ADDED` or `MODIFIED`
    /// event at a new resourceVersion.
    pub fn set_configmap(&self, data: &[(&str, &str)]) {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.configmaps.send_modify(|configmaps| {
            configmaps.revision += 1;
            let kind = if configmaps.current.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let object = configmap_object(configmaps.revision, &data);
            configmaps.current = Some(object.clone());
            configmaps.history.push((configmaps.revision, kind, object));
        });
    }

    /// Create or replace a Secret (watches see a MODIFIED event).
    pub fn set_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        self.secrets.send_modify(|(version, secrets)| {
            *version += 1;
            secrets.insert((namespace.to_string(), name.to_string()), data);
        });
    }

    /// Delete the ConfigMap: a `DELETED` event.
    pub fn delete_configmap(&self) {
        self.configmaps.send_modify(|configmaps| {
            if let Some(mut object) = configmaps.current.take() {
                configmaps.revision += 1;
                object["metadata"]["resourceVersion"] = json!(configmaps.revision.to_string());
                configmaps
                    .history
                    .push((configmaps.revision, "DELETED", object));
            }
        });
    }

    /// Other objects of the cluster change: the revision moves on without a ConfigMap event.
    pub fn advance_revision(&self, by: u64) {
        self.configmaps
            .send_modify(|configmaps| configmaps.revision += by);
    }

    /// Send a `BOOKMARK` at the current revision to every watch that asked for bookmarks (the
    /// API server does so about once a minute).
    pub fn bookmark(&self) {
        self.configmaps
            .send_modify(|configmaps| configmaps.bookmarks += 1);
    }

    /// Forget history up to now (etcd compaction): watching from an older version is `410`.
    pub fn compact(&self) {
        self.configmaps.send_modify(|configmaps| {
            configmaps.compacted = configmaps.revision;
            let compacted = configmaps.compacted;
            configmaps
                .history
                .retain(|(version, ..)| *version > compacted);
        });
    }

    /// End every open watch with an `ERROR` event `410 Expired`, as the API server does when a
    /// watcher fell too far behind; history is compacted too, so clients must list again.
    pub fn expire_watches(&self) {
        self.compact();
        self.configmaps
            .send_modify(|configmaps| configmaps.expiries += 1);
    }

    /// End every open watch cleanly, as `timeoutSeconds` does: clients resume from the last
    /// version they saw.
    pub fn close_watches(&self) {
        self.configmaps
            .send_modify(|configmaps| configmaps.closes += 1);
    }

    /// The cluster's current resourceVersion.
    pub fn revision(&self) -> u64 {
        self.configmaps.borrow().revision
    }

    /// `BOOKMARK` events sent so far.
    pub fn bookmarks_sent(&self) -> usize {
        *self.state.bookmarks_sent.lock().unwrap()
    }

    pub fn access_reviews(&self) -> Vec<Value> {
        self.state.access_reviews.lock().unwrap().clone()
    }

    pub fn token_reviews(&self) -> Vec<Value> {
        self.state.token_reviews.lock().unwrap().clone()
    }

    /// Drop the listener and every open connection: the API server is down.
    pub fn stop(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Come back on the same address.
    pub async fn restart(&self) {
        self.stop();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Shared {
            state: self.state.clone(),
            configmaps: self.configmaps.clone(),
            secrets: self.secrets.clone(),
        };
        let router = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_review),
            )
            .route(
                "/api/v1/namespaces/kube-system/configmaps/{name}",
                get(get_configmap),
            )
            .route(
                "/api/v1/namespaces/kube-system/configmaps",
                get(list_or_watch_configmaps),
            )
            .route("/api/v1/namespaces/{namespace}/secrets", get(secrets))
            .with_state(shared);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let task = tokio::spawn(async move {
            // Dropping this set (when the task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<FakeState>,
    configmaps: watch::Sender<ConfigMaps>,
    secrets: watch::Sender<Secrets>,
}

/// The ConfigMaps of `kube-system` (here only the authentication one) and their event history.
#[derive(Debug, Clone, Default)]
struct ConfigMaps {
    /// The cluster's resourceVersion (etcd's revision: every change of any object moves it).
    revision: u64,
    /// The object, if it exists.
    current: Option<Value>,
    /// Events after `compacted`: (resourceVersion, type, object).
    history: Vec<(u64, &'static str, Value)>,
    /// Versions up to this one cannot be watched from any more.
    compacted: u64,
    /// Bumped to make open watches send a bookmark, end with 410, or end cleanly.
    bookmarks: u64,
    expiries: u64,
    closes: u64,
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

/// The checks kube-apiserver makes before a create: authenticated caller, JSON, right type.
#[allow(clippy::result_large_err, reason = "the error is the response itself")]
fn check_create(
    state: &FakeState,
    headers: &HeaderMap,
    body: &Bytes,
    api_version: &str,
    kind: &str,
) -> Result<Value, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {ADAPTER_TOKEN}")) {
        *state.unauthenticated_calls.lock().unwrap() += 1;
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body must be JSON",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()))?;
    if value["apiVersion"] != api_version || value["kind"] != kind || !value["spec"].is_object() {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("expected a {api_version} {kind} with a spec"),
        ));
    }
    Ok(value)
}

async fn token_review(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let review = match check_create(
        &shared.state,
        &headers,
        &body,
        "authentication.k8s.io/v1",
        "TokenReview",
    ) {
        Ok(review) => review,
        Err(response) => return response,
    };
    shared
        .state
        .token_reviews
        .lock()
        .unwrap()
        .push(review.clone());
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status_body = match shared.state.tokens.lock().unwrap().get(token) {
        Some(user) => json!({"authenticated": true, "user": user,
                             "audiences": ["https://kubernetes.default.svc.cluster.local"]}),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    let answer = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status_body});
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

async fn access_review(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let review = match check_create(
        &shared.state,
        &headers,
        &body,
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
    ) {
        Ok(review) => review,
        Err(response) => return response,
    };
    shared
        .state
        .access_reviews
        .lock()
        .unwrap()
        .push(review.clone());
    // A closed sender cannot happen (the state owns it); answering then is fine too.
    let _ = shared
        .state
        .hold_reviews
        .subscribe()
        .wait_for(|held| !*held)
        .await;
    let spec = &review["spec"];
    let user = spec["user"].as_str().unwrap_or_default().to_string();
    let what = spec["resourceAttributes"]["resource"]
        .as_str()
        .or_else(|| spec["nonResourceAttributes"]["path"].as_str())
        .unwrap_or_default()
        .to_string();
    let allowed = shared
        .state
        .allowed
        .lock()
        .unwrap()
        .contains(&(user.clone(), what));
    // RBAC's own answers: a reason when allowed, none when it simply found no rule.
    let status_body = if allowed {
        json!({"allowed": true, "reason": format!("RBAC: allowed by ClusterRoleBinding \"test\" of ClusterRole \"test\" to User \"{user}\"")})
    } else {
        json!({"allowed": false})
    };
    let answer = json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": spec, "status": status_body});
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

fn configmap_object(version: u64, data: &BTreeMap<String, String>) -> Value {
    json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": CONFIGMAP, "namespace": "kube-system",
                     "uid": "5d1c3c9e-0000-4000-8000-000000000001",
                     "resourceVersion": version.to_string(),
                     "creationTimestamp": "2026-11-21T12:00:00Z"},
        "data": data})
}

fn authorized(state: &FakeState, headers: &HeaderMap) -> bool {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {ADAPTER_TOKEN}"));
    if !ok {
        *state.unauthenticated_calls.lock().unwrap() += 1;
    }
    ok
}

async fn get_configmap(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared.state, &headers) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let current = shared.configmaps.borrow().current.clone();
    match current {
        Some(object) if name == CONFIGMAP => (
            [(header::CONTENT_TYPE, "application/json")],
            object.to_string(),
        )
            .into_response(),
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("configmaps \"{name}\" not found"),
        ),
    }
}

/// Whether `object` matches a `fieldSelector` of the form `metadata.name=<name>` (the only
/// field this fake indexes; kube-apiserver also knows `metadata.namespace`).
#[allow(clippy::result_large_err, reason = "the error is the response itself")]
fn selected(selector: Option<&String>, object: &Value) -> Result<bool, Response> {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return Ok(true);
    };
    match selector.split_once('=') {
        Some(("metadata.name", name)) => Ok(object["metadata"]["name"] == name),
        _ => Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("field label not supported: {selector}"),
        )),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

async fn list_or_watch_configmaps(
    State(shared): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared.state, &headers) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let query = query.unwrap_or_default();
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        shared.state.lists.lock().unwrap().push(query);
        let configmaps = shared.configmaps.borrow().clone();
        let mut items = Vec::new();
        if let Some(object) = &configmaps.current {
            match selected(params.get("fieldSelector"), object) {
                Ok(true) => {
                    // List items carry no kind or apiVersion, as kube-apiserver sends them.
                    let mut item = object.clone();
                    let fields = item.as_object_mut().unwrap();
                    fields.remove("kind");
                    fields.remove("apiVersion");
                    items.push(item);
                }
                Ok(false) => {}
                Err(response) => return response,
            }
        }
        return (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"kind": "ConfigMapList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": configmaps.revision.to_string()},
                   "items": items})
            .to_string(),
        )
            .into_response();
    }
    shared.state.watches.lock().unwrap().push(query.clone());
    let selector = params.get("fieldSelector").cloned();
    if let Err(response) = selected(selector.as_ref(), &json!({})) {
        return response;
    }
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let mut receiver = shared.configmaps.subscribe();
    let start = receiver.borrow_and_update().clone();
    let from = params.get("resourceVersion").cloned().unwrap_or_default();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut seen = start.revision;
    match from.as_str() {
        // No version (or "any"): the current state as ADDED events, then what follows.
        "" | "0" => {
            if let Some(object) = &start.current
                && selected(selector.as_ref(), object).unwrap_or(false)
            {
                pending.push(event_line("ADDED", object));
            }
        }
        version => match version.parse::<u64>() {
            Ok(version) if version < start.compacted => {
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {version} ({})", start.compacted + 1)});
                return (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from(event_line("ERROR", &gone)),
                )
                    .into_response();
            }
            Ok(version) => seen = version,
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {version}"),
                );
            }
        },
    }
    let marks = (start.bookmarks, start.expiries, start.closes);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let state = shared.state.clone();
    // One JSON event per line, as the API server streams them.
    let events = futures_util::stream::unfold(
        (receiver, seen, marks, pending, false),
        move |(mut receiver, mut seen, mut marks, mut pending, mut done)| {
            let selector = selector.clone();
            let state = state.clone();
            async move {
                loop {
                    if let Some(line) = pending.pop() {
                        return Some((
                            Ok::<_, Infallible>(line),
                            (receiver, seen, marks, pending, done),
                        ));
                    }
                    if done {
                        return None;
                    }
                    let now = receiver.borrow_and_update().clone();
                    if now.closes != marks.2 {
                        return None;
                    }
                    if now.expiries != marks.1 {
                        done = true;
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "Expired", "code": 410,
                            "message": "The resourceVersion for the provided watch is too old."});
                        pending.push(event_line("ERROR", &gone));
                        continue;
                    }
                    let mut lines: Vec<Bytes> = now
                        .history
                        .iter()
                        .filter(|(version, _, object)| {
                            *version > seen && selected(selector.as_ref(), object).unwrap_or(false)
                        })
                        .map(|(_, kind, object)| event_line(kind, object))
                        .collect();
                    if let Some((version, ..)) = now.history.last() {
                        seen = seen.max(*version);
                    }
                    if bookmarks && now.bookmarks != marks.0 {
                        marks.0 = now.bookmarks;
                        *state.bookmarks_sent.lock().unwrap() += 1;
                        seen = seen.max(now.revision);
                        lines.push(event_line(
                            "BOOKMARK",
                            &json!({"kind": "ConfigMap", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": now.revision.to_string(),
                                                 "creationTimestamp": null}}),
                        ));
                    }
                    if !lines.is_empty() {
                        lines.reverse();
                        pending = lines;
                        continue;
                    }
                    let changed = receiver.changed();
                    let ended = match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, changed)
                            .await
                            .map_or(true, |r| r.is_err()),
                        None => changed.await.is_err(),
                    };
                    if ended {
                        return None;
                    }
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(events),
    )
        .into_response()
}

fn secret_object(
    namespace: &str,
    name: &str,
    version: u64,
    data: &BTreeMap<String, Vec<u8>>,
) -> Value {
    // k8s-openapi's ByteString serialises as base64, as the API server does.
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            resource_version: Some(version.to_string()),
            uid: Some(format!("uid-secret-{namespace}-{name}")),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone())))
                .collect(),
        ),
        type_: Some("kubernetes.io/tls".to_string()),
        ..Default::default()
    };
    let mut value = serde_json::to_value(secret).unwrap();
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

/// List or watch Secrets of one namespace; only by `metadata.name` field selector, which is what
/// RBAC `resourceNames` can authorize.
async fn secrets(
    State(shared): State<Shared>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared.state, &headers) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let query = query.unwrap_or_default();
    shared
        .state
        .secret_requests
        .lock()
        .unwrap()
        .push(query.clone());
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let Some(name) = params
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_string)
    else {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "secrets is forbidden: only list/watch by metadata.name is allowed",
        );
    };
    let key = (namespace.clone(), name.clone());
    if params.get("watch").map(String::as_str) != Some("true") {
        let (version, secrets) = shared.secrets.borrow().clone();
        let items: Vec<Value> = secrets
            .get(&key)
            .map(|data| vec![secret_object(&namespace, &name, version, data)])
            .unwrap_or_default();
        return (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"kind": "SecretList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": version.to_string()}, "items": items})
            .to_string(),
        )
            .into_response();
    }
    let since: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let receiver = shared.secrets.subscribe();
    let events = futures_util::stream::unfold(
        (receiver, since, namespace, name),
        |(mut receiver, mut seen, namespace, name)| async move {
            loop {
                let (version, secrets) = receiver.borrow_and_update().clone();
                if version > seen {
                    seen = version;
                    if let Some(data) = secrets.get(&(namespace.clone(), name.clone())) {
                        let line = format!(
                            "{}\n",
                            json!({"type": "MODIFIED", "object": secret_object(&namespace, &name, version, data)})
                        );
                        return Some((
                            Ok::<_, Infallible>(Bytes::from(line)),
                            (receiver, seen, namespace, name),
                        ));
                    }
                }
                if receiver.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(events),
    )
        .into_response()
}
