//! The live path from the projector to subscribers on any instance.
//!
//! The active projector hands each committed batch to its instance's [`LiveFeed`]; the
//! [`publish`] task of that instance turns the events into [`LiveEvent`]s and publishes them
//! on relay channels: a room's events on its room channel, invitations on the invitee's user
//! channel, announcements on the broadcast channel. Subscribers (GraphQL subscriptions)
//! listen on those channels on whichever instance they are connected to.
//!
//! Every room-channel event carries the room's aggregate `sequence` (contiguous 1, 2, 3…),
//! and messages their `seq`, so a subscriber detects anything the relay lost and re-reads it.

mod budget;
pub mod feed;

pub use budget::{BudgetSpent, SubscriptionBudget, SubscriptionSlot};
pub use feed::{OpenFeed, OpenFeeds};

use chrono::{DateTime, Utc};
use parley_domain::{MessageId, MessageSeq, RoomEvent, RoomId, RoomRole, UserEvent, UserId};
use parley_projections::{
    DecodedEvent, GlobalPosition, LiveFeed, LogEvent, MessageView, ReadModels,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::relay::{Channel, Relay};

/// Kinds of system notice (API.md `NoticeKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
pub enum NoticeKind {
    RoomCreated,
    MemberInvited,
    MemberJoined,
    MemberLeft,
    MemberOnline,
    MemberOffline,
    Announcement,
    RoomUpdated,
    MemberKicked,
    MemberBanned,
    MemberUnbanned,
    RoleChanged,
}

/// A message as it travels live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    pub seq: MessageSeq,
    pub sender: UserId,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at: DateTime<Utc>,
    pub position: GlobalPosition,
    /// The message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageSeq>,
    // The state of a changed message (a fresh one relays without these fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<LiveReaction>,
}

/// One emoji's reactions to a message, with who gave them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveReaction {
    pub emoji: String,
    pub users: Vec<UserId>,
}

impl From<MessageView> for LiveMessage {
    fn from(m: MessageView) -> Self {
        Self {
            id: m.id,
            room_id: m.room_id,
            seq: m.seq,
            sender: m.sender,
            body: m.body,
            client_msg_id: m.client_msg_id,
            sent_at: m.sent_at,
            position: m.position,
            reply_to: m.reply_to,
            edited_at: m.edited_at,
            deleted: m.deleted,
            reactions: m
                .reactions
                .into_iter()
                .map(|r| LiveReaction {
                    emoji: r.emoji,
                    users: r.users,
                })
                .collect(),
        }
    }
}

/// A system notice as it travels live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveNotice {
    pub kind: NoticeKind,
    pub room_id: Option<RoomId>,
    /// Whom the notice is about (the member who joined, the invitee…).
    pub user: Option<UserId>,
    /// Who caused it, when that is someone else (the host who invited).
    pub by: Option<UserId>,
    /// Free text (announcements).
    pub text: Option<String>,
    /// The role given (`ROLE_CHANGED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoomRole>,
    /// A ban's reason (`MEMBER_BANNED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Global log position (0 for ephemeral notices such as presence).
    pub position: GlobalPosition,
    pub at: DateTime<Utc>,
}

/// What crosses the relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// A stored message; `sequence` is the room's aggregate sequence.
    Message { sequence: i64, message: LiveMessage },
    /// A stored room event as a notice (`sequence` set) or an ephemeral or personal notice.
    Notice {
        sequence: Option<i64>,
        notice: LiveNotice,
    },
    /// A stored message was edited, deleted or reacted to: which one, and the change's
    /// position. Subscribers read the message as it now is from the read model.
    MessageChanged {
        sequence: i64,
        room_id: RoomId,
        seq: MessageSeq,
        position: GlobalPosition,
    },
    /// Something about the user's own list of rooms changed in this room (they created,
    /// joined or left it, or moved their read cursor): on the user's channel, for
    /// `roomUpdates`, which re-reads the room.
    RoomsChanged { room_id: RoomId },
    /// The user blocked or unblocked someone: their `messages` subscriptions re-read whom
    /// they block (on the user's channel).
    BlocksChanged,
    /// Someone is typing (ephemeral; never stored).
    Typing {
        room_id: RoomId,
        user: UserId,
        is_typing: bool,
    },
}

impl LiveNotice {
    /// Whether this notice takes `user` out of its room (they left, were kicked or banned):
    /// their subscriptions to the room end with it.
    pub fn removes(&self, user: UserId) -> bool {
        matches!(
            self.kind,
            NoticeKind::MemberLeft | NoticeKind::MemberKicked | NoticeKind::MemberBanned
        ) && self.user == Some(user)
    }
}

