//! Faults a test switches on and off: the whole API down, slow answers, and one caller cut off
//! (identified by its bearer token) while the others are served. Each lasts until cleared.
//!
//! They act in [`Transport`], in front of the router, on both transports: what a caller sees is
//! what a network or a load balancer in front of kube-apiserver would do to it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use tokio::sync::watch;
use tower::{BoxError, Service, ServiceExt};

use crate::{FakeKube, bearer, status};

/// How the whole API is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Down {
    /// Every request is answered `503 ServiceUnavailable` (a load balancer in front of an
    /// API server that is not ready).
    Unavailable,
    /// Every request fails as a refused connection (no API server at all); over HTTPS, open
    /// connections are cut and new ones dropped.
    Refused,
}

/// What a partition does to one caller's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Requests never arrive: they hang until the partition is healed, then go on.
    Hang,
    /// Requests fail at once, as a refused connection.
    Fail,
    /// Requests arrive and take effect, but the answers are lost: the caller waits until the
    /// partition is healed and then sees its connection reset.
    LoseAnswers,
}

#[derive(Clone, Debug, Default)]
struct FaultState {
    down: Option<Down>,
    latency: Duration,
    partitions: HashMap<String, Partition>,
}

/// The faults in force.
#[derive(Debug)]
pub struct Faults {
    state: watch::Sender<FaultState>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: watch::Sender::new(FaultState::default()),
        }
    }
}

impl Faults {
    /// Take the whole API down (`Some`) or bring it back (`None`).
    pub fn set_down(&self, down: Option<Down>) {
        self.state.send_modify(|state| state.down = down);
    }

    /// Delay every request by `latency` before it is handled (`Duration::ZERO`: none).
    pub fn set_latency(&self, latency: Duration) {
        self.state.send_modify(|state| state.latency = latency);
    }

    /// Cut off the caller presenting `token`; the others are served as before.
    pub fn partition(&self, token: &str, how: Partition) {
        self.state.send_modify(|state| {
            state.partitions.insert(token.to_string(), how);
        });
    }

    /// End the partition of `token`.
    pub fn heal(&self, token: &str) {
        self.state.send_modify(|state| {
            state.partitions.remove(token);
        });
    }

    /// End every fault.
    pub fn clear(&self) {
        self.state.send_replace(FaultState::default());
    }

    /// Whether the API is down with refused connections (the HTTPS transport cuts its
    /// connections then).
    pub(crate) fn refusing(&self) -> bool {
        self.state.borrow().down == Some(Down::Refused)
    }

    /// Resolves once the API is down with refused connections.
    pub(crate) async fn until_refusing(&self) {
        let mut receiver = self.state.subscribe();
        let _ = receiver
            .wait_for(|state| state.down == Some(Down::Refused))
            .await;
    }

    fn latency(&self) -> Duration {
        self.state.borrow().latency
    }

    /// What to do with a request of `caller` now.
    fn decide(&self, caller: Option<&str>) -> Decision {
        let state = self.state.borrow();
        match state.down {
            Some(Down::Refused) => return Decision::Refuse,
            Some(Down::Unavailable) => return Decision::Unavailable,
            None => {}
        }
        match caller.and_then(|caller| state.partitions.get(caller)) {
            Some(Partition::Hang) => Decision::Hang,
            Some(Partition::Fail) => Decision::Refuse,
            Some(Partition::LoseAnswers) => Decision::LoseAnswer,
            None => Decision::Serve,
        }
    }

    /// Resolves when the faults change.
    async fn changed(receiver: &mut watch::Receiver<FaultState>) {
        // The sender lives as long as the fake; if it is gone, nothing will ever change.
        if receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

enum Decision {
    Serve,
    Unavailable,
    Refuse,
    Hang,
    LoseAnswer,
}

fn refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused (fake-kube fault)",
    )
}

fn reset() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset: the answer was lost (fake-kube partition)",
    )
}

/// The fake as a tower service, faults first. In process it adds the caller's token (as a
/// kubeconfig would); over HTTPS the token is the one the request carries.
#[derive(Clone, Debug)]
pub(crate) struct Transport {
    fake: FakeKube,
    token: Option<HeaderValue>,
}

impl Transport {
    pub(crate) fn new(fake: FakeKube, token: Option<String>) -> Transport {
        let token = token.and_then(|token| HeaderValue::try_from(format!("Bearer {token}")).ok());
        Transport { fake, token }
    }
}

impl<B> Service<Request<B>> for Transport
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut request = request.map(Body::new);
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, token.clone());
        }
        let fake = self.fake.clone();
        Box::pin(async move { answer(fake, request).await })
    }
}

async fn answer(fake: FakeKube, request: Request<Body>) -> Result<Response<Body>, std::io::Error> {
    let faults = &fake.state.faults;
    let latency = faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let caller = bearer(request.headers()).map(str::to_string);
    let mut changes = faults.state.subscribe();
    let lose_answer = loop {
        changes.borrow_and_update();
        match faults.decide(caller.as_deref()) {
            Decision::Serve => break false,
            Decision::LoseAnswer => break true,
            Decision::Refuse => return Err(refused()),
            Decision::Unavailable => {
                return Ok(status::failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                ));
            }
            Decision::Hang => Faults::changed(&mut changes).await,
        }
    };
    let response = match fake.router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if lose_answer {
        // The request took effect; its answer never comes back while the partition lasts.
        loop {
            changes.borrow_and_update();
            if !matches!(faults.decide(caller.as_deref()), Decision::LoseAnswer) {
                return Err(reset());
            }
            Faults::changed(&mut changes).await;
        }
    }
    Ok(response)
}
