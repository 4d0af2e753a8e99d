//! The Postgres event log: postgres-es's `PostgresEventRepository` for reading and appending
//! streams, plus Parley's own statements for snapshots and the store's unique-key lookups.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use parley_domain::{MessageSeq, Room, User, Username};
use parley_projections::erasure;
use parley_projections::postgres::log_event_with_payload;
use parley_projections::{GlobalPosition, LogEvent};
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Row};

use super::{AppendError, LogStore, MessageKey, ReadSide, Snapshot, Turn, WriteTurn};

#[derive(Clone)]
pub struct PostgresLog {
    pool: PgPool,
    repo: Arc<PostgresEventRepository>,
}

impl fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLog").finish_non_exhaustive()
    }
}

fn db_error(error: sqlx::Error) -> PersistenceError {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => PersistenceError::ConnectionError(Box::new(error)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

impl PostgresLog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            repo: Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn find_collisions(&self, columns: &BatchColumns) -> Result<GlobalPosition, AppendError> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| AppendError::Store(db_error(e)))?;
        probe_and_commit(tx, columns).await
    }
}

#[async_trait]
impl LogStore for PostgresLog {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn read_side(&self) -> ReadSide {
        ReadSide::Postgres(self.pool.clone())
    }

    /// Through postgres-es's repository, whose reads are typed by aggregate: the types
    /// Parley stores are named here.
    async fn events_after(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        match aggregate_type {
            User::TYPE => self.repo.get_last_events::<User>(aggregate_id, after).await,
            Room::TYPE => self.repo.get_last_events::<Room>(aggregate_id, after).await,
            other => Err(PersistenceError::UnknownError(
                format!("no aggregate type {other:?} is stored").into(),
            )),
        }
    }

    /// Appends a batch in one statement, hence one transaction and one WAL flush: the
    /// statement takes `n` positions from `log_head` (row-locking it until commit, which is
    /// what makes positions follow commit order without gaps: see the migration
    /// `positions_at_insert`) and inserts every event with its position. Returns the first
    /// position; the events hold `first ..` in the given order.
    ///
    /// A unique violation aborts the statement and writes nothing; the batch is then tried
    /// once more with `ON CONFLICT DO NOTHING` inside a transaction, only to learn which
    /// events collide, and rolled back (or committed, if the collision has gone away).
    async fn append_batch(
        &self,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        let columns = BatchColumns::of(events).map_err(AppendError::Store)?;
        match columns
            .bind(sqlx::query_as::<_, (i64, i64)>(APPEND))
            .fetch_one(&self.pool)
            .await
        {
            Ok((first, _)) => Ok(GlobalPosition(first)),
            Err(error) if is_unique_violation(&error) => self.find_collisions(&columns).await,
            // No connection was had, so nothing was sent: certainly not written.
            Err(error @ (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)) => {
                Err(AppendError::NotSent(db_error(error)))
            }
            Err(error) => Err(AppendError::Store(db_error(error))),
        }
    }

