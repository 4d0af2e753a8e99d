//! The `Room` aggregate: creation, visibility (public, private, direct), membership, roles and
//! moderation (kick, ban), messages and their changes (edits, deletions, reactions).
//!
//! Who may do what:
//! - a PUBLIC room: any signed-in user may join; any member may invite;
//! - a PRIVATE room: only invited users may join; the host and moderators invite;
//! - a DIRECT room: the one room of two users ([`RoomId::direct`]), opened by either of them
//!   ([`RoomCommand::OpenDirect`]); nobody else joins, and nobody moderates;
//! - the host (one per room, who may hand it over) sets roles; the host and moderators rename
//!   the room, kick, ban and unban members who rank below them, and delete anyone's message;
//!   every power needs the holder to be a member;
//! - a banned user cannot join or be invited until unbanned.
//!
//! State stays small whatever a room's history: the member and invitee sets, the last `seq`,
//! a bounded window of recent `(sender, clientMsgId)` pairs, the seqs of deleted messages and
//! the reactions that stand. Message bodies live only in events and read models; the sender
//! of a message older than the window comes from [`RoomServices::message_sender`].
//!
//! A `clientMsgId` older than the window is new as far as the room knows: the event store's
//! unique key on (room, sender, clientMsgId) refuses the second message, and the command
//! layer answers with the original, so "one message per clientMsgId" holds forever without
//! a lookup on every send.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, MessageSeq, RoomId, UserId};
use crate::services::MessageFacts;
use crate::services::{RoomServices, ServiceError};
use crate::values::{BanReason, ClientMsgId, Emoji, MessageBody, RoomName, RoomTopic, ValueError};
use crate::EVENT_VERSION;

/// How many recent `(sender, clientMsgId)` pairs a room remembers in its own state.
pub const IDEMPOTENCY_WINDOW: usize = 256;

/// How many users one `CreateRoom` may invite.
pub const MAX_PARTICIPANTS: usize = 100;

/// The name every direct room has. Not the two usernames: a name is part of an event, and a
/// username must be erasable.
pub const DIRECT_ROOM_NAME: &str = "Direct";

/// Who may join a room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomVisibility {
    /// Any signed-in user may join by id.
    #[default]
    Public,
    /// Only invited users may join.
    Private,
    /// The one room of two users; nobody else joins.
    Direct,
}

impl RoomVisibility {
    /// Whether this is the default (events of public rooms leave the field out).
    pub fn is_public(&self) -> bool {
        *self == Self::Public
    }

    /// The lower-case name stored in read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Direct => "direct",
        }
    }

    /// Parses [`Self::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "private" => Some(Self::Private),
            "direct" => Some(Self::Direct),
            _ => None,
        }
    }
}

/// A member's standing in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomRole {
    /// The one who runs the room: sets roles, and moderates.
    Host,
    /// Renames the room, kicks, bans and unbans members, deletes messages.
    Moderator,
    Member,
}

impl RoomRole {
    /// The role of a member of a room of `visibility`: both users of a direct room are
    /// plain members; otherwise the host, a moderator or a member. (The room aggregate and
    /// the read model's view of a room both answer `role(user)` with this.)
    pub fn of_member(visibility: RoomVisibility, is_host: bool, is_moderator: bool) -> Self {
        match visibility {
            RoomVisibility::Direct => Self::Member,
            _ if is_host => Self::Host,
            _ if is_moderator => Self::Moderator,
            _ => Self::Member,
        }
    }

    /// Whether this role holds moderator powers.
    pub fn moderates(self) -> bool {
        matches!(self, Self::Host | Self::Moderator)
    }

    /// The lower-case name stored in read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Moderator => "moderator",
            Self::Member => "member",
        }
    }
}

