//! Durations given as a number of seconds, on the command line (`-s`, `-t`, `--soak`, ...)
//! and in commands (`upgrade --soak`): parsed once, here, and bounded, so that no deadline
//! the master computes from one can overflow (`Instant + Duration` panics past the clock's
//! range: `--soak 1e19` once ended a master mid-upgrade).
//!
//! Pure: below both the command line ([`cli`](crate::cli)) and the command language
//! ([`command`](crate::pure::command)), which use it.

use std::time::Duration;

/// The largest number of seconds accepted anywhere: 366 days. Far past any timeout an
/// operator means, and far from the monotonic clock's limits.
pub const MAX_SECONDS: u64 = 366 * 24 * 60 * 60;

/// [`MAX_SECONDS`] as a duration.
pub const MAX_DURATION: Duration = Duration::from_secs(MAX_SECONDS);

/// Why a number of seconds is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid number of seconds {0:?}: expected a number from 0 to {MAX_SECONDS} (366 days), like 1 or 0.5"
)]
pub struct SecondsError(pub String);

/// Parses a non-negative, finite number of seconds (`1`, `0.25`) of at most
/// [`MAX_SECONDS`].
///
/// # Errors
/// [`SecondsError`] naming the input: not a number, negative, infinite, NaN, or too large.
///
/// ```
/// use std::time::Duration;
/// use einhorn_master::pure::seconds::parse_seconds;
/// assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
/// assert!(parse_seconds("-1").is_err());
/// assert!(parse_seconds("1e19").is_err());
/// ```
pub fn parse_seconds(text: &str) -> Result<Duration, SecondsError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=MAX_SECONDS as f64).contains(s))
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| SecondsError(text.to_string()))
}

/// `duration`, at most [`MAX_DURATION`]: for durations a program passes in (the
/// self-hosted builder's), which have no text to refuse.
///
/// ```
/// use std::time::Duration;
/// use einhorn_master::pure::seconds::{MAX_DURATION, bounded};
/// assert_eq!(bounded(Duration::MAX), MAX_DURATION);
/// assert_eq!(bounded(Duration::from_secs(3)), Duration::from_secs(3));
/// ```
pub fn bounded(duration: Duration) -> Duration {
    duration.min(MAX_DURATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_is_a_bounded_duration_or_an_error_naming_it() {
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_seconds(" 1.5 ").unwrap(), Duration::from_millis(1500));
        assert_eq!(
            parse_seconds(&MAX_SECONDS.to_string()).unwrap(),
            MAX_DURATION
        );
        for bad in [
            "", "x", "-0.1", "-1", "NaN", "nan", "inf", "-inf", "1e400", "1e19", "31622401",
        ] {
            let err = parse_seconds(bad).unwrap_err();
            assert_eq!(err, SecondsError(bad.into()), "{bad}");
            assert!(err.to_string().contains("31622400"), "{err}");
        }
    }
}
