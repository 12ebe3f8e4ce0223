//! Pacing calls under a budget: the one pacer the refresh engine's lanes (a backend's
//! calls-per-second budget) and the status writer (status patches and Events per second) share.

use std::time::Duration;

use tokio::time::Instant;

/// Spaces calls at least `1 / rate` apart, so no one-second window holds more than `rate` calls.
/// Time not used is not saved up: after a quiet minute the next call goes at once, the one after
/// it `1 / rate` later, never a burst.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_are_spaced_and_quiet_time_is_not_saved_up() {
        let pacer = Pacer::new(4.0);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            pacer.acquire().await;
            at.push(start.elapsed());
        }
        assert_eq!(
            at,
            [0, 250, 500, 750, 1000].map(Duration::from_millis),
            "four a second, the first at once"
        );

        tokio::time::sleep(Duration::from_secs(60)).await;
        let quiet = Instant::now();
        pacer.acquire().await;
        pacer.acquire().await;
        assert_eq!(
            quiet.elapsed(),
            Duration::from_millis(250),
            "no burst after a pause"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_budget() {
        let pacer = std::sync::Arc::new(Pacer::new(10.0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.map(|t| t - start).unwrap_or_default());
        }
        times.sort();
        assert_eq!(times.last().copied(), Some(Duration::from_millis(900)));
        for pair in times.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(100));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_that_makes_no_sense_is_one_a_second() {
        for rate in [0.0, -3.0, f64::NAN, f64::INFINITY] {
            let pacer = Pacer::new(rate);
            let start = Instant::now();
            pacer.acquire().await;
            pacer.acquire().await;
            assert_eq!(start.elapsed(), Duration::from_secs(1), "rate {rate}");
        }
    }
}