/// Commands the `Room` aggregate accepts.
#[derive(Clone, Debug, PartialEq)]
pub enum RoomCommand {
    /// Open a room: `host` becomes its host and first member; `participants` are invited.
    CreateRoom {
        room_id: RoomId,
        host: UserId,
        name: String,
        participants: Vec<UserId>,
        /// PUBLIC or PRIVATE (a direct room is opened with [`Self::OpenDirect`]).
        visibility: RoomVisibility,
        created_at: DateTime<Utc>,
    },
    /// `by` opens the direct room of `by` and `peer` (the aggregate whose id is
    /// [`RoomId::direct`] of the two): creates it with both as members the first time; later,
    /// brings `by` back if they left; otherwise changes nothing.
    OpenDirect {
        room_id: RoomId,
        by: UserId,
        peer: UserId,
        opened_at: DateTime<Utc>,
    },
    /// `user` becomes a member: of a PUBLIC room by id, of a PRIVATE one when invited.
    JoinRoom { user: UserId },
    /// `user` stops being a member; the room and its history remain.
    LeaveRoom { user: UserId },
    /// Member `by` invites `user` (a registered user, not yet a member or invited, not
    /// banned); in a PRIVATE room only the host and moderators invite.
    Invite { by: UserId, user: UserId },
    /// The host gives member `user` a role; giving HOST hands the room over (the old host
    /// becomes a moderator). The role they have already is no event.
    SetRole {
        by: UserId,
        user: UserId,
        role: RoomRole,
    },
    /// A moderator removes member `user`, who may join again.
    Kick { by: UserId, user: UserId },
    /// A moderator removes `user` (a member or not) and keeps them out.
    Ban {
        by: UserId,
        user: UserId,
        reason: Option<String>,
    },
    /// A moderator lets a banned user join again.
    Unban { by: UserId, user: UserId },
    /// The host or a moderator (either member of a direct room) renames the room or sets its
    /// topic (`""` clears it); what is not given, or given unchanged, stays: nothing new is
    /// no event.
    UpdateRoom {
        by: UserId,
        name: Option<String>,
        topic: Option<String>,
    },
    /// `sender` posts `body`. Idempotent on `(sender, client_msg_id)`: a repeat yields no
    /// event and the caller returns the original message.
    SendMessage {
        message_id: MessageId,
        sender: UserId,
        body: String,
        client_msg_id: String,
        /// The seq of an earlier message of this room this one answers.
        reply_to: Option<MessageSeq>,
        sent_at: DateTime<Utc>,
    },
    /// `editor` replaces the body of their own message `seq`.
    EditMessage {
        editor: UserId,
        seq: MessageSeq,
        body: String,
        edited_at: DateTime<Utc>,
    },
    /// `by` deletes message `seq`: its sender, or the room's host. The text is erased.
    DeleteMessage {
        by: UserId,
        seq: MessageSeq,
        deleted_at: DateTime<Utc>,
    },
    /// Member `user` reacts to message `seq` with `emoji`; a repeat is a no-op.
    React {
        user: UserId,
        seq: MessageSeq,
        emoji: String,
    },
    /// `user` takes back a reaction; taking back one they never gave is a no-op.
    Unreact {
        user: UserId,
        seq: MessageSeq,
        emoji: String,
    },
}

/// Events of the `Room` aggregate. A persisted contract: names and fields never change
/// meaning; a new shape gets a new version and an upcaster. The event store indexes
/// `MessageSent.sender` and `MessageSent.client_msg_id` by these names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RoomEvent {
    /// A room was opened; its host is its first member. v1.0 (`visibility` and `peer` were
    /// added without a version bump: absent means PUBLIC and none, and a public room's event
    /// serializes exactly as before).
    RoomCreated {
        room_id: RoomId,
        name: RoomName,
        host: UserId,
        created_at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "RoomVisibility::is_public")]
        visibility: RoomVisibility,
        /// The other user of a direct room (who joins in the next event).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<UserId>,
    },
    /// The host changed the room's name and/or topic (only what changed is given). v1.0.
    RoomUpdated {
        updated_by: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<RoomName>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<RoomTopic>,
    },
    /// A user was invited, when the room was created or later by a member. v1.0.
    MemberInvited { user_id: UserId, invited_by: UserId },
    /// A user became a member. v1.0.
    MemberJoined { user_id: UserId },
    /// A member left. v1.0.
    MemberLeft { user_id: UserId },
    /// The host gave a member a role (HOST: the room changed hands). v1.0.
    MemberRoleChanged {
        user_id: UserId,
        role: RoomRole,
        changed_by: UserId,
    },
    /// A moderator removed a member. v1.0.
    MemberKicked { user_id: UserId, kicked_by: UserId },
    /// A moderator removed a user and keeps them out. v1.0.
    MemberBanned {
        user_id: UserId,
        banned_by: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<BanReason>,
    },
    /// A banned user may join again. v1.0.
    MemberUnbanned {
        user_id: UserId,
        unbanned_by: UserId,
    },
    /// A member posted a message; `seq` is contiguous from 1 within the room. v1.0.
    MessageSent {
        message_id: MessageId,
        seq: MessageSeq,
        sender: UserId,
        body: MessageBody,
        client_msg_id: ClientMsgId,
        sent_at: DateTime<Utc>,
        /// The message this one answers (added in 1.0 without a version bump: absent means
        /// none, and an event without a reply serializes exactly as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MessageSeq>,
    },
    /// The sender replaced a message's body. v1.0.
    MessageEdited {
        seq: MessageSeq,
        editor: UserId,
        body: MessageBody,
        edited_at: DateTime<Utc>,
    },
    /// A message was deleted, by its sender or the host; its text (and every edit's) is
    /// erased from the store when this is written. v1.0.
    MessageDeleted {
        seq: MessageSeq,
        deleted_by: UserId,
        deleted_at: DateTime<Utc>,
    },
    /// A member reacted to a message. v1.0.
    ReactionAdded {
        seq: MessageSeq,
        user_id: UserId,
        emoji: Emoji,
    },
    /// A member took back a reaction. v1.0.
    ReactionRemoved {
        seq: MessageSeq,
        user_id: UserId,
        emoji: Emoji,
    },
}

