//! Validated values. Each is built by parsing, so an invalid one cannot exist; the rules are
//! the ones in `shared/API.md` ("Rules").

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a value was rejected. Each rule is its own variant so callers (and tests) match on the
/// rule, never on text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Username shorter than 3 or longer than 32 characters.
    #[error("username must be {min} to {max} characters long, got {len}")]
    UsernameLength { min: usize, max: usize, len: usize },
    /// Username with a character outside `[a-z0-9_]`.
    #[error("username may contain only a-z, 0-9 and _ (found {found:?})")]
    UsernameCharacter { found: char },
    /// Password shorter than 8 or longer than 128 characters.
    #[error("password must be {min} to {max} characters long, got {len}")]
    PasswordLength { min: usize, max: usize, len: usize },
    /// Room name empty or only whitespace.
    #[error("room name must not be blank")]
    RoomNameBlank,
    /// Room name longer than 100 characters.
    #[error("room name must be at most {max} characters, got {len}")]
    RoomNameTooLong { max: usize, len: usize },
    /// Message body of zero characters.
    #[error("message body must not be empty")]
    BodyEmpty,
    /// Message body made only of whitespace.
    #[error("message body must not be only whitespace")]
    BodyBlank,
    /// Message body longer than 4000 characters.
    #[error("message body must be at most {max} characters, got {len}")]
    BodyTooLong { max: usize, len: usize },
    /// Announcement text made only of whitespace (or empty).
    #[error("announcement text must not be blank")]
    AnnouncementBlank,
    /// Announcement text longer than 1000 characters.
    #[error("announcement text must be at most {max} characters, got {len}")]
    AnnouncementTooLong { max: usize, len: usize },
    /// Room topic longer than 500 characters.
    #[error("room topic must be at most {max} characters, got {len}")]
    TopicTooLong { max: usize, len: usize },
    /// Reaction emoji empty, longer than 16 characters, or holding whitespace or a control
    /// character.
    #[error("emoji must be {min} to {max} characters without spaces, got {got:?}")]
    Emoji { min: usize, max: usize, got: String },
    /// A ban's reason longer than 500 characters.
    #[error("ban reason must be at most {max} characters, got {len}")]
    ReasonTooLong { max: usize, len: usize },
    /// `clientMsgId` empty or longer than 64 characters.
    #[error("clientMsgId must be {min} to {max} characters long, got {len}")]
    ClientMsgIdLength { min: usize, max: usize, len: usize },
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Serde for a validated string: written as the bare string, read back through the type's
/// `parse`, so a value from an event, a snapshot or a request obeys the same rules as one
/// built in code. `erasable` types also read back `""`, the placeholder an erased text leaves
/// in its event (see `docs/architecture.md`, "Erasure").
macro_rules! validated_string_serde {
    ($($ty:ident),* $(; erasable $($erasable:ident),*)?) => {
        $(
            impl Serialize for $ty {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(&self.0)
                }
            }

            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let s = String::deserialize(deserializer)?;
                    Self::parse(&s).map_err(serde::de::Error::custom)
                }
            }
        )*
        $($(
            impl Serialize for $erasable {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(&self.0)
                }
            }

            impl<'de> Deserialize<'de> for $erasable {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let s = String::deserialize(deserializer)?;
                    if s.is_empty() {
                        // The placeholder of an erased text.
                        return Ok(Self(s));
                    }
                    Self::parse(&s).map_err(serde::de::Error::custom)
                }
            }
        )*)?
    };
}

validated_string_serde!(RoomName, AnnouncementText, Emoji, RoomTopic, BanReason; erasable Username, MessageBody);

/// A username: 3–32 characters of `[a-z0-9_]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 32;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if !(Self::MIN..=Self::MAX).contains(&len) {
            return Err(ValueError::UsernameLength {
                min: Self::MIN,
                max: Self::MAX,
                len,
            });
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
        {
            return Err(ValueError::UsernameCharacter { found });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plain-text password that satisfies the length rule (8–128 characters). It is never
/// stored: the server hashes it (argon2) and only the hash reaches the `User` aggregate.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN: usize = 8;
    pub const MAX: usize = 128;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if !(Self::MIN..=Self::MAX).contains(&len) {
            return Err(ValueError::PasswordLength {
                min: Self::MIN,
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A room name: 1–100 characters, not only whitespace. Stored as given (not trimmed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomName(String);

impl RoomName {
    pub const MAX: usize = 100;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.trim().is_empty() {
            return Err(ValueError::RoomNameBlank);
        }
        let len = char_len(s);
        if len > Self::MAX {
            return Err(ValueError::RoomNameTooLong {
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body: 1–4000 Unicode scalar values, not only whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageBody(String);

impl MessageBody {
    pub const MAX: usize = 4000;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.is_empty() {
            return Err(ValueError::BodyEmpty);
        }
        if s.trim().is_empty() {
            return Err(ValueError::BodyBlank);
        }
        let len = char_len(s);
        if len > Self::MAX {
            return Err(ValueError::BodyTooLong {
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The client's idempotency key for a message: 1–64 characters, unique per (room, sender).
///
/// Shared, not owned: a room keeps its last 256 keys in its state (the idempotency window)
/// and the batch writer clones that state for every batch, so a clone is a reference count,
/// not an allocation. Read back (events, snapshots) through [`ClientMsgId::parse`], like
/// every other value here.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientMsgId(Arc<str>);

validated_string_serde!(ClientMsgId);

impl ClientMsgId {
    pub const MIN: usize = 1;
    pub const MAX: usize = 64;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if !(Self::MIN..=Self::MAX).contains(&len) {
            return Err(ValueError::ClientMsgIdLength {
                min: Self::MIN,
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text of an announcement to every connected user: 1–1000 characters, not blank.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnnouncementText(String);

impl AnnouncementText {
    pub const MAX: usize = 1000;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        if s.trim().is_empty() {
            return Err(ValueError::AnnouncementBlank);
        }
        let len = char_len(s);
        if len > Self::MAX {
            return Err(ValueError::AnnouncementTooLong {
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reaction: 1–16 Unicode scalar values (an emoji with its modifiers, or a short code like
/// `:+1:`), none of them whitespace or a control character.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Emoji(String);

impl Emoji {
    pub const MIN: usize = 1;
    pub const MAX: usize = 16;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if !(Self::MIN..=Self::MAX).contains(&len)
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValueError::Emoji {
                min: Self::MIN,
                max: Self::MAX,
                got: s.chars().take(Self::MAX + 1).collect(),
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room's topic: 0–500 characters (empty clears it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoomTopic(String);

impl RoomTopic {
    pub const MAX: usize = 500;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if len > Self::MAX {
            return Err(ValueError::TopicTooLong {
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a moderator banned someone: 0–500 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BanReason(String);

impl BanReason {
    pub const MAX: usize = 500;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let len = char_len(s);
        if len > Self::MAX {
            return Err(ValueError::ReasonTooLong {
                max: Self::MAX,
                len,
            });
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
