//! `Subscription`: live messages, message changes, typing and notices, over the relay.
//!
//! The room subscriptions (`messages`, `messageUpdates`, `typing`, `notices(roomId)`) are
//! thin adapters over one [`RoomFeed`] each (`src/live/feed.rs`), which owns the rules once: subscribe to the
//! room's relay channel first, then check membership and read; one cursor over all of the
//! room's stored events (its aggregate sequence), so each comes exactly once and in log
//! order, relayed or — after a jump, a `Resync` or a `Lagged` — re-read from the log page
//! by page; the caller's own removal (leave, kick, ban) in order, then the end. An adapter
//! only replays what came before the feed's start from the read model (`messages` after
//! `after`, `messageUpdates` after its position) and picks the events it shows. Memory
//! stays bounded: the relay buffer per subscriber is fixed and re-reads go page by page.
//!
//! `roomUpdates` is the exception to "one channel": it listens on the caller's own channel
//! and on each of their rooms' channels at once, and answers each change by re-reading the
//! room from the read models (the relayed event says only *that* a room changed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;

use async_graphql::{Context, Subscription, ID};
use async_stream::stream;
use futures::{FutureExt, Stream, StreamExt};
use parley_domain::{MessageSeq, RoomId, UserId};
use parley_projections::GlobalPosition;
use tokio::time::Instant;
use tokio_stream::StreamMap;

use super::context::{actor, app, member_at, SubscriptionBudget};
use super::error::{ApiError, ApiResult};
use super::types::{last_message_for, Message, Notice, Room, TypingEvent};
use crate::app::App;
use crate::live::feed::{decode, FeedEvent, RoomFeed};
use crate::live::{LiveEvent, LiveMessage};
use crate::relay::{Channel, RelayItem, Subscription as RelaySubscription};

pub use crate::live::TYPING_TTL;

/// Messages re-read per query when replaying or filling a gap.
const PAGE: i64 = 100;

#[derive(Debug, Default)]
pub struct Subscription;

async fn subscribe(app: &App, channel: Channel) -> ApiResult<RelaySubscription> {
    app.relay
        .subscribe(&channel)
        .await
        .map_err(|e| ApiError::internal(format!("live relay unavailable: {e}")).into())
}

/// The users `me` blocks.
async fn blocked_by(app: &App, me: UserId) -> Result<HashSet<UserId>, ApiError> {
    let blocked = app.read_models.blocked_by(me).await?;
    Ok(blocked.into_iter().collect())
}

/// Messages of `room` with `after < seq <= up_to`, read page by page.
async fn read_messages(
    app: &App,
    room: RoomId,
    after: MessageSeq,
    up_to: MessageSeq,
) -> Result<Vec<LiveMessage>, ApiError> {
    let mut out = Vec::new();
    let mut cursor = after;
    while cursor < up_to {
        let page = app
            .read_models
            .messages_between(room, cursor, up_to, PAGE)
            .await
            .map_err(ApiError::from)?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        let full = page.len() as i64 == PAGE;
        out.extend(page.into_iter().map(LiveMessage::from));
        if !full {
            break;
        }
    }
    Ok(out)
}

/// A cursor given by the client is never negative.
/// An `after` cursor as a client gives it: never negative.
fn after_cursor<T: TryFrom<i64>>(after: Option<i64>) -> Result<Option<T>, async_graphql::Error> {
    after
        .map(|after| {
            T::try_from(after)
                .map_err(|_| ApiError::BadInput("after must not be negative".to_owned()).into())
        })
        .transpose()
}

/// Starts the caller's feed of `room_id` ([`RoomFeed::start`]): their identity and their
/// share of the connection's subscription budget from the context.
async fn start_feed(ctx: &Context<'_>, room_id: &ID) -> Result<RoomFeed, async_graphql::Error> {
    let me = actor(ctx)?;
    let room = super::context::room_id(room_id)?;
    let slot = ctx
        .data_unchecked::<SubscriptionBudget>()
        .take()
        .map_err(ApiError::from)?;
    Ok(RoomFeed::start(app(ctx).clone(), me, room, slot)
        .await
        .map_err(ApiError::from)?)
}

/// Admits the caller to a started feed once they are found a member.
async fn admit(feed: &mut RoomFeed) -> Result<(), async_graphql::Error> {
    let (_, sequence) = member_at(&feed.app, feed.room, feed.me).await?;
    feed.admit(sequence);
    Ok(())
}

/// [`start_feed`], then [`admit`].
async fn open_feed(ctx: &Context<'_>, room_id: &ID) -> Result<RoomFeed, async_graphql::Error> {
    let mut feed = start_feed(ctx, room_id).await?;
    admit(&mut feed).await?;
    Ok(feed)
}