    /// Waits for every append in flight to commit and holds back all others (the row lock
    /// on `log_head` that every append takes) until the turn's own append commits or the
    /// turn is dropped. What is read meanwhile (on any connection) is the whole log.
    async fn write_turn(&self) -> Result<WriteTurn, AppendError> {
        let store = |e| AppendError::Store(db_error(e));
        let mut tx = self.pool.begin().await.map_err(|error| match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                AppendError::NotSent(db_error(error))
            }
            error => store(error),
        })?;
        sqlx::query("SELECT 1 FROM log_head FOR UPDATE")
            .execute(&mut *tx)
            .await
            .map_err(store)?;
        Ok(WriteTurn::new(PostgresTurn { tx }))
    }

    /// The position of `event` if it is stored as given (same aggregate, sequence, payload
    /// and metadata): after a connection failure during an append, this tells whether
    /// that batch committed.
    async fn stored_position(
        &self,
        event: &SerializedEvent,
    ) -> Result<Option<GlobalPosition>, PersistenceError> {
        let sequence = i64::try_from(event.sequence)
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3
                AND payload::text = $4 AND metadata::text = $5",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(sequence)
        .bind(stored_payload(event).0)
        .bind(event.metadata.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(position.map(GlobalPosition))
    }

    async fn snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Option<Snapshot>, PersistenceError> {
        let row = sqlx::query(
            "SELECT last_sequence, payload FROM snapshots
              WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(|row| Snapshot {
            last_sequence: usize::try_from(row.get::<i64, _>("last_sequence")).unwrap_or(0),
            state: row.get("payload"),
        }))
    }

    async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        snapshot: Snapshot,
    ) -> Result<(), PersistenceError> {
        let last_sequence = i64::try_from(snapshot.last_sequence)
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, payload)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                SET last_sequence = excluded.last_sequence,
                    payload = excluded.payload,
                    taken_at = now()
              WHERE snapshots.last_sequence < excluded.last_sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(last_sequence)
        .bind(&snapshot.state)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn username_taken(&self, username: &Username) -> Result<bool, PersistenceError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events
                             WHERE aggregate_type = 'User' AND event_type = 'UserRegistered'
                               AND erasable = $1)",
        )
        .bind(username.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)
    }

    /// Whether this user registered and was not erased since (a user's few events, by the
    /// primary key).
    async fn user_exists(&self, user: &str) -> Result<bool, PersistenceError> {
        sqlx::query_scalar(
            "SELECT bool_or(event_type = 'UserRegistered') AND NOT bool_or(event_type = 'UserErased')
               FROM events WHERE aggregate_type = 'User' AND aggregate_id = $1",
        )
        .bind(user)
        .fetch_one(&self.pool)
        .await
        .map(|live: Option<bool>| live.unwrap_or(false))
        .map_err(db_error)
    }

    async fn find_message(
        &self,
        key: &MessageKey,
    ) -> Result<Option<(SerializedEvent, GlobalPosition)>, PersistenceError> {
        let row = sqlx::query(
            "SELECT aggregate_id, sequence, event_type, event_version,
                    event_payload(payload, erasable) AS payload, metadata, position
               FROM events
              WHERE aggregate_type = 'Room' AND event_type = 'MessageSent'
                AND aggregate_id = $1
                AND payload -> 'MessageSent' ->> 'sender' = $2
                AND payload -> 'MessageSent' ->> 'client_msg_id' = $3",
        )
        .bind(&key.room)
        .bind(&key.sender)
        .bind(&key.client_msg_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(|row| {
            let event = SerializedEvent::new(
                row.get("aggregate_id"),
                usize::try_from(row.get::<i64, _>("sequence")).unwrap_or(0),
                "Room".to_owned(),
                row.get("event_type"),
                row.get("event_version"),
                row.get("payload"),
                row.get("metadata"),
            );
            (event, GlobalPosition(row.get("position")))
        }))
    }

    async fn message_sender(
        &self,
        room: &str,
        seq: MessageSeq,
    ) -> Result<Option<String>, PersistenceError> {
        // Served by the index `events_erasable_by_message`.
        sqlx::query_scalar(
            "SELECT payload -> 'MessageSent' ->> 'sender' FROM events
              WHERE aggregate_id = $1 AND (payload -> event_type ->> 'seq')::bigint = $2
                AND erasable IS NOT NULL
                AND aggregate_type = 'Room' AND event_type = 'MessageSent'",
        )
        .bind(room)
        .bind(seq.as_i64())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)
    }

    async fn room_events(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<LogEvent>, PersistenceError> {
        // The text goes back into its placeholder here, not in SQL (`event_payload` re-parses
        // every payload as it casts back to json): live subscribers re-read these pages.
        let rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload::text AS payload, erasable, metadata, recorded_at
               FROM events
              WHERE aggregate_type = 'Room' AND aggregate_id = $1
                AND sequence > $2 AND sequence <= $3 AND position IS NOT NULL
              ORDER BY sequence",
        )
        .bind(room)
        .bind(after)
        .bind(up_to)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let stored: &str = row.get("payload");
                let payload = erasure::restored(
                    row.get("aggregate_type"),
                    row.get("event_type"),
                    stored,
                    row.get("erasable"),
                );
                let payload = serde_json::from_str(&payload)
                    .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
                Ok(log_event_with_payload(row, payload))
            })
            .collect()
    }

    async fn room_sequence_at(
        &self,
        room: &str,
        position: GlobalPosition,
    ) -> Result<i64, PersistenceError> {
        // Backward along (aggregate_type, aggregate_id, sequence): only the room's events
        // after `position` are passed over.
        let sequence: Option<i64> = sqlx::query_scalar(
            "SELECT sequence FROM events
              WHERE aggregate_type = 'Room' AND aggregate_id = $1 AND position <= $2
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(room)
        .bind(position.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(sequence.unwrap_or(0))
    }

    async fn count(&self) -> Result<i64, PersistenceError> {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    async fn ping(&self) -> Result<(), PersistenceError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// The batch statement: `n` positions from `log_head`, then every event in one INSERT with
/// its position (`$1`…`$8` are the parallel arrays of [`BatchColumns`]); `$conflict` and
/// `$returning` finish the INSERT, `$select` is what the statement returns. The batch's
/// deletions (`$9`, `$10`: room, seq) erase the text of the messages' earlier events in the
/// same statement, its user erasures (`$11`: user ids) the username and every message text
/// of those users (see the migration `erasable_text`; with no erasure in the batch, that
/// UPDATE is skipped by a one-time filter, not run as a scan).
macro_rules! batch_statement {
    ($conflict:literal, $returning:literal, $select:literal) => {
        concat!(
            "WITH head AS (
                 UPDATE log_head SET position = position + cardinality($1::text[])
                 RETURNING position - cardinality($1::text[]) AS base
             ), erased AS (
                 UPDATE events SET erasable = NULL
                   FROM unnest($9::text[], $10::bigint[]) AS d(room, seq)
                  WHERE events.erasable IS NOT NULL AND events.aggregate_id = d.room
                    AND (events.payload -> events.event_type ->> 'seq')::bigint = d.seq
                    AND events.aggregate_type = 'Room'
             ), erased_users AS (
                 UPDATE events SET erasable = NULL
                  WHERE cardinality($11::text[]) > 0 AND erasable IS NOT NULL
                    AND ((aggregate_type = 'User' AND aggregate_id = ANY($11::text[]))
                         OR (aggregate_type = 'Room'
                             AND coalesce(payload -> event_type ->> 'sender',
                                          payload -> event_type ->> 'editor') = ANY($11::text[])))
             ), appended AS (
                 INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata, position, erasable)
                 SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                        e.event_version, e.payload::json, e.metadata::json, head.base + e.n,
                        e.erasable
                   FROM head,
                        unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                               $6::text[], $7::text[], $8::text[])
                        WITH ORDINALITY AS e(aggregate_type, aggregate_id, sequence,
                                             event_type, event_version, payload, metadata,
                                             erasable, n) ",
            $conflict,
            " RETURNING ",
            $returning,
            ") ",
            $select
        )
    };
}

/// The batch append. Returns the first position and the number of rows.
const APPEND: &str = batch_statement!(
    "",
    "1",
    "SELECT head.base + 1, (SELECT count(*) FROM appended) FROM head"
);

/// [`APPEND`] that skips colliding rows and says which positions it did insert.
const PROBE: &str = batch_statement!(
    "ON CONFLICT DO NOTHING",
    "position",
    "SELECT head.base + 1, coalesce((SELECT array_agg(position) FROM appended), '{}') FROM head"
);

/// A batch as the parallel arrays [`APPEND`] unnests. JSON goes as text, so the stored text
/// is serde_json's own (keys sorted), byte for byte; a message's text goes in `erasables`,
/// its payload keeps the placeholder.
struct BatchColumns {
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    erasables: Vec<Option<String>>,
    /// The messages the batch deletes: (room, seq).
    erase_rooms: Vec<String>,
    erase_seqs: Vec<i64>,
    /// The users the batch erases.
    erase_users: Vec<String>,
}

impl BatchColumns {
    fn of(events: &[SerializedEvent]) -> Result<Self, PersistenceError> {
        let mut columns = Self {
            aggregate_types: Vec::with_capacity(events.len()),
            aggregate_ids: Vec::with_capacity(events.len()),
            sequences: Vec::with_capacity(events.len()),
            event_types: Vec::with_capacity(events.len()),
            event_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
            erasables: Vec::with_capacity(events.len()),
            erase_rooms: Vec::new(),
            erase_seqs: Vec::new(),
            erase_users: Vec::new(),
        };
        for event in events {
            columns.aggregate_types.push(event.aggregate_type.clone());
            columns.aggregate_ids.push(event.aggregate_id.clone());
            columns.sequences.push(
                i64::try_from(event.sequence)
                    .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
            );
            columns.event_types.push(event.event_type.clone());
            columns.event_versions.push(event.event_version.clone());
            let (payload, text) = stored_payload(event);
            columns.payloads.push(payload);
            columns.erasables.push(text);
            columns.metadata.push(event.metadata.to_string());
            if let Some(erases) = erasure::Erases::of(event) {
                // Earlier events of this batch are not visible to the statement's UPDATE.
                let earlier = events.iter().zip(columns.erasables.iter_mut());
                for (_, text) in earlier.filter(|(other, _)| erases.covers(other)) {
                    *text = None;
                }
                match erases {
                    erasure::Erases::Message { room, seq } => {
                        columns.erase_rooms.push(room.to_owned());
                        columns.erase_seqs.push(
                            i64::try_from(seq)
                                .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?,
                        );
                    }
                    erasure::Erases::User(user) => columns.erase_users.push(user.to_owned()),
                }
            }
        }
        Ok(columns)
    }

    fn len(&self) -> usize {
        self.sequences.len()
    }

    fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(&self.aggregate_types)
            .bind(&self.aggregate_ids)
            .bind(&self.sequences)
            .bind(&self.event_types)
            .bind(&self.event_versions)
            .bind(&self.payloads)
            .bind(&self.metadata)
            .bind(&self.erasables)
            .bind(&self.erase_rooms)
            .bind(&self.erase_seqs)
            .bind(&self.erase_users)
    }
}

