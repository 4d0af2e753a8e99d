//! The SQL writer of the projections: applies each event's row operations (decided in
//! [`crate::changes`], shared with the embedded writer) to the tables, inside the projector's
//! transaction.
//!
//! Runs of `MessageSent` (nearly all of a chat log) are applied with one set-based statement
//! per table; other operations one by one, in log order.
//!
//! Every statement names its tables through [`Targets`], so the same code feeds the live read
//! models and a rebuild's shadow copies (see `rebuild.rs`). `read_cursors` is the exception:
//! it belongs to no projection (markRead writes it too), is never shadowed, and the rooms
//! projection only ever moves a cursor forward (`GREATEST`), which makes replaying into it
//! harmless.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parley_domain::MessageSeq;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::changes::{changes, CursorTo, MemberState, MessagesOp, RoomsOp, RowOp, UsersOp};
use crate::log::{DecodedEvent, LogEvent};

/// The projections, each owning its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Projection {
    Users,
    Rooms,
    Messages,
}

impl Projection {
    pub const ALL: [Self; 3] = [Self::Users, Self::Rooms, Self::Messages];

    /// The projection named `name` (its checkpoint row's name).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Rooms => "rooms",
            Self::Messages => "messages",
        }
    }

    /// The live tables this projection owns, with their shadow copies' names.
    pub fn tables(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Users => &[
                (USERS_LIVE.users_view, USERS_SHADOW.users_view),
                (USERS_LIVE.user_blocks, USERS_SHADOW.user_blocks),
            ],
            Self::Rooms => &[
                (ROOMS_LIVE.rooms_view, ROOMS_SHADOW.rooms_view),
                (ROOMS_LIVE.room_members, ROOMS_SHADOW.room_members),
            ],
            Self::Messages => &[(MESSAGES_LIVE.messages_view, MESSAGES_SHADOW.messages_view)],
        }
    }
}

/// The users projection's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UsersTables {
    pub users_view: &'static str,
    pub user_blocks: &'static str,
}

/// The rooms projection's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoomsTables {
    pub rooms_view: &'static str,
    pub room_members: &'static str,
}

/// The messages projection's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessagesTables {
    pub messages_view: &'static str,
}

const USERS_LIVE: UsersTables = UsersTables {
    users_view: "users_view",
    user_blocks: "user_blocks",
};
const USERS_SHADOW: UsersTables = UsersTables {
    users_view: "users_view_shadow",
    user_blocks: "user_blocks_shadow",
};
const ROOMS_LIVE: RoomsTables = RoomsTables {
    rooms_view: "rooms_view",
    room_members: "room_members",
};
const ROOMS_SHADOW: RoomsTables = RoomsTables {
    rooms_view: "rooms_view_shadow",
    room_members: "room_members_shadow",
};
const MESSAGES_LIVE: MessagesTables = MessagesTables {
    messages_view: "messages_view",
};
const MESSAGES_SHADOW: MessagesTables = MessagesTables {
    messages_view: "messages_view_shadow",
};

/// Which projections a batch is applied to, and into which tables (`None`: not applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Targets {
    pub users: Option<UsersTables>,
    pub rooms: Option<RoomsTables>,
    pub messages: Option<MessagesTables>,
}

impl Targets {
    /// The live tables of the named projections.
    pub fn of(names: &[&str]) -> Self {
        Self {
            users: names.contains(&"users").then_some(USERS_LIVE),
            rooms: names.contains(&"rooms").then_some(ROOMS_LIVE),
            messages: names.contains(&"messages").then_some(MESSAGES_LIVE),
        }
    }

    /// The shadow tables of the given projections (a rebuild in progress).
    pub fn shadows_of(projections: &[Projection]) -> Self {
        Self {
            users: projections
                .contains(&Projection::Users)
                .then_some(USERS_SHADOW),
            rooms: projections
                .contains(&Projection::Rooms)
                .then_some(ROOMS_SHADOW),
            messages: projections
                .contains(&Projection::Messages)
                .then_some(MESSAGES_SHADOW),
        }
    }
}

