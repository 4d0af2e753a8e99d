//! Events as the read side sees them: positioned, with their stored metadata, decoded into
//! the domain's event types.
//!
//! Decoding applies the domain's upcasters ([`parley_domain::upcasters`]), the same list the
//! aggregate store uses, so an event stored in an older shape projects and replays like a
//! current one. What leaves the process for analysts ([`LogEvent::redacted`]) is the event as
//! stored, minus secrets.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use parley_domain::{RoomEvent, RoomId, UserEvent, UserId};
use serde::Deserialize;
use serde_json::Value;

use crate::GlobalPosition;

/// One event of the global log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    pub position: GlobalPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

/// A log event in the domain's terms.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodedEvent {
    Room(RoomId, RoomEvent),
    User(UserId, UserEvent),
    /// An aggregate or event this version does not know (skipped by projections, kept in
    /// the log and exports).
    Unknown,
}

/// What replaces a secret in anything handed to analysts (exports, the `events` query).
pub const REDACTED: &str = "[redacted]";

/// Payload fields that never leave the server: (event type, field inside the event's
/// object). The argon2 hash in `UserRegistered` is the only one today.
const SECRET_FIELDS: [(&str, &str); 1] = [("UserRegistered", "password_hash")];

static UPCASTERS: LazyLock<Vec<Box<dyn EventUpcaster>>> = LazyLock::new(parley_domain::upcasters);

impl LogEvent {
    /// Decodes the payload, upcasting an older version first. An event that does not decode
    /// is reported as `Unknown` and logged: a projection must not stop the whole log on one
    /// unreadable row.
    pub fn decode(&self) -> DecodedEvent {
        let upcasted = self.upcasted_payload();
        let payload = upcasted.as_ref().unwrap_or(&self.payload);
        let decoded = match self.aggregate_type.as_str() {
            "Room" => RoomId::parse(&self.aggregate_id).ok().and_then(|id| {
                RoomEvent::deserialize(payload)
                    .ok()
                    .map(|e| DecodedEvent::Room(id, e))
            }),
            "User" => UserId::parse(&self.aggregate_id).ok().and_then(|id| {
                UserEvent::deserialize(payload)
                    .ok()
                    .map(|e| DecodedEvent::User(id, e))
            }),
            _ => None,
        };
        decoded.unwrap_or_else(|| {
            tracing::warn!(
                position = self.position.0,
                aggregate_type = %self.aggregate_type,
                event_type = %self.event_type,
                event_version = %self.event_version,
                "event cannot be decoded; projections skip it"
            );
            DecodedEvent::Unknown
        })
    }

