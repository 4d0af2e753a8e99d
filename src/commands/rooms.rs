//! Room commands: create, join, leave, send, edit, delete and react to messages.

use chrono::Utc;
use cqrs_es::EventEnvelope;
use parley_domain::{
    ClientMsgId, MessageId, Room, RoomCommand, RoomError, RoomEvent, RoomId, UserId,
};

use super::batch::{Batched, Collision};
use super::{execute, CommandBus, CommandError, CommandMeta, SentMessage};

impl Batched for Room {
    fn on_unique_collision(command: &RoomCommand) -> Collision<RoomError> {
        match command {
            // The one unique key a room's events carry: (room, sender, clientMsgId).
            RoomCommand::SendMessage { .. } => Collision::AlreadyDone,
            // No other room event has a unique key; an unchanged room cannot collide.
            _ => Collision::Refused(RoomError::RoomAlreadyExists),
        }
    }
}

impl CommandBus {
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
        execute(&self.rooms, room_id.to_string(), command, meta).await?;
        Ok(room_id)
    }

    pub async fn join_room(
        &self,
        room: RoomId,
        user: UserId,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<RoomError>> {
        let command = RoomCommand::JoinRoom { user };
        execute(&self.rooms, room.to_string(), command, meta).await?;
        Ok(())
    }

    pub async fn leave_room(
        &self,
        room: RoomId,
        user: UserId,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<RoomError>> {
        let command = RoomCommand::LeaveRoom { user };
        execute(&self.rooms, room.to_string(), command, meta).await?;
        Ok(())
    }

    /// The host renames the room and/or sets its topic (`""` clears it). Returns the change's
    /// position (0 when nothing changed).
    pub async fn update_room(
        &self,
        room: RoomId,
        by: UserId,
        name: Option<String>,
        topic: Option<String>,
        meta: &CommandMeta,
    ) -> Result<i64, CommandError<RoomError>> {
        let command = RoomCommand::UpdateRoom { by, name, topic };
        Ok(execute(&self.rooms, room.to_string(), command, meta)
            .await?
            .position)
    }

    /// Member `by` invites `user` (a `MEMBER_INVITED` notice to the room and to them).
    pub async fn invite(
        &self,
        room: RoomId,
        by: UserId,
        user: UserId,
        meta: &CommandMeta,
    ) -> Result<(), CommandError<RoomError>> {
        let command = RoomCommand::Invite { by, user };
        execute(&self.rooms, room.to_string(), command, meta).await?;
        Ok(())
    }

    /// Sends a message and returns it as stored, once it is durable. Repeating a
    /// `clientMsgId` (in the same batch, concurrently on another instance, much later, or
    /// after a restart) returns the original: the room remembers recent ones, and the
    /// store's unique key on (room, sender, clientMsgId) catches any other.
    pub async fn send_message(
        &self,
        room: RoomId,
        sender: UserId,
        body: &str,
        client_msg_id: &str,
        meta: &CommandMeta,
    ) -> Result<SentMessage, CommandError<RoomError>> {
        self.send_reply(room, sender, body, client_msg_id, None, meta)
            .await
    }

    /// [`Self::send_message`], answering message `reply_to` of the same room.
    pub async fn send_reply(
        &self,
        room: RoomId,
        sender: UserId,
        body: &str,
        client_msg_id: &str,
        reply_to: Option<u64>,
        meta: &CommandMeta,
    ) -> Result<SentMessage, CommandError<RoomError>> {
        let message_id = MessageId::new();
        let command = RoomCommand::SendMessage {
            message_id,
            sender,
            body: body.to_owned(),
            client_msg_id: client_msg_id.to_owned(),
            reply_to,
            sent_at: Utc::now(),
        };
        let committed = execute(&self.rooms, room.to_string(), command, meta).await?;
        if let Some(envelope) = committed.events.into_iter().next() {
            return sent_message(room, envelope.payload, committed.position, false)
                .ok_or_else(|| CommandError::Store("a send stored no message".to_owned()));
        }
        // No new event: this clientMsgId was used before, and the original is committed.
        let client_msg_id = ClientMsgId::parse(client_msg_id)
            .map_err(|e| CommandError::Store(format!("validated value rejected: {e}")))?;
        let stored = self
            .log
            .find_message(room, sender, &client_msg_id)
            .await
            .map_err(|e| CommandError::Store(e.to_string()))?
            .ok_or_else(|| {
                CommandError::Store("a repeated clientMsgId has no stored message".to_owned())
            })?;
        let position = stored.1;
        let envelope = EventEnvelope::<Room>::try_from(stored.0)
            .map_err(|e| CommandError::Store(e.to_string()))?;
        sent_message(room, envelope.payload, position, true)
            .ok_or_else(|| CommandError::Store("stored event is not a message".to_owned()))
    }
}

/// A change of an existing message, by the user who asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageChange {
    /// A new body (the sender only).
    Edit(String),
    /// Delete it and erase its text (the sender, or the room's host).
    Delete,
    /// Add (`true`) or take back a reaction.
    React(String, bool),
}

impl CommandBus {
    /// Applies `change` to message `seq` of `room` as `user`. Returns the change's position,
    /// 0 when it changed nothing (a repeated reaction).
    pub async fn change_message(
        &self,
        room: RoomId,
        user: UserId,
        seq: u64,
        change: MessageChange,
        meta: &CommandMeta,
    ) -> Result<i64, CommandError<RoomError>> {
        let command = match change {
            MessageChange::Edit(body) => RoomCommand::EditMessage {
                editor: user,
                seq,
                body,
                edited_at: Utc::now(),
            },
            MessageChange::Delete => RoomCommand::DeleteMessage {
                by: user,
                seq,
                deleted_at: Utc::now(),
            },
            MessageChange::React(emoji, true) => RoomCommand::React { user, seq, emoji },
            MessageChange::React(emoji, false) => RoomCommand::Unreact { user, seq, emoji },
        };
        Ok(execute(&self.rooms, room.to_string(), command, meta)
            .await?
            .position)
    }
}

/// The message a stored event holds.
fn sent_message(
    room_id: RoomId,
    event: RoomEvent,
    position: i64,
    repeated: bool,
) -> Option<SentMessage> {
    match event {
        RoomEvent::MessageSent {
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to,
        } => Some(SentMessage {
            room_id,
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            position,
            repeated,
            reply_to,
        }),
        _ => None,
    }
}
