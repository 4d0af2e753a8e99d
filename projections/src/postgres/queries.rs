//! Read-model queries over PostgreSQL, and the projection-maintenance operations (status,
//! rebuild).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parley_domain::{MessageId, MessageSeq, RoomId, RoomVisibility, UserId};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::apply::tables_of;
use super::log_reader::PgEventLog;
use super::rebuild::{self, RebuildConfig, RebuildProgress, RebuildReport};
use async_trait::async_trait;

use crate::events::{EventFilter, EventPage};
use crate::read_models::{ReadModelError, ReadModelStore};
use crate::time_travel::RoomAt;
use crate::views::{
    Credentials, MessagePage, MessageView, Page, PageRequest, ReactionView, RoomListItem, RoomView,
    UserView,
};
use crate::{GlobalPosition, ProjectionStatus, PROJECTIONS};

/// Queries the Postgres read models. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgReadModels {
    pool: PgPool,
}

/// A room's columns; the query joins [`ROOM_PEOPLE`] after `rooms_view r`.
const ROOM_COLUMNS: &str = "r.room_id, r.name, r.topic, r.host, r.created_at, r.last_seq,
    r.last_activity_position, r.visibility, people.members, people.invited,
    people.moderators, people.banned";

/// Who is in a room, by state and role: one pass over the room's `room_members` rows (the
/// primary key's range), however many lists come out of it.
const ROOM_PEOPLE: &str = "CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(p.user_id ORDER BY p.user_id)
                        FILTER (WHERE p.state = 'member'), '{}') AS members,
           coalesce(array_agg(p.user_id ORDER BY p.user_id)
                        FILTER (WHERE p.state = 'invited'), '{}') AS invited,
           coalesce(array_agg(p.user_id ORDER BY p.user_id)
                        FILTER (WHERE p.state = 'member' AND p.role = 'moderator'), '{}')
               AS moderators,
           coalesce(array_agg(p.user_id ORDER BY p.user_id)
                        FILTER (WHERE p.state = 'banned'), '{}') AS banned
      FROM room_members p WHERE p.room_id = r.room_id) people";

const MESSAGE_COLUMNS: &str =
    "room_id, seq, message_id, sender, body, client_msg_id, sent_at, position, edited_at, \
     deleted, reply_to, reactions, changed";

/// The `reactions` column (`{emoji: [user id, …]}`) in emoji order.
fn reactions(column: serde_json::Value) -> Vec<ReactionView> {
    let by_emoji: std::collections::BTreeMap<String, Vec<Uuid>> =
        serde_json::from_value(column).unwrap_or_default();
    by_emoji
        .into_iter()
        .filter(|(_, users)| !users.is_empty())
        .map(|(emoji, users)| ReactionView {
            emoji,
            users: users.into_iter().map(UserId).collect(),
        })
        .collect()
}

fn user_view(row: &PgRow) -> UserView {
    UserView {
        id: UserId(row.get("user_id")),
        username: row.get("username"),
        roles: row.get("roles"),
        created_at: row.get("created_at"),
    }
}

fn room_view(row: &PgRow) -> RoomView {
    let ids = |column: &str| {
        row.get::<Vec<Uuid>, _>(column)
            .into_iter()
            .map(UserId)
            .collect()
    };
    RoomView {
        id: RoomId(row.get("room_id")),
        name: row.get("name"),
        topic: row.get("topic"),
        host: UserId(row.get("host")),
        created_at: row.get("created_at"),
        last_seq: MessageSeq::stored(row.get("last_seq")),
        members: ids("members"),
        invited: ids("invited"),
        visibility: RoomVisibility::parse(row.get("visibility")).unwrap_or_default(),
        moderators: ids("moderators"),
        banned: ids("banned"),
    }
}

fn message_view(row: &PgRow) -> MessageView {
    MessageView {
        id: MessageId(row.get("message_id")),
        room_id: RoomId(row.get("room_id")),
        seq: MessageSeq::stored(row.get("seq")),
        sender: UserId(row.get("sender")),
        body: row.get("body"),
        client_msg_id: row.get("client_msg_id"),
        sent_at: row.get("sent_at"),
        position: GlobalPosition(row.get("position")),
        edited_at: row.get("edited_at"),
        deleted: row.get("deleted"),
        reply_to: row
            .get::<Option<i64>, _>("reply_to")
            .map(MessageSeq::stored),
        reactions: reactions(row.get("reactions")),
        changed: row.get("changed"),
    }
}

impl PgReadModels {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The positioned event log behind these read models.
    pub fn log(&self) -> PgEventLog {
        PgEventLog::new(self.pool.clone())
    }