#[Subscription]
impl Subscription {
    /// Messages of a room: first those after seq `after` (when given), then live ones, in
    /// seq order with no gap and no duplicate. Members only; ends when the caller leaves.
    /// Messages of users the caller blocks are not sent (they stay in the history).
    async fn messages(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<i64>,
    ) -> Result<impl Stream<Item = ApiResult<Message>>, async_graphql::Error> {
        let after: Option<MessageSeq> = after_cursor(after)?;
        let mut feed = start_feed(ctx, &room_id).await?;
        let (me, room, app) = (feed.me, feed.room, feed.app.clone());
        // The replay ends at what the read model holds now: everything before the feed's
        // start, and nothing after the removal the feed would end with (read before the
        // membership check). It is also the anchor without `after`: the newest history page
        // a client reads next (the aggregate runs ahead of the read model).
        let newest = app
            .read_models
            .room(room)
            .await
            .map_err(ApiError::from)?
            .map_or(MessageSeq::ZERO, |view| view.last_seq);
        admit(&mut feed).await?;
        // Whom the caller blocks: read after subscribing to their channel, which says when
        // it changes.
        let mut mine = subscribe(&app, Channel::User(me)).await?;
        let mut blocked = blocked_by(&app, me).await?;
        let mut last = after.unwrap_or(newest);
        Ok(stream! {
            // The replay, from the read model, page by page; the feed's messages up to its
            // end are dropped by seq.
            while last < newest {
                match read_messages(&app, room, last, newest.min(last.plus(PAGE as u64))).await {
                    Ok(page) if page.is_empty() => break,
                    Ok(page) => for message in page {
                        last = message.seq;
                        if !blocked.contains(&message.sender) {
                            yield Ok(Message(message));
                        }
                    },
                    Err(error) => { yield Err(error.into()); return; }
                }
            }
            loop {
                let event = tokio::select! {
                    event = feed.next() => event,
                    personal = mine.recv() => {
                        let reread = match &personal {
                            None => return,
                            Some(RelayItem::Message(relayed)) => {
                                matches!(decode(relayed), Some(LiveEvent::BlocksChanged))
                            }
                            // The relay may have lost a change of the block list.
                            Some(_) => true,
                        };
                        if reread {
                            match blocked_by(&app, me).await {
                                Ok(now) => blocked = now,
                                Err(error) => { yield Err(error.into()); return; }
                            }
                        }
                        continue;
                    }
                };
                let event = match event {
                    None => return,
                    Some(Ok(event)) => event,
                    Some(Err(error)) => { yield Err(ApiError::from(error).into()); return; }
                };
                let Some(LiveEvent::Message { message, .. }) = event.event() else { continue };
                if message.seq <= last {
                    continue;
                }
                if message.seq > last.next() {
                    // The feed has every stored event after where it started and the replay
                    // everything before: this would be a defect, so it is logged.
                    tracing::error!(%room, expected = %last.next(), got = %message.seq, "a message feed skipped messages");
                }
                last = message.seq;
                if blocked.contains(&message.sender) {
                    continue;
                }
                let mut message = message.clone();
                if matches!(event, FeedEvent::Replayed(_)) && message.body.is_empty() {
                    // Re-read from the log with its text erased since (a body is never
                    // blank otherwise): the read model says how (deleted, by whom).
                    match app.read_models.message(room, message.seq).await {
                        Ok(Some(now)) => message = LiveMessage::from(now),
                        Ok(None) => {}
                        Err(error) => { yield Err(ApiError::from(error).into()); return; }
                    }
                }
                yield Ok(Message(message));
            }
        })
    }

