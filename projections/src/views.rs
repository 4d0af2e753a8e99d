//! What the read models return, and the paging rules for message history.

use chrono::{DateTime, Utc};
use parley_domain::{MessageId, MessageSeq, RoomId, RoomRole, RoomVisibility, UserId};
use serde::Serialize;

use crate::changes::MessagesOp;
use crate::GlobalPosition;

/// A user in the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A user with the credential needed to log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: UserView,
    pub password_hash: String,
}

/// A room with its membership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    /// The topic, if one is set.
    pub topic: Option<String>,
    pub host: UserId,
    pub created_at: DateTime<Utc>,
    /// Seq of the newest message (0 before the first).
    pub last_seq: MessageSeq,
    /// Members, in user-id order.
    pub members: Vec<UserId>,
    /// Invited users who have not joined, in user-id order.
    pub invited: Vec<UserId>,
    pub visibility: RoomVisibility,
    /// Members with the MODERATOR role, in user-id order.
    pub moderators: Vec<UserId>,
    /// Users banned from the room, in user-id order.
    pub banned: Vec<UserId>,
}

impl RoomView {
    /// `user`'s role, if a member (both users of a direct room are plain members).
    pub fn role(&self, user: UserId) -> Option<RoomRole> {
        self.members.contains(&user).then(|| {
            RoomRole::of_member(
                self.visibility,
                self.host == user,
                self.moderators.contains(&user),
            )
        })
    }

    /// Whether `user` may see that the room exists: anyone for a PUBLIC room; members and
    /// invitees (and, for a direct room, its two users) otherwise.
    pub fn visible_to(&self, user: UserId) -> bool {
        self.visibility == RoomVisibility::Public
            || self.members.contains(&user)
            || self.invited.contains(&user)
    }
}

/// A message in a room's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: MessageSeq,
    pub sender: UserId,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at: DateTime<Utc>,
    /// The newest change's position (sent, edited, deleted, reacted to).
    pub position: GlobalPosition,
    /// When the body was last edited.
    pub edited_at: Option<DateTime<Utc>>,
    /// A deleted message keeps its seq; its body is `""` and its text erased.
    pub deleted: bool,
    /// The seq of the message this one answers.
    pub reply_to: Option<MessageSeq>,
    /// The reactions that stand, by emoji (in emoji order), each with who gave it in order.
    pub reactions: Vec<ReactionView>,
    /// Edited, deleted or reacted to at least once since it was sent.
    pub changed: bool,
}

/// One emoji's reactions to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReactionView {
    pub emoji: String,
    pub users: Vec<UserId>,
}

impl MessageView {
    /// A message as it was sent: not edited, deleted or reacted to.
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        id: MessageId,
        room_id: RoomId,
        seq: MessageSeq,
        sender: UserId,
        body: String,
        client_msg_id: String,
        sent_at: DateTime<Utc>,
        position: GlobalPosition,
        reply_to: Option<MessageSeq>,
    ) -> Self {
        Self {
            id,
            room_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            position,
            edited_at: None,
            deleted: false,
            reply_to,
            reactions: Vec::new(),
            changed: false,
        }
    }

    /// The message deleted and its text gone (a deletion, or its sender's erasure).
    pub fn erase(&mut self, position: GlobalPosition) {
        self.body = String::new();
        self.deleted = true;
        self.reactions.clear();
        self.position = position;
        self.changed = true;
    }

    /// Applies a change of this message (events about other messages are ignored): the
    /// event's operations on `messages_view` ([`crate::changes`]) that name this row.
    pub fn apply(&mut self, event: &parley_domain::RoomEvent, position: GlobalPosition) {
        for op in crate::changes::room_changes(self.room_id, event) {
            if let crate::changes::RowOp::Messages(op) = op {
                if self.is_row_of(&op) {
                    self.apply_op(&op, position);
                }
            }
        }
    }

    /// Whether `op` changes this row (an insert changes none).
    pub(crate) fn is_row_of(&self, op: &MessagesOp<'_>) -> bool {
        match *op {
            MessagesOp::Insert { .. } => false,
            MessagesOp::EraseSender { sender } => sender == self.sender,
            MessagesOp::Edit { room, seq, .. }
            | MessagesOp::Erase { room, seq }
            | MessagesOp::React { room, seq, .. }
            | MessagesOp::Unreact { room, seq, .. } => room == self.room_id && seq == self.seq,
        }
    }

    /// The embedded writer of a `messages_view` row: `op` (one that [`Self::is_row_of`] this
    /// row) at `position`, as the SQL writer's statement changes the row.
    pub(crate) fn apply_op(&mut self, op: &MessagesOp<'_>, position: GlobalPosition) {
        match *op {
            MessagesOp::Insert { .. } => return,
            MessagesOp::Edit {
                body, edited_at, ..
            } => {
                if self.deleted {
                    return;
                }
                self.body = body.to_owned();
                self.edited_at = Some(edited_at);
            }
            MessagesOp::Erase { .. } | MessagesOp::EraseSender { .. } => {
                self.erase(position);
                return;
            }
            MessagesOp::React { emoji, user, .. } => {
                let at = match self
                    .reactions
                    .binary_search_by(|r| r.emoji.as_str().cmp(emoji))
                {
                    Ok(at) => at,
                    Err(at) => {
                        self.reactions.insert(
                            at,
                            ReactionView {
                                emoji: emoji.to_owned(),
                                users: Vec::new(),
                            },
                        );
                        at
                    }
                };
                if self.reactions[at].users.contains(&user) {
                    return;
                }
                self.reactions[at].users.push(user);
            }
            MessagesOp::Unreact { emoji, user, .. } => {
                let Some(at) = self.reactions.iter().position(|r| r.emoji == emoji) else {
                    return;
                };
                if !self.reactions[at].users.contains(&user) {
                    return;
                }
                self.reactions[at].users.retain(|u| *u != user);
                if self.reactions[at].users.is_empty() {
                    self.reactions.remove(at);
                }
            }
        }
        self.position = position;
        self.changed = true;
    }
}

