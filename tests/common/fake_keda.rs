//! A fake of KEDA's metrics server (`keda-operator-metrics-apiserver`), for forwarding tests: the
//! real one needs the KEDA operator, its gRPC metrics service and a cluster, none of which run
//! here. It behaves as KEDA's adapter does (kedacore/keda `pkg/provider/provider.go` on
//! custom-metrics-apiserver and `k8s.io/apiserver`), as far as a caller can tell:
//!
//! - HTTPS (HTTP/2 and HTTP/1.1) with a serving certificate from KEDA's own CA (the one in
//!   Secret `kedaorg-certs`, key `ca.crt`); the CA can be rotated.
//! - Delegated authentication like any aggregated API server: a client certificate from the
//!   client CA (user = CN), else a bearer token checked with a `TokenReview` against the
//!   (fake) Kubernetes API; neither is `401` with kube's Unauthorized `Status`. Then a
//!   `SubjectAccessReview`: `list` on the metric in the namespace; a refusal is kube's `403`.
//! - Discovery lists one placeholder resource, `externalmetric` (KEDA's provider embeds
//!   custom-metrics-apiserver's `DefaultExternalMetricsProvider` and lists nothing real).
//! - A value request needs the selector key `scaledobject.keda.sh/name`. Without it KEDA's
//!   provider returns a plain Go error, which the apiserver answers as a `500` `Status` with no
//!   reason: `scaledObject name is not specified`. An unknown ScaledObject or a metric it does not
//!   have are `500`s too, with the gRPC error text the operator's answer carries. A known one is
//!   an `ExternalMetricValueList` (names `s<index>-<scaler>-<...>`, `metricLabels: null`, no
//!   window), encoded as Go's encoder writes it (with its trailing newline).
//!
//! It records every request, and can be held (requests wait until released), stopped and
//! restarted on the same address.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::TestCa;
use fake_kube::{ADAPTER_TOKEN, Served};

/// The label KEDA puts on the HPAs it creates, naming the ScaledObject.
pub const SCALED_OBJECT_KEY: &str = "scaledobject.keda.sh/name";
/// The discovery path.
pub const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    /// The bearer token presented, if any (tests only: the real one never logs it).
    pub token: Option<String>,
    /// The CN of the client certificate presented, if any.
    pub client_cn: Option<String>,
    pub audit_id: Option<String>,
    pub accept: Option<String>,
    pub http2: bool,
}

/// (namespace, ScaledObject) -> [(metric name, value)]
type ScaledObjects = HashMap<(String, String), Vec<(String, String)>>;

#[derive(Default)]
struct KedaState {
    scaled_objects: Mutex<ScaledObjects>,
    seen: Mutex<Vec<Seen>>,
    /// How many value requests are inside the handler right now.
    in_flight: Mutex<usize>,
}

