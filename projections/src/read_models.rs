//! The read side's port: [`ReadModelStore`], the queries the API needs, implemented over
//! PostgreSQL ([`PgReadModels`]) and over the embedded store ([`MemoryReadModels`]); and
//! [`ReadModels`], the handle the server holds, chosen once at start-up.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;

use parley_domain::{MessageSeq, RoomId, UserId};

use crate::events::{EventFilter, EventPage, FilterError};
use crate::memory::MemoryReadModels;
use crate::postgres::{PgReadModels, RebuildProgress, RebuildReport};
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
    SeqOutOfRange {
        seq: MessageSeq,
        last_seq: MessageSeq,
    },
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

/// What the server may ask of its read models. Every query answers from what the projector
/// has applied so far (a few milliseconds behind the log).
#[async_trait]
pub trait ReadModelStore: Send + Sync + fmt::Debug {
    async fn user(&self, id: UserId) -> Result<Option<UserView>, ReadModelError>;

    async fn users(&self, ids: &[UserId]) -> Result<HashMap<UserId, UserView>, ReadModelError>;

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, ReadModelError>;

    async fn room(&self, id: RoomId) -> Result<Option<RoomView>, ReadModelError>;

    async fn is_member(&self, room: RoomId, user: UserId) -> Result<bool, ReadModelError>;

    async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomListItem>, ReadModelError>;

    /// The users `user` blocks, in id order.
    async fn blocked_by(&self, user: UserId) -> Result<Vec<UserId>, ReadModelError>;

    /// PUBLIC rooms, most recent activity first, `limit` after room `after`.
    async fn public_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomView>, ReadModelError>;

    /// Messages of `user`'s rooms (of `room` only, when given) matching every word of
    /// `query`, best match first. Deleted and erased text is never found.
    async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError>;

    async fn unread_count(&self, room: RoomId, user: UserId) -> Result<i64, ReadModelError>;

    async fn messages(
        &self,
        room: RoomId,
        request: PageRequest,
    ) -> Result<MessagePage, ReadModelError>;

    /// Messages of `room` with `after < seq <= up_to`, at most `limit`, in seq order.
    async fn messages_between(
        &self,
        room: RoomId,
        after: MessageSeq,
        up_to: MessageSeq,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError>;

    /// Message `seq` of `room`, if the read model holds it.
    async fn message(
        &self,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<Option<MessageView>, ReadModelError> {
        let page = self.messages_between(room, seq.prev(), seq, 1).await?;
        Ok(page.into_iter().next())
    }

    /// Messages of `room` edited, deleted or reacted to, whose newest change is after
    /// position `after`, oldest change first.
    async fn changed_messages(
        &self,
        room: RoomId,
        after: GlobalPosition,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError>;

    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        seq: MessageSeq,
    ) -> Result<(), ReadModelError>;

    async fn status(&self) -> Result<Vec<ProjectionStatus>, ReadModelError>;

    /// [`Self::status`] cheap enough for every metrics scrape (no scan of the log).
    async fn lag_estimate(&self) -> Result<Vec<ProjectionStatus>, ReadModelError>;

    /// A page of the global log (the GraphQL `events` query): events with `position >
    /// after` (default 0) matching `filter`, at most `first` (default 100, at most 1000), in
    /// position order, with secrets redacted (`password_hash` → `"[redacted]"`).
    async fn events(
        &self,
        after: Option<i64>,
        first: Option<i64>,
        filter: &EventFilter,
    ) -> Result<EventPage, ReadModelError>;

    /// The room as it was at global position `at` (`room(id, atPosition)`): its events up
    /// to `at` replayed through the `Room` aggregate. `None` if it did not exist yet.
    async fn room_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<Option<RoomAt>, ReadModelError>;

    /// A page of a room's history as it was at global position `at` (`messages(…,
    /// atPosition)`): like [`Self::messages`], over the messages with `position <= at`.
    async fn messages_at(
        &self,
        room: RoomId,
        request: PageRequest,
        at: GlobalPosition,
    ) -> Result<MessagePage, ReadModelError>;

    /// Rebuilds the named projections (all when empty) while the live ones keep serving:
    /// shadow tables, replay, atomic swap (see `postgres/rebuild.rs`). `progress` hears
    /// about every batch.
    async fn rebuild(
        &self,
        names: &[&str],
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ReadModelError>;

    /// Empties the named projections (all when empty) and resets their checkpoints; the
    /// running projector replays the log into them.
    async fn reset(&self, names: &[&str]) -> Result<(), ReadModelError>;
}

/// The read models of one store, as the server holds them. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReadModels(Arc<dyn ReadModelStore>);

impl ReadModels {
    pub fn new(store: impl ReadModelStore + 'static) -> Self {
        Self(Arc::new(store))
    }

    /// The read models over PostgreSQL.
    pub fn postgres(models: PgReadModels) -> Self {
        Self::new(models)
    }

    /// The embedded read models (shared with the projector that feeds them).
    pub fn memory(models: Arc<MemoryReadModels>) -> Self {
        Self(models)
    }
}

impl Deref for ReadModels {
    type Target = dyn ReadModelStore;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
