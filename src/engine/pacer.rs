//! Pacing calls under a per-source budget.

use std::time::Duration;

use tokio::time::Instant;

/// Spaces calls at least `1 / rate` apart, so no one-second window holds more than `rate` calls.
#[derive(Debug)]
pub(crate) struct Pacer {
    spacing: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `calls_per_second` (a non-positive or non-finite rate is treated as 1).
    pub(crate) fn new(calls_per_second: f64) -> Self {
        let rate = if calls_per_second.is_finite() && calls_per_second > 0.0 {
            calls_per_second
        } else {
            1.0
        };
        Self {
            spacing: Duration::from_secs_f64(1.0 / rate),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Wait for the next slot.
    pub(crate) async fn acquire(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = Instant::now().max(*next) + self.spacing;
    }
}