impl DomainEvent for RoomEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RoomCreated { .. } => "RoomCreated",
            Self::RoomUpdated { .. } => "RoomUpdated",
            Self::MemberInvited { .. } => "MemberInvited",
            Self::MemberJoined { .. } => "MemberJoined",
            Self::MemberLeft { .. } => "MemberLeft",
            Self::MemberRoleChanged { .. } => "MemberRoleChanged",
            Self::MemberKicked { .. } => "MemberKicked",
            Self::MemberBanned { .. } => "MemberBanned",
            Self::MemberUnbanned { .. } => "MemberUnbanned",
            Self::MessageSent { .. } => "MessageSent",
            Self::MessageEdited { .. } => "MessageEdited",
            Self::MessageDeleted { .. } => "MessageDeleted",
            Self::ReactionAdded { .. } => "ReactionAdded",
            Self::ReactionRemoved { .. } => "ReactionRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

/// Why a `Room` command was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RoomError {
    /// `CreateRoom` on a room that exists.
    #[error("room already exists")]
    RoomAlreadyExists,
    /// Any other command on a room that was never created.
    #[error("unknown room")]
    UnknownRoom,
    /// The room name breaks a rule.
    #[error("{0}")]
    InvalidName(ValueError),
    /// The topic breaks a rule.
    #[error("{0}")]
    InvalidTopic(ValueError),
    /// Setting roles without being the room's host (a member).
    #[error("only the room's host may set roles")]
    NotHost,
    /// Changing or moderating the room without being its host or a moderator (a member).
    #[error("only the room's host and moderators may do this")]
    NotModerator,
    /// Moderating someone of the same rank or higher (the host, or a moderator, for a
    /// moderator).
    #[error("you may not moderate someone of your rank or higher")]
    Outranked,
    /// Kicking, banning or changing the role of oneself.
    #[error("you may not do this to yourself")]
    NotToYourself,
    /// The user a role or a kick is for is not a member.
    #[error("that user is not a member of this room")]
    TargetNotMember,
    /// Banning someone already banned.
    #[error("that user is already banned from this room")]
    AlreadyBanned,
    /// Unbanning someone who is not banned.
    #[error("that user is not banned from this room")]
    NotBanned,
    /// Joining, or being invited to, a room one is banned from.
    #[error("banned from this room")]
    Banned,
    /// Joining a PRIVATE room without an invitation.
    #[error("this room is private: join it when invited")]
    NotInvited,
    /// Joining, inviting to or moderating a direct room.
    #[error("a direct room has its two users: nobody joins, invites or moderates")]
    DirectRoom,
    /// `createRoom(visibility: DIRECT)`.
    #[error("a direct room is opened with openDirectRoom(userId)")]
    DirectNeedsPeer,
    /// Opening a direct room with someone who blocks you.
    #[error("this user does not accept direct messages from you")]
    Blocked,
    /// `openDirectRoom` with oneself.
    #[error("a direct room is between two different users")]
    DirectWithSelf,
    /// The ban's reason breaks a rule.
    #[error("{0}")]
    InvalidReason(ValueError),
    /// The message body breaks a rule (empty, blank, too long).
    #[error("{0}")]
    InvalidBody(ValueError),
    /// The `clientMsgId` breaks a rule.
    #[error("{0}")]
    InvalidClientMsgId(ValueError),
    /// An invited participant is not a registered user.
    #[error("unknown participant {0}")]
    UnknownParticipant(UserId),
    /// More participants than one room may invite at creation.
    #[error("at most {max} participants may be invited, got {count}")]
    TooManyParticipants { max: usize, count: usize },
    /// `JoinRoom` by a member, or inviting one.
    #[error("already a member of this room")]
    AlreadyMember,
    /// Inviting someone already invited.
    #[error("already invited to this room")]
    AlreadyInvited,
    /// `LeaveRoom` or `SendMessage` by someone who is not a member.
    #[error("not a member of this room")]
    NotMember,
    /// The emoji breaks a rule.
    #[error("{0}")]
    InvalidEmoji(ValueError),
    /// No message with this seq in this room.
    #[error("no message {0} in this room")]
    UnknownMessage(MessageSeq),
    /// `replyTo` names no earlier message of this room.
    #[error("replyTo {0} is not a message of this room")]
    InvalidReplyTo(MessageSeq),
    /// Editing someone else's message.
    #[error("only the sender may edit a message")]
    NotSender,
    /// Deleting someone else's message without being the room's host or a moderator.
    #[error("only the sender, the room's host or a moderator may delete a message")]
    NotAllowed,
    /// Editing, deleting or reacting to a deleted message.
    #[error("message {0} was deleted")]
    MessageDeleted(MessageSeq),
    /// A lookup the rule needs failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// One entry of the idempotency window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentMessage {
    pub sender: UserId,
    pub client_msg_id: ClientMsgId,
    pub seq: MessageSeq,
    pub message_id: MessageId,
}

