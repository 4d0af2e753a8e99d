//! What each event changes in the read models, decided in one place: [`changes`] is a pure
//! function from an event to row operations on the named views, and two thin writers apply
//! them: SQL (`postgres/apply.rs`, which batches runs of message inserts into one statement
//! per table) and memory (`memory.rs`, whose maps mirror the tables and keep the indexes the
//! tables' indexes would: usernames, search words, client message ids, rooms of a user).
//!
//! An operation names its table by its type ([`UsersOp`] for `users_view` and
//! `user_blocks`, [`RoomsOp`] for `rooms_view`, `room_members` and `read_cursors`,
//! [`MessagesOp`] for `messages_view`); the projection that owns those tables is the one the
//! operation belongs to, so a rebuild of one projection replays only its operations.
//! Operations carry what the event says, borrowed from it: a writer never looks at the event.

use chrono::{DateTime, Utc};
use parley_domain::{MessageSeq, RoomEvent, RoomId, RoomRole, RoomVisibility, UserEvent, UserId};

use crate::log::DecodedEvent;

/// One row operation, by the projection that owns its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RowOp<'a> {
    Users(UsersOp<'a>),
    Rooms(RoomsOp<'a>),
    Messages(MessagesOp<'a>),
}

/// `users_view` and `user_blocks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UsersOp<'a> {
    /// A new `users_view` row, without roles.
    Insert {
        user: UserId,
        username: &'a str,
        password_hash: &'a str,
        created_at: DateTime<Utc>,
    },
    /// Adds `role` to the user's roles unless they hold it.
    GrantRole { user: UserId, role: &'static str },
    /// The user renamed to `username` (their erased name) and their password hash cleared.
    Erase { user: UserId, username: String },
    /// A `user_blocks` row, kept if it exists.
    Block { blocker: UserId, blocked: UserId },
    /// The `user_blocks` row removed.
    Unblock { blocker: UserId, blocked: UserId },
}

/// A member's state in `room_members`, as [`RoomsOp::SetMember`] sets it (an `invited` row
/// comes only from [`RoomsOp::Invite`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemberState {
    Member,
    Banned,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Banned => "banned",
        }
    }
}

/// Where a read cursor moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CursorTo {
    /// At least this seq.
    Seq(MessageSeq),
    /// At least the room's newest seq as the rooms table holds it now (a new member has
    /// nothing unread from before they joined). Read from this projection's own table, so a
    /// replay into shadow tables sees the room as it was at this event.
    RoomLastSeq,
}

/// `rooms_view`, `room_members` and `read_cursors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoomsOp<'a> {
    /// A new `rooms_view` row: no messages yet, last active at its creation.
    Insert {
        room: RoomId,
        name: &'a str,
        host: UserId,
        created_at: DateTime<Utc>,
        visibility: RoomVisibility,
    },
    /// The name and the topic, where given (`Some("")` clears the topic).
    Update {
        room: RoomId,
        name: Option<&'a str>,
        topic: Option<&'a str>,
    },
    SetHost {
        room: RoomId,
        host: UserId,
    },
    /// `last_seq` and the last activity's position raised to at least these.
    Activity {
        room: RoomId,
        seq: MessageSeq,
    },
    /// The user's `room_members` row in `state`: inserted, or its state replaced (its role
    /// kept; a ban also resets the role to `member`).
    SetMember {
        room: RoomId,
        user: UserId,
        state: MemberState,
    },
    /// An `invited` row, unless the user has a row already.
    Invite {
        room: RoomId,
        user: UserId,
    },
    /// The member's role: `moderator`, else `member` (the host is `rooms_view.host`).
    SetRole {
        room: RoomId,
        user: UserId,
        moderator: bool,
    },
    /// The user's row removed (`banned_only`: only a `banned` one).
    RemoveMember {
        room: RoomId,
        user: UserId,
        banned_only: bool,
    },
    /// The user's read cursor moved forward (never back).
    Cursor {
        room: RoomId,
        user: UserId,
        to: CursorTo,
    },
}

