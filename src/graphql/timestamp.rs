//! The `DateTime` scalar: an instant as RFC 3339 text in UTC with exactly six fractional
//! digits and a `Z` (`2026-12-01T23:19:30.123456Z`), the same form as `recordedAt` and
//! `parley events export`. (async-graphql's own chrono scalar writes nanoseconds and
//! `+00:00`.)

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, SecondsFormat, Utc};

/// An instant, as the API writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Self(at)
    }
}

/// An instant: RFC 3339 in UTC with microseconds, e.g. `2026-12-01T23:19:30.123456Z`.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339"
)]
impl ScalarType for Timestamp {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => DateTime::parse_from_rfc3339(text)
                .map(|at| Self(at.with_timezone(&Utc)))
                .map_err(|e| InputValueError::custom(format!("not an RFC 3339 instant: {e}"))),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339_opts(SecondsFormat::Micros, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_utc_microseconds_with_z() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T23:19:30.123456789+01:00").unwrap();
        let value = Timestamp(at.with_timezone(&Utc)).to_value();
        assert_eq!(
            value,
            Value::String("2026-12-01T22:19:30.123456Z".to_owned())
        );
        assert_eq!(
            Timestamp::parse(value).unwrap().0.timestamp_subsec_micros(),
            123_456
        );
    }
}