impl LiveEvent {
    /// The room's aggregate sequence, for room-channel events from the log.
    pub fn sequence(&self) -> Option<i64> {
        match self {
            Self::Message { sequence, .. } => Some(*sequence),
            Self::Notice { sequence, .. } => *sequence,
            Self::MessageChanged { sequence, .. } => Some(*sequence),
            Self::Typing { .. } | Self::RoomsChanged { .. } | Self::BlocksChanged => None,
        }
    }
}

fn notice(
    kind: NoticeKind,
    room: RoomId,
    user: UserId,
    by: Option<UserId>,
    log: &LogEvent,
) -> LiveNotice {
    LiveNotice {
        kind,
        room_id: Some(room),
        user: Some(user),
        by,
        text: None,
        role: None,
        reason: None,
        position: log.position,
        at: log.recorded_at,
    }
}

/// The live events of one log event, with the channels they go to.
pub fn live_events(log: &LogEvent, decoded: &DecodedEvent) -> Vec<(Channel, LiveEvent)> {
    if let DecodedEvent::User(admin, UserEvent::AnnouncementMade { text, .. }) = decoded {
        let notice = LiveNotice {
            kind: NoticeKind::Announcement,
            room_id: None,
            user: Some(*admin),
            by: Some(*admin),
            text: Some(text.as_str().to_owned()),
            role: None,
            reason: None,
            position: log.position,
            at: log.recorded_at,
        };
        return vec![(
            Channel::Broadcast,
            LiveEvent::Notice {
                sequence: None,
                notice,
            },
        )];
    }
    if let DecodedEvent::User(
        blocker,
        UserEvent::UserBlocked { .. } | UserEvent::UserUnblocked { .. },
    ) = decoded
    {
        return vec![(Channel::User(*blocker), LiveEvent::BlocksChanged)];
    }
    let DecodedEvent::Room(room, event) = decoded else {
        return Vec::new();
    };
    let room = *room;
    let sequence = Some(log.sequence);
    let on_room =
        |notice: LiveNotice| (Channel::Room(room), LiveEvent::Notice { sequence, notice });
    // To the room, and to the user it is about (who is no longer, or not yet, in it).
    let on_room_and_user = |notice: LiveNotice, user: UserId| {
        vec![
            on_room(notice.clone()),
            (
                Channel::User(user),
                LiveEvent::Notice {
                    sequence: None,
                    notice,
                },
            ),
        ]
    };
    // To the user whose own list of rooms it changes.
    let rooms_changed = |user: UserId| {
        (
            Channel::User(user),
            LiveEvent::RoomsChanged { room_id: room },
        )
    };
    match event {
        RoomEvent::RoomCreated { host, .. } => {
            vec![
                on_room(notice(NoticeKind::RoomCreated, room, *host, None, log)),
                rooms_changed(*host),
            ]
        }
        RoomEvent::RoomUpdated { updated_by, .. } => {
            vec![on_room(notice(
                NoticeKind::RoomUpdated,
                room,
                *updated_by,
                None,
                log,
            ))]
        }
        RoomEvent::MemberInvited {
            user_id,
            invited_by,
        } => {
            let invited = notice(
                NoticeKind::MemberInvited,
                room,
                *user_id,
                Some(*invited_by),
                log,
            );
            vec![
                on_room(invited.clone()),
                (
                    Channel::User(*user_id),
                    LiveEvent::Notice {
                        sequence: None,
                        notice: invited,
                    },
                ),
            ]
        }
        RoomEvent::MemberJoined { user_id } => {
            vec![
                on_room(notice(NoticeKind::MemberJoined, room, *user_id, None, log)),
                rooms_changed(*user_id),
            ]
        }
        RoomEvent::MemberLeft { user_id } => {
            vec![
                on_room(notice(NoticeKind::MemberLeft, room, *user_id, None, log)),
                rooms_changed(*user_id),
            ]
        }
        RoomEvent::MemberRoleChanged {
            user_id,
            role,
            changed_by,
        } => {
            let mut changed = notice(
                NoticeKind::RoleChanged,
                room,
                *user_id,
                Some(*changed_by),
                log,
            );
            changed.role = Some(*role);
            vec![on_room(changed)]
        }
        RoomEvent::MemberKicked { user_id, kicked_by } => on_room_and_user(
            notice(
                NoticeKind::MemberKicked,
                room,
                *user_id,
                Some(*kicked_by),
                log,
            ),
            *user_id,
        ),
        RoomEvent::MemberBanned {
            user_id,
            banned_by,
            reason,
        } => {
            let mut banned = notice(
                NoticeKind::MemberBanned,
                room,
                *user_id,
                Some(*banned_by),
                log,
            );
            banned.reason = reason.as_ref().map(|r| r.as_str().to_owned());
            on_room_and_user(banned, *user_id)
        }
        RoomEvent::MemberUnbanned {
            user_id,
            unbanned_by,
        } => on_room_and_user(
            notice(
                NoticeKind::MemberUnbanned,
                room,
                *user_id,
                Some(*unbanned_by),
                log,
            ),
            *user_id,
        ),
        RoomEvent::MessageEdited { seq, .. }
        | RoomEvent::MessageDeleted { seq, .. }
        | RoomEvent::ReactionAdded { seq, .. }
        | RoomEvent::ReactionRemoved { seq, .. } => vec![(
            Channel::Room(room),
            LiveEvent::MessageChanged {
                sequence: log.sequence,
                room_id: room,
                seq: *seq,
                position: log.position,
            },
        )],
        RoomEvent::MessageSent {
            message_id,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            reply_to,
        } => vec![(
            Channel::Room(room),
            LiveEvent::Message {
                sequence: log.sequence,
                message: LiveMessage {
                    id: *message_id,
                    room_id: room,
                    seq: *seq,
                    sender: *sender,
                    body: body.as_str().to_owned(),
                    client_msg_id: client_msg_id.as_str().to_owned(),
                    sent_at: *sent_at,
                    position: log.position,
                    reply_to: *reply_to,
                    edited_at: None,
                    deleted: false,
                    reactions: Vec::new(),
                },
            },
        )],
    }
}

