//! Reading the positioned global log from PostgreSQL: pages for the `events` query and
//! exports, one room's history for time travel, and the username lookup the CLI needs.
//!
//! Every read is keyset-paged on `position` (`WHERE position > $last ... ORDER BY position
//! LIMIT n`), one short statement per page: nothing holds a snapshot open, so a long export
//! never stalls the projector, and memory stays one page deep whatever the log's size. Only
//! positioned events are visible; positions are stable once given, so re-reading a range
//! always yields the same events.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use parley_domain::{MessageSeq, RoomId, UserId};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::events::{AggregateKind, EventFilter, EventPage};
use crate::log::{LogEvent, RawLogEvent};
use crate::read_models::ReadModelError;
use crate::time_travel::{RoomAt, RoomReplay};
use crate::GlobalPosition;

/// Events read per statement when replaying one room.
const ROOM_PAGE: i64 = 5000;

const COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, \
                       event_version, event_payload(payload, erasable) AS payload, metadata, recorded_at";

/// [`COLUMNS`] with the JSON as text, for [`RawLogEvent`].
const RAW_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, \
                           event_version, event_payload(payload, erasable)::text AS payload, \
                           metadata::text AS metadata, \
                           recorded_at";

/// The positioned log in PostgreSQL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgEventLog {
    pool: PgPool,
}

/// A row of `events` as a [`LogEvent`]. Needs the columns position, aggregate_type,
/// aggregate_id, sequence, event_type, event_version, payload, metadata and recorded_at.
pub fn log_event(row: &PgRow) -> LogEvent {
    log_event_with_payload(row, row.get::<Value, _>("payload"))
}

/// [`log_event`] with the payload read by the caller (who put its text back itself).
pub fn log_event_with_payload(row: &PgRow, payload: Value) -> LogEvent {
    LogEvent {
        position: GlobalPosition(row.get("position")),
        aggregate_type: row.get("aggregate_type"),
        aggregate_id: row.get("aggregate_id"),
        sequence: row.get("sequence"),
        event_type: row.get("event_type"),
        event_version: row.get("event_version"),
        payload,
        metadata: row.get::<Value, _>("metadata"),
        recorded_at: row.get::<DateTime<Utc>, _>("recorded_at"),
    }
}

