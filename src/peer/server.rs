//! The leader's side of the peer link, served on the secure port under `/peer/v1/` (the
//! aggregator proxies only `/apis/external.metrics.k8s.io`, so it never reaches these paths):
//!
//! - `GET /peer/v1/stream`: a snapshot of every series, then every change as it happens, as
//!   newline-delimited JSON [`Frame`]s, with a heartbeat each second when nothing changes. A
//!   follower that reads too slowly for the engine's change buffer gets a fresh snapshot; one
//!   that does not read at all is dropped after [`SEND_TIMEOUT`].
//! - `POST /peer/v1/demand`: series asked for on a follower; new ones are refreshed at once.
//!
//! Only the adapter's own replicas may use them: a bearer token that a TokenReview
//! authenticates, whose user a SubjectAccessReview allows to `update` the election's Lease
//! (client certificates and anonymous access are not accepted here, whatever the API port
//! allows). A replica that does not lead answers 503, so a follower finds the current leader.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::wire::{
    DemandRequest, DemandResponse, Fingerprints, Frame, WireKey, WireSeries, millis,
};
use super::{DEMAND_PATH, MAX_DEMAND_BYTES, MAX_DEMAND_SERIES, PeerMetrics, STREAM_PATH};
use crate::api::status::ApiError;
use crate::auth::attributes::Attributes;
use crate::auth::{Auth, Authentication, Decision, Method};
use crate::engine::Engine;
use crate::engine::replica::Change;
use crate::leader::Leadership;
use crate::metrics::AdapterMetrics;

/// Series per frame: a snapshot of 100,000 series goes out in frames of this many.
const FRAME_SERIES: usize = 500;
/// How long a follower may leave a frame unread before its stream is dropped.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A heartbeat frame after this long without a change, so followers know the leader lives.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Streams served at once: replicas are few, and each stream starts with a snapshot of the
/// whole table, so a caller holding a replica's token cannot make the leader build many.
pub const MAX_STREAMS: usize = 16;

/// What the leader's peer endpoints need.
#[derive(Debug)]
pub struct PeerServer {
    engine: Engine,
    leadership: Leadership,
    auth: Arc<Auth>,
    /// The Lease a peer must be allowed to `update`: (namespace, name).
    lease: (String, String),
    fingerprints: Arc<Fingerprints>,
    metrics: PeerMetrics,
    stop: CancellationToken,
    streams: Arc<tokio::sync::Semaphore>,
}

