//! [`ReadModels`]: the queries the API needs, over Postgres or the embedded store.

use std::collections::HashMap;
use std::sync::Arc;

use parley_domain::{RoomId, UserId};

use crate::events::{EventFilter, EventPage, FilterError};
use crate::memory::MemoryReadModels;
use crate::postgres::{PgReadModels, RebuildConfig, RebuildProgress, RebuildReport};
use crate::time_travel::RoomAt;
use crate::views::{
    Credentials, MessagePage, MessageView, PageError, PageRequest, RoomListItem, RoomView, UserView,
};
use crate::{GlobalPosition, ProjectionStatus};

/// Why a read-model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    #[error(transparent)]
    Page(#[from] PageError),
    #[error("unknown room")]
    UnknownRoom,
    #[error("seq {seq} is beyond the room's last message ({last_seq})")]
    SeqOutOfRange { seq: i64, last_seq: i64 },
    #[error("unknown projection {0:?} (known: users, rooms, messages)")]
    UnknownProjection(String),
    /// A filter, position or page size the caller got wrong.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Another rebuild holds the rebuild lock.
    #[error("another rebuild is running; try again when it has finished")]
    RebuildRunning,
    /// Embedded read models that no projector attached a log to.
    #[error("these read models are not attached to an event log")]
    NoEventLog,
    #[error("read model database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The read models of one store. Cheap to clone.
#[derive(Clone, Debug)]
pub enum ReadModels {
    Postgres(PgReadModels),
    Memory(Arc<MemoryReadModels>),
}

macro_rules! dispatch {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            ReadModels::Postgres(models) => models.$method($($arg),*).await,
            ReadModels::Memory(models) => models.$method($($arg),*),
        }
    };
}

impl ReadModels {
    pub async fn user(&self, id: UserId) -> Result<Option<UserView>, ReadModelError> {
        dispatch!(self, user(id))
    }

    pub async fn users(&self, ids: &[UserId]) -> Result<HashMap<UserId, UserView>, ReadModelError> {
        dispatch!(self, users(ids))
    }

    pub async fn credentials(&self, username: &str) -> Result<Option<Credentials>, ReadModelError> {
        dispatch!(self, credentials(username))
    }

    pub async fn room(&self, id: RoomId) -> Result<Option<RoomView>, ReadModelError> {
        dispatch!(self, room(id))
    }

    pub async fn is_member(&self, room: RoomId, user: UserId) -> Result<bool, ReadModelError> {
        dispatch!(self, is_member(room, user))
    }

    pub async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomListItem>, ReadModelError> {
        dispatch!(self, rooms_of(user))
    }

    /// The users `user` blocks, in id order.
    pub async fn blocked_by(&self, user: UserId) -> Result<Vec<UserId>, ReadModelError> {
        dispatch!(self, blocked_by(user))
    }

    /// PUBLIC rooms, most recent activity first, `limit` after room `after`.
    pub async fn public_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomView>, ReadModelError> {
        dispatch!(self, public_rooms(after, limit))
    }

    /// Messages of `user`'s rooms (of `room` only, when given) matching every word of
    /// `query`, best match first. Deleted and erased text is never found.
    pub async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        dispatch!(self, search(user, query, room, limit))
    }

    pub async fn unread_count(&self, room: RoomId, user: UserId) -> Result<i64, ReadModelError> {
        dispatch!(self, unread_count(room, user))
    }

    pub async fn messages(
        &self,
        room: RoomId,
        request: PageRequest,
    ) -> Result<MessagePage, ReadModelError> {
        dispatch!(self, messages(room, request))
    }

    pub async fn messages_between(
        &self,
        room: RoomId,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        dispatch!(self, messages_between(room, after, up_to, limit))
    }

    /// Message `seq` of `room`, if the read model holds it.
    pub async fn message(
        &self,
        room: RoomId,
        seq: i64,
    ) -> Result<Option<MessageView>, ReadModelError> {
        let page = self.messages_between(room, seq - 1, seq, 1).await?;
        Ok(page.into_iter().next())
    }

    /// Messages of `room` edited, deleted or reacted to, whose newest change is after
    /// position `after`, oldest change first.
    pub async fn changed_messages(
        &self,
        room: RoomId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        dispatch!(self, changed_messages(room, after, limit))
    }

    pub async fn message_by_client_id(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<MessageView>, ReadModelError> {
        dispatch!(self, message_by_client_id(room, sender, client_msg_id))
    }

    pub async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        seq: i64,
    ) -> Result<(), ReadModelError> {
        dispatch!(self, mark_read(room, user, seq))
    }

    pub async fn status(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        dispatch!(self, status())
    }

    /// [`Self::status`] cheap enough for every metrics scrape (no scan of the log).
    pub async fn lag_estimate(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        match self {
            ReadModels::Postgres(models) => models.lag_estimate().await,
            ReadModels::Memory(models) => models.status(),
        }
    }

    /// A page of the global log (the GraphQL `events` query): events with `position >
    /// after` (default 0) matching `filter`, at most `first` (default 100, at most 1000), in
    /// position order, with secrets redacted (`password_hash` → `"[redacted]"`).
    pub async fn events(
        &self,
        after: Option<i64>,
        first: Option<i64>,
        filter: &EventFilter,
    ) -> Result<EventPage, ReadModelError> {
        match self {
            Self::Postgres(models) => models.log().events(after, first, filter).await,
            Self::Memory(models) => models.events(after, first, filter),
        }
    }

    /// The room as it was at global position `at` (`room(id, atPosition)`): its events up
    /// to `at` replayed through the `Room` aggregate. `None` if it did not exist yet.
    pub async fn room_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<Option<RoomAt>, ReadModelError> {
        match self {
            Self::Postgres(models) => models.log().room_at(room, at).await,
            Self::Memory(models) => models.room_at(room, at),
        }
    }

    /// A page of a room's history as it was at global position `at` (`messages(…,
    /// atPosition)`): like [`Self::messages`], over the messages with `position <= at`.
    pub async fn messages_at(
        &self,
        room: RoomId,
        request: PageRequest,
        at: GlobalPosition,
    ) -> Result<MessagePage, ReadModelError> {
        dispatch!(self, messages_at(room, request, at))
    }

    /// Rebuilds the named projections (all when empty) while the live ones keep serving:
    /// shadow tables, replay, atomic swap (see `postgres/rebuild.rs`). `progress` hears
    /// about every batch. The embedded store simply resets (see
    /// [`MemoryReadModels::rebuild`]) and reports no events.
    pub async fn rebuild(
        &self,
        names: &[&str],
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ReadModelError> {
        match self {
            Self::Postgres(models) => {
                models
                    .rebuild(names, &RebuildConfig::default(), progress)
                    .await
            }
            Self::Memory(models) => {
                let started = std::time::Instant::now();
                models.rebuild(names)?;
                Ok(RebuildReport {
                    projections: Vec::new(),
                    events: 0,
                    elapsed: started.elapsed(),
                })
            }
        }
    }

    /// Empties the named projections (all when empty) and resets their checkpoints; the
    /// running projector replays the log into them.
    pub async fn reset(&self, names: &[&str]) -> Result<(), ReadModelError> {
        dispatch!(self, reset(names))
    }
}
