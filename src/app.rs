//! Composition root: the only module that knows every concrete type.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{self, ApiState};
use crate::auth::metrics::AuthMetrics;
use crate::auth::review::{KubeReviewer, Reviewer};
use crate::auth::source::{self, FileRole, FromCluster, HeaderFlags};
use crate::auth::trust::TrustStore;
use crate::auth::{self, Auth, AuthSettings};
use crate::config::{
    AuthFlags, AuthorizationMode, AwsConfig, CacheFlags, Command, CrdFlags, QueryConfig,
    ServeConfig,
};
use crate::controller::{self, Reconciler, status};
use crate::definition::{self, Backend, DefinitionSet};
use crate::delegate::Delegates;
use crate::engine::{Engine, EngineConfig, Pacing, Sources};
use crate::forward::{Forwarder, NoDelegates};
use crate::leader::{Elector, Leadership};
use crate::metrics::AdapterMetrics;
use crate::peer::{ClientConfig, Follower, Link, PeerRoles, PeerServer};
use crate::provider::MetricRequest;
use crate::source::cloudwatch::CloudWatchSource;
use crate::source::cloudwatch::client::AwsCloudWatch;
use crate::source::cloudwatch::translate;
use crate::source::sqs::SqsSource;
use crate::source::sqs::client::AwsSqs;
use crate::tls::{self, CertificateStore};

/// Run a parsed command.
pub async fn main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => run(config).await,
        Command::Query(config) => query(config).await,
        Command::Crd => {
            print!("{}", crate::crd::crd_yaml());
            Ok(())
        }
    }
}

/// Validate, bind, and serve until SIGTERM or SIGINT; a second signal aborts the drain.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    config.validate()?;
    check_open_files(config.edge.max_connections)?;
    // Installed before binding, so a signal during start-up is a shutdown, not a kill.
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    let signals = tokio::spawn(
        watch_signals(shutdown.clone(), abort.clone())
            .instrument(tracing::info_span!("task", name = "signals")),
    );
    let result = bind_and_serve(config, shutdown, abort).await;
    signals.abort();
    let _ = signals.await;
    result
}

/// `--max-connections` plus what the rest of the process needs must fit the open-files limit
/// (raised to its hard limit first), or the cap would never be reached: accept would fail with
/// EMFILE first, for everyone.
fn check_open_files(max_connections: u64) -> anyhow::Result<()> {
    let limit = crate::server::open_files_limit();
    let needed = max_connections.saturating_add(crate::server::RESERVED_FILE_DESCRIPTORS);
    if needed > limit {
        anyhow::bail!(
            "--max-connections {max_connections} needs about {needed} open files ({} kept for everything else), but this process may open only {limit} (ulimit -n): lower --max-connections to at most {}, or raise the limit",
            crate::server::RESERVED_FILE_DESCRIPTORS,
            limit.saturating_sub(crate::server::RESERVED_FILE_DESCRIPTORS)
        );
    }
    tracing::debug!(limit, max_connections, "open-files limit checked");
    Ok(())
}

async fn bind_and_serve(
    config: ServeConfig,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let sdk = load_sdk_config(&config.aws).await;
    let secure_addr = SocketAddr::new(config.bind_address, config.secure_port);
    let admin_addr = SocketAddr::new(config.admin_bind_address, config.admin_port);
    let listeners = Listeners {
        secure: TcpListener::bind(secure_addr)
            .await
            .with_context(|| format!("cannot listen on --secure-port {secure_addr}"))?,
        admin: TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot listen on --admin-port {admin_addr}"))?,
    };
    let kube = kube_for(&config).await?;
    serve_until(
        config,
        sdk,
        kube,
        listeners,
        async move { shutdown.cancelled().await },
        abort,
    )
    .await
}

/// The two bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS external metrics API.
    pub secure: TcpListener,
    /// Plain-HTTP health and metrics.
    pub admin: TcpListener,
}

/// The AWS SDK configuration: explicit region (never instance metadata), the default
/// credentials chain (IRSA on EKS), standard retries, and an attempt timeout. The CloudWatch
/// endpoint override is not set here: it would also redirect STS (`AssumeRole` for a
/// definition's `roleArn`), e.g. to a CloudWatch VPC endpoint; [`AwsCloudWatch`] applies it.
pub async fn load_sdk_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(aws.cloudwatch_timeout)
            .build(),
    );
    if let Some(region) = aws.region() {
        loader = loader.region(Region::new(region));
    }
    loader.load().await
}

