//! What the aggregates may ask of the outside world, as traits the domain owns.
//!
//! The server implements them over the event store's indexes; domain tests implement them
//! in memory. They answer questions an aggregate's own state cannot: facts about other
//! aggregates (does this user exist, is this username taken) and facts older than the
//! aggregate's bounded memory (was this `clientMsgId` used long ago).

use async_trait::async_trait;

use crate::ids::UserId;
use crate::values::Username;

/// A lookup could not be answered (the store was unreachable, say). The command fails and
/// changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("lookup failed: {0}")]
pub struct ServiceError(pub String);

/// Lookups the `User` aggregate needs.
#[async_trait]
pub trait UserServices: Send + Sync {
    /// Whether any user already registered this username.
    async fn username_taken(&self, username: &Username) -> Result<bool, ServiceError>;
}

/// Lookups the `Room` aggregate needs.
#[async_trait]
pub trait RoomServices: Send + Sync {
    /// Whether this user is registered.
    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError>;
}