impl Targets {
    /// Whether the projection owning `op`'s table is applied.
    fn applies(&self, op: &RowOp<'_>) -> bool {
        match op {
            RowOp::Users(_) => self.users.is_some(),
            RowOp::Rooms(_) => self.rooms.is_some(),
            RowOp::Messages(_) => self.messages.is_some(),
        }
    }
}

/// The operations of a run of consecutive `MessageSent` events (nearly all of a chat log),
/// gathered per table and written with one set-based statement each.
#[derive(Default)]
struct Run {
    /// Per room: the newest seq and its position.
    activity: HashMap<Uuid, (i64, i64)>,
    /// Per (room, user): the newest seq.
    cursors: HashMap<(Uuid, Uuid), i64>,
    messages: MessageColumns,
}

/// `messages_view` rows, column-wise.
#[derive(Default)]
struct MessageColumns {
    room_id: Vec<Uuid>,
    seq: Vec<i64>,
    message_id: Vec<Uuid>,
    sender: Vec<Uuid>,
    body: Vec<String>,
    client_msg_id: Vec<String>,
    sent_at: Vec<DateTime<Utc>>,
    position: Vec<i64>,
    reply_to: Vec<Option<i64>>,
}

impl Run {
    fn is_empty(&self) -> bool {
        self.activity.is_empty() && self.cursors.is_empty() && self.messages.seq.is_empty()
    }

    /// Takes `op` into the run if it is one of a run's, else hands it back.
    fn take<'a>(&mut self, op: RowOp<'a>, position: i64) -> Option<RowOp<'a>> {
        match op {
            RowOp::Rooms(RoomsOp::Activity { room, seq }) => {
                let newest = self.activity.entry(room.0).or_insert((0, 0));
                *newest = (newest.0.max(seq.as_i64()), newest.1.max(position));
            }
            RowOp::Rooms(RoomsOp::Cursor {
                room,
                user,
                to: CursorTo::Seq(seq),
            }) => {
                let cursor = self.cursors.entry((room.0, user.0)).or_insert(0);
                *cursor = (*cursor).max(seq.as_i64());
            }
            RowOp::Messages(MessagesOp::Insert {
                room,
                seq,
                message_id,
                sender,
                body,
                client_msg_id,
                sent_at,
                reply_to,
            }) => {
                let m = &mut self.messages;
                m.room_id.push(room.0);
                m.seq.push(seq.as_i64());
                m.message_id.push(message_id.0);
                m.sender.push(sender.0);
                m.body.push(body.to_owned());
                m.client_msg_id.push(client_msg_id.to_owned());
                m.sent_at.push(sent_at);
                m.position.push(position);
                m.reply_to.push(reply_to.map(MessageSeq::as_i64));
            }
            other => return Some(other),
        }
        None
    }
}

/// Applies `events` to the targeted projections' tables: each event's row operations
/// ([`changes`]), runs of message inserts in one statement per table, the rest one by one,
/// in log order.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    targets: Targets,
    events: &[(LogEvent, DecodedEvent)],
) -> Result<(), sqlx::Error> {
    let mut run = Run::default();
    for (log, decoded) in events {
        let position = log.position.0;
        for op in changes(decoded) {
            if !targets.applies(&op) {
                continue;
            }
            if let Some(op) = run.take(op, position) {
                flush(conn, targets, std::mem::take(&mut run)).await?;
                apply_op(conn, targets, op, position).await?;
            }
        }
    }
    flush(conn, targets, run).await
}

