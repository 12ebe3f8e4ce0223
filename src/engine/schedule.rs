//! When a series is refreshed: the wall-clock grid, and back-off with jitter after failures.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// An instant and the wall-clock time it corresponds to. Refreshes fall on a wall-clock grid of
/// each series' refresh interval, so every series with the same interval falls due at the same
/// moment and one refresh cycle batches them all, however their first requests were spread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    anchor: Instant,
    wall: SystemTime,
    /// Derive wall-clock time from the anchor (tests, under paused time) instead of the system
    /// clock.
    fixed: bool,
}

impl Clock {
    /// The system clock, with the grid anchored now.
    pub(crate) fn system() -> Self {
        Self {
            anchor: Instant::now(),
            wall: SystemTime::now(),
            fixed: false,
        }
    }

    /// A clock where this moment is `wall`, and wall time follows tokio's (possibly paused) clock.
    pub(crate) fn fixed(wall: SystemTime) -> Self {
        Self {
            anchor: Instant::now(),
            wall,
            fixed: true,
        }
    }

    /// The wall-clock time now.
    pub(crate) fn wall_now(&self) -> SystemTime {
        if self.fixed {
            self.wall + Instant::now().saturating_duration_since(self.anchor)
        } else {
            SystemTime::now()
        }
    }

    /// The wall-clock time of `instant`.
    pub(crate) fn wall_of(&self, instant: Instant) -> SystemTime {
        let now = Instant::now();
        let wall = self.wall_now();
        if instant <= now {
            wall.checked_sub(now - instant)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        } else {
            wall + (instant - now)
        }
    }

    /// The instant of wall-clock time `wall` (another replica's times are wall-clock times).
    pub(crate) fn instant_of(&self, wall: SystemTime) -> Instant {
        let now = Instant::now();
        match wall.duration_since(self.wall_now()) {
            Ok(ahead) => now.checked_add(ahead).unwrap_or(now),
            Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
        }
    }

    /// The first grid point after `after` for `interval`: a wall-clock multiple of the interval.
    pub(crate) fn next_tick(&self, after: Instant, interval: Duration) -> Instant {
        let interval_ms = interval.as_millis().max(1);
        let wall_ms = self
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            + after.saturating_duration_since(self.anchor).as_millis();
        let wait_ms = interval_ms - wall_ms % interval_ms;
        // Intervals are range-checked (at most a day); saturate rather than overflow anyway.
        let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX));
        after
            .checked_add(wait)
            .unwrap_or_else(|| after + Duration::from_secs(86_400))
    }
}

/// Jittered exponential back-off after `failures` consecutive failures: `base` doubling, never
/// beyond `max`, nor beyond four refresh intervals (a failing series is retried at least that
/// often). `jitter` in [0, 1) puts it in [50%, 100%] of that: the engine draws one per failed
/// call, so the call's series retry together (one call, not one each) while different calls'
/// retries spread apart.
pub(crate) fn backoff(
    failures: u32,
    refresh_interval: Duration,
    base: Duration,
    max: Duration,
    jitter: f64,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = max.min(refresh_interval.max(base).saturating_mul(4));
    let delay = base.saturating_mul(1 << exponent).min(ceiling);
    delay.mul_f64(0.5 + jitter.clamp(0.0, 1.0) * 0.5)
}