/// Whether the server should receive traffic: earned at start, revoked at shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    definitions_loaded: AtomicBool,
    external_metrics_synced: AtomicBool,
    certificates_loaded: AtomicBool,
    /// With `--leader-elect`: this replica holds a leader's values, leads, or waited for either
    /// as long as a failover takes. Without it, set at once.
    replica_warm: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// What still stands in the way, empty when ready.
    pub fn blockers(&self) -> Vec<&'static str> {
        let mut blockers = Vec::new();
        if !self.definitions_loaded.load(Ordering::Acquire) {
            blockers.push("metric definitions not loaded");
        }
        if !self.external_metrics_synced.load(Ordering::Acquire) {
            blockers.push("ExternalMetric objects not listed yet");
        }
        if !self.certificates_loaded.load(Ordering::Acquire) {
            blockers.push("serving certificate not loaded");
        }
        if !self.replica_warm.load(Ordering::Acquire) {
            blockers.push(
                "no leader's values yet (waiting for the first snapshot of its stream, at most the lease duration plus three retry periods)",
            );
        }
        if self.shutting_down.load(Ordering::Acquire) {
            blockers.push("shutting down");
        }
        blockers
    }
}

/// Serve on the given listeners until `shutdown` resolves, then drain. The Kubernetes client
/// (`--kubeconfig`, else the pod's service account) is built when delegated authentication or
/// authorization or the `ExternalMetric` watch (`--watch-external-metrics`, the default) needs it.
pub async fn serve(
    config: ServeConfig,
    sdk: SdkConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let kube = kube_for(&config).await?;
    serve_with_kube(config, sdk, kube, listeners, shutdown).await
}

/// The Kubernetes client, when something configured needs one.
async fn kube_for(config: &ServeConfig) -> anyhow::Result<Option<kube::Client>> {
    // What needs the Kubernetes API, and the flags that do without it.
    let mut needs = Vec::new();
    if config.auth.needs_cluster() {
        needs.push((
            "delegated authentication and authorization",
            "--authorization-mode=AlwaysAllow --anonymous-auth=true --authentication-skip-lookup",
        ));
    }
    if config.crd.watch_external_metrics {
        needs.push(("the ExternalMetric watch", "--watch-external-metrics=false"));
    }
    if config.leader_election.leader_elect {
        needs.push(("leader election", "--leader-elect=false"));
    }
    if Delegates::needs_cluster(&delegate_configs(config)?) {
        needs.push((
            "reading a delegate's CA from a Secret",
            "--delegate-ca-file (instead of --delegate-ca-secret)",
        ));
    }
    Ok(if needs.is_empty() {
        None
    } else {
        Some(kube_client(&config.auth, &needs).await?)
    })
}

/// As [`serve`], with the Kubernetes client given (tests pass a mocked API server); `None` means
/// no cluster, which only a configuration that needs none may use.
pub async fn serve_with_kube(
    config: ServeConfig,
    sdk: SdkConfig,
    kube: Option<kube::Client>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_until(
        config,
        sdk,
        kube,
        listeners,
        shutdown,
        CancellationToken::new(),
    )
    .await
}

