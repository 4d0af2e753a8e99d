//! Room commands: create (public, private, direct), join, leave, invite, moderate (roles,
//! kicks, bans), send, edit, delete and react to messages.

use chrono::Utc;
use cqrs_es::EventEnvelope;
use parley_domain::{
    ClientMsgId, MessageId, MessageSeq, Room, RoomCommand, RoomError, RoomEvent, RoomId, RoomRole,
    RoomVisibility, UserId,
};
use parley_projections::GlobalPosition;

use super::batch::{Batched, Collision};
use super::{execute, CommandBus, CommandError, CommandMeta, SentMessage, StoreError};

impl Batched for Room {
    fn on_unique_collision(command: &RoomCommand) -> Collision<RoomError> {
        match command {
            // The one unique key a room's events carry: (room, sender, clientMsgId).
            RoomCommand::SendMessage { .. } => Collision::AlreadyDone,
            // No other room event has a unique key; an unchanged room cannot collide. (Two
            // instances opening one direct room collide on the room's first sequence: the
            // room changed, so the loser runs again on it and finds it open.)
            _ => Collision::Refused(RoomError::RoomAlreadyExists),
        }
    }
}

impl CommandBus {
    /// Opens a PUBLIC room hosted by `host`, inviting `participants`.
    pub async fn create_room(
        &self,
        host: UserId,
        name: &str,
        participants: Vec<UserId>,
        meta: &CommandMeta,
    ) -> Result<RoomId, CommandError<RoomError>> {
        self.create_room_with(host, name, participants, RoomVisibility::Public, meta)
            .await
    }

    /// Opens a room of the given visibility (PUBLIC or PRIVATE).
    pub async fn create_room_with(
        &self,
        host: UserId,
        name: &str,
        participants: Vec<UserId>,
        visibility: RoomVisibility,
        meta: &CommandMeta,
    ) -> Result<RoomId, CommandError<RoomError>> {
        let room_id = RoomId::new();
        let command = RoomCommand::CreateRoom {
            room_id,
            host,
            name: name.to_owned(),
            participants,
            visibility,
            created_at: Utc::now(),
        };
        execute(&self.rooms, room_id.to_string(), command, meta).await?;
        Ok(room_id)
    }

    /// Opens the direct room of `by` and `peer` (creating it the first time, bringing `by`
    /// back if they left) and returns its id: the same for either of them, every time.
    /// Returns the position to wait on before reading it (0 when nothing changed).
    pub async fn open_direct(
        &self,
        by: UserId,
        peer: UserId,
        meta: &CommandMeta,
    ) -> Result<(RoomId, GlobalPosition), CommandError<RoomError>> {
        let room_id = RoomId::direct(by, peer);
        let command = RoomCommand::OpenDirect {
            room_id,
            by,
            peer,
            opened_at: Utc::now(),
        };
        let committed = execute(&self.rooms, room_id.to_string(), command, meta).await?;
        Ok((room_id, committed.position))
    }

    /// A moderation step by `by` on `room`. Returns its position (0 when nothing changed).
    pub async fn moderate(
        &self,
        room: RoomId,
        by: UserId,
        action: Moderation,
        meta: &CommandMeta,
    ) -> Result<GlobalPosition, CommandError<RoomError>> {
        let command = match action {
            Moderation::SetRole(user, role) => RoomCommand::SetRole { by, user, role },
            Moderation::Kick(user) => RoomCommand::Kick { by, user },
            Moderation::Ban(user, reason) => RoomCommand::Ban { by, user, reason },
            Moderation::Unban(user) => RoomCommand::Unban { by, user },
        };
        Ok(execute(&self.rooms, room.to_string(), command, meta)
            .await?
            .position)
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
    ) -> Result<GlobalPosition, CommandError<RoomError>> {
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
        reply_to: Option<MessageSeq>,
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
            return sent_message(room, envelope.payload, committed.position, false).ok_or(
                CommandError::Store(StoreError::Defect("a send stored no message")),
            );
        }
        // No new event: this clientMsgId was used before, and the original is committed.
        let client_msg_id = ClientMsgId::parse(client_msg_id).map_err(|_| {
            CommandError::Store(StoreError::Defect("a validated clientMsgId was rejected"))
        })?;
        let stored = self
            .log
            .find_message(room, sender, &client_msg_id)
            .await
            .map_err(StoreError::log)?
            .ok_or(CommandError::Store(StoreError::Defect(
                "a repeated clientMsgId has no stored message",
            )))?;
        let position = stored.1;
        let envelope = EventEnvelope::<Room>::try_from(stored.0).map_err(StoreError::log)?;
        sent_message(room, envelope.payload, position, true).ok_or(CommandError::Store(
            StoreError::Defect("the stored event is not a message"),
        ))
    }
}

/// What a host or moderator does to a user of their room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moderation {
    /// Give a member a role (the host only; HOST hands the room over).
    SetRole(UserId, RoomRole),
    /// Remove a member, who may join again.
    Kick(UserId),
    /// Remove a user and keep them out, with an optional reason.
    Ban(UserId, Option<String>),
    /// Let a banned user join again.
    Unban(UserId),
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
        seq: MessageSeq,
        change: MessageChange,
        meta: &CommandMeta,
    ) -> Result<GlobalPosition, CommandError<RoomError>> {
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
    position: GlobalPosition,
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
