//! [`Timestamp`]: a `timestamptz` exactly as PostgreSQL stores it, so that any value a row
//! holds decodes, `infinity` and years past chrono's range included.
//!
//! sqlx decodes `timestamptz` into chrono by adding the microseconds to PostgreSQL's epoch,
//! which panics for `infinity` and for years chrono cannot hold: one such row, written by other
//! SQL, panicked every worker that claimed it. pq reads its times as this type instead, and
//! converts them with a check.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres};

/// Microseconds since 2000-01-01 00:00 UTC, PostgreSQL's own representation; `i64::MAX` is
/// `infinity` and `i64::MIN` is `-infinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Timestamp(i64);

/// Seconds from the Unix epoch to PostgreSQL's.
const POSTGRES_EPOCH: i64 = 946_684_800;

impl Timestamp {
    pub const INFINITY: Timestamp = Timestamp(i64::MAX);
    pub const NEG_INFINITY: Timestamp = Timestamp(i64::MIN);

    /// The time, if it is one chrono can hold (not an infinity, and within its years).
    pub fn to_chrono(self) -> Option<DateTime<Utc>> {
        if self == Self::INFINITY || self == Self::NEG_INFINITY {
            return None;
        }
        DateTime::from_timestamp_micros(self.0.checked_add(POSTGRES_EPOCH * 1_000_000)?)
    }

    /// What a column that may hold an infinity means: `None` for either infinity, the time
    /// otherwise, or why it is no time pq can use.
    pub fn finite(self, column: &str) -> Result<Option<DateTime<Utc>>, String> {
        if self == Self::INFINITY || self == Self::NEG_INFINITY {
            return Ok(None);
        }
        self.to_chrono()
            .map(Some)
            .ok_or_else(|| format!("its {column} is out of the range of times pq can read"))
    }

    /// A column that must hold a time.
    pub fn required(self, column: &str) -> Result<DateTime<Utc>, String> {
        self.to_chrono()
            .ok_or_else(|| format!("its {column} is {self}, not a time pq can read"))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::INFINITY => f.write_str("infinity"),
            Self::NEG_INFINITY => f.write_str("-infinity"),
            other => match other.to_chrono() {
                Some(time) => write!(f, "{time}"),
                None => write!(f, "{} µs after 2000-01-01", other.0),
            },
        }
    }
}

const TIMESTAMPTZ: PgTypeInfo = PgTypeInfo::with_oid(Oid(1184));
const TIMESTAMPTZ_ARRAY: PgTypeInfo = PgTypeInfo::with_oid(Oid(1185));

impl sqlx::Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        TIMESTAMPTZ
    }
}

impl PgHasArrayType for Timestamp {
    fn array_type_info() -> PgTypeInfo {
        TIMESTAMPTZ_ARRAY
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        // pq's prepared statements receive their rows in the binary format.
        match value.as_bytes()? {
            bytes @ &[_, _, _, _, _, _, _, _] => {
                Ok(Self(i64::from_be_bytes(bytes.try_into().expect("8 bytes"))))
            }
            other => Err(format!("a timestamptz is 8 bytes, not {}", other.len()).into()),
        }
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinities_and_times_beyond_chrono_are_no_times_and_never_panic() {
        assert_eq!(Timestamp::INFINITY.to_chrono(), None);
        assert_eq!(Timestamp::NEG_INFINITY.finite("expected_at"), Ok(None));
        assert_eq!(
            Timestamp(0).to_chrono().unwrap().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        // Year 294000, which PostgreSQL stores and chrono cannot.
        let far = Timestamp(9_214_646_400_000_000_000);
        assert!(far
            .finite("expected_at")
            .unwrap_err()
            .contains("expected_at"));
        assert!(Timestamp(i64::MAX - 1).required("enqueued_at").is_err());
        assert!(Timestamp::INFINITY
            .required("enqueued_at")
            .unwrap_err()
            .contains("infinity"));
    }
}
