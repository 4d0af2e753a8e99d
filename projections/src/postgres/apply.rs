//! How each projection applies events to its tables, inside the projector's transaction.
//!
//! Runs of `MessageSent` (nearly all of a chat log) are applied with one set-based statement
//! per table; other events one by one, in log order.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use parley_domain::{RoomEvent, UserEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::log::{DecodedEvent, LogEvent};

/// Which projections a batch is applied to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Targets {
    pub users: bool,
    pub rooms: bool,
    pub messages: bool,
}

impl Targets {
    pub fn of(names: &[&str]) -> Self {
        Self {
            users: names.contains(&"users"),
            rooms: names.contains(&"rooms"),
            messages: names.contains(&"messages"),
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
            },
        ) = decoded
        {
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
    if targets.rooms {
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
        sqlx::query(
            "UPDATE rooms_view r
                SET last_seq = GREATEST(r.last_seq, u.seq),
                    last_activity_position = GREATEST(r.last_activity_position, u.position)
               FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS u(room_id, seq, position)
              WHERE r.room_id = u.room_id",
        )
        .bind(&ids)
        .bind(&seqs)
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
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
    if targets.messages {
        sqlx::query(
            "INSERT INTO messages_view
                    (room_id, seq, message_id, sender, body, client_msg_id, sent_at, position)
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::uuid[],
                                  $5::text[], $6::text[], $7::timestamptz[], $8::bigint[])",
        )
        .bind(&run.room_id)
        .bind(&run.seq)
        .bind(&run.message_id)
        .bind(&run.sender)
        .bind(&run.body)
        .bind(&run.client_msg_id)
        .bind(&run.sent_at)
        .bind(&run.position)
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
        DecodedEvent::User(user, event) if targets.users => match event {
            UserEvent::UserRegistered {
                username,
                password_hash,
                registered_at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO users_view (user_id, username, password_hash, created_at, position)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(user.0)
                .bind(username.as_str())
                .bind(password_hash)
                .bind(registered_at)
                .bind(position)
                .execute(&mut *conn)
                .await?;
            }
            UserEvent::RoleGranted { role } => {
                sqlx::query(
                    "UPDATE users_view SET roles = array_append(roles, $2)
                      WHERE user_id = $1 AND NOT ($2 = ANY (roles))",
                )
                .bind(user.0)
                .bind(role.as_str())
                .execute(&mut *conn)
                .await?;
            }
        },
        DecodedEvent::Room(room, event) if targets.rooms => match event {
            RoomEvent::RoomCreated {
                name,
                host,
                created_at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO rooms_view (room_id, name, host, created_at, last_activity_position, position)
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(room.0)
                .bind(name.as_str())
                .bind(host.0)
                .bind(created_at)
                .bind(position)
                .execute(&mut *conn)
                .await?;
                set_member_state(conn, room.0, host.0, "member", position).await?;
            }
            RoomEvent::MemberInvited { user_id, .. } => {
                sqlx::query(
                    "INSERT INTO room_members (room_id, user_id, state, position)
                     VALUES ($1, $2, 'invited', $3) ON CONFLICT DO NOTHING",
                )
                .bind(room.0)
                .bind(user_id.0)
                .bind(position)
                .execute(&mut *conn)
                .await?;
            }
            RoomEvent::MemberJoined { user_id } => {
                set_member_state(conn, room.0, user_id.0, "member", position).await?;
                // A new member has nothing unread from before they joined.
                sqlx::query(
                    "INSERT INTO read_cursors (room_id, user_id, last_read_seq)
                     SELECT room_id, $2, last_seq FROM rooms_view WHERE room_id = $1
                     ON CONFLICT (room_id, user_id) DO UPDATE
                        SET last_read_seq = GREATEST(read_cursors.last_read_seq, excluded.last_read_seq),
                            updated_at = now()",
                )
                .bind(room.0)
                .bind(user_id.0)
                .execute(&mut *conn)
                .await?;
            }
            RoomEvent::MemberLeft { user_id } => {
                sqlx::query("DELETE FROM room_members WHERE room_id = $1 AND user_id = $2")
                    .bind(room.0)
                    .bind(user_id.0)
                    .execute(&mut *conn)
                    .await?;
            }
            RoomEvent::MessageSent { .. } => {}
        },
        _ => {}
    }
    Ok(())
}

async fn set_member_state(
    conn: &mut PgConnection,
    room: Uuid,
    user: Uuid,
    state: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO room_members (room_id, user_id, state, position) VALUES ($1, $2, $3, $4)
         ON CONFLICT (room_id, user_id) DO UPDATE SET state = excluded.state, position = excluded.position",
    )
    .bind(room)
    .bind(user)
    .bind(state)
    .bind(position)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The tables each projection owns (truncated by a rebuild). `read_cursors` is nobody's.
pub(crate) fn tables_of(projection: &str) -> &'static [&'static str] {
    match projection {
        "users" => &["users_view"],
        "rooms" => &["rooms_view", "room_members"],
        "messages" => &["messages_view"],
        _ => &[],
    }
}
