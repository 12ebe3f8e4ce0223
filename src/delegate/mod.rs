//! Forwarding what this adapter does not define to the cluster's other external-metrics
//! providers (KEDA's metrics server, Datadog's cluster agent, prometheus-adapter): the
//! implementation behind [`crate::forward::Forwarder`].
//!
//! Design, and why:
//! - Delegates are tried in configured order; the first whose rules (a metric-name pattern
//!   and/or a selector key that must be selected) take a request gets it. A name this adapter
//!   defines never gets here: the API layer answers it before asking for a route.
//! - We call the delegate as ourselves (our ServiceAccount token, or a client certificate): the
//!   aggregator's front-proxy identity cannot be replayed, as its client certificate stays with
//!   kube-apiserver. The caller was already authenticated and authorized by us against the same
//!   cluster RBAC the delegate would ask, for the same verb, metric and namespace; the delegate
//!   sees our identity, and kube-apiserver's audit ID ties its log to the real caller.
//! - Each delegate has its own connection pool, an in-flight bound that fails fast when reached,
//!   and a timeout over connect, TLS and answer together, so a slow or dead delegate costs its
//!   own callers a bounded wait and nobody else anything. All delegate traffic (the client's
//!   TLS, HTTP/2 framing and connection tasks, discovery refreshes) runs on a runtime of its own
//!   with one thread: the workers serving this adapter's own metrics never run it, so forwarded
//!   traffic cannot queue ahead of them inside the process.
//! - TLS is always verified against the delegate's CA unless verification is explicitly turned
//!   off. The CA comes from a file (re-read), inline PEM, or a Secret read through the API and
//!   watched (KEDA keeps and rotates its CA in `kedaorg-certs`, in a namespace we cannot mount
//!   from). Tokens and client certificates are re-read too: the kubelet rotates projected tokens.
//! - Discovery shows the delegates' names from a list each refreshes in the background; a request
//!   never waits for a delegate's discovery, and a delegate that is down keeps its last list.

pub mod client;
pub mod config;
pub mod metrics;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::file_watch::{self, Contents, FilePoller};
use crate::forward::{ForwardError, ForwardRequest, ForwardedAnswer, Forwarder, Route};
use crate::metrics::AdapterMetrics;
use crate::provider::{MetricInfo, Selector};
use client::Delegate;
use config::{CaSource, DelegateConfig};

/// The configured delegates, in order.
#[derive(Debug, Clone)]
pub struct Delegates {
    delegates: Vec<Arc<Delegate>>,
    runtime: Arc<ClientRuntime>,
}

/// How much longer than a delegate's timeout a caller waits for the delegate thread's answer
/// before giving up on it itself.
const CALLER_MARGIN: Duration = Duration::from_secs(1);

