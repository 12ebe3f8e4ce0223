//! Fault injection: make CloudWatch calls fail the way AWS (or what stands in front of it) fails,
//! or slow them down.
//!
//! Three kinds of fault, checked in this order for every CloudWatch call:
//! - **Windows** ([`Faults::inject_window`]): every matching call fails with the fault until the
//!   window ends by itself (or [`Faults::clear`]). This is how request-wide failures look: a
//!   clock-skewed signer gets `RequestExpired` on every call for as long as the skew lasts, a
//!   misbehaving proxy answers every call with its HTML page.
//! - **Counted faults** ([`Faults::inject`]): the next N matching calls fail; they queue up in the
//!   order they were injected and are consumed one per call. A call inside a window does not
//!   consume one.
//! - **Poison markers** ([`Faults::reject_marker`], [`Faults::poison`]): a `GetMetricData` call
//!   whose queries mention a marker fails as a whole with a validation error, as CloudWatch
//!   rejects a whole call when one of its queries is invalid.
//!
//! Only CloudWatch operations see faults; the `/_emulator/` admin API never does. Windows run on
//! tokio's clock, so a test on paused time (`tokio::time::pause`) can run one out with
//! `tokio::time::advance` when the emulator runs in the same runtime.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{ApiError, code};
use crate::metering::Operation;

/// The page a proxy (nginx, here) sends with its own 400: HTML, no AWS error code.
const PROXY_BAD_REQUEST_PAGE: &str = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n\
<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// A failure AWS, or a proxy in front of it, can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// 400 `Throttling` "Rate exceeded" (the SDK retries it as a throttling error).
    Throttling,
    /// 500 `InternalFailure` (the SDK retries it as a transient error).
    InternalFailure,
    /// 503 `ServiceUnavailable` (the SDK retries it as a transient error).
    ServiceUnavailable,
    /// 403 `AccessDenied`, worded like IAM's denial (not retried).
    AccessDenied,
    /// 400 `RequestExpired` "Request has expired.": what AWS answers every call signed with a
    /// clock too far from its own, whatever the call asks (not retried by the SDK).
    RequestExpired,
    /// 400 with `Content-Type: text/html`, an nginx error page as body and no
    /// `x-amzn-query-error`: what a proxy between the client and AWS sends. Counted under
    /// `HtmlBadRequest` in the error counters, since it carries no AWS code.
    HtmlBadRequest,
}

/// What an injected fault answers: an AWS error in the protocol's shape, or a proxy's page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FaultAnswer {
    /// An rpc-v2-cbor error (status, `x-amzn-query-error`, CBOR body).
    Aws(ApiError),
    /// A non-AWS HTML page with this status.
    Html {
        /// The HTTP status.
        status: u16,
        /// The page.
        body: &'static str,
    },
}

impl FaultAnswer {
    /// The key this answer is counted under in the error counters.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            FaultAnswer::Aws(err) => err.code,
            FaultAnswer::Html { .. } => "HtmlBadRequest",
        }
    }
}

impl FaultKind {
    /// The answer this fault produces for `operation`.
    pub(crate) fn answer(self, operation: Operation) -> FaultAnswer {
        let aws =
            |status, code, message: String| FaultAnswer::Aws(ApiError::new(status, code, message));
        match self {
            Self::Throttling => aws(400, code::THROTTLING, "Rate exceeded".into()),
            Self::InternalFailure => aws(
                500,
                code::INTERNAL_FAILURE,
                "The request processing has failed because of an unknown error, exception or failure.".into(),
            ),
            Self::ServiceUnavailable => aws(
                503,
                code::SERVICE_UNAVAILABLE,
                "The request has failed due to a temporary failure of the server.".into(),
            ),
            Self::AccessDenied => aws(
                403,
                code::ACCESS_DENIED,
                format!(
                    "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: \
                     cloudwatch:{op} because no identity-based policy allows the cloudwatch:{op} action",
                    op = operation.name()
                ),
            ),
            Self::RequestExpired => aws(400, code::REQUEST_EXPIRED, "Request has expired.".into()),
            Self::HtmlBadRequest => FaultAnswer::Html {
                status: 400,
                body: PROXY_BAD_REQUEST_PAGE,
            },
        }
    }
}