    /// The payload brought to the current version, if any upcaster claims this event (`None`:
    /// the stored payload is current).
    fn upcasted_payload(&self) -> Option<Value> {
        if !UPCASTERS
            .iter()
            .any(|u| u.can_upcast(&self.event_type, &self.event_version))
        {
            return None;
        }
        let stored = SerializedEvent::new(
            self.aggregate_id.clone(),
            usize::try_from(self.sequence).unwrap_or(0),
            self.aggregate_type.clone(),
            self.event_type.clone(),
            self.event_version.clone(),
            self.payload.clone(),
            Value::Null,
        );
        let current = UPCASTERS.iter().fold(stored, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        });
        Some(current.payload)
    }

    /// The event as analysts may see it: as stored, with every secret field (the
    /// `password_hash` of `UserRegistered`) replaced by [`REDACTED`].
    pub fn redacted(mut self) -> Self {
        redact(&self.event_type, &mut self.payload);
        self
    }

    /// `recorded_at` in the canonical form of exports and the API: RFC 3339, UTC, with
    /// microseconds (`2026-11-20T22:55:54.555283Z`).
    pub fn recorded_at_rfc3339(&self) -> String {
        self.recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// Replaces the secret fields of an event of type `event_type` in its payload.
fn redact(event_type: &str, payload: &mut Value) {
    for (secret_type, field) in SECRET_FIELDS {
        if event_type != secret_type {
            continue;
        }
        if let Some(secret) = payload
            .get_mut(secret_type)
            .and_then(|body| body.get_mut(field))
        {
            *secret = Value::String(REDACTED.to_owned());
        }
    }
}

/// One event of the global log with its payload and metadata still as JSON text, the way
/// exports read it: formatting millions of events is cheaper from text than from trees.
#[derive(Clone, Debug, PartialEq)]
pub struct RawLogEvent {
    pub position: GlobalPosition,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// JSON text, as stored.
    pub payload: String,
    /// JSON text, as stored.
    pub metadata: String,
    pub recorded_at: DateTime<Utc>,
}

impl RawLogEvent {
    /// Like [`LogEvent::redacted`]. Only events that carry a secret are parsed.
    pub fn redacted(mut self) -> Result<Self, serde_json::Error> {
        if let Some(payload) = redacted_text(&self.event_type, &self.payload)? {
            self.payload = payload;
        }
        Ok(self)
    }
}

/// The JSON text `payload` of an event of type `event_type` with its secrets redacted, or
/// `None` if events of that type carry none (only those are parsed).
pub(crate) fn redacted_text(
    event_type: &str,
    payload: &str,
) -> Result<Option<String>, serde_json::Error> {
    if !SECRET_FIELDS.iter().any(|(t, _)| *t == event_type) {
        return Ok(None);
    }
    let mut payload: Value = serde_json::from_str(payload)?;
    redact(event_type, &mut payload);
    Ok(Some(payload.to_string()))
}

/// Writes `at` as [`LogEvent::recorded_at_rfc3339`] does (RFC 3339, UTC, microseconds),
/// without allocating.
pub(crate) fn write_rfc3339_micros(
    at: &DateTime<Utc>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use chrono::{Datelike, Timelike};
    let year = at.year();
    // Digits into a fixed buffer: exports write one of these per event. A leap second
    // (nanoseconds past 10^9) or a year beyond 0..=9999 takes chrono's own path.
    if !(0..=9999).contains(&year) || at.nanosecond() >= 1_000_000_000 {
        return out.write_all(at.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes());
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |range: std::ops::Range<usize>, mut value: u32| {
        for digit in text[range].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0..4, year.unsigned_abs());
    put(5..7, at.month());
    put(8..10, at.day());
    put(11..13, at.hour());
    put(14..16, at.minute());
    put(17..19, at.second());
    put(20..26, at.nanosecond() / 1000);
    out.write_all(&text)
}

/// A committed batch as handed to the live feed: events with their decoded form.
pub type LiveBatch = Arc<Vec<(LogEvent, DecodedEvent)>>;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(event_type: &str, event_version: &str, payload: Value) -> LogEvent {
        LogEvent {
            position: GlobalPosition(7),
            aggregate_type: if event_type == "UserRegistered" {
                "User"
            } else {
                "Room"
            }
            .to_owned(),
            aggregate_id: "0192f0c4-0000-7000-8000-000000000001".to_owned(),
            sequence: 2,
            event_type: event_type.to_owned(),
            event_version: event_version.to_owned(),
            payload,
            metadata: json!({"request_id": "r"}),
            recorded_at: DateTime::from_timestamp(1_795_733_754, 555_283_999).expect("in range"),
        }
    }

    #[test]
    fn a_password_hash_is_redacted_and_nothing_else_changes() {
        let registered = event(
            "UserRegistered",
            "1.0",
            json!({"UserRegistered": {"username": "ann", "password_hash": "$argon2id$secret"}}),
        );
        let redacted = registered.clone().redacted();
        assert_eq!(
            redacted.payload,
            json!({"UserRegistered": {"username": "ann", "password_hash": "[redacted]"}})
        );
        assert_eq!(
            LogEvent {
                payload: registered.payload.clone(),
                ..redacted
            },
            registered
        );
        let message = event("MessageSent", "1.0", json!({"MessageSent": {"body": "x"}}));
        assert_eq!(message.clone().redacted(), message);
    }

    #[test]
    fn recorded_at_is_rfc3339_utc_with_microseconds() {
        let e = event("MessageSent", "1.0", json!({}));
        assert_eq!(e.recorded_at_rfc3339(), "2026-11-26T22:55:54.555283Z");
        for (secs, nanos) in [
            (0, 0),
            (1_795_733_754, 555_283_999),
            (4_102_444_799, 1_000),
            (-62_135_596_800, 7_000),
            (253_402_300_800, 5_000),
        ] {
            let at = DateTime::from_timestamp(secs, nanos).expect("in range");
            let mut written = Vec::new();
            write_rfc3339_micros(&at, &mut written).expect("written");
            assert_eq!(
                String::from_utf8(written).expect("utf-8"),
                at.to_rfc3339_opts(SecondsFormat::Micros, true)
            );
        }
    }

    #[test]
    fn a_raw_event_is_redacted_like_a_decoded_one() {
        let registered = event(
            "UserRegistered",
            "1.0",
            json!({"UserRegistered": {"username": "ann", "password_hash": "$argon2id$secret"}}),
        );
        let raw = RawLogEvent {
            position: registered.position,
            aggregate_type: registered.aggregate_type.clone(),
            aggregate_id: registered.aggregate_id.clone(),
            sequence: registered.sequence,
            event_type: registered.event_type.clone(),
            event_version: registered.event_version.clone(),
            payload: registered.payload.to_string(),
            metadata: registered.metadata.to_string(),
            recorded_at: registered.recorded_at,
        };
        let redacted = raw.redacted().expect("valid payload");
        assert_eq!(
            serde_json::from_str::<Value>(&redacted.payload).expect("JSON"),
            registered.redacted().payload
        );
    }

    #[test]
    fn an_old_message_sent_decodes_through_the_upcaster() {
        let old = event(
            "MessageSent",
            "0.9",
            json!({"MessageSent": {
                "message_id": "0192f0c4-0000-7000-8000-0000000000aa",
                "seq": 3,
                "sender": "0192f0c4-0000-7000-8000-00000000a11c",
                "text": "old shape",
                "sent_at": "2024-01-01T00:00:00Z"
            }}),
        );
        match old.decode() {
            DecodedEvent::Room(_, RoomEvent::MessageSent { body, seq, .. }) => {
                assert_eq!((body.as_str(), seq.0), ("old shape", 3));
            }
            other => panic!("not decoded: {other:?}"),
        }
    }
}
