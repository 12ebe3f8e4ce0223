//! The HTTP server: routing, the CloudWatch operation handler, and the listener lifecycle that
//! lets the emulator "go away" (refuse connections) and come back on the same address.
//!
//! axum's `serve` cannot drop live keep-alive connections, and the SDK reuses pooled
//! connections, so a server that merely stopped accepting would keep answering. The accept loop
//! here owns every connection task and aborts them all when the emulator goes down.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use ciborium::Value;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{ApiError, code};
use crate::faults::{FaultAnswer, Faults};
use crate::metering::{Meter, Operation, Stats};
use crate::store::{Aggregate, MetricKey, StorageResolution, Store};
use crate::{Datum, admin, epoch_ms, list, put, query, wire};

/// CloudWatch accepts request bodies up to 1 MB (PutMetricData documents it).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Oversized bodies up to this size are read to the end before the 413, so the client is not
/// cut off mid-upload and sees the error instead of a reset connection.
const MAX_DRAINED_BYTES: usize = 8 * MAX_BODY_BYTES;
/// Bound on a gunzipped body, so a small compressed bomb cannot exhaust memory.
const MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024;
/// The path prefix of every operation in rpc-v2-cbor for CloudWatch's service shape.
pub(crate) const OPERATION_PREFIX: &str = "/service/GraniteServiceVersion20100801/operation/";

/// State shared by every request of one emulator.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub store: RwLock<Store>,
    pub faults: Faults,
    pub meter: Meter,
    requests: AtomicU64,
}

impl Shared {
    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        format!("e0000000-0000-4000-8000-{n:012x}")
    }

    pub fn read_store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write_store(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores one datum without validation (seeding).
    pub fn put(&self, datum: Datum, resolution: StorageResolution) {
        let key = MetricKey::new(datum.namespace, datum.metric_name, datum.dimensions);
        self.write_store().insert(
            key,
            epoch_ms(datum.timestamp),
            resolution,
            datum.unit.as_deref(),
            Aggregate::single(datum.value),
            SystemTime::now(),
        );
    }

    pub fn reset(&self) {
        self.write_store().clear();
        self.faults.clear();
        self.meter.reset();
    }
}

/// What every handler sees.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub shared: Arc<Shared>,
    /// Weak, so that the router (cloned into connection tasks) never keeps the emulator alive.
    pub control: Weak<Inner>,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    router: Router,
    running: Mutex<Option<Running>>,
    /// Set once the emulator is dropped or shut down: nothing may bring the listener back.
    closed: AtomicBool,
}