/// The error code a poisoned `GetMetricData` call is refused with (always HTTP 400, `Sender`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PoisonCode {
    /// `InvalidParameterValue`: a parameter's value is not valid.
    #[default]
    InvalidParameterValue,
    /// `ValidationError`: what CloudWatch reports for most `GetMetricData` input problems.
    ValidationError,
}

impl PoisonCode {
    fn code(self) -> &'static str {
        match self {
            PoisonCode::InvalidParameterValue => code::INVALID_PARAMETER_VALUE,
            PoisonCode::ValidationError => code::VALIDATION_ERROR,
        }
    }
}

/// A marker that makes the `GetMetricData` calls mentioning it fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoisonMarker {
    /// The text looked for in every string of the call's `MetricDataQueries`.
    pub marker: String,
    /// The error code the call is refused with.
    pub code: PoisonCode,
}

/// A fault window in force (see [`Faults::windows`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveWindow {
    /// The failure every matching call gets.
    pub kind: FaultKind,
    /// The operation it applies to; `None`: every CloudWatch operation.
    pub operation: Option<Operation>,
    /// How long it still lasts.
    #[serde(rename = "remainingSeconds", serialize_with = "seconds")]
    pub remaining: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[derive(Debug, Clone)]
struct Pending {
    kind: FaultKind,
    remaining: u32,
    /// `None`: any CloudWatch operation.
    operation: Option<Operation>,
}

#[derive(Debug, Clone)]
struct Window {
    kind: FaultKind,
    until: Instant,
    /// `None`: any CloudWatch operation.
    operation: Option<Operation>,
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Pending>,
    windows: Vec<Window>,
    latency: Duration,
    poison: Vec<PoisonMarker>,
}

impl State {
    /// Forgets windows that have ended.
    fn prune(&mut self, now: Instant) {
        self.windows.retain(|window| window.until > now);
    }
}

