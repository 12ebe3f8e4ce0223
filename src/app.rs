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
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::cache::{CacheConfig, QueryCache};
use crate::cloudwatch::client::AwsCloudWatch;
use crate::cloudwatch::translate;
use crate::config::{AwsConfig, Command, QueryConfig, ServeConfig};
use crate::definition::{self, DefinitionSet};
use crate::metrics::AdapterMetrics;
use crate::provider::MetricRequest;
use crate::tls::{self, CertificateStore};

/// Run a parsed command.
pub async fn main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => run(config).await,
        Command::Query(config) => query(config).await,
    }
}

/// Validate, bind, and serve until SIGTERM or SIGINT.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    config.validate()?;
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
    serve(config, sdk, listeners, shutdown_signal()).await
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
/// credentials chain (IRSA on EKS), standard retries, and an attempt timeout.
pub async fn load_sdk_config(aws: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(aws.cloudwatch_timeout)
            .build(),
    );
    if let Some(region) = aws.region() {
        loader = loader.region(Region::new(region));
    }
    if let Some(url) = &aws.cloudwatch_endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Whether the server should receive traffic: earned at start, revoked at shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    definitions_loaded: AtomicBool,
    certificates_loaded: AtomicBool,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// What still stands in the way, empty when ready.
    pub fn blockers(&self) -> Vec<&'static str> {
        let mut blockers = Vec::new();
        if !self.definitions_loaded.load(Ordering::Acquire) {
            blockers.push("metric definitions not loaded");
        }
        if !self.certificates_loaded.load(Ordering::Acquire) {
            blockers.push("serving certificate not loaded");
        }
        if self.shutting_down.load(Ordering::Acquire) {
            blockers.push("shutting down");
        }
        blockers
    }
}

/// Serve on the given listeners until `shutdown` resolves, then drain.
pub async fn serve(
    config: ServeConfig,
    sdk: SdkConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let readiness = Arc::new(Readiness::default());
    let metrics = Arc::new(AdapterMetrics::default());
    let stop = CancellationToken::new();
    // Whatever way this function returns, every task it started is told to stop.
    let _stop_on_return = stop.clone().drop_guard();

    // Admin first, so probes answer (not ready) while the rest starts.
    let admin_router = admin_router(readiness.clone(), metrics.clone());
    let admin_stop = stop.clone();
    let admin = tokio::spawn(crate::server::serve_plain(
        listeners.admin,
        admin_router,
        async move { admin_stop.cancelled().await },
    ));

    let definitions = match &config.config {
        Some(path) => definition::load_file(path)?,
        None => {
            tracing::warn!("no --config given: no metrics are defined");
            DefinitionSet::default()
        }
    };
    tracing::info!(metrics = definitions.len(), "metric definitions loaded");
    readiness.definitions_loaded.store(true, Ordering::Release);

    let store = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(cert), Some(key)) => {
            let (certified, pair) = tls::load_files(cert, key)?;
            let store = Arc::new(CertificateStore::new(certified));
            let watcher_stop = stop.clone();
            tokio::spawn(tls::watch_files(
                store.clone(),
                cert.clone(),
                key.clone(),
                pair,
                config.tls_reload_interval,
                async move { watcher_stop.cancelled().await },
            ));
            store
        }
        _ => {
            let names = self_signed_names(&config);
            let (certified, _) = tls::self_signed(&names)?;
            tracing::info!(?names, "serving a self-signed certificate");
            Arc::new(CertificateStore::new(certified))
        }
    };
    readiness.certificates_loaded.store(true, Ordering::Release);

    let cache = QueryCache::new(
        Arc::new(ArcSwap::from_pointee(definitions)),
        AwsCloudWatch::new(sdk),
        config.cache.to_config(),
        metrics.clone(),
    );
    cache.register_gauges();
    let refresher = tokio::spawn(cache.clone_handle().run(stop.clone()));
    let provider = cache;
    let router = api::router(Arc::new(ApiState {
        provider,
        metrics: metrics.clone(),
    }));
    let secure_addr = listeners.secure.local_addr()?;
    let api_stop = stop.clone();
    let mut api = tokio::spawn(crate::server::serve_tls(
        listeners.secure,
        Arc::new(tls::server_config(store)),
        router,
        async move { api_stop.cancelled().await },
        config.shutdown_grace_period,
    ));
    tracing::info!(%secure_addr, "serving external.metrics.k8s.io");

    tokio::pin!(shutdown);
    let mut refresher = refresher;
    tokio::select! {
        () = &mut shutdown => {}
        // A critical task ending on its own is fatal: exit rather than limp on.
        result = &mut api => {
            stop.cancel();
            anyhow::bail!("the API server stopped unexpectedly: {result:?}");
        }
        result = &mut refresher => {
            stop.cancel();
            anyhow::bail!("the CloudWatch refresher stopped unexpectedly: {result:?}");
        }
    }
    tracing::info!("shutting down: reporting not ready");
    readiness.shutting_down.store(true, Ordering::Release);
    tokio::time::sleep(config.shutdown_delay).await;
    stop.cancel();
    api.await.context("API server task failed")?;
    admin
        .await
        .context("admin server task failed")?
        .context("admin server failed")?;
    tracing::info!("stopped");
    Ok(())
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `query`: print the request a definition builds and, unless `--dry-run`, the JSON the server
/// would answer with (or the Status it would fail with).
pub async fn query(config: QueryConfig) -> anyhow::Result<()> {
    config.validate()?;
    let definitions = definition::load_file(&config.config)?;
    let definition = definitions.get(&config.metric).with_context(|| {
        let names: Vec<&str> = definitions.iter().map(|d| d.spec.name.as_str()).collect();
        format!(
            "metric {:?} is not defined in {} (defined: {})",
            config.metric,
            config.config.display(),
            names.join(", ")
        )
    })?;
    let selector = api::selector::parse(&config.selector)?;
    let labels = translate::selector_labels(definition, &selector)?;
    let request = translate::build_request(definition, &labels, std::time::SystemTime::now())?;
    println!(
        "# GetMetricData request ({})",
        describe_target(&request.target, &config.aws)
    );
    println!("{}", serde_json::to_string_pretty(&request)?);
    if config.dry_run {
        return Ok(());
    }
    let sdk = load_sdk_config(&config.aws).await;
    let provider = QueryCache::new(
        Arc::new(ArcSwap::from_pointee(definitions.clone())),
        AwsCloudWatch::new(sdk),
        CacheConfig::default(),
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

fn describe_target(target: &crate::cloudwatch::Target, aws: &AwsConfig) -> String {
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
