//! Time travel: a room as it was at a global position.
//!
//! The state is computed, never stored: the room's own events up to the position are folded
//! through the `Room` aggregate's `apply`, the same code that decides commands, so the past
//! and the present can never disagree on what an event means. Both stores read the room's
//! events and hand them to [`RoomReplay`].
//!
//! Timestamps are given at the log's precision (microseconds), like the Postgres read
//! models, so a room as of the head equals the live room view.

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::Aggregate;
use parley_domain::{MessageSeq, Room, RoomEvent, RoomId, RoomVisibility, UserId};
use serde::Serialize;

use crate::log::{DecodedEvent, LogEvent};
use crate::views::{MessageView, RoomView};
use crate::GlobalPosition;

/// A room as of a global position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomAt {
    pub id: RoomId,
    /// The position this state is as of (the one asked for).
    pub position: GlobalPosition,
    pub name: String,
    /// The topic then, if one was set.
    pub topic: Option<String>,
    pub host: UserId,
    pub created_at: DateTime<Utc>,
    /// Members then, in user-id order.
    pub members: Vec<UserId>,
    /// Invited users who had not joined yet, in user-id order.
    pub invited: Vec<UserId>,
    pub visibility: RoomVisibility,
    /// Moderators then, in user-id order.
    pub moderators: Vec<UserId>,
    /// Users banned then, in user-id order.
    pub banned: Vec<UserId>,
    /// Messages sent up to the position (their seqs are 1..=message_count).
    pub message_count: i64,
    /// The newest of those messages.
    pub last_message: Option<MessageView>,
}

impl RoomAt {
    /// The same state in the shape of the live room view (`last_seq` = `message_count`), so
    /// the API can answer `room(id, atPosition)` with the resolvers it uses for `room(id)`.
    pub fn view(&self) -> RoomView {
        RoomView {
            id: self.id,
            name: self.name.clone(),
            topic: self.topic.clone(),
            host: self.host,
            created_at: self.created_at,
            last_seq: MessageSeq::stored(self.message_count),
            members: self.members.clone(),
            invited: self.invited.clone(),
            visibility: self.visibility,
            moderators: self.moderators.clone(),
            banned: self.banned.clone(),
        }
    }
}

/// Folds one room's events, in position order, into a [`RoomAt`].
#[derive(Debug, Default)]
pub(crate) struct RoomReplay {
    room: Room,
    last_message: Option<MessageView>,
}

impl RoomReplay {
    /// Applies the next event of the room (events of other aggregates are ignored).
    pub fn apply(&mut self, event: &LogEvent) {
        let DecodedEvent::Room(room_id, decoded) = event.decode() else {
            return;
        };
        if let RoomEvent::MessageSent {
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to,
        } = &decoded
        {
            self.last_message = Some(MessageView::sent(
                *message_id,
                room_id,
                *seq,
                *sender,
                body.as_str().to_owned(),
                client_msg_id.as_str().to_owned(),
                sent_at.trunc_subsecs(6),
                event.position,
                *reply_to,
            ));
        } else if let Some(last) = &mut self.last_message {
            last.apply(&decoded, event.position);
        }
        self.room.apply(decoded);
    }

    /// The state reached, as of `position`; `None` if the room did not exist yet.
    pub fn finish(self, position: GlobalPosition) -> Option<RoomAt> {
        let room = self.room;
        Some(RoomAt {
            id: room.id()?,
            position,
            name: room.name()?.as_str().to_owned(),
            topic: room.topic().map(|t| t.as_str().to_owned()),
            host: room.host()?,
            created_at: room.created_at()?.trunc_subsecs(6),
            members: room.members().iter().copied().collect(),
            invited: room.invited().iter().copied().collect(),
            visibility: room.visibility(),
            moderators: room.moderators().iter().copied().collect(),
            banned: room.banned().iter().copied().collect(),
            message_count: room.last_seq().0 as i64,
            last_message: self.last_message,
        })
    }
}