/// The fault-injection controls of one emulator (see [`crate::Emulator::faults`]).
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `count` CloudWatch calls (of any operation) fail with `kind`.
    pub fn inject(&self, kind: FaultKind, count: u32) {
        self.push(kind, count, None);
    }

    /// Makes the next `count` calls of `operation` fail with `kind`; other operations pass.
    pub fn inject_for(&self, operation: Operation, kind: FaultKind, count: u32) {
        self.push(kind, count, Some(operation));
    }

    fn push(&self, kind: FaultKind, count: u32, operation: Option<Operation>) {
        if count > 0 {
            self.state().pending.push_back(Pending {
                kind,
                remaining: count,
                operation,
            });
        }
    }

    /// Makes every CloudWatch call (of any operation) fail with `kind` for `duration` from now;
    /// the window then ends by itself. A zero duration injects nothing.
    pub fn inject_window(&self, kind: FaultKind, duration: Duration) {
        self.push_window(kind, duration, None);
    }

    /// Like [`Faults::inject_window`], for the calls of `operation` only.
    pub fn inject_window_for(&self, operation: Operation, kind: FaultKind, duration: Duration) {
        self.push_window(kind, duration, Some(operation));
    }

    fn push_window(&self, kind: FaultKind, duration: Duration, operation: Option<Operation>) {
        if duration.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        state.prune(now);
        state.windows.push(Window {
            kind,
            // Far beyond any test, and still a valid instant.
            until: now
                .checked_add(duration)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400)),
            operation,
        });
    }

    /// The fault windows still in force.
    pub fn windows(&self) -> Vec<ActiveWindow> {
        let now = Instant::now();
        let mut state = self.state();
        state.prune(now);
        state
            .windows
            .iter()
            .map(|window| ActiveWindow {
                kind: window.kind,
                operation: window.operation,
                remaining: window.until.saturating_duration_since(now),
            })
            .collect()
    }

    /// Delays every CloudWatch call by `latency` before it is answered (zero turns it off).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The configured latency.
    pub fn latency(&self) -> Duration {
        self.state().latency
    }

    /// Number of counted failures not yet consumed (windows are not counted).
    pub fn pending(&self) -> u64 {
        self.state()
            .pending
            .iter()
            .map(|p| u64::from(p.remaining))
            .sum()
    }

    /// Makes every `GetMetricData` call that carries `text` anywhere in its queries (an
    /// expression, a dimension value, a metric name, an id) fail as a whole with 400
    /// `ValidationError`, the way CloudWatch refuses a call when one of its queries is invalid.
    /// Replaces every marker set before; `None` removes them all.
    pub fn poison(&self, text: Option<&str>) {
        self.state().poison = text
            .map(|marker| PoisonMarker {
                marker: marker.to_string(),
                code: PoisonCode::ValidationError,
            })
            .into_iter()
            .collect();
    }

    /// Adds a marker: every `GetMetricData` call that carries `marker` anywhere in its queries
    /// fails as a whole with 400 `code`, naming the member that holds it. Markers set earlier
    /// stay; an empty marker is ignored (it would match every call).
    pub fn reject_marker(&self, marker: &str, code: PoisonCode) {
        if marker.is_empty() {
            return;
        }
        let mut state = self.state();
        state.poison.retain(|p| p.marker != marker);
        state.poison.push(PoisonMarker {
            marker: marker.to_string(),
            code,
        });
    }

    /// The first marker that poisons a call, if any.
    pub fn poisoned(&self) -> Option<String> {
        self.state().poison.first().map(|p| p.marker.clone())
    }

    /// Every poison marker, in the order they were set.
    pub fn markers(&self) -> Vec<PoisonMarker> {
        self.state().poison.clone()
    }

    /// Removes every pending fault, window, poison marker and the latency.
    pub fn clear(&self) {
        let mut state = self.state();
        state.pending.clear();
        state.windows.clear();
        state.latency = Duration::ZERO;
        state.poison.clear();
    }

    /// The fault `operation` gets now: an active window's, else the first pending counted fault
    /// that applies (consumed).
    pub(crate) fn take(&self, operation: Operation) -> Option<FaultKind> {
        let now = Instant::now();
        let mut state = self.state();
        state.prune(now);
        if let Some(window) = state
            .windows
            .iter()
            .find(|w| w.operation.is_none_or(|op| op == operation))
        {
            return Some(window.kind);
        }
        let index = state
            .pending
            .iter()
            .position(|p| p.operation.is_none_or(|op| op == operation))?;
        let entry = &mut state.pending[index];
        let kind = entry.kind;
        entry.remaining -= 1;
        if entry.remaining == 0 {
            state.pending.remove(index);
        }
        Some(kind)
    }

    /// The error a `GetMetricData` call gets for mentioning a poison marker, if it does: the
    /// member holding the first marker found is named, as CloudWatch names the parameter.
    pub(crate) fn poisoned_call(&self, input: &ciborium::Value) -> Option<ApiError> {
        let markers = self.markers();
        markers.iter().find_map(|poison| {
            let (parameter, value) = crate::query::find_mention(input, &poison.marker)?;
            Some(ApiError::new(
                400,
                poison.code.code(),
                format!("The value {value} for parameter {parameter} is not valid."),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn faults_are_consumed_in_order_and_per_operation() {
        let faults = Faults::default();
        faults.inject(FaultKind::Throttling, 2);
        faults.inject_for(Operation::ListMetrics, FaultKind::AccessDenied, 1);
        assert_eq!(faults.pending(), 3);
        assert_eq!(
            faults.take(Operation::GetMetricData),
            Some(FaultKind::Throttling)
        );
        assert_eq!(
            faults.take(Operation::PutMetricData),
            Some(FaultKind::Throttling)
        );
        assert_eq!(faults.take(Operation::GetMetricData), None);
        assert_eq!(
            faults.take(Operation::ListMetrics),
            Some(FaultKind::AccessDenied)
        );
        assert_eq!(faults.take(Operation::ListMetrics), None);
        faults.inject(FaultKind::InternalFailure, 0);
        assert_eq!(faults.pending(), 0);
    }

    #[test]
    fn clear_removes_faults_and_latency() {
        let faults = Faults::default();
        faults.inject(FaultKind::ServiceUnavailable, 5);
        faults.set_latency(Duration::from_millis(20));
        faults.clear();
        assert_eq!(faults.pending(), 0);
        assert_eq!(faults.latency(), Duration::ZERO);
    }

    fn aws(kind: FaultKind, operation: Operation) -> ApiError {
        match kind.answer(operation) {
            FaultAnswer::Aws(err) => err,
            FaultAnswer::Html { .. } => panic!("{kind:?} answers with HTML"),
        }
    }

    #[test]
    fn errors_look_like_aws() {
        let throttle = aws(FaultKind::Throttling, Operation::GetMetricData);
        assert_eq!(
            (throttle.status, throttle.code, throttle.message.as_str()),
            (400, "Throttling", "Rate exceeded")
        );
        let denied = aws(FaultKind::AccessDenied, Operation::GetMetricData);
        assert_eq!(denied.status, 403);
        assert!(
            denied
                .message
                .contains("is not authorized to perform: cloudwatch:GetMetricData")
        );
        assert_eq!(
            aws(FaultKind::InternalFailure, Operation::ListMetrics).status,
            500
        );
        assert_eq!(
            aws(FaultKind::ServiceUnavailable, Operation::ListMetrics).status,
            503
        );
        let expired = aws(FaultKind::RequestExpired, Operation::GetMetricData);
        assert_eq!(
            (expired.status, expired.code, expired.fault()),
            (400, "RequestExpired", "Sender")
        );
        let FaultAnswer::Html { status, body } =
            FaultKind::HtmlBadRequest.answer(Operation::GetMetricData)
        else {
            panic!("a proxy page is not an AWS error");
        };
        assert_eq!(status, 400);
        assert!(body.starts_with("<html>") && body.contains("400 Bad Request"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_fails_every_call_until_it_ends_by_itself() {
        let faults = Faults::default();
        faults.inject(FaultKind::Throttling, 1);
        faults.inject_window(FaultKind::RequestExpired, Duration::from_secs(20));
        faults.inject_window_for(
            Operation::ListMetrics,
            FaultKind::HtmlBadRequest,
            Duration::from_secs(5),
        );
        for _ in 0..3 {
            assert_eq!(
                faults.take(Operation::GetMetricData),
                Some(FaultKind::RequestExpired)
            );
        }
        assert_eq!(
            faults.pending(),
            1,
            "a call inside a window consumes no count"
        );
        assert_eq!(faults.windows().len(), 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            faults.take(Operation::ListMetrics),
            Some(FaultKind::RequestExpired),
            "the 5 s window ended, the 20 s one applies"
        );
        let left = faults.windows();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].remaining, Duration::from_secs(14));
        tokio::time::advance(Duration::from_secs(14)).await;
        assert!(faults.windows().is_empty());
        assert_eq!(
            faults.take(Operation::GetMetricData),
            Some(FaultKind::Throttling),
            "after the window, counted faults apply again"
        );
        assert_eq!(faults.take(Operation::GetMetricData), None);

        faults.inject_window(FaultKind::HtmlBadRequest, Duration::from_secs(3600));
        faults.inject_window(FaultKind::RequestExpired, Duration::ZERO);
        assert_eq!(faults.windows().len(), 1);
        faults.clear();
        assert_eq!(
            faults.take(Operation::GetMetricData),
            None,
            "clear ends windows"
        );
    }

    #[test]
    fn markers_accumulate_and_poison_replaces_them() {
        let faults = Faults::default();
        faults.reject_marker("a", PoisonCode::InvalidParameterValue);
        faults.reject_marker("b", PoisonCode::ValidationError);
        faults.reject_marker("a", PoisonCode::ValidationError);
        faults.reject_marker("", PoisonCode::ValidationError);
        let markers: Vec<(String, PoisonCode)> = faults
            .markers()
            .into_iter()
            .map(|p| (p.marker, p.code))
            .collect();
        assert_eq!(
            markers,
            [
                ("b".to_string(), PoisonCode::ValidationError),
                ("a".to_string(), PoisonCode::ValidationError)
            ]
        );
        faults.poison(Some("c"));
        assert_eq!(faults.poisoned().as_deref(), Some("c"));
        assert_eq!(faults.markers().len(), 1);
        faults.poison(None);
        assert!(faults.markers().is_empty());
    }
}
