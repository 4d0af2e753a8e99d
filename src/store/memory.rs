//! The embedded event log: everything in process memory, lost on exit.
//!
//! It keeps the same contract as the Postgres log — per-aggregate sequences, the unique
//! username and clientMsgId keys, one global insertion order — so the same command layer,
//! projector and API tests run against it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use parley_domain::{MessageSeq, Username};
use parley_projections::memory::EmbeddedLog;
use parley_projections::{GlobalPosition, LogEvent};
use tokio::sync::watch;

use parley_projections::erasure;

use super::{
    registered_username, AppendError, LogStore, MessageKey, ReadSide, Snapshot, Turn, WriteTurn,
};

/// One event in the global log, with what Postgres adds on insert.
#[derive(Clone, Debug)]
pub struct MemoryEntry {
    /// Insertion id, 1, 2, 3… (commit order, since appends are serialized here).
    pub id: u64,
    pub event: SerializedEvent,
    pub recorded_at: DateTime<Utc>,
}

impl MemoryEntry {
    /// Its global position: the insertion id.
    pub fn position(&self) -> GlobalPosition {
        GlobalPosition(i64::try_from(self.id).unwrap_or(i64::MAX))
    }
}

#[derive(Clone, Debug)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    /// The newest insertion id, for the embedded projector to wait on.
    head: Arc<watch::Sender<GlobalPosition>>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            head: Arc::new(watch::channel(GlobalPosition::START).0),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    log: Vec<MemoryEntry>,
    /// Per (aggregate type, aggregate id): indexes into `log`, in sequence order.
    streams: HashMap<(String, String), Vec<usize>>,
    usernames: HashSet<String>,
    messages: HashMap<MessageKey, usize>,
    /// (room, seq) of each `MessageSent`: its sender.
    senders: HashMap<(String, MessageSeq), String>,
    snapshots: HashMap<(String, String), Snapshot>,
}

impl Inner {
    /// Blanks, in place, the text of every event `erases` covers (the embedded log keeps no
    /// text apart); an erased username is free again, as in the Postgres log.
    fn erase(&mut self, erases: erasure::Erases<'_>) {
        let candidates: Vec<usize> = match erases {
            erasure::Erases::Message { room, .. } => self
                .streams
                .get(&("Room".to_owned(), room.to_owned()))
                .cloned()
                .unwrap_or_default(),
            erasure::Erases::User(_) => (0..self.log.len()).collect(),
        };
        for index in candidates {
            let event = &mut self.log[index].event;
            if !erases.covers(event) {
                continue;
            }
            if let Some(name) = registered_username(event) {
                let name = name.to_owned();
                self.usernames.remove(&name);
            }
            erasure::take_text(&event.aggregate_type, &event.event_type, &mut event.payload);
        }
    }
}