/// As [`serve_with_kube`], with `abort` cutting the drain short (the second SIGTERM or SIGINT):
/// connections are closed at once and the function returns an error saying so.
pub async fn serve_until(
    config: ServeConfig,
    sdk: SdkConfig,
    kube: Option<kube::Client>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::default());
    let metrics = Arc::new(AdapterMetrics::default());
    let stop = CancellationToken::new();
    // Whatever way this function returns, every task it started is told to stop.
    let _stop_on_return = stop.clone().drop_guard();
    // Admin first, so probes answer (not ready) while the rest starts.
    let admin = start_admin(listeners.admin, &readiness, &metrics, &stop);
    let file_definitions = Arc::new(load_definitions(&config).await?);
    readiness.definitions_loaded.store(true, Ordering::Release);
    let definitions = Arc::new(ArcSwap::new(file_definitions.clone()));
    // Certificate and CA watchers: none may end before shutdown, or rotation would silently stop.
    let mut watchers: JoinSet<&'static str> = JoinSet::new();
    let store = serving_certificate(&config, &stop, &mut watchers).await?;
    readiness.certificates_loaded.store(true, Ordering::Release);
    let (auth, trust) = build_auth(
        &config.auth,
        kube.clone(),
        config.tls_reload_interval,
        metrics.auth().clone(),
        &stop,
        &mut watchers,
    )
    .await?;
    let engine = build_engine(&config, &sdk, definitions.clone(), &metrics);
    // With --leader-elect: one replica leads (calls AWS, writes status), every one serves.
    let replication =
        start_replication(&config, &engine, kube.as_ref(), &metrics, &readiness, &stop)?;
    let external_metrics = start_external_metrics(
        &config,
        kube.clone(),
        &engine,
        &replication,
        (file_definitions, definitions),
        &readiness,
        &stop,
    )?;
    let refresher = tokio::spawn(
        engine
            .clone_handle()
            .run(stop.clone())
            .instrument(tracing::info_span!("task", name = "CloudWatch refresher")),
    );
    let forwarder = build_forwarder(&config, kube, metrics.clone(), &stop, &mut watchers)?;
    let router = api_router(&config, engine, auth, &forwarder, &replication, &metrics);
    let api = start_api(
        listeners.secure,
        store,
        trust,
        router,
        &config,
        &metrics,
        &stop,
        &abort,
    )?;
    let mut tasks = Tasks {
        admin,
        api,
        refresher,
        external_metrics,
        watchers,
        replication: replication.tasks,
    };
    wait_for_shutdown(shutdown, &mut tasks, &stop).await?;
    tracing::info!("shutting down: reporting not ready");
    readiness.shutting_down.store(true, Ordering::Release);
    // A leader stops calling AWS and hands the Lease over now, not after the drain: a rollout
    // moves leadership in seconds.
    replication.resign.cancel();
    tokio::select! {
        () = tokio::time::sleep(config.shutdown_delay) => {}
        () = abort.cancelled() => {}
    }
    stop.cancel();
    tasks.join(&abort).await?;
    // Only now: the delegates' background tasks run on the delegates' own runtime, which goes
    // with the last reference; dropped earlier (with the router), it could cancel them before
    // they saw `stop`, and a clean shutdown would report a failed task.
    drop(forwarder);
    if abort.is_cancelled() {
        anyhow::bail!("a second signal aborted the drain: in-flight requests were cut off");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The admin server (probes and `/metrics`), serving until `stop`.
fn start_admin(
    listener: TcpListener,
    readiness: &Arc<Readiness>,
    metrics: &Arc<AdapterMetrics>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let admin_router = admin_router(readiness.clone(), metrics.clone());
    let admin_stop = stop.clone();
    tokio::spawn(
        crate::server::serve_plain(
            listener,
            admin_router,
            crate::server::AdminLimits::default(),
            async move { admin_stop.cancelled().await },
        )
        .instrument(tracing::info_span!("task", name = "admin server")),
    )
}

/// The definitions file (`--config`), or none.
async fn load_definitions(config: &ServeConfig) -> anyhow::Result<DefinitionSet> {
    let definitions = match config.config.clone() {
        // File reads block: keep them off the async workers (the admin port is already serving).
        Some(path) => tokio::task::spawn_blocking(move || definition::load_file(&path))
            .await
            .context("loading the definitions file failed")??,
        None => {
            tracing::warn!("no --config given: no metrics are defined");
            DefinitionSet::default()
        }
    };
    tracing::info!(metrics = definitions.len(), "metric definitions loaded");
    Ok(definitions)
}

/// The serving certificate: from files (re-read as they rotate, by a watcher in `watchers`), or
/// self-signed.
async fn serving_certificate(
    config: &ServeConfig,
    stop: &CancellationToken,
    watchers: &mut JoinSet<&'static str>,
) -> anyhow::Result<Arc<CertificateStore>> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_private_key_file) else {
        let names = self_signed_names(config);
        let (certified, _) = tls::self_signed(&names)?;
        tracing::info!(?names, "serving a self-signed certificate");
        return Ok(Arc::new(CertificateStore::new(certified)));
    };
    let (cert_path, key_path) = (cert.clone(), key.clone());
    let (certified, pair) =
        tokio::task::spawn_blocking(move || tls::load_files(&cert_path, &key_path))
            .await
            .context("loading the serving certificate failed")??;
    let store = Arc::new(CertificateStore::new(certified));
    let watcher_stop = stop.clone();
    let watch = tls::watch_files(
        store.clone(),
        cert.clone(),
        key.clone(),
        pair,
        config.tls_reload_interval,
        async move { watcher_stop.cancelled().await },
    );
    watchers.spawn(
        async move {
            watch.await;
            "serving certificate watcher"
        }
        .instrument(tracing::info_span!(
            "task",
            name = "serving certificate watcher"
        )),
    );
    Ok(store)
}

/// The refresh engine over the configured sources.
fn build_engine(
    config: &ServeConfig,
    sdk: &SdkConfig,
    definitions: Arc<ArcSwap<DefinitionSet>>,
    metrics: &Arc<AdapterMetrics>,
) -> Engine {
    let mut engine_config = config.cache.to_config();
    engine_config.fallback_calls_per_second = config.leader_election.peer_fallback_calls_per_second;
    let engine = Engine::new(
        definitions,
        sources(&config.cache, sdk, &config.aws),
        engine_config,
        metrics.clone(),
    );
    engine.register_gauges();
    engine
}