async fn flush(conn: &mut PgConnection, targets: Targets, run: Run) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
    }
    if let (Some(tables), false) = (targets.rooms, run.activity.is_empty()) {
        let (ids, (seqs, positions)): (Vec<Uuid>, (Vec<i64>, Vec<i64>)) =
            run.activity.into_iter().unzip();
        sqlx::query(&format!(
            "UPDATE {rooms_view} r
                SET last_seq = GREATEST(r.last_seq, u.seq),
                    last_activity_position = GREATEST(r.last_activity_position, u.position)
               FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS u(room_id, seq, position)
              WHERE r.room_id = u.room_id",
            rooms_view = tables.rooms_view
        ))
        .bind(&ids)
        .bind(&seqs)
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
    }
    if targets.rooms.is_some() && !run.cursors.is_empty() {
        // In key order, so two transactions upserting overlapping cursors (the projector and
        // a rebuild, say) lock the rows in the same order and cannot deadlock on them.
        let mut cursors: Vec<((Uuid, Uuid), i64)> = run.cursors.into_iter().collect();
        cursors.sort_unstable();
        let (keys, seqs): (Vec<(Uuid, Uuid)>, Vec<i64>) = cursors.into_iter().unzip();
        let (rooms, users): (Vec<Uuid>, Vec<Uuid>) = keys.into_iter().unzip();
        sqlx::query(
            "INSERT INTO read_cursors (room_id, user_id, last_read_seq)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[])
             ON CONFLICT (room_id, user_id) DO UPDATE
                SET last_read_seq = GREATEST(read_cursors.last_read_seq, excluded.last_read_seq),
                    updated_at = now()",
        )
        .bind(&rooms)
        .bind(&users)
        .bind(&seqs)
        .execute(&mut *conn)
        .await?;
    }
    if let (Some(tables), false) = (targets.messages, run.messages.seq.is_empty()) {
        let m = run.messages;
        sqlx::query(&format!(
            "INSERT INTO {messages_view}
                    (room_id, seq, message_id, sender, body, client_msg_id, sent_at, position,
                     reply_to)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[],
                                  $5::text[], $6::text[], $7::timestamptz[], $8::bigint[],
                                  $9::bigint[])",
            messages_view = tables.messages_view
        ))
        .bind(&m.room_id)
        .bind(&m.seq)
        .bind(&m.message_id)
        .bind(&m.sender)
        .bind(&m.body)
        .bind(&m.client_msg_id)
        .bind(&m.sent_at)
        .bind(&m.position)
        .bind(&m.reply_to)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// One operation on its own (one that is not part of a run), at `position`.
async fn apply_op(
    conn: &mut PgConnection,
    targets: Targets,
    op: RowOp<'_>,
    position: i64,
) -> Result<(), sqlx::Error> {
    match op {
        RowOp::Users(op) => match targets.users {
            Some(tables) => apply_users(conn, tables, op, position).await,
            None => Ok(()),
        },
        RowOp::Rooms(op) => match targets.rooms {
            Some(tables) => apply_rooms(conn, targets, tables, op, position).await,
            None => Ok(()),
        },
        RowOp::Messages(op) => match targets.messages {
            Some(tables) => apply_messages(conn, targets, tables, op, position).await,
            None => Ok(()),
        },
    }
}

async fn apply_users(
    conn: &mut PgConnection,
    tables: UsersTables,
    op: UsersOp<'_>,
    position: i64,
) -> Result<(), sqlx::Error> {
    let UsersTables {
        users_view,
        user_blocks,
    } = tables;
    let mut sql = None;
    let statement = match op {
        UsersOp::Insert {
            user,
            username,
            password_hash,
            created_at,
        } => sqlx::query(sql.insert(format!(
            "INSERT INTO {users_view} (user_id, username, password_hash, created_at, position)
                 VALUES ($1, $2, $3, $4, $5)"
        )))
        .bind(user.0)
        .bind(username)
        .bind(password_hash)
        .bind(created_at)
        .bind(position),
        UsersOp::GrantRole { user, role } => sqlx::query(sql.insert(format!(
            "UPDATE {users_view} SET roles = array_append(roles, $2)
              WHERE user_id = $1 AND NOT ($2 = ANY (roles))"
        )))
        .bind(user.0)
        .bind(role),
        UsersOp::Erase { user, username } => sqlx::query(sql.insert(format!(
            "UPDATE {users_view} SET username = $2, password_hash = '' WHERE user_id = $1"
        )))
        .bind(user.0)
        .bind(username),
        UsersOp::Block { blocker, blocked } => sqlx::query(sql.insert(format!(
            "INSERT INTO {user_blocks} (blocker, blocked, position) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING"
        )))
        .bind(blocker.0)
        .bind(blocked.0)
        .bind(position),
        UsersOp::Unblock { blocker, blocked } => sqlx::query(sql.insert(format!(
            "DELETE FROM {user_blocks} WHERE blocker = $1 AND blocked = $2"
        )))
        .bind(blocker.0)
        .bind(blocked.0),
    };
    statement.execute(&mut *conn).await.map(drop)
}

