//! The write side's storage: the event log as a port ([`LogStore`], implemented by
//! [`PostgresLog`] and [`MemoryLog`]; the server holds an [`EventLog`], and the store it was
//! started with decides its read side, [`ReadSide`]) and the [`AggregateStore`] that loads
//! aggregates from it in O(1) of their history.
//!
//! cqrs-es 0.5's own snapshot and aggregate stores apply every new event twice (its
//! `EventSink` has already applied them), and its plain event store replays a whole stream on
//! every command. [`AggregateStore`] replaces all three: a per-instance cache of aggregates
//! validated by sequence (only events newer than the cached sequence are read) and
//! snapshots that hold the state exactly as the aggregate computed it.

mod aggregate_store;
mod memory;
mod postgres;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use parley_domain::{ClientMsgId, MessageSeq, RoomId, UserId, Username};
use parley_projections::memory::EmbeddedLog;
use parley_projections::{GlobalPosition, LogEvent};
use serde_json::Value;

pub use aggregate_store::{AggregateStore, LoadedAggregate, SNAPSHOT_EVERY};
pub use memory::MemoryLog;
pub use postgres::PostgresLog;

/// Where events live: the write side's port, implemented by [`PostgresLog`] and
/// [`MemoryLog`] (chosen once at start-up; see [`EventLog::read_side`]). [`EventLog`] is the
/// handle the server holds; this is what each store provides.
#[async_trait]
pub(crate) trait LogStore: Send + Sync + fmt::Debug {
    /// The backend's name, for logs and metrics.
    fn kind(&self) -> &'static str;

    /// What the read side is built over (the same store).
    fn read_side(&self) -> ReadSide;

    /// Events of one aggregate with `sequence > after`, in sequence order.
    async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError>;

    /// See [`EventLog::append_batch`] (the batch is not empty).
    async fn append_batch(&self, events: &[SerializedEvent])
        -> Result<GlobalPosition, AppendError>;

    /// See [`EventLog::write_turn`].
    async fn write_turn(&self) -> Result<WriteTurn, AppendError>;

    /// See [`EventLog::stored_position`].
    async fn stored_position(
        &self,
        event: &SerializedEvent,
    ) -> Result<Option<GlobalPosition>, PersistenceError>;

    async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, PersistenceError>;

    /// Saves a snapshot unless a newer one is already stored.
    async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) -> Result<(), PersistenceError>;

    async fn username_taken(&self, username: &Username) -> Result<bool, PersistenceError>;

    async fn user_exists(&self, user: &str) -> Result<bool, PersistenceError>;

    async fn find_message(
        &self,
        key: &MessageKey,
    ) -> Result<Option<(SerializedEvent, GlobalPosition)>, PersistenceError>;

    /// The sender's id of message `seq` of `room`, if stored with its text.
    async fn message_sender(
        &self,
        room: &str,
        seq: MessageSeq,
    ) -> Result<Option<String>, PersistenceError>;

    /// See [`EventLog::room_events`].
    async fn room_events(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<LogEvent>, PersistenceError>;

    /// See [`EventLog::room_sequence_at`].
    async fn room_sequence_at(
        &self,
        room: &str,
        position: GlobalPosition,
    ) -> Result<i64, PersistenceError>;

    async fn count(&self) -> Result<i64, PersistenceError>;

    async fn ping(&self) -> Result<(), PersistenceError>;
}

/// What an instance's read side is built over: the store its log is in.
pub enum ReadSide {
    /// The read models live in the log's PostgreSQL database; the projector reads the log
    /// there.
    Postgres(sqlx::PgPool),
    /// The embedded read models, fed from the embedded log.
    Embedded(Arc<dyn EmbeddedLog>),
}

impl fmt::Debug for ReadSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Postgres(_) => "ReadSide::Postgres",
            Self::Embedded(_) => "ReadSide::Embedded",
        })
    }
}

/// Where events live: the server's handle on its [`LogStore`]. Cheap to clone: clones share
/// the store.
#[derive(Clone, Debug)]
pub struct EventLog(Arc<dyn LogStore>);

/// A batch must hold at least one event (its first position is the answer).
fn refuse_empty(events: &[SerializedEvent]) -> Result<(), AppendError> {
    if events.is_empty() {
        return Err(AppendError::Store(PersistenceError::UnknownError(
            "an empty batch has no position".into(),
        )));
    }
    Ok(())
}

/// A store's turn to write alone (see [`EventLog::write_turn`]).
#[async_trait]
pub(crate) trait Turn: Send + fmt::Debug {
    /// Appends the (non-empty) batch within the turn, and ends it.
    async fn append_batch(
        self: Box<Self>,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError>;
}

/// See [`EventLog::write_turn`].
#[derive(Debug)]
pub struct WriteTurn(Box<dyn Turn>);

impl WriteTurn {
    fn new(turn: impl Turn + 'static) -> Self {
        Self(Box::new(turn))
    }

    /// Appends like [`EventLog::append_batch`], within the turn, and ends it.
    pub async fn append_batch(
        self,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        refuse_empty(events)?;
        self.0.append_batch(events).await
    }
}

/// Why a batch was not appended. Nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// These events (indexes into the batch) collide with stored ones or with earlier ones
    /// of the batch: a sequence already taken (another writer was first) or a unique key
    /// (username, clientMsgId) already used.
    #[error("{} events of the batch collide with stored ones", .0.len())]
    Conflict(Vec<usize>),
    /// The store could not be reached, so the batch was never sent.
    #[error(transparent)]
    NotSent(PersistenceError),
    /// The store failed; the batch may or may not have been written.
    #[error(transparent)]
    Store(#[from] PersistenceError),
}

/// An aggregate's saved state and the sequence of the last event folded into it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub state: Value,
    pub last_sequence: usize,
}