impl PgEventLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The newest position given so far (0 before the first).
    pub async fn head(&self) -> Result<GlobalPosition, sqlx::Error> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(GlobalPosition(head))
    }

    /// The filter with its aggregate type filled in when only an aggregate id was given, so
    /// the (type, id, position) index serves it; `None` when no aggregate has that id (no
    /// event can match).
    pub async fn resolve(&self, filter: &EventFilter) -> Result<Option<EventFilter>, sqlx::Error> {
        let (Some(id), None) = (filter.aggregate_id(), filter.aggregate_type()) else {
            return Ok(Some(filter.clone()));
        };
        let mut kinds = Vec::new();
        for kind in [AggregateKind::User, AggregateKind::Room] {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2)",
            )
            .bind(kind.as_str())
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
            if exists {
                kinds.push(kind);
            }
        }
        Ok(match kinds.as_slice() {
            [] => None,
            [kind] => Some(filter.with_aggregate_type(*kind)),
            // Two aggregates of different types share the id: filter by id alone.
            _ => Some(filter.clone()),
        })
    }

    /// Up to `limit` events matching `filter` with `position > after`, in position order, as
    /// stored (not redacted: see [`Self::events`] and the export for what analysts get).
    pub async fn page(
        &self,
        after: GlobalPosition,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Vec<LogEvent>, sqlx::Error> {
        let rows = self
            .filtered(COLUMNS, after, limit, filter)
            .build()
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(log_event).collect())
    }

    /// Like [`Self::page`], with payload and metadata left as JSON text (for exports).
    pub async fn raw_page(
        &self,
        after: GlobalPosition,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Vec<RawLogEvent>, sqlx::Error> {
        self.filtered(RAW_COLUMNS, after, limit, filter)
            .build()
            .fetch(&self.pool)
            // By index (the order of RAW_COLUMNS): a million name lookups add up.
            .map_ok(|row| RawLogEvent {
                position: GlobalPosition(row.get(0)),
                aggregate_type: row.get(1),
                aggregate_id: row.get(2),
                sequence: row.get(3),
                event_type: row.get(4),
                event_version: row.get(5),
                payload: row.get(6),
                metadata: row.get(7),
                recorded_at: row.get(8),
            })
            .try_collect()
            .await
    }

    /// The statement for a page: `columns` of the events matching `filter` after `after`.
    /// Only the conditions in use appear, so each filter shape gets its own prepared
    /// statement and plan (by position, or by the (type, id, position) index).
    fn filtered<'a>(
        &self,
        columns: &str,
        after: GlobalPosition,
        limit: i64,
        filter: &'a EventFilter,
    ) -> QueryBuilder<'a, Postgres> {
        let after = filter
            .from()
            .map_or(after, |from| after.max(GlobalPosition(from.0 - 1)));
        let mut query = QueryBuilder::<Postgres>::new(format!(
            "SELECT {columns} FROM events WHERE position > "
        ));
        query.push_bind(after.0);
        if let Some(to) = filter.to() {
            query.push(" AND position <= ").push_bind(to.0);
        }
        if let Some(kind) = filter.aggregate_type() {
            query
                .push(" AND aggregate_type = ")
                .push_bind(kind.as_str());
        }
        if let Some(id) = filter.aggregate_id() {
            query.push(" AND aggregate_id = ").push_bind(id);
        }
        if !filter.event_types().is_empty() {
            query
                .push(" AND event_type = ANY (")
                .push_bind(filter.event_types())
                .push(")");
        }
        query.push(" ORDER BY position LIMIT ").push_bind(limit);
        query
    }

    /// A page of the log for the `events` query, secrets redacted. `after` is an exclusive
    /// position (default 0), `first` the page size (default 100, at most 1000).
    pub async fn events(
        &self,
        after: Option<i64>,
        first: Option<i64>,
        filter: &EventFilter,
    ) -> Result<EventPage, ReadModelError> {
        let (after, first) = EventPage::request(after, first)?;
        let Some(filter) = self.resolve(filter).await? else {
            return Ok(EventPage {
                events: Vec::new(),
                has_more: false,
            });
        };
        let mut events = self.page(after, first + 1, &filter).await?;
        let has_more = events.len() as i64 > first;
        events.truncate(first as usize);
        Ok(EventPage {
            events: events.into_iter().map(LogEvent::redacted).collect(),
            has_more,
        })
    }

    /// The room as of `at`: its events up to that position folded through the `Room`
    /// aggregate. `None` if it did not exist then.
    pub async fn room_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<Option<RoomAt>, ReadModelError> {
        if at.0 < 0 {
            return Err(crate::events::FilterError::NegativePosition(at.0).into());
        }
        let mut replay = RoomReplay::default();
        let mut after = GlobalPosition::START;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM events
                  WHERE aggregate_type = 'Room' AND aggregate_id = $1
                    AND position > $2 AND position <= $3
                  ORDER BY position LIMIT $4"
            ))
            .bind(room.to_string())
            .bind(after.0)
            .bind(at.0)
            .bind(ROOM_PAGE)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                let event = log_event(row);
                after = event.position;
                replay.apply(&event);
            }
            if (rows.len() as i64) < ROOM_PAGE {
                return Ok(replay.finish(at));
            }
        }
    }

    /// The seq of the newest message `room` had at `at` (0 if none): the upper bound of its
    /// history as of that position.
    pub async fn last_seq_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<MessageSeq, ReadModelError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events
              WHERE aggregate_type = 'Room' AND aggregate_id = $1 AND position <= $2
                AND event_type = 'MessageSent'
              ORDER BY position DESC LIMIT 1"
        ))
        .bind(room.to_string())
        .bind(at.0)
        .fetch_optional(&self.pool)
        .await?;
        // Decoded (and upcast) like any replay, rather than read from a JSON path that an old
        // shape might not have.
        Ok(row
            .map(|row| match log_event(&row).decode() {
                crate::DecodedEvent::Room(_, parley_domain::RoomEvent::MessageSent { seq, .. }) => {
                    seq
                }
                _ => MessageSeq::ZERO,
            })
            .unwrap_or(MessageSeq::ZERO))
    }

    /// The id of the user registered as `username`, from the log itself (the unique
    /// username index), so it answers even while the user directory is being rebuilt.
    pub async fn user_id(&self, username: &str) -> Result<Option<UserId>, sqlx::Error> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT aggregate_id FROM events
              WHERE aggregate_type = 'User' AND event_type = 'UserRegistered'
                AND erasable = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()).map(UserId))
    }
}
