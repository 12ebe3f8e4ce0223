//! Serving routers on already-bound listeners: the API port's limits, and graceful drain.
//!
//! Both functions take a bound listener and shutdown signals so tests can run them on port 0.
//!
//! # What an unauthenticated client can hold on the API port
//!
//! Authentication runs only once a complete request has arrived, so everything before that is
//! bounded here, per connection and in total:
//!
//! - **Time.** The TLS handshake must finish within `tls_handshake_timeout`, the first complete
//!   request must arrive within `header_read_timeout` of the handshake, and a connection on which
//!   no request starts or finishes for `idle_timeout` is closed (HTTP/2 with a GOAWAY). The last
//!   rule is deliberately about *progress*, not about requests in flight: a client that opens
//!   streams and never opens its receive window keeps its responses unsent forever, and would
//!   otherwise hold them as long as it likes. The request timeout (in `api`) is shorter than the
//!   idle timeout (checked in `config`), so a slow legitimate request always finishes first.
//! - **Connections.** At most `max_connections` at once, counting handshakes. At the cap a new
//!   connection is not refused outright: the connection that is least useful is closed to make
//!   room, in this order: (1) the oldest connection that has not yet sent a complete request
//!   (handshaking, or silent after it), (2) the connection idle the longest (no request in
//!   flight), (3) the connection stalled the longest: requests in flight for longer than any
//!   handler may take (`request_timeout` + [`STALL_MARGIN`]) with no response finishing, which
//!   means its client is not reading. Only when every connection is doing work does the server
//!   stop accepting; new clients then wait in the kernel's accept queue. So a flood of silent
//!   connections can never lock out a legitimate client (each new connection displaces the
//!   oldest silent one, and a legitimate client's first request arrives long before `max` more
//!   handshakes do), zero-window connections can delay one by at most the request timeout and
//!   the margin, and connections doing work are never shed for newcomers.
//! - **Memory per connection.** HTTP/2: `http2_max_concurrent_streams` streams, response bytes
//!   buffered per stream capped by `http2_max_send_buffer`, small receive windows (this API
//!   takes no request bodies), a header list cap, and h2's rapid-reset guards. HTTP/1.1: one
//!   request at a time, the header size cap.
//!
//! Every task spawned here (one per connection, one per HTTP/2 stream) is tracked, carries a span
//! naming the connection (id and peer address, never an identity), and is joined before
//! [`serve_tls`] returns.

pub mod metrics;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::Instrument;

use self::metrics::ConnectionClose;
use crate::metrics::AdapterMetrics;

use crate::remote::{Peer, PeerCertificate};

/// The peer of a TLS connection, as its requests see it (a request extension).
fn peer(address: SocketAddr, tls: &rustls::ServerConnection) -> Peer {
    Peer {
        address,
        certificate: tls
            .peer_certificates()
            .filter(|chain| !chain.is_empty())
            .map(|chain| Arc::new(PeerCertificate::new(chain.to_vec()))),
    }
}

/// Limits on what a client can hold on the API port (see the module documentation).
#[derive(Debug, Clone)]
pub struct EdgeLimits {
    /// A client gets this long to finish its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// After the handshake, a client gets this long to send a complete first request.
    pub header_read_timeout: Duration,
    /// A connection on which no request starts or finishes for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections at once, handshakes included.
    pub max_connections: usize,
    /// HTTP/2: streams a client may have open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: response bytes buffered per stream while the client's window is closed.
    pub http2_max_send_buffer: usize,
    /// HTTP/2: how often an idle connection is pinged to find dead peers (no answer within
    /// [`HTTP2_KEEPALIVE_TIMEOUT`] closes it).
    pub http2_keepalive_interval: Duration,
    /// Request header bytes (HTTP/2: the decoded header list; HTTP/1.1: the read buffer).
    pub max_header_bytes: u32,
    /// How long a handler may take (the API layer answers `504` then). A connection whose
    /// requests have been in flight longer than this plus [`STALL_MARGIN`], with no response
    /// finishing, is waiting on its client (a closed receive window): sheddable at the cap.
    pub request_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            http2_max_concurrent_streams: 100,
            http2_max_send_buffer: 64 * 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a pinged HTTP/2 peer has to answer before its connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// This API takes no request bodies, so the receive windows only need to be large enough for
/// a client that sends one anyway to get its refusal: 16 KiB per stream, and the protocol's
/// initial 64 KiB per connection (the least HTTP/2 allows). hyper's defaults (1 MiB each) would
/// let every stream park a megabyte of data the server never reads.
const HTTP2_STREAM_WINDOW: u32 = 16 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 65_535;

/// Rapid reset (CVE-2023-44487): streams a client may open and reset before the server has
/// accepted them, and streams the server may reset for protocol errors, before the connection
/// is closed with GOAWAY. h2's defaults are 20 and 1024; a well-behaved client needs neither.
const HTTP2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 64;

/// Time to write a finished response to a client that reads, beyond the request timeout.
pub const STALL_MARGIN: Duration = Duration::from_secs(5);

/// How often a full accept loop looks again for a stalled connection to shed.
const ROOM_RECHECK: Duration = Duration::from_secs(1);

/// After an idle connection is told to close (HTTP/2 GOAWAY), how long it gets to go quietly
/// before its socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// When and how the API server stops.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Cancelled to stop accepting and start draining.
    pub shutdown: CancellationToken,
    /// Cancelled (a second signal) to cut the drain short.
    pub abort: CancellationToken,
    /// How long in-flight requests get to finish.
    pub grace: Duration,
}

