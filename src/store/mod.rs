//! The write side's storage: an event log (Postgres or embedded memory) and the
//! [`AggregateStore`] that loads aggregates from it in O(1) of their history.
//!
//! cqrs-es 0.5's own snapshot and aggregate stores apply every new event twice (its
//! `EventSink` has already applied them), and its plain event store replays a whole stream on
//! every command. [`AggregateStore`] replaces all three: a per-instance cache of aggregates
//! validated by sequence (only events newer than the cached sequence are read) and
//! snapshots that hold the state exactly as the aggregate computed it.

mod aggregate_store;
mod memory;
mod postgres;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use parley_domain::{ClientMsgId, RoomId, UserId, Username};
use parley_projections::LogEvent;
use serde_json::Value;

pub use aggregate_store::{AggregateStore, LoadedAggregate, SNAPSHOT_EVERY};
pub use memory::MemoryLog;
pub use postgres::PostgresLog;

/// Where events live. Cheap to clone: both variants share their state.
#[derive(Clone, Debug)]
pub enum EventLog {
    /// PostgreSQL through postgres-es (production, many instances).
    Postgres(PostgresLog),
    /// The embedded in-memory log (one process; data is lost on exit).
    Memory(MemoryLog),
}

/// A batch must hold at least one event (its first position is the answer).
fn refuse_empty(events: &[SerializedEvent]) -> Result<(), AppendError> {
    if events.is_empty() {
        return Err(AppendError::Store(PersistenceError::UnknownError(
            "an empty batch has no position".into(),
        )));
    }
    Ok(())
}

/// See [`EventLog::write_turn`].
#[derive(Debug)]
pub enum WriteTurn {
    Postgres(postgres::PostgresTurn),
    /// One process, appends under one lock: nothing to hold.
    Memory(MemoryLog),
}

impl WriteTurn {
    /// Appends like [`EventLog::append_batch`], within the turn, and ends it.
    pub async fn append_batch(self, events: &[SerializedEvent]) -> Result<i64, AppendError> {
        refuse_empty(events)?;
        match self {
            Self::Postgres(turn) => turn.append_batch(events).await,
            Self::Memory(log) => log.append_batch(events),
        }
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
    /// The embedded log.
    pub fn memory() -> Self {
        Self::Memory(MemoryLog::default())
    }

    /// Events of one aggregate with `sequence > after`, in sequence order.
    pub async fn events_after<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match self {
            Self::Postgres(log) => log.events_after::<A>(aggregate_id, after).await,
            Self::Memory(log) => Ok(log.events_after(A::TYPE, aggregate_id, after)),
        }
    }

    /// Appends a batch of events (of any aggregates) atomically, in one transaction: every
    /// event at positions `first ..` in the given order, or none of them and
    /// [`AppendError::Conflict`] naming the events that collide.
    pub async fn append_batch(&self, events: &[SerializedEvent]) -> Result<i64, AppendError> {
        refuse_empty(events)?;
        match self {
            Self::Postgres(log) => log.append_batch(events).await,
            Self::Memory(log) => log.append_batch(events),
        }
    }

    /// A turn to write alone: waits for the appends in flight (of every instance) and
    /// holds back new ones until [`WriteTurn::append_batch`] commits or the turn is dropped.
    /// For a writer that keeps losing races to another instance: with the turn, what it
    /// reads is the latest and its append cannot be overtaken.
    pub async fn write_turn(&self) -> Result<WriteTurn, AppendError> {
        match self {
            Self::Postgres(log) => Ok(WriteTurn::Postgres(log.write_turn().await?)),
            Self::Memory(log) => Ok(WriteTurn::Memory(log.clone())),
        }
    }

    /// The position of `event` if it is stored exactly as given: resolves an append whose
    /// outcome a lost connection left unknown (a batch commits whole, so its first event
    /// tells, and its position is the batch's first).
    pub async fn stored_position(
        &self,
        event: &SerializedEvent,
    ) -> Result<Option<i64>, PersistenceError> {
        match self {
            Self::Postgres(log) => log.stored_position(event).await,
            Self::Memory(log) => Ok(log.stored_position(event)),
        }
    }

    pub async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, PersistenceError> {
        match self {
            Self::Postgres(log) => log.snapshot(aggregate_type, aggregate_id).await,
            Self::Memory(log) => Ok(log.snapshot(aggregate_type, aggregate_id)),
        }
    }

    /// Saves a snapshot unless a newer one is already stored.
    pub async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(log) => {
                log.save_snapshot(aggregate_type, aggregate_id, snapshot)
                    .await
            }
            Self::Memory(log) => {
                log.save_snapshot(aggregate_type, aggregate_id, snapshot);
                Ok(())
            }
        }
    }

    pub async fn username_taken(&self, username: &Username) -> Result<bool, PersistenceError> {
        match self {
            Self::Postgres(log) => log.username_taken(username).await,
            Self::Memory(log) => Ok(log.username_taken(username)),
        }
    }

    pub async fn user_exists(&self, user: UserId) -> Result<bool, PersistenceError> {
        match self {
            Self::Postgres(log) => log.user_exists(&user.to_string()).await,
            Self::Memory(log) => Ok(log.user_exists(&user.to_string())),
        }
    }

    /// The stored `MessageSent` event `sender` sent to `room` with `client_msg_id`, if any,
    /// with its position.
    pub async fn find_message(
        &self,
        room: RoomId,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<(SerializedEvent, i64)>, PersistenceError> {
        let key = MessageKey::new(room, sender, client_msg_id);
        match self {
            Self::Postgres(log) => log.find_message(&key).await,
            Self::Memory(log) => Ok(log.find_message(&key)),
        }
    }

    /// Who sent message `seq` of `room`, if the log holds it (and its text is not erased).
    pub async fn message_sender(
        &self,
        room: RoomId,
        seq: u64,
    ) -> Result<Option<UserId>, PersistenceError> {
        let sender = match self {
            Self::Postgres(log) => log.message_sender(&room.to_string(), seq).await?,
            Self::Memory(log) => log.message_sender(&room.to_string(), seq),
        };
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
        match self {
            Self::Postgres(log) => log.room_events(&room.to_string(), after, up_to).await,
            Self::Memory(log) => Ok(log.room_events(&room.to_string(), after, up_to)),
        }
    }

    /// The sequence of `room`'s newest event at or before global `position` (0 if none):
    /// where a live feed that starts from what the read models held at `position` begins.
    pub async fn room_sequence_at(
        &self,
        room: RoomId,
        position: i64,
    ) -> Result<i64, PersistenceError> {
        match self {
            Self::Postgres(log) => log.room_sequence_at(&room.to_string(), position).await,
            Self::Memory(log) => Ok(log.room_sequence_at(&room.to_string(), position)),
        }
    }

    /// How many events the log holds.
    pub async fn count(&self) -> Result<i64, PersistenceError> {
        match self {
            Self::Postgres(log) => log.count().await,
            Self::Memory(log) => Ok(log.count()),
        }
    }

    /// Whether the log answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), PersistenceError> {
        match self {
            Self::Postgres(log) => log.ping().await,
            Self::Memory(_) => Ok(()),
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Memory(_) => "memory",
        }
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