    /// Rebuilds the named projections (all when empty) into shadow tables and swaps them in,
    /// without interrupting reads or the projector (see `rebuild.rs`).
    pub async fn rebuild(
        &self,
        names: &[&str],
        config: &RebuildConfig,
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ReadModelError> {
        let projections = rebuild::projections_named(names)?;
        rebuild::rebuild(&self.pool, &projections, config, progress).await
    }

    async fn messages_page(&self, room: RoomId, page: Page) -> Result<MessagePage, ReadModelError> {
        let order = if page.backward { "DESC" } else { "ASC" };
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_view
              WHERE room_id = $1 AND seq > $2 AND seq < $3
              ORDER BY seq {order} LIMIT $4"
        ))
        .bind(room.0)
        .bind(page.after.as_i64())
        .bind(page.before.as_i64())
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > page.limit;
        let mut messages: Vec<MessageView> = rows
            .iter()
            .take(page.limit as usize)
            .map(message_view)
            .collect();
        if page.backward {
            messages.reverse();
        }
        Ok(MessagePage { messages, has_more })
    }
}

#[async_trait]
impl ReadModelStore for PgReadModels {
    async fn user(&self, id: UserId) -> Result<Option<UserView>, ReadModelError> {
        let row = sqlx::query(
            "SELECT user_id, username, roles, created_at FROM users_view WHERE user_id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_view))
    }

    /// Users by id, in one query (for batch loading); unknown ids are absent.
    async fn users(&self, ids: &[UserId]) -> Result<HashMap<UserId, UserView>, ReadModelError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let rows = sqlx::query(
            "SELECT user_id, username, roles, created_at FROM users_view WHERE user_id = ANY ($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(user_view).map(|u| (u.id, u)).collect())
    }

    async fn credentials(&self, username: &str) -> Result<Option<Credentials>, ReadModelError> {
        let row = sqlx::query(
            "SELECT user_id, username, roles, created_at, password_hash
               FROM users_view WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| Credentials {
            user: user_view(&row),
            password_hash: row.get("password_hash"),
        }))
    }

