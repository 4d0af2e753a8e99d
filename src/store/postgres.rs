//! The Postgres event log: postgres-es's `PostgresEventRepository` for reading and appending
//! streams, plus Parley's own statements for snapshots and the store's unique-key lookups.

use std::fmt;
use std::sync::Arc;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::Aggregate;
use parley_domain::Username;
use parley_projections::postgres::log_event;
use parley_projections::LogEvent;
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Row};

use super::{MessageKey, Snapshot};

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

    pub(super) async fn events_after<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.repo.get_last_events::<A>(aggregate_id, after).await
    }

    pub(super) async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        self.repo.persist::<A>(events, None).await
    }

    pub(super) async fn snapshot(
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

    pub(super) async fn save_snapshot(
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

    pub(super) async fn username_taken(
        &self,
        username: &Username,
    ) -> Result<bool, PersistenceError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events
                             WHERE aggregate_type = 'User' AND event_type = 'UserRegistered'
                               AND payload -> 'UserRegistered' ->> 'username' = $1)",
        )
        .bind(username.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)
    }

    pub(super) async fn aggregate_exists(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<bool, PersistenceError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)
    }

    pub(super) async fn find_message(
        &self,
        key: &MessageKey,
    ) -> Result<Option<SerializedEvent>, PersistenceError> {
        let row = sqlx::query(
            "SELECT aggregate_id, sequence, event_type, event_version, payload, metadata
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
            SerializedEvent::new(
                row.get("aggregate_id"),
                usize::try_from(row.get::<i64, _>("sequence")).unwrap_or(0),
                "Room".to_owned(),
                row.get("event_type"),
                row.get("event_version"),
                row.get("payload"),
                row.get("metadata"),
            )
        }))
    }

    pub(super) async fn room_events(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
    ) -> Result<Vec<LogEvent>, PersistenceError> {
        let rows = sqlx::query(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                    payload, metadata, recorded_at
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
        Ok(rows.iter().map(log_event).collect())
    }

    pub(super) async fn count(&self) -> Result<i64, PersistenceError> {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)
    }

    /// Takes the cross-instance lock of one aggregate: an advisory lock held by an open
    /// transaction (which writes nothing, so it never holds the log's xmin back); released
    /// when the returned transaction is dropped.
    pub(super) async fn lock_aggregate(
        &self,
        key: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, PersistenceError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        Ok(tx)
    }

    pub(super) async fn ping(&self) -> Result<(), PersistenceError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
