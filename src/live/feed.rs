//! [`RoomFeed`]: one subscriber's feed of one room, the rules every room subscription
//! shares (`messages`, `messageUpdates`, `typing`, a room's `notices`; the GraphQL adapters
//! in `src/graphql/subscription.rs` only replay what came before its start and pick what
//! they show).

use std::collections::VecDeque;
use std::time::Duration;

use cqrs_es::persist::PersistenceError;
use parley_domain::{RoomId, UserId};
use parley_projections::GlobalPosition;

use super::{replayed_room_event, LiveEvent, SubscriptionSlot};
use crate::app::App;
use crate::relay::{Channel, RelayError, RelayItem, Relayed, Subscription as RelaySubscription};

/// Events re-read from the log per page.
const PAGE: i64 = 100;

/// Why a feed could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The relay could not subscribe to the room's channel.
    #[error("live relay unavailable: {0}")]
    Relay(RelayError),
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] PersistenceError),
}

/// A relayed event, decoded once per instance and shared by its subscribers.
pub fn decode(item: &Relayed) -> Option<&LiveEvent> {
    item.decoded::<LiveEvent>()
}

/// Whether `event` takes `me` out of the room (a leave, a kick, a ban).
fn left(event: &LiveEvent, me: UserId) -> bool {
    matches!(event, LiveEvent::Notice { notice, .. } if notice.removes(me))
}

/// One subscriber's feed of one room: the rules every room subscription shares, in one
/// place. Opened in the order that loses nothing: the relay channel is subscribed *before*
/// membership is checked and anything is read, so a leave or an event between the two is
/// delivered live (or re-read), never missed.
///
/// It starts from what the read models held when it opened (checkpoint `opened_at`): the
/// room's stored events after that, each exactly once and in log order, whether relayed or
/// re-read from the log (a jump in the room's aggregate sequence, a `Resync`, a `Lagged`),
/// with the ephemeral ones (typing, presence) as they come. It hands an event out only once
/// the read models hold it, as the relay does (live events are relayed once projected), so
/// an adapter may read the read models for what an event names. It hands out the caller's
/// own removal (a leave, a kick, a ban) in order and then ends.
pub struct RoomFeed {
    pub me: UserId,
    pub room: RoomId,
    pub app: App,
    /// Held for as long as the feed: the caller's share of the subscription budget.
    _slot: SubscriptionSlot,
    live: RelaySubscription,
    /// The projector checkpoint the feed starts from (what the read models held then).
    pub opened_at: GlobalPosition,
    /// The room's aggregate sequence of the newest stored event handed out or passed.
    cursor: i64,
    /// The room's aggregate sequence at which the caller was found a member: a removal at
    /// or before it (then a join again) is not the caller's end. `i64::MAX` until admitted.
    member_at: i64,
    /// Re-read the log after `cursor` up to this sequence before taking live events.
    refill: Option<i64>,
    /// Events re-read from the log and not yet handed out (at most a page).
    replayed: VecDeque<LiveEvent>,
    /// The caller's removal has been handed out.
    ended: bool,
    /// Counts the feed among its room's open feeds once admitted.
    open: Option<OpenFeed>,
}

/// An event of a room feed: relayed (shared with the instance's other subscribers), or
/// re-read from the log.
#[derive(Debug)]
pub enum FeedEvent {
    Relayed(Relayed),
    Replayed(LiveEvent),
}

impl std::fmt::Debug for RoomFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomFeed")
            .field("room", &self.room)
            .field("me", &self.me)
            .field("opened_at", &self.opened_at)
            .field("cursor", &self.cursor)
            .field("member_at", &self.member_at)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl FeedEvent {
    pub fn event(&self) -> Option<&LiveEvent> {
        match self {
            Self::Relayed(relayed) => decode(relayed),
            Self::Replayed(event) => Some(event),
        }
    }
}

impl RoomFeed {
    /// Subscribes to the room's channel and notes where the feed starts. Membership is
    /// checked next, by [`Self::admit`]; what an adapter replays from the read models is
    /// read in between (it then holds everything before the start, and nothing after a
    /// removal the feed would end with).
    pub async fn start(
        app: App,
        me: UserId,
        room: RoomId,
        slot: SubscriptionSlot,
    ) -> Result<Self, FeedError> {
        let live = app
            .relay
            .subscribe(&Channel::Room(room))
            .await
            .map_err(FeedError::Relay)?;
        let opened_at = app.projected.now();
        let cursor = app.log.room_sequence_at(room, opened_at).await?;
        Ok(Self {
            me,
            room,
            app,
            _slot: slot,
            live,
            opened_at,
            cursor,
            member_at: i64::MAX,
            refill: None,
            replayed: VecDeque::new(),
            ended: false,
            open: None,
        })
    }

    /// Admits the caller, found a member at the room's aggregate `sequence` by a check made
    /// after [`Self::start`]: the room's state it read is at or after the feed's start, so a
    /// removal after it is after the start (and ends the feed), and one before it (then a
    /// join again) does not. From now on the feed counts among its room's open feeds.
    pub fn admit(&mut self, sequence: i64) {
        self.member_at = sequence;
        self.open = Some(self.app.feeds.open(self.room));
    }

