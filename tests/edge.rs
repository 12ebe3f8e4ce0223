//! The serving edge under slow, silent and greedy clients, on real sockets: the connection cap
//! and who is shed at it, the handshake, header-read and idle timeouts, HTTP/2 stream limits.
//!
//! Real sockets and real time: tokio's paused time auto-advances whenever the runtime is idle,
//! which with real I/O outstanding fires every timeout at once. The timeouts are short instead,
//! and each test waits for the event it expects (bounded), never for a fixed time.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cloudwatch_emulator::Emulator;
use common::edge::{connector, tls_connect, zero_window_connection};
use common::{DEFINITIONS, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DISCOVERY: &str = "/apis/external.metrics.k8s.io/v1beta1";

/// Whether the server closes the connection within `limit` (EOF, reset, or a TLS close).
async fn closed_within<S: AsyncReadExt + Unpin>(stream: &mut S, limit: Duration) -> bool {
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// One sample of an adapter metric (first line starting with `name`), from the admin port.
async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| value.parse().unwrap())
        .unwrap_or(0.0)
}

/// A plain HTTP/1.1 GET over an open TLS stream; returns the status line.
async fn get_http1(stream: &mut TlsStream<TcpStream>, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    // The discovery document is small: read until the JSON closes.
    while !response.ends_with(b"}") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert_ne!(read, 0, "closed before the response ended");
        response.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_do_not_lock_out_a_legitimate_client() {
    // The test holds ~1,100 sockets of its own besides the server's.
    cloudwatch_metrics_adapter::server::open_files_limit();
    let emulator = Emulator::start().await.unwrap();
    // Timeouts far beyond the test: only the cap and who it sheds can let the client in.
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &[
            "--max-connections=64",
            "--tls-handshake-timeout=5m",
            "--header-read-timeout=5m",
        ],
    )
    .await;
    // An established client, idle between requests while the flood arrives.
    let established = server.client();
    let response = established
        .get(format!("{}{DISCOVERY}", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // 500 that never start a handshake, 500 that finish it and then send nothing.
    let mut silent_tcp = Vec::new();
    for _ in 0..500 {
        silent_tcp.push(TcpStream::connect(server.secure).await.unwrap());
    }
    let tls = connector(&server.ca.pem, &[b"h2", b"http/1.1"]);
    let mut silent_tls = Vec::new();
    for _ in 0..500 {
        silent_tls.push(tls_connect(server.secure, &tls).await);
    }

    // While all of them are still open, a new client is served, and so is the established one.
    let response = server
        .client()
        .get(format!("{}{DISCOVERY}", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = established
        .get(format!("{}{DISCOVERY}", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The cap held, and room was made by closing silent connections.
    assert!(metric(&server, "cloudwatch_adapter_api_connections ").await <= 64.0);
    assert_eq!(
        metric(&server, "cloudwatch_adapter_api_connection_limit ").await,
        64.0
    );
    let shed = metric(
        &server,
        "cloudwatch_adapter_api_connections_closed_total{reason=\"shed\"}",
    )
    .await;
    assert!(shed >= 900.0, "only {shed} connections shed");
    // The silent TLS connections that were shed were really closed.
    let mut closed = 0;
    for stream in silent_tls.iter_mut().take(100) {
        if closed_within(stream, Duration::from_secs(5)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 100);
    drop(silent_tcp);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed_after_the_header_read_timeout() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &[
            "--header-read-timeout=300ms",
            "--tls-handshake-timeout=300ms",
        ],
    )
    .await;
    let limit = Duration::from_secs(10);
    // HTTP/1.1 after the handshake: nothing at all, then half a request head (slowloris).
    let http1 = connector(&server.ca.pem, &[b"http/1.1"]);
    let mut silent = tls_connect(server.secure, &http1).await;
    assert!(closed_within(&mut silent, limit).await);
    let mut slow = tls_connect(server.secure, &http1).await;
    slow.write_all(b"GET /apis HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, limit).await);
    // HTTP/2 (ALPN h2) that never sends its preface, and a client offering no ALPN at all.
    let mut silent_h2 = tls_connect(server.secure, &connector(&server.ca.pem, &[b"h2"])).await;
    assert!(closed_within(&mut silent_h2, limit).await);
    let mut no_alpn = tls_connect(server.secure, &connector(&server.ca.pem, &[])).await;
    assert!(closed_within(&mut no_alpn, limit).await);
    // A TCP connection that never starts its handshake.
    let mut no_handshake = TcpStream::connect(server.secure).await.unwrap();
    assert!(closed_within(&mut no_handshake, limit).await);

    assert!(
        metric(
            &server,
            "cloudwatch_adapter_api_connections_closed_total{reason=\"header_read_timeout\"}"
        )
        .await
            >= 4.0
    );
    assert!(
        metric(
            &server,
            "cloudwatch_adapter_api_connections_closed_total{reason=\"tls_handshake_timeout\"}"
        )
        .await
            >= 1.0
    );
    // A client that does send its request in time is served.
    let mut prompt = tls_connect(server.secure, &http1).await;
    assert_eq!(get_http1(&mut prompt, DISCOVERY).await, "HTTP/1.1 200 OK");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_for_both_protocols() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &["--idle-timeout=2s", "--request-timeout=1s"],
    )
    .await;
    let limit = Duration::from_secs(15);
    // HTTP/1.1: a request, then nothing; the keep-alive connection is closed.
    let mut http1 = tls_connect(server.secure, &connector(&server.ca.pem, &[b"http/1.1"])).await;
    assert_eq!(get_http1(&mut http1, DISCOVERY).await, "HTTP/1.1 200 OK");
    assert!(closed_within(&mut http1, limit).await);

    // HTTP/2: a request, then nothing; the server says GOAWAY and the connection ends.
    let stream = tls_connect(server.secure, &connector(&server.ca.pem, &[b"h2"])).await;
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("https://localhost{DISCOVERY}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    drop(client);
    let ended = tokio::time::timeout(limit, connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    assert!(
        metric(
            &server,
            "cloudwatch_adapter_api_connections_closed_total{reason=\"idle_timeout\"}"
        )
        .await
            >= 2.0
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_and_connections_with_work_in_flight_are_not_shed() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &["--max-connections=4", "--http2-max-concurrent-streams=8"],
    )
    .await;
    let h2 = connector(&server.ca.pem, &[b"h2"]);
    // Four connections, each with requests whose responses cannot be sent (zero window): at
    // the cap, and all with work in flight.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let holder = zero_window_connection(server.secure, &h2, 50, DISCOVERY).await;
        // The server's stream limit: 8, not 50.
        assert_eq!(holder.advertised_streams, 8);
        assert_eq!(holder.responses.len(), 8);
        holders.push(holder);
    }
    // A fifth client is not accepted while all four have work in flight...
    let waiting = tokio::spawn({
        let client = server.client();
        let url = format!("{}{DISCOVERY}", server.base());
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let mut waited = false;
    for _ in 0..100 {
        if metric(&server, "cloudwatch_adapter_api_connection_waits_total").await >= 1.0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waited, "the accept loop never waited at the cap");
    assert!(!waiting.is_finished());
    assert_eq!(
        metric(
            &server,
            "cloudwatch_adapter_api_connections_closed_total{reason=\"shed\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(&server, "cloudwatch_adapter_api_connections ").await,
        4.0
    );
    assert_eq!(
        metric(&server, "cloudwatch_adapter_api_requests_in_flight ").await,
        32.0
    );
    // ...and is served as soon as one of them leaves.
    holders.pop().unwrap().connection.abort();
    let status = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client was not served after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(holders);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_are_closed_when_they_make_no_progress() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &["--idle-timeout=2s", "--request-timeout=1s"],
    )
    .await;
    let h2 = connector(&server.ca.pem, &[b"h2"]);
    let holder = zero_window_connection(server.secure, &h2, 100, DISCOVERY).await;
    assert_eq!(holder.responses.len(), 100);
    // No response can finish: after the idle timeout the server gives up on the connection.
    let ended = tokio::time::timeout(Duration::from_secs(15), holder.connection).await;
    assert!(ended.is_ok(), "a connection that never reads was kept");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_connection_whose_client_does_not_read_makes_room() {
    let emulator = Emulator::start().await.unwrap();
    let server = TestServer::start_with(
        DEFINITIONS,
        &emulator,
        &[
            "--max-connections=2",
            "--request-timeout=1s",
            "--idle-timeout=1h",
        ],
    )
    .await;
    let h2 = connector(&server.ca.pem, &[b"h2"]);
    // Both slots taken by clients that never read their responses (idle timeout far away).
    let first = zero_window_connection(server.secure, &h2, 3, DISCOVERY).await;
    let second = zero_window_connection(server.secure, &h2, 3, DISCOVERY).await;
    // A legitimate client waits at most the request timeout plus the stall margin.
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        server
            .client()
            .get(format!("{}{DISCOVERY}", server.base()))
            .send(),
    )
    .await
    .expect("the client was locked out by connections that do not read")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        metric(
            &server,
            "cloudwatch_adapter_api_connections_closed_total{reason=\"shed\"}"
        )
        .await
            >= 1.0
    );
    drop((first, second));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_caps_connections_and_closes_silent_ones() {
    use cloudwatch_metrics_adapter::server::{AdminLimits, serve_plain};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let stop = tokio_util::sync::CancellationToken::new();
    let limits = AdminLimits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(500),
        max_lifetime: Duration::from_secs(60),
    };
    let server = tokio::spawn(serve_plain(
        listener,
        router,
        limits,
        stop.clone().cancelled_owned(),
    ));
    let open_files = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = open_files();
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    // The first silent connection is closed by the header-read timeout; by then a server
    // without a cap would have accepted all 40.
    assert!(closed_within(&mut silent[0], Duration::from_secs(10)).await);
    let held = open_files() - before;
    assert!(
        held <= 40 + 8 + 2,
        "{held} descriptors for 40 client sockets: the server held more than its cap of 8"
    );
    // A probe behind the flood is served once silent connections time out.
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        reqwest::get(format!("http://{address}/healthz")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 200);
    drop(silent);
    stop.cancel();
    server.await.unwrap().unwrap();
}