/// Most live events sent to the relay in one round trip.
const PUBLISH_CHUNK: usize = 500;

/// Publishes every batch the instance's projector hands over, in log order, until `stop`.
///
/// Nothing projected is silently dropped between the projector and the relay, so the last
/// message of a conversation always arrives: a publish that fails is tried again (with
/// backoff) until it goes through; if the publisher falls behind the live feed meanwhile,
/// it re-reads what it skipped from the log by position and publishes that first.
/// Subscribers drop what they already have by their cursors, so a repeat is harmless.
pub async fn publish(
    feed: LiveFeed,
    relay: Relay,
    models: ReadModels,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut batches = feed.subscribe();
    tokio::pin!(stop);
    // The newest position published (0: nothing yet, so nothing to re-read either).
    let mut published = 0i64;
    loop {
        let batch = tokio::select! {
            () = &mut stop => return,
            batch = batches.recv() => batch,
        };
        let events: Vec<(LogEvent, DecodedEvent)> = match batch {
            Ok(batch) => batch.iter().cloned().collect(),
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(
                    skipped,
                    "live publisher fell behind; re-reading from the log"
                );
                metrics::counter!("parley_live_publisher_lagged_total").increment(1);
                match skipped_events(&models, published, &mut batches).await {
                    Some(events) => events,
                    None => continue,
                }
            }
            Err(RecvError::Closed) => return,
        };
        let Some((last, _)) = events.last() else {
            continue;
        };
        let last = last.position.0;
        let mut outgoing = Vec::new();
        for (log, decoded) in events.iter().filter(|(e, _)| e.position.0 > published) {
            for (channel, event) in live_events(log, decoded) {
                match serde_json::to_value(&event) {
                    Ok(payload) => outgoing.push((channel, payload)),
                    Err(error) => tracing::error!(%error, "live event not serializable"),
                }
            }
        }
        // One round trip per chunk of a batch, in log order; a chunk that fails is tried
        // again until it goes through.
        for chunk in outgoing.chunks(PUBLISH_CHUNK) {
            let mut delay = std::time::Duration::from_millis(50);
            while let Err(error) = relay.publish_all(chunk).await {
                tracing::warn!(%error, events = chunk.len(), "live events not relayed yet; retrying");
                metrics::counter!("parley_relay_publish_errors_total")
                    .increment(chunk.len() as u64);
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
        published = published.max(last);
    }
}

/// After the publisher lagged: the events after `published` up to the newest the live feed
/// holds now, read from the log page by page (the feed is drained meanwhile: what it held is
/// part of the re-read). `None` when nothing was published before (a fresh publisher has
/// nothing to catch up on: subscribers re-read on their own when they start).
async fn skipped_events(
    models: &ReadModels,
    published: i64,
    batches: &mut tokio::sync::broadcast::Receiver<parley_projections::log::LiveBatch>,
) -> Option<Vec<(LogEvent, DecodedEvent)>> {
    // Whatever the feed still buffers is newer than what was skipped; drop it and read
    // everything from the log up to its newest position.
    let mut up_to = None;
    loop {
        match batches.try_recv() {
            Ok(batch) => up_to = batch.last().map(|(e, _)| e.position.0).or(up_to),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    if published == 0 && up_to.is_none() {
        return None;
    }
    let filter = parley_projections::EventFilter::default();
    let mut out = Vec::new();
    let mut after = published;
    loop {
        match models.events(Some(after), Some(1000), &filter).await {
            Ok(page) => {
                let done = !page.has_more;
                for event in page.events {
                    if up_to.is_some_and(|u| event.position.0 > u) {
                        return Some(out);
                    }
                    after = event.position.0;
                    let decoded = event.decode();
                    out.push((event, decoded));
                }
                if done {
                    return Some(out);
                }
            }
            Err(error) => {
                tracing::error!(%error, "cannot re-read skipped live events; subscribers will re-read on their next gap");
                return Some(out);
            }
        }
    }
}

/// Converts a log event read back for gap filling into the live event a subscriber would have
/// received on the room channel.
pub fn replayed_room_event(log: &LogEvent) -> Option<LiveEvent> {
    let decoded = log.decode();
    live_events(log, &decoded)
        .into_iter()
        .find(|(channel, _)| matches!(channel, Channel::Room(_)))
        .map(|(_, event)| event)
}

/// Publishes ephemeral live events (typing, presence) in one round trip; a failure is
/// logged, not returned: these events are never stored and expire on their own.
pub async fn publish_ephemeral(relay: &Relay, events: Vec<(Channel, LiveEvent)>) {
    let mut outgoing = Vec::with_capacity(events.len());
    for (channel, event) in events {
        match serde_json::to_value(&event) {
            Ok(payload) => outgoing.push((channel, payload)),
            Err(error) => tracing::error!(%error, "live event not serializable"),
        }
    }
    if let Err(error) = relay.publish_all(&outgoing).await {
        tracing::warn!(%error, "ephemeral live event not relayed");
    }
}

/// Tells every room `user` is a member of that they came online or went offline
/// (ephemeral notices: never stored, no cursor).
pub async fn publish_presence(app: &crate::app::App, user: parley_domain::UserId, online: bool) {
    let rooms = match app.read_models.rooms_of(user).await {
        Ok(rooms) => rooms,
        Err(error) => return tracing::warn!(%error, "presence notice skipped: rooms unavailable"),
    };
    let kind = if online {
        NoticeKind::MemberOnline
    } else {
        NoticeKind::MemberOffline
    };
    let notices = rooms
        .into_iter()
        .map(|item| {
            let notice = LiveNotice {
                kind,
                room_id: Some(item.room.id),
                user: Some(user),
                by: None,
                text: None,
                role: None,
                reason: None,
                position: GlobalPosition::START,
                at: Utc::now(),
            };
            (
                Channel::Room(item.room.id),
                LiveEvent::Notice {
                    sequence: None,
                    notice,
                },
            )
        })
        .collect();
    publish_ephemeral(&app.relay, notices).await;
}

/// Who this instance saw typing recently, so that sending a message publishes "stopped
/// typing" only for someone who was typing (typing on one device and sending from another
/// instance leaves the indicator to expire by itself).
#[derive(Debug, Default)]
pub struct TypingTracker {
    started: std::sync::Mutex<std::collections::HashMap<(RoomId, UserId), std::time::Instant>>,
}

impl TypingTracker {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(RoomId, UserId), std::time::Instant>>
    {
        // Plain map operations only: a poisoned lock still holds a consistent map.
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `user` is typing in `room` now.
    pub fn started(&self, room: RoomId, user: UserId) {
        let now = std::time::Instant::now();
        let mut map = self.map();
        if map.len() > 10_000 {
            map.retain(|_, at| now.duration_since(*at) < TYPING_TTL);
        }
        map.insert((room, user), now);
    }

    /// Whether `user` was typing in `room` (within the indicator's lifetime); forgets it.
    pub fn stopped(&self, room: RoomId, user: UserId) -> bool {
        self.map()
            .remove(&(room, user))
            .is_some_and(|at| at.elapsed() < TYPING_TTL)
    }
}

/// How long a typing indicator lasts without a refresh.
pub const TYPING_TTL: std::time::Duration = std::time::Duration::from_secs(5);
