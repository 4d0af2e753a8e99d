//! The command layer: the one way the server changes state.
//!
//! Every command goes to the [`batch::Pipeline`] of its aggregate type, which carries out
//! the commands that arrive while a commit is in flight together and appends all their
//! events in one transaction (group commit; see [`batch`]). This module is the API over it:
//! - every event carries metadata: acting user, request id, server timestamp;
//! - each command returns what it stored, with the global position of its last event, so
//!   a caller can wait for the read models to reach it;
//! - `send_message` returns the stored message, the original one for a repeated
//!   `clientMsgId`.
//!
//! Commands by aggregate: [`users`] (register, grant a role, announce, erase) and [`rooms`]
//! (create, join, leave, send, change a message).

pub mod batch;
mod rooms;
mod users;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::EventStore;
use parley_domain::{
    ClientMsgId, MessageBody, MessageId, MessageSeq, Role, Room, RoomId, User, UserId,
};
use parley_projections::GlobalPosition;

use crate::lookups::StoreLookups;
use crate::store::{AggregateStore, EventLog};
use batch::{Batched, Committed, Pipeline};

pub use rooms::{MessageChange, Moderation};

/// Who asked for a command and in which request; stored with every event it produces.
#[derive(Clone, Debug, Default)]
pub struct CommandMeta {
    pub actor: Option<UserId>,
    pub request_id: String,
}

impl CommandMeta {
    pub fn new(actor: Option<UserId>, request_id: impl Into<String>) -> Self {
        Self {
            actor,
            request_id: request_id.into(),
        }
    }

    /// Metadata for work the system does on its own behalf (CLI, seeding).
    pub fn system(request_id: impl Into<String>) -> Self {
        Self::new(None, request_id)
    }

    fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(3);
        if let Some(actor) = self.actor {
            map.insert("actor".to_owned(), actor.to_string());
        }
        map.insert("request_id".to_owned(), self.request_id.clone());
        map.insert("timestamp".to_owned(), Utc::now().to_rfc3339());
        map
    }
}

/// Why a command did not take effect. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// A business rule refused it.
    #[error(transparent)]
    Rejected(E),
    /// It kept conflicting with concurrent writers after every retry.
    #[error("the aggregate kept changing concurrently; try again")]
    Conflict,
    /// The store failed, or the write path could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An error of the store, shared by every command of the batch it failed.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Why the store did not carry out a command. Nothing was written, except where
/// [`StoreError::Unknown`] says it cannot tell.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the event log failed.
    #[error("event store error: {0}")]
    Log(SharedError),
    /// Loading the aggregate failed.
    #[error("loading the aggregate: {0}")]
    Load(SharedError),
    /// The append failed after it was sent, and whether it was stored could not be read
    /// back either.
    #[error(
        "event store error: {error}; whether the batch was stored is unknown ({check}): \
         retry with the same clientMsgId"
    )]
    Unknown {
        error: SharedError,
        check: SharedError,
    },
    /// The aggregate type's writer has stopped (the instance is shutting down).
    #[error("the command writer has stopped")]
    WriterStopped,
    /// A rule of the write path itself was broken (a defect, logged where it was found).
    #[error("internal error: {0}")]
    Defect(&'static str),
}

impl StoreError {
    /// The log failed with `error`.
    pub fn log(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Log(Arc::new(error))
    }

    /// Loading an aggregate failed with `error` (never a business rule: loading runs none).
    pub fn load<E: std::error::Error>(error: cqrs_es::AggregateError<E>) -> Self {
        use cqrs_es::AggregateError as E;
        match error {
            E::DatabaseConnectionError(error)
            | E::DeserializationError(error)
            | E::UnexpectedError(error) => Self::Load(Arc::from(error)),
            E::AggregateConflict => Self::Defect("loading an aggregate conflicted"),
            E::UserError(_) => Self::Defect("loading an aggregate ran a business rule"),
        }
    }
}

/// A message as stored: what `sendMessage` returns.
#[derive(Clone, Debug, PartialEq)]
pub struct SentMessage {
    pub room_id: RoomId,
    pub message_id: MessageId,
    pub seq: MessageSeq,
    pub sender: UserId,
    pub body: MessageBody,
    pub client_msg_id: ClientMsgId,
    pub sent_at: DateTime<Utc>,
    /// The message's global log position.
    pub position: GlobalPosition,
    /// The message it answers.
    pub reply_to: Option<MessageSeq>,
    /// True when this was a repeat of an earlier `clientMsgId`: nothing new was stored.
    pub repeated: bool,
}

/// Executes Parley's commands. Cheap to share behind an `Arc`; needs a Tokio runtime (each
/// aggregate type has a writer task, which stops when the bus is dropped).
pub struct CommandBus {
    log: EventLog,
    users: Pipeline<User>,
    user_store: AggregateStore<User>,
    rooms: Pipeline<Room>,
    room_store: AggregateStore<Room>,
}

impl std::fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandBus")
            .field("log", &self.log.kind())
            .finish_non_exhaustive()
    }
}

impl CommandBus {
    pub fn new(log: EventLog) -> Self {
        Self::with_stores(
            log.clone(),
            AggregateStore::new(log.clone()),
            AggregateStore::new(log),
        )
    }

    /// Builds the bus over given stores (tests use this to tune snapshots and caches).
    pub fn with_stores(
        log: EventLog,
        user_store: AggregateStore<User>,
        room_store: AggregateStore<Room>,
    ) -> Self {
        let lookups = Arc::new(StoreLookups::new(log.clone()));
        Self {
            users: Pipeline::start(user_store.clone(), log.clone(), lookups.clone()),
            rooms: Pipeline::start(room_store.clone(), log.clone(), lookups),
            user_store,
            room_store,
            log,
        }
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    pub fn room_store(&self) -> &AggregateStore<Room> {
        &self.room_store
    }

    pub fn user_store(&self) -> &AggregateStore<User> {
        &self.user_store
    }

    /// The room's current state and the sequence of its last event, read through the
    /// aggregate store (one read of newer events for a cached room): authoritative, unlike
    /// the read models.
    pub async fn room_state(&self, room: RoomId) -> Result<Option<(Room, usize)>, StoreError> {
        let loaded = self
            .room_store
            .load_aggregate(&room.to_string())
            .await
            .map_err(StoreError::load)?;
        if loaded.state().id().is_none() {
            return Ok(None);
        }
        let sequence = loaded.sequence();
        Ok(Some((loaded.into_state(), sequence)))
    }

    /// Whether `user` exists and holds `role`, by the User aggregate (O(1) when cached).
    pub async fn has_role(&self, user: UserId, role: Role) -> Result<bool, StoreError> {
        let loaded = self
            .user_store
            .load_aggregate(&user.to_string())
            .await
            .map_err(StoreError::load)?;
        Ok(loaded.state().has_role(role))
    }
}

/// Runs one command through its aggregate type's pipeline, timing it.
async fn execute<A: Batched>(
    pipeline: &Pipeline<A>,
    aggregate_id: String,
    command: A::Command,
    meta: &CommandMeta,
) -> Result<Committed<A>, CommandError<A::Error>> {
    let started = std::time::Instant::now();
    let result = pipeline.execute(aggregate_id, command, meta.to_map()).await;
    metrics::histogram!("parley_command_duration_seconds", "aggregate" => A::TYPE)
        .record(started.elapsed().as_secs_f64());
    result
}