async fn apply_rooms(
    conn: &mut PgConnection,
    targets: Targets,
    tables: RoomsTables,
    op: RoomsOp<'_>,
    position: i64,
) -> Result<(), sqlx::Error> {
    let RoomsTables {
        rooms_view,
        room_members,
    } = tables;
    let mut sql = None;
    let statement = match op {
        RoomsOp::Insert {
            room,
            name,
            host,
            created_at,
            visibility,
        } => sqlx::query(sql.insert(format!(
            "INSERT INTO {rooms_view}
                    (room_id, name, host, created_at, last_activity_position, position, visibility)
             VALUES ($1, $2, $3, $4, $5, $5, $6)"
        )))
        .bind(room.0)
        .bind(name)
        .bind(host.0)
        .bind(created_at)
        .bind(position)
        .bind(visibility.as_str()),
        RoomsOp::Update { room, name, topic } => sqlx::query(sql.insert(format!(
            "UPDATE {rooms_view}
                SET name = coalesce($2, name),
                    topic = CASE WHEN $3::text IS NULL THEN topic ELSE nullif($3, '') END
              WHERE room_id = $1"
        )))
        .bind(room.0)
        .bind(name)
        .bind(topic),
        RoomsOp::SetHost { room, host } => sqlx::query(sql.insert(format!(
            "UPDATE {rooms_view} SET host = $2 WHERE room_id = $1"
        )))
        .bind(room.0)
        .bind(host.0),
        RoomsOp::SetMember {
            room,
            user,
            state: MemberState::Banned,
        } => sqlx::query(sql.insert(format!(
            "INSERT INTO {room_members} (room_id, user_id, state, role, position)
                  VALUES ($1, $2, 'banned', 'member', $3)
             ON CONFLICT (room_id, user_id)
               DO UPDATE SET state = 'banned', role = 'member', position = excluded.position"
        )))
        .bind(room.0)
        .bind(user.0)
        .bind(position),
        RoomsOp::SetMember { room, user, state } => sqlx::query(sql.insert(format!(
            "INSERT INTO {room_members} (room_id, user_id, state, position) VALUES ($1, $2, $3, $4)
             ON CONFLICT (room_id, user_id)
               DO UPDATE SET state = excluded.state, position = excluded.position"
        )))
        .bind(room.0)
        .bind(user.0)
        .bind(state.as_str())
        .bind(position),
        RoomsOp::Invite { room, user } => sqlx::query(sql.insert(format!(
            "INSERT INTO {room_members} (room_id, user_id, state, position)
                 VALUES ($1, $2, 'invited', $3) ON CONFLICT DO NOTHING"
        )))
        .bind(room.0)
        .bind(user.0)
        .bind(position),
        RoomsOp::SetRole {
            room,
            user,
            moderator,
        } => sqlx::query(sql.insert(format!(
            "UPDATE {room_members} SET role = $3, position = $4
              WHERE room_id = $1 AND user_id = $2"
        )))
        .bind(room.0)
        .bind(user.0)
        .bind(if moderator { "moderator" } else { "member" })
        .bind(position),
        RoomsOp::RemoveMember {
            room,
            user,
            banned_only,
        } => sqlx::query(sql.insert(format!(
            "DELETE FROM {room_members}
              WHERE room_id = $1 AND user_id = $2 AND (state = 'banned' OR NOT $3)"
        )))
        .bind(room.0)
        .bind(user.0)
        .bind(banned_only),
        RoomsOp::Cursor {
            room,
            user,
            to: CursorTo::RoomLastSeq,
        } => sqlx::query(sql.insert(format!(
            "INSERT INTO read_cursors (room_id, user_id, last_read_seq)
             SELECT room_id, $2, last_seq FROM {rooms_view} WHERE room_id = $1
             ON CONFLICT (room_id, user_id) DO UPDATE
                SET last_read_seq = GREATEST(read_cursors.last_read_seq, excluded.last_read_seq),
                    updated_at = now()"
        )))
        .bind(room.0)
        .bind(user.0),
        op @ (RoomsOp::Activity { .. } | RoomsOp::Cursor { .. }) => {
            return run_of_one(conn, targets, RowOp::Rooms(op), position).await;
        }
    };
    statement.execute(&mut *conn).await.map(drop)
}

