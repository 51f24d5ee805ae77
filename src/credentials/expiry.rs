//! Judging credentials' expiry on the issuer's clock (pure).
//!
//! Boards without a real-time clock boot hours or years off until NTP catches up. The
//! credentials provider stamps its answer with an HTTP `Date`; the credentials live from that
//! moment until `expiration` on the same (correct) clock. Comparing `expiration` with the local
//! clock instead rejects good credentials on a device whose clock runs ahead ("expired on
//! arrival") and keeps bad ones on a device whose clock runs behind. So: the lifetime is
//! `expiration - Date`, the local expiry is `now + lifetime`, and the measured offset is
//! reported. Only credentials already expired on the server's own clock are refused.

use std::time::{Duration, SystemTime};

/// A clock difference worth mentioning (S3 refuses requests 15 minutes off; say it earlier).
pub const NOTABLE_SKEW: Duration = Duration::from_secs(60);

/// The local clock minus the server's, in seconds (positive: the device is ahead).
#[must_use]
pub fn skew_seconds(local_now: SystemTime, server_date: SystemTime) -> i64 {
    match local_now.duration_since(server_date) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// When credentials issued at `server_date` (if the answer had one) and valid until
/// `expiration` expire on the local clock. `None` if they are expired on the clock that issued
/// them (or, without a `Date`, on the local clock).
#[must_use]
pub fn local_expiration(
    local_now: SystemTime,
    server_date: Option<SystemTime>,
    expiration: SystemTime,
) -> Option<SystemTime> {
    let issued_at = server_date.unwrap_or(local_now);
    let lifetime = expiration.duration_since(issued_at).ok()?;
    (!lifetime.is_zero()).then(|| local_now + lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    const HOUR: u64 = 3600;

    #[test]
    fn a_clock_hours_ahead_keeps_the_full_lifetime() {
        // Server at 10:00, credentials until 11:00; the device believes it is 13:00.
        let (server, exp, local) = (t(10 * HOUR), t(11 * HOUR), t(13 * HOUR));
        assert_eq!(
            local_expiration(local, Some(server), exp),
            Some(t(14 * HOUR))
        );
        assert_eq!(skew_seconds(local, server), 3 * 3600);
    }

    #[test]
    fn a_clock_years_behind_does_not_stretch_the_lifetime() {
        let (server, exp, local) = (t(100 * HOUR), t(101 * HOUR), t(HOUR));
        assert_eq!(
            local_expiration(local, Some(server), exp),
            Some(t(2 * HOUR))
        );
        assert!(skew_seconds(local, server) < 0);
    }

    #[test]
    fn credentials_expired_on_the_issuers_clock_are_refused() {
        assert_eq!(
            local_expiration(t(5 * HOUR), Some(t(10 * HOUR)), t(9 * HOUR)),
            None
        );
        assert_eq!(
            local_expiration(t(5 * HOUR), Some(t(10 * HOUR)), t(10 * HOUR)),
            None
        );
        // Without a Date the local clock is all there is.
        assert_eq!(local_expiration(t(12 * HOUR), None, t(11 * HOUR)), None);
        assert_eq!(
            local_expiration(t(10 * HOUR), None, t(11 * HOUR)),
            Some(t(11 * HOUR))
        );
    }
}
