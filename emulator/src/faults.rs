//! Fault injection: make the next N CloudWatch calls fail the way AWS fails, or slow them down.
//!
//! Faults queue up in the order they were injected and are consumed one per matching call. Only
//! CloudWatch operations see them; the `/_emulator/` admin API never does.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, code};
use crate::metering::Operation;

/// A failure AWS can answer with.
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
}

impl FaultKind {
    /// The error response this fault produces for `operation`.
    pub(crate) fn to_error(self, operation: Operation) -> ApiError {
        match self {
            Self::Throttling => ApiError::new(400, code::THROTTLING, "Rate exceeded"),
            Self::InternalFailure => ApiError::new(
                500,
                code::INTERNAL_FAILURE,
                "The request processing has failed because of an unknown error, exception or failure.",
            ),
            Self::ServiceUnavailable => ApiError::new(
                503,
                code::SERVICE_UNAVAILABLE,
                "The request has failed due to a temporary failure of the server.",
            ),
            Self::AccessDenied => ApiError::new(
                403,
                code::ACCESS_DENIED,
                format!(
                    "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: \
                     cloudwatch:{op} because no identity-based policy allows the cloudwatch:{op} action",
                    op = operation.name()
                ),
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    kind: FaultKind,
    remaining: u32,
    /// `None`: any CloudWatch operation.
    operation: Option<Operation>,
}

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Pending>,
    latency: Duration,
    poison: Option<String>,
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

    /// Delays every CloudWatch call by `latency` before it is answered (zero turns it off).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The configured latency.
    pub fn latency(&self) -> Duration {
        self.state().latency
    }

    /// Number of injected failures not yet consumed.
    pub fn pending(&self) -> u64 {
        self.state()
            .pending
            .iter()
            .map(|p| u64::from(p.remaining))
            .sum()
    }

    /// Makes every `GetMetricData` call that carries `text` anywhere in its queries (an
    /// expression, a dimension value, an id) fail as a whole with 400 `ValidationError`, the way
    /// CloudWatch refuses a call when one of its queries is invalid. `None` turns it off.
    pub fn poison(&self, text: Option<&str>) {
        self.state().poison = text.map(str::to_string);
    }

    /// The text that poisons a call, if any.
    pub fn poisoned(&self) -> Option<String> {
        self.state().poison.clone()
    }

    /// Removes every pending fault, the latency and the poison.
    pub fn clear(&self) {
        let mut state = self.state();
        state.pending.clear();
        state.latency = Duration::ZERO;
        state.poison = None;
    }

    /// Consumes the first pending fault that applies to `operation`.
    pub(crate) fn take(&self, operation: Operation) -> Option<FaultKind> {
        let mut state = self.state();
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

    #[test]
    fn errors_look_like_aws() {
        let throttle = FaultKind::Throttling.to_error(Operation::GetMetricData);
        assert_eq!(
            (throttle.status, throttle.code, throttle.message.as_str()),
            (400, "Throttling", "Rate exceeded")
        );
        let denied = FaultKind::AccessDenied.to_error(Operation::GetMetricData);
        assert_eq!(denied.status, 403);
        assert!(
            denied
                .message
                .contains("is not authorized to perform: cloudwatch:GetMetricData")
        );
        assert_eq!(
            FaultKind::InternalFailure
                .to_error(Operation::ListMetrics)
                .status,
            500
        );
        assert_eq!(
            FaultKind::ServiceUnavailable
                .to_error(Operation::ListMetrics)
                .status,
            503
        );
    }
}