/// Serve `router` over TLS (HTTP/1.1 and HTTP/2 by ALPN) within `limits` until
/// `drain.shutdown` is cancelled, then stop accepting and wait up to `drain.grace` for
/// in-flight requests to finish; `drain.abort` cuts that short. Returns once every connection
/// task ended.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    limits: EdgeLimits,
    metrics: Arc<AdapterMetrics>,
    drain: Drain,
) {
    let Drain {
        shutdown,
        abort,
        grace: drain,
    } = drain;
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let registry = Registry::new(
        limits.max_connections,
        limits.request_timeout + STALL_MARGIN,
        metrics.clone(),
    );
    // Told at shutdown: every connection finishes what is in flight, then closes.
    let draining = CancellationToken::new();
    // Told when the drain period ends or a second signal arrives: connections close at once.
    let closing = abort.child_token();
    let builders = Builders::new(&limits, &tracker);
    'accept: loop {
        // At the cap with every connection busy, leave new clients in the kernel's accept
        // queue until a connection ends or goes idle.
        if !registry.has_room() {
            metrics.edge().connection_wait();
            while !registry.has_room() {
                tokio::select! {
                    () = registry.room.notified() => {}
                    // A connection can become sheddable (stalled) without any event.
                    () = tokio::time::sleep(ROOM_RECHECK) => {}
                    () = shutdown.cancelled() => break 'accept,
                }
            }
        }
        let (stream, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        () = shutdown.cancelled() => break,
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Room may have gone while accept waited (the idle connection got a request): this
        // one connection then waits, accepted, for the next room.
        let mut counted = false;
        let slot = loop {
            if let Some(slot) = registry.admit() {
                break slot;
            }
            if !std::mem::replace(&mut counted, true) {
                metrics.edge().connection_wait();
            }
            tokio::select! {
                () = registry.room.notified() => {}
                () = tokio::time::sleep(ROOM_RECHECK) => {}
                () = shutdown.cancelled() => break 'accept,
            }
        };
        let span = tracing::info_span!("connection", id = slot.id, peer = %address);
        let connection = Connection {
            stream,
            address,
            slot,
            acceptor: acceptor.clone(),
            router: router.clone(),
            builders: builders.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            closing: closing.clone(),
        };
        tracker.spawn(connection.run().instrument(span));
    }
    drop(listener);
    tracker.close();
    draining.cancel();
    tokio::select! {
        () = tracker.wait() => tracing::info!("all API connections drained"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "drain period over; closing remaining API connections");
        }
        () = abort.cancelled() => tracing::warn!("drain aborted; closing remaining API connections"),
    }
    closing.cancel();
    tracker.wait().await;
}

/// The protocol servers, configured once: HTTP/2 for ALPN `h2`, HTTP/1.1 for `http/1.1`, and
/// version sniffing for a client that offered no ALPN.
#[derive(Clone)]
struct Builders {
    h2: Arc<auto::Builder<TrackedExecutor>>,
    h1: Arc<auto::Builder<TrackedExecutor>>,
    sniff: Arc<auto::Builder<TrackedExecutor>>,
}

