//! Serving routers on already-bound listeners, with graceful drain.
//!
//! Both functions take a bound listener and a shutdown future so tests can run them on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::auth::connection::ClientCertificate;

/// What the TLS layer learned about a connection, attached to each of its requests as an
/// extension so authentication can use it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The certificate chain the client presented, if any, shared by every request of the
    /// connection. It chained to a CA trusted at handshake time; authentication checks it
    /// against the CAs trusted now (HTTP/2 connections outlive CA rotations) and keeps what it
    /// concluded on it, so a warm connection is not verified again.
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// A client gets this long to finish its TLS handshake, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `router` over TLS (HTTP/1.1 and HTTP/2 by ALPN) until `shutdown` resolves, then stop
/// accepting and wait up to `drain` for in-flight requests to finish.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and written as several frames; without TCP_NODELAY, Nagle's
        // algorithm meeting the client's delayed ACK can hold a response for tens of ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls_stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => tls_stream,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let info = ConnectionInfo {
                peer,
                client_certificate: tls_stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .filter(|chain| !chain.is_empty())
                    .map(|chain| Arc::new(ClientCertificate::new(chain.to_vec()))),
            };
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(info.clone());
                    router.clone().oneshot(request)
                });
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all API connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(?drain, "drain period over; closing remaining API connections"),
    }
}

/// Serve `router` over plain HTTP (the admin port) until `shutdown` resolves.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