async fn apply_messages(
    conn: &mut PgConnection,
    targets: Targets,
    tables: MessagesTables,
    op: MessagesOp<'_>,
    position: i64,
) -> Result<(), sqlx::Error> {
    let messages_view = tables.messages_view;
    let mut sql = None;
    let statement = match op {
        MessagesOp::Edit {
            room,
            seq,
            body,
            edited_at,
        } => sqlx::query(sql.insert(format!(
            "UPDATE {messages_view}
                SET body = $4, edited_at = $5, position = $3, changed = true
              WHERE room_id = $1 AND seq = $2 AND NOT deleted"
        )))
        .bind(room.0)
        .bind(seq.as_i64())
        .bind(position)
        .bind(body)
        .bind(edited_at),
        MessagesOp::Erase { room, seq } => sqlx::query(sql.insert(format!(
            "UPDATE {messages_view}
                SET body = '', deleted = true, reactions = '{{}}', position = $3, changed = true
              WHERE room_id = $1 AND seq = $2"
        )))
        .bind(room.0)
        .bind(seq.as_i64())
        .bind(position),
        MessagesOp::EraseSender { sender } => sqlx::query(sql.insert(format!(
            "UPDATE {messages_view}
                SET body = '', deleted = true, reactions = '{{}}', changed = true, position = $2
              WHERE sender = $1"
        )))
        .bind(sender.0)
        .bind(position),
        MessagesOp::React {
            room,
            seq,
            emoji,
            user,
        } => sqlx::query(sql.insert(format!(
            "UPDATE {messages_view}
                SET reactions = jsonb_set(reactions, ARRAY[$4],
                                          coalesce(reactions -> $4, '[]') || to_jsonb($5::text)),
                    position = $3, changed = true
              WHERE room_id = $1 AND seq = $2
                AND NOT coalesce(reactions -> $4, '[]') @> to_jsonb($5::text)"
        )))
        .bind(room.0)
        .bind(seq.as_i64())
        .bind(position)
        .bind(emoji)
        .bind(user.to_string()),
        MessagesOp::Unreact {
            room,
            seq,
            emoji,
            user,
        } => sqlx::query(sql.insert(format!(
            "UPDATE {messages_view}
                SET reactions = CASE WHEN (reactions -> $4) - $5 = '[]' THEN reactions - $4
                                     ELSE jsonb_set(reactions, ARRAY[$4], (reactions -> $4) - $5)
                                END,
                    position = $3, changed = true
              WHERE room_id = $1 AND seq = $2 AND reactions -> $4 @> to_jsonb($5::text)"
        )))
        .bind(room.0)
        .bind(seq.as_i64())
        .bind(position)
        .bind(emoji)
        .bind(user.to_string()),
        op @ MessagesOp::Insert { .. } => {
            return run_of_one(conn, targets, RowOp::Messages(op), position).await;
        }
    };
    statement.execute(&mut *conn).await.map(drop)
}

/// An operation that is written as part of a run, written on its own.
async fn run_of_one(
    conn: &mut PgConnection,
    targets: Targets,
    op: RowOp<'_>,
    position: i64,
) -> Result<(), sqlx::Error> {
    let mut run = Run::default();
    match run.take(op, position) {
        None => flush(conn, targets, run).await,
        // Not a run's operation: never the case for the ones handed here.
        Some(op) => Box::pin(apply_op(conn, targets, op, position)).await,
    }
}

/// The live tables each projection owns (emptied by a reset). `read_cursors` is nobody's.
pub(crate) fn tables_of(projection: &str) -> Vec<&'static str> {
    Projection::parse(projection)
        .map(|p| p.tables().iter().map(|(live, _)| *live).collect())
        .unwrap_or_default()
}