impl MemoryLog {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below validates first and then only pushes, so a panic cannot
        // leave the log half-written; a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Vec<SerializedEvent> {
        let inner = self.lock();
        let key = (aggregate_type.to_owned(), aggregate_id.to_owned());
        let Some(stream) = inner.streams.get(&key) else {
            return Vec::new();
        };
        // Sequences are contiguous from 1, so sequence `after + 1` sits at index `after`.
        stream
            .iter()
            .skip(after)
            .map(|&i| inner.log[i].event.clone())
            .collect()
    }

    /// Appends a batch atomically: either every event, at positions `first ..` in the
    /// given order, or none and the indexes of the events that collide (a sequence already
    /// taken, or a username or clientMsgId already used, also by an earlier event of the
    /// batch), as the Postgres log reports them.
    pub(super) fn append_batch(
        &self,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        let mut inner = self.lock();
        let mut next_sequence: HashMap<(String, String), usize> = HashMap::new();
        let mut new_usernames = HashSet::new();
        let mut new_messages = HashSet::new();
        let mut colliding = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let expected = next_sequence
                .entry(key.clone())
                .or_insert_with(|| inner.streams.get(&key).map_or(0, Vec::len) + 1);
            let mut collides = event.sequence != *expected;
            if !collides {
                *expected += 1;
            }
            if let Some(name) = registered_username(event) {
                collides |=
                    inner.usernames.contains(name) || !new_usernames.insert(name.to_owned());
            }
            if let Some(message) = MessageKey::of_event(event) {
                collides |= inner.messages.contains_key(&message) || !new_messages.insert(message);
            }
            if collides {
                colliding.push(index);
            }
        }
        if !colliding.is_empty() {
            return Err(AppendError::Conflict(colliding));
        }
        let recorded_at = Utc::now();
        let first = GlobalPosition(inner.log.len() as i64 + 1);
        for event in events {
            let index = inner.log.len();
            if let Some(name) = registered_username(event) {
                inner.usernames.insert(name.to_owned());
            }
            if let Some(message) = MessageKey::of_event(event) {
                inner.messages.insert(message, index);
                let body = &event.payload["MessageSent"];
                if let (Some(seq), Some(sender)) = (body["seq"].as_u64(), body["sender"].as_str()) {
                    let sender = sender.to_owned();
                    inner
                        .senders
                        .insert((event.aggregate_id.clone(), MessageSeq(seq)), sender);
                }
            }
            inner
                .streams
                .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
                .or_default()
                .push(index);
            inner.log.push(MemoryEntry {
                id: index as u64 + 1,
                event: event.clone(),
                recorded_at,
            });
            if let Some(erases) = erasure::Erases::of(event) {
                inner.erase(erases);
            }
        }
        let head = GlobalPosition(inner.log.len() as i64);
        drop(inner);
        self.head.send_replace(head);
        Ok(first)
    }

    pub(super) fn stored_position(&self, event: &SerializedEvent) -> Option<GlobalPosition> {
        let inner = self.lock();
        let stream = inner
            .streams
            .get(&(event.aggregate_type.clone(), event.aggregate_id.clone()))?;
        let &index = stream.get(event.sequence.checked_sub(1)?)?;
        let stored = &inner.log[index];
        (stored.event.payload == event.payload && stored.event.metadata == event.metadata)
            .then_some(stored.position())
    }

    pub(super) fn snapshot(&self, aggregate_type: &str, aggregate_id: &str) -> Option<Snapshot> {
        self.lock()
            .snapshots
            .get(&(aggregate_type.to_owned(), aggregate_id.to_owned()))
            .cloned()
    }

    pub(super) fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) {
        let mut inner = self.lock();
        let slot = inner
            .snapshots
            .entry((aggregate_type.to_owned(), aggregate_id.to_owned()));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut old) => {
                if old.get().last_sequence < snapshot.last_sequence {
                    old.insert(snapshot);
                }
            }
            std::collections::hash_map::Entry::Vacant(empty) => {
                empty.insert(snapshot);
            }
        }
    }

    pub(super) fn username_taken(&self, username: &Username) -> bool {
        self.lock().usernames.contains(username.as_str())
    }

    /// Whether this user registered and was not erased since.
    pub(super) fn user_exists(&self, user: &str) -> bool {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(&("User".to_owned(), user.to_owned())) else {
            return false;
        };
        !stream
            .iter()
            .any(|&index| inner.log[index].event.event_type == "UserErased")
    }

    pub(super) fn find_message(
        &self,
        key: &MessageKey,
    ) -> Option<(SerializedEvent, GlobalPosition)> {
        let inner = self.lock();
        inner
            .messages
            .get(key)
            .map(|&i| (inner.log[i].event.clone(), inner.log[i].position()))
    }

    pub(super) fn message_sender(&self, room: &str, seq: MessageSeq) -> Option<String> {
        self.lock().senders.get(&(room.to_owned(), seq)).cloned()
    }

    pub(super) fn room_events(&self, room: &str, after: i64, up_to: i64) -> Vec<LogEvent> {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(&("Room".to_owned(), room.to_owned())) else {
            return Vec::new();
        };
        let from = after.max(0) as usize;
        let to = (up_to.max(0) as usize).min(stream.len());
        stream
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .map(|&i| log_event(&inner.log[i]))
            .collect()
    }

    pub(super) fn room_sequence_at(&self, room: &str, position: GlobalPosition) -> i64 {
        let inner = self.lock();
        let Some(stream) = inner.streams.get(&("Room".to_owned(), room.to_owned())) else {
            return 0;
        };
        // Log indexes grow with position: the events at or before it are a prefix.
        stream.partition_point(|&i| inner.log[i].position() <= position) as i64
    }

    pub(super) fn count(&self) -> i64 {
        self.lock().log.len() as i64
    }

    /// The global log from insertion id `after` (exclusive), at most `limit` entries.
    pub fn entries_after(&self, after: u64, limit: usize) -> Vec<MemoryEntry> {
        let inner = self.lock();
        inner
            .log
            .iter()
            .skip(after as usize)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// A turn of the embedded log: one process, appends under one lock, so nothing to hold.
#[derive(Debug)]
struct MemoryTurn(MemoryLog);

#[async_trait]
impl Turn for MemoryTurn {
    async fn append_batch(
        self: Box<Self>,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        self.0.append_batch(events)
    }
}

/// The embedded log answers at once: every call is one lock and a lookup.
#[async_trait]
impl LogStore for MemoryLog {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn read_side(&self) -> ReadSide {
        ReadSide::Embedded(Arc::new(self.clone()))
    }

    async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(MemoryLog::events_after(
            self,
            aggregate_type,
            aggregate_id,
            after,
        ))
    }

    async fn append_batch(
        &self,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        MemoryLog::append_batch(self, events)
    }

    async fn write_turn(&self) -> Result<WriteTurn, AppendError> {
        Ok(WriteTurn::new(MemoryTurn(self.clone())))
    }

    async fn stored_position(
        &self,
        event: &SerializedEvent,
    ) -> Result<Option<GlobalPosition>, PersistenceError> {
        Ok(MemoryLog::stored_position(self, event))
    }

    async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, PersistenceError> {
        Ok(MemoryLog::snapshot(self, aggregate_type, aggregate_id))
    }

    async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) -> Result<(), PersistenceError> {
        MemoryLog::save_snapshot(self, aggregate_type, aggregate_id, snapshot);
        Ok(())
    }

    async fn username_taken(&self, username: &Username) -> Result<bool, PersistenceError> {
        Ok(MemoryLog::username_taken(self, username))
    }

    async fn user_exists(&self, user: &str) -> Result<bool, PersistenceError> {
        Ok(MemoryLog::user_exists(self, user))
    }

    async fn find_message(
        &self,
        key: &MessageKey,
    ) -> Result<Option<(SerializedEvent, GlobalPosition)>, PersistenceError> {
        Ok(MemoryLog::find_message(self, key))
    }

    async fn message_sender(
        &self,
        room: &str,
        seq: MessageSeq,
    ) -> Result<Option<String>, PersistenceError> {
        Ok(MemoryLog::message_sender(self, room, seq))
    }

    async fn room_events(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<LogEvent>, PersistenceError> {
        Ok(MemoryLog::room_events(self, room, after, up_to))
    }

    async fn room_sequence_at(
        &self,
        room: &str,
        position: GlobalPosition,
    ) -> Result<i64, PersistenceError> {
        Ok(MemoryLog::room_sequence_at(self, room, position))
    }

    async fn count(&self) -> Result<i64, PersistenceError> {
        Ok(MemoryLog::count(self))
    }

    async fn ping(&self) -> Result<(), PersistenceError> {
        Ok(())
    }
}

impl EmbeddedLog for MemoryLog {
    fn events_after(&self, after: GlobalPosition, limit: usize) -> Vec<LogEvent> {
        self.entries_after(after.0.max(0) as u64, limit)
            .iter()
            .map(log_event)
            .collect()
    }

    fn head(&self) -> watch::Receiver<GlobalPosition> {
        self.head.subscribe()
    }
}

/// An entry as the read side sees it: its insertion id is its position.
fn log_event(entry: &MemoryEntry) -> LogEvent {
    LogEvent {
        position: entry.position(),
        aggregate_type: entry.event.aggregate_type.clone(),
        aggregate_id: entry.event.aggregate_id.clone(),
        sequence: entry.event.sequence as i64,
        event_type: entry.event.event_type.clone(),
        event_version: entry.event.event_version.clone(),
        payload: entry.event.payload.clone(),
        metadata: entry.event.metadata.clone(),
        recorded_at: entry.recorded_at,
    }
}