/// `messages_view`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MessagesOp<'a> {
    /// A new row: the message as sent.
    Insert {
        room: RoomId,
        seq: MessageSeq,
        message_id: parley_domain::MessageId,
        sender: UserId,
        body: &'a str,
        client_msg_id: &'a str,
        sent_at: DateTime<Utc>,
        reply_to: Option<MessageSeq>,
    },
    /// The body replaced, unless the message is deleted.
    Edit {
        room: RoomId,
        seq: MessageSeq,
        body: &'a str,
        edited_at: DateTime<Utc>,
    },
    /// The message deleted: body, reactions gone.
    Erase { room: RoomId, seq: MessageSeq },
    /// Every message of `sender` erased (their account was).
    EraseSender { sender: UserId },
    /// `user` added to the users of reaction `emoji`, unless among them.
    React {
        room: RoomId,
        seq: MessageSeq,
        emoji: &'a str,
        user: UserId,
    },
    /// `user` removed from the users of reaction `emoji` (the reaction goes with its last).
    Unreact {
        room: RoomId,
        seq: MessageSeq,
        emoji: &'a str,
        user: UserId,
    },
}

/// The row operations of one event, in the order they apply. Every operation is applied at
/// the event's position (rows that record a position record that one).
pub(crate) fn changes(event: &DecodedEvent) -> Vec<RowOp<'_>> {
    match event {
        DecodedEvent::User(user, event) => user_changes(*user, event),
        DecodedEvent::Room(room, event) => room_changes(*room, event),
        DecodedEvent::Unknown => Vec::new(),
    }
}

fn user_changes(user: UserId, event: &UserEvent) -> Vec<RowOp<'_>> {
    use RowOp::Users;
    match event {
        UserEvent::UserRegistered {
            username,
            password_hash,
            registered_at,
            ..
        } => vec![Users(UsersOp::Insert {
            user,
            username: username.as_str(),
            password_hash,
            created_at: *registered_at,
        })],
        UserEvent::RoleGranted { role } => vec![Users(UsersOp::GrantRole {
            user,
            role: role.as_str(),
        })],
        // Announcements live only in the log and the live path.
        UserEvent::AnnouncementMade { .. } => Vec::new(),
        // Their text is gone from the log already (erased in this event's statement).
        UserEvent::UserErased { .. } => vec![
            Users(UsersOp::Erase {
                user,
                username: crate::erasure::erased_username(user),
            }),
            RowOp::Messages(MessagesOp::EraseSender { sender: user }),
        ],
        UserEvent::UserBlocked { user_id } => vec![Users(UsersOp::Block {
            blocker: user,
            blocked: *user_id,
        })],
        UserEvent::UserUnblocked { user_id } => vec![Users(UsersOp::Unblock {
            blocker: user,
            blocked: *user_id,
        })],
    }
}

pub(crate) fn room_changes(room: RoomId, event: &RoomEvent) -> Vec<RowOp<'_>> {
    use RowOp::{Messages, Rooms};
    let member = |user: UserId, state| Rooms(RoomsOp::SetMember { room, user, state });
    match event {
        RoomEvent::RoomCreated {
            name,
            host,
            created_at,
            visibility,
            ..
        } => vec![
            Rooms(RoomsOp::Insert {
                room,
                name: name.as_str(),
                host: *host,
                created_at: *created_at,
                visibility: *visibility,
            }),
            member(*host, MemberState::Member),
        ],
        RoomEvent::RoomUpdated { name, topic, .. } => vec![Rooms(RoomsOp::Update {
            room,
            name: name.as_ref().map(|n| n.as_str()),
            topic: topic.as_ref().map(|t| t.as_str()),
        })],
        RoomEvent::MemberInvited { user_id, .. } => {
            vec![Rooms(RoomsOp::Invite {
                room,
                user: *user_id,
            })]
        }
        RoomEvent::MemberJoined { user_id } => vec![
            member(*user_id, MemberState::Member),
            Rooms(RoomsOp::Cursor {
                room,
                user: *user_id,
                to: CursorTo::RoomLastSeq,
            }),
        ],
        RoomEvent::MemberRoleChanged { user_id, role, .. } => {
            let mut ops = Vec::with_capacity(2);
            if *role == RoomRole::Host {
                ops.push(Rooms(RoomsOp::SetHost {
                    room,
                    host: *user_id,
                }));
            }
            ops.push(Rooms(RoomsOp::SetRole {
                room,
                user: *user_id,
                moderator: *role == RoomRole::Moderator,
            }));
            ops
        }
        RoomEvent::MemberBanned { user_id, .. } => vec![member(*user_id, MemberState::Banned)],
        RoomEvent::MemberUnbanned { user_id, .. } => vec![Rooms(RoomsOp::RemoveMember {
            room,
            user: *user_id,
            banned_only: true,
        })],
        RoomEvent::MemberLeft { user_id } | RoomEvent::MemberKicked { user_id, .. } => {
            vec![Rooms(RoomsOp::RemoveMember {
                room,
                user: *user_id,
                banned_only: false,
            })]
        }
        RoomEvent::MessageSent {
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to,
        } => {
            let seq = *seq;
            vec![
                Rooms(RoomsOp::Activity { room, seq }),
                // The sender has evidently read their own message.
                Rooms(RoomsOp::Cursor {
                    room,
                    user: *sender,
                    to: CursorTo::Seq(seq),
                }),
                Messages(MessagesOp::Insert {
                    room,
                    seq,
                    message_id: *message_id,
                    sender: *sender,
                    body: body.as_str(),
                    client_msg_id: client_msg_id.as_str(),
                    sent_at: *sent_at,
                    reply_to: *reply_to,
                }),
            ]
        }
        RoomEvent::MessageEdited {
            seq,
            body,
            edited_at,
            ..
        } => vec![Messages(MessagesOp::Edit {
            room,
            seq: *seq,
            body: body.as_str(),
            edited_at: *edited_at,
        })],
        // The text is gone from the log already (erased in the deletion's transaction).
        RoomEvent::MessageDeleted { seq, .. } => {
            vec![Messages(MessagesOp::Erase { room, seq: *seq })]
        }
        RoomEvent::ReactionAdded {
            seq,
            user_id,
            emoji,
        } => vec![Messages(MessagesOp::React {
            room,
            seq: *seq,
            emoji: emoji.as_str(),
            user: *user_id,
        })],
        RoomEvent::ReactionRemoved {
            seq,
            user_id,
            emoji,
        } => vec![Messages(MessagesOp::Unreact {
            room,
            seq: *seq,
            emoji: emoji.as_str(),
            user: *user_id,
        })],
    }
}

