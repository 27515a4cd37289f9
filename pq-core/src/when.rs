//! Points in time for `schedule_at` and `expected_at`: absolute, or a delay from now.

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// A moment for [`schedule_at`](crate::Put::schedule_at) or
/// [`expected_at`](crate::Put::expected_at): an absolute time, or a delay counted from the
/// database's clock when the job is written.
///
/// Anything that implements [`IntoWhen`] converts: a duration string such as `"10s"`, `"5m"`,
/// `"1h30m"` or `"2d"`, a `chrono::DateTime<Utc>`, a `chrono::Duration` or a
/// `std::time::Duration`.
///
/// ```
/// use pq::{IntoWhen, When};
/// use std::time::Duration;
///
/// assert_eq!("1h30m".into_when()?, When::In(Duration::from_secs(5400)));
/// assert!("10x".into_when().is_err());
/// # Ok::<(), pq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this time.
    At(DateTime<Utc>),
    /// This long after the database's `now()` when the job is written.
    In(std::time::Duration),
}

/// The longest delay pq accepts: a thousand years. Longer ones are surely mistakes, and would
/// overflow PostgreSQL's timestamps.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(1000 * 365 * 24 * 3600);

impl When {
    /// This moment, or [`Error::InvalidTime`] if it is a delay longer than [`MAX_DELAY`].
    pub(crate) fn checked(self) -> Result<Self> {
        match self {
            When::In(delay) if delay > MAX_DELAY => Err(Error::InvalidTime {
                input: format!("{delay:?}"),
                reason: "a delay cannot be longer than a thousand years".into(),
            }),
            when => Ok(when),
        }
    }

    /// The absolute time, if this is one.
    pub(crate) fn at(self) -> Option<DateTime<Utc>> {
        match self {
            When::At(at) => Some(at),
            When::In(_) => None,
        }
    }

    /// The delay in microseconds, if this is one (saturating at about 292,000 years).
    pub(crate) fn in_micros(self) -> Option<i64> {
        match self {
            When::At(_) => None,
            When::In(delay) => Some(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX)),
        }
    }
}

impl From<std::time::Duration> for When {
    fn from(delay: std::time::Duration) -> Self {
        When::In(delay)
    }
}

impl From<DateTime<Utc>> for When {
    fn from(at: DateTime<Utc>) -> Self {
        When::At(at)
    }
}

/// Converts a value into a [`When`], failing with [`Error::InvalidTime`] on a malformed
/// duration string or a negative duration.
pub trait IntoWhen {
    /// The moment this value denotes.
    fn into_when(self) -> Result<When>;
}

impl IntoWhen for When {
    fn into_when(self) -> Result<When> {
        Ok(self)
    }
}

impl IntoWhen for std::time::Duration {
    fn into_when(self) -> Result<When> {
        Ok(When::In(self))
    }
}

impl IntoWhen for DateTime<Utc> {
    fn into_when(self) -> Result<When> {
        Ok(When::At(self))
    }
}

impl IntoWhen for chrono::Duration {
    fn into_when(self) -> Result<When> {
        self.to_std().map(When::In).map_err(|_| Error::InvalidTime {
            input: self.to_string(),
            reason: "a delay cannot be negative".into(),
        })
    }
}

impl IntoWhen for &str {
    fn into_when(self) -> Result<When> {
        parse_duration(self).map(When::In)
    }
}

impl IntoWhen for &String {
    fn into_when(self) -> Result<When> {
        self.as_str().into_when()
    }
}

impl IntoWhen for String {
    fn into_when(self) -> Result<When> {
        self.as_str().into_when()
    }
}

/// Parses a delay such as `"10s"`, `"5m"`, `"1h30m"`, `"2d"` or `"1h 30min"`, the same strings
/// that `#[pq::task]` accepts at compile time.
///
/// ```
/// assert_eq!(pq::parse_duration("1h30m")?.as_secs(), 5400);
/// assert!(pq::parse_duration("-5s").is_err());
/// # Ok::<(), pq::Error>(())
/// ```
pub fn parse_duration(input: &str) -> Result<std::time::Duration> {
    humantime::parse_duration(input.trim()).map_err(|e| Error::InvalidTime {
        input: input.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn duration_strings_combine_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 1h 30m ").unwrap(),
            Duration::from_secs(5400)
        );
    }

    #[test]
    fn bad_strings_name_the_input() {
        for bad in ["", "10x", "-5s", "s", "1.5.h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn negative_chrono_durations_are_refused() {
        assert!(chrono::Duration::seconds(-1).into_when().is_err());
        assert_eq!(
            chrono::Duration::seconds(2).into_when().unwrap(),
            When::In(Duration::from_secs(2))
        );
    }
}