impl EventLog {
    /// The log in PostgreSQL.
    pub fn postgres(log: PostgresLog) -> Self {
        Self(Arc::new(log))
    }

    /// The embedded log.
    pub fn memory() -> Self {
        Self(Arc::new(MemoryLog::default()))
    }

    /// What the read side is built over (the same store): the one choice of backend the
    /// server makes at start-up.
    pub fn read_side(&self) -> ReadSide {
        self.0.read_side()
    }

    /// Events of one aggregate with `sequence > after`, in sequence order.
    pub async fn events_after<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.0.events_after(A::TYPE, aggregate_id, after).await
    }

    /// Appends a batch of events (of any aggregates) atomically, in one transaction: every
    /// event at positions `first ..` in the given order, or none of them and
    /// [`AppendError::Conflict`] naming the events that collide.
    pub async fn append_batch(
        &self,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        refuse_empty(events)?;
        self.0.append_batch(events).await
    }

    /// A turn to write alone: waits for the appends in flight (of every instance) and
    /// holds back new ones until [`WriteTurn::append_batch`] commits or the turn is dropped.
    /// For a writer that keeps losing races to another instance: with the turn, what it
    /// reads is the latest and its append cannot be overtaken.
    pub async fn write_turn(&self) -> Result<WriteTurn, AppendError> {
        self.0.write_turn().await
    }

    /// The position of `event` if it is stored exactly as given: resolves an append whose
    /// outcome a lost connection left unknown (a batch commits whole, so its first event
    /// tells, and its position is the batch's first).
    pub async fn stored_position(
        &self,
        event: &SerializedEvent,
    ) -> Result<Option<GlobalPosition>, PersistenceError> {
        self.0.stored_position(event).await
    }

    pub async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, PersistenceError> {
        self.0.snapshot(aggregate_type, aggregate_id).await
    }

    /// Saves a snapshot unless a newer one is already stored.
    pub async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) -> Result<(), PersistenceError> {
        self.0
            .save_snapshot(aggregate_type, aggregate_id, snapshot)
            .await
    }

    pub async fn username_taken(&self, username: &Username) -> Result<bool, PersistenceError> {
        self.0.username_taken(username).await
    }

    pub async fn user_exists(&self, user: UserId) -> Result<bool, PersistenceError> {
        self.0.user_exists(&user.to_string()).await
    }

    /// The stored `MessageSent` event `sender` sent to `room` with `client_msg_id`, if any,
    /// with its position.
    pub async fn find_message(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<(SerializedEvent, GlobalPosition)>, PersistenceError> {
        let key = MessageKey::new(room, sender, client_msg_id);
        self.0.find_message(&key).await
    }

    /// Who sent message `seq` of `room`, if the log holds it (and its text is not erased).
    pub async fn message_sender(
        &self,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<Option<UserId>, PersistenceError> {
        let sender = self.0.message_sender(&room.to_string(), seq).await?;
        Ok(sender.and_then(|s| UserId::parse(&s).ok()))
    }

    /// Positioned events of one room with `after < sequence <= up_to`, in sequence order:
    /// what a live subscriber re-reads to fill a gap it detected.
    pub async fn room_events(
        &self,
        room: RoomId,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<LogEvent>, PersistenceError> {
        self.0.room_events(&room.to_string(), after, up_to).await
    }

    /// The sequence of `room`'s newest event at or before global `position` (0 if none):
    /// where a live feed that starts from what the read models held at `position` begins.
    pub async fn room_sequence_at(
        &self,
        room: RoomId,
        position: GlobalPosition,
    ) -> Result<i64, PersistenceError> {
        self.0.room_sequence_at(&room.to_string(), position).await
    }

    /// How many events the log holds.
    pub async fn count(&self) -> Result<i64, PersistenceError> {
        self.0.count().await
    }

    /// Whether the log answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), PersistenceError> {
        self.0.ping().await
    }

    /// The backend's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }
}

/// The unique key of a message: (room, sender, clientMsgId), as the log indexes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct MessageKey {
    room: String,
    sender: String,
    client_msg_id: String,
}

impl MessageKey {
    fn new(room: RoomId, sender: UserId, client_msg_id: &ClientMsgId) -> Self {
        Self {
            room: room.to_string(),
            sender: sender.to_string(),
            client_msg_id: client_msg_id.as_str().to_owned(),
        }
    }

    /// The key of a stored event, if it is a `MessageSent`. Reads the same JSON paths as the
    /// Postgres index `events_message_client_msg_id`.
    fn of_event(event: &SerializedEvent) -> Option<Self> {
        if event.aggregate_type != "Room" || event.event_type != "MessageSent" {
            return None;
        }
        let body = event.payload.get("MessageSent")?;
        Some(Self {
            room: event.aggregate_id.clone(),
            sender: body.get("sender")?.as_str()?.to_owned(),
            client_msg_id: body.get("client_msg_id")?.as_str()?.to_owned(),
        })
    }
}

/// The username a stored event registers, if it is a `UserRegistered`. Reads the same JSON
/// path as the Postgres index `events_username`.
fn registered_username(event: &SerializedEvent) -> Option<&str> {
    if event.aggregate_type != "User" || event.event_type != "UserRegistered" {
        return None;
    }
    event
        .payload
        .get("UserRegistered")?
        .get("username")?
        .as_str()
}
