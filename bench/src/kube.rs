//! A fake Kubernetes API server for benchmarks, over HTTPS on 127.0.0.1: it answers
//! `SubjectAccessReview` and `TokenReview` creates as kube-apiserver does (201 Created, the
//! object echoed with its `status`), after the checks kube-apiserver makes (the caller's bearer
//! token, a JSON body of the right kind). It counts the reviews it answers, so a benchmark can
//! show how many reached the cluster.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs::Ca;

/// The bearer token in the kubeconfig the fake writes (the adapter's service account token).
pub const ADAPTER_TOKEN: &str = "bench-adapter-service-account-token";

/// Who `SubjectAccessReview` allows.
#[derive(Debug, Clone)]
pub enum AccessPolicy {
    /// Every request.
    AllowAll,
    /// Any request by these users.
    AllowUsers(HashSet<String>),
}

/// What the fake counted.
#[derive(Debug, Default)]
pub struct Counters {
    /// `SubjectAccessReview`s answered.
    pub access_reviews: AtomicU64,
    /// `TokenReview`s answered.
    pub token_reviews: AtomicU64,
    /// Calls refused (no or wrong bearer token, bad body).
    pub refused: AtomicU64,
}

struct Shared {
    policy: AccessPolicy,
    /// token -> (user, groups) for TokenReview.
    tokens: Vec<(String, String, Vec<String>)>,
    counters: Arc<Counters>,
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A kubeconfig reaching it with [`ADAPTER_TOKEN`] (for `--kubeconfig`).
    pub kubeconfig: PathBuf,
    /// Its counters.
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKube {
    /// Start on 127.0.0.1:0 with its own CA, writing the kubeconfig and CA into `dir`.
    /// `tokens` are (token, user, groups) that `TokenReview` authenticates.
    pub async fn start(
        dir: &Path,
        policy: AccessPolicy,
        tokens: Vec<(String, String, Vec<String>)>,
    ) -> anyhow::Result<FakeKube> {
        let ca = Ca::new("fake-kube-apiserver-ca")?;
        let serving = ca.server("kube-apiserver")?;
        let chain = CertificateDer::pem_slice_iter(serving.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(serving.key.as_bytes())?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ca_path = dir.join("kube-ca.pem");
        std::fs::write(&ca_path, &ca.pem)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: adapter\n  user:\n    token: {ADAPTER_TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\ncurrent-context: fake\n",
                addr.port(),
                ca_path.display()
            ),
        )
        .context("writing the kubeconfig")?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            policy,
            tokens,
            counters: counters.clone(),
        });
        let router = Router::new()
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(access_review),
            )
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .with_state(shared);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, router) = (acceptor.clone(), router.clone());
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
        Ok(FakeKube {
            addr,
            kubeconfig,
            counters,
            task,
        })
    }

    /// `SubjectAccessReview`s answered so far.
    pub fn access_reviews(&self) -> u64 {
        self.counters.access_reviews.load(Ordering::Relaxed)
    }
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

/// kube-apiserver's checks before a create: the caller's token, a JSON body of the right kind.
#[allow(clippy::result_large_err, reason = "the error is the response itself")]
fn check_create(
    shared: &Shared,
    headers: &HeaderMap,
    body: &Bytes,
    api_version: &str,
    kind: &str,
) -> Result<Value, Response> {
    let refuse = |code, reason, message: &str| {
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        status(code, reason, message)
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {ADAPTER_TOKEN}")) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    }
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body must be JSON",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()))?;
    if value["apiVersion"] != api_version || value["kind"] != kind || !value["spec"].is_object() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("expected a {api_version} {kind} with a spec"),
        ));
    }
    Ok(value)
}

fn created(body: Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn access_review(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match check_create(
        &shared,
        &headers,
        &body,
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
    ) {
        Ok(review) => review,
        Err(response) => return response,
    };
    shared
        .counters
        .access_reviews
        .fetch_add(1, Ordering::Relaxed);
    let spec = &review["spec"];
    let user = spec["user"].as_str().unwrap_or_default();
    let allowed = match &shared.policy {
        AccessPolicy::AllowAll => true,
        AccessPolicy::AllowUsers(users) => users.contains(user),
    };
    let status_body = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"bench\" of ClusterRole \"bench\""})
    } else {
        json!({"allowed": false})
    };
    created(
        json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": spec, "status": status_body}),
    )
}

async fn token_review(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let review = match check_create(
        &shared,
        &headers,
        &body,
        "authentication.k8s.io/v1",
        "TokenReview",
    ) {
        Ok(review) => review,
        Err(response) => return response,
    };
    shared
        .counters
        .token_reviews
        .fetch_add(1, Ordering::Relaxed);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let status_body = match shared.tokens.iter().find(|(t, _, _)| t == token) {
        Some((_, user, groups)) => json!({"authenticated": true,
            "user": {"username": user, "groups": groups},
            "audiences": ["https://kubernetes.default.svc.cluster.local"]}),
        None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
    };
    created(
        json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": review["spec"], "status": status_body}),
    )
}