impl PeerServer {
    /// Endpoints serving `engine`'s table while `leadership` says this replica leads, to peers
    /// `auth` authenticates with a token and allows to update the Lease `namespace`/`name`.
    pub fn new(
        engine: Engine,
        leadership: Leadership,
        auth: Arc<Auth>,
        lease: (String, String),
        metrics: PeerMetrics,
        stop: CancellationToken,
    ) -> Self {
        Self {
            engine,
            leadership,
            auth,
            lease,
            fingerprints: Arc::new(Fingerprints::default()),
            metrics,
            stop,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// The routes, to merge into the secure port's router beside the API's: outside its
    /// authorization and its refusal of request bodies, within its timeout and panic guard.
    pub fn router(
        self: Arc<Self>,
        request_timeout: Duration,
        metrics: Arc<AdapterMetrics>,
    ) -> Router {
        let router = Router::new()
            .route(STREAM_PATH, get(stream))
            .route(DEMAND_PATH, post(demand))
            .with_state(self);
        crate::api::contain(router, request_timeout, metrics)
    }

    /// Whether the caller is one of the adapter's replicas: authenticated by TokenReview, and
    /// allowed to update the Lease. The error is the response to send.
    async fn admit(&self, headers: &HeaderMap) -> Result<(), Response> {
        let user = match self.auth.authenticate(headers, None).await {
            Ok(Authentication::User(user, Method::Token)) => user,
            Ok(_) => {
                self.metrics.refused("unauthenticated");
                return Err(ApiError::unauthorized().into_response());
            }
            Err(error) => {
                self.metrics.refused("unavailable");
                tracing::warn!(error = %error, "cannot authenticate a peer: the Kubernetes API server did not answer");
                return Err(ApiError::service_unavailable(
                    "the peer's token could not be checked; try again shortly",
                )
                .into_response());
            }
        };
        let (namespace, name) = &self.lease;
        let attributes = Arc::new(Attributes::Resource {
            verb: "update".to_string(),
            group: "coordination.k8s.io".to_string(),
            version: "v1".to_string(),
            resource: "leases".to_string(),
            subresource: String::new(),
            namespace: namespace.clone(),
            name: name.clone(),
        });
        match self.auth.authorize(&user, &attributes).await {
            Ok(Decision::Allow) => Ok(()),
            Ok(Decision::Deny(_)) => {
                self.metrics.refused("forbidden");
                tracing::info!(
                    "a peer without permission to update the Lease was refused (only the adapter's replicas may read values)"
                );
                Err(ApiError::forbidden(
                    "coordination.k8s.io",
                    "leases",
                    name,
                    "only the adapter's own replicas (allowed to update its Lease) may use the peer link",
                )
                .into_response())
            }
            Err(error) => {
                self.metrics.refused("unavailable");
                tracing::warn!(error = %error, "cannot authorize a peer: the Kubernetes API server did not answer");
                Err(ApiError::service_unavailable(
                    "whether the peer may read values could not be checked; try again shortly",
                )
                .into_response())
            }
        }
    }

    fn not_leading() -> Response {
        ApiError::service_unavailable(
            "this replica does not lead; find the leader through the Lease",
        )
        .into_response()
    }

    fn frame(&self, updated: Vec<WireSeries>, removed: Vec<WireKey>) -> Frame {
        Frame {
            sent: millis(SystemTime::now()),
            updated,
            removed,
            ..Frame::default()
        }
    }

    /// The whole table as frames, the last one marked complete.
    fn snapshot_frames(&self) -> Vec<Frame> {
        let series: Vec<WireSeries> = self
            .engine
            .snapshot()
            .iter()
            .map(|snapshot| WireSeries::of(snapshot, &self.fingerprints))
            .collect();
        let mut frames: Vec<Frame> = series
            .chunks(FRAME_SERIES)
            .map(|chunk| Frame {
                snapshot: true,
                ..self.frame(chunk.to_vec(), Vec::new())
            })
            .collect();
        if frames.is_empty() {
            frames.push(Frame {
                snapshot: true,
                ..self.frame(Vec::new(), Vec::new())
            });
        }
        if let Some(last) = frames.last_mut() {
            last.complete = true;
        }
        frames
    }

    /// Feed one follower until it falls behind for good, leadership is lost, or the server
    /// stops.
    async fn feed(
        self: Arc<Self>,
        mut changes: broadcast::Receiver<Change>,
        out: mpsc::Sender<Bytes>,
        _slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let _connected = self.metrics.follower_connected();
        let mut frames = self.snapshot_frames();
        loop {
            for frame in frames.drain(..) {
                let Ok(mut line) = serde_json::to_vec(&frame) else {
                    continue;
                };
                line.push(b'\n');
                match tokio::time::timeout(SEND_TIMEOUT, out.send(Bytes::from(line))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::info!(
                            "a follower stopped reading its stream; it was dropped and will reconnect"
                        );
                        return;
                    }
                }
            }
            if !self.leadership.is_leader() {
                return;
            }
            let first = tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(HEARTBEAT) => None,
                change = changes.recv() => Some(change),
            };
            let mut updated = Vec::new();
            let mut removed = Vec::new();
            let mut next = first;
            loop {
                match next {
                    None => break,
                    Some(Ok(Change::Updated(snapshot))) => {
                        updated.push(WireSeries::of(&snapshot, &self.fingerprints));
                    }
                    Some(Ok(Change::Removed(key))) => removed.push(WireKey::of(&key)),
                    Some(Err(broadcast::error::RecvError::Lagged(missed))) => {
                        tracing::info!(
                            missed,
                            "a follower fell behind the changes; sending it a fresh snapshot"
                        );
                        updated.clear();
                        removed.clear();
                        frames = self.snapshot_frames();
                        break;
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) => return,
                }
                if updated.len() + removed.len() >= FRAME_SERIES {
                    break;
                }
                next = match changes.try_recv() {
                    Ok(change) => Some(Ok(change)),
                    Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(missed)))
                    }
                    Err(_) => None,
                };
            }
            if !frames.is_empty() {
                continue;
            }
            frames.push(self.frame(updated, removed));
        }
    }
}

async fn stream(State(server): State<Arc<PeerServer>>, headers: HeaderMap) -> Response {
    if let Err(response) = server.admit(&headers).await {
        return response;
    }
    if !server.leadership.is_leader() {
        return PeerServer::not_leading();
    }
    let Ok(slot) = server.streams.clone().try_acquire_owned() else {
        return ApiError::service_unavailable(format!(
            "this leader already streams to {MAX_STREAMS} followers"
        ))
        .into_response();
    };
    // Subscribed before the snapshot is taken, so no change falls between the two.
    let changes = server.engine.subscribe();
    let (out, lines) = mpsc::channel::<Bytes>(4);
    tokio::spawn(server.clone().feed(changes, out, slot));
    let body = Body::from_stream(futures_util::stream::unfold(
        lines,
        |mut lines| async move {
            lines
                .recv()
                .await
                .map(|line| (Ok::<_, std::convert::Infallible>(line), lines))
        },
    ));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

async fn demand(State(server): State<Arc<PeerServer>>, headers: HeaderMap, body: Body) -> Response {
    if let Err(response) = server.admit(&headers).await {
        return response;
    }
    if !server.leadership.is_leader() {
        return PeerServer::not_leading();
    }
    // Read only once the caller is known to be a replica, and bounded.
    let bytes = match axum::body::to_bytes(body, MAX_DEMAND_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError::bad_request(format!(
                "a demand carries at most {MAX_DEMAND_BYTES} bytes"
            ))
            .into_response();
        }
    };
    let request: DemandRequest = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(error) => {
            return ApiError::bad_request(format!("not a demand: {error}")).into_response();
        }
    };
    if request.series.len() > MAX_DEMAND_SERIES {
        return ApiError::bad_request(format!("a demand names at most {MAX_DEMAND_SERIES} series"))
            .into_response();
    }
    let keys: Vec<_> = request.series.iter().map(WireKey::to_key).collect();
    server.metrics.demanded(keys.len());
    let activated = server.engine.activate(&keys);
    let refused = activated
        .refused
        .into_iter()
        .map(|(key, error)| (WireKey::of(&key), error))
        .collect();
    let held = activated
        .held
        .iter()
        .map(|snapshot| WireSeries::of(snapshot, &server.fingerprints))
        .collect();
    axum::Json(DemandResponse { refused, held }).into_response()
}