/// With `--watch-external-metrics`: the ExternalMetric watch and the status writer, as one task
/// that runs until `stop`. Without it, a task that stands in for them (so the shutdown sequence
/// is the same).
fn start_external_metrics(
    config: &ServeConfig,
    kube: Option<kube::Client>,
    engine: &Engine,
    replication: &Replication,
    (file_definitions, definitions): (Arc<DefinitionSet>, Arc<ArcSwap<DefinitionSet>>),
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = match kube {
        Some(client) if config.crd.watch_external_metrics => client,
        None if config.crd.watch_external_metrics => anyhow::bail!(
            "--watch-external-metrics needs the Kubernetes API, and there is no cluster connection"
        ),
        _ => {
            tracing::info!("not watching ExternalMetric objects (--watch-external-metrics=false)");
            readiness
                .external_metrics_synced
                .store(true, Ordering::Release);
            let idle = stop.clone();
            return Ok(tokio::spawn(async move { idle.cancelled().await }));
        }
    };
    let (sender, receiver) = status::channel();
    engine.set_observer(Arc::new(sender.clone()));
    let writer = status::StatusWriter::new(
        client.clone(),
        status_config(&config.crd, replication.leadership.clone()),
        receiver,
    );
    let reconciler = Reconciler::new(file_definitions, definitions, Some(sender))
        .with_allowed_roles(config.crd.external_metric_allowed_role_arns.clone());
    let synced = readiness.clone();
    let watch = controller::run(
        client,
        reconciler,
        move || {
            synced
                .external_metrics_synced
                .store(true, Ordering::Release)
        },
        stop.clone(),
    );
    let writer = writer.run(stop.clone());
    tracing::info!("watching ExternalMetric objects in all namespaces");
    // Both run until `stop`; either ending earlier is fatal (see `wait_for_shutdown`).
    Ok(tokio::spawn(
        async move {
            tokio::select! {
                () = watch => {}
                () = writer => {}
            }
        }
        .instrument(tracing::info_span!("task", name = "ExternalMetric watch")),
    ))
}

/// The secure port's routes: the API behind authentication and the edge guard, and the peer
/// link's endpoints when this replica can lead.
fn api_router(
    config: &ServeConfig,
    engine: Engine,
    auth: Arc<Auth>,
    forwarder: &Arc<dyn Forwarder>,
    replication: &Replication,
    metrics: &Arc<AdapterMetrics>,
) -> Router {
    let router = api::router(Arc::new(ApiState {
        provider: engine,
        metrics: metrics.clone(),
        forwarder: forwarder.clone(),
    }))
    .layer(axum::middleware::from_fn_with_state(auth, auth::middleware));
    // Outermost: bodies are refused, and timeouts and panics answered, before anything else.
    let router = api::guard(router, config.edge.request_timeout, metrics.clone());
    // The peer link shares the port (and its edge limits), beside the API's authorization.
    match &replication.peer {
        Some(peer) => router.merge(
            peer.clone()
                .router(config.edge.request_timeout, metrics.clone()),
        ),
        None => router,
    }
}

/// The secure port, serving `router` until `stop` (then draining, cut short by `abort`).
#[allow(
    clippy::too_many_arguments,
    reason = "each is one piece the server is made of"
)]
fn start_api(
    listener: TcpListener,
    store: Arc<CertificateStore>,
    trust: Arc<TrustStore>,
    router: Router,
    config: &ServeConfig,
    metrics: &Arc<AdapterMetrics>,
    stop: &CancellationToken,
    abort: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let secure_addr = listener.local_addr()?;
    let api = tokio::spawn(
        crate::server::serve_tls(
            listener,
            Arc::new(tls::server_config(store, trust)),
            router,
            config.edge.limits(),
            metrics.clone(),
            crate::server::Drain {
                shutdown: stop.clone(),
                abort: abort.clone(),
                grace: config.shutdown_grace_period,
            },
        )
        .instrument(tracing::info_span!("task", name = "API server")),
    );
    tracing::info!(%secure_addr, "serving external.metrics.k8s.io");
    Ok(api)
}

/// Every long-running task, joined at shutdown.
struct Tasks {
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    api: tokio::task::JoinHandle<()>,
    refresher: tokio::task::JoinHandle<()>,
    external_metrics: tokio::task::JoinHandle<()>,
    watchers: JoinSet<&'static str>,
    replication: Vec<tokio::task::JoinHandle<()>>,
}