/// One entry of a member's rooms list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomListItem {
    pub room: RoomView,
    pub last_message: Option<MessageView>,
    pub unread_count: i64,
    /// Position of the last activity (message or creation); the list is sorted by it.
    pub last_activity: GlobalPosition,
}

/// A page of history, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// More messages exist beyond this page in the direction it was read.
    pub has_more: bool,
}

/// A request for a page of history: `after`/`before` are exclusive seq bounds; `first` reads
/// forward from `after` (or the start), `last` reads backward from `before` (or the end).
/// Without `after`, a page is the newest messages. The numbers are as the client gave them;
/// [`PageRequest::validate`] turns them into seqs and a size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub first: Option<i64>,
    pub last: Option<i64>,
}

/// Why a page request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("first and last cannot be used together")]
    FirstAndLast,
    #[error("page size must be between 1 and {max}, got {got}")]
    Size { max: i64, got: i64 },
    #[error("after and before must not be negative")]
    NegativeCursor,
}

/// A validated page request: the seq range and how to walk it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Exclusive lower bound.
    pub after: MessageSeq,
    /// Exclusive upper bound.
    pub before: MessageSeq,
    pub limit: i64,
    /// Read from the upper end (newest first, then reversed).
    pub backward: bool,
}

impl PageRequest {
    pub const DEFAULT_SIZE: i64 = 50;
    pub const MAX_SIZE: i64 = 100;

    pub fn validate(self) -> Result<Page, PageError> {
        if self.first.is_some() && self.last.is_some() {
            return Err(PageError::FirstAndLast);
        }
        let bound = |cursor: Option<i64>, open: MessageSeq| {
            cursor.map_or(Ok(open), |c| {
                MessageSeq::try_from(c).map_err(|_| PageError::NegativeCursor)
            })
        };
        let after = bound(self.after, MessageSeq::ZERO)?;
        let before = bound(self.before, MessageSeq::MAX)?;
        let size = self.first.or(self.last).unwrap_or(Self::DEFAULT_SIZE);
        if !(1..=Self::MAX_SIZE).contains(&size) {
            return Err(PageError::Size {
                max: Self::MAX_SIZE,
                got: size,
            });
        }
        // Forward when asked for `first`, or when only `after` is given.
        let backward = self.last.is_some() || (self.first.is_none() && self.after.is_none());
        Ok(Page {
            after,
            before,
            limit: size,
            backward,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_page_is_the_newest_fifty() {
        let page = PageRequest::default().validate().unwrap();
        assert_eq!((page.limit, page.backward), (50, true));
    }

    #[test]
    fn after_alone_reads_forward() {
        let page = PageRequest {
            after: Some(7),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!((page.after, page.backward), (MessageSeq(7), false));
    }

    #[test]
    fn more_than_a_hundred_is_refused() {
        let request = PageRequest {
            first: Some(101),
            ..Default::default()
        };
        assert_eq!(
            request.validate(),
            Err(PageError::Size { max: 100, got: 101 })
        );
        let request = PageRequest {
            last: Some(0),
            ..Default::default()
        };
        assert_eq!(
            request.validate(),
            Err(PageError::Size { max: 100, got: 0 })
        );
    }

    #[test]
    fn first_and_last_together_are_refused() {
        let request = PageRequest {
            first: Some(1),
            last: Some(1),
            ..Default::default()
        };
        assert_eq!(request.validate(), Err(PageError::FirstAndLast));
    }

    #[test]
    fn negative_cursors_are_refused() {
        let request = PageRequest {
            after: Some(-1),
            ..Default::default()
        };
        assert_eq!(request.validate(), Err(PageError::NegativeCursor));
    }
}