    /// Changes of a room's messages — edits, deletions, reactions — as the changed message
    /// in its current state. With `after` (a global position): first every message whose
    /// newest change is after it, oldest change first, then live. Without: live only.
    /// Members only; ends when the caller leaves.
    async fn message_updates(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<i64>,
    ) -> Result<impl Stream<Item = ApiResult<Message>>, async_graphql::Error> {
        let after: Option<GlobalPosition> = after_cursor(after)?;
        let mut feed = open_feed(ctx, &room_id).await?;
        let (room, app) = (feed.room, feed.app.clone());
        // Every change up to `delivered` is in what the caller has: the feed's changes
        // start after `opened_at`, and the replay's messages hold their changes up to it.
        let opened_at = feed.opened_at;
        let mut delivered = after.unwrap_or(opened_at);
        Ok(stream! {
            // The replay ends at the feed's start: a message changed since comes from the
            // feed, and nothing after the caller's removal is replayed.
            if let Some(mut from) = after {
                'replay: while from < opened_at {
                    let page = match app.read_models.changed_messages(room, from, PAGE).await {
                        Ok(page) => page,
                        Err(error) => { yield Err(ApiError::from(error).into()); return; }
                    };
                    let full = page.len() as i64 == PAGE;
                    for message in page {
                        if message.position > opened_at {
                            break 'replay;
                        }
                        from = message.position;
                        delivered = delivered.max(from);
                        yield Ok(Message(LiveMessage::from(message)));
                    }
                    if !full {
                        break;
                    }
                }
            }
            loop {
                let event = match feed.next().await {
                    None => return,
                    Some(Ok(event)) => event,
                    Some(Err(error)) => { yield Err(ApiError::from(error).into()); return; }
                };
                let Some(&LiveEvent::MessageChanged { seq, position, .. }) = event.event() else { continue };
                if position <= delivered {
                    continue;
                }
                match app.read_models.message(room, seq).await {
                    Ok(found) => {
                        delivered = position;
                        if let Some(message) = found {
                            yield Ok(Message(LiveMessage::from(message)));
                        }
                    }
                    Err(error) => { yield Err(ApiError::from(error).into()); return; }
                }
            }
        })
    }

    /// Who is typing in a room: `isTyping: true` when someone starts, `false` when they send a
    /// message or after ~5 s without a refresh. The caller's own typing is not echoed.
    /// Members only; ends when the caller leaves.
    async fn typing(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
    ) -> Result<impl Stream<Item = ApiResult<TypingEvent>>, async_graphql::Error> {
        let mut feed = open_feed(ctx, &room_id).await?;
        let (me, room) = (feed.me, feed.room);
        Ok(stream! {
            let mut typing: HashMap<UserId, Instant> = HashMap::new();
            loop {
                let next_expiry = typing.values().min().copied();
                let event = tokio::select! {
                    event = feed.next() => event,
                    () = async {
                        match next_expiry {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let now = Instant::now();
                        let expired: Vec<UserId> = typing.iter().filter(|(_, at)| **at <= now).map(|(u, _)| *u).collect();
                        for user in expired {
                            typing.remove(&user);
                            yield Ok(TypingEvent { room, user_id: user, is_typing: false });
                        }
                        continue;
                    }
                };
                let event = match event {
                    None => return,
                    Some(Ok(event)) => event,
                    Some(Err(error)) => { yield Err(ApiError::from(error).into()); return; }
                };
                let Some(&LiveEvent::Typing { user, is_typing, .. }) = event.event() else { continue };
                if user == me {
                    continue;
                }
                if is_typing {
                    let was_typing = typing.insert(user, Instant::now() + TYPING_TTL).is_some();
                    if !was_typing {
                        yield Ok(TypingEvent { room, user_id: user, is_typing: true });
                    }
                } else if typing.remove(&user).is_some() {
                    yield Ok(TypingEvent { room, user_id: user, is_typing: false });
                }
            }
        })
    }

    /// System notices. With `roomId`: that room's (created, invited, joined, left, online,
    /// offline), members only, in log order with gaps re-read from the log; ends with the
    /// caller's own leave. Without: the caller's own (invitations) and announcements.
    async fn notices(
        &self,
        ctx: &Context<'_>,
        room_id: Option<ID>,
    ) -> Result<impl Stream<Item = ApiResult<Notice>>, async_graphql::Error> {
        let stream: Pin<Box<dyn Stream<Item = ApiResult<Notice>> + Send>> = match room_id {
            Some(room_id) => {
                let mut feed = open_feed(ctx, &room_id).await?;
                Box::pin(stream! {
                    loop {
                        let event = match feed.next().await {
                            None => return,
                            Some(Ok(event)) => event,
                            Some(Err(error)) => { yield Err(ApiError::from(error).into()); return; }
                        };
                        if let Some(LiveEvent::Notice { notice, .. }) = event.event() {
                            yield Ok(Notice(notice.clone()));
                        }
                    }
                })
            }
            None => {
                let me = actor(ctx)?;
                let app = app(ctx).clone();
                let slot = ctx
                    .data_unchecked::<SubscriptionBudget>()
                    .take()
                    .map_err(ApiError::from)?;
                let mut mine = subscribe(&app, Channel::User(me)).await?;
                let mut everyone = subscribe(&app, Channel::Broadcast).await?;
                Box::pin(stream! {
                    let _slot = slot;
                    loop {
                        let item = tokio::select! {
                            item = mine.recv() => item,
                            item = everyone.recv() => item,
                        };
                        let Some(item) = item else { return };
                        let RelayItem::Message(relayed) = item else { continue };
                        if let Some(LiveEvent::Notice { notice, .. }) = decode(&relayed) {
                            yield Ok(Notice(notice.clone()));
                        }
                    }
                })
            }
        };
        Ok(stream)
    }

    /// The caller's rooms list kept live with one subscription: a room, as `rooms` shows it,
    /// whenever its last message, unread count, name or topic, or membership changes (a
    /// burst in one room is one update). A room the caller left, or was removed from, comes
    /// once more without them among its members, then no more; a room they create, join
    /// or open comes from then on. After a relay outage every room of the list comes again.
    async fn room_updates(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = ApiResult<Room>>, async_graphql::Error> {
        let me = actor(ctx)?;
        let app = app(ctx).clone();
        let slot = ctx
            .data_unchecked::<SubscriptionBudget>()
            .take()
            .map_err(ApiError::from)?;
        // Subscribe first, then read: nothing that changes after the read is missed.
        let mut mine = subscribe(&app, Channel::User(me)).await?;
        let mut feeds: StreamMap<RoomId, RelayStream> = StreamMap::new();
        for item in app.read_models.rooms_of(me).await.map_err(ApiError::from)? {
            feeds.insert(
                item.room.id,
                relay_stream(subscribe(&app, Channel::Room(item.room.id)).await?),
            );
        }
        Ok(stream! {
            let _slot = slot;
            loop {
                let mut dirty = BTreeSet::new();
                let mut resync = false;
                tokio::select! {
                    item = mine.recv() => match item {
                        None => return,
                        Some(item) => resync |= personal_change(item, &mut dirty),
                    },
                    Some((room, item)) = feeds.next(), if !feeds.is_empty() => {
                        resync |= room_change(room, item, &mut dirty);
                    }
                }
                // Whatever else is ready now joins this round.
                while let Some(item) = mine.try_recv() {
                    resync |= personal_change(item, &mut dirty);
                }
                while let Some(Some((room, item))) = feeds.next().now_or_never() {
                    resync |= room_change(room, item, &mut dirty);
                }
                if resync {
                    dirty.extend(feeds.keys().copied());
                    match app.read_models.rooms_of(me).await {
                        Ok(items) => dirty.extend(items.into_iter().map(|item| item.room.id)),
                        Err(error) => { yield Err(ApiError::from(error).into()); return; }
                    }
                }
                for room in dirty {
                    let known = feeds.contains_key(&room);
                    if !known {
                        // A room new to the list: subscribe before reading it.
                        match subscribe(&app, Channel::Room(room)).await {
                            Ok(live) => { feeds.insert(room, relay_stream(live)); }
                            Err(error) => { yield Err(error); return; }
                        }
                    }
                    let view = match app.read_models.room(room).await {
                        Ok(view) => view,
                        Err(error) => { yield Err(ApiError::from(error).into()); return; }
                    };
                    let Some(view) = view else {
                        feeds.remove(&room);
                        continue;
                    };
                    if !view.members.contains(&me) {
                        // Sent once more (no messages, nothing unread), then no more.
                        feeds.remove(&room);
                        if !known {
                            continue;
                        }
                    }
                    match last_message_for(&app, Some(me), Room::new(view)).await {
                        Ok(room) => yield Ok(room),
                        Err(error) => { yield Err(error); return; }
                    }
                }
            }
        })
    }
}

/// A room channel's items as a stream (for [`StreamMap`]).
type RelayStream = Pin<Box<dyn Stream<Item = RelayItem> + Send>>;

fn relay_stream(live: RelaySubscription) -> RelayStream {
    Box::pin(futures::stream::unfold(live, |mut live| async move {
        live.recv().await.map(|item| (item, live))
    }))
}

/// Notes the room an item of the caller's own channel is about; whether the relay lost
/// something (then every room is re-read).
fn personal_change(item: RelayItem, dirty: &mut BTreeSet<RoomId>) -> bool {
    let RelayItem::Message(relayed) = item else {
        return true;
    };
    let room = match decode(&relayed) {
        Some(LiveEvent::RoomsChanged { room_id }) => Some(*room_id),
        Some(LiveEvent::Notice { notice, .. }) => notice.room_id,
        _ => None,
    };
    dirty.extend(room);
    false
}

/// Notes `room` when an item of its channel changes what the rooms list shows (a message,
/// a change of one, a stored notice; not typing or presence); whether the relay lost
/// something.
fn room_change(room: RoomId, item: RelayItem, dirty: &mut BTreeSet<RoomId>) -> bool {
    let RelayItem::Message(relayed) = item else {
        return true;
    };
    if decode(&relayed).is_some_and(|event| event.sequence().is_some()) {
        dirty.insert(room);
    }
    false
}