/// Until `shutdown`; a critical task ending on its own first is fatal: exit rather than limp on.
async fn wait_for_shutdown(
    shutdown: impl Future<Output = ()>,
    tasks: &mut Tasks,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    tokio::select! {
        () = shutdown => Ok(()),
        result = &mut tasks.api => {
            stop.cancel();
            anyhow::bail!("the API server stopped unexpectedly: {result:?}");
        }
        result = &mut tasks.refresher => {
            stop.cancel();
            anyhow::bail!("the refresh engine stopped unexpectedly: {result:?}");
        }
        result = &mut tasks.external_metrics => {
            stop.cancel();
            anyhow::bail!("the ExternalMetric watch stopped unexpectedly: {result:?}");
        }
        Some(result) = tasks.watchers.join_next() => {
            stop.cancel();
            anyhow::bail!("a background task stopped unexpectedly: {result:?}");
        }
    }
}

impl Tasks {
    /// Join every task once `stop` is cancelled (the API server after its drain, which `abort`
    /// cuts short), so nothing is left running.
    async fn join(self, abort: &CancellationToken) -> anyhow::Result<()> {
        let Tasks {
            mut admin,
            api,
            refresher,
            external_metrics,
            mut watchers,
            replication,
        } = self;
        api.await.context("API server task failed")?;
        let admin_result = tokio::select! {
            result = &mut admin => Some(result),
            () = abort.cancelled() => None,
        };
        let admin_result = match admin_result {
            Some(result) => result,
            None => {
                admin.abort();
                admin.await
            }
        };
        refresher
            .await
            .context("CloudWatch refresher task failed")?;
        for task in replication {
            task.await
                .context("a leader election or peer task failed")?;
        }
        external_metrics
            .await
            .context("ExternalMetric watch task failed")?;
        while let Some(result) = watchers.join_next().await {
            result.context("a background task failed")?;
        }
        admin_result
            .context("admin server task failed")?
            .context("admin server failed")?;
        Ok(())
    }
}

/// The validated delegates (the same check `validate()` made, so it cannot fail after it passed).
fn delegate_configs(
    config: &ServeConfig,
) -> anyhow::Result<Vec<crate::delegate::config::DelegateConfig>> {
    config.delegate.resolve().map_err(|problems| {
        anyhow::anyhow!("invalid configuration:\n  - {}", problems.join("\n  - "))
    })
}

/// The delegates (the cluster's other external-metrics providers) and their background tasks,
/// or [`NoDelegates`] when none is configured.
fn build_forwarder(
    config: &ServeConfig,
    kube: Option<kube::Client>,
    metrics: Arc<AdapterMetrics>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<&'static str>,
) -> anyhow::Result<Arc<dyn Forwarder>> {
    let configs = delegate_configs(config)?;
    if configs.is_empty() {
        return Ok(Arc::new(NoDelegates));
    }
    let delegates = Delegates::new(configs, metrics)?;
    delegates.start(kube, config.tls_reload_interval, stop, tasks)?;
    Ok(Arc::new(delegates))
}

/// The sources the engine reads from, each with its budget from the flags.
fn sources(flags: &CacheFlags, sdk: &SdkConfig, aws: &AwsConfig) -> Sources {
    Sources::new()
        .with(
            CloudWatchSource::new(
                AwsCloudWatch::new(sdk.clone())
                    .with_endpoint_url(aws.cloudwatch_endpoint_url.clone()),
            ),
            Pacing::per_second(flags.cloudwatch_calls_per_second),
        )
        .with(
            SqsSource::new(AwsSqs::new(sdk.clone(), aws.sqs_endpoint_url.clone())),
            Pacing::per_second(flags.sqs_calls_per_second),
        )
}

fn status_config(flags: &CrdFlags, leadership: Leadership) -> status::StatusConfig {
    // The pod name (downward API) tells replicas apart in Events; the hostname is the fallback.
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|name| !name.is_empty());
    status::StatusConfig {
        min_interval: flags.status_update_interval,
        writes_per_second: flags.status_writes_per_second,
        reporter: kube::runtime::events::Reporter {
            controller: "cloudwatch-metrics-adapter".to_string(),
            instance,
        },
        leadership,
    }
}

