//! The command layer: the one way the server changes state.
//!
//! Every command goes through cqrs-es's `CqrsFramework::execute_with_metadata` over an
//! [`AggregateStore`]. Around it this layer adds what cqrs-es 0.5 leaves out:
//! - commands on one aggregate run one at a time within an instance (a striped lock), so a
//!   hot room never conflicts with itself;
//! - an `AggregateConflict` (another instance wrote first, or a unique key was taken
//!   concurrently) is retried a bounded number of times with jittered backoff;
//! - every event carries metadata: acting user, request id, server timestamp;
//! - `send_message` returns the stored message, the original one for a repeated
//!   `clientMsgId`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventEnvelope, EventStore};
use parley_domain::{
    ClientMsgId, MessageBody, MessageId, MessageSeq, Role, Room, RoomCommand, RoomError, RoomEvent,
    RoomId, User, UserCommand, UserError, UserId, ValueError,
};
use rand::Rng;
use tokio::sync::{Mutex, MutexGuard};

use crate::lookups::StoreLookups;
use crate::store::{AggregateStore, EventLog};

/// How often a conflicting command is tried before the caller gets [`CommandError::Conflict`].
pub const MAX_ATTEMPTS: u32 = 12;

/// After a conflict on an aggregate, every command on it in this instance takes the
/// aggregate's cross-instance lock first, for this long. Writers on a contended room then
/// queue in Postgres (first come, first served) instead of racing each other, so none of them
/// can be starved; an uncontended room costs nothing extra.
pub const HOT_FOR: Duration = Duration::from_secs(10);

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
    /// The store failed.
    #[error("event store error: {0}")]
    Store(String),
}

impl<E: std::error::Error> CommandError<E> {
    fn from_aggregate(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::UserError(e) => Self::Rejected(e),
            AggregateError::AggregateConflict => Self::Conflict,
            other => Self::Store(other.to_string()),
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
    /// True when this was a repeat of an earlier `clientMsgId`: nothing new was stored.
    pub repeated: bool,
}

/// Striped per-aggregate locks: bounded memory, and commands on one aggregate never overlap.
#[derive(Debug)]
struct AggregateLocks {
    stripes: Vec<Mutex<()>>,
    hasher: RandomState,
    /// Aggregates that saw a conflict recently, and until when they count as contended.
    hot: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl AggregateLocks {
    fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            hot: std::sync::Mutex::default(),
        }
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        // Plain map operations only: a poisoned lock still holds a consistent map.
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_hot(&self, aggregate_id: &str) -> bool {
        self.hot()
            .get(aggregate_id)
            .is_some_and(|until| *until > std::time::Instant::now())
    }

    fn mark_hot(&self, aggregate_id: &str) {
        let now = std::time::Instant::now();
        let mut hot = self.hot();
        if hot.len() > 10_000 {
            hot.retain(|_, until| *until > now);
        }
        hot.insert(aggregate_id.to_owned(), now + HOT_FOR);
    }

    async fn lock(&self, aggregate_id: &str) -> MutexGuard<'_, ()> {
        let index = self.hasher.hash_one(aggregate_id) as usize % self.stripes.len();
        self.stripes[index].lock().await
    }
}

/// Executes Parley's commands. Cheap to share behind an `Arc`.
pub struct CommandBus {
    log: EventLog,
    users: CqrsFramework<User, AggregateStore<User>>,
    user_store: AggregateStore<User>,
    rooms: CqrsFramework<Room, AggregateStore<Room>>,
    room_store: AggregateStore<Room>,
    locks: AggregateLocks,
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
            users: CqrsFramework::new(user_store.clone(), Vec::new(), lookups.clone()),
            rooms: CqrsFramework::new(room_store.clone(), Vec::new(), lookups),
            user_store,
            room_store,
            log,
            locks: AggregateLocks::new(1024),
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
    /// aggregate store (O(1) for a cached room): authoritative, unlike the read models.
    pub async fn room_state(&self, room: RoomId) -> Result<Option<(Room, usize)>, String> {
        let loaded = self
            .room_store
            .load_aggregate(&room.to_string())
            .await
            .map_err(|e| e.to_string())?;
        if loaded.state().id().is_none() {
            return Ok(None);
        }
        let sequence = loaded.sequence();
        Ok(Some((loaded.into_state(), sequence)))
    }