/// A chat room.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Room {
    id: Option<RoomId>,
    /// Kept for time travel (the room as of a position is this state, replayed). Snapshots
    /// written before the field existed load as `None`; replaying the events sets it.
    #[serde(default)]
    name: Option<RoomName>,
    /// When the room was opened; `None` in snapshots older than the field, like `name`.
    #[serde(default)]
    created_at: Option<DateTime<Utc>>,
    /// The topic, if one is set (snapshots older than the field load `None`).
    #[serde(default)]
    topic: Option<RoomTopic>,
    host: Option<UserId>,
    /// PUBLIC in snapshots older than the field (every room was public then).
    #[serde(default)]
    visibility: RoomVisibility,
    /// A direct room's second user (the host is the first).
    #[serde(default)]
    peer: Option<UserId>,
    /// Members with the MODERATOR role (never the host).
    #[serde(default)]
    moderators: BTreeSet<UserId>,
    /// Users banned from the room (never members).
    #[serde(default)]
    banned: BTreeSet<UserId>,
    members: BTreeSet<UserId>,
    invited: BTreeSet<UserId>,
    last_seq: MessageSeq,
    recent: VecDeque<RecentMessage>,
    /// Seqs of deleted messages (snapshots older than the field load it empty; replay fills it).
    #[serde(default)]
    deleted: BTreeSet<MessageSeq>,
    /// The reactions that stand: (seq, user, emoji).
    #[serde(default)]
    reactions: BTreeSet<(MessageSeq, UserId, Emoji)>,
}

impl Room {
    pub fn id(&self) -> Option<RoomId> {
        self.id
    }

    /// The room's name, once created (see the field's note on old snapshots).
    pub fn name(&self) -> Option<&RoomName> {
        self.name.as_ref()
    }

    /// The room's topic, if set.
    pub fn topic(&self) -> Option<&RoomTopic> {
        self.topic.as_ref()
    }

