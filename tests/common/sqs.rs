//! SQS for tests: a real moto_server (installed by scripts/moto.sh), and a fault layer in front
//! of it that answers the way SQS fails (moto neither throttles nor enforces IAM).
//!
//! The fault layer forwards every request to moto unless a fault is armed for its operation;
//! then it answers with SQS's awsJson1.0 error shape: the HTTP status, `x-amzn-query-error:
//! <query code>;<Sender|Receiver>` (from which the SDK takes the error code, SQS being
//! awsQuery-compatible) and a JSON body `{"__type": "<shape>", "message": ...}`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::process::{Child, Command};

/// A moto_server on 127.0.0.1, stopped when dropped.
pub struct Moto {
    pub endpoint: String,
    _child: Child,
}

fn moto_server() -> PathBuf {
    let path = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-moto/bin/moto_server")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/moto.sh (scripts/test.sh does it for you)",
        path.display()
    );
    path
}

impl Moto {
    pub async fn start() -> Moto {
        // A free port, then moto on it; retried in case another process took it meanwhile.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(moto_server())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let endpoint = format!("http://127.0.0.1:{port}");
            let client = reqwest::Client::new();
            for _ in 0..200 {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if let Ok(response) = client.get(format!("{endpoint}/moto-api/")).send().await
                    && response.status().is_success()
                {
                    return Moto {
                        endpoint,
                        _child: child,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill().await;
        }
        panic!("moto_server did not start");
    }

    /// An SQS client of moto, for setting queues up.
    pub async fn client(&self) -> aws_sdk_sqs::Client {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .load()
            .await;
        aws_sdk_sqs::Client::new(&config)
    }
}

/// A failure SQS answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqsFault {
    /// 400 `RequestThrottled`.
    Throttled,
    /// 403 `AccessDenied`, worded like IAM's denial.
    AccessDenied,
    /// 400 `QueueDoesNotExist`.
    QueueDoesNotExist,
    /// 503 `ServiceUnavailable`.
    Unavailable,
}

impl SqsFault {
    fn response(self, operation: &str) -> Response {
        let (status, query_code, fault, shape, message) = match self {
            SqsFault::Throttled => (
                400,
                "RequestThrottled",
                "Sender",
                "com.amazonaws.sqs#RequestThrottled",
                "Request is throttled.".to_string(),
            ),
            SqsFault::AccessDenied => (
                403,
                "AccessDenied",
                "Sender",
                "com.amazon.coral.service#AccessDeniedException",
                format!(
                    "User: arn:aws:iam::123456789012:user/test is not authorized to perform: sqs:{} on resource: arn:aws:sqs:us-east-1:123456789012:orders because no identity-based policy allows the sqs:{} action",
                    operation.to_lowercase(),
                    operation.to_lowercase()
                ),
            ),
            SqsFault::QueueDoesNotExist => (
                400,
                "AWS.SimpleQueueService.NonExistentQueue",
                "Sender",
                "com.amazonaws.sqs#QueueDoesNotExist",
                "The specified queue does not exist.".to_string(),
            ),
            SqsFault::Unavailable => (
                503,
                "ServiceUnavailable",
                "Receiver",
                "com.amazonaws.sqs#ServiceUnavailable",
                "Service is unavailable. Try again later.".to_string(),
            ),
        };
        let body = serde_json::json!({"__type": shape, "message": message}).to_string();
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        headers.insert(
            "x-amzn-query-error",
            HeaderValue::from_str(&format!("{query_code};{fault}")).unwrap(),
        );
        headers.insert(
            "x-amzn-requestid",
            HeaderValue::from_static("00000000-0000-0000-0000-000000000000"),
        );
        response
    }
}

#[derive(Default)]
struct Faults {
    /// (operation or any, fault, remaining)
    pending: VecDeque<(Option<String>, SqsFault, u32)>,
    /// Every call of any operation fails this way until cleared.
    always: Option<SqsFault>,
    /// Calls seen per operation (faulted ones included).
    calls: BTreeMap<String, u64>,
}

/// The fault layer: an HTTP server on 127.0.0.1:0 in front of moto.
#[derive(Clone)]
pub struct FaultProxy {
    pub endpoint: String,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    faults: Arc<Mutex<Faults>>,
}

impl FaultProxy {
    pub async fn start(moto: &Moto) -> FaultProxy {
        let faults = Arc::new(Mutex::new(Faults::default()));
        let state = ProxyState {
            upstream: moto.endpoint.clone(),
            client: reqwest::Client::new(),
            faults: faults.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let router = Router::new().fallback(any(forward)).with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FaultProxy {
            endpoint: format!("http://{addr}"),
            faults,
        }
    }

    /// The next `count` calls of `operation` (e.g. `GetQueueAttributes`) fail with `fault`.
    pub fn inject(&self, operation: &str, fault: SqsFault, count: u32) {
        self.faults
            .lock()
            .unwrap()
            .pending
            .push_back((Some(operation.to_string()), fault, count));
    }

    /// Every call fails with `fault` until `None`.
    pub fn always(&self, fault: Option<SqsFault>) {
        self.faults.lock().unwrap().always = fault;
    }

    /// Calls of `operation` seen so far.
    pub fn calls(&self, operation: &str) -> u64 {
        self.faults
            .lock()
            .unwrap()
            .calls
            .get(operation)
            .copied()
            .unwrap_or(0)
    }
}

async fn forward(State(state): State<ProxyState>, headers: HeaderMap, body: Bytes) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("AmazonSQS."))
        .unwrap_or("unknown")
        .to_string();
    let fault = {
        let mut faults = state.faults.lock().unwrap();
        *faults.calls.entry(operation.clone()).or_default() += 1;
        let armed = faults
            .pending
            .iter()
            .position(|(op, _, _)| op.as_deref().is_none_or(|op| op == operation));
        match armed {
            Some(index) => {
                let entry = &mut faults.pending[index];
                entry.2 -= 1;
                let fault = entry.1;
                if entry.2 == 0 {
                    faults.pending.remove(index);
                }
                Some(fault)
            }
            None => faults.always,
        }
    };
    if let Some(fault) = fault {
        return fault.response(&operation);
    }
    let mut request = state.client.post(format!("{}/", state.upstream));
    for name in [
        "content-type",
        "x-amz-target",
        "authorization",
        "x-amz-date",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    match request.body(body).send().await {
        Ok(upstream) => {
            let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap();
            let mut out = HeaderMap::new();
            for (name, value) in upstream.headers() {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
                    HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    out.insert(name, value);
                }
            }
            out.remove("content-length");
            out.remove("transfer-encoding");
            let body = upstream.bytes().await.unwrap_or_default();
            (status, out, body).into_response()
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
