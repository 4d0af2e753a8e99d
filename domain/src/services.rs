//! What the aggregates may ask of the outside world, as traits the domain owns.
//!
//! The server implements them over the event store's indexes; domain tests implement them
//! in memory. They answer questions an aggregate's own state cannot: facts about other
//! aggregates (does this user exist, is this username taken) and facts older than the
//! aggregate's bounded memory (was this `clientMsgId` used long ago).

use async_trait::async_trait;

use crate::ids::{MessageSeq, RoomId, UserId};
use crate::values::Username;

/// A lookup could not be answered. The command fails and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The store behind the lookup failed (unreachable, say); its own words.
    #[error("lookup failed: {0}")]
    Unavailable(String),
    /// The message is older than the room's window of recent ones and not in the store's
    /// index yet (it is a moment behind the room): a retry finds it.
    #[error("lookup failed: message {0} is not readable yet; retry")]
    NotReadableYet(MessageSeq),
}

/// Lookups the `User` aggregate needs.
#[async_trait]
pub trait UserServices: Send + Sync {
    /// Whether any user already registered this username.
    async fn username_taken(&self, username: &Username) -> Result<bool, ServiceError>;

    /// Whether this user is registered.
    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError>;
}

/// Lookups the `Room` aggregate needs.
#[async_trait]
pub trait RoomServices: Send + Sync {
    /// Whether this user is registered.
    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError>;

    /// Who sent message `seq` of `room`, for a message older than the room's own window of
    /// recent ones (a sender never changes, so a read model may answer). `None` if the
    /// store has no such message yet.
    async fn message_sender(
        &self,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<Option<MessageFacts>, ServiceError>;

    /// Whether `blocker` blocks `user` now (their `User` aggregate says so).
    async fn blocks(&self, blocker: UserId, user: UserId) -> Result<bool, ServiceError>;
}

/// What the `Room` aggregate needs to know of an old message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageFacts {
    pub sender: UserId,
}