impl Builders {
    fn new(limits: &EdgeLimits, tracker: &TaskTracker) -> Self {
        let mut builder = auto::Builder::new(TrackedExecutor {
            tracker: tracker.clone(),
        });
        builder
            .http1()
            // The connection task enforces the header-read and idle timeouts for both
            // protocols; hyper's own (30 s by default) would also end idle keep-alives early.
            .header_read_timeout(None)
            .max_buf_size((limits.max_header_bytes as usize).max(8192))
            .timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_send_buf_size(limits.http2_max_send_buffer)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_header_list_size(limits.max_header_bytes)
            .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESETS)
            .keep_alive_interval(limits.http2_keepalive_interval)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT);
        Builders {
            h2: Arc::new(builder.clone().http2_only()),
            h1: Arc::new(builder.clone().http1_only()),
            sniff: Arc::new(builder),
        }
    }

    fn for_alpn(&self, alpn: Option<&[u8]>) -> &auto::Builder<TrackedExecutor> {
        match alpn {
            Some(b"h2") => &self.h2,
            Some(b"http/1.1") => &self.h1,
            _ => &self.sniff,
        }
    }
}

/// Spawns hyper's per-stream tasks (HTTP/2) on the server's tracker, inside the connection's
/// span, so they are joined at shutdown and their logs name the connection.
#[derive(Clone, Debug)]
struct TrackedExecutor {
    tracker: TaskTracker,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.tracker.spawn(future.in_current_span());
    }
}

/// One accepted socket, from handshake to close.
struct Connection {
    stream: TcpStream,
    address: SocketAddr,
    slot: Slot,
    acceptor: TlsAcceptor,
    router: Router,
    builders: Builders,
    limits: EdgeLimits,
    metrics: Arc<AdapterMetrics>,
    draining: CancellationToken,
    closing: CancellationToken,
}

impl Connection {
    async fn run(self) {
        let Connection {
            stream,
            address,
            slot,
            acceptor,
            router,
            builders,
            limits,
            metrics,
            draining,
            closing,
        } = self;
        // Responses are small and written as several frames; without TCP_NODELAY, Nagle's
        // algorithm meeting the client's delayed ACK can hold a response for tens of ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let shed = slot.state.shed.clone();
        let handshake = tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
        let tls_stream = tokio::select! {
            outcome = handshake => match outcome {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    metrics.edge().connection_closed(ConnectionClose::HandshakeFailed);
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    metrics.edge().connection_closed(ConnectionClose::HandshakeTimeout);
                    return;
                }
            },
            () = shed.cancelled() => {
                tracing::debug!("closed during its handshake to make room for a new connection");
                metrics.edge().connection_closed(ConnectionClose::Shed);
                return;
            }
            () = closing.cancelled() => {
                metrics.edge().connection_closed(ConnectionClose::Shutdown);
                return;
            }
        };
        let state = slot.state.clone();
        state.handshake_done();
        let session = &tls_stream.get_ref().1;
        let builder = builders.for_alpn(session.alpn_protocol()).clone();
        let info = peer(address, session);
        let request_state = state.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(info.clone());
            let in_flight = request_state.request_started();
            let response = router.clone().oneshot(request);
            async move {
                let response = response.await?;
                // The request counts as in flight until its body is fully sent (or dropped).
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| TrackedBody { body, in_flight }),
                )
            }
        });
        let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
        tokio::pin!(connection);
        // Set once this side decided to close: the reason, and when to stop waiting politely.
        let mut told_to_close = false;
        let mut closing_for: Option<(ConnectionClose, Instant)> = None;
        let reason = loop {
            let deadline = match closing_for {
                Some((_, by)) => by,
                None => state.deadline(&limits),
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    break match closing_for {
                        Some((reason, _)) => reason,
                        None if draining.is_cancelled() => ConnectionClose::Shutdown,
                        None => ConnectionClose::Client,
                    };
                }
                () = draining.cancelled(), if !told_to_close => {
                    // HTTP/2: GOAWAY, then in-flight streams finish; HTTP/1.1: close when idle.
                    connection.as_mut().graceful_shutdown();
                    told_to_close = true;
                }
                () = closing.cancelled() => break ConnectionClose::Shutdown,
                () = shed.cancelled() => {
                    tracing::debug!("closed to make room for a new connection");
                    break ConnectionClose::Shed;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some((reason, _)) = closing_for {
                        break reason;
                    }
                    // Progress may have moved the deadline while this timer slept.
                    if state.deadline(&limits) > Instant::now() {
                        continue;
                    }
                    let reason = if state.requests() == 0 {
                        tracing::debug!(timeout = ?limits.header_read_timeout, "no complete request within the header-read timeout");
                        ConnectionClose::HeaderReadTimeout
                    } else {
                        tracing::debug!(timeout = ?limits.idle_timeout, "no request started or finished within the idle timeout");
                        ConnectionClose::IdleTimeout
                    };
                    if reason == ConnectionClose::HeaderReadTimeout {
                        break reason;
                    }
                    if !told_to_close {
                        connection.as_mut().graceful_shutdown();
                        told_to_close = true;
                    }
                    closing_for = Some((reason, Instant::now() + CLOSE_GRACE));
                }
            }
        };
        tracing::debug!(reason = reason.label(), "connection closed");
        metrics.edge().connection_closed(reason);
        drop(slot);
    }
}

