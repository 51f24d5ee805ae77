//! Injected time.
//!
//! Decision code (credential expiry, negative caching, backoff, pass timing) takes a [`Clock`]
//! instead of calling `SystemTime::now` directly, so tests can move time by hand. `clippy.toml`
//! forbids the direct calls everywhere else.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time, used to compare with credential expiry times issued by AWS.
    fn now(&self) -> SystemTime;
    /// Monotonic time, used to measure durations.
    fn monotonic(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place real time is read
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[allow(clippy::disallowed_methods)] // the one place real time is read
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock as a [`SharedClock`].
#[must_use]
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<(SystemTime, Instant)>>,
}

impl ManualClock {
    /// A clock frozen at `start`.
    #[must_use]
    #[allow(clippy::disallowed_methods)] // a base instant; only offsets from it are observed
    pub fn new(start: SystemTime) -> Self {
        Self {
            inner: Arc::new(Mutex::new((start, Instant::now()))),
        }
    }

    /// Moves both clocks forward by `by`.
    ///
    /// # Panics
    /// Panics if the lock is poisoned (a test already panicked).
    pub fn advance(&self, by: Duration) {
        let mut guard = self.inner.lock().expect("clock lock");
        guard.0 += by;
        guard.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.inner.lock().expect("clock lock").0
    }

    fn monotonic(&self) -> Instant {
        self.inner.lock().expect("clock lock").1
    }
}