    /// Whether `user` exists and holds `role`, by the User aggregate (O(1) when cached).
    pub async fn has_role(&self, user: UserId, role: Role) -> Result<bool, String> {
        let loaded = self
            .user_store
            .load_aggregate(&user.to_string())
            .await
            .map_err(|e| e.to_string())?;
        Ok(loaded.state().has_role(role))
    }

    /// Whether `user` is a member of `room` right now (`None`: no such room).
    pub async fn membership(&self, room: RoomId, user: UserId) -> Result<Option<bool>, String> {
        Ok(self
            .room_state(room)
            .await?
            .map(|(state, _)| state.is_member(user)))
    }

    /// Registers a user whose password the caller has already hashed.
    pub async fn register_user(
        &self,
        username: &str,
        password_hash: String,
        meta: &CommandMeta,
    ) -> Result<UserId, CommandError<UserError>> {
        let user_id = UserId::new();
        let command = UserCommand::RegisterUser {
            user_id,
            username: username.to_owned(),
            password_hash,
            registered_at: Utc::now(),
        };
        execute(
            &self.users,
            &self.log,
            &self.locks,
            &user_id.to_string(),
            command,
            meta,
        )
        .await?;
        Ok(user_id)
    }

    pub async fn grant_role(
        &self,
        user: UserId,
        role: Role,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<UserError>> {
        let command = UserCommand::GrantRole { role };
        execute(
            &self.users,
            &self.log,
            &self.locks,
            &user.to_string(),
            command,
            meta,
        )
        .await
    }

    /// An announcement by `admin` to every connected user.
    pub async fn announce(
        &self,
        admin: UserId,
        text: &str,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<UserError>> {
        let command = UserCommand::Announce {
            text: text.to_owned(),
            made_at: Utc::now(),
        };
        execute(
            &self.users,
            &self.log,
            &self.locks,
            &admin.to_string(),
            command,
            meta,
        )
        .await
    }

    /// Opens a room hosted by `host`, inviting `participants`.
    pub async fn create_room(
        &self,
        host: UserId,
        name: &str,
        participants: Vec<UserId>,
        meta: &CommandMeta,
    ) -> Result<RoomId, CommandError<RoomError>> {
        let room_id = RoomId::new();
        let command = RoomCommand::CreateRoom {
            room_id,
            host,
            name: name.to_owned(),
            participants,
            created_at: Utc::now(),
        };
        execute(
            &self.rooms,
            &self.log,
            &self.locks,
            &room_id.to_string(),
            command,
            meta,
        )
        .await?;
        Ok(room_id)
    }

    pub async fn join_room(
        &self,
        room: RoomId,
        user: UserId,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<RoomError>> {
        let command = RoomCommand::JoinRoom { user };
        execute(
            &self.rooms,
            &self.log,
            &self.locks,
            &room.to_string(),
            command,
            meta,
        )
        .await
    }

    pub async fn leave_room(
        &self,
        room: RoomId,
        user: UserId,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<RoomError>> {
        let command = RoomCommand::LeaveRoom { user };
        execute(
            &self.rooms,
            &self.log,
            &self.locks,
            &room.to_string(),
            command,
            meta,
        )
        .await
    }

    /// Sends a message and returns it as stored, once it is durable. Repeating a
    /// `clientMsgId` (concurrently, much later, or after a restart) returns the original.
    pub async fn send_message(
        &self,
        room: RoomId,
        sender: UserId,
        body: &str,
        client_msg_id: &str,
        meta: &CommandMeta,
    ) -> Result<SentMessage, CommandError<RoomError>> {
        let message_id = MessageId::new();
        let sent_at = Utc::now();
        let command = RoomCommand::SendMessage {
            message_id,
            sender,
            body: body.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            sent_at,
        };
        let aggregate_id = room.to_string();
        let _serialized = self.locks.lock(&aggregate_id).await;
        retry_conflicts(
            &self.rooms,
            &self.log,
            &self.locks,
            &aggregate_id,
            command,
            meta,
        )
        .await?;

        // The aggregate accepted the command, so these parse; parse errors here would mean
        // the aggregate and this layer disagree on the rules.
        let invariant =
            |e: ValueError| CommandError::Store(format!("validated value rejected: {e}"));
        let client_msg_id = ClientMsgId::parse(client_msg_id).map_err(invariant)?;
        // Committed state is cached by the store (and only committed state is), so its
        // idempotency window says whether the message written is ours.
        let written = self.room_store.peek(&aggregate_id, |room| {
            room.recent_message(sender, &client_msg_id)
                .map(|m| (m.message_id, m.seq))
        });
        if let Some(Some((id, seq))) = written {
            if id == message_id {
                return Ok(SentMessage {
                    room_id: room,
                    message_id,
                    seq,
                    sender,
                    body: MessageBody::parse(body).map_err(invariant)?,
                    client_msg_id,
                    sent_at,
                    repeated: false,
                });
            }
        }
        // No new event: the aggregate or the store's index saw this clientMsgId before.
        let stored = self
            .log
            .find_message(room, sender, &client_msg_id)
            .await
            .map_err(|e| CommandError::Store(e.to_string()))?
            .ok_or_else(|| {
                CommandError::Store("a repeated clientMsgId has no stored message".to_owned())
            })?;
        let envelope = EventEnvelope::<Room>::try_from(stored)
            .map_err(|e| CommandError::Store(e.to_string()))?;
        sent_message(room, envelope.payload, message_id)
            .ok_or_else(|| CommandError::Store("stored event is not a message".to_owned()))
    }
}

/// The message a stored event holds; `repeated` unless it is the one this call wrote.
fn sent_message(room_id: RoomId, event: RoomEvent, ours: MessageId) -> Option<SentMessage> {
    match event {
        RoomEvent::MessageSent {
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
        } => Some(SentMessage {
            room_id,
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            repeated: message_id != ours,
        }),
        _ => None,
    }
}

/// Runs one command with the aggregate's lock held.
async fn execute<A>(
    cqrs: &CqrsFramework<A, AggregateStore<A>>,
    log: &EventLog,
    locks: &AggregateLocks,
    aggregate_id: &str,
    command: A::Command,
    meta: &CommandMeta,
) -> Result<(), CommandError<A::Error>>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    let _serialized = locks.lock(aggregate_id).await;
    retry_conflicts(cqrs, log, locks, aggregate_id, command, meta).await
}

async fn retry_conflicts<A>(
    cqrs: &CqrsFramework<A, AggregateStore<A>>,
    log: &EventLog,
    locks: &AggregateLocks,
    aggregate_id: &str,
    command: A::Command,
    meta: &CommandMeta,
) -> Result<(), CommandError<A::Error>>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    let started = std::time::Instant::now();
    let _timer = CommandTimer {
        aggregate: A::TYPE,
        started,
    };
    let mut attempt = 0;
    // The cross-instance lock, once taken; held until the command is done.
    let mut lock: Option<Option<crate::store::AggregateLock>> = None;
    if locks.is_hot(aggregate_id) {
        lock = Some(take_lock::<A>(log, aggregate_id).await);
    }
    loop {
        attempt += 1;
        match cqrs
            .execute_with_metadata(aggregate_id, command.clone(), meta.to_map())
            .await
        {
            Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                metrics::counter!("parley_command_conflicts_total", "aggregate" => A::TYPE)
                    .increment(1);
                tracing::debug!(
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    attempt,
                    "conflict; retrying"
                );
                locks.mark_hot(aggregate_id);
                match &lock {
                    None => lock = Some(take_lock::<A>(log, aggregate_id).await),
                    // Holding it, we lost to a writer that does not lock yet: go again at once.
                    Some(Some(_)) => {}
                    Some(None) => tokio::time::sleep(backoff(attempt)).await,
                }
            }
            result => return result.map_err(CommandError::from_aggregate),
        }
    }
}

/// Takes the aggregate's cross-instance lock; `None` where there is none (embedded log) or
/// when it cannot be had (then the command falls back to backoff).
async fn take_lock<A: Aggregate>(
    log: &EventLog,
    aggregate_id: &str,
) -> Option<crate::store::AggregateLock> {
    match log.lock_aggregate(A::TYPE, aggregate_id).await {
        Ok(lock) => lock,
        Err(error) => {
            tracing::warn!(%error, "cannot take the aggregate lock; backing off instead");
            None
        }
    }
}

/// Records a command's latency (retries included) when dropped.
struct CommandTimer {
    aggregate: &'static str,
    started: std::time::Instant,
}

impl Drop for CommandTimer {
    fn drop(&mut self) {
        metrics::histogram!("parley_command_duration_seconds", "aggregate" => self.aggregate)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// Full-jitter exponential backoff: up to 2 ms, 4 ms, … capped at 200 ms.
fn backoff(attempt: u32) -> Duration {
    let cap_ms = (2u64 << attempt.min(7)).min(200);
    Duration::from_micros(rand::rng().random_range(0..=cap_ms * 1000))
}
