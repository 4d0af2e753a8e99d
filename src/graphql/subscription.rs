//! `Subscription`: live messages, message changes, typing and notices, over the relay.
//!
//! Each subscription subscribes to its relay channel *first* and only then reads what it
//! must replay, so nothing falls between the two. From then on it keeps a cursor — the
//! message `seq` for `messages`, the room's aggregate sequence for room notices — drops what
//! it has already delivered and, on a jump (an event the relay lost) or a `Resync`/`Lagged`
//! from the relay, re-reads the missing part. For `messages` the room's log says what was
//! missed, up to the caller's leave if it is among it (`missed_since`); the messages
//! themselves come from the read model. Memory stays bounded: the relay buffer per
//! subscriber is fixed and re-reads go page by page.
//!
//! A member who leaves (or is kicked or banned) receives their own notice of it in order
//! after everything before it and before anything after it; the subscription ends there.
//!
//! `roomUpdates` is the exception to "one channel": it listens on the caller's own channel
//! and on each of their rooms' channels at once, and answers each change by re-reading the
//! room from the read models (the relayed event says only *that* a room changed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use async_graphql::{Context, Subscription, ID};
use async_stream::stream;
use futures::{FutureExt, Stream, StreamExt};
use parley_domain::{RoomId, UserId};
use tokio::time::Instant;
use tokio_stream::StreamMap;

use super::context::{actor, app, require_member, SubscriptionBudget, SubscriptionSlot};
use super::error::{ApiError, ApiResult};
use super::types::{last_message_for, Message, Notice, Room, TypingEvent};
use crate::app::App;
use crate::live::{replayed_room_event, LiveEvent, LiveMessage};
use crate::relay::{Channel, RelayItem, Relayed, Subscription as RelaySubscription};

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

/// A relayed event, decoded once per instance and shared by its subscribers.
fn decode(item: &Relayed) -> Option<&LiveEvent> {
    item.decoded::<LiveEvent>()
}

/// Whether `event` takes `me` out of the room (a leave, a kick, a ban).
fn left(event: &LiveEvent, me: UserId) -> bool {
    matches!(event, LiveEvent::Notice { notice, .. } if notice.removes(me))
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
    after: i64,
    up_to: i64,
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

/// What a `messages` feed missed after its cursor when the relay lost events, found in the
/// room's log (only integers are kept, so a long outage costs reads, not memory).
#[derive(Debug)]
struct Missed {
    /// The room's aggregate sequence of the newest message at or before the cursor: the
    /// messages after the cursor are all after it.
    from_sequence: i64,
    /// The newest message `seq` to deliver: the room's newest, or the last before the
    /// caller's leave.
    up_to: i64,
    /// The global position of that message (the read models must hold it to re-read it).
    position: i64,
    /// The caller is no longer a member: the feed ends after `up_to`.
    ends: bool,
}

/// Reads what `me`'s feed of `room` missed after message `last`: back from the room's
/// newest event to the message at the cursor, then forward to the newest event or the
/// caller's first leave (kick, ban) after it, whichever comes first. `None` if the room
/// is gone.
async fn missed_since(
    app: &App,
    room: RoomId,
    me: UserId,
    last: i64,
) -> Result<Option<Missed>, ApiError> {
    let Some((state, newest)) = app
        .commands
        .room_state(room)
        .await
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    let newest = newest as i64;
    let read = |after: i64, up_to: i64| async move {
        app.log
            .room_events(room, after, up_to)
            .await
            .map_err(ApiError::internal)
    };
    let mut from_sequence = 0;
    let mut upper = newest;
    'back: while upper > 0 {
        let lower = (upper - PAGE).max(0);
        for logged in read(lower, upper).await?.iter().rev() {
            if let Some(LiveEvent::Message { message, .. }) = replayed_room_event(logged) {
                if message.seq <= last {
                    from_sequence = logged.sequence;
                    break 'back;
                }
            }
        }
        upper = lower;
    }
    let mut missed = Missed {
        from_sequence,
        up_to: last,
        position: 0,
        ends: !state.is_member(me),
    };
    let mut cursor = from_sequence;
    'forward: while cursor < newest {
        let page = read(cursor, (cursor + PAGE).min(newest)).await?;
        let Some(end) = page.last().map(|logged| logged.sequence) else {
            break;
        };
        for logged in &page {
            match replayed_room_event(logged) {
                Some(LiveEvent::Message { message, .. }) if message.seq > missed.up_to => {
                    missed.up_to = message.seq;
                    missed.position = logged.position.0;
                }
                Some(event) if left(&event, me) => {
                    missed.ends = true;
                    break 'forward;
                }
                _ => {}
            }
        }
        cursor = end;
    }
    Ok(Some(missed))
}

