//! The follower's side of the peer link: find the leader through the Lease, read its stream into
//! the engine, and tell it what is asked for here.
//!
//! - The leader's certificate is checked against `--peer-ca-file` for the name
//!   `--peer-server-name` (the Service's name, which the serving certificate carries), while the
//!   connection goes to the address the leader advertises in the Lease (its pod IP). The CA file
//!   is read again at each connection, so a rotated CA is used without a restart.
//! - Every request presents the ServiceAccount token read from `--peer-token-file` at that
//!   moment (kubelet rewrites projected tokens well before they expire).
//! - A broken stream is reconnected with a bounded back-off; meanwhile the follower serves what it
//!   holds, until max age. Hearing nothing from a leader for the lease duration plus the retry
//!   period makes the replica fall back to reading what it is asked for itself ([`Link`]).
//! - Everything read is bounded: a line of the stream, a demand answer.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::http::{HeaderValue, Method, Request, Uri, header};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{DemandRequest, DemandResponse, Fingerprints, Frame, WireKey, WireSeries};
use super::{DEMAND_PATH, MAX_DEMAND_SERIES, PeerMetrics, STREAM_PATH};
use crate::engine::Engine;
use crate::leader::Leadership;
use crate::series::SeriesKey;

/// The longest line of the leader's stream accepted (a snapshot frame of 500 series is far
/// smaller).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// The largest demand answer accepted.
const MAX_DEMAND_ANSWER: usize = 4 * 1024 * 1024;
/// Longest token accepted from the token file (projected tokens are about 1 KB).
const MAX_TOKEN: usize = 64 * 1024;
/// Reconnection back-off: from this, doubling ...
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// ... to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long new demand lingers to gather a burst into one request.
const DEMAND_LINGER: Duration = Duration::from_millis(5);
/// How long a connection attempt or a demand may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream with no frame for this long is stalled (the leader sends a heartbeat every second):
/// it is dropped and reconnected, so a connection that stays open but carries nothing does not
/// pass for a live leader.
const STALL: Duration = Duration::from_secs(10);

/// How a follower reaches and trusts the leader.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The CA the leader's serving certificate chains to.
    pub ca_file: PathBuf,
    /// The name the leader's certificate must carry.
    pub server_name: String,
    /// This replica's ServiceAccount token.
    pub token_file: PathBuf,
    /// How often series asked for here are re-announced to the leader, so it keeps them active
    /// (well within the idle timeout).
    pub keepalive: Duration,
    /// Series asked for here within this long are announced to a new leader.
    pub idle_timeout: Duration,
    /// This replica's own advertised address: a Lease that still names it (its leadership
    /// lapsed, the record not yet taken over) is no leader to follow.
    pub own_address: Option<String>,
}

/// When this replica last heard from a leader (a frame of its stream), on the monotonic clock.
#[derive(Debug)]
pub struct Link {
    base: Instant,
    /// Nanoseconds after `base`.
    heard: AtomicU64,
}