    async fn room(&self, id: RoomId) -> Result<Option<RoomView>, ReadModelError> {
        let row = sqlx::query(&format!(
            "SELECT {ROOM_COLUMNS} FROM rooms_view r {ROOM_PEOPLE} WHERE r.room_id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(room_view))
    }

    async fn is_member(&self, room: RoomId, user: UserId) -> Result<bool, ReadModelError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM room_members
                             WHERE room_id = $1 AND user_id = $2 AND state = 'member')",
        )
        .bind(room.0)
        .bind(user.0)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The rooms `user` is a member of, most recent activity first.
    async fn rooms_of(&self, user: UserId) -> Result<Vec<RoomListItem>, ReadModelError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROOM_COLUMNS},
                    greatest(r.last_seq - coalesce(c.last_read_seq, 0), 0) AS unread,
                    m.room_id AS m_room_id, m.seq AS m_seq, m.message_id AS m_message_id,
                    m.sender AS m_sender, m.body AS m_body, m.client_msg_id AS m_client_msg_id,
                    m.sent_at AS m_sent_at, m.position AS m_position,
                    m.edited_at AS m_edited_at, m.deleted AS m_deleted,
                    m.reply_to AS m_reply_to, m.reactions AS m_reactions,
                    m.changed AS m_changed
               FROM room_members rm
               JOIN rooms_view r ON r.room_id = rm.room_id
               {ROOM_PEOPLE}
               LEFT JOIN messages_view m ON m.room_id = r.room_id AND m.seq = r.last_seq
               LEFT JOIN read_cursors c ON c.room_id = rm.room_id AND c.user_id = rm.user_id
              WHERE rm.user_id = $1 AND rm.state = 'member'
              ORDER BY r.last_activity_position DESC, r.room_id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let last_message = row
                    .get::<Option<Uuid>, _>("m_message_id")
                    .map(|message_id| MessageView {
                        id: MessageId(message_id),
                        room_id: RoomId(row.get("m_room_id")),
                        seq: MessageSeq::stored(row.get("m_seq")),
                        sender: UserId(row.get("m_sender")),
                        body: row.get("m_body"),
                        client_msg_id: row.get("m_client_msg_id"),
                        sent_at: row.get::<DateTime<Utc>, _>("m_sent_at"),
                        position: GlobalPosition(row.get("m_position")),
                        edited_at: row.get("m_edited_at"),
                        deleted: row.get("m_deleted"),
                        reply_to: row
                            .get::<Option<i64>, _>("m_reply_to")
                            .map(MessageSeq::stored),
                        reactions: reactions(row.get("m_reactions")),
                        changed: row.get("m_changed"),
                    });
                RoomListItem {
                    room: room_view(row),
                    last_message,
                    unread_count: row.get("unread"),
                    last_activity: GlobalPosition(row.get("last_activity_position")),
                }
            })
            .collect())
    }

    async fn unread_count(&self, room: RoomId, user: UserId) -> Result<i64, ReadModelError> {
        Ok(sqlx::query_scalar(
            "SELECT greatest(r.last_seq - coalesce(c.last_read_seq, 0), 0)
               FROM rooms_view r
               LEFT JOIN read_cursors c ON c.room_id = r.room_id AND c.user_id = $2
              WHERE r.room_id = $1",
        )
        .bind(room.0)
        .bind(user.0)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(0))
    }

    /// A page of a room's history, oldest first.
    async fn messages(
        &self,
        room: RoomId,
        request: PageRequest,
    ) -> Result<MessagePage, ReadModelError> {
        self.messages_page(room, request.validate()?).await
    }

    /// A page of a room's history as it was at position `at`: only the messages with
    /// `position <= at`. Seq and position grow together within a room, so that history is
    /// the prefix up to the room's last seq at `at`, found in the log by index.
    async fn messages_at(
        &self,
        room: RoomId,
        request: PageRequest,
        at: GlobalPosition,
    ) -> Result<MessagePage, ReadModelError> {
        let mut page = request.validate()?;
        if at.0 < 0 {
            return Err(crate::events::FilterError::NegativePosition(at.0).into());
        }
        let last = self.log().last_seq_at(room, at).await?;
        page.before = page.before.min(last.next());
        self.messages_page(room, page).await
    }

    /// Messages of a room with `after < seq <= up_to`, in order (gap filling for live
    /// subscribers), at most `limit`.
    async fn messages_between(
        &self,
        room: RoomId,
        after: MessageSeq,
        up_to: MessageSeq,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_view
              WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4"
        ))
        .bind(room.0)
        .bind(after.as_i64())
        .bind(up_to.as_i64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_view).collect())
    }

    /// Messages of `room` changed (edited, deleted, reacted to) with their newest change
    /// after `after`, in position order.
    async fn changed_messages(
        &self,
        room: RoomId,
        after: GlobalPosition,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages_view
              WHERE room_id = $1 AND changed AND position > $2 ORDER BY position LIMIT $3"
        ))
        .bind(room.0)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_view).collect())
    }

    /// The users `user` blocks, in id order.
    async fn blocked_by(&self, user: UserId) -> Result<Vec<UserId>, ReadModelError> {
        let blocked: Vec<Uuid> = sqlx::query_scalar(
            "SELECT blocked FROM user_blocks WHERE blocker = $1 ORDER BY blocked",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?;
        Ok(blocked.into_iter().map(UserId).collect())
    }

    /// PUBLIC rooms, most recent activity first: `limit` of them after room `after` (the
    /// last of the previous page), by keyset on (last activity, id).
    async fn public_rooms(
        &self,
        after: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<RoomView>, ReadModelError> {
        let rows = sqlx::query(&format!(
            "SELECT {ROOM_COLUMNS} FROM rooms_view r {ROOM_PEOPLE}
              WHERE r.visibility = 'public'
                AND ($1::uuid IS NULL
                     OR (r.last_activity_position, r.room_id)
                        < (SELECT last_activity_position, room_id FROM rooms_view WHERE room_id = $1))
              ORDER BY r.last_activity_position DESC, r.room_id DESC
              LIMIT $2"
        ))
        .bind(after.map(|r| r.0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(room_view).collect())
    }

    /// Full-text search over the messages of the rooms `user` is a member of (of `room`
    /// only, when given): every word of `query` must match (`websearch_to_tsquery` syntax:
    /// `"a phrase"`, `or`, `-not`), best match first, then newest.
    async fn search(
        &self,
        user: UserId,
        query: &str,
        room: Option<RoomId>,
        limit: i64,
    ) -> Result<Vec<MessageView>, ReadModelError> {
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS}
               FROM messages_view m, websearch_to_tsquery('simple', $2) q
              WHERE m.search @@ q
                AND m.room_id IN (SELECT room_id FROM room_members
                                   WHERE user_id = $1 AND state = 'member'
                                     AND ($3::uuid IS NULL OR room_id = $3))
              ORDER BY ts_rank(m.search, q) DESC, m.position DESC
              LIMIT $4"
        ))
        .bind(user.0)
        .bind(query)
        .bind(room.map(|r| r.0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(message_view).collect())
    }

    /// Moves `user`'s read cursor in `room` forward to `seq` (never backward). The caller
    /// checks membership; `seq` beyond the room's last message is refused.
    async fn mark_read(
        &self,
        room: RoomId,
        user: UserId,
        seq: MessageSeq,
    ) -> Result<(), ReadModelError> {
        let last_seq: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM rooms_view WHERE room_id = $1")
                .bind(room.0)
                .fetch_optional(&self.pool)
                .await?;
        let last_seq = MessageSeq::stored(last_seq.ok_or(ReadModelError::UnknownRoom)?);
        if seq > last_seq {
            return Err(ReadModelError::SeqOutOfRange { seq, last_seq });
        }
        sqlx::query(
            "INSERT INTO read_cursors (room_id, user_id, last_read_seq) VALUES ($1, $2, $3)
             ON CONFLICT (room_id, user_id) DO UPDATE
                SET last_read_seq = GREATEST(read_cursors.last_read_seq, excluded.last_read_seq),
                    updated_at = now()",
        )
        .bind(room.0)
        .bind(user.0)
        .bind(seq.as_i64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Checkpoint and lag of every projection.
    async fn status(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        let rows = sqlx::query(
            "SELECT c.projection, c.position,
                    (SELECT count(*) FROM events e WHERE e.position > c.position OR e.position IS NULL) AS lag_events,
                    coalesce((SELECT (extract(epoch FROM now() - min(e.recorded_at)) * 1000)::bigint
                                FROM events e WHERE e.position > c.position OR e.position IS NULL), 0) AS lag_ms
               FROM projector_checkpoints c
              WHERE c.projection = ANY ($1)
              ORDER BY array_position($1, c.projection)",
        )
        .bind(&PROJECTIONS[..])
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ProjectionStatus {
                name: row.get("projection"),
                checkpoint: GlobalPosition(row.get("position")),
                lag_events: row.get("lag_events"),
                lag_ms: row.get("lag_ms"),
            })
            .collect())
    }

    /// [`Self::status`] without scanning the log, for frequent callers (`/metrics`): the head
    /// is the largest position (an index lookup), events without a position yet are counted
    /// through their partial index (at most 100,000), and the lag in time is the age of the
    /// first unapplied event found through those indexes. Exact while positions have no gaps.
    async fn lag_estimate(&self) -> Result<Vec<ProjectionStatus>, ReadModelError> {
        let rows = sqlx::query(
            "SELECT c.projection, c.position,
                    greatest(coalesce((SELECT max(position) FROM events), 0) - c.position, 0)
                      + (SELECT count(*) FROM (SELECT 1 FROM events WHERE position IS NULL LIMIT 100000) AS u)
                      AS lag_events,
                    greatest(
                      coalesce((SELECT (extract(epoch FROM now() - e.recorded_at) * 1000)::bigint
                                  FROM events e WHERE e.position > c.position
                                 ORDER BY e.position LIMIT 1), 0),
                      coalesce((SELECT (extract(epoch FROM now() - e.recorded_at) * 1000)::bigint
                                  FROM events e WHERE e.position IS NULL
                                 ORDER BY e.transaction_id, e.id LIMIT 1), 0)
                    ) AS lag_ms
               FROM projector_checkpoints c
              WHERE c.projection = ANY ($1)
              ORDER BY array_position($1, c.projection)",
        )
        .bind(&PROJECTIONS[..])
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| ProjectionStatus {
                name: row.get("projection"),
                checkpoint: GlobalPosition(row.get("position")),
                lag_events: row.get("lag_events"),
                lag_ms: row.get("lag_ms"),
            })
            .collect())
    }

    /// Starts a rebuild of the named projections (all when empty): empties their tables and
    /// resets their checkpoints in one transaction. The active projector then replays the log
    /// into them (see [`super::PgProjector::step`]).
    async fn reset(&self, names: &[&str]) -> Result<(), ReadModelError> {
        let names: Vec<&str> = if names.is_empty() {
            PROJECTIONS.to_vec()
        } else {
            names.to_vec()
        };
        if let Some(unknown) = names.iter().find(|n| !PROJECTIONS.contains(n)) {
            return Err(ReadModelError::UnknownProjection((*unknown).to_owned()));
        }
        let tables: Vec<&str> = names.iter().flat_map(|n| tables_of(n)).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("TRUNCATE {}", tables.join(", ")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE projector_checkpoints SET position = 0, updated_at = now() WHERE projection = ANY ($1)",
        )
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn events(
        &self,
        after: Option<i64>,
        first: Option<i64>,
        filter: &EventFilter,
    ) -> Result<EventPage, ReadModelError> {
        self.log().events(after, first, filter).await
    }

    async fn room_at(
        &self,
        room: RoomId,
        at: GlobalPosition,
    ) -> Result<Option<RoomAt>, ReadModelError> {
        self.log().room_at(room, at).await
    }

    async fn rebuild(
        &self,
        names: &[&str],
        progress: &(dyn Fn(RebuildProgress) + Send + Sync),
    ) -> Result<RebuildReport, ReadModelError> {
        PgReadModels::rebuild(self, names, &RebuildConfig::default(), progress).await
    }
}
