//! Capped exponential backoff with full jitter (pure).

use std::time::Duration;

/// Backoff policy: attempt `n` (0-based) waits a random time in `[0, min(cap, base * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling for the first retry.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Backoff {
    /// The ceiling of the wait before retry `attempt` (0-based).
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `attempt`, given `unit`, a uniform random number in `[0, 1)`.
    #[must_use]
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay`] with a fresh random number.
    #[must_use]
    pub fn random_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(8),
    };

    #[test]
    fn grows_then_caps() {
        let c: Vec<_> = (0..7).map(|a| B.ceiling(a).as_millis()).collect();
        assert_eq!(c, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(8));
    }

    proptest! {
        #[test]
        fn delay_within_ceiling(attempt in 0u32..100, unit in 0.0f64..1.0) {
            let d = B.delay(attempt, unit);
            prop_assert!(d <= B.ceiling(attempt));
            prop_assert!(d <= B.cap);
        }
    }
}

/// `interval` randomised by ± `percent` %, given `unit` uniform in `[0, 1)`, so a fleet's
/// passes do not stay in lock-step.
#[must_use]
pub fn jittered(interval: Duration, percent: u8, unit: f64) -> Duration {
    let spread = f64::from(percent.min(100)) / 100.0;
    interval.mul_f64((1.0 - spread + 2.0 * spread * unit.clamp(0.0, 1.0)).max(0.0))
}

#[cfg(test)]
mod jitter_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spreads_around_the_interval() {
        let i = Duration::from_secs(300);
        assert_eq!(jittered(i, 10, 0.0), Duration::from_secs(270));
        assert_eq!(jittered(i, 10, 0.5), Duration::from_secs(300));
        assert_eq!(jittered(i, 0, 0.9), i);
    }

    proptest! {
        #[test]
        fn stays_within_the_band(secs in 1u64..100_000, pct in 0u8..=50, unit in 0.0f64..1.0) {
            let i = Duration::from_secs(secs);
            let j = jittered(i, pct, unit);
            let band = i.mul_f64(f64::from(pct) / 100.0);
            prop_assert!(j + band >= i && j <= i + band + Duration::from_nanos(1));
        }
    }
}

/// A bandwidth limit shared by concurrent downloads (generic cell rate: each chunk occupies
/// `bytes / rate` of the link; a short burst is allowed so small objects are not delayed).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    burst: Duration,
    next_free: std::sync::Mutex<Option<std::time::Instant>>,
    clock: crate::clock::SharedClock,
}

/// How long to wait before sending `bytes`, and when the link is free again (pure).
#[must_use]
pub fn schedule(
    now: std::time::Instant,
    next_free: Option<std::time::Instant>,
    bytes: u64,
    bytes_per_sec: u64,
    burst: Duration,
) -> (Duration, std::time::Instant) {
    let start = next_free.map_or(now, |n| n.max(now));
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
    let cost = Duration::from_secs_f64(bytes as f64 / bytes_per_sec.max(1) as f64);
    let free_at = start + cost;
    let wait = free_at.saturating_duration_since(now).saturating_sub(burst);
    (wait, free_at)
}

impl RateLimiter {
    /// A limiter; `None` when `bytes_per_sec` is 0 (unlimited).
    #[must_use]
    pub fn new(bytes_per_sec: u64, clock: crate::clock::SharedClock) -> Option<Self> {
        (bytes_per_sec > 0).then(|| Self {
            bytes_per_sec,
            burst: Duration::from_millis(250),
            next_free: std::sync::Mutex::new(None),
            clock,
        })
    }

    /// Waits until `bytes` may be used.
    pub async fn acquire(&self, bytes: usize) {
        let wait = {
            let mut next = self
                .next_free
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (wait, free_at) = schedule(
                self.clock.monotonic(),
                *next,
                bytes as u64,
                self.bytes_per_sec,
                self.burst,
            );
            *next = Some(free_at);
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn spaces_chunks_at_the_rate_after_a_burst() {
        let t0 = crate::clock::ManualClock::new(std::time::SystemTime::UNIX_EPOCH);
        let now = crate::clock::Clock::monotonic(&t0);
        let burst = Duration::from_millis(250);
        // 100 kB at 100 kB/s: the link is busy for 1 s; 250 ms of that is the burst.
        let (wait, free) = schedule(now, None, 100_000, 100_000, burst);
        assert_eq!(
            (wait, free),
            (Duration::from_millis(750), now + Duration::from_secs(1))
        );
        // The next chunk queues behind the first.
        let (wait, free2) = schedule(now, Some(free), 50_000, 100_000, burst);
        assert_eq!(
            (wait, free2),
            (
                Duration::from_millis(1250),
                now + Duration::from_millis(1500)
            )
        );
        // After an idle gap the link starts fresh.
        let later = now + Duration::from_secs(10);
        assert_eq!(
            schedule(later, Some(free2), 10_000, 100_000, burst).0,
            Duration::ZERO
        );
    }
}