    /// The next event; `None` once the caller's removal has been handed out or the relay is
    /// gone. Cancel-safe: dropped while waiting, it loses nothing (a page being re-read is
    /// read again).
    pub async fn next(&mut self) -> Option<Result<FeedEvent, FeedError>> {
        loop {
            if self.ended {
                return None;
            }
            if let Some(event) = self.replayed.pop_front() {
                return Some(Ok(self.hand_out(FeedEvent::Replayed(event))));
            }
            if let Some(up_to) = self.refill {
                if let Err(error) = self.reread(up_to).await {
                    self.ended = true;
                    return Some(Err(error));
                }
                continue;
            }
            let relayed = match self.live.recv().await? {
                RelayItem::Message(relayed) => relayed,
                // The relay dropped events: re-read the log up to its end.
                RelayItem::Resync | RelayItem::Lagged(_) => {
                    self.refill = Some(i64::MAX);
                    continue;
                }
            };
            let Some(event) = decode(&relayed) else {
                continue;
            };
            let Some(sequence) = event.sequence() else {
                return Some(Ok(FeedEvent::Relayed(relayed)));
            };
            if sequence <= self.cursor {
                continue;
            }
            if sequence > self.cursor + 1 {
                // The relay lost something: re-read up to and including this one.
                self.refill = Some(sequence);
                continue;
            }
            self.cursor = sequence;
            return Some(Ok(self.hand_out(FeedEvent::Relayed(relayed))));
        }
    }

    /// Re-reads one page of the log after the cursor (up to `up_to`), once the read models
    /// hold it (after 5 s, with a warning, anyway).
    async fn reread(&mut self, up_to: i64) -> Result<(), FeedError> {
        let page_end = up_to.min(self.cursor.saturating_add(PAGE));
        let page = self
            .app
            .log
            .room_events(self.room, self.cursor, page_end)
            .await?;
        let Some(newest) = page.last() else {
            self.refill = None;
            return Ok(());
        };
        let position = newest.position;
        if !self
            .app
            .projected
            .reached(position, Duration::from_secs(5))
            .await
        {
            tracing::warn!(room = %self.room, %position, "read models behind a re-read after 5 s");
        }
        for logged in &page {
            if logged.sequence > self.cursor {
                self.cursor = logged.sequence;
                self.replayed.extend(replayed_room_event(logged));
            }
        }
        if self.cursor >= up_to {
            self.refill = None;
        }
        Ok(())
    }

    /// Hands out a stored event, ending the feed if it removes the caller.
    fn hand_out(&mut self, event: FeedEvent) -> FeedEvent {
        let (me, member_at) = (self.me, self.member_at);
        let ends = event.event().is_some_and(|event| {
            left(event, me)
                && event
                    .sequence()
                    .is_some_and(|sequence| sequence > member_at)
        });
        self.ended |= ends;
        event
    }
}

/// The room feeds this instance serves, counted by room from when a feed has its start and
/// has admitted its subscriber until it ends: what "the subscription has started" means,
/// for the `parley_room_feeds` gauge and for tests that act only once it has.
#[derive(Debug, Default)]
pub struct OpenFeeds {
    by_room: std::sync::Mutex<std::collections::HashMap<RoomId, usize>>,
}

/// One open room feed; counted in its room until dropped.
#[derive(Debug)]
pub struct OpenFeed {
    feeds: std::sync::Arc<OpenFeeds>,
    room: RoomId,
}

impl OpenFeeds {
    /// Counts a feed of `room` as open until the returned guard is dropped.
    pub fn open(self: &std::sync::Arc<Self>, room: RoomId) -> OpenFeed {
        *self.rooms().entry(room).or_default() += 1;
        metrics::gauge!("parley_room_feeds").increment(1.0);
        OpenFeed {
            feeds: self.clone(),
            room,
        }
    }

    /// How many feeds of `room` are open on this instance.
    pub fn count(&self, room: RoomId) -> usize {
        self.rooms().get(&room).copied().unwrap_or(0)
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<RoomId, usize>> {
        // Every operation is one map update: a poisoned lock holds nothing half-done.
        self.by_room
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for OpenFeed {
    fn drop(&mut self) {
        let mut rooms = self.feeds.rooms();
        if let Some(count) = rooms.get_mut(&self.room) {
            *count -= 1;
            if *count == 0 {
                rooms.remove(&self.room);
            }
        }
        metrics::gauge!("parley_room_feeds").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parley_domain::RoomId;

    use super::OpenFeeds;

    #[test]
    fn a_feed_counts_in_its_room_until_it_is_dropped() {
        let feeds = Arc::new(OpenFeeds::default());
        let (room, other) = (RoomId::new(), RoomId::new());
        let first = feeds.open(room);
        let second = feeds.open(room);
        let elsewhere = feeds.open(other);
        assert_eq!((feeds.count(room), feeds.count(other)), (2, 1));
        drop(first);
        assert_eq!(feeds.count(room), 1);
        drop(second);
        drop(elsewhere);
        assert_eq!((feeds.count(room), feeds.count(other)), (0, 0));
        assert!(
            feeds.rooms().is_empty(),
            "rooms without feeds are forgotten"
        );
    }
}