/// The fake KEDA metrics server.
pub struct FakeKeda {
    pub addr: SocketAddr,
    ca: Mutex<TestCa>,
    /// CA for client certificates presented to it (the cluster's client CA).
    pub client_ca: TestCa,
    kube_addr: SocketAddr,
    kube_ca: String,
    state: Arc<KedaState>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    held: watch::Sender<bool>,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl FakeKeda {
    /// Start on 127.0.0.1:0 with its own CA, reviewing through `kube`.
    pub async fn start(kube: &Served) -> FakeKeda {
        super::install_crypto();
        let ca = TestCa::new("keda-ca");
        let client_ca = TestCa::new("kubernetes-client-ca");
        let tls = Arc::new(ArcSwap::from_pointee(server_config(&ca, &client_ca)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (held, _) = watch::channel(false);
        let fake = FakeKeda {
            addr: listener.local_addr().unwrap(),
            ca: Mutex::new(ca),
            client_ca,
            kube_addr: kube.addr,
            kube_ca: kube.ca_pem.clone(),
            state: Arc::new(KedaState::default()),
            tls,
            held,
            running: Mutex::new(None),
        };
        fake.serve(listener);
        fake
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The PEM of the CA its serving certificate chains to now.
    pub fn ca_pem(&self) -> String {
        self.ca.lock().unwrap().pem.clone()
    }

    /// Rotate its CA and serving certificate, as KEDA's operator does; returns the new CA PEM.
    pub fn rotate_ca(&self) -> String {
        let ca = TestCa::new("keda-ca-rotated");
        self.tls
            .store(Arc::new(server_config(&ca, &self.client_ca)));
        let pem = ca.pem.clone();
        *self.ca.lock().unwrap() = ca;
        pem
    }

    /// A ScaledObject with its metrics (e.g. `s0-rabbitmq-orders` = `"7"`).
    pub fn add_scaled_object(&self, namespace: &str, name: &str, metrics: &[(&str, &str)]) {
        self.state.scaled_objects.lock().unwrap().insert(
            (namespace.to_string(), name.to_string()),
            metrics
                .iter()
                .map(|(m, v)| (m.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Value requests (anything but discovery) so far.
    pub fn value_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path != DISCOVERY)
            .collect()
    }

    /// Discovery requests so far.
    pub fn discovery_requests(&self) -> usize {
        self.seen().iter().filter(|s| s.path == DISCOVERY).count()
    }

    /// Value requests being handled right now (held ones included).
    pub fn in_flight(&self) -> usize {
        *self.state.in_flight.lock().unwrap()
    }

    /// Hold every value request until [`release`](Self::release).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Drop the listener and every connection: KEDA is down.
    pub fn stop(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Come back on the same address (once the old listener is really closed).
    pub async fn restart(&self) {
        let task = self.running.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Shared {
            state: self.state.clone(),
            reviews: reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(self.kube_ca.as_bytes()).unwrap()])
                .build()
                .unwrap(),
            kube: format!("https://127.0.0.1:{}", self.kube_addr.port()),
            held: self.held.subscribe(),
        };
        let router = Router::new()
            .route(DISCOVERY, get(discovery))
            .route(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
                get(value),
            )
            .with_state(shared);
        let tls = self.tls.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                let router = router.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, connection) = tls.get_ref();
                    let peer = Peer {
                        cn: connection
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| {
                                cloudwatch_metrics_adapter::auth::x509::read(cert).ok()
                            })
                            .and_then(|facts| facts.subject.common_name),
                        http2: connection.alpn_protocol() == Some(b"h2"),
                    };
                    let service = hyper::service::service_fn(move |mut request: Request<_>| {
                        request.extensions_mut().insert(peer.clone());
                        router.clone().oneshot(request.map(Body::new))
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }
}

impl Drop for FakeKeda {
    fn drop(&mut self) {
        self.stop();
    }
}

fn server_config(ca: &TestCa, client_ca: &TestCa) -> rustls::ServerConfig {
    let (cert, key) = ca.leaf("keda-operator-metrics-apiserver");
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    // Asks for a client certificate, never requires one (tokens are the other way in).
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

#[derive(Clone)]
struct Peer {
    cn: Option<String>,
    http2: bool,
}

#[derive(Clone)]
struct Shared {
    state: Arc<KedaState>,
    reviews: reqwest::Client,
    kube: String,
    held: watch::Receiver<bool>,
}

/// A `Status` as k8s.io/apiserver writes it: Go's field order, the encoder's trailing newline,
/// `reason` omitted when it is unknown (a plain Go error).
fn status(
    code: u16,
    reason: Option<&str>,
    message: &str,
    details: Option<(&str, &str)>,
) -> Response {
    let q = |text: &str| serde_json::to_string(text).unwrap();
    let mut body = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{}"#,
        q(message)
    );
    if let Some(reason) = reason {
        body.push_str(&format!(r#","reason":{}"#, q(reason)));
    }
    if let Some((group, kind)) = details {
        body.push_str(&format!(
            r#","details":{{"group":{},"kind":{}}}"#,
            q(group),
            q(kind)
        ));
    }
    body.push_str(&format!(r#","code":{code}}}"#));
    go_json(StatusCode::from_u16(code).unwrap(), body)
}

fn go_json(code: StatusCode, mut body: String) -> Response {
    body.push('\n');
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An `ExternalMetricValueList` in Go's field order (`metricLabels` null, no window).
fn value_list(items: &[(&str, &str)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(name, value)| {
            format!(
                r#"{{"metricName":{},"metricLabels":null,"timestamp":"2026-11-27T10:00:00Z","value":{}}}"#,
                serde_json::to_string(name).unwrap(),
                serde_json::to_string(value).unwrap()
            )
        })
        .collect();
    format!(
        r#"{{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn record(shared: &Shared, request: &Request, query: &Option<String>) -> Seen {
    let headers = request.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let peer = request.extensions().get::<Peer>().cloned();
    let seen = Seen {
        path: request.uri().path().to_string(),
        query: query.clone(),
        token: text("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_string)),
        client_cn: peer.as_ref().and_then(|p| p.cn.clone()),
        audit_id: text("audit-id"),
        accept: text("accept"),
        http2: peer.is_some_and(|p| p.http2),
    };
    shared.state.seen.lock().unwrap().push(seen.clone());
    seen
}

/// Who is calling: client certificate, else TokenReview, else nobody.
async fn authenticate(shared: &Shared, seen: &Seen) -> Option<(String, Vec<String>)> {
    if let Some(cn) = &seen.client_cn {
        return Some((cn.clone(), vec!["system:authenticated".to_string()]));
    }
    let token = seen.token.as_ref()?;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token}});
    let answer: Value = shared
        .reviews
        .post(format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            shared.kube
        ))
        .bearer_auth(ADAPTER_TOKEN)
        .json(&review)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    if answer["status"]["authenticated"] != true {
        return None;
    }
    let user = answer["status"]["user"]["username"].as_str()?.to_string();
    let groups = answer["status"]["user"]["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Some((user, groups))
}

async fn authorize(shared: &Shared, user: &str, groups: &[String], attributes: Value) -> bool {
    let mut spec = json!({"user": user, "groups": groups});
    if attributes.get("path").is_some() {
        spec["nonResourceAttributes"] = attributes;
    } else {
        spec["resourceAttributes"] = attributes;
    }
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                        "spec": spec});
    let answer: Option<Value> = async {
        shared
            .reviews
            .post(format!(
                "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
                shared.kube
            ))
            .bearer_auth(ADAPTER_TOKEN)
            .json(&review)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    answer.is_some_and(|a| a["status"]["allowed"] == true)
}

fn unauthorized() -> Response {
    status(401, Some("Unauthorized"), "Unauthorized", None)
}

async fn discovery(
    State(shared): State<Shared>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let seen = record(&shared, &request, &query);
    let Some((user, groups)) = authenticate(&shared, &seen).await else {
        return unauthorized();
    };
    if !authorize(
        &shared,
        &user,
        &groups,
        json!({"path": DISCOVERY, "verb": "get"}),
    )
    .await
    {
        return status(
            403,
            Some("Forbidden"),
            &format!("forbidden: User {user:?} cannot get path {DISCOVERY:?}"),
            None,
        );
    }
    go_json(
        StatusCode::OK,
        r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":[{"name":"externalmetric","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}]}"#.to_string(),
    )
}

async fn value(
    State(shared): State<Shared>,
    Path((namespace, metric)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let seen = record(&shared, &request, &query);
    *shared.state.in_flight.lock().unwrap() += 1;
    let response = answer_value(&shared, &namespace, &metric, &query, &seen).await;
    *shared.state.in_flight.lock().unwrap() -= 1;
    response
}

async fn answer_value(
    shared: &Shared,
    namespace: &str,
    metric: &str,
    query: &Option<String>,
    seen: &Seen,
) -> Response {
    let mut held = shared.held.clone();
    while *held.borrow_and_update() {
        if held.changed().await.is_err() {
            break;
        }
    }
    let Some((user, groups)) = authenticate(shared, seen).await else {
        return unauthorized();
    };
    let attributes = json!({"namespace": namespace, "verb": "list",
        "group": "external.metrics.k8s.io", "version": "v1beta1", "resource": metric});
    if !authorize(shared, &user, &groups, attributes).await {
        return status(
            403,
            Some("Forbidden"),
            &format!(
                "{metric}.external.metrics.k8s.io is forbidden: User {user:?} cannot list resource {metric:?} in API group \"external.metrics.k8s.io\" in the namespace {namespace:?}"
            ),
            Some(("external.metrics.k8s.io", metric)),
        );
    }
    // labels.ConvertSelectorToLabelsMap: `k=v` pairs.
    let selector: HashMap<String, String> = query
        .as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "labelSelector")
                .flat_map(|(_, v)| {
                    v.split(',')
                        .filter_map(|term| term.split_once('='))
                        .map(|(k, v)| {
                            (
                                k.trim().to_string(),
                                v.trim().trim_start_matches('=').to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    let Some(scaled_object) = selector.get(SCALED_OBJECT_KEY).filter(|v| !v.is_empty()) else {
        return status(500, None, "scaledObject name is not specified", None);
    };
    if metric == "s0-huge" {
        // An answer far larger than any value list.
        let values: Vec<String> = (0..40_000).map(|i| i.to_string()).collect();
        let items: Vec<(&str, &str)> = values.iter().map(|v| (metric, v.as_str())).collect();
        return go_json(StatusCode::OK, value_list(&items));
    }
    let metrics = shared
        .state
        .scaled_objects
        .lock()
        .unwrap()
        .get(&(namespace.to_string(), scaled_object.clone()))
        .cloned();
    let Some(metrics) = metrics else {
        return status(
            500,
            None,
            &format!(
                "rpc error: code = Unknown desc = error when getting metric values error getting scalers scaledobjects.keda.sh {scaled_object:?} not found"
            ),
            None,
        );
    };
    let items: Vec<(&str, &str)> = metrics
        .iter()
        .filter(|(name, _)| name == metric)
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    if items.is_empty() {
        return status(
            500,
            None,
            &format!(
                "rpc error: code = Unknown desc = error when getting metric values no matching metrics found for {metric}"
            ),
            None,
        );
    }
    go_json(StatusCode::OK, value_list(&items))
}
