//! The domain's service traits, answered from the event store's unique-key indexes.

use async_trait::async_trait;
use parley_domain::{
    MessageFacts, MessageSeq, RoomId, RoomServices, ServiceError, User, UserEvent, UserId,
    UserServices, Username,
};

use crate::store::EventLog;

/// Answers aggregate lookups from the event log. The indexes behind them are the same unique
/// indexes that make the store refuse a duplicate, so an answer can be stale only in the
/// direction the store then catches.
#[derive(Clone, Debug)]
pub struct StoreLookups {
    log: EventLog,
}

impl StoreLookups {
    pub fn new(log: EventLog) -> Self {
        Self { log }
    }
}

fn service_error(error: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(error.to_string())
}

#[async_trait]
impl UserServices for StoreLookups {
    async fn username_taken(&self, username: &Username) -> Result<bool, ServiceError> {
        self.log
            .username_taken(username)
            .await
            .map_err(service_error)
    }

    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError> {
        self.log.user_exists(user).await.map_err(service_error)
    }
}

#[async_trait]
impl RoomServices for StoreLookups {
    async fn user_exists(&self, user: UserId) -> Result<bool, ServiceError> {
        self.log.user_exists(user).await.map_err(service_error)
    }

    async fn message_sender(
        &self,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<Option<MessageFacts>, ServiceError> {
        let sender = self.log.message_sender(room, seq).await;
        Ok(sender
            .map_err(service_error)?
            .map(|sender| MessageFacts { sender }))
    }

    /// From the blocker's own events (a user has few), so never behind a block they made.
    async fn blocks(&self, blocker: UserId, user: UserId) -> Result<bool, ServiceError> {
        let events = self
            .log
            .events_after::<User>(&blocker.to_string(), 0)
            .await
            .map_err(service_error)?;
        let mut blocked = false;
        for event in events {
            match serde_json::from_value::<UserEvent>(event.payload) {
                Ok(UserEvent::UserBlocked { user_id }) if user_id == user => blocked = true,
                Ok(UserEvent::UserUnblocked { user_id }) if user_id == user => blocked = false,
                _ => {}
            }
        }
        Ok(blocked)
    }
}
