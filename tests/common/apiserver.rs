//! A mocked Kubernetes API server for `ExternalMetric` objects, in kube's tower-test pattern:
//! the adapter's `kube::Client` talks to a `tower_test::mock` service, and this task answers each
//! request like kube-apiserver would (list, streaming watch, status patch, events), recording
//! every request so tests can assert on the exact PATCH and POST bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

const LIST_PATH: &str = "/apis/metrics.aws/v1alpha1/externalmetrics";

/// One request the adapter made.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub at: std::time::Instant,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<(String, String), Value>,
    resource_version: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    requests: Vec<Recorded>,
    failing_lists: usize,
}

impl State {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn notify(&mut self, kind: &str, object: &Value) {
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }
}

/// The mocked API server; drop it to stop answering.
#[derive(Clone)]
pub struct MockApiServer {
    state: Arc<Mutex<State>>,
}

impl MockApiServer {
    /// A client for the adapter and the server behind it.
    pub fn start() -> (kube::Client, MockApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<ResponseBody>>();
        let server = MockApiServer {
            state: Arc::new(Mutex::new(State::default())),
        };
        let state = server.state.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            while let Some((request, respond)) = handle.next_request().await {
                let response = answer(&state, request).await;
                respond.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), server)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Create or replace an object (as `kubectl apply` would), telling open watches.
    pub fn apply(&self, object: Value) {
        let mut state = self.lock();
        let mut object = object;
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let key = (namespace.clone(), name.clone());
        let previous = state.objects.get(&key).cloned();
        let generation = match &previous {
            Some(old) if old["spec"] == object["spec"] => old["metadata"]["generation"].clone(),
            Some(old) => json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1),
            None => json!(1),
        };
        let uid = previous
            .as_ref()
            .map(|old| old["metadata"]["uid"].clone())
            .unwrap_or_else(|| json!(format!("uid-{namespace}-{name}")));
        if let Some(old) = &previous
            && object.get("status").is_none()
            && let Some(status) = old.get("status")
        {
            object["status"] = status.clone();
        }
        object["apiVersion"] = json!("metrics.aws/v1alpha1");
        object["kind"] = json!("ExternalMetric");
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["uid"] = uid;
        object["metadata"]["generation"] = generation;
        object["metadata"]["resourceVersion"] = json!(state.bump());
        state.objects.insert(key, object.clone());
        state.notify(
            if previous.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            &object,
        );
    }

    /// Delete an object, telling open watches.
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        if let Some(mut object) = state
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        {
            object["metadata"]["resourceVersion"] = json!(state.bump());
            state.notify("DELETED", &object);
        }
    }

    /// Delete an object without telling anyone (as if the event was lost while disconnected).
    pub fn delete_silently(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        state
            .objects
            .remove(&(namespace.to_string(), name.to_string()));
        state.bump();
    }

    /// End every open watch with `410 Gone`, as kube-apiserver does when the watched resource
    /// version is too old: the client must list again.
    pub fn expire_watches(&self) {
        let mut state = self.lock();
        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410});
        state.notify("ERROR", &gone);
        state.watchers.clear();
    }

    /// Answer the next `count` list requests with a 500.
    pub fn fail_lists(&self, count: usize) {
        self.lock().failing_lists = count;
    }

    /// A stored object.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests with this method whose path ends with `suffix`.
    pub fn requests_to(&self, method: &str, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }

    /// List requests (not watches) so far.
    pub fn lists(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == LIST_PATH && !r.query.contains("watch=true"))
            .count()
    }

    /// Watches open now.
    pub fn open_watches(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Event bodies POSTed so far, as (reason, type, note, regarding name).
    pub fn events(&self) -> Vec<(String, String, String, String)> {
        self.requests_to("POST", "/events")
            .into_iter()
            .map(|r| {
                (
                    r.body["reason"].as_str().unwrap_or_default().to_string(),
                    r.body["type"].as_str().unwrap_or_default().to_string(),
                    r.body["note"].as_str().unwrap_or_default().to_string(),
                    r.body["regarding"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }

    /// Status PATCH bodies for one object so far.
    pub fn status_patches(&self, namespace: &str, name: &str) -> Vec<Value> {
        let path = format!("/namespaces/{namespace}/externalmetrics/{name}/status");
        self.requests_to("PATCH", &path)
            .into_iter()
            .map(|r| r.body)
            .collect()
    }
}

/// Wait (bounded) until `condition` holds.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn full(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(body).unwrap()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<ResponseBody> {
    full(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

async fn answer(state: &Arc<Mutex<State>>, request: Request<Body>) -> Response<ResponseBody> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut state = state.lock().unwrap();
    state.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
        at: std::time::Instant::now(),
    });
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["apis", "metrics.aws", "v1alpha1", "externalmetrics"])
            if query.contains("watch=true") =>
        {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Bytes>();
            state.watchers.push(sender);
            let stream = futures_util::stream::poll_fn(move |cx| {
                receiver
                    .poll_recv(cx)
                    .map(|line| line.map(|line| Ok::<_, Infallible>(Frame::data(line))))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed_unsync())
                .unwrap()
        }
        ("GET", ["apis", "metrics.aws", "v1alpha1", "externalmetrics"]) => {
            if state.failing_lists > 0 {
                state.failing_lists -= 1;
                return status(500, "InternalError", "etcdserver: request timed out");
            }
            let items: Vec<Value> = state.objects.values().cloned().collect();
            full(
                StatusCode::OK,
                &json!({"apiVersion": "metrics.aws/v1alpha1", "kind": "ExternalMetricList",
                        "metadata": {"resourceVersion": state.resource_version.to_string()},
                        "items": items}),
            )
        }
        (
            "PATCH",
            [
                "apis",
                "metrics.aws",
                "v1alpha1",
                "namespaces",
                namespace,
                "externalmetrics",
                name,
                "status",
            ],
        ) => {
            let key = (namespace.to_string(), name.to_string());
            let Some(mut object) = state.objects.get(&key).cloned() else {
                return status(404, "NotFound", "externalmetrics.metrics.aws not found");
            };
            if let Some(uid) = body["metadata"]["uid"].as_str()
                && object["metadata"]["uid"].as_str() != Some(uid)
            {
                return status(409, "Conflict", "Precondition failed: UID mismatch");
            }
            let mut status_object = object.get("status").cloned().unwrap_or(json!({}));
            merge_patch(&mut status_object, &body["status"]);
            object["status"] = status_object;
            object["metadata"]["resourceVersion"] = json!(state.bump());
            state.objects.insert(key, object.clone());
            // Like kube-apiserver: a status write is a MODIFIED event for every watcher.
            state.notify("MODIFIED", &object);
            full(StatusCode::OK, &object)
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
            full(StatusCode::CREATED, &body)
        }
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
            full(StatusCode::OK, &body)
        }
        _ => status(
            404,
            "NotFound",
            &format!("the mock does not serve {method} {path}"),
        ),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().unwrap();
            for (key, value) in fields {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// An `ExternalMetric` object.
pub fn external_metric(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "metrics.aws/v1alpha1",
        "kind": "ExternalMetric",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}