/// A starting replica turns ready once it can answer from a leader's values: it holds the first
/// complete snapshot of a leader's stream, or it leads, or `limit` passed with neither, after
/// which it reads what it is asked for itself. The limit is the lease duration plus three retry
/// periods: a dead holder's record expires on this replica's clock a lease after it first saw
/// it, some replica takes it at its next retry, and this one sees the new holder at its own.
/// A new leader observed meanwhile restarts the wait for its stream (up to twice the limit in
/// all). So while a killed leader's Lease stands, a new pod is not sent reads it could answer
/// only by calling AWS beside the leader-to-be, or not at all; the survivors answer them from
/// memory. Only at start: once ready, leadership never takes readiness away.
async fn warm_up(
    mut synced: tokio::sync::watch::Receiver<bool>,
    mut changes: tokio::sync::watch::Receiver<crate::leader::LeaderState>,
    limit: std::time::Duration,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let cap = started + limit * 2;
    let mut deadline = started + limit;
    let how = loop {
        if changes.borrow_and_update().leading {
            break "leading";
        }
        tokio::select! {
            Ok(_) = synced.wait_for(|synced| *synced) => break "holding the leader's values",
            Ok(()) = changes.changed() => {
                if changes.borrow().leader.is_some() {
                    deadline = (tokio::time::Instant::now() + limit).min(cap);
                }
            }
            () = tokio::time::sleep_until(deadline) => break "no leader's stream within the lease duration plus three retry periods; reading here what is asked here",
            () = stop.cancelled() => return,
        }
    };
    tracing::info!(after = ?started.elapsed(), "ready: {how}");
    readiness.replica_warm.store(true, Ordering::Release);
}

/// Leader election and the peer link, as started.
struct Replication {
    /// Whether this replica leads (always, without --leader-elect).
    leadership: Leadership,
    /// The leader's side of the peer link, to serve on the secure port.
    peer: Option<Arc<PeerServer>>,
    /// Cancelled at the start of shutdown: the elector stops leading and releases the Lease.
    resign: CancellationToken,
    /// The elector and the follower, joined at the end.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// With `--leader-elect`: the elector, the engine's roles (lead, follow, fall back), the
/// follower's stream and demand, and the endpoints a leader serves its followers. Without it,
/// this replica always leads and nothing else starts.
fn start_replication(
    config: &ServeConfig,
    engine: &Engine,
    kube: Option<&kube::Client>,
    metrics: &Arc<AdapterMetrics>,
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) -> anyhow::Result<Replication> {
    // Also cancelled with `stop`, so however serving ends the Lease is released.
    let resign = stop.child_token();
    let flags = &config.leader_election;
    let Some(election) = flags.to_config()? else {
        readiness.replica_warm.store(true, Ordering::Release);
        metrics.leader().set_always_leading();
        return Ok(Replication {
            leadership: Leadership::always(),
            peer: None,
            resign,
            tasks: Vec::new(),
        });
    };
    let client = kube
        .context("--leader-elect needs the Kubernetes API (for the Lease), and there is no cluster connection")?
        .clone();
    let lease = (election.namespace.clone(), election.name.clone());
    let patience = election.lease_duration + election.retry_period;
    let warm_up_limit = election.lease_duration + election.retry_period * 3;
    tracing::info!(
        identity = %election.identity,
        lease = %format!("{}/{}", lease.0, lease.1),
        "leader election on"
    );
    let (elector, leadership) = Elector::new(client.clone(), election, metrics.leader().clone())?;
    let mut tasks =
        vec![tokio::spawn(elector.run(resign.clone()).instrument(
            tracing::info_span!("task", name = "leader election"),
        ))];
    let link = Arc::new(Link::new());
    engine.set_roles(Arc::new(PeerRoles::new(
        leadership.clone(),
        link.clone(),
        patience,
    )));
    let (demand, demanded) = tokio::sync::mpsc::channel(4096);
    engine.set_demand(demand);
    let (Some(ca_file), Some(server_name)) = (&flags.peer_ca_file, &flags.peer_server_name) else {
        anyhow::bail!("--leader-elect needs --peer-ca-file and --peer-server-name");
    };
    let idle = config.cache.series_idle_timeout;
    let follower = Follower::new(
        engine.clone(),
        leadership.clone(),
        link,
        ClientConfig {
            ca_file: ca_file.clone(),
            server_name: server_name.clone(),
            token_file: flags.peer_token_file.clone(),
            // Well within the idle timeout, so the leader never lets go of a series asked for
            // only here.
            keepalive: (idle / 4).clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
            ),
            idle_timeout: idle,
            own_address: flags.peer_advertise_address.clone(),
        },
        metrics.peer().clone(),
    );
    tasks.push(tokio::spawn(
        warm_up(
            follower.synced(),
            leadership.changes(),
            warm_up_limit,
            readiness.clone(),
            stop.clone(),
        )
        .instrument(tracing::info_span!("task", name = "warm-up")),
    ));
    tasks.push(tokio::spawn(
        follower
            .run(demanded, stop.clone())
            .instrument(tracing::info_span!("task", name = "peer follower")),
    ));
    // Peers are authenticated by TokenReview and authorized by SubjectAccessReview whatever
    // the API port's own settings: never anonymous, never AlwaysAllow.
    let peer_auth = Auth::new(
        Arc::new(TrustStore::new(None, None)),
        Some(Arc::new(KubeReviewer::new(client, REVIEW_TIMEOUT))),
        AuthSettings {
            anonymous: false,
            mode: AuthorizationMode::Delegated,
            token_ttl: config.auth.authentication_token_webhook_cache_ttl,
            allowed_ttl: config.auth.authorization_webhook_cache_authorized_ttl,
            denied_ttl: config.auth.authorization_webhook_cache_unauthorized_ttl,
        },
        metrics.auth().clone(),
    );
    let peer = Arc::new(PeerServer::new(
        engine.clone(),
        leadership.clone(),
        Arc::new(peer_auth),
        lease,
        metrics.peer().clone(),
        stop.clone(),
    ));
    Ok(Replication {
        leadership,
        peer: Some(peer),
        resign,
        tasks,
    })
}

