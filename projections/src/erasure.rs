//! Erasable text: what a person wrote is kept beside the immutable event, so that deleting
//! the message (or erasing its author) destroys the text while the log keeps the event.
//!
//! In PostgreSQL the stored payload of an event that carries text holds the placeholder `""`
//! in the text's field ([`TEXT_FIELDS`]: a message's `body`, a user's `username`), the text
//! goes in the row's `erasable` column, and every read puts it back (the SQL function
//! `event_payload`, migration `erasable_text`). Erasing sets the column to NULL: from then
//! on every reader sees `""` — exports, `events` pages, time travel, rebuilds — and the
//! read models blank what they hold when they apply the deletion or erasure. The embedded
//! store keeps one payload and blanks its field in place.

use cqrs_es::persist::SerializedEvent;
use serde_json::Value;

/// The event types whose payload carries erasable text, with the field that holds it:
/// what people wrote, and who they are.
pub const TEXT_FIELDS: [(&str, &str, &str); 3] = [
    ("Room", "MessageSent", "body"),
    ("Room", "MessageEdited", "body"),
    ("User", "UserRegistered", "username"),
];

/// The payload field of this event type that holds erasable text, if any.
pub fn text_field(aggregate_type: &str, event_type: &str) -> Option<&'static str> {
    TEXT_FIELDS
        .iter()
        .find(|(aggregate, event, _)| *aggregate == aggregate_type && *event == event_type)
        .map(|(_, _, field)| *field)
}

/// Whether events of this type carry erasable text.
pub fn carries_text(aggregate_type: &str, event_type: &str) -> bool {
    text_field(aggregate_type, event_type).is_some()
}

/// Takes the text out of a payload about to be stored, leaving the placeholder `""`. `None`
/// for an event without text.
pub fn take_text(aggregate_type: &str, event_type: &str, payload: &mut Value) -> Option<String> {
    let field = text_field(aggregate_type, event_type)?;
    let slot = payload.get_mut(event_type)?.get_mut(field)?;
    match std::mem::replace(slot, Value::String(String::new())) {
        Value::String(text) => Some(text),
        other => {
            *slot = other;
            None
        }
    }
}

/// The stored payload text with `text` put back in its placeholder (what the SQL function
/// `event_payload` does, done where it is cheaper: while the export formats the row).
/// `None` if the event type carries no text or the payload holds no placeholder.
pub fn with_text(
    aggregate_type: &str,
    event_type: &str,
    payload: &str,
    text: &str,
) -> Option<String> {
    let field = text_field(aggregate_type, event_type)?;
    let placeholder = format!("\"{field}\":\"\"");
    let at = payload.find(&placeholder)?;
    let escaped = serde_json::to_string(text).ok()?;
    let value_at = at + placeholder.len() - 2;
    let mut out = String::with_capacity(payload.len() + escaped.len());
    out.push_str(&payload[..value_at]);
    out.push_str(&escaped);
    out.push_str(&payload[value_at + 2..]);
    Some(out)
}

/// The stored payload text as readers see it: with the row's erasable `text` put back in
/// its placeholder, or as stored when it has none (or it was erased).
pub fn restored<'a>(
    aggregate_type: &str,
    event_type: &str,
    payload: &'a str,
    text: Option<&str>,
) -> std::borrow::Cow<'a, str> {
    match text.and_then(|text| with_text(aggregate_type, event_type, payload, text)) {
        Some(restored) => std::borrow::Cow::Owned(restored),
        None => std::borrow::Cow::Borrowed(payload),
    }
}