/// The runtime delegate traffic runs on (a bulkhead: one thread of its own). Dropped with the
/// last clone of [`Delegates`]: its tasks (forwards whose caller is gone are already aborted,
/// background refreshes have seen `stop`) are dropped, and its thread ends without being waited
/// for.
#[derive(Debug)]
struct ClientRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl ClientRuntime {
    fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("delegate-client")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        // Dropped from async code when the server stops: never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Delegates {
    /// Build every delegate's client (loading CA, token and certificate files now).
    pub fn new(configs: Vec<DelegateConfig>, metrics: Arc<AdapterMetrics>) -> anyhow::Result<Self> {
        let delegates = configs
            .into_iter()
            .map(|config| {
                let name = config.name.clone();
                Delegate::new(config, metrics.clone())
                    .map(Arc::new)
                    .map_err(|err| anyhow::Error::new(err).context(format!("delegate {name:?}")))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let runtime =
            Arc::new(ClientRuntime::new().map_err(|err| {
                anyhow::anyhow!("cannot start the delegate client thread: {err}")
            })?);
        for delegate in &delegates {
            tracing::info!(
                delegate = %delegate.name(),
                url = %delegate.url_text(),
                "forwarding the metrics this adapter does not define, where the delegate's rules take them"
            );
        }
        Ok(Self { delegates, runtime })
    }

    /// Whether any delegate reads its CA from a Secret (and so needs the Kubernetes API).
    pub fn needs_cluster(configs: &[DelegateConfig]) -> bool {
        configs
            .iter()
            .any(|config| matches!(config.ca, CaSource::Secret { .. }))
    }

    /// Start each delegate's background work until `stop`: discovery refreshes, file re-reads
    /// every `reload_interval`, and Secret watches through `kube`. Tasks go in `tasks`, where an
    /// early end is fatal (refreshes and rotation must not silently stop).
    pub fn start(
        &self,
        kube: Option<kube::Client>,
        reload_interval: Duration,
        stop: &CancellationToken,
        tasks: &mut JoinSet<&'static str>,
    ) -> anyhow::Result<()> {
        for delegate in &self.delegates {
            if let CaSource::Secret {
                namespace,
                name,
                key,
            } = &delegate.config.ca
            {
                let Some(client) = kube.clone() else {
                    anyhow::bail!(
                        "delegate {:?} reads its CA from Secret {namespace}/{name}, which needs the Kubernetes API, and there is no cluster connection",
                        delegate.name()
                    );
                };
                tasks.spawn(watch_ca_secret(
                    delegate.clone(),
                    client,
                    namespace.clone(),
                    name.clone(),
                    key.clone(),
                    stop.clone(),
                ));
            }
            let Some(handle) = self.runtime.handle() else {
                anyhow::bail!("the delegate client runtime is gone");
            };
            tasks.spawn_on(refresh_discovery(delegate.clone(), stop.clone()), handle);
            tasks.spawn_on(
                reload_files(delegate.clone(), reload_interval, stop.clone()),
                handle,
            );
        }
        Ok(())
    }
}

impl Forwarder for Delegates {
    fn route(&self, metric: &str, selector: Option<&Selector>) -> Option<Route> {
        self.delegates
            .iter()
            .position(|delegate| delegate.takes(metric, selector))
            .map(Route)
    }

    fn name(&self, route: Route) -> &str {
        self.delegates
            .get(route.0)
            .map(|delegate| delegate.name())
            .unwrap_or_default()
    }

    fn forward(
        &self,
        route: Route,
        metric: &str,
        request: ForwardRequest,
    ) -> BoxFuture<'static, Result<ForwardedAnswer, ForwardError>> {
        let delegate = self.delegates.get(route.0).cloned();
        let handle = self.runtime.handle().cloned();
        let metric = metric.to_string();
        let fail = |delegate: Option<&Delegate>, metric: String, detail: &str| ForwardError {
            delegate: delegate.map(|d| d.name().to_string()).unwrap_or_default(),
            url: delegate
                .map(|d| d.url_text().to_string())
                .unwrap_or_default(),
            metric,
            failure: crate::forward::ForwardFailure::Unreachable,
            detail: detail.to_string(),
        };
        Box::pin(async move {
            let (Some(delegate), Some(handle)) = (delegate, handle) else {
                return Err(fail(None, metric, "no such delegate"));
            };
            // Run on the delegate runtime; if the caller goes away, so does the request (the
            // handle aborts the task, which frees its in-flight slot and connection attempt).
            let timeout = delegate.config.timeout;
            let task = {
                let delegate = delegate.clone();
                AbortOnDropHandle::new(
                    handle.spawn(async move { delegate.forward(&request).await }),
                )
            };
            // The delegate's own timeout runs on the delegate thread; bound the wait here too,
            // so the promised bound holds even if that thread is stuck (a hung file read).
            match tokio::time::timeout(timeout + CALLER_MARGIN, task).await {
                Ok(Ok(result)) => result.map_err(|(failure, detail)| ForwardError {
                    delegate: delegate.name().to_string(),
                    url: delegate.url_text().to_string(),
                    metric,
                    failure,
                    detail,
                }),
                Ok(Err(err)) => Err(fail(
                    Some(&delegate),
                    metric,
                    &format!("the forwarding task ended: {err}"),
                )),
                Err(_) => {
                    tracing::warn!(delegate = %delegate.name(), "the delegate client thread did not finish a request within its timeout");
                    Err(ForwardError {
                        delegate: delegate.name().to_string(),
                        url: delegate.url_text().to_string(),
                        metric,
                        failure: crate::forward::ForwardFailure::Timeout(timeout),
                        detail: "the delegate client thread did not answer in time".to_string(),
                    })
                }
            }
        })
    }

    fn list_metrics(&self) -> Vec<MetricInfo> {
        let mut seen = std::collections::HashSet::new();
        let mut metrics = Vec::new();
        for delegate in &self.delegates {
            for name in delegate.discovered().iter() {
                if seen.insert(name.clone()) {
                    metrics.push(MetricInfo { name: name.clone() });
                }
            }
        }
        metrics
    }
}

/// Fetch the delegate's metric list now and every discovery interval until `stop`.
async fn refresh_discovery(delegate: Arc<Delegate>, stop: CancellationToken) -> &'static str {
    let mut ticker = tokio::time::interval(delegate.config.discovery_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return "delegate discovery",
            _ = ticker.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return "delegate discovery",
            () = delegate.refresh_discovery() => {}
        }
    }
}