    /// When the room was opened, once created.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at
    }

    pub fn host(&self) -> Option<UserId> {
        self.host
    }

    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }

    pub fn members(&self) -> &BTreeSet<UserId> {
        &self.members
    }

    pub fn invited(&self) -> &BTreeSet<UserId> {
        &self.invited
    }

    pub fn visibility(&self) -> RoomVisibility {
        self.visibility
    }

    /// Members with the MODERATOR role.
    pub fn moderators(&self) -> &BTreeSet<UserId> {
        &self.moderators
    }

    /// Users banned from the room.
    pub fn banned(&self) -> &BTreeSet<UserId> {
        &self.banned
    }

    /// `user`'s role, if a member. Both users of a direct room are plain members.
    pub fn role(&self, user: UserId) -> Option<RoomRole> {
        self.members.contains(&user).then(|| {
            RoomRole::of_member(
                self.visibility,
                self.host == Some(user),
                self.moderators.contains(&user),
            )
        })
    }

    /// Whether `user` holds moderator powers now (the host or a moderator, and a member).
    pub fn moderates(&self, user: UserId) -> bool {
        self.role(user).is_some_and(RoomRole::moderates)
    }

    /// The seq of the newest message (0 before the first).
    pub fn last_seq(&self) -> MessageSeq {
        self.last_seq
    }

    /// The remembered message `sender` sent with `client_msg_id`, if it is still within the
    /// idempotency window.
    pub fn recent_message(
        &self,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Option<&RecentMessage> {
        self.recent
            .iter()
            .rev()
            .find(|m| m.sender == sender && &m.client_msg_id == client_msg_id)
    }

    /// Whether message `seq` was deleted.
    pub fn is_deleted(&self, seq: MessageSeq) -> bool {
        self.deleted.contains(&seq)
    }

    fn require_created(&self) -> Result<RoomId, RoomError> {
        self.id.ok_or(RoomError::UnknownRoom)
    }

    fn require_member(&self, user: UserId) -> Result<RoomId, RoomError> {
        let id = self.require_created()?;
        if !self.members.contains(&user) {
            return Err(RoomError::NotMember);
        }
        Ok(id)
    }

    /// `by` may moderate: a member with the HOST or MODERATOR role, in a room that is not
    /// direct.
    fn require_moderator(&self, by: UserId) -> Result<RoomId, RoomError> {
        let id = self.require_member(by)?;
        if self.visibility == RoomVisibility::Direct {
            return Err(RoomError::DirectRoom);
        }
        if !self.moderates(by) {
            return Err(RoomError::NotModerator);
        }
        Ok(id)
    }

    /// `by` (a moderator) may kick or ban `user`: not themselves, not the host, and for a
    /// moderator not another moderator.
    fn require_outranks(&self, by: UserId, user: UserId) -> Result<(), RoomError> {
        if by == user {
            return Err(RoomError::NotToYourself);
        }
        let target_ranks = self.host == Some(user) || self.moderators.contains(&user);
        if target_ranks && self.host != Some(by) || self.host == Some(user) {
            return Err(RoomError::Outranked);
        }
        Ok(())
    }

    /// Message `seq` exists and is not deleted.
    fn require_live_message(&self, seq: MessageSeq) -> Result<MessageSeq, RoomError> {
        if seq == MessageSeq::ZERO || seq > self.last_seq {
            return Err(RoomError::UnknownMessage(seq));
        }
        if self.deleted.contains(&seq) {
            return Err(RoomError::MessageDeleted(seq));
        }
        Ok(seq)
    }

    /// Who sent message `seq` (which exists): from the recent window, else from the store.
    async fn sender_of(
        &self,
        services: &dyn RoomServices,
        room: RoomId,
        seq: MessageSeq,
    ) -> Result<UserId, RoomError> {
        if let Some(recent) = self.recent.iter().rev().find(|m| m.seq == seq) {
            return Ok(recent.sender);
        }
        match services.message_sender(room, seq).await? {
            Some(MessageFacts { sender }) => Ok(sender),
            None => Err(RoomError::Service(ServiceError::NotReadableYet(seq))),
        }
    }

    async fn edit(
        &self,
        services: &dyn RoomServices,
        editor: UserId,
        seq: MessageSeq,
        body: &str,
        edited_at: DateTime<Utc>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        let room = self.require_member(editor)?;
        let seq = self.require_live_message(seq)?;
        let body = MessageBody::parse(body).map_err(RoomError::InvalidBody)?;
        if self.sender_of(services, room, seq).await? != editor {
            return Err(RoomError::NotSender);
        }
        Ok(vec![RoomEvent::MessageEdited {
            seq,
            editor,
            body,
            edited_at,
        }])
    }

    async fn delete(
        &self,
        services: &dyn RoomServices,
        by: UserId,
        seq: MessageSeq,
        deleted_at: DateTime<Utc>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        let room = self.require_created()?;
        let seq = self.require_live_message(seq)?;
        // The sender may delete their message even after leaving (an erasure right); the
        // host and moderators only while members.
        if !self.moderates(by) && self.sender_of(services, room, seq).await? != by {
            return Err(RoomError::NotAllowed);
        }
        Ok(vec![RoomEvent::MessageDeleted {
            seq,
            deleted_by: by,
            deleted_at,
        }])
    }

    fn react(
        &self,
        user: UserId,
        seq: MessageSeq,
        emoji: &str,
        add: bool,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_member(user)?;
        let seq = self.require_live_message(seq)?;
        let emoji = Emoji::parse(emoji).map_err(RoomError::InvalidEmoji)?;
        let key = (seq, user, emoji);
        if self.reactions.contains(&key) == add {
            return Ok(Vec::new());
        }
        let (_, user_id, emoji) = key;
        Ok(vec![if add {
            RoomEvent::ReactionAdded {
                seq,
                user_id,
                emoji,
            }
        } else {
            RoomEvent::ReactionRemoved {
                seq,
                user_id,
                emoji,
            }
        }])
    }

    /// Decides the events of a `CreateRoom`.
    // The fields of `CreateRoom`, one argument each.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        services: &dyn RoomServices,
        room_id: RoomId,
        host: UserId,
        name: &str,
        participants: Vec<UserId>,
        visibility: RoomVisibility,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        if self.id.is_some() {
            return Err(RoomError::RoomAlreadyExists);
        }
        if visibility == RoomVisibility::Direct {
            return Err(RoomError::DirectNeedsPeer);
        }
        let name = RoomName::parse(name).map_err(RoomError::InvalidName)?;
        let mut invitees = BTreeSet::new();
        let mut ordered = Vec::new();
        for user in participants {
            if user != host && invitees.insert(user) {
                ordered.push(user);
            }
        }
        if ordered.len() > MAX_PARTICIPANTS {
            return Err(RoomError::TooManyParticipants {
                max: MAX_PARTICIPANTS,
                count: ordered.len(),
            });
        }
        for &user in &ordered {
            if !services.user_exists(user).await? {
                return Err(RoomError::UnknownParticipant(user));
            }
        }
        let created = RoomEvent::RoomCreated {
            room_id,
            name,
            host,
            created_at,
            visibility,
            peer: None,
        };
        let invitations = ordered.into_iter().map(|user_id| RoomEvent::MemberInvited {
            user_id,
            invited_by: host,
        });
        Ok(std::iter::once(created).chain(invitations).collect())
    }

    /// Decides the events of an `OpenDirect`.
    async fn open_direct(
        &self,
        services: &dyn RoomServices,
        room_id: RoomId,
        by: UserId,
        peer: UserId,
        opened_at: DateTime<Utc>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        if by == peer {
            return Err(RoomError::DirectWithSelf);
        }
        if services.blocks(peer, by).await? {
            return Err(RoomError::Blocked);
        }
        if self.id.is_some() {
            if self.visibility != RoomVisibility::Direct {
                return Err(RoomError::RoomAlreadyExists);
            }
            let pair = [self.host, self.peer];
            if !pair.contains(&Some(by)) || !pair.contains(&Some(peer)) {
                return Err(RoomError::NotMember);
            }
            if self.members.contains(&by) {
                return Ok(Vec::new());
            }
            return Ok(vec![RoomEvent::MemberJoined { user_id: by }]);
        }
        if !services.user_exists(peer).await? {
            return Err(RoomError::UnknownParticipant(peer));
        }
        let name = RoomName::parse(DIRECT_ROOM_NAME).map_err(RoomError::InvalidName)?;
        Ok(vec![
            RoomEvent::RoomCreated {
                room_id,
                name,
                host: by,
                created_at: opened_at,
                visibility: RoomVisibility::Direct,
                peer: Some(peer),
            },
            RoomEvent::MemberJoined { user_id: peer },
        ])
    }

    fn join(&self, user: UserId) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_created()?;
        if self.members.contains(&user) {
            return Err(RoomError::AlreadyMember);
        }
        match self.visibility {
            RoomVisibility::Direct => return Err(RoomError::DirectRoom),
            _ if self.banned.contains(&user) => return Err(RoomError::Banned),
            RoomVisibility::Private if !self.invited.contains(&user) => {
                return Err(RoomError::NotInvited)
            }
            _ => {}
        }
        Ok(vec![RoomEvent::MemberJoined { user_id: user }])
    }

    async fn invite(
        &self,
        services: &dyn RoomServices,
        by: UserId,
        user: UserId,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        match self.visibility {
            RoomVisibility::Direct => {
                self.require_member(by)?;
                return Err(RoomError::DirectRoom);
            }
            RoomVisibility::Private => self.require_moderator(by)?,
            RoomVisibility::Public => self.require_member(by)?,
        };
        if self.members.contains(&user) {
            return Err(RoomError::AlreadyMember);
        }
        if self.invited.contains(&user) {
            return Err(RoomError::AlreadyInvited);
        }
        if self.banned.contains(&user) {
            return Err(RoomError::Banned);
        }
        if !services.user_exists(user).await? {
            return Err(RoomError::UnknownParticipant(user));
        }
        Ok(vec![RoomEvent::MemberInvited {
            user_id: user,
            invited_by: by,
        }])
    }

    fn update(
        &self,
        by: UserId,
        name: Option<String>,
        topic: Option<String>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        if self.visibility == RoomVisibility::Direct {
            self.require_member(by)?;
        } else {
            self.require_moderator(by)?;
        }
        let name = name
            .map(|n| RoomName::parse(&n).map_err(RoomError::InvalidName))
            .transpose()?
            .filter(|n| self.name.as_ref() != Some(n));
        let topic = topic
            .map(|t| RoomTopic::parse(&t).map_err(RoomError::InvalidTopic))
            .transpose()?
            .filter(|t| {
                let now = self.topic.as_ref().map_or("", RoomTopic::as_str);
                t.as_str() != now
            });
        if name.is_none() && topic.is_none() {
            return Ok(Vec::new());
        }
        Ok(vec![RoomEvent::RoomUpdated {
            updated_by: by,
            name,
            topic,
        }])
    }

    fn set_role(
        &self,
        by: UserId,
        user: UserId,
        role: RoomRole,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_moderator(by)?;
        if self.host != Some(by) {
            return Err(RoomError::NotHost);
        }
        if by == user {
            return Err(RoomError::NotToYourself);
        }
        let Some(now) = self.role(user) else {
            return Err(RoomError::TargetNotMember);
        };
        if now == role {
            return Ok(Vec::new());
        }
        let changed = RoomEvent::MemberRoleChanged {
            user_id: user,
            role,
            changed_by: by,
        };
        if role != RoomRole::Host {
            return Ok(vec![changed]);
        }
        // Handing the room over: the old host stays on as a moderator.
        Ok(vec![
            changed,
            RoomEvent::MemberRoleChanged {
                user_id: by,
                role: RoomRole::Moderator,
                changed_by: by,
            },
        ])
    }

    fn kick(&self, by: UserId, user: UserId) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_moderator(by)?;
        self.require_outranks(by, user)?;
        if !self.members.contains(&user) {
            return Err(RoomError::TargetNotMember);
        }
        Ok(vec![RoomEvent::MemberKicked {
            user_id: user,
            kicked_by: by,
        }])
    }

    async fn ban(
        &self,
        services: &dyn RoomServices,
        by: UserId,
        user: UserId,
        reason: Option<String>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_moderator(by)?;
        let reason = reason
            .map(|r| BanReason::parse(&r).map_err(RoomError::InvalidReason))
            .transpose()?
            .filter(|r| !r.as_str().trim().is_empty());
        self.require_outranks(by, user)?;
        if self.banned.contains(&user) {
            return Err(RoomError::AlreadyBanned);
        }
        let known = self.members.contains(&user) || self.invited.contains(&user);
        if !known && !services.user_exists(user).await? {
            return Err(RoomError::UnknownParticipant(user));
        }
        Ok(vec![RoomEvent::MemberBanned {
            user_id: user,
            banned_by: by,
            reason,
        }])
    }

    fn unban(&self, by: UserId, user: UserId) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_moderator(by)?;
        if !self.banned.contains(&user) {
            return Err(RoomError::NotBanned);
        }
        Ok(vec![RoomEvent::MemberUnbanned {
            user_id: user,
            unbanned_by: by,
        }])
    }

    /// Decides the events of a `SendMessage`: none for a repeated `clientMsgId`.
    fn send(
        &self,
        message_id: MessageId,
        sender: UserId,
        body: &str,
        client_msg_id: &str,
        reply_to: Option<MessageSeq>,
        sent_at: DateTime<Utc>,
    ) -> Result<Vec<RoomEvent>, RoomError> {
        self.require_member(sender)?;
        let body = MessageBody::parse(body).map_err(RoomError::InvalidBody)?;
        let client_msg_id =
            ClientMsgId::parse(client_msg_id).map_err(RoomError::InvalidClientMsgId)?;
        if self.recent_message(sender, &client_msg_id).is_some() {
            return Ok(Vec::new());
        }
        let reply_to = match reply_to {
            Some(seq) if seq == MessageSeq::ZERO || seq > self.last_seq => {
                return Err(RoomError::InvalidReplyTo(seq))
            }
            other => other,
        };
        Ok(vec![RoomEvent::MessageSent {
            message_id,
            seq: self.last_seq.next(),
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to,
        }])
    }
}