/// What an event erases when it is written: the text of one message (a `MessageDeleted`),
/// or a user's username and every message they wrote (a `UserErased`). Both stores use it:
/// PostgreSQL to blank the events of the same batch (its UPDATE cannot see them), the
/// embedded store to blank its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Erases<'a> {
    Message { room: &'a str, seq: u64 },
    User(&'a str),
}

impl<'a> Erases<'a> {
    /// What `event` erases, if anything.
    pub fn of(event: &'a SerializedEvent) -> Option<Self> {
        match (event.aggregate_type.as_str(), event.event_type.as_str()) {
            ("Room", "MessageDeleted") => Some(Self::Message {
                room: &event.aggregate_id,
                seq: message_seq(&event.event_type, &event.payload)?,
            }),
            ("User", "UserErased") => Some(Self::User(&event.aggregate_id)),
            _ => None,
        }
    }

    /// Whether the text `event` carries is among what this erases.
    pub fn covers(&self, event: &SerializedEvent) -> bool {
        let body = &event.payload[&event.event_type];
        match (
            *self,
            event.aggregate_type.as_str(),
            event.event_type.as_str(),
        ) {
            (Self::Message { room, seq }, "Room", "MessageSent" | "MessageEdited") => {
                event.aggregate_id == room && body["seq"].as_u64() == Some(seq)
            }
            (Self::User(user), "User", "UserRegistered") => event.aggregate_id == user,
            (Self::User(user), "Room", "MessageSent") => body["sender"].as_str() == Some(user),
            (Self::User(user), "Room", "MessageEdited") => body["editor"].as_str() == Some(user),
            _ => false,
        }
    }
}

/// The name an erased user shows under in the read models: no trace of the old one, unique
/// (usernames are), and outside the rules for new names (which allow no more than 32
/// characters of `[a-z0-9_]`, so it can never be registered: it has 39).
pub fn erased_username(user: parley_domain::UserId) -> String {
    format!("erased_{}", user.0.simple())
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
    fn text_is_taken_out_leaving_the_placeholder() {
        let mut payload = json!({"MessageSent": {"seq": 3, "body": "hi \"you\"", "sender": "s"}});
        let text = take_text("Room", "MessageSent", &mut payload);
        assert_eq!(text.as_deref(), Some("hi \"you\""));
        let stored = payload.to_string();
        assert!(stored.contains(r#""body":"""#), "{stored}");
        assert!(!stored.contains("you"), "{stored}");
        assert_eq!(message_seq("MessageSent", &payload), Some(3));
    }

    #[test]
    fn the_text_goes_back_into_its_placeholder_json_escaped() {
        let stored = r#"{"MessageSent":{"body":"","seq":3}}"#;
        let restored = with_text("Room", "MessageSent", stored, "hi \"you\"\n✓").expect("restored");
        assert_eq!(
            restored,
            r#"{"MessageSent":{"body":"hi \"you\"\n✓","seq":3}}"#
        );
        let user = r#"{"UserRegistered":{"password_hash":"h","username":""}}"#;
        assert_eq!(
            with_text("User", "UserRegistered", user, "ann").as_deref(),
            Some(r#"{"UserRegistered":{"password_hash":"h","username":"ann"}}"#)
        );
        assert_eq!(with_text("Room", "MemberJoined", stored, "x"), None);
    }

    #[test]
    fn a_payload_without_text_is_read_as_stored() {
        let stored = r#"{"MessageSent":{"body":"","seq":3}}"#;
        assert_eq!(
            restored("Room", "MessageSent", stored, Some("hi")),
            r#"{"MessageSent":{"body":"hi","seq":3}}"#
        );
        // Erased (no text left): the placeholder stays.
        assert!(matches!(
            restored("Room", "MessageSent", stored, None),
            std::borrow::Cow::Borrowed(s) if s == stored
        ));
    }

    fn event(aggregate: &str, id: &str, event_type: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            id.to_owned(),
            1,
            aggregate.to_owned(),
            event_type.to_owned(),
            "1.0".to_owned(),
            payload,
            json!({}),
        )
    }

    #[test]
    fn a_deletion_covers_its_messages_text_and_an_erasure_all_of_a_users() {
        let deleted = event(
            "Room",
            "r",
            "MessageDeleted",
            json!({"MessageDeleted": {"seq": 2}}),
        );
        let erased = event("User", "u", "UserErased", json!({"UserErased": {}}));
        let message = Erases::of(&deleted).expect("erases");
        let user = Erases::of(&erased).expect("erases");
        assert_eq!(message, Erases::Message { room: "r", seq: 2 });
        let sent = event(
            "Room",
            "r",
            "MessageSent",
            json!({"MessageSent": {"seq": 2, "sender": "u"}}),
        );
        let edit = event(
            "Room",
            "r",
            "MessageEdited",
            json!({"MessageEdited": {"seq": 2, "editor": "u"}}),
        );
        let other = event(
            "Room",
            "r",
            "MessageSent",
            json!({"MessageSent": {"seq": 3, "sender": "v"}}),
        );
        let elsewhere = event(
            "Room",
            "q",
            "MessageSent",
            json!({"MessageSent": {"seq": 2, "sender": "v"}}),
        );
        let registered = event("User", "u", "UserRegistered", json!({"UserRegistered": {}}));
        assert!(message.covers(&sent) && message.covers(&edit));
        assert!(
            !message.covers(&other) && !message.covers(&elsewhere) && !message.covers(&registered)
        );
        assert!(user.covers(&sent) && user.covers(&edit) && user.covers(&registered));
        assert!(!user.covers(&other) && !user.covers(&elsewhere));
        assert_eq!(Erases::of(&sent), None);
    }

    #[test]
    fn events_without_text_are_left_alone() {
        let mut payload = json!({"MemberJoined": {"user_id": "u", "body": "x"}});
        assert_eq!(take_text("Room", "MemberJoined", &mut payload), None);
        assert_eq!(payload["MemberJoined"]["body"], "x");
        let mut user = json!({"MessageSent": {"body": "x"}});
        assert_eq!(take_text("User", "MessageSent", &mut user), None);
        let mut registered = json!({"UserRegistered": {"username": "ann", "password_hash": "h"}});
        assert_eq!(
            take_text("User", "UserRegistered", &mut registered).as_deref(),
            Some("ann")
        );
        assert_eq!(
            registered.to_string(),
            r#"{"UserRegistered":{"password_hash":"h","username":""}}"#
        );
    }
}