/// How long one TokenReview or SubjectAccessReview may take (kube's delegating default).
const REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Authentication and authorization: the trusted CAs (files and/or the cluster's ConfigMap, kept
/// current by background tasks until `stop`), and the review client when a cluster is needed.
async fn build_auth(
    flags: &AuthFlags,
    client: Option<kube::Client>,
    reload_interval: std::time::Duration,
    metrics: AuthMetrics,
    stop: &CancellationToken,
    watchers: &mut JoinSet<&'static str>,
) -> anyhow::Result<(Arc<Auth>, Arc<TrustStore>)> {
    let headers = HeaderFlags {
        allowed_names: flags.requestheader_allowed_names.clone(),
        username_headers: flags.requestheader_username_headers.clone(),
        group_headers: flags.requestheader_group_headers.clone(),
        uid_headers: flags.requestheader_uid_headers.clone(),
        extra_prefixes: flags.requestheader_extra_headers_prefix.clone(),
    };
    let trust = Arc::new(TrustStore::new(None, None));
    let files = [
        (
            "--requestheader-client-ca-file",
            &flags.requestheader_client_ca_file,
            FileRole::RequestHeader(headers.settings()?),
        ),
        (
            "--client-ca-file",
            &flags.client_ca_file,
            FileRole::ClientCa,
        ),
    ];
    let mut file_watchers = Vec::new();
    for (flag, path, role) in files {
        let Some(path) = path else { continue };
        let pem = source::load_file(&trust, path, &role)
            .await
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        file_watchers.push((path.clone(), role, pem));
    }
    let client = if flags.needs_cluster() {
        Some(client.context(
            "delegated authentication and authorization need the Kubernetes API, and there is no cluster connection",
        )?)
    } else {
        None
    };
    let from_cluster = FromCluster {
        request_header: flags.requestheader_client_ca_file.is_none(),
        client_ca: flags.client_ca_file.is_none(),
    };
    if let Some(client) = &client
        && !flags.authentication_skip_lookup
        && from_cluster.any()
    {
        let api = kube::Api::namespaced(client.clone(), source::NAMESPACE);
        let watch = source::watch_configmap(api, trust.clone(), from_cluster, headers)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}\n(the service account needs Role extension-apiserver-authentication-reader in kube-system; or pass --authentication-skip-lookup with --requestheader-client-ca-file/--client-ca-file)",
                    crate::telemetry::Chain(&e)
                )
            })?;
        let watch_stop = stop.clone();
        watchers.spawn(async move {
            watch.run(watch_stop).await;
            "extension-apiserver-authentication watch"
        });
    }
    // Started only once everything loaded, so a failed start leaves no task behind.
    for (path, role, pem) in file_watchers {
        let watch = source::watch_file(
            trust.clone(),
            path,
            role,
            pem,
            reload_interval,
            stop.clone(),
        );
        watchers.spawn(async move {
            watch.await;
            "CA file watcher"
        });
    }
    if flags.authorization_mode == AuthorizationMode::AlwaysAllow {
        tracing::warn!(
            "--authorization-mode=AlwaysAllow: every authenticated caller may read every metric; use it only for local runs"
        );
    }
    if flags.anonymous_auth {
        tracing::warn!(
            "--anonymous-auth=true: callers without credentials act as system:anonymous"
        );
    }
    let reviewer: Option<Arc<dyn Reviewer>> = match client {
        Some(client) => Some(Arc::new(KubeReviewer::new(client, REVIEW_TIMEOUT))),
        None => {
            tracing::info!(
                "no cluster connection: bearer tokens are not checked (they are ignored)"
            );
            None
        }
    };
    let auth = Auth::new(
        trust.clone(),
        reviewer,
        AuthSettings {
            anonymous: flags.anonymous_auth,
            mode: flags.authorization_mode,
            token_ttl: flags.authentication_token_webhook_cache_ttl,
            allowed_ttl: flags.authorization_webhook_cache_authorized_ttl,
            denied_ttl: flags.authorization_webhook_cache_unauthorized_ttl,
        },
        metrics,
    );
    Ok((Arc::new(auth), trust))
}