impl Aggregate for Room {
    const TYPE: &'static str = "Room";
    type Command = RoomCommand;
    type Event = RoomEvent;
    type Error = RoomError;
    type Services = Arc<dyn RoomServices>;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            RoomCommand::CreateRoom {
                room_id,
                host,
                name,
                participants,
                visibility,
                created_at,
            } => {
                self.create(
                    services.as_ref(),
                    room_id,
                    host,
                    &name,
                    participants,
                    visibility,
                    created_at,
                )
                .await?
            }
            RoomCommand::OpenDirect {
                room_id,
                by,
                peer,
                opened_at,
            } => {
                self.open_direct(services.as_ref(), room_id, by, peer, opened_at)
                    .await?
            }
            RoomCommand::JoinRoom { user } => self.join(user)?,
            RoomCommand::LeaveRoom { user } => {
                self.require_member(user)?;
                vec![RoomEvent::MemberLeft { user_id: user }]
            }
            RoomCommand::UpdateRoom { by, name, topic } => self.update(by, name, topic)?,
            RoomCommand::Invite { by, user } => self.invite(services.as_ref(), by, user).await?,
            RoomCommand::SetRole { by, user, role } => self.set_role(by, user, role)?,
            RoomCommand::Kick { by, user } => self.kick(by, user)?,
            RoomCommand::Ban { by, user, reason } => {
                self.ban(services.as_ref(), by, user, reason).await?
            }
            RoomCommand::Unban { by, user } => self.unban(by, user)?,
            RoomCommand::SendMessage {
                message_id,
                sender,
                body,
                client_msg_id,
                reply_to,
                sent_at,
            } => self.send(message_id, sender, &body, &client_msg_id, reply_to, sent_at)?,
            RoomCommand::EditMessage {
                editor,
                seq,
                body,
                edited_at,
            } => {
                self.edit(services.as_ref(), editor, seq, &body, edited_at)
                    .await?
            }
            RoomCommand::DeleteMessage {
                by,
                seq,
                deleted_at,
            } => self.delete(services.as_ref(), by, seq, deleted_at).await?,
            RoomCommand::React { user, seq, emoji } => self.react(user, seq, &emoji, true)?,
            RoomCommand::Unreact { user, seq, emoji } => self.react(user, seq, &emoji, false)?,
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            RoomEvent::RoomCreated {
                room_id,
                name,
                host,
                created_at,
                visibility,
                peer,
            } => {
                self.id = Some(room_id);
                self.name = Some(name);
                self.created_at = Some(created_at);
                self.host = Some(host);
                self.visibility = visibility;
                self.peer = peer;
                self.members.insert(host);
            }
            RoomEvent::RoomUpdated { name, topic, .. } => {
                if let Some(name) = name {
                    self.name = Some(name);
                }
                if let Some(topic) = topic {
                    self.topic = (!topic.as_str().is_empty()).then_some(topic);
                }
            }
            RoomEvent::MemberInvited { user_id, .. } => {
                self.invited.insert(user_id);
            }
            RoomEvent::MemberJoined { user_id } => {
                self.invited.remove(&user_id);
                self.members.insert(user_id);
            }
            RoomEvent::MemberLeft { user_id } | RoomEvent::MemberKicked { user_id, .. } => {
                self.members.remove(&user_id);
                self.moderators.remove(&user_id);
            }
            RoomEvent::MemberRoleChanged { user_id, role, .. } => match role {
                RoomRole::Host => {
                    self.host = Some(user_id);
                    self.moderators.remove(&user_id);
                }
                RoomRole::Moderator => {
                    self.moderators.insert(user_id);
                }
                RoomRole::Member => {
                    self.moderators.remove(&user_id);
                }
            },
            RoomEvent::MemberBanned { user_id, .. } => {
                self.members.remove(&user_id);
                self.moderators.remove(&user_id);
                self.invited.remove(&user_id);
                self.banned.insert(user_id);
            }
            RoomEvent::MemberUnbanned { user_id, .. } => {
                self.banned.remove(&user_id);
            }
            RoomEvent::MessageSent {
                message_id,
                seq,
                sender,
                client_msg_id,
                ..
            } => {
                self.last_seq = seq;
                if self.recent.len() == IDEMPOTENCY_WINDOW {
                    self.recent.pop_front();
                }
                self.recent.push_back(RecentMessage {
                    sender,
                    client_msg_id,
                    seq,
                    message_id,
                });
            }
            RoomEvent::MessageEdited { .. } => {}
            RoomEvent::MessageDeleted { seq, .. } => {
                self.deleted.insert(seq);
                self.reactions.retain(|(reacted, _, _)| *reacted != seq);
            }
            RoomEvent::ReactionAdded {
                seq,
                user_id,
                emoji,
            } => {
                self.reactions.insert((seq, user_id, emoji));
            }
            RoomEvent::ReactionRemoved {
                seq,
                user_id,
                emoji,
            } => {
                self.reactions.remove(&(seq, user_id, emoji));
            }
        }
    }
}
