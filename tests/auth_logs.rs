//! Nothing the adapter logs, at any level, carries an identity header's value or a credential:
//! requests with distinctive users, groups, UIDs, extras, certificate names and tokens are
//! accepted, refused, forbidden and fail their reviews while every log line is captured.
//!
//! A binary of its own: the capture is the process-wide subscriber, installed before anything
//! logs. (A per-thread subscriber races with tracing's per-callsite interest cache when other
//! tests in the same process hit the same log lines first.)
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use cloudwatch_emulator::Emulator;
use common::{Cas, DEFINITIONS, TestServer, minute, put};
use fake_kube::FakeKube;

const VALUE: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible?labelSelector=QueueName%3Dorders";

/// The marker in every identity and credential value below; nothing else contains it.
const MARKER: &str = "zqxj";

/// The adapter's runtime names its threads (workers and blocking pool) with this prefix; lines
/// written from other threads (emulator, fake API server, clients) are not the adapter's.
const ADAPTER_THREADS: &str = "adapter-under-test";

/// The adapter's log lines, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let adapter = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with(ADAPTER_THREADS));
        if adapter {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn nothing_logs_identity_header_values_or_credentials() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    common::install_crypto();

    let peers = tokio::runtime::Runtime::new().unwrap();
    let (emulator, fake, cas) = peers.block_on(async {
        let emulator = Emulator::start().await.unwrap();
        put(
            &emulator,
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", "orders")],
            minute(2),
            42.0,
        );
        (emulator, FakeKube::start().await.unwrap(), Cas::new())
    });
    let user = format!("{MARKER}-user");
    let token_user = format!("{MARKER}-token-user");
    let certificate_user = format!("{MARKER}-cn-user");
    for allowed in [&user, &token_user, &certificate_user] {
        fake.allow(allowed, "sqs-visible");
    }
    fake.add_token(
        &format!("{MARKER}-token"),
        &token_user,
        &format!("{MARKER}-token-uid"),
        &[&format!("{MARKER}-token-group")],
    );
    let identity = |user: &str| {
        vec![
            ("X-Remote-User".to_string(), user.to_string()),
            ("X-Remote-Group".to_string(), format!("{MARKER}-group-a")),
            ("X-Remote-Group".to_string(), format!("{MARKER}-group-b")),
            ("X-Remote-Uid".to_string(), format!("{MARKER}-uid")),
            (
                format!("X-Remote-Extra-{MARKER}-key%2fsub"),
                format!("{MARKER}-extra-value"),
            ),
        ]
    };
    let bearer = |token: &str| vec![("Authorization".to_string(), format!("Bearer {token}"))];

    let adapter = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(ADAPTER_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let flags = cas.flags(&fake, false);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // `serve` is spawned inside, so the adapter's tasks run on the adapter's threads.
    let server = adapter.block_on(TestServer::start_with_auth(DEFINITIONS, &emulator, &flags));

    peers.block_on(async {
        let client = |certificate: Option<(String, String)>| match certificate {
            Some((cert, key)) => server.client_with_certificate(&cert, &key),
            None => server.client(),
        };
        let get = |client: reqwest::Client, headers: Vec<(String, String)>| {
            let url = format!("{}{VALUE}", server.base());
            async move {
                let mut request = client.get(url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request.send().await.unwrap().status().as_u16()
            }
        };
        let aggregator = client(Some(cas.front_proxy.client("front-proxy-client", &[])));
        // Accepted, forbidden and refused, by every method.
        assert_eq!(get(aggregator.clone(), identity(&user)).await, 200);
        let denied = format!("{MARKER}-denied-user");
        assert_eq!(get(aggregator.clone(), identity(&denied)).await, 403);
        let stranger = cas.front_proxy.client(&format!("{MARKER}-proxy-cn"), &[]);
        assert_eq!(get(client(Some(stranger)), identity(&user)).await, 401);
        let holder = cas
            .client
            .client(&certificate_user, &[&format!("{MARKER}-o")]);
        assert_eq!(get(client(Some(holder)), identity(&user)).await, 200);
        assert_eq!(
            get(client(None), bearer(&format!("{MARKER}-token"))).await,
            200
        );
        let forged = format!("{MARKER}-forged-token");
        assert_eq!(get(client(None), bearer(&forged)).await, 401);
        assert_eq!(get(client(None), identity(&user)).await, 401);
        // Review failures: the API server is down for new identities and tokens.
        fake.stop();
        let unreviewed = format!("{MARKER}-unreviewed");
        assert_eq!(get(aggregator.clone(), identity(&unreviewed)).await, 503);
        let unseen = format!("{MARKER}-unseen-token");
        assert_eq!(get(client(None), bearer(&unseen)).await, 503);
    });
    adapter.block_on(server.stop()).unwrap();
    drop(adapter);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // The capture works: it holds the adapter's request logs, with how callers authenticated.
    for expected in [
        "authenticated method=\"front-proxy\"",
        "authenticated method=\"client-certificate\"",
        "authenticated method=\"token\"",
        "request refused",
        "request forbidden",
        "SubjectAccessReview failed",
        "TokenReview failed",
    ] {
        assert!(
            logs.contains(expected),
            "no {expected:?} in the logs:\n{logs}"
        );
    }
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|line| line.to_lowercase().contains(MARKER))
        .collect();
    assert!(
        leaks.is_empty(),
        "identity or credential values in the logs:\n{}",
        leaks.join("\n")
    );
}