impl Link {
    /// A link that counts as having heard from a leader now (so a starting replica waits a
    /// full lease before it falls back).
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            heard: AtomicU64::new(0),
        }
    }

    pub(crate) fn heard_now(&self) {
        let nanos = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        self.heard
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Whether a leader was heard from within `patience`.
    pub fn heard_within(&self, patience: Duration) -> bool {
        let heard = self.base + Duration::from_nanos(self.heard.load(Ordering::Acquire));
        Instant::now().saturating_duration_since(heard) <= patience
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

/// Why talking to the leader failed (for the log).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A file could not be read or used.
    #[error("{what} {path}")]
    File {
        /// What it is.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request could not be made or answered.
    #[error("request to the leader failed")]
    Request(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The leader answered with an error status.
    #[error("the leader answered HTTP {0}")]
    Status(u16),
    /// The leader sent something this replica cannot read.
    #[error("the leader's answer is unreadable")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Checks the leader's certificate for a fixed name, whatever address the connection went to.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The follower: a stream reader and a demand sender, both until `stop`.
#[derive(Debug, Clone)]
pub struct Follower {
    engine: Engine,
    leadership: Leadership,
    link: Arc<Link>,
    config: ClientConfig,
    metrics: PeerMetrics,
    fingerprints: Arc<Fingerprints>,
    /// Told after every complete snapshot: announce everything asked for here.
    resync: Arc<tokio::sync::Notify>,
    /// True from the first complete snapshot of a leader's stream on.
    synced: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Follower {
    /// A follower of whichever replica `leadership` observes as leader.
    pub fn new(
        engine: Engine,
        leadership: Leadership,
        link: Arc<Link>,
        config: ClientConfig,
        metrics: PeerMetrics,
    ) -> Self {
        Self {
            engine,
            leadership,
            link,
            config,
            metrics,
            fingerprints: Arc::new(Fingerprints::default()),
            resync: Arc::new(tokio::sync::Notify::new()),
            synced: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Turns true once this replica holds a leader's whole table (the first complete snapshot of
    /// its stream), and stays true.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// Read the leader's stream and send demand until `stop`.
    pub async fn run(self, demand: mpsc::Receiver<SeriesKey>, stop: CancellationToken) {
        tokio::join!(
            self.clone().stream_loop(stop.clone()),
            self.demand_loop(demand, stop)
        );
    }

    /// The leader to follow: the observed holder's address, unless this replica leads.
    fn leader_address(&self) -> Option<String> {
        if self.leadership.is_leader() {
            return None;
        }
        self.leadership
            .leader()?
            .peer_address
            .filter(|address| Some(address) != self.config.own_address.as_ref())
    }

    /// A client for one connection attempt: the CA as it is now.
    fn client(&self) -> Result<HttpClient, LinkError> {
        let path = self.config.ca_file.display().to_string();
        let file_error = |cause: Box<dyn std::error::Error + Send + Sync>| LinkError::File {
            what: "--peer-ca-file",
            path: path.clone(),
            cause,
        };
        let pem = std::fs::read(&self.config.ca_file).map_err(|e| file_error(Box::new(e)))?;
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| file_error(Box::new(e)))?;
            roots
                .add(certificate)
                .map_err(|e| file_error(Box::new(e)))?;
        }
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()
                .map_err(|e| file_error(Box::new(e)))?;
        let name =
            ServerName::try_from(self.config.server_name.clone()).map_err(|e| LinkError::File {
                what: "--peer-server-name",
                path: self.config.server_name.clone(),
                cause: Box::new(e),
            })?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| LinkError::Request(Box::new(e)))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier { inner, name }))
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(5))
            .build(connector))
    }

    /// `Authorization: Bearer <token>`, read from the token file now.
    async fn authorization(&self) -> Result<HeaderValue, LinkError> {
        let path = self.config.token_file.clone();
        let file_error = |cause: Box<dyn std::error::Error + Send + Sync>| LinkError::File {
            what: "--peer-token-file",
            path: path.display().to_string(),
            cause,
        };
        let token = tokio::fs::read(&path)
            .await
            .map_err(|e| file_error(Box::new(e)))?;
        if token.len() > MAX_TOKEN {
            return Err(file_error("the token is longer than 64 KiB".into()));
        }
        let token = String::from_utf8(token).map_err(|e| file_error(Box::new(e)))?;
        let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|e| file_error(Box::new(e)))?;
        value.set_sensitive(true);
        Ok(value)
    }

    async fn request(
        &self,
        client: &HttpClient,
        address: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<hyper::Response<hyper::body::Incoming>, LinkError> {
        let uri: Uri = format!("https://{address}{path}")
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| LinkError::Request(Box::new(e)))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, self.authorization().await?);
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| LinkError::Request(Box::new(e)))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
            .await
            .map_err(|_| LinkError::Timeout(REQUEST_TIMEOUT))?
            .map_err(|e| LinkError::Request(Box::new(e)))?;
        if !response.status().is_success() {
            return Err(LinkError::Status(response.status().as_u16()));
        }
        Ok(response)
    }

    async fn stream_loop(self, stop: CancellationToken) {
        let mut changes = self.leadership.changes();
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(address) = self.leader_address() else {
                self.metrics.set_stream_up(false);
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(BACKOFF_MAX) => {}
                }
                continue;
            };
            let started = Instant::now();
            let result = tokio::select! {
                () = stop.cancelled() => return,
                _ = changes.changed() => Ok(()),
                result = self.follow(&address) => result,
            };
            self.metrics.set_stream_up(false);
            if let Err(error) = result {
                tracing::info!(leader = %address, error = %crate::telemetry::Chain(&error), "peer stream from the leader ended; reconnecting");
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(BACKOFF_MAX),
                // A new leader observed (a failover): connect to it now, not after the back-off
                // that retrying the dead one built up.
                Ok(()) = changes.changed() => backoff = BACKOFF_MIN,
            }
        }
    }

    /// Read one stream from the leader at `address` until it ends.
    async fn follow(&self, address: &str) -> Result<(), LinkError> {
        let client = self.client()?;
        let response = self
            .request(&client, address, Method::GET, STREAM_PATH, Bytes::new())
            .await?;
        self.metrics.set_stream_up(true);
        self.metrics.stream_started();
        tracing::info!(leader = %address, "following the leader's stream");
        let mut body = response.into_body();
        let mut buffer = BytesMut::new();
        let mut snapshot: HashSet<SeriesKey> = HashSet::new();
        loop {
            let Some(frame) = tokio::time::timeout(STALL, body.frame())
                .await
                .map_err(|_| LinkError::Timeout(STALL))?
            else {
                return Ok(());
            };
            let frame = frame.map_err(|e| LinkError::Request(Box::new(e)))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line = buffer.split_to(end + 1);
                let frame: Frame = serde_json::from_slice(&line[..end])
                    .map_err(|e| LinkError::Unreadable(Box::new(e)))?;
                self.apply(frame, &mut snapshot);
            }
            if buffer.len() > MAX_LINE {
                return Err(LinkError::Unreadable(
                    format!("a line longer than {MAX_LINE} bytes").into(),
                ));
            }
        }
    }

    /// Take one series as the leader holds it, if it was read under the definition this
    /// replica serves (not under another version of it: an edit not yet seen by one of the
    /// two).
    fn take(&self, series: &WireSeries) {
        let key = series.key.to_key();
        let applied = self.engine.definition_of(&key).is_some_and(|definition| {
            self.fingerprints.of(&definition) == series.spec
                && self.engine.apply(&series.to_snapshot(definition))
        });
        if !applied {
            self.metrics.skipped();
        }
    }

    /// Take a frame of the leader's into the engine.
    fn apply(&self, frame: Frame, snapshot: &mut HashSet<SeriesKey>) {
        self.link.heard_now();
        if !frame.updated.is_empty() || !frame.removed.is_empty() {
            let lag = SystemTime::now()
                .duration_since(super::wire::time(frame.sent))
                .unwrap_or_default();
            self.metrics.observe_lag(lag);
        }
        for series in &frame.updated {
            self.take(series);
            if frame.snapshot {
                snapshot.insert(series.key.to_key());
            }
        }
        for key in &frame.removed {
            self.engine.remove(&key.to_key());
        }
        if frame.complete {
            // What the leader does not hold and nobody here asked for lately is gone.
            let held = std::mem::take(snapshot);
            let asked = self.engine.requested_here_since(
                Instant::now()
                    .checked_sub(self.config.idle_timeout)
                    .unwrap_or_else(Instant::now),
            );
            let asked: HashSet<SeriesKey> = asked.into_iter().collect();
            for key in self.engine.keys() {
                if !held.contains(&key) && !asked.contains(&key) {
                    self.engine.remove(&key);
                }
            }
            // A new leader may not know what is asked for here: tell it.
            self.resync.notify_one();
            self.synced
                .send_if_modified(|synced| !std::mem::replace(synced, true));
        }
    }

    async fn demand_loop(self, mut demand: mpsc::Receiver<SeriesKey>, stop: CancellationToken) {
        let mut keepalive = tokio::time::interval(self.config.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            let keys = tokio::select! {
                () = stop.cancelled() => return,
                key = demand.recv() => {
                    let Some(key) = key else { return };
                    let mut keys = vec![key];
                    let linger = tokio::time::sleep(DEMAND_LINGER);
                    tokio::pin!(linger);
                    while keys.len() < MAX_DEMAND_SERIES {
                        tokio::select! {
                            () = &mut linger => break,
                            key = demand.recv() => match key {
                                Some(key) => keys.push(key),
                                None => break,
                            },
                        }
                    }
                    keys
                }
                _ = keepalive.tick() => {
                    let since = last.checked_sub(Duration::from_secs(1)).unwrap_or(last);
                    last = Instant::now();
                    self.engine.requested_here_since(since)
                }
                () = self.resync.notified() => {
                    let since = Instant::now()
                        .checked_sub(self.config.idle_timeout)
                        .unwrap_or_else(Instant::now);
                    self.engine.requested_here_since(since)
                }
            };
            if keys.is_empty() || self.leadership.is_leader() {
                continue;
            }
            let Some(address) = self.leader_address() else {
                continue;
            };
            for chunk in keys.chunks(MAX_DEMAND_SERIES) {
                if let Err(error) = self.send_demand(&address, chunk).await {
                    // The next keep-alive (or the next connection's resync) carries them again.
                    tracing::debug!(leader = %address, error = %crate::telemetry::Chain(&error), "demand not delivered to the leader");
                    self.metrics.demand_failed();
                    break;
                }
            }
        }
    }

    async fn send_demand(&self, address: &str, keys: &[SeriesKey]) -> Result<(), LinkError> {
        let client = self.client()?;
        let body = serde_json::to_vec(&DemandRequest {
            series: keys.iter().map(WireKey::of).collect(),
        })
        .map_err(|e| LinkError::Unreadable(Box::new(e)))?;
        let response = self
            .request(
                &client,
                address,
                Method::POST,
                DEMAND_PATH,
                Bytes::from(body),
            )
            .await?;
        let bytes = Limited::new(response.into_body(), MAX_DEMAND_ANSWER)
            .collect()
            .await
            .map_err(LinkError::Unreadable)?
            .to_bytes();
        let answer: DemandResponse =
            serde_json::from_slice(&bytes).map_err(|e| LinkError::Unreadable(Box::new(e)))?;
        for (key, error) in answer.refused {
            self.engine.refuse(&key.to_key(), error);
        }
        for series in &answer.held {
            self.take(series);
        }
        Ok(())
    }
}