/// Why a re-read delegate file was not put in use (what is in use stays).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The CA file does not hold a usable CA bundle.
    #[error(transparent)]
    Ca(#[from] tls::CaError),
    /// The token file does not hold a usable token.
    #[error(transparent)]
    Token(#[from] client::TokenError),
    /// The client certificate and key do not form a usable pair (perhaps caught half-way
    /// through a rotation).
    #[error(transparent)]
    Certificate(#[from] crate::tls::TlsError),
}

/// Re-read the delegate's CA file, token file and client certificate every `interval` until
/// `stop` (each with its own [`FilePoller`]), swapping in what changed and parses; anything
/// unreadable keeps what is in use.
async fn reload_files(
    delegate: Arc<Delegate>,
    interval: Duration,
    stop: CancellationToken,
) -> &'static str {
    let name = delegate.name().to_string();
    let ca = async {
        let CaSource::File(path) = &delegate.config.ca else {
            return;
        };
        let in_use = delegate
            .verifier
            .ca_pem()
            .map(|pem| Contents::new(vec![pem]));
        FilePoller::new(vec![path.clone()], interval, in_use)
            .run(&format!("CA of delegate {name:?}"), stop.cancelled(), |contents| {
                let roots = tls::CaRoots::from_pem(contents.file(0)).map_err(ReloadError::Ca)?;
                delegate.verifier.set_ca(roots);
                tracing::info!(delegate = %name, file = %path.display(), "delegate CA reloaded");
                Ok::<_, ReloadError>(())
            })
            .await;
    };
    let token = async {
        let (Some(slot), Some(path)) = (&delegate.token, &delegate.config.credentials.token_file)
        else {
            return;
        };
        // Compared with the token in use once parsed: the first read finds it unchanged.
        FilePoller::new(vec![path.clone()], interval, None)
            .run(&format!("token for delegate {name:?}"), stop.cancelled(), |contents| {
                let value = client::token_header(contents.file(0), path).map_err(ReloadError::Token)?;
                if slot.load().as_deref() != Some(&value) {
                    slot.store(Some(Arc::new(value)));
                    tracing::info!(delegate = %name, file = %path.display(), "token for the delegate reloaded");
                }
                Ok::<_, ReloadError>(())
            })
            .await;
    };
    let certificate = async {
        let (Some(resolver), Some((cert, key))) = (
            &delegate.client_certificate,
            &delegate.config.credentials.client_certificate,
        ) else {
            return;
        };
        let paths = vec![cert.clone(), key.clone()];
        let in_use = file_watch::read(&paths).await.ok();
        FilePoller::new(paths, interval, in_use)
            .run(&format!("client certificate for delegate {name:?}"), stop.cancelled(), |pair| {
                resolver.replace(crate::tls::parse_pair(pair.file(0), pair.file(1), cert, key)?);
                tracing::info!(delegate = %name, cert = %cert.display(), "client certificate for the delegate reloaded");
                Ok::<_, ReloadError>(())
            })
            .await;
    };
    tokio::join!(ca, token, certificate);
    // With nothing to re-read, the task still lives until `stop`: its end is read as a failure.
    stop.cancelled().await;
    "delegate file reloader"
}

/// Follow the Secret holding the delegate's CA (`get`/`list`/`watch` on that one Secret, by
/// field selector, so RBAC can name it), trusting each new version of `key` that parses. The
/// watcher re-lists after errors with backoff; a deleted Secret or missing key keeps the CA in
/// use.
async fn watch_ca_secret(
    delegate: Arc<Delegate>,
    client: kube::Client,
    namespace: String,
    name: String,
    key: String,
    stop: CancellationToken,
) -> &'static str {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff().applied_objects();
    let mut stream = std::pin::pin!(stream);
    let delegate_name = delegate.name().to_string();
    let mut failing = false;
    loop {
        let item = tokio::select! {
            () = stop.cancelled() => return "delegate CA Secret watch",
            item = stream.next() => item,
        };
        match item {
            None => return "delegate CA Secret watch",
            Some(Err(err)) => {
                // Once per outage: the watcher retries on its own with backoff.
                if !failing {
                    tracing::warn!(delegate = %delegate_name, secret = %format!("{namespace}/{name}"), error = %err, "cannot read the delegate's CA Secret; retrying (this adapter needs get, list and watch on it)");
                }
                failing = true;
            }
            Some(Ok(secret)) => {
                failing = false;
                let pem = secret
                    .data
                    .as_ref()
                    .and_then(|data| data.get(&key))
                    .map(|bytes| bytes.0.clone());
                let Some(pem) = pem else {
                    tracing::warn!(delegate = %delegate_name, secret = %format!("{namespace}/{name}"), %key, "the delegate's CA Secret has no such key; keeping the CA in use");
                    continue;
                };
                if delegate.verifier.ca_pem().as_deref() == Some(pem.as_slice()) {
                    continue;
                }
                match tls::CaRoots::from_pem(&pem) {
                    Ok(roots) => {
                        delegate.verifier.set_ca(roots);
                        tracing::info!(delegate = %delegate_name, secret = %format!("{namespace}/{name}"), "delegate CA loaded from its Secret");
                    }
                    Err(err) => {
                        tracing::warn!(delegate = %delegate_name, secret = %format!("{namespace}/{name}"), error = %crate::telemetry::Chain(&err), "the delegate's CA Secret does not hold a usable CA; keeping the CA in use")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::forward::ForwardFailure;
    use config::{Credentials, Rules};

    /// A delegate at `port` on 127.0.0.1 with one in-flight slot and a long timeout.
    fn delegates(port: u16, dir: &std::path::Path) -> Delegates {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t").unwrap();
        let config = DelegateConfig {
            name: "silent".to_string(),
            url: format!("https://127.0.0.1:{port}").parse().unwrap(),
            ca: CaSource::Pem(ca.pem()),
            credentials: Credentials {
                token_file: Some(token),
                client_certificate: None,
            },
            rules: Rules::default(),
            timeout: Duration::from_secs(60),
            max_concurrent_requests: 1,
            max_response_bytes: 1024,
            discovery_interval: Duration::from_secs(60),
        };
        Delegates::new(vec![config], Arc::new(AdapterMetrics::default())).unwrap()
    }

    fn request() -> ForwardRequest {
        ForwardRequest {
            path: "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/s0-x".to_string(),
            query: None,
            accept: None,
            audit_id: None,
        }
    }

    // Dropping a tokio Runtime inside async code panics; the server drops its delegates there.
    #[tokio::test]
    async fn the_delegates_can_be_dropped_inside_the_servers_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let delegates = delegates(1, dir.path());
        drop(delegates.clone());
        drop(delegates);
    }

    // A forward whose caller went away (the HPA's request was cancelled) must not keep running
    // on the delegate thread until its timeout, holding the delegate's only in-flight slot.
    #[tokio::test]
    async fn a_caller_that_goes_away_frees_its_slot_at_the_delegate() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never says a word: the TLS handshake hangs.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let delegates = delegates(listener.local_addr().unwrap().port(), dir.path());
        let route = delegates.route("s0-x", None).unwrap();

        let first = tokio::spawn(delegates.forward(route, "s0-x", request()));
        let (_held, _) = listener.accept().await.unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());

        // The slot comes back once the abort reaches the delegate thread; with the task left
        // running it would stay taken for the 60 s timeout.
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let mut second = tokio::spawn(delegates.forward(route, "s0-x", request()));
                tokio::select! {
                    accepted = listener.accept() => {
                        accepted.unwrap();
                        second.abort();
                        return;
                    }
                    result = &mut second => {
                        let err = result.unwrap().unwrap_err();
                        assert!(matches!(err.failure, ForwardFailure::Busy), "{err}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        })
        .await
        .expect("the delegate's only slot was never freed after its caller went away");
    }
}
