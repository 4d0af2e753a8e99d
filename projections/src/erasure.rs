//! Erasable text: what a person wrote is kept beside the immutable event, so that deleting
//! the message (or erasing its author) destroys the text while the log keeps the event.
//!
//! The stored payload of an event that carries text holds the placeholder `"body":""`; the
//! text goes in the event's `erasable` column (PostgreSQL) or slot (embedded store), and
//! every reader puts it back (the SQL function `event_payload`, [`restore_text`]). Erasing sets the slot to
//! nothing: from then on every reader sees `"body":""` — exports, `events` pages, time
//! travel, rebuilds — and the read models blank the message when they apply the deletion.

use serde_json::Value;

/// The payload field that holds erasable text.
pub const TEXT_FIELD: &str = "body";

/// The event types whose payload carries erasable text (all of the `Room` aggregate).
pub const TEXT_EVENTS: [&str; 2] = ["MessageSent", "MessageEdited"];

/// Whether events of this type carry erasable text.
pub fn carries_text(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type == "Room" && TEXT_EVENTS.contains(&event_type)
}

/// Takes the text out of a payload about to be stored, leaving the placeholder. `None` for
/// an event without text.
pub fn take_text(aggregate_type: &str, event_type: &str, payload: &mut Value) -> Option<String> {
    if !carries_text(aggregate_type, event_type) {
        return None;
    }
    let slot = payload.get_mut(event_type)?.get_mut(TEXT_FIELD)?;
    match std::mem::replace(slot, Value::String(String::new())) {
        Value::String(text) => Some(text),
        other => {
            *slot = other;
            None
        }
    }
}

/// Puts `text` back into a payload read from the store (the inverse of [`take_text`]).
pub fn restore_text(event_type: &str, payload: &mut Value, text: Option<String>) {
    if let (Some(text), Some(slot)) = (
        text,
        payload
            .get_mut(event_type)
            .and_then(|body| body.get_mut(TEXT_FIELD)),
    ) {
        *slot = Value::String(text);
    }
}

/// The message seq a text-carrying or `MessageDeleted` payload is about.
pub fn message_seq(event_type: &str, payload: &Value) -> Option<u64> {
    payload.get(event_type)?.get("seq")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_taken_out_leaving_the_placeholder_and_put_back() {
        let mut payload = json!({"MessageSent": {"seq": 3, "body": "hi \"you\"", "sender": "s"}});
        let text = take_text("Room", "MessageSent", &mut payload);
        assert_eq!(text.as_deref(), Some("hi \"you\""));
        let stored = payload.to_string();
        assert!(stored.contains(r#""body":"""#), "{stored}");
        assert!(!stored.contains("you"), "{stored}");
        restore_text("MessageSent", &mut payload, text);
        assert_eq!(payload["MessageSent"]["body"], "hi \"you\"");
        assert_eq!(message_seq("MessageSent", &payload), Some(3));
    }

    #[test]
    fn events_without_text_are_left_alone() {
        let mut payload = json!({"MemberJoined": {"user_id": "u", "body": "x"}});
        assert_eq!(take_text("Room", "MemberJoined", &mut payload), None);
        assert_eq!(payload["MemberJoined"]["body"], "x");
        let mut user = json!({"MessageSent": {"body": "x"}});
        assert_eq!(take_text("User", "MessageSent", &mut user), None);
    }
}