/// A Kubernetes client from `--kubeconfig` (or `KUBECONFIG`), else the pod's service account.
async fn kube_client(flags: &AuthFlags, needs: &[(&str, &str)]) -> anyhow::Result<kube::Client> {
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig: cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig: {} is not usable", path.display()))?
        }
        None => kube::Config::incluster().map_err(|err| {
            let what: Vec<&str> = needs.iter().map(|(what, _)| *what).collect();
            let flags: Vec<&str> = needs.iter().map(|(_, flags)| *flags).collect();
            anyhow::anyhow!(
                "{} need{} the Kubernetes API, but there is no in-cluster configuration ({err}) and no --kubeconfig.\nWithout a cluster, run with {}",
                what.join(" and "),
                if what.len() == 1 { "s" } else { "" },
                flags.join(" ")
            )
        })?,
    };
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

fn self_signed_names(config: &ServeConfig) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = std::env::var("HOSTNAME")
        && !host.is_empty()
    {
        names.push(host);
    }
    names.extend(config.self_signed_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

fn admin_router(readiness: Arc<Readiness>, metrics: Arc<AdapterMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let blockers = readiness.blockers();
                async move {
                    if blockers.is_empty() {
                        (StatusCode::OK, "ok".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}", blockers.join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.encode();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        )
}

/// The first SIGTERM or SIGINT starts the shutdown (not ready, delay, drain); the second
/// aborts the drain, as kube-apiserver does, for an operator who cannot wait.
async fn watch_signals(shutdown: CancellationToken, abort: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            let _ = tokio::signal::ctrl_c().await;
            abort.cancel();
            return;
        }
    };
    for (step, token) in [("shutting down", &shutdown), ("aborting the drain", &abort)] {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: {step}"),
            _ = int.recv() => tracing::info!("SIGINT received: {step}"),
        }
        token.cancel();
    }
}

/// `query`: print the request a definition builds and, unless `--dry-run`, the JSON the server
/// would answer with (or the Status it would fail with).
pub async fn query(config: QueryConfig) -> anyhow::Result<()> {
    config.validate()?;
    let definitions = definition::load_file(&config.config)?;
    let definition = definitions.get(&config.metric).with_context(|| {
        let names: Vec<&str> = definitions
            .cluster_wide()
            .map(|d| d.spec.name.as_str())
            .collect();
        format!(
            "metric {:?} is not defined in {} (defined: {})",
            config.metric,
            config.config.display(),
            names.join(", ")
        )
    })?;
    let selector = api::selector::parse(&config.selector)?;
    let labels = definition::selector_labels(definition, &selector)?;
    match definition.backend() {
        Backend::CloudWatch => {
            let request =
                translate::build_request(definition, &labels, std::time::SystemTime::now())?;
            println!(
                "# GetMetricData request ({})",
                describe_target(&request.target, &config.aws)
            );
            println!("{}", serde_json::to_string_pretty(&request)?);
        }
        Backend::Sqs => {
            let request = crate::source::sqs::request(definition, &labels)?;
            println!(
                "# SQS calls ({})",
                describe_target(&request.target, &config.aws)
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&request.describe_calls())?
            );
        }
    }
    if config.dry_run {
        return Ok(());
    }
    let sdk = load_sdk_config(&config.aws).await;
    let provider = Engine::new(
        Arc::new(ArcSwap::from_pointee(definitions.clone())),
        sources(&CacheFlags::default(), &sdk, &config.aws),
        EngineConfig::default(),
        Arc::new(AdapterMetrics::default()),
    );
    let stop = CancellationToken::new();
    let refresher = tokio::spawn(provider.clone_handle().run(stop.clone()));
    let answer = api::value_list(
        &provider,
        MetricRequest {
            namespace: config.namespace.clone(),
            metric: config.metric.clone(),
            selector,
        },
    )
    .await;
    stop.cancel();
    refresher.await.context("refresher task failed")?;
    println!("# response");
    match answer {
        Ok(list) => {
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        Err(error) => {
            println!("{}", serde_json::to_string_pretty(&error.status())?);
            anyhow::bail!("the server would answer {}: {}", error.code, error.message)
        }
    }
}

fn describe_target(target: &crate::source::cloudwatch::Target, aws: &AwsConfig) -> String {
    let region = target
        .region
        .clone()
        .or_else(|| aws.region())
        .unwrap_or_else(|| "<no region>".to_string());
    match &target.role_arn {
        Some(role) => format!("region {region}, as {role}"),
        None => format!("region {region}"),
    }
}
