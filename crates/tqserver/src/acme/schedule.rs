//! When to renew and how long to wait after a failure: decided here, as
//! pure functions of the certificate's dates and the clock.

use std::time::{Duration, SystemTime};

/// The first wait after a failed attempt; each further failure doubles it.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between attempts (Let's Encrypt allows 5 failed
/// validations per name an hour; doubling from 5 s spends them in about 3
/// minutes, then at most one an hour).
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// when `renew_before` is left, or a third of its lifetime when that is not
/// set or not shorter than the lifetime (which would renew at once, again
/// and again). The second value says whether `renew_before` was set aside.
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    renew_before: Option<Duration>,
) -> (SystemTime, bool) {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let third = lifetime / 3;
    match renew_before {
        Some(before) if before < lifetime => (not_after - before, false),
        Some(_) => (not_after - third, true),
        None => (not_after - third, false),
    }
}

/// The wait after `failures` failed attempts in a row (1 for the first).
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// How long from `now` until `at` (zero when it has passed).
pub fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_with_a_third_of_the_lifetime_left_by_default() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + 90 * DAY;
        assert_eq!(renewal_time(start, end, None), (start + 60 * DAY, false));
    }

    #[test]
    fn renew_before_sets_the_time_unless_it_covers_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + 90 * DAY;
        assert_eq!(
            renewal_time(start, end, Some(10 * DAY)),
            (start + 80 * DAY, false)
        );
        assert_eq!(
            renewal_time(start, end, Some(90 * DAY)),
            (start + 60 * DAY, true)
        );
        assert_eq!(
            renewal_time(start, end, Some(400 * DAY)),
            (start + 60 * DAY, true)
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_an_hour() {
        let delays: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(
            delays,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(retry_delay(0), FIRST_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn until_never_goes_negative() {
        let now = SystemTime::UNIX_EPOCH + DAY;
        assert_eq!(until(now - DAY, now), Duration::ZERO);
        assert_eq!(until(now + DAY, now), DAY);
    }
}
