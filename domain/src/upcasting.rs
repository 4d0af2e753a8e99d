//! Upcasters: how an event stored in an older shape is brought to the current one before an
//! aggregate or a projection sees it.
//!
//! The list lives here, next to the events it describes, so the write side (the aggregate
//! store) and the read side (the projector, time travel) apply exactly the same conversions.
//! Stored events are never rewritten: exports show them as stored, with their own
//! `event_version`.

use cqrs_es::persist::{EventUpcaster, SemanticVersionEventUpcaster};
use serde_json::Value;

/// Every upcaster, in the order they are tried. Each one moves an event forward to the
/// version it names; an event no upcaster claims is already current.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(SemanticVersionEventUpcaster::new(
        "MessageSent",
        "1.0",
        Box::new(message_sent_from_0_9),
    ))]
}

/// `MessageSent` 0.9 (the pre-release format) called the body `text` and had no
/// `client_msg_id`. Such a message gets the synthetic id `legacy-<message_id>`, which no
/// client can have used before 1.0 and which keeps it unique per sender.
fn message_sent_from_0_9(mut payload: Value) -> Value {
    if let Some(Value::Object(message)) = payload.get_mut("MessageSent") {
        if let Some(text) = message.remove("text") {
            message.entry("body").or_insert(text);
        }
        if !message.contains_key("client_msg_id") {
            let legacy = message
                .get("message_id")
                .and_then(Value::as_str)
                .map(|id| Value::String(format!("legacy-{id}")));
            if let Some(legacy) = legacy {
                message.insert("client_msg_id".to_owned(), legacy);
            }
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use cqrs_es::persist::SerializedEvent;
    use serde_json::json;

    use super::upcasters;
    use crate::RoomEvent;

    fn stored(event_version: &str, payload: serde_json::Value) -> SerializedEvent {
        SerializedEvent::new(
            "room".to_owned(),
            2,
            "Room".to_owned(),
            "MessageSent".to_owned(),
            event_version.to_owned(),
            payload,
            json!({}),
        )
    }

    fn upcast(event: SerializedEvent) -> SerializedEvent {
        upcasters().iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        })
    }

    #[test]
    fn a_0_9_message_becomes_a_current_message_sent() {
        let old = stored(
            "0.9",
            json!({"MessageSent": {
                "message_id": "0192f0c4-0000-7000-8000-000000000001",
                "seq": 1,
                "sender": "0192f0c4-0000-7000-8000-00000000a11c",
                "text": "hello from 0.9",
                "sent_at": "2024-01-01T00:00:00Z"
            }}),
        );
        let current = upcast(old);
        assert_eq!(current.event_version, "1.0.0");
        let event: RoomEvent = serde_json::from_value(current.payload).expect("decodes");
        let RoomEvent::MessageSent {
            body,
            client_msg_id,
            ..
        } = event
        else {
            panic!("not a MessageSent: {event:?}");
        };
        assert_eq!(body.as_str(), "hello from 0.9");
        assert_eq!(
            client_msg_id.as_str(),
            "legacy-0192f0c4-0000-7000-8000-000000000001"
        );
    }

    #[test]
    fn a_current_event_is_left_alone() {
        let payload = json!({"MessageSent": {"text": "not touched"}});
        let event = upcast(stored(crate::EVENT_VERSION, payload.clone()));
        assert_eq!(event.payload, payload);
        assert_eq!(event.event_version, crate::EVENT_VERSION);
    }
}