/// The payload as stored (text taken out) and the text, if the event carries any.
fn stored_payload(event: &SerializedEvent) -> (String, Option<String>) {
    if !erasure::carries_text(&event.aggregate_type, &event.event_type) {
        return (event.payload.to_string(), None);
    }
    let mut payload = event.payload.clone();
    let text = erasure::take_text(&event.aggregate_type, &event.event_type, &mut payload);
    (payload.to_string(), text)
}

/// A unique index or key refused a row (SQLSTATE 23505).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("23505"))
}

/// A turn to write alone (see [`PostgresLog::write_turn`]).
pub struct PostgresTurn {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

impl std::fmt::Debug for PostgresTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTurn").finish_non_exhaustive()
    }
}

#[async_trait]
impl Turn for PostgresTurn {
    /// Appends the batch in the turn's transaction and commits it, or rolls back and names
    /// the colliding events (with the log held, only a unique key can collide).
    async fn append_batch(
        self: Box<Self>,
        events: &[SerializedEvent],
    ) -> Result<GlobalPosition, AppendError> {
        let columns = BatchColumns::of(events).map_err(AppendError::Store)?;
        probe_and_commit(self.tx, &columns).await
    }
}

/// Inserts the batch in `tx` with `ON CONFLICT DO NOTHING`: commits and returns the first
/// position if every event went in, else rolls back and names the events that collide.
async fn probe_and_commit(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    columns: &BatchColumns,
) -> Result<GlobalPosition, AppendError> {
    let store = |e| AppendError::Store(db_error(e));
    let (first, inserted): (i64, Vec<i64>) = columns
        .bind(sqlx::query_as(PROBE))
        .fetch_one(&mut *tx)
        .await
        .map_err(store)?;
    let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
    let colliding: Vec<usize> = (0..columns.len())
        .filter(|&i| !inserted.contains(&(first + i as i64)))
        .collect();
    if colliding.is_empty() {
        tx.commit().await.map_err(store)?;
        return Ok(GlobalPosition(first));
    }
    tx.rollback().await.map_err(store)?;
    Err(AppendError::Conflict(colliding))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn room_event(
        sequence: usize,
        event_type: &str,
        payload: serde_json::Value,
    ) -> SerializedEvent {
        SerializedEvent::new(
            "room-1".to_owned(),
            sequence,
            "Room".to_owned(),
            event_type.to_owned(),
            "1.0".to_owned(),
            payload,
            json!({}),
        )
    }

    #[test]
    fn text_is_stored_beside_the_payload_and_a_deletion_in_the_same_batch_erases_it() {
        let events = [
            room_event(
                1,
                "MessageSent",
                json!({"MessageSent": {"seq": 1, "body": "secret"}}),
            ),
            room_event(
                2,
                "MessageSent",
                json!({"MessageSent": {"seq": 2, "body": "kept"}}),
            ),
            room_event(
                3,
                "MessageEdited",
                json!({"MessageEdited": {"seq": 1, "body": "secret 2"}}),
            ),
            room_event(4, "MessageDeleted", json!({"MessageDeleted": {"seq": 1}})),
        ];
        let columns = BatchColumns::of(&events).expect("columns");
        assert_eq!(
            columns.erasables,
            [None, Some("kept".to_owned()), None, None]
        );
        assert!(columns
            .payloads
            .iter()
            .all(|p| !p.contains("secret") && !p.contains("kept")));
        assert_eq!(
            columns.payloads[0],
            r#"{"MessageSent":{"body":"","seq":1}}"#
        );
        assert_eq!(
            (columns.erase_rooms, columns.erase_seqs),
            (vec!["room-1".to_owned()], vec![1])
        );
    }
}