impl Inner {
    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, self.router.clone(), stopped));
        let previous = self.running().replace(Running { stop, task });
        if let Some(previous) = previous {
            previous.task.abort();
        }
    }

    pub(crate) async fn set_down(&self, down: bool) -> std::io::Result<()> {
        if down {
            let running = self.running().take();
            if let Some(running) = running {
                let _ = running.stop.send(());
                // The loop closes the listener and aborts every connection before it returns.
                let _ = running.task.await;
            }
            return Ok(());
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the emulator has been shut down"));
        }
        if self.running().is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        if self.running().is_some() {
            // Someone else brought it back meanwhile; theirs wins.
            return Ok(());
        }
        self.spawn(listener);
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, router: Router, mut stop: oneshot::Receiver<()>) {
    // Dropping the JoinSet aborts every connection task, which closes their sockets.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(router.clone());
                    connections.spawn(async move {
                        let connection = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn router(shared: Arc<Shared>, control: Weak<Inner>) -> Router {
    let state = AppState { shared, control };
    Router::new()
        .route(
            &format!("{OPERATION_PREFIX}{{operation}}"),
            post(cloudwatch),
        )
        .merge(admin::routes())
        .with_state(state)
}

/// Takes the emulator down now and brings it back after `duration` (the admin API's "down").
pub(crate) fn down_for(control: &Weak<Inner>, duration: Duration) {
    let control = control.clone();
    tokio::spawn(async move {
        // Let the admin response that asked for this reach the client before its connection dies.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(inner) = control.upgrade() {
            let _ = inner.set_down(true).await;
        }
        tokio::time::sleep(duration).await;
        if let Some(inner) = control.upgrade()
            && let Err(e) = inner.set_down(false).await
        {
            tracing::warn!(error = %e, "could not listen again after going down");
        }
    });
}

async fn cloudwatch(
    State(state): State<AppState>,
    Path(operation): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let shared = &state.shared;
    let request_id = shared.request_id();
    let Some(operation) = Operation::from_name(&operation) else {
        shared.meter.unknown_operation();
        let err = ApiError::new(
            404,
            code::UNKNOWN_OPERATION,
            format!(
                "cloudwatch-emulator does not serve the operation {operation} (it serves \
                 GetMetricData, PutMetricData and ListMetrics)"
            ),
        );
        return wire::error_response(&err, &request_id);
    };
    shared.meter.call(operation);
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(kind) = shared.faults.take(operation) {
        let answer = kind.answer(operation);
        tracing::debug!(
            operation = operation.name(),
            ?kind,
            "answering with an injected fault"
        );
        shared.meter.error(operation, answer.code());
        return match answer {
            FaultAnswer::Aws(err) => wire::error_response(&err, &request_id),
            FaultAnswer::Html { status, body } => wire::html_response(status, body),
        };
    }
    match handle(shared, operation, &headers, body).await {
        Ok(value) => wire::ok_response(&value, &request_id),
        Err(err) => {
            tracing::debug!(operation = operation.name(), %err, "answering with an error");
            shared.meter.error(operation, err.code);
            wire::error_response(&err, &request_id)
        }
    }
}

async fn handle(
    shared: &Shared,
    operation: Operation,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let protocol = headers.get("smithy-protocol").and_then(|v| v.to_str().ok());
    if protocol != Some(wire::PROTOCOL) {
        return Err(ApiError::serialization(
            "requests must carry the header smithy-protocol: rpc-v2-cbor",
        ));
    }
    let too_large = || {
        ApiError::new(
            413,
            code::REQUEST_TOO_LARGE,
            format!("The request body exceeds the limit of {MAX_BODY_BYTES} bytes."),
        )
    };
    let raw = axum::body::to_bytes(body, MAX_DRAINED_BYTES)
        .await
        .map_err(|_| too_large())?;
    if raw.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let (bytes, gzipped) = decode_content_encoding(headers, raw)?;
    if gzipped {
        shared.meter.gzipped(operation);
    }
    let input = wire::decode_body(&bytes)?;
    let now = SystemTime::now();
    match operation {
        Operation::GetMetricData => {
            if let Some(rejected) = shared.faults.poisoned_call(&input) {
                return Err(rejected);
            }
            let outcome = query::get_metric_data(&input, &shared.read_store(), epoch_ms(now))?;
            shared.meter.get_metric_data(
                outcome.queries,
                outcome.metrics_requested,
                outcome.datapoints,
            );
            Ok(outcome.body)
        }
        Operation::PutMetricData => {
            let (body, stored) = put::put_metric_data(&input, &mut shared.write_store(), now)?;
            shared.meter.put_metric_data(stored);
            Ok(body)
        }
        Operation::ListMetrics => {
            let (body, listed) = list::list_metrics(&input, &shared.read_store(), now)?;
            shared.meter.list_metrics(listed);
            Ok(body)
        }
    }
}

/// The SDK gzips PutMetricData bodies from 10 KiB on (`Content-Encoding: gzip`).
/// Returns the plain body and whether it was compressed.
fn decode_content_encoding(headers: &HeaderMap, raw: Bytes) -> Result<(Bytes, bool), ApiError> {
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok((raw, false)),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::serialization(format!("the gzip body is corrupt: {e}")))?;
            if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
                return Err(ApiError::new(
                    413,
                    code::REQUEST_TOO_LARGE,
                    "The decompressed request body is too large.",
                ));
            }
            Ok((Bytes::from(out), true))
        }
        Some(other) => Err(ApiError::serialization(format!(
            "unsupported Content-Encoding {other} (gzip is supported)"
        ))),
    }
}

/// A running CloudWatch emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Emulator {
    inner: Arc<Inner>,
}

impl Emulator {
    /// Starts an emulator on `127.0.0.1` with a free port.
    pub async fn start() -> std::io::Result<Emulator> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an emulator listening on `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let inner = Arc::new_cyclic(|weak| Inner {
            shared: shared.clone(),
            addr,
            router: router(shared, weak.clone()),
            running: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        inner.spawn(listener);
        Ok(Emulator { inner })
    }

    /// The address it listens on (also while it is down).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, for `aws_config`'s `endpoint_url` or `AWS_ENDPOINT_URL_CLOUDWATCH`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Stores a datapoint directly, at standard resolution, without PutMetricData's validation
    /// (so `AWS/` namespaces and old timestamps are fine).
    pub fn put(&self, datum: Datum) {
        self.inner.shared.put(datum, StorageResolution::Standard);
    }

    /// Like [`Emulator::put`], keeping the timestamp to the second (StorageResolution 1).
    pub fn put_high_resolution(&self, datum: Datum) {
        self.inner.shared.put(datum, StorageResolution::High);
    }

    /// The fault-injection controls.
    pub fn faults(&self) -> &crate::Faults {
        &self.inner.shared.faults
    }

    /// A snapshot of the per-operation counters.
    pub fn stats(&self) -> Stats {
        self.inner.shared.meter.snapshot()
    }

    /// Forgets all data, faults, latency and counters.
    pub fn reset(&self) {
        self.inner.shared.reset();
    }

    /// `true`: close the listener and every open connection, so calls fail to connect.
    /// `false`: listen again on the same address. Both are idempotent.
    pub async fn set_down(&self, down: bool) -> std::io::Result<()> {
        self.inner.set_down(down).await
    }

    /// Whether the emulator is currently listening.
    pub fn is_up(&self) -> bool {
        self.inner.running().is_some()
    }

    /// Stops the server and waits until its listener and connections are closed.
    pub async fn shutdown(self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let _ = self.inner.set_down(true).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(running) = self.inner.running().take() {
            // Aborting drops the accept loop, its listener and its JoinSet of connections.
            running.task.abort();
        }
    }
}
