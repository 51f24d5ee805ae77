//! When a component update may proceed (pure; time is passed in as the supervisor's monotonic
//! clock).
//!
//! The classic nucleus asks with a `preUpdateEvent` and accepts exactly one
//! `DeferComponentUpdate` as its answer (`LifecycleIPCEventStreamAgent`: any other call fails
//! with "Time limit to respond to PreComponentUpdateEvent exceeded"). A deferral makes it ask
//! again after `recheckAfterMs`, and `UpdateSystemPolicyService` restarts its wait at every
//! recheck: a component that keeps deferring blocks every deployment to the core, nucleus
//! updates included. So the component defers only while a pass runs, and for at most
//! `maxDeferSeconds` per deployment; then the pass is stopped at a safe point and the update
//! proceeds.
//!
//! From the first `preUpdateEvent` until its `postUpdateEvent`, no pass starts. A deployment
//! that is cancelled may send no `postUpdateEvent`, so that gate opens by itself
//! [`GATE_TIMEOUT`] after the last event.

use std::time::Duration;

/// How long the update gate stays closed after the last `preUpdateEvent` without a
/// `postUpdateEvent`.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(300);
/// While deferring, ask the nucleus to check back after at most this long.
pub const RECHECK: Duration = Duration::from_secs(5);

/// The answer to a `preUpdateEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `DeferComponentUpdate` with this `recheckAfterMs`.
    Defer {
        /// Milliseconds.
        recheck_after_ms: u64,
    },
    /// `DeferComponentUpdate` with 0: go ahead. `stop_pass`: the running pass must be stopped
    /// first, because the deferral limit is reached.
    Proceed {
        /// Whether a running pass is to be cancelled.
        stop_pass: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    deployment_id: String,
    first_event: Duration,
    last_event: Duration,
}

/// The deferral state of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferral {
    max_defer: Duration,
    pending: Option<Pending>,
}

impl Deferral {
    /// Defers each deployment for at most `max_defer` in total.
    #[must_use]
    pub fn new(max_defer: Duration) -> Self {
        Self {
            max_defer,
            pending: None,
        }
    }

    /// Changes the limit (a configuration update); a pending deployment keeps its start.
    pub fn set_max_defer(&mut self, max_defer: Duration) {
        self.max_defer = max_defer;
    }

    /// A `preUpdateEvent` for `deployment_id` arrived at `now`; `pass_running` says whether a
    /// pass is in progress.
    pub fn on_pre_update(
        &mut self,
        deployment_id: &str,
        now: Duration,
        pass_running: bool,
    ) -> Answer {
        let pending = match &mut self.pending {
            Some(p) if p.deployment_id == deployment_id => p,
            slot => slot.insert(Pending {
                deployment_id: deployment_id.to_owned(),
                first_event: now,
                last_event: now,
            }),
        };
        pending.last_event = now;
        if !pass_running {
            return Answer::Proceed { stop_pass: false };
        }
        let waited = now.saturating_sub(pending.first_event);
        match self.max_defer.checked_sub(waited) {
            Some(left) if !left.is_zero() => Answer::Defer {
                recheck_after_ms: u64::try_from(left.min(RECHECK).as_millis()).unwrap_or(u64::MAX),
            },
            _ => Answer::Proceed { stop_pass: true },
        }
    }

    /// The `postUpdateEvent`: the update is done (or the component is about to be restarted).
    pub fn on_post_update(&mut self, deployment_id: &str) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.deployment_id == deployment_id)
        {
            self.pending = None;
        }
    }

    /// Whether a new pass must wait at `now` (an update is under way). Opens by itself
    /// [`GATE_TIMEOUT`] after the last event.
    pub fn blocks_passes(&mut self, now: Duration) -> bool {
        match &self.pending {
            Some(p) if now.saturating_sub(p.last_event) < GATE_TIMEOUT => true,
            Some(_) => {
                self.pending = None;
                false
            }
            None => false,
        }
    }

    /// When the gate opens by itself, if it is closed.
    #[must_use]
    pub fn gate_deadline(&self) -> Option<Duration> {
        self.pending.as_ref().map(|p| p.last_event + GATE_TIMEOUT)
    }

    /// The deployment being waited for, if any.
    #[must_use]
    pub fn deployment(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.deployment_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn idle_component_lets_the_update_proceed_and_holds_passes_until_post() {
        let mut d = Deferral::new(s(600));
        assert_eq!(
            d.on_pre_update("d1", s(0), false),
            Answer::Proceed { stop_pass: false }
        );
        assert!(d.blocks_passes(s(1)), "no pass between pre and post");
        d.on_post_update("d1");
        assert!(!d.blocks_passes(s(2)));
    }

    #[test]
    fn running_pass_defers_with_rechecks_up_to_the_limit() {
        let mut d = Deferral::new(s(12));
        assert_eq!(
            d.on_pre_update("d1", s(0), true),
            Answer::Defer {
                recheck_after_ms: 5_000
            }
        );
        assert_eq!(
            d.on_pre_update("d1", s(5), true),
            Answer::Defer {
                recheck_after_ms: 5_000
            }
        );
        assert_eq!(
            d.on_pre_update("d1", s(10), true),
            Answer::Defer {
                recheck_after_ms: 2_000
            },
            "the last recheck lands on the limit"
        );
        assert_eq!(
            d.on_pre_update("d1", s(12), true),
            Answer::Proceed { stop_pass: true }
        );
    }

    #[test]
    fn zero_limit_never_defers() {
        let mut d = Deferral::new(Duration::ZERO);
        assert_eq!(
            d.on_pre_update("d1", s(0), true),
            Answer::Proceed { stop_pass: true }
        );
    }

    #[test]
    fn a_new_deployment_starts_its_own_clock() {
        let mut d = Deferral::new(s(10));
        d.on_pre_update("d1", s(0), true);
        // d1 was cancelled without a post event; d2 arrives much later.
        assert_eq!(
            d.on_pre_update("d2", s(100), true),
            Answer::Defer {
                recheck_after_ms: 5_000
            }
        );
        assert_eq!(d.deployment(), Some("d2"));
        d.on_post_update("d1");
        assert_eq!(
            d.deployment(),
            Some("d2"),
            "a stale post does not open d2's gate"
        );
    }

    #[test]
    fn gate_opens_by_itself_without_a_post_event() {
        let mut d = Deferral::new(s(600));
        d.on_pre_update("d1", s(0), false);
        assert_eq!(d.gate_deadline(), Some(GATE_TIMEOUT));
        assert!(d.blocks_passes(GATE_TIMEOUT - s(1)));
        assert!(!d.blocks_passes(GATE_TIMEOUT));
        assert_eq!(d.deployment(), None);
    }
}