#[cfg(test)]
mod tests {
    use parley_domain::{ClientMsgId, MessageBody, MessageId};

    use super::*;

    fn room() -> RoomId {
        RoomId::new()
    }

    #[test]
    fn a_sent_message_is_the_rooms_activity_the_senders_cursor_and_a_history_row() {
        let (room, sender, message_id) = (room(), UserId::new(), MessageId::new());
        let sent_at = Utc::now();
        let event = DecodedEvent::Room(
            room,
            RoomEvent::MessageSent {
                message_id,
                seq: MessageSeq(7),
                sender,
                body: MessageBody::parse("hello").unwrap(),
                client_msg_id: ClientMsgId::parse("c-7").unwrap(),
                sent_at,
                reply_to: Some(MessageSeq(3)),
            },
        );
        assert_eq!(
            changes(&event),
            vec![
                RowOp::Rooms(RoomsOp::Activity {
                    room,
                    seq: MessageSeq(7),
                }),
                RowOp::Rooms(RoomsOp::Cursor {
                    room,
                    user: sender,
                    to: CursorTo::Seq(MessageSeq(7))
                }),
                RowOp::Messages(MessagesOp::Insert {
                    room,
                    seq: MessageSeq(7),
                    message_id,
                    sender,
                    body: "hello",
                    client_msg_id: "c-7",
                    sent_at,
                    reply_to: Some(MessageSeq(3)),
                }),
            ]
        );
    }

    #[test]
    fn a_join_makes_a_member_with_nothing_unread_and_a_ban_replaces_the_row() {
        let (room, user) = (room(), UserId::new());
        let joined = DecodedEvent::Room(room, RoomEvent::MemberJoined { user_id: user });
        assert_eq!(
            changes(&joined),
            vec![
                RowOp::Rooms(RoomsOp::SetMember {
                    room,
                    user,
                    state: MemberState::Member
                }),
                RowOp::Rooms(RoomsOp::Cursor {
                    room,
                    user,
                    to: CursorTo::RoomLastSeq
                }),
            ]
        );
        let banned = DecodedEvent::Room(
            room,
            RoomEvent::MemberBanned {
                user_id: user,
                banned_by: UserId::new(),
                reason: None,
            },
        );
        assert_eq!(
            changes(&banned),
            vec![RowOp::Rooms(RoomsOp::SetMember {
                room,
                user,
                state: MemberState::Banned
            })]
        );
    }

    #[test]
    fn an_erased_user_is_renamed_and_their_messages_erased_by_two_projections() {
        let user = UserId::new();
        let erased = DecodedEvent::User(
            user,
            UserEvent::UserErased {
                erased_by: None,
                erased_at: Utc::now(),
            },
        );
        assert_eq!(
            changes(&erased),
            vec![
                RowOp::Users(UsersOp::Erase {
                    user,
                    username: crate::erasure::erased_username(user),
                }),
                RowOp::Messages(MessagesOp::EraseSender { sender: user }),
            ]
        );
        assert!(changes(&DecodedEvent::Unknown).is_empty());
    }
}
