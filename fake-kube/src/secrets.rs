//! Secrets: list and `?watch=true` of one Secret by field selector (a delegate's CA, e.g.
//! KEDA's `kedaorg-certs`), as kube's watcher asks for them. Only by `metadata.name`, which is
//! what RBAC `resourceNames` can authorize.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::lock;
use crate::status::{self, failure};

/// Secrets by (namespace, name): their `data` (raw bytes), under one version counter.
type Snapshot = (u64, BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>);

/// The Secret API's state and what it saw.
#[derive(Debug)]
pub(crate) struct Secrets {
    snapshot: watch::Sender<Snapshot>,
    requests: Mutex<Vec<String>>,
}

impl Secrets {
    pub(crate) fn new() -> Secrets {
        Secrets {
            snapshot: watch::Sender::new((1, BTreeMap::new())),
            requests: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn set(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        let data = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        self.snapshot.send_modify(|(version, secrets)| {
            *version += 1;
            secrets.insert((namespace.to_string(), name.to_string()), data);
        });
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }
}

fn secret_object(
    namespace: &str,
    name: &str,
    version: u64,
    data: &BTreeMap<String, Vec<u8>>,
) -> Value {
    // k8s-openapi's ByteString serialises as base64, as the API server does.
    let secret = Secret {
        metadata: ObjectMeta {
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
    let mut value = serde_json::to_value(secret).unwrap_or(Value::Null);
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Secret");
    value
}

pub(crate) async fn list_or_watch(
    State(state): State<Arc<crate::State>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let secrets = &state.secrets;
    let query = query.unwrap_or_default();
    lock(&secrets.requests).push(query.clone());
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let Some(name) = params
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_string)
    else {
        return failure(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "secrets is forbidden: only list/watch by metadata.name is allowed",
        );
    };
    let key = (namespace.clone(), name.clone());
    if params.get("watch").map(String::as_str) != Some("true") {
        let (version, snapshot) = secrets.snapshot.borrow().clone();
        let items: Vec<Value> = snapshot
            .get(&key)
            .map(|data| vec![secret_object(&namespace, &name, version, data)])
            .unwrap_or_default();
        return status::json(
            StatusCode::OK,
            &json!({"kind": "SecretList", "apiVersion": "v1",
                   "metadata": {"resourceVersion": version.to_string()}, "items": items}),
        );
    }
    let since: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let receiver = secrets.snapshot.subscribe();
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
