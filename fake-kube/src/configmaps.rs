//! The ConfigMaps of `kube-system`, here only `extension-apiserver-authentication`, as
//! kube-apiserver answers a kube-runtime watcher: a list carries the current resourceVersion; a
//! watch from a version streams every later event, `BOOKMARK`s when `allowWatchBookmarks` asks
//! for them, ends after `timeoutSeconds`, and answers a version older than the compaction point
//! (or a watch the server gives up on) with an `ERROR` event `410 Expired`, after which clients
//! list again.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::lock;
use crate::status::{self, failure};

const CONFIGMAP: &str = "extension-apiserver-authentication";

/// The ConfigMaps and their event history.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// The resourceVersion (etcd's revision: every change of any object moves it).
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

/// The ConfigMap API's state and what it saw.
#[derive(Debug)]
pub(crate) struct ConfigMaps {
    snapshot: watch::Sender<Snapshot>,
    lists: Mutex<Vec<String>>,
    watches: Mutex<Vec<String>>,
    bookmarks_sent: AtomicUsize,
}

impl ConfigMaps {
    pub(crate) fn new() -> ConfigMaps {
        ConfigMaps {
            snapshot: watch::Sender::new(Snapshot {
                revision: 1,
                ..Snapshot::default()
            }),
            lists: Mutex::new(Vec::new()),
            watches: Mutex::new(Vec::new()),
            bookmarks_sent: AtomicUsize::new(0),
        }
    }

    pub(crate) fn set(&self, data: &[(&str, &str)]) {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.snapshot.send_modify(|snapshot| {
            snapshot.revision += 1;
            let kind = if snapshot.current.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let object = configmap_object(snapshot.revision, &data);
            snapshot.current = Some(object.clone());
            snapshot.history.push((snapshot.revision, kind, object));
        });
    }

    pub(crate) fn delete(&self) {
        self.snapshot.send_modify(|snapshot| {
            if let Some(mut object) = snapshot.current.take() {
                snapshot.revision += 1;
                object["metadata"]["resourceVersion"] = json!(snapshot.revision.to_string());
                snapshot
                    .history
                    .push((snapshot.revision, "DELETED", object));
            }
        });
    }

    pub(crate) fn advance(&self, by: u64) {
        self.snapshot
            .send_modify(|snapshot| snapshot.revision += by);
    }

    pub(crate) fn bookmark(&self) {
        self.snapshot
            .send_modify(|snapshot| snapshot.bookmarks += 1);
    }

    pub(crate) fn compact(&self) {
        self.snapshot.send_modify(|snapshot| {
            snapshot.compacted = snapshot.revision;
            let compacted = snapshot.compacted;
            snapshot
                .history
                .retain(|(version, ..)| *version > compacted);
        });
    }

    pub(crate) fn expire_watches(&self) {
        self.compact();
        self.snapshot.send_modify(|snapshot| snapshot.expiries += 1);
    }

    pub(crate) fn close_watches(&self) {
        self.snapshot.send_modify(|snapshot| snapshot.closes += 1);
    }

    pub(crate) fn revision(&self) -> u64 {
        self.snapshot.borrow().revision
    }

    pub(crate) fn bookmarks_sent(&self) -> usize {
        self.bookmarks_sent.load(Ordering::Relaxed)
    }

    pub(crate) fn lists(&self) -> Vec<String> {
        lock(&self.lists).clone()
    }

    pub(crate) fn watches(&self) -> Vec<String> {
        lock(&self.watches).clone()
    }
}

fn configmap_object(version: u64, data: &BTreeMap<String, String>) -> Value {
    json!({"kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": CONFIGMAP, "namespace": "kube-system",
                     "uid": "5d1c3c9e-0000-4000-8000-000000000001",
                     "resourceVersion": version.to_string(),
                     "creationTimestamp": "2026-11-21T12:00:00Z"},
        "data": data})
}

pub(crate) async fn get_one(
    State(state): State<Arc<crate::State>>,
    Path(name): Path<String>,
) -> Response {
    let current = state.configmaps.snapshot.borrow().current.clone();
    match current {
        Some(object) if name == CONFIGMAP => status::json(StatusCode::OK, &object),
        _ => failure(
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
        _ => Err(failure(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("field label not supported: {selector}"),
        )),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn expired(message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "Expired", "code": 410, "message": message})
}

pub(crate) async fn list_or_watch(
    State(state): State<Arc<crate::State>>,
    RawQuery(query): RawQuery,
) -> Response {
    let configmaps = &state.configmaps;
    let query = query.unwrap_or_default();
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        lock(&configmaps.lists).push(query);
        let snapshot = configmaps.snapshot.borrow().clone();
        let mut items = Vec::new();
        if let Some(object) = &snapshot.current {
            match selected(params.get("fieldSelector"), object) {
                Ok(true) => {
                    // List items carry no kind or apiVersion, as kube-apiserver sends them.
                    let mut item = object.clone();
                    if let Some(fields) = item.as_object_mut() {
                        fields.remove("kind");
                        fields.remove("apiVersion");
                    }
                    items.push(item);
                }
                Ok(false) => {}
                Err(response) => return response,
            }
        }
        return status::json(
            StatusCode::OK,
            &json!({"kind": "ConfigMapList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": snapshot.revision.to_string()},
                   "items": items}),
        );
    }
    lock(&configmaps.watches).push(query.clone());
    let selector = params.get("fieldSelector").cloned();
    if let Err(response) = selected(selector.as_ref(), &json!({})) {
        return response;
    }
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs);
    let mut receiver = configmaps.snapshot.subscribe();
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
                let gone = expired(&format!(
                    "too old resource version: {version} ({})",
                    start.compacted + 1
                ));
                return (
                    [(header::CONTENT_TYPE, "application/json")],
                    Body::from(event_line("ERROR", &gone)),
                )
                    .into_response();
            }
            Ok(version) => seen = version,
            Err(_) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid resource version: {version}"),
                );
            }
        },
    }
    let marks = (start.bookmarks, start.expiries, start.closes);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let state = state.clone();
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
                        let gone =
                            expired("The resourceVersion for the provided watch is too old.");
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
                        state
                            .configmaps
                            .bookmarks_sent
                            .fetch_add(1, Ordering::Relaxed);
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
