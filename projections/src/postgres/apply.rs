//! How each projection applies events to its tables, inside the projector's transaction.
//!
//! Runs of `MessageSent` (nearly all of a chat log) are applied with one set-based statement
//! per table; other events one by one, in log order.
//!
//! Every statement names its tables through [`Targets`], so the same code feeds the live read
//! models and a rebuild's shadow copies (see `rebuild.rs`). `read_cursors` is the exception:
//! it belongs to no projection (markRead writes it too), is never shadowed, and the rooms
//! projection only ever moves a cursor forward (`GREATEST`), which makes replaying into it
//! harmless.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parley_domain::{RoomEvent, RoomRole, UserEvent};
use sqlx::PgConnection;
use uuid::Uuid;

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

/// Column-wise buffer of consecutive `MessageSent` events.
#[derive(Default)]
struct MessageRun {
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

impl MessageRun {
    fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

pub(crate) async fn apply(
    conn: &mut PgConnection,
    targets: Targets,
    events: &[(LogEvent, DecodedEvent)],
) -> Result<(), sqlx::Error> {
    let mut run = MessageRun::default();
    for (log, decoded) in events {
        if let DecodedEvent::Room(
            room,
            RoomEvent::MessageSent {
                message_id,
                seq,
                sender,
                body,
                client_msg_id,
                sent_at,
                reply_to,
            },
        ) = decoded
        {
            run.reply_to.push(reply_to.map(|seq| seq.0 as i64));
            run.room_id.push(room.0);
            run.seq.push(seq.0 as i64);
            run.message_id.push(message_id.0);
            run.sender.push(sender.0);
            run.body.push(body.as_str().to_owned());
            run.client_msg_id.push(client_msg_id.as_str().to_owned());
            run.sent_at.push(*sent_at);
            run.position.push(log.position.0);
            continue;
        }
        flush(conn, targets, std::mem::take(&mut run)).await?;
        apply_one(conn, targets, log, decoded).await?;
    }
    flush(conn, targets, run).await
}

async fn flush(
    conn: &mut PgConnection,
    targets: Targets,
    run: MessageRun,
) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
    }
    if let Some(tables) = targets.rooms {
        // Per room: the newest seq and its position. Per (room, sender): the newest seq, which
        // the sender has evidently read.
        let mut rooms: HashMap<Uuid, (i64, i64)> = HashMap::new();
        let mut cursors: HashMap<(Uuid, Uuid), i64> = HashMap::new();
        for i in 0..run.seq.len() {
            let room = rooms.entry(run.room_id[i]).or_insert((0, 0));
            *room = (room.0.max(run.seq[i]), room.1.max(run.position[i]));
            let cursor = cursors.entry((run.room_id[i], run.sender[i])).or_insert(0);
            *cursor = (*cursor).max(run.seq[i]);
        }
        let (ids, (seqs, positions)): (Vec<Uuid>, (Vec<i64>, Vec<i64>)) = rooms.into_iter().unzip();
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
        // In key order, so two transactions upserting overlapping cursors (the projector and
        // a rebuild, say) lock the rows in the same order and cannot deadlock on them.
        let mut cursors: Vec<((Uuid, Uuid), i64)> = cursors.into_iter().collect();
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
    if let Some(tables) = targets.messages {
        sqlx::query(&format!(
            "INSERT INTO {messages_view}
                    (room_id, seq, message_id, sender, body, client_msg_id, sent_at, position,
                     reply_to)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[],
                                  $5::text[], $6::text[], $7::timestamptz[], $8::bigint[],
                                  $9::bigint[])",
            messages_view = tables.messages_view
        ))
        .bind(&run.room_id)
        .bind(&run.seq)
        .bind(&run.message_id)
        .bind(&run.sender)
        .bind(&run.body)
        .bind(&run.client_msg_id)
        .bind(&run.sent_at)
        .bind(&run.position)
        .bind(&run.reply_to)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn apply_one(
    conn: &mut PgConnection,
    targets: Targets,
    log: &LogEvent,
    decoded: &DecodedEvent,
) -> Result<(), sqlx::Error> {
    let position = log.position.0;
    match decoded {
        DecodedEvent::User(user, event) => {
            if let Some(tables) = targets.users {
                apply_user(conn, tables, *user, event, position).await?;
            }
            if let (Some(tables), UserEvent::UserErased { .. }) = (targets.messages, event) {
                // Their text is gone from the log already (erased in this event's statement).
                sqlx::query(&format!(
                    "UPDATE {messages_view}
                        SET body = '', deleted = true, reactions = '{{}}', changed = true,
                            position = $2
                      WHERE sender = $1",
                    messages_view = tables.messages_view
                ))
                .bind(user.0)
                .bind(position)
                .execute(&mut *conn)
                .await?;
            }
        }
        DecodedEvent::Room(room, event) => {
            if let Some(tables) = targets.rooms {
                apply_room(conn, tables, *room, event, position).await?;
            }
            if let Some(tables) = targets.messages {
                apply_message_change(conn, tables, *room, event, position).await?;
            }
        }
        DecodedEvent::Unknown => {}
    }
    Ok(())
}

async fn apply_user(
    conn: &mut PgConnection,
    tables: UsersTables,
    user: parley_domain::UserId,
    event: &UserEvent,
    position: i64,
) -> Result<(), sqlx::Error> {
    match event {
        UserEvent::UserRegistered {
            username,
            password_hash,
            registered_at,
            ..
        } => {
            sqlx::query(&format!(
                "INSERT INTO {users_view} (user_id, username, password_hash, created_at, position)
                     VALUES ($1, $2, $3, $4, $5)",
                users_view = tables.users_view
            ))
            .bind(user.0)
            .bind(username.as_str())
            .bind(password_hash)
            .bind(registered_at)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::RoleGranted { role } => {
            sqlx::query(&format!(
                "UPDATE {users_view} SET roles = array_append(roles, $2)
                      WHERE user_id = $1 AND NOT ($2 = ANY (roles))",
                users_view = tables.users_view
            ))
            .bind(user.0)
            .bind(role.as_str())
            .execute(&mut *conn)
            .await?;
        }
        // Announcements live only in the log and the live path.
        UserEvent::AnnouncementMade { .. } => {}
        UserEvent::UserErased { .. } => {
            sqlx::query(&format!(
                "UPDATE {users_view} SET username = $2, password_hash = '' WHERE user_id = $1",
                users_view = tables.users_view
            ))
            .bind(user.0)
            .bind(crate::erasure::erased_username(user))
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::UserBlocked { user_id } => {
            sqlx::query(&format!(
                "INSERT INTO {user_blocks} (blocker, blocked, position) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                user_blocks = tables.user_blocks
            ))
            .bind(user.0)
            .bind(user_id.0)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::UserUnblocked { user_id } => {
            sqlx::query(&format!(
                "DELETE FROM {user_blocks} WHERE blocker = $1 AND blocked = $2",
                user_blocks = tables.user_blocks
            ))
            .bind(user.0)
            .bind(user_id.0)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn apply_room(
    conn: &mut PgConnection,
    tables: RoomsTables,
    room: parley_domain::RoomId,
    event: &RoomEvent,
    position: i64,
) -> Result<(), sqlx::Error> {
    match event {
        RoomEvent::RoomCreated {
            name,
            host,
            created_at,
            visibility,
            ..
        } => {
            sqlx::query(&format!(
                    "INSERT INTO {rooms_view} (room_id, name, host, created_at, last_activity_position, position, visibility)
                     VALUES ($1, $2, $3, $4, $5, $5, $6)",
                    rooms_view = tables.rooms_view
                ))
                .bind(room.0)
                .bind(name.as_str())
                .bind(host.0)
                .bind(created_at)
                .bind(position)
                .bind(visibility.as_str())
                .execute(&mut *conn)
                .await?;
            set_member_state(conn, tables, room.0, host.0, "member", position).await?;
        }
        RoomEvent::RoomUpdated { name, topic, .. } => {
            sqlx::query(&format!(
                "UPDATE {rooms_view}
                    SET name = coalesce($2, name),
                        topic = CASE WHEN $3::text IS NULL THEN topic ELSE nullif($3, '') END
                  WHERE room_id = $1",
                rooms_view = tables.rooms_view
            ))
            .bind(room.0)
            .bind(name.as_ref().map(|n| n.as_str()))
            .bind(topic.as_ref().map(|t| t.as_str()))
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MemberInvited { user_id, .. } => {
            sqlx::query(&format!(
                "INSERT INTO {room_members} (room_id, user_id, state, position)
                     VALUES ($1, $2, 'invited', $3) ON CONFLICT DO NOTHING",
                room_members = tables.room_members
            ))
            .bind(room.0)
            .bind(user_id.0)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MemberJoined { user_id } => {
            set_member_state(conn, tables, room.0, user_id.0, "member", position).await?;
            // A new member has nothing unread from before they joined. Read from this
            // projection's own rooms table: a replay into shadows must see the room as it
            // was at this event, not as it is live.
            sqlx::query(&format!(
                    "INSERT INTO read_cursors (room_id, user_id, last_read_seq)
                     SELECT room_id, $2, last_seq FROM {rooms_view} WHERE room_id = $1
                     ON CONFLICT (room_id, user_id) DO UPDATE
                        SET last_read_seq = GREATEST(read_cursors.last_read_seq, excluded.last_read_seq),
                            updated_at = now()",
                    rooms_view = tables.rooms_view
                ))
                .bind(room.0)
                .bind(user_id.0)
                .execute(&mut *conn)
                .await?;
        }
        RoomEvent::MemberRoleChanged { user_id, role, .. } => {
            if *role == RoomRole::Host {
                sqlx::query(&format!(
                    "UPDATE {rooms_view} SET host = $2 WHERE room_id = $1",
                    rooms_view = tables.rooms_view
                ))
                .bind(room.0)
                .bind(user_id.0)
                .execute(&mut *conn)
                .await?;
            }
            // The host's own row says `member`: the host is `rooms_view.host`.
            let column = if *role == RoomRole::Moderator {
                "moderator"
            } else {
                "member"
            };
            sqlx::query(&format!(
                "UPDATE {room_members} SET role = $3, position = $4
                  WHERE room_id = $1 AND user_id = $2",
                room_members = tables.room_members
            ))
            .bind(room.0)
            .bind(user_id.0)
            .bind(column)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MemberBanned { user_id, .. } => {
            sqlx::query(&format!(
                "INSERT INTO {room_members} (room_id, user_id, state, role, position)
                      VALUES ($1, $2, 'banned', 'member', $3)
                 ON CONFLICT (room_id, user_id)
                   DO UPDATE SET state = 'banned', role = 'member', position = excluded.position",
                room_members = tables.room_members
            ))
            .bind(room.0)
            .bind(user_id.0)
            .bind(position)
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MemberUnbanned { user_id, .. } => {
            sqlx::query(&format!(
                "DELETE FROM {room_members} WHERE room_id = $1 AND user_id = $2 AND state = 'banned'",
                room_members = tables.room_members
            ))
            .bind(room.0)
            .bind(user_id.0)
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MemberLeft { user_id } | RoomEvent::MemberKicked { user_id, .. } => {
            sqlx::query(&format!(
                "DELETE FROM {room_members} WHERE room_id = $1 AND user_id = $2",
                room_members = tables.room_members
            ))
            .bind(room.0)
            .bind(user_id.0)
            .execute(&mut *conn)
            .await?;
        }
        RoomEvent::MessageSent { .. }
        | RoomEvent::MessageEdited { .. }
        | RoomEvent::MessageDeleted { .. }
        | RoomEvent::ReactionAdded { .. }
        | RoomEvent::ReactionRemoved { .. } => {}
    }
    Ok(())
}

/// Edits, deletions and reactions of a message already in the history.
async fn apply_message_change(
    conn: &mut PgConnection,
    tables: MessagesTables,
    room: parley_domain::RoomId,
    event: &RoomEvent,
    position: i64,
) -> Result<(), sqlx::Error> {
    let messages_view = tables.messages_view;
    // $1 room, $2 seq, $3 position; the rest per change.
    match event {
        RoomEvent::MessageEdited {
            seq,
            body,
            edited_at,
            ..
        } => {
            sqlx::query(&format!(
                "UPDATE {messages_view}
                    SET body = $4, edited_at = $5, position = $3, changed = true
                  WHERE room_id = $1 AND seq = $2 AND NOT deleted"
            ))
            .bind(room.0)
            .bind(seq.0 as i64)
            .bind(position)
            .bind(body.as_str())
            .bind(edited_at)
            .execute(&mut *conn)
            .await?
        }
        // The text is gone from the log already (erased in the deletion's transaction).
        RoomEvent::MessageDeleted { seq, .. } => {
            sqlx::query(&format!(
                "UPDATE {messages_view}
                    SET body = '', deleted = true, reactions = '{{}}', position = $3, changed = true
                  WHERE room_id = $1 AND seq = $2"
            ))
            .bind(room.0)
            .bind(seq.0 as i64)
            .bind(position)
            .execute(&mut *conn)
            .await?
        }
        RoomEvent::ReactionAdded {
            seq,
            user_id,
            emoji,
        } => {
            sqlx::query(&format!(
                "UPDATE {messages_view}
                    SET reactions = jsonb_set(reactions, ARRAY[$4],
                                              coalesce(reactions -> $4, '[]') || to_jsonb($5::text)),
                        position = $3, changed = true
                  WHERE room_id = $1 AND seq = $2
                    AND NOT coalesce(reactions -> $4, '[]') @> to_jsonb($5::text)"
            ))
            .bind(room.0)
            .bind(seq.0 as i64)
            .bind(position)
            .bind(emoji.as_str())
            .bind(user_id.to_string())
            .execute(&mut *conn)
            .await?
        }
        RoomEvent::ReactionRemoved {
            seq,
            user_id,
            emoji,
        } => {
            sqlx::query(&format!(
                "UPDATE {messages_view}
                    SET reactions = CASE WHEN (reactions -> $4) - $5 = '[]' THEN reactions - $4
                                         ELSE jsonb_set(reactions, ARRAY[$4], (reactions -> $4) - $5)
                                    END,
                        position = $3, changed = true
                  WHERE room_id = $1 AND seq = $2 AND reactions -> $4 @> to_jsonb($5::text)"
            ))
            .bind(room.0)
            .bind(seq.0 as i64)
            .bind(position)
            .bind(emoji.as_str())
            .bind(user_id.to_string())
            .execute(&mut *conn)
            .await?
        }
        _ => return Ok(()),
    };
    Ok(())
}

async fn set_member_state(
    conn: &mut PgConnection,
    tables: RoomsTables,
    room: Uuid,
    user: Uuid,
    state: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO {room_members} (room_id, user_id, state, position) VALUES ($1, $2, $3, $4)
         ON CONFLICT (room_id, user_id) DO UPDATE SET state = excluded.state, position = excluded.position",
        room_members = tables.room_members
    ))
    .bind(room)
    .bind(user)
    .bind(state)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The live tables each projection owns (emptied by a reset). `read_cursors` is nobody's.
pub(crate) fn tables_of(projection: &str) -> Vec<&'static str> {
    Projection::parse(projection)
        .map(|p| p.tables().iter().map(|(live, _)| *live).collect())
        .unwrap_or_default()
}
