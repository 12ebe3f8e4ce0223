//! Clients that misbehave at the serving edge: TLS connections with chosen ALPN, and HTTP/2
//! connections that never open their receive window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TLS client trusting `ca_pem`, offering `alpn`.
pub fn connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(addr: SocketAddr, connector: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// A zero-window HTTP/2 connection and what it holds.
pub struct ZeroWindow {
    /// The connection's driver; aborting it closes the connection.
    pub connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    /// The responses the server started (heads received); their bodies can never arrive.
    pub responses: Vec<http::Response<h2::RecvStream>>,
    /// The concurrent-stream limit the server advertised.
    pub advertised_streams: usize,
    /// Keeps the connection open.
    pub client: h2::client::SendRequest<bytes::Bytes>,
}

/// An HTTP/2 connection with a zero receive window that opens up to `streams` requests for
/// `path` (as many as the server allows), so no response body can ever be sent.
pub async fn zero_window_connection(
    addr: SocketAddr,
    connector: &TlsConnector,
    streams: usize,
    path: &str,
) -> ZeroWindow {
    let stream = tls_connect(addr, connector).await;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = || {
        http::Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap()
    };
    // The first response head means the server's SETTINGS (sent before it) are known.
    let (first, _) = client.send_request(request(), true).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("no response head within 10 s")
        .unwrap();
    let advertised_streams = client.current_max_send_streams();
    let mut pending = Vec::new();
    for _ in 1..streams.min(advertised_streams) {
        std::future::poll_fn(|cx| client.poll_ready(cx))
            .await
            .unwrap();
        let (response, _) = client.send_request(request(), true).unwrap();
        pending.push(response);
    }
    // Response heads are not flow-controlled: every stream gets one.
    let mut responses = vec![first];
    for response in futures_util::future::join_all(pending).await {
        responses.push(response.unwrap());
    }
    ZeroWindow {
        connection,
        responses,
        advertised_streams,
        client,
    }
}
