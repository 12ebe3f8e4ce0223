//! `ExternalMetric` objects (`metrics.aws/v1alpha1`) and Events (`events.k8s.io/v1`): list,
//! streaming watch (every change is an event, a status write included), status merge patch
//! (with the UID precondition), and Event creates and patches. Every request is recorded, so
//! tests can assert on the exact PATCH and POST bodies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::status::{self, failure};
use crate::{Caller, lock};

const LIST_PATH: &str = "/apis/metrics.aws/v1alpha1/externalmetrics";

/// One request the `ExternalMetric` and Event endpoints received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `PATCH`, `POST`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The JSON body (`null` when there was none).
    pub body: Value,
    /// When it arrived (tokio's clock).
    pub at: Instant,
    /// The caller's bearer token (which replica wrote, when several share the fake).
    pub caller: String,
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<(String, String), Value>,
    resource_version: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    requests: Vec<Recorded>,
    failing_lists: usize,
}

impl Store {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn notify(&mut self, kind: &str, object: &Value) {
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    fn record(&mut self, caller: &str, method: &Method, uri: &Uri, body: &Bytes) {
        self.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            at: Instant::now(),
            caller: caller.to_string(),
        });
    }
}

/// The `ExternalMetric` API and Events.
#[derive(Debug, Default)]
pub struct ExternalMetrics {
    store: Mutex<Store>,
}

impl ExternalMetrics {
    /// Create or replace an object (as `kubectl apply` would), telling open watches. A new spec
    /// bumps `metadata.generation`; a status in the old object is kept unless `object` has one.
    pub fn apply(&self, object: Value) {
        let mut store = lock(&self.store);
        let mut object = object;
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (namespace.clone(), name.clone());
        let previous = store.objects.get(&key).cloned();
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
        object["metadata"]["resourceVersion"] = json!(store.bump());
        store.objects.insert(key, object.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.notify(kind, &object);
    }

    /// Delete an object, telling open watches.
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut store = lock(&self.store);
        if let Some(mut object) = store
            .objects
            .remove(&(namespace.to_string(), name.to_string()))
        {
            object["metadata"]["resourceVersion"] = json!(store.bump());
            store.notify("DELETED", &object);
        }
    }

    /// Delete an object without telling anyone (as if the event was lost while disconnected).
    pub fn delete_silently(&self, namespace: &str, name: &str) {
        let mut store = lock(&self.store);
        store
            .objects
            .remove(&(namespace.to_string(), name.to_string()));
        store.bump();
    }

    /// End every open watch with `410 Gone`, as kube-apiserver does when the watched resource
    /// version is too old: the client must list again.
    pub fn expire_watches(&self) {
        let mut store = lock(&self.store);
        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410});
        store.notify("ERROR", &gone);
        store.watchers.clear();
    }

    /// Answer the next `count` list requests with a 500.
    pub fn fail_lists(&self, count: usize) {
        lock(&self.store).failing_lists = count;
    }

    /// A stored object.
    pub fn object(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.store)
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.store).requests.clone()
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
        lock(&self.store)
            .watchers
            .iter()
            .filter(|w| !w.is_closed())
            .count()
    }

    /// Event bodies POSTed so far, as (reason, type, note, regarding name).
    pub fn events(&self) -> Vec<(String, String, String, String)> {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
        self.requests_to("POST", "/events")
            .into_iter()
            .map(|r| {
                (
                    text(&r.body["reason"]),
                    text(&r.body["type"]),
                    text(&r.body["note"]),
                    text(&r.body["regarding"]["name"]),
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

/// An `ExternalMetric` object.
pub fn external_metric(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "metrics.aws/v1alpha1",
        "kind": "ExternalMetric",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

pub(crate) async fn list_or_watch(
    State(state): State<Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    let mut store = lock(&state.external_metrics.store);
    store.record(&caller, &method, &uri, &Bytes::new());
    if query.unwrap_or_default().contains("watch=true") {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Bytes>();
        store.watchers.push(sender);
        let stream = futures_util::stream::poll_fn(move |cx| {
            receiver
                .poll_recv(cx)
                .map(|line| line.map(Ok::<_, Infallible>))
        });
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    if store.failing_lists > 0 {
        store.failing_lists -= 1;
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    let items: Vec<Value> = store.objects.values().cloned().collect();
    status::json(
        StatusCode::OK,
        &json!({"apiVersion": "metrics.aws/v1alpha1", "kind": "ExternalMetricList",
                "metadata": {"resourceVersion": store.resource_version.to_string()},
                "items": items}),
    )
}

pub(crate) async fn patch_status(
    State(state): State<Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut store = lock(&state.external_metrics.store);
    store.record(&caller, &method, &uri, &body);
    let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = (namespace, name);
    let Some(mut object) = store.objects.get(&key).cloned() else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "externalmetrics.metrics.aws not found",
        );
    };
    if let Some(uid) = patch["metadata"]["uid"].as_str()
        && object["metadata"]["uid"].as_str() != Some(uid)
    {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            "Precondition failed: UID mismatch",
        );
    }
    let mut status_object = object.get("status").cloned().unwrap_or(json!({}));
    merge_patch(&mut status_object, &patch["status"]);
    object["status"] = status_object;
    object["metadata"]["resourceVersion"] = json!(store.bump());
    store.objects.insert(key, object.clone());
    // Like kube-apiserver: a status write is a MODIFIED event for every watcher.
    store.notify("MODIFIED", &object);
    status::json(StatusCode::OK, &object)
}

pub(crate) async fn create_event(
    State(state): State<Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut store = lock(&state.external_metrics.store);
    store.record(&caller, &method, &uri, &body);
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    status::json(StatusCode::CREATED, &event)
}

pub(crate) async fn patch_event(
    State(state): State<Arc<crate::State>>,
    Extension(Caller(caller)): Extension<Caller>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut store = lock(&state.external_metrics.store);
    store.record(&caller, &method, &uri, &body);
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    status::json(StatusCode::OK, &event)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Some(map) = target.as_object_mut() {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}