/// A response body that marks its request finished when dropped: after hyper wrote its last
/// byte, or when the stream or connection went away.
struct TrackedBody {
    body: axum::body::Body,
    #[allow(dead_code, reason = "held for its Drop")]
    in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = <axum::body::Body as Body>::Data;
    type Error = <axum::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What one connection has done, shared by its task, its requests and the registry.
#[derive(Debug)]
struct ConnectionState {
    /// When the registry admitted it; the base of the progress clock.
    admitted: Instant,
    /// Nanoseconds after `admitted` of the last progress: handshake done, a request started,
    /// a response finished.
    progress: AtomicU64,
    /// Requests started (complete request heads received).
    requests: AtomicU64,
    /// Requests whose response is not fully sent.
    in_flight: AtomicUsize,
    /// Nanoseconds after `admitted` when `in_flight` last went from 0 to 1.
    busy_since: AtomicU64,
    /// Nanoseconds after `admitted` when a response last finished.
    last_finish: AtomicU64,
    /// Told when the registry closes this connection to make room.
    shed: CancellationToken,
    /// The registry's room signal: this connection going idle may make room at the cap.
    room: Arc<Notify>,
    /// For `api_requests_in_flight`.
    metrics: Arc<AdapterMetrics>,
}

impl ConnectionState {
    fn new(room: Arc<Notify>, metrics: Arc<AdapterMetrics>) -> Self {
        ConnectionState {
            admitted: Instant::now(),
            progress: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
            last_finish: AtomicU64::new(0),
            shed: CancellationToken::new(),
            room,
            metrics,
        }
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(self.admitted.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn mark_progress(&self) -> u64 {
        let now = self.now_nanos();
        self.progress.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// How long this connection has had requests in flight without any response finishing.
    /// Every request in flight at the later of "became busy" and "last finish" is still in
    /// flight, so that request has waited at least this long.
    fn stalled_for(&self) -> Duration {
        if self.in_flight() == 0 {
            return Duration::ZERO;
        }
        let since = self
            .busy_since
            .load(Ordering::Relaxed)
            .max(self.last_finish.load(Ordering::Relaxed));
        Duration::from_nanos(self.now_nanos().saturating_sub(since))
    }

    fn last_progress(&self) -> Instant {
        self.admitted + Duration::from_nanos(self.progress.load(Ordering::Relaxed))
    }

    fn handshake_done(&self) {
        self.mark_progress();
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.mark_progress();
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.busy_since.store(now, Ordering::Relaxed);
        }
        self.metrics.edge().request_in_flight(1);
        InFlight {
            state: self.clone(),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the connection is closed unless it makes progress first: the header-read timeout
    /// until its first request, then the idle timeout.
    fn deadline(&self, limits: &EdgeLimits) -> Instant {
        let allowed = if self.requests() == 0 {
            limits.header_read_timeout
        } else {
            limits.idle_timeout
        };
        self.last_progress() + allowed
    }
}

/// One request in flight; its drop is progress.
struct InFlight {
    state: Arc<ConnectionState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.state.mark_progress();
        self.state.last_finish.fetch_max(now, Ordering::Relaxed);
        let before = self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.edge().request_in_flight(-1);
        if before == 1 {
            self.state.room.notify_one();
        }
    }
}

/// The open connections, oldest first, and the cap.
struct Registry {
    max: usize,
    /// In flight this long with nothing finishing: waiting on the client, sheddable.
    stall_after: Duration,
    connections: Mutex<BTreeMap<u64, Arc<ConnectionState>>>,
    next_id: AtomicU64,
    /// Told when a connection ends or goes idle: room at the cap, perhaps.
    room: Arc<Notify>,
    metrics: Arc<AdapterMetrics>,
}

impl Registry {
    fn new(max: usize, stall_after: Duration, metrics: Arc<AdapterMetrics>) -> Arc<Self> {
        metrics.edge().set_connection_limit(max);
        Arc::new(Registry {
            max,
            stall_after,
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            room: Arc::new(Notify::new()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnectionState>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection to close to make room at the cap (see the module documentation): the
    /// oldest that has sent no request, else the one idle longest, else the one stalled longest
    /// on a client that does not read; none if every connection is doing work.
    fn victim(&self, connections: &BTreeMap<u64, Arc<ConnectionState>>) -> Option<u64> {
        let silent = connections
            .iter()
            .find(|(_, state)| state.requests() == 0)
            .map(|(id, _)| *id);
        let idle = || {
            connections
                .iter()
                .filter(|(_, state)| state.in_flight() == 0)
                .min_by_key(|(_, state)| state.last_progress())
                .map(|(id, _)| *id)
        };
        let stalled = || {
            connections
                .iter()
                .map(|(id, state)| (*id, state.stalled_for()))
                .filter(|(_, stalled)| *stalled > self.stall_after)
                .max_by_key(|(_, stalled)| *stalled)
                .map(|(id, _)| id)
        };
        silent.or_else(idle).or_else(stalled)
    }

    /// Whether one more connection could be admitted now.
    fn has_room(&self) -> bool {
        let connections = self.lock();
        connections.len() < self.max || self.victim(&connections).is_some()
    }

    /// A slot for one more connection, shedding another at the cap; `None` when every
    /// connection has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut connections = self.lock();
        if connections.len() >= self.max {
            let victim = self.victim(&connections)?;
            if let Some(state) = connections.remove(&victim) {
                state.shed.cancel();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnectionState::new(
            self.room.clone(),
            self.metrics.clone(),
        ));
        connections.insert(id, state.clone());
        self.metrics.edge().set_open_connections(connections.len());
        Some(Slot {
            id,
            state,
            registry: self.clone(),
        })
    }
}

/// A connection's place in the registry, given back when its task ends.
struct Slot {
    id: u64,
    state: Arc<ConnectionState>,
    registry: Arc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self.registry.lock();
        connections.remove(&self.id);
        self.registry
            .metrics
            .edge()
            .set_open_connections(connections.len());
        drop(connections);
        self.registry.room.notify_one();
    }
}

/// Bounds on the admin port (plain HTTP: probes and scrapes). It has no authentication, so,
/// like the API port, it bounds what any client can hold: connections (within the file
/// descriptors [`RESERVED_FILE_DESCRIPTORS`] keeps out of the API port's reach), the time to
/// send a request (hyper's header-read timeout), one request per connection, the request
/// header buffer, and a connection's lifetime. At the cap, new clients wait in the kernel's
/// accept queue until a connection ends, at most the header-read timeout for a silent one.
#[derive(Debug, Clone)]
pub struct AdminLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Time to send a complete request.
    pub header_read_timeout: Duration,
    /// A connection is closed (after its request in flight) once this old.
    pub max_lifetime: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(300),
        }
    }
}

/// The admin port's request header buffer: probes and scrapes send a few hundred bytes.
const ADMIN_MAX_BUFFER: usize = 16 * 1024;

/// Serve `router` over plain HTTP/1.1 (the admin port) within `limits` until `shutdown`
/// resolves; then connections finish their request in flight (for at most [`CLOSE_GRACE`])
/// and every connection task is joined before this returns.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // One request per connection: a client that keeps asking cannot hold a slot for
        // longer than one request takes (probes and scrapes reconnect anyway).
        .keep_alive(false)
        .max_buf_size(ADMIN_MAX_BUFFER);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            router.clone().oneshot(request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let (closing, lifetime) = (closing.clone(), limits.max_lifetime);
        tracker.spawn(
            async move {
                let _permit = permit;
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "admin connection ended with an error");
                        }
                        return;
                    }
                    () = closing.cancelled() => {}
                    () = tokio::time::sleep(lifetime) => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
            }
            .instrument(tracing::debug_span!("admin connection", %peer)),
        );
    }
    drop(listener);
    tracker.close();
    closing.cancel();
    tracker.wait().await;
    Ok(())
}

/// The soft limit on open files, raised to the hard limit first (as Go's runtime does), so
/// `--max-connections` can be checked against it at start. `u64::MAX` means unlimited.
pub fn open_files_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(err) => tracing::debug!(error = %err, "cannot raise the open-files limit"),
        }
    }
    // `None` means unlimited.
    limit.current.unwrap_or(u64::MAX)
}

/// File descriptors kept free for everything but API connections: the admin port and its
/// scrapes, CloudWatch, STS and Kubernetes clients, certificate and definition files.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 256;