/// A members-only subscription to a room, opened in the order that loses nothing: the
/// relay channel is subscribed *before* membership is checked and anything is read, so a
/// leave or an event between the two is delivered live (or re-read), never missed.
struct RoomFeed {
    me: UserId,
    room: RoomId,
    app: App,
    slot: SubscriptionSlot,
    live: RelaySubscription,
}

impl RoomFeed {
    /// Opens the caller's feed of `room_id`, resuming `after` a cursor (never negative).
    async fn open(
        ctx: &Context<'_>,
        room_id: &ID,
        after: Option<i64>,
    ) -> Result<Self, async_graphql::Error> {
        let me = actor(ctx)?;
        let room = super::context::room_id(room_id)?;
        if after.is_some_and(|a| a < 0) {
            return Err(ApiError::BadInput("after must not be negative".to_owned()).into());
        }
        let app = app(ctx).clone();
        let slot = ctx.data_unchecked::<SubscriptionBudget>().take()?;
        let live = subscribe(&app, Channel::Room(room)).await?;
        require_member(&app, room, me).await?;
        Ok(Self {
            me,
            room,
            app,
            slot,
            live,
        })
    }
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
        let RoomFeed {
            me,
            room,
            app,
            slot,
            mut live,
        } = RoomFeed::open(ctx, &room_id, after).await?;
        // Whom the caller blocks: read after subscribing to their channel, which says when
        // it changes.
        let mut mine = subscribe(&app, Channel::User(me)).await?;
        let mut blocked = blocked_by(&app, me).await?;
        let mut last = match after {
            Some(after) => after,
            // Anchor on what the read model holds (the newest history page a client reads
            // next), not on the aggregate, which runs ahead of it: a message committed but
            // not yet projected is then delivered live, once it is projected.
            None => app
                .read_models
                .room(room)
                .await
                .map_err(ApiError::from)?
                .map_or(0, |view| view.last_seq),
        };
        Ok(stream! {
            let _slot = slot;
            // At the start, replay after `after` from the read model, page by page, up to
            // what it holds now.
            let mut catch_up = true;
            // The relay lost events (a resync, a lag, a jump in seq): the room's log says
            // exactly what was missed, up to the caller's leave if one was among it.
            let mut resync = false;
            loop {
                while catch_up {
                    match read_messages(&app, room, last, last + PAGE).await {
                        Ok(page) if page.is_empty() => catch_up = false,
                        Ok(page) => for message in page {
                            last = message.seq;
                            if !blocked.contains(&message.sender) {
                                yield Ok(Message(message));
                            }
                        },
                        Err(error) => { yield Err(error.into()); return; }
                    }
                }
                if resync {
                    resync = false;
                    let missed = match missed_since(&app, room, me, last).await {
                        Ok(Some(missed)) => missed,
                        Ok(None) => return,
                        Err(error) => { yield Err(error.into()); return; }
                    };
                    if missed.up_to > last {
                        // As the message now is (edited, deleted) from the read model once
                        // it holds them; whatever it still lacks after 5 s, from the log.
                        if !app.projected.reached(missed.position, Duration::from_secs(5)).await {
                            tracing::warn!(%room, position = missed.position, "read models behind a re-read after 5 s; reading the log");
                        }
                        while last < missed.up_to {
                            match read_messages(&app, room, last, missed.up_to.min(last + PAGE)).await {
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
                        let mut cursor = missed.from_sequence;
                        while last < missed.up_to {
                            let page = match app.log.room_events(room, cursor, cursor + PAGE).await {
                                Ok(page) => page,
                                Err(error) => { yield Err(ApiError::internal(error).into()); return; }
                            };
                            let Some(end) = page.last().map(|logged| logged.sequence) else { break };
                            cursor = end;
                            for logged in &page {
                                let Some(LiveEvent::Message { message, .. }) = replayed_room_event(logged) else { continue };
                                if message.seq == last + 1 && message.seq <= missed.up_to {
                                    last = message.seq;
                                    if !blocked.contains(&message.sender) {
                                        yield Ok(Message(message));
                                    }
                                }
                            }
                        }
                    }
                    if missed.ends {
                        return;
                    }
                }
                let item = tokio::select! {
                    item = live.recv() => item,
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
                let Some(item) = item else { return };
                let relayed = match item {
                    RelayItem::Message(relayed) => relayed,
                    RelayItem::Resync | RelayItem::Lagged(_) => {
                        resync = true;
                        continue;
                    }
                };
                let Some(event) = decode(&relayed) else { continue };
                if left(event, me) {
                    return;
                }
                let LiveEvent::Message { message, .. } = event else { continue };
                if message.seq <= last {
                    continue;
                }
                if message.seq > last + 1 {
                    // The relay lost messages without saying so (messages are relayed once
                    // projected, in log order): this one and what came before it are in
                    // the log, and a leave may be among them.
                    resync = true;
                    continue;
                }
                last = message.seq;
                if !blocked.contains(&message.sender) {
                    yield Ok(Message(message.clone()));
                }
            }
        })
    }

    /// Changes of a room's messages — edits, deletions, reactions — as the changed message
    /// in its current state. With `after` (a global position): first every message whose
    /// newest change is after it, oldest change first, then live. Without: live only.
    /// Members only; ends when the caller leaves. Gaps (a change the relay lost) and relay
    /// resyncs are filled from the read model, by position.
    async fn message_updates(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
        after: Option<i64>,
    ) -> Result<impl Stream<Item = ApiResult<Message>>, async_graphql::Error> {
        let RoomFeed {
            me,
            room,
            app,
            slot,
            mut live,
        } = RoomFeed::open(ctx, &room_id, after).await?;
        // What the caller has: every change up to `delivered` (for live events), and
        // everything a replay would give up to `replay_from`. Without `after`, a live change
        // is delivered whatever its position: the checkpoint this instance knows may already
        // be past a change whose relayed event is still on its way.
        let mut delivered = after.unwrap_or(0);
        let mut replay_from = after.unwrap_or_else(|| app.projected.now());
        Ok(stream! {
            let _slot = slot;
            let mut catch_up = after.is_some();
            // The room's aggregate sequence of the newest relayed event, to see gaps.
            let mut last_sequence: Option<i64> = None;
            loop {
                while catch_up {
                    let page = match app.read_models.changed_messages(room, replay_from, PAGE).await {
                        Ok(page) => page,
                        Err(error) => { yield Err(ApiError::from(error).into()); return; }
                    };
                    catch_up = page.len() as i64 == PAGE;
                    for message in page {
                        replay_from = replay_from.max(message.position.0);
                        delivered = delivered.max(message.position.0);
                        yield Ok(Message(LiveMessage::from(message)));
                    }
                }
                let Some(item) = live.recv().await else { return };
                let relayed = match item {
                    RelayItem::Message(relayed) => relayed,
                    RelayItem::Resync | RelayItem::Lagged(_) => {
                        match app.commands.membership(room, me).await {
                            Ok(Some(true)) => {}
                            Ok(_) => return,
                            Err(error) => { yield Err(ApiError::internal(error).into()); return; }
                        }
                        catch_up = true;
                        last_sequence = None;
                        continue;
                    }
                };
                let Some(event) = decode(&relayed) else { continue };
                if left(event, me) {
                    return;
                }
                let Some(sequence) = event.sequence() else { continue };
                let gap = last_sequence.is_some_and(|last| sequence > last + 1);
                last_sequence = Some(last_sequence.map_or(sequence, |last| last.max(sequence)));
                if gap {
                    catch_up = true;
                    continue;
                }
                let &LiveEvent::MessageChanged { seq, position, .. } = event else { continue };
                if position <= delivered {
                    continue;
                }
                match app.read_models.message(room, seq).await {
                    Ok(found) => {
                        delivered = position;
                        replay_from = replay_from.max(position);
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
    async fn typing(
        &self,
        ctx: &Context<'_>,
        room_id: ID,
    ) -> Result<impl Stream<Item = ApiResult<TypingEvent>>, async_graphql::Error> {
        let me = actor(ctx)?;
        let room = super::context::room_id(&room_id)?;
        let app = app(ctx).clone();
        let slot = ctx.data_unchecked::<SubscriptionBudget>().take()?;
        require_member(&app, room, me).await?;
        let mut live = subscribe(&app, Channel::Room(room)).await?;
        Ok(stream! {
            let _slot = slot;
            let mut typing: HashMap<UserId, Instant> = HashMap::new();
            loop {
                let next_expiry = typing.values().min().copied();
                let item = tokio::select! {
                    item = live.recv() => item,
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
                let Some(item) = item else { return };
                let RelayItem::Message(relayed) = item else { continue };
                let Some(event) = decode(&relayed) else { continue };
                if left(event, me) {
                    return;
                }
                let &LiveEvent::Typing { user, is_typing, .. } = event else { continue };
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
    /// offline), members only, in log order with gaps re-read from the log. Without: the
    /// caller's own (invitations) and announcements.
    async fn notices(
        &self,
        ctx: &Context<'_>,
        room_id: Option<ID>,
    ) -> Result<impl Stream<Item = ApiResult<Notice>>, async_graphql::Error> {
        let me = actor(ctx)?;
        let app = app(ctx).clone();
        let slot = ctx.data_unchecked::<SubscriptionBudget>().take()?;
        let room = room_id.as_ref().map(super::context::room_id).transpose()?;
        let stream: std::pin::Pin<Box<dyn Stream<Item = ApiResult<Notice>> + Send>> = match room {
            Some(room) => {
                require_member(&app, room, me).await?;
                let mut live = subscribe(&app, Channel::Room(room)).await?;
                let mut last = app
                    .commands
                    .room_state(room)
                    .await
                    .map_err(ApiError::internal)?
                    .map_or(0, |(_, sequence)| sequence as i64);
                Box::pin(stream! {
                    let _slot = slot;
                    // Re-read the log up to this sequence before going on: a gap before a
                    // relayed event, or everything after a relay resync (`i64::MAX`).
                    let mut refill: Option<i64> = None;
                    loop {
                        // Page by page: a long outage never loads a room's backlog at once.
                        while let Some(up_to) = refill {
                            let page_end = up_to.min(last.saturating_add(PAGE));
                            let page = match app.log.room_events(room, last, page_end).await {
                                Ok(page) => page,
                                Err(error) => { yield Err(ApiError::internal(error).into()); return; }
                            };
                            let Some(newest) = page.last().map(|event| event.sequence) else {
                                refill = None;
                                break;
                            };
                            for logged in &page {
                                if logged.sequence <= last { continue; }
                                last = logged.sequence;
                                let Some(LiveEvent::Notice { notice, .. }) = replayed_room_event(logged) else { continue };
                                let is_my_leave = notice.removes(me);
                                yield Ok(Notice(notice));
                                if is_my_leave { return; }
                            }
                            last = last.max(newest);
                            if last >= up_to { refill = None; }
                        }
                        let Some(item) = live.recv().await else { return };
                        let relayed = match item {
                            RelayItem::Message(relayed) => relayed,
                            RelayItem::Resync | RelayItem::Lagged(_) => {
                                refill = Some(i64::MAX);
                                continue;
                            }
                        };
                        let Some(event) = decode(&relayed) else { continue };
                        let Some(sequence) = event.sequence() else {
                            // Ephemeral (presence): no cursor.
                            if let LiveEvent::Notice { notice, .. } = event { yield Ok(Notice(notice.clone())); }
                            continue;
                        };
                        if sequence <= last { continue; }
                        if sequence > last + 1 {
                            // The relay lost something: re-read up to and including this one.
                            refill = Some(sequence);
                            continue;
                        }
                        last = sequence;
                        let is_my_leave = left(event, me);
                        if let LiveEvent::Notice { notice, .. } = event {
                            yield Ok(Notice(notice.clone()));
                        }
                        if is_my_leave {
                            return;
                        }
                    }
                })
            }
            None => {
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
        let slot = ctx.data_unchecked::<SubscriptionBudget>().take()?;
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
