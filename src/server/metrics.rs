//! The serving edge's metrics: connections, the cap, requests in flight, refusals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why an API connection ended (the `reason` label of `api_connections_closed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionClose {
    /// The client closed it, or it failed (normal life).
    Client,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// The TLS handshake did not finish within `--tls-handshake-timeout`.
    HandshakeTimeout,
    /// No complete request within `--header-read-timeout` of the handshake.
    HeaderReadTimeout,
    /// No request started or finished within `--idle-timeout`.
    IdleTimeout,
    /// Closed at `--max-connections` to make room for a new connection.
    Shed,
    /// Closed by shutdown (drained, or cut at the end of the grace period).
    Shutdown,
}

impl ConnectionClose {
    /// The metric label, also used in logs.
    pub fn label(self) -> &'static str {
        match self {
            ConnectionClose::Client => "client",
            ConnectionClose::HandshakeFailed => "tls_handshake_failed",
            ConnectionClose::HandshakeTimeout => "tls_handshake_timeout",
            ConnectionClose::HeaderReadTimeout => "header_read_timeout",
            ConnectionClose::IdleTimeout => "idle_timeout",
            ConnectionClose::Shed => "shed",
            ConnectionClose::Shutdown => "shutdown",
        }
    }
}

/// Connections and requests at the API port.
#[derive(Debug)]
pub struct EdgeMetrics {
    connections: Gauge,
    connection_limit: Gauge,
    connection_waits: Counter,
    requests_in_flight: Gauge,
    connections_closed: Family<ReasonLabels, Counter>,
    rejections: Family<ReasonLabels, Counter>,
}

impl EdgeMetrics {
    /// Register the edge's metrics on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let api_connections = Gauge::default();
        let api_connection_limit = Gauge::default();
        let api_connection_waits = Counter::default();
        let api_requests_in_flight = Gauge::default();
        let api_connections_closed = Family::<ReasonLabels, Counter>::default();
        let api_rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "api_connections",
            "Open connections on the API port, handshakes included",
            api_connections.clone(),
        );
        registry.register(
            "api_connection_limit",
            "The API port's connection cap (--max-connections)",
            api_connection_limit.clone(),
        );
        registry.register(
            "api_connection_waits",
            "Times the API port stopped accepting because every connection at the cap had a request in flight",
            api_connection_waits.clone(),
        );
        registry.register(
            "api_requests_in_flight",
            "API requests whose response is not fully sent (bounded by connections x HTTP/2 streams); high and flat means clients that do not read",
            api_requests_in_flight.clone(),
        );
        registry.register(
            "api_connections_closed",
            "API connections ended, by reason: client, tls_handshake_failed, tls_handshake_timeout, header_read_timeout, idle_timeout, shed (at the cap), shutdown",
            api_connections_closed.clone(),
        );
        registry.register(
            "api_rejections",
            "API requests refused before reaching a handler, by reason: request_body, timeout, panic",
            api_rejections.clone(),
        );
        EdgeMetrics {
            connections: api_connections,
            connection_limit: api_connection_limit,
            connection_waits: api_connection_waits,
            requests_in_flight: api_requests_in_flight,
            connections_closed: api_connections_closed,
            rejections: api_rejections,
        }
    }

    /// Set the number of open API connections.
    pub fn set_open_connections(&self, count: usize) {
        self.connections
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Set the API port's connection cap.
    pub fn set_connection_limit(&self, limit: usize) {
        self.connection_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Count one pause of the accept loop at the connection cap.
    pub fn connection_wait(&self) {
        self.connection_waits.inc();
    }

    /// One more (or, with -1, one fewer) API request whose response is not fully sent.
    pub fn request_in_flight(&self, delta: i64) {
        self.requests_in_flight.inc_by(delta);
    }

    /// Count one ended API connection.
    pub fn connection_closed(&self, reason: ConnectionClose) {
        self.connections_closed
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Count one request refused at the edge (`request_body`, `timeout`, `panic`).
    pub fn rejection(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
